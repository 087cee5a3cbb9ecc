package bench

import (
	"context"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"
)

// TestCompareShort runs compare against nbdring and qemu-nbd for real: a
// row per server with traffic, no errors, and CPU per operation read from
// each server's /proc entry.
func TestCompareShort(t *testing.T) {
	if _, err := exec.LookPath("qemu-nbd"); err != nil {
		t.Skip("qemu-nbd not installed (make test installs qemu-utils)")
	}
	bin := os.Getenv("NBDRING_BIN")
	if bin == "" {
		bin = "../bin/nbdring"
	}
	if _, err := os.Stat(bin); err != nil {
		t.Fatalf("nbdring binary %s missing: run 'make build' or set NBDRING_BIN", bin)
	}
	file := filepath.Join(t.TempDir(), "img")
	if err := os.WriteFile(file, make([]byte, 16<<20), 0o644); err != nil {
		t.Fatal(err)
	}
	wls, err := ParseWorkloads("randread:4k:8:1,randwrite:4k:8:2", 700*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	rows, err := Compare(context.Background(), CompareConfig{File: file,
		Servers: []string{"nbdring", "qemu-nbd"}, Workloads: wls, Rounds: 1,
		Client: "nbdbench", NbdRing: bin, Log: io.Discard})
	if err != nil {
		t.Fatal(err)
	}
	checkRows(t, rows, []string{"nbdring", "qemu-nbd"}, 2)
}

// TestCompareForkingServer runs nbd-server, which daemonizes and forks a
// child per connection, with both clients: its CPU per operation must
// include the children's time (without it the row reads 0).
func TestCompareForkingServer(t *testing.T) {
	for _, bin := range []string{"nbd-server", "fio"} {
		if _, err := exec.LookPath(bin); err != nil {
			t.Skipf("%s not installed (make test installs it)", bin)
		}
	}
	// A path relative to the working directory, as make compare passes
	// (var/bench.img): the daemon runs in /, where it means nothing.
	dir, err := os.MkdirTemp(".", "testimg-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	file := filepath.Join(dir, "img")
	if err := os.WriteFile(file, make([]byte, 16<<20), 0o644); err != nil {
		t.Fatal(err)
	}
	wls, err := ParseWorkloads("randread:4k:8:1,randwrite:4k:8:2", 700*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	for _, client := range []string{"nbdbench", "fio"} {
		t.Run(client, func(t *testing.T) {
			rows, err := Compare(context.Background(), CompareConfig{File: file,
				Servers: []string{"nbd-server"}, Workloads: wls, Rounds: 1,
				Client: client, Log: io.Discard})
			if err != nil {
				t.Fatal(err)
			}
			checkRows(t, rows, []string{"nbd-server"}, 2)
		})
	}
}

// checkRows wants one row per server and workload, in the order given,
// each with traffic, no errors and the server's CPU per operation.
func checkRows(t *testing.T, rows []Row, servers []string, workloads int) {
	t.Helper()
	if len(rows) != len(servers)*workloads {
		t.Fatalf("%d rows, want %d servers x %d workloads: %+v", len(rows), len(servers),
			workloads, rows)
	}
	for i, r := range rows {
		if r.Server != servers[i%len(servers)] {
			t.Errorf("row %d is %s, want %s", i, r.Server, servers[i%len(servers)])
		}
		if r.IOPS <= 0 || r.Errors != 0 || r.ServerCPUUsPerOp <= 0 {
			t.Errorf("row %+v: want traffic, no errors and server CPU per op", r)
		}
	}
}
