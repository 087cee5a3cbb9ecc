package bench

import (
	"cmp"
	"context"
	"encoding/json"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"
)

// startTestServer runs bin/nbdring (NBDRING_BIN, as make test sets it) on a
// fresh file and returns its URI, file path and pid.
func startTestServer(t *testing.T, size int64) (uri, path string, pid int) {
	t.Helper()
	path = filepath.Join(t.TempDir(), "img")
	if err := os.WriteFile(path, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(path, size); err != nil {
		t.Fatal(err)
	}
	uri, pid = startServerOn(t, path)
	return uri, path, pid
}

// nbdringBin is the nbdring binary the tests start: $NBDRING_BIN (make test
// sets it), else the one make build leaves in bin/.
func nbdringBin(t *testing.T) string {
	t.Helper()
	bin := os.Getenv("NBDRING_BIN")
	if bin == "" {
		bin = "../bin/nbdring"
	}
	if _, err := os.Stat(bin); err != nil {
		t.Fatalf("nbdring binary %s missing: run 'make build' or set NBDRING_BIN", bin)
	}
	return bin
}

// startServerOn runs bin/nbdring on path and returns its URI and pid.
func startServerOn(t *testing.T, path string) (uri string, pid int) {
	t.Helper()
	bin := nbdringBin(t)
	sock := filepath.Join(t.TempDir(), "sock")
	cmd := exec.Command(bin, "-listen", "unix:"+sock, "-arena-mib", "128", path)
	var log strings.Builder
	cmd.Stderr = &log
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Signal(os.Interrupt)
		cmd.Wait()
		if t.Failed() {
			t.Logf("server log:\n%s", log.String())
		}
	})
	for i := 0; ; i++ {
		if c, err := net.Dial("unix", sock); err == nil {
			c.Close()
			break
		}
		if i > 200 {
			t.Fatalf("server did not start: %s", log.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
	return "nbd+unix:///?socket=" + sock, cmd.Process.Pid
}

// TestVerifyCatchesCorruption writes the whole range with -verify, changes
// the export behind nbdbench's back (a flipped byte, a block copied to the
// wrong place), and expects a verifying read to name both offsets.
func TestVerifyCatchesCorruption(t *testing.T) {
	const size = 4 << 20
	uri, path, _ := startTestServer(t, size)
	ctx := context.Background()
	w := Config{URI: uri, RW: "write", BS: 4096, QD: 8, Conns: 2, Ops: size / 4096,
		Verify: true}
	res, err := Run(ctx, w)
	if err != nil || res.Errors != 0 || res.Ops != size/4096 {
		t.Fatalf("write run: %v %+v", err, res)
	}
	r := w
	r.RW = "read"
	if res, err := Run(ctx, r); err != nil || res.VerifyErrors != 0 || res.Errors != 0 {
		t.Fatalf("clean read run: %v %+v", err, res)
	}
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	// Flip a byte inside the sector at 1 MiB + 1536.
	b := make([]byte, 1)
	if _, err := f.ReadAt(b, 1<<20+1536+100); err != nil {
		t.Fatal(err)
	}
	b[0] ^= 0xff
	if _, err := f.WriteAt(b, 1<<20+1536+100); err != nil {
		t.Fatal(err)
	}
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}
	r.Conns = 1 // one stream, so the first error is the lowest offset
	res, err = Run(ctx, r)
	if err != nil || res.VerifyErrors != 1 ||
		!strings.Contains(res.FirstError, "offset 1050112") {
		t.Fatalf("flipped byte: %v, %d verify errors, first %q", err, res.VerifyErrors,
			res.FirstError)
	}
	// Copy the block at 3 MiB over the one at 2 MiB: a misplaced block.
	blk := make([]byte, 4096)
	if _, err := f.ReadAt(blk, 3<<20); err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt(blk, 2<<20); err != nil {
		t.Fatal(err)
	}
	f.Sync()
	r.RangeOff, r.RangeLen, r.Ops = 2<<20, 1<<20, 256
	res, err = Run(ctx, r)
	if err != nil || res.VerifyErrors != 1 || !strings.Contains(res.FirstError, "misplaced") ||
		!strings.Contains(res.FirstError, "offset 2097152") {
		t.Fatalf("misplaced block: %v, %+v", err, res)
	}
}

// TestJSONSchema checks the field names other tools read.
func TestJSONSchema(t *testing.T) {
	uri, _, pid := startTestServer(t, 8<<20)
	res, err := Run(context.Background(), Config{URI: uri, RW: "randrw", Mix: 50, BS: 4096,
		QD: 16, Conns: 2, Ops: 4000, ServerPID: pid})
	if err != nil || res.Errors != 0 {
		t.Fatalf("%v %+v", err, res)
	}
	b, err := json.Marshal(res)
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"iops", "bytes_per_sec", "errors", "server_cpu_us_per_op",
		"workload", "ops", "duration_s"} {
		if _, ok := m[k]; !ok {
			t.Errorf("JSON lacks %q: %s", k, b)
		}
	}
	lat, _ := m["latency_us"].(map[string]any)
	for _, k := range []string{"p50", "p90", "p99", "p999", "max"} {
		if v, ok := lat[k].(float64); !ok || v <= 0 {
			t.Errorf("latency_us.%s = %v", k, lat[k])
		}
	}
	if m["ops"].(float64) != 4000 || m["iops"].(float64) <= 0 {
		t.Errorf("ops %v iops %v", m["ops"], m["iops"])
	}
}

