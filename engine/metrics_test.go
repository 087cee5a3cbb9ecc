package engine

import (
	"bytes"
	"crypto/tls"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
	_ "unsafe" // go:linkname, for BenchmarkClock's runtime.nanotime

	"github.com/nbdring/nbdring/wire"
	"golang.org/x/sys/unix"
)

// twoExportServer serves exports "a" and "b" (size bytes each) on shards.
func twoExportServer(t *testing.T, size int64, shards int) (*Server, string) {
	t.Helper()
	dir := t.TempDir()
	var exps []*Export
	for _, name := range []string{"a", "b"} {
		path := filepath.Join(dir, name)
		if err := os.WriteFile(path, make([]byte, size), 0o644); err != nil {
			t.Fatal(err)
		}
		e, err := OpenExport(ExportConfig{Name: name, Path: path})
		if err != nil {
			skipMissing(t, "direct-io", "cannot serve a file here: %v", err)
		}
		exps = append(exps, e)
	}
	return serveOn(t, dir, Config{Shards: shards, ArenaSize: arenaSizeMin}, exps)
}

// exportTotals sums one export's counters over the shards.
func exportTotals(sn *Snapshot, ei int) ExportCounts {
	var t ExportCounts
	for _, ss := range sn.Shards {
		e := ss.Exports[ei]
		t.Conns += e.Conns
		for c := range cmdLabels {
			t.Requests[c] += e.Requests[c]
			t.Errors[c] += e.Errors[c]
			t.Bytes[c] += e.Bytes[c]
		}
	}
	return t
}

