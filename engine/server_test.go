package engine

import (
	"bytes"
	"encoding/binary"
	"io"
	"math/rand"
	"net"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/nbdring/nbdring/wire"
)

// testServer serves a fresh sparse file of size bytes on a Unix socket,
// with its I/O on the ring.
func testServer(t testing.TB, size int64, shards int) (srv *Server, sock, path string) {
	t.Helper()
	return testServerIO(t, size, shards, InlineOff)
}

// inlineModes are the two ways a shard does device I/O; tests of the
// request path run under both.
var inlineModes = []struct {
	name string
	mode InlineMode
}{{"ring", InlineOff}, {"inline", InlineOn}}

// testServerIO is testServer with the export's I/O mode chosen.
func testServerIO(t testing.TB, size int64, shards int, mode InlineMode) (srv *Server,
	sock, path string) {
	t.Helper()
	return testServerConfig(t, size, mode, Config{Shards: shards, ArenaSize: 128 << 20})
}

// testServerConfig is testServerIO with the server's whole configuration.
func testServerConfig(t testing.TB, size int64, mode InlineMode, cfg Config) (srv *Server,
	sock, path string) {
	t.Helper()
	dir := t.TempDir()
	path = filepath.Join(dir, "img")
	if err := os.WriteFile(path, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(path, size); err != nil {
		t.Fatal(err)
	}
	exp, err := OpenExport(ExportConfig{Path: path, Inline: mode})
	if err != nil {
		skipMissing(t, "direct-io", "cannot serve a file here: %v", err)
	}
	srv, sock = serveOn(t, dir, cfg, []*Export{exp})
	return srv, sock, path
}

// serveOn starts a server for exps on a Unix socket in dir, stopped when
// the test ends.
func serveOn(t testing.TB, dir string, cfg Config, exps []*Export) (*Server, string) {
	t.Helper()
	srv, err := New(cfg, exps)
	if err != nil {
		skipMissing(t, "io_uring", "engine unavailable here: %v", err)
	}
	sock := filepath.Join(dir, "sock")
	ln, err := Listen("unix:" + sock)
	if err != nil {
		t.Fatal(err)
	}
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	t.Cleanup(func() {
		if err := srv.Stop(); err != nil {
			t.Errorf("stop: %v", err)
		}
		if err := <-errc; err != nil {
			t.Errorf("serve: %v", err)
		}
	})
	return srv, sock
}

// pipelinedReads encodes count READs of n bytes each (cookie i at offset
// (i mod 512) x n), to be sent in one write.
func pipelinedReads(count int, n uint64) []byte {
	var reqs []byte
	for i := 0; i < count; i++ {
		var b [wire.RequestSize]byte
		wire.EncodeRequest(b[:], &wire.Request{Type: wire.CmdRead, Cookie: uint64(i),
			Offset: uint64(i%512) * n, Length: n})
		reqs = append(reqs, b[:]...)
	}
	return reqs
}

type testClient struct {
	t   testing.TB
	c   net.Conn
	ex  wire.ClientExport
	hdr [wire.ChunkHeaderSize + 8]byte
	req [wire.RequestSize]byte
}

func dial(t testing.TB, sock string, o wire.ClientOptions) *testClient {
	t.Helper()
	c, err := net.Dial("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	_ = c.SetDeadline(time.Now().Add(20 * time.Second))
	ex, err := wire.ClientHandshake(c, o)
	if err != nil {
		t.Fatal(err)
	}
	return &testClient{t: t, c: c, ex: ex}
}

func (tc *testClient) send(typ wire.Cmd, flags wire.CmdFlags, cookie, off uint64, n uint32,
	payload []byte) {
	wire.EncodeRequest(tc.req[:], &wire.Request{Type: typ, Flags: flags, Cookie: cookie,
		Offset: off, Length: uint64(n)})
	if _, err := tc.c.Write(tc.req[:]); err != nil {
		tc.t.Fatal(err)
	}
	if payload != nil {
		if _, err := tc.c.Write(payload); err != nil {
			tc.t.Fatal(err)
		}
	}
}

// simple reads a simple reply (and data into buf on success) and returns
// its cookie and error.
func (tc *testClient) simple(buf []byte) (uint64, wire.Errno) {
	if _, err := io.ReadFull(tc.c, tc.hdr[:wire.SimpleReplySize]); err != nil {
		tc.t.Fatal(err)
	}
	if m := binary.BigEndian.Uint32(tc.hdr[:]); m != wire.MagicSimple {
		tc.t.Fatalf("want a simple reply, got magic %#x", m)
	}
	errno := wire.Errno(binary.BigEndian.Uint32(tc.hdr[4:]))
	if errno == 0 && buf != nil {
		if _, err := io.ReadFull(tc.c, buf); err != nil {
			tc.t.Fatal(err)
		}
	}
	return binary.BigEndian.Uint64(tc.hdr[8:]), errno
}

func (tc *testClient) do(typ wire.Cmd, flags wire.CmdFlags, off uint64, n uint32,
	payload, buf []byte) wire.Errno {
	tc.send(typ, flags, 7, off, n, payload)
	cookie, errno := tc.simple(buf)
	if cookie != 7 {
		tc.t.Fatalf("reply cookie %d, want 7", cookie)
	}
	return errno
}

// TestRequestPathAllocations proves the request path allocates nothing:
// server and client share the process, so every malloc of either counts.
func TestRequestPathAllocations(t *testing.T) {
	for _, m := range inlineModes {
		t.Run(m.name, func(t *testing.T) { testRequestPathAllocations(t, m.mode) })
	}
}

func testRequestPathAllocations(t *testing.T, mode InlineMode) {
	srv, sock, _ := testServerIO(t, 16<<20, 1, mode)
	tc := dial(t, sock, wire.ClientOptions{BlockSize: true})
	data := bytes.Repeat([]byte{0xa5}, 4096)
	buf := make([]byte, 4096)
	for _, c := range []struct {
		name string
		run  func()
	}{
		{"write4k", func() { tc.do(wire.CmdWrite, 0, 8192, 4096, data, nil) }},
		{"read4k", func() { tc.do(wire.CmdRead, 0, 8192, 4096, nil, buf) }},
		{"writeFUA", func() { tc.do(wire.CmdWrite, wire.CmdFlagFUA, 0, 4096, data, nil) }},
		{"flush", func() { tc.do(wire.CmdFlush, 0, 0, 0, nil, nil) }},
		{"rejected", func() { tc.do(wire.CmdRead, 0, 1<<40, 4096, nil, nil) }},
	} {
		c.run() // warm up
		if allocs := testing.AllocsPerRun(200, c.run); allocs != 0 {
			t.Errorf("%s: %v allocations per request", c.name, allocs)
		}
	}
	if !bytes.Equal(buf, data) {
		t.Fatal("read back different data")
	}
	if n := srv.shards[0].stats.InlineOps.Load(); (n > 0) != (mode == InlineOn) {
		t.Fatalf("%d device operations done inline in mode %d", n, mode)
	}
}

// TestBadInput covers the spec's answers; the connection stays usable
// after each except the hard disconnects, which spare other clients.
func TestBadInput(t *testing.T) {
	_, sock, _ := testServer(t, 1<<20, 2)
	tc := dial(t, sock, wire.ClientOptions{BlockSize: true, Structured: false})
	other := dial(t, sock, wire.ClientOptions{BlockSize: true})
	pay := make([]byte, 4096)
	for _, c := range []struct {
		name    string
		typ     wire.Cmd
		flags   wire.CmdFlags
		off     uint64
		n       uint32
		payload []byte
		want    wire.Errno
	}{
		{"read past end", wire.CmdRead, 0, 1 << 20, 512, nil, wire.EINVAL},
		{"read offset overflow", wire.CmdRead, 0, 1<<64 - 512, 1024, nil, wire.EINVAL},
		{"write past end", wire.CmdWrite, 0, 1<<20 - 512, 4096, pay, wire.ENOSPC},
		{"trim past end", wire.CmdTrim, 0, 1 << 20, 4096, nil, wire.EINVAL},
		{"unknown command", wire.Cmd(42), 0, 0, 512, nil, wire.EINVAL},
		{"unknown flag", wire.CmdRead, 1 << 9, 0, 512, nil, wire.EINVAL},
		{"unaligned read", wire.CmdRead, 0, 1, 512, nil, wire.EINVAL},
		{"unaligned write drained", wire.CmdWrite, 0, 0, 100, pay[:100], wire.EINVAL},
		{"zero length read", wire.CmdRead, 0, 0, 0, nil, wire.EINVAL},
		{"DF without structured", wire.CmdRead, wire.CmdFlagDF, 0, 512, nil, wire.EINVAL},
	} {
		if got := tc.do(c.typ, c.flags, c.off, c.n, c.payload, nil); got != c.want {
			t.Errorf("%s: %v, want %v", c.name, got, c.want)
		}
		buf := make([]byte, 512)
		if got := tc.do(wire.CmdRead, 0, 0, 512, nil, buf); got != 0 {
			t.Fatalf("after %s: connection unusable: %v", c.name, got)
		}
	}
	// A bad magic is a hard disconnect of that client only.
	if _, err := tc.c.Write(make([]byte, wire.RequestSize)); err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(tc.c, make([]byte, 1)); err == nil {
		t.Fatal("server answered a request with a bad magic")
	}
	if got := other.do(wire.CmdWrite, 0, 0, 4096, pay, nil); got != 0 {
		t.Fatalf("other client broken after a bad magic: %v", got)
	}
	// A WRITE beyond 32 MiB is a hard disconnect too.
	big := dial(t, sock, wire.ClientOptions{})
	big.send(wire.CmdWrite, 0, 1, 0, wire.PayloadMax+1, nil)
	if _, err := io.ReadFull(big.c, make([]byte, 1)); err == nil {
		t.Fatal("server answered a WRITE over 32 MiB")
	}
	if got := other.do(wire.CmdFlush, 0, 0, 0, nil, nil); got != 0 {
		t.Fatalf("other client broken after an oversized write: %v", got)
	}
}

// TestUnalignedConcurrentWrites: clients that never asked for block sizes
// write disjoint bytes of the same blocks at once, on connections spread
// over two shards; every byte must survive (the range lock at work).
func TestUnalignedConcurrentWrites(t *testing.T) {
	for _, m := range inlineModes {
		t.Run(m.name, func(t *testing.T) { testUnalignedConcurrentWrites(t, m.mode) })
	}
}

func testUnalignedConcurrentWrites(t *testing.T, mode InlineMode) {
	_, sock, _ := testServerIO(t, 1<<20, 2, mode)
	const writers, rounds, batch, run = 4, 40, 8, 3
	const size = 8192
	models := make([][]byte, writers)
	var wg sync.WaitGroup
	for w := 0; w < writers; w++ {
		tc := dial(t, sock, wire.ClientOptions{})
		models[w] = make([]byte, size)
		wg.Add(1)
		go func(w int, tc *testClient, model []byte) {
			defer wg.Done()
			rng := rand.New(rand.NewSource(int64(w)))
			runs := size / (run * writers)
			for r := 0; r < rounds; r++ {
				// A batch of writes to distinct runs of this writer's, all
				// in flight together; replies are read after.
				for k, slot := range rng.Perm(runs)[:batch] {
					off := slot*run*writers + run*w // writer w owns these bytes
					b := []byte{byte(w + 1), byte(r), byte(k)}
					copy(model[off:], b)
					tc.send(wire.CmdWrite, 0, uint64(k), uint64(off), run, b)
				}
				for k := 0; k < batch; k++ {
					if _, errno := tc.simple(nil); errno != 0 {
						t.Errorf("writer %d: %v", w, errno)
						return
					}
				}
			}
		}(w, tc, models[w])
	}
	wg.Wait()
	want := make([]byte, size)
	for _, m := range models {
		for i, b := range m {
			if b != 0 {
				want[i] = b
			}
		}
	}
	tc := dial(t, sock, wire.ClientOptions{})
	got := make([]byte, size)
	if errno := tc.do(wire.CmdRead, 0, 0, size, nil, got); errno != 0 {
		t.Fatal(errno)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("byte %d is %d, want %d (writer %d's write was lost)",
				i, got[i], want[i], (i/run)%writers)
		}
	}
}

// TestVanishingClients: clients that disappear with reads and writes in
// flight (or mid-payload) leave no connection, slot, buffer or fd behind,
// and the server keeps serving.
func TestVanishingClients(t *testing.T) {
	for _, m := range inlineModes {
		t.Run(m.name, func(t *testing.T) { testVanishingClients(t, m.mode) })
	}
}

func testVanishingClients(t *testing.T, mode InlineMode) {
	srv, sock, _ := testServerIO(t, 64<<20, 2, mode)
	fds := func() int {
		ents, err := os.ReadDir("/proc/self/fd")
		if err != nil {
			t.Fatal(err)
		}
		return len(ents)
	}
	before := fds()
	pay := make([]byte, 1<<20)
	for i := 0; i < 20; i++ {
		tc := dial(t, sock, wire.ClientOptions{BlockSize: true})
		for k := 0; k < 16; k++ {
			tc.send(wire.CmdRead, 0, uint64(k), uint64(k)<<20, 1<<20, nil)
			tc.send(wire.CmdWrite, wire.CmdFlagFUA, uint64(k), uint64(k)<<20, 1<<20, pay)
		}
		// Half-way through a payload, then gone.
		tc.send(wire.CmdWrite, 0, 99, 0, 1<<20, pay[:1000])
		tc.c.Close()
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		var conns, inflight, arena, ops int64
		for _, sh := range srv.shards {
			conns += sh.snapshot().Conns()
			inflight += sh.stats.Inflight.Load()
			arena += sh.stats.ArenaBytes.Load()
			ops += sh.stats.OpsInflight.Load() - 1 // less the wake-up read
		}
		if conns == 0 && inflight == 0 && arena == 0 && ops == 0 && fds() <= before {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("leak: %d connections, %d slots, %d arena bytes, %d kernel ops, "+
				"%d fds (was %d)", conns, inflight, arena, ops, fds(), before)
		}
		time.Sleep(20 * time.Millisecond)
	}
	for _, sh := range srv.shards {
		if n := sh.stats.Stale.Load(); n != 0 {
			t.Fatalf("shard %d dropped %d stale completions: a slot or connection was "+
				"recycled while the kernel held it", sh.id, n)
		}
	}
	tc := dial(t, sock, wire.ClientOptions{BlockSize: true})
	if got := tc.do(wire.CmdWrite, 0, 0, 4096, pay[:4096], nil); got != 0 {
		t.Fatalf("server unusable after vanishing clients: %v", got)
	}
}