// TestRunAllocations: the request path allocates nothing, so a run's
// allocations are its setup's, whatever its length.
func TestRunAllocations(t *testing.T) {
	uri, _, _ := startTestServer(t, 8<<20)
	cfg := Config{URI: uri, RW: "randread", BS: 4096, QD: 32, Conns: 1, Ops: 1000}
	allocs := func(ops int64) uint64 {
		cfg.Ops = ops
		var a, b runtime.MemStats
		runtime.ReadMemStats(&a)
		if _, err := Run(context.Background(), cfg); err != nil {
			t.Fatal(err)
		}
		runtime.ReadMemStats(&b)
		return b.Mallocs - a.Mallocs
	}
	allocs(1000) // warm up
	short, long := allocs(1000), allocs(30000)
	if long > short+200 {
		t.Fatalf("30000 ops allocated %d times, 1000 ops %d: the request path allocates",
			long, short)
	}
}

// lenConn records the size of every read buffer it is given.
type lenConn struct {
	net.Conn
	sizes []int
}

func (c *lenConn) Read(p []byte) (int, error) {
	c.sizes = append(c.sizes, len(p))
	return 0, nil
}

// TestFillReadsAtMostBatch checks that a read never asks for more than
// Batch read replies (DefaultBatch when 0, QD at most), with and without a
// partial reply left over.
func TestFillReadsAtMostBatch(t *testing.T) {
	for _, batch := range []int{0, 1, 3, 32} {
		cfg := &Config{RW: "randread", BS: 4096, QD: 16, Batch: batch}
		lc := &lenConn{}
		w := newWorker(lc, cfg, 0)
		reply := 16 + 4096
		want := min(cmp.Or(batch, DefaultBatch), 16) * reply
		w.fill()
		w.rlo, w.rhi = 5*reply, 5*reply+100 // 100 bytes of a reply pending
		w.fill()
		w.rlo, w.rhi = len(w.rbuf)-50, len(w.rbuf) // pending at the end: compacted
		w.fill()
		if got := []int{want, want - 100, want - 50}; !slices.Equal(lc.sizes, got) {
			t.Errorf("batch %d: read sizes %v, want %v", batch, lc.sizes, got)
		}
	}
}

// TestBatchRuns drives the server with several batch sizes, verifying, and
// rejects a negative batch.
func TestBatchRuns(t *testing.T) {
	const size = 2 << 20
	uri, _, _ := startTestServer(t, size)
	ctx := context.Background()
	for _, batch := range []int{1, 4, 16, 64} {
		cfg := Config{URI: uri, RW: "randrw", Mix: 50, BS: 4096, QD: 16, Conns: 1,
			Batch: batch, Ops: 3000, Verify: true}
		res, err := Run(ctx, cfg)
		if err != nil || res.Errors != 0 || res.VerifyErrors != 0 || res.Ops != 3000 {
			t.Fatalf("batch %d: %v %+v", batch, err, res)
		}
	}
	_, err := Run(ctx, Config{URI: uri, RW: "randread", BS: 4096, QD: 4, Conns: 1,
		Batch: -1, Ops: 10})
	if err == nil || !strings.Contains(err.Error(), "-batch -1") {
		t.Fatalf("negative batch: %v", err)
	}
}

// TestCPUTicksCountsChildren checks that a server's CPU includes processes
// it forked (nbd-server forks per connection): a grandchild that spins is
// counted while alive and, through the parents' cutime, after it exits.
func TestCPUTicksCountsChildren(t *testing.T) {
	cmd := exec.Command("bash", "-c",
		`timeout 0.6 bash -c 'while :; do :; done'; sleep 5`)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { cmd.Process.Kill(); cmd.Wait() }()
	pid := cmd.Process.Pid
	time.Sleep(400 * time.Millisecond)
	alive := cpuTicks(pid)
	time.Sleep(800 * time.Millisecond)
	after := cpuTicks(pid)
	// 5 ticks is 50 ms of a spin that runs 600 ms.
	if alive < 5 || after < alive {
		t.Fatalf("ticks while the grandchild spins %d, after it exits %d; want >= 5 and "+
			"not falling", alive, after)
	}
}

// TestProgressLine checks the live line: elapsed and total time (or
// operations for -ops), IOPS and MB/s over the last interval.
func TestProgressLine(t *testing.T) {
	cfg := &Config{BS: 4096, Duration: 10 * time.Second}
	got := progressLine(cfg, 3*time.Second, 123456, 25000, 500*time.Millisecond)
	for _, want := range []string{"   3.0s / 10.0s ", " 50000 IOPS ", " 204.8 MB/s ",
		"123456 ops"} {
		if !strings.Contains(got, want) {
			t.Errorf("progress line %q lacks %q", got, want)
		}
	}
	cfg = &Config{BS: 1 << 20, Ops: 200000}
	got = progressLine(cfg, 1500*time.Millisecond, 1200, 1000, time.Second)
	for _, want := range []string{"   1.5s ", " 1000 IOPS ", " 1048.6 MB/s ",
		"1200 / 200000 ops"} {
		if !strings.Contains(got, want) {
			t.Errorf("progress line %q lacks %q", got, want)
		}
	}
	if strings.Contains(got, "/ 0.0s") {
		t.Errorf("an -ops run has no total time: %q", got)
	}
}
