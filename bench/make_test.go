package bench

import (
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// makeCompare returns what `make compare` would run (make -n) with vars.
func makeCompare(t *testing.T, vars ...string) string {
	t.Helper()
	if _, err := exec.LookPath("make"); err != nil {
		skipMissing(t, "client", "make not installed")
	}
	out, err := exec.Command("make", append([]string{"-n", "-C", "..", "compare"},
		vars...)...).CombinedOutput()
	if err != nil {
		t.Fatalf("make -n compare %v: %v\n%s", vars, err, out)
	}
	return string(out)
}

// TestMakeCompareBacking: make compare uses an existing file or block
// device as it is, fills only a missing file, never makes a missing
// device node, and passes CLIENT on as -client.
func TestMakeCompareBacking(t *testing.T) {
	const fill = "fio --name=fill"
	file := filepath.Join(t.TempDir(), "img")
	if err := os.WriteFile(file, []byte("data"), 0o644); err != nil {
		t.Fatal(err)
	}
	out := makeCompare(t, "BENCH_FILE="+file, "CLIENT=fio")
	if strings.Contains(out, fill) || !strings.Contains(out, "-file "+file+" ") ||
		!strings.Contains(out, "-client fio ") {
		t.Errorf("existing file with CLIENT=fio: want no fill, -file %s, -client fio:\n%s",
			file, out)
	}
	if out := makeCompare(t, "BENCH_FILE="+file); !strings.Contains(out, "-client nbdbench ") {
		t.Errorf("default client is not nbdbench:\n%s", out)
	}
	missing := filepath.Join(t.TempDir(), "new.img")
	if out := makeCompare(t, "BENCH_FILE="+missing); !strings.Contains(out,
		fill+" --filename="+missing) {
		t.Errorf("missing file %s is not filled:\n%s", missing, out)
	}
	t.Run("device", func(t *testing.T) {
		dev := zramDevice(t, 1<<20)
		if out := makeCompare(t, "BENCH_FILE="+dev); strings.Contains(out, fill) ||
			!strings.Contains(out, "-file "+dev+" ") {
			t.Errorf("block device %s: want it used as is:\n%s", dev, out)
		}
	})
	// A missing device must fail, not become a file in /dev.
	dev := "/dev/nbdbench-test-missing-" + strconv.Itoa(os.Getpid())
	// BENCH_SIZE bounds the damage should the guard ever break.
	out2, err := exec.Command("make", "-C", "..", dev, "BENCH_FILE="+dev,
		"BENCH_SIZE=1M").CombinedOutput()
	if _, statErr := os.Stat(dev); statErr == nil {
		os.Remove(dev)
		t.Fatalf("make created %s", dev)
	}
	if err == nil || !strings.Contains(string(out2), "does not exist") {
		t.Errorf("missing device %s: want a failure that says so: %v\n%s", dev, err, out2)
	}
}
