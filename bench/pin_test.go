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

// allowedCPUs reads the Cpus_allowed_list line of a /proc status file.
func allowedCPUs(t *testing.T, status string) string {
	t.Helper()
	b, err := os.ReadFile(status)
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "Cpus_allowed_list:"); ok {
			return strings.TrimSpace(v)
		}
	}
	t.Fatalf("%s has no Cpus_allowed_list", status)
	return ""
}

// TestPinning: -server-cpus starts a server on exactly those CPUs, and
// -client-cpus pins every thread of nbdbench; a bad list is refused.
func TestPinning(t *testing.T) {
	if runtime.NumCPU() < 2 {
		skipMissing(t, "cpus", "needs 2 CPUs")
	}
	if _, err := exec.LookPath("taskset"); err != nil {
		skipMissing(t, "client", "taskset not installed (util-linux)")
	}
	bin := nbdringBin(t)
	file := filepath.Join(t.TempDir(), "img")
	if err := os.WriteFile(file, make([]byte, 4<<20), 0o644); err != nil {
		t.Fatal(err)
	}
	srv, err := startServer("nbdring", file, &CompareConfig{NbdRing: bin, ServerCPUs: "1"})
	if err != nil {
		t.Fatal(err)
	}
	got := allowedCPUs(t, "/proc/"+strconv.Itoa(srv.pid)+"/status")
	srv.stop()
	if got != "1" {
		t.Fatalf("server started with -server-cpus 1 may run on CPUs %s", got)
	}
	before := allowedCPUs(t, "/proc/self/status")
	t.Cleanup(func() {
		if err := pinSelf(before); err != nil {
			t.Error(err)
		}
	})
	if err := pinSelf("1"); err != nil {
		t.Fatal(err)
	}
	tasks, _ := os.ReadDir("/proc/self/task")
	for _, task := range tasks {
		if got := allowedCPUs(t, "/proc/self/task/"+task.Name()+"/status"); got != "1" {
			t.Fatalf("thread %s may run on CPUs %s after pinning to 1", task.Name(), got)
		}
	}
	for _, bad := range []string{"x", "2-1", "-1", "1,", "100000"} {
		if err := pinSelf(bad); err == nil {
			t.Errorf("pinSelf(%q) accepted", bad)
		}
	}
}
