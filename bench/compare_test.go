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
	if len(rows) != 4 {
		t.Fatalf("%d rows, want 2 servers x 2 workloads: %+v", len(rows), rows)
	}
	for _, r := range rows {
		if r.IOPS <= 0 || r.Errors != 0 || r.ServerCPUUsPerOp <= 0 {
			t.Errorf("row %+v: want traffic, no errors and server CPU per op", r)
		}
	}
	if rows[0].Server != "nbdring" || rows[1].Server != "qemu-nbd" {
		t.Errorf("server order %s, %s", rows[0].Server, rows[1].Server)
	}
}
