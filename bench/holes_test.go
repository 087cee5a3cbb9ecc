package bench

import (
	"context"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestHolesWarning runs read workloads against nbdring: on a sparse file
// (never written) run warns, in one line, before the load; on a file of
// data, on a range that holds some data, and for a write workload it does
// not.
func TestHolesWarning(t *testing.T) {
	const size = 8 << 20
	sparseURI, _, _ := startTestServer(t, size)
	full := filepath.Join(t.TempDir(), "full")
	data := make([]byte, size)
	for i := range data {
		data[i] = byte(rand.Uint32())
	}
	if err := os.WriteFile(full, data, 0o644); err != nil {
		t.Fatal(err)
	}
	fullURI, _ := startServerOn(t, full)
	// Data in the last MiB only: the whole range is not all holes, its
	// first 7 MiB are.
	tail := filepath.Join(t.TempDir(), "tail")
	if err := os.WriteFile(tail, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	f, err := os.OpenFile(tail, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt(data[:1<<20], size-1<<20); err != nil {
		t.Fatal(err)
	}
	f.Close()
	tailURI, _ := startServerOn(t, tail)
	for _, tc := range []struct {
		name, uri, rw string
		off, n        uint64
		warn          bool
	}{
		// Each case that writes has a range of its own, still unwritten
		// when it is checked.
		{"sparse randread", sparseURI, "randread", 0, 0, true},
		{"sparse write", sparseURI, "write", 4 << 20, 1 << 20, false},
		{"sparse randrw", sparseURI, "randrw", 6 << 20, 1 << 20, true},
		{"full randread", fullURI, "randread", 0, 0, false},
		{"tail whole range", tailURI, "read", 0, 0, false},
		{"tail holes only", tailURI, "read", 1 << 20, 6 << 20, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var log strings.Builder
			res, err := Run(context.Background(), Config{URI: tc.uri, RW: tc.rw, Mix: 50,
				BS: 4096, QD: 4, Conns: 1, Ops: 100, RangeOff: tc.off, RangeLen: tc.n,
				Log: &log})
			if err != nil || res.Errors != 0 {
				t.Fatalf("%v %+v", err, res)
			}
			got := log.String()
			if warned := strings.Contains(got, "all holes"); warned != tc.warn {
				t.Fatalf("warned %v, want %v: %q", warned, tc.warn, got)
			}
			if tc.warn && (strings.Count(got, "\n") != 1 || !strings.HasSuffix(got, "\n") ||
				!strings.Contains(got, "-rw write")) {
				t.Fatalf("want one line that says how to fill the range: %q", got)
			}
		})
	}
}

// TestHolesCheckSkipsQuietly: nbd-server has no base:allocation, so the
// check cannot tell and run says nothing, even on a sparse file.
func TestHolesCheckSkipsQuietly(t *testing.T) {
	if why := serverMissing("nbd-server", &CompareConfig{}); why != "" {
		skipMissing(t, "client", "%s (make test installs it)", why)
	}
	file := filepath.Join(t.TempDir(), "img")
	if err := os.WriteFile(file, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(file, 8<<20); err != nil {
		t.Fatal(err)
	}
	srv, err := startServer("nbd-server", file, &CompareConfig{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(srv.stop)
	tgt, err := ParseURI(srv.uri)
	if err != nil {
		t.Fatal(err)
	}
	if holes, known := allHoles(context.Background(), tgt, 0, 8<<20); known {
		t.Fatalf("nbd-server: known %v (holes %v), want unknown", known, holes)
	}
	var log strings.Builder
	res, err := Run(context.Background(), Config{URI: srv.uri, RW: "randread", BS: 4096,
		QD: 4, Conns: 1, Ops: 100, Log: &log})
	if err != nil || res.Errors != 0 || log.Len() != 0 {
		t.Fatalf("%v %+v, log %q", err, res, log.String())
	}
}
