package bench

import (
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
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

// TestMakeScale: make scale runs compare with the floor, once per core
// count: by default those of 1,4,8 that leave the client a CPU; CORES
// and CLIENT_CPUS pass through.
func TestMakeScale(t *testing.T) {
	if _, err := exec.LookPath("make"); err != nil {
		skipMissing(t, "client", "make not installed")
	}
	file := filepath.Join(t.TempDir(), "img")
	if err := os.WriteFile(file, []byte("data"), 0o644); err != nil {
		t.Fatal(err)
	}
	scale := func(vars ...string) string {
		out, err := exec.Command("make", append([]string{"-n", "-C", "..", "scale",
			"BENCH_FILE=" + file}, vars...)...).CombinedOutput()
		if err != nil {
			t.Fatalf("make -n scale %v: %v\n%s", vars, err, out)
		}
		return strings.Join(strings.Fields(strings.ReplaceAll(string(out), "\\\n", " ")), " ")
	}
	var cores []string
	for _, c := range []int{1, 4, 8} {
		if c < runtime.NumCPU() {
			cores = append(cores, strconv.Itoa(c))
		}
	}
	if len(cores) == 0 {
		cores = []string{"1"}
	}
	out := scale()
	for _, want := range []string{"nbdbench compare -file " + file,
		"-servers nbdring,nbdkit,qemu-nbd,floor", "-cores " + strings.Join(cores, ",") + " ",
		"-workloads read:1M:8:1,write:1M:8:1,randread:4k:32:1"} {
		if !strings.Contains(out, want) {
			t.Errorf("make scale lacks %q:\n%s", want, out)
		}
	}
	if strings.Contains(out, "-client-cpus") {
		t.Errorf("make scale pins the client without CLIENT_CPUS:\n%s", out)
	}
	out = scale("CORES=1,4,8", "CLIENT_CPUS=3")
	if !strings.Contains(out, "-cores 1,4,8 ") || !strings.Contains(out, "-client-cpus 3") {
		t.Errorf("CORES=1,4,8 CLIENT_CPUS=3 not passed on:\n%s", out)
	}
}