// TestSnapshotCounts: a known load on two exports over two shards shows
// up in the snapshot under the right export and command, with errors,
// bytes, connections, latency counts and handshake results.
func TestSnapshotCounts(t *testing.T) {
	srv, sock := twoExportServer(t, 1<<20, 2)
	a := dial(t, sock, wire.ClientOptions{Name: "a", BlockSize: true})
	b1 := dial(t, sock, wire.ClientOptions{Name: "b", BlockSize: true})
	b2 := dial(t, sock, wire.ClientOptions{Name: "b", BlockSize: true})
	buf, data := make([]byte, 8192), bytes.Repeat([]byte{7}, 8192)
	for i := 0; i < 10; i++ {
		if e := a.do(wire.CmdRead, 0, uint64(i)*4096, 4096, nil, buf[:4096]); e != 0 {
			t.Fatal(e)
		}
	}
	for i := 0; i < 3; i++ {
		if e := a.do(wire.CmdWrite, 0, uint64(i)*8192, 8192, data, nil); e != 0 {
			t.Fatal(e)
		}
	}
	a.do(wire.CmdFlush, 0, 0, 0, nil, nil)
	for i := 0; i < 2; i++ {
		if e := a.do(wire.CmdRead, 0, 1<<20, 4096, nil, nil); e != wire.EINVAL {
			t.Fatalf("read past the end: %v", e)
		}
	}
	a.do(wire.Cmd(42), 0, 0, 512, nil, nil)
	for i := 0; i < 5; i++ {
		b1.do(wire.CmdWrite, 0, 0, 4096, data[:4096], nil)
	}
	b2.do(wire.CmdRead, 0, 0, 8192, nil, buf)
	// A TRIM counts no bytes; a READ after it does (a simple reply reads
	// the hole from the file).
	if e := b1.do(wire.CmdTrim, 0, 1<<19, 65536, nil, nil); e != 0 {
		t.Fatalf("trim: %v", e)
	}
	b2.do(wire.CmdRead, 0, 1<<19, 4096, nil, buf[:4096])
	// A handshake the client abandons, one the server refuses.
	c, err := net.Dial("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	c.Close()
	c, err = net.Dial("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	c.Read(make([]byte, 18))             // the greeting
	c.Write([]byte{0xff, 0xff, 0xff, 0}) // client flags the server does not know
	c.Read(make([]byte, 1))              // until the server closes
	c.Close()

	// The client may read a reply before the shard reaps its send's
	// completion, which is when the latency is taken: wait for both.
	const replies = 25 // 14 reads, 8 writes, a flush, a trim, an unknown command
	var sn *Snapshot
	deadline := time.Now().Add(5 * time.Second)
	for sn = srv.Snapshot(); sn.Handshakes[hsAborted] == 0 || sn.Handshakes[hsRefused] == 0 ||
		latencyCount(sn) < replies; {
		if time.Now().After(deadline) {
			t.Fatalf("handshakes %v: want an aborted and a refused one; %d of %d "+
				"latencies", sn.Handshakes, latencyCount(sn), replies)
		}
		time.Sleep(10 * time.Millisecond)
		sn = srv.Snapshot()
	}
	if sn.Handshakes != [hsResults]uint64{hsOK: 3, hsRefused: 1, hsAborted: 1} {
		t.Errorf("handshakes %v, want 3 ok, 1 refused, 1 aborted", sn.Handshakes)
	}
	if len(sn.Exports) != 2 || sn.Exports[0].Name != "a" || sn.Exports[1].Name != "b" {
		t.Fatalf("exports %+v", sn.Exports)
	}
	ea, eb := exportTotals(sn, 0), exportTotals(sn, 1)
	rd, wr, fl, unk := wire.CmdRead, wire.CmdWrite, wire.CmdFlush, cmdUnknown
	for _, c := range []struct {
		name      string
		got, want uint64
	}{
		{"a conns", uint64(ea.Conns), 1}, {"b conns", uint64(eb.Conns), 2},
		{"a reads", ea.Requests[rd], 12}, {"a read errors", ea.Errors[rd], 2},
		{"a read bytes", ea.Bytes[rd], 10 * 4096},
		{"a writes", ea.Requests[wr], 3}, {"a write bytes", ea.Bytes[wr], 3 * 8192},
		{"a flushes", ea.Requests[fl], 1}, {"a write errors", ea.Errors[wr], 0},
		{"a unknown", ea.Requests[unk], 1}, {"a unknown errors", ea.Errors[unk], 1},
		{"b writes", eb.Requests[wr], 5}, {"b write bytes", eb.Bytes[wr], 5 * 4096},
		{"b reads", eb.Requests[rd], 2}, {"b read bytes", eb.Bytes[rd], 8192 + 4096},
		{"b trims", eb.Requests[wire.CmdTrim], 1}, {"b trim bytes", eb.Bytes[wire.CmdTrim], 0},
	} {
		if c.got != c.want {
			t.Errorf("%s: %d, want %d", c.name, c.got, c.want)
		}
	}
	var lat [cmdLabels]uint64
	for _, ss := range sn.Shards {
		for cmd, h := range ss.Latency {
			lat[cmd] += h.Count
			if h.Count > 0 && h.Sum <= 0 {
				t.Errorf("shard %d %s: %d latencies summing to %v", ss.ID, cmdLabel[cmd],
					h.Count, h.Sum)
			}
		}
	}
	if lat[rd] != 14 || lat[wr] != 8 || lat[fl] != 1 || lat[unk] != 1 {
		t.Errorf("latencies counted: read %d write %d flush %d unknown %d; want 14 8 1 1",
			lat[rd], lat[wr], lat[fl], lat[unk])
	}
	var page strings.Builder
	sn.WriteCounters(&page)
	if !strings.Contains(page.String(), "  requests_READ") {
		t.Errorf("/counters lacks requests_READ:\n%s", page.String())
	}
}

func latencyCount(sn *Snapshot) uint64 {
	var n uint64
	for _, ss := range sn.Shards {
		for _, h := range ss.Latency {
			n += h.Count
		}
	}
	return n
}

func TestHistogramBuckets(t *testing.T) {
	var h histogram
	for _, d := range []time.Duration{0, 10 * time.Microsecond, 11 * time.Microsecond,
		time.Millisecond, time.Minute} {
		h.observe(int64(d))
	}
	want := map[int]uint64{0: 2, 1: 1, 6: 1, latencyBuckets: 1} // le is inclusive
	for i := range h.counts {
		if got := h.counts[i].Load(); got != want[i] {
			t.Errorf("bucket %d (le %v): %d, want %d", i, latencyBounds[min(i,
				latencyBuckets-1)], got, want[i])
		}
	}
	for i := 1; i < latencyBuckets; i++ {
		if latencyBounds[i] <= latencyBounds[i-1] {
			t.Fatalf("bounds not increasing at %d: %v", i, latencyBounds)
		}
	}
}

func TestHandshakeResult(t *testing.T) {
	past, future := time.Now().Add(-time.Second), time.Now().Add(time.Hour)
	for _, c := range []struct {
		handed   bool
		result   int
		deadline time.Time
		want     int
	}{
		{true, hsAborted, past, hsOK}, {false, hsRefused, past, hsRefused},
		{false, hsTLSFailed, future, hsTLSFailed}, {false, hsTLSFailed, past, hsTimedOut},
		{false, hsAborted, past, hsTimedOut},
		{false, hsAborted, future, hsAborted},
	} {
		if got := handshakeResult(c.handed, c.result, c.deadline); got != c.want {
			t.Errorf("%+v: %s, want %s", c, hsLabel[got], hsLabel[c.want])
		}
	}
}

//go:linkname nanotime runtime.nanotime
func nanotime() int64

// BenchmarkClock is what one clock read costs on the request path: time.Now
// reads the wall and the monotonic clock, time.Since of a monotonic epoch
// (shard.clock) only the monotonic one, as runtime.nanotime does; a
// clock_gettime system call is there for scale.
func BenchmarkClock(b *testing.B) {
	epoch := time.Now()
	var sink int64
	for _, c := range []struct {
		name string
		read func() int64
	}{
		{"time.Now", func() int64 { return time.Now().UnixNano() }},
		{"time.Since", func() int64 { return int64(time.Since(epoch)) }},
		{"runtime.nanotime", nanotime},
		{"clock_gettime", func() int64 {
			var ts unix.Timespec
			_ = unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts)
			return ts.Nano()
		}},
	} {
		b.Run(c.name, func(b *testing.B) {
			b.ReportAllocs()
			for i := 0; i < b.N; i++ {
				sink += c.read()
			}
		})
	}
	_ = sink
}

// TestBackpressureCountsOnce: a held request is retried on every turn of
// the loop; it is one wait however often it fails, and the next request
// that waits is another.
func TestBackpressureCountsOnce(t *testing.T) {
	var m shardMetrics
	m.init(1)
	m.countRequest(0, wire.CmdRead)
	for i := 0; i < 5; i++ {
		m.countWait(0)
	}
	if n := m.backpressure.Load(); n != 1 {
		t.Fatalf("one request retried 5 times: %d waits, want 1", n)
	}
	m.countRequest(0, wire.CmdRead)
	m.countWait(0)
	if n := m.backpressure.Load(); n != 2 {
		t.Fatalf("a second waiting request: %d waits, want 2", n)
	}
}

// BenchmarkRequestMetrics is what the metrics add to one request: count
// and time it at decode, count its bytes, and time its reply when its send
// completes (one clock read per batch; here a batch of one, the worst case).
func BenchmarkRequestMetrics(b *testing.B) {
	var m shardMetrics
	m.init(1)
	b.ReportAllocs()
	for i := 0; i < b.N; i++ {
		m.countRequest(0, wire.CmdRead)
		m.slotTimed(0, 0)
		m.countBytes(0, wire.CmdRead, 4096)
		m.observeSent(0, wire.CmdRead, m.clock())
	}
}

// TestTLSHandshakeMetrics: a client without the certificate the server
// requires fails the TLS handshake and counts as tls_failed, not as
// refused or aborted; a good one counts ok.
func TestTLSHandshakeMetrics(t *testing.T) {
	srv, sock, client := testTLSServer(t, 1<<20, wire.TLSRequire)
	dialTLS(t, sock, client, wire.ClientOptions{})
	anon := client.Clone()
	anon.Certificates = nil
	c, err := net.Dial("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	_, err = wire.ClientHandshake(c, wire.ClientOptions{TLS: func(rw io.ReadWriter) (
		io.ReadWriter, error) {
		tc := tls.Client(c, anon)
		return tc, tc.Handshake()
	}})
	if err == nil {
		t.Fatal("a client without a certificate got through")
	}
	want := [hsResults]uint64{hsOK: 1, hsTLSFailed: 1}
	deadline := time.Now().Add(5 * time.Second)
	for srv.Snapshot().Handshakes != want {
		if time.Now().After(deadline) {
			t.Fatalf("handshakes %v, want %v", srv.Snapshot().Handshakes, want)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
