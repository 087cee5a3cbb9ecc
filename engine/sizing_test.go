package engine

import (
	"net"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/nbdring/nbdring/ring"
	"github.com/nbdring/nbdring/wire"
)

// TestSizeShards: the memory a server pins follows its configuration, and
// a 64-shard host pins about 1 GiB by default, not 64 x 146 MiB.
func TestSizeShards(t *testing.T) {
	cases := []struct {
		cfg      Config
		shards   int
		arena    int
		blockMax uint32
		conns    int
		slots    int
	}{
		{Config{}, 2, 128 << 20, 32 << 20, 128, 1024},
		{Config{}, 8, 128 << 20, 32 << 20, 32, 1024},
		{Config{}, 64, 16 << 20, 4 << 20, 4, 512},
		{Config{Memory: 2 << 30}, 64, 32 << 20, 8 << 20, 4, 512},
		{Config{MaxConns: 8}, 2, 128 << 20, 32 << 20, 4, 512},
		{Config{ArenaSize: 4 << 20, MaxConns: 1}, 1, 4 << 20, 1 << 20, 1, 128},
		{Config{ArenaSize: 1 << 30}, 2, 1 << 30, 32 << 20, 128, 1024},
	}
	for _, c := range cases {
		sz, err := sizeShards(c.cfg, c.shards)
		if err != nil {
			t.Errorf("%+v on %d shards: %v", c.cfg, c.shards, err)
			continue
		}
		if sz.arena != c.arena || sz.blockMax != c.blockMax || sz.conns != c.conns ||
			sz.slotsShared != c.slots || sz.slots != c.slots+c.conns {
			t.Errorf("%+v on %d shards: %+v, want arena %d MiB, requests to %d MiB, "+
				"%d conns, %d shared slots and one more each", c.cfg, c.shards, sz, c.arena>>20, c.blockMax>>20,
				c.conns, c.slots)
		}
		// The completion queue (twice the ring) holds everything in flight.
		// The reserve serves every connection's only request at once, and
		// the shared part the largest request (an unaligned WRITE: 3n).
		if sz.conns*sz.resvReq > sz.arena-sz.shared || sz.resvReq < arenaBlockSize ||
			3*int(sz.blockMax) > sz.shared {
			t.Errorf("%+v: reserve of %d bytes for %d connections of %d bytes each",
				c.cfg, sz.arena-sz.shared, sz.conns, sz.resvReq)
		}
		if need := uint32(sz.slots + 2*sz.conns + 3); 2*sz.ring < need ||
			sz.ring&(sz.ring-1) != 0 {
			t.Errorf("%+v: ring of %d entries for %d operations in flight", c.cfg, sz.ring,
				need)
		}
		// An unaligned write of the largest size fits an empty arena.
		if span := orderFor(int(sz.blockMax) + 2*arenaBlockSize); arenaBlockSize<<span+
			int(sz.blockMax) > sz.arena {
			t.Errorf("%+v: a %d-byte unaligned write does not fit a %d-byte arena",
				c.cfg, sz.blockMax, sz.arena)
		}
	}
	sz, _ := sizeShards(Config{}, 64)
	if total := 64 * (sz.arena + sz.metaSize()); total > 1100<<20 {
		t.Errorf("64 shards by default pin %d MiB", total>>20)
	}
	for _, c := range []struct {
		cfg    Config
		shards int
		want   string
	}{
		{Config{Memory: 6 << 20}, 2, "-memory-mib 6: 2 shards need at least 4 MiB"},
		{Config{MaxConns: 600}, 2, "-max-connections 600: want 1 to 512"},
		{Config{MaxConns: -1}, 1, "-max-connections -1"},
		{Config{ArenaSize: 3 << 20}, 1, "-arena-mib 3: "},
	} {
		if _, err := sizeShards(c.cfg, c.shards); err == nil ||
			!strings.Contains(err.Error(), c.want) {
			t.Errorf("%+v on %d shards: %v, want %q", c.cfg, c.shards, err, c.want)
		}
	}
}

// TestSmallArenaServes: a shard with the smallest arena advertises the
// largest request it serves, answers a longer READ or WRITE with EINVAL
// (the WRITE's payload drained, the connection still in step), and
// serves one unaligned write of the largest size.
func TestSmallArenaServes(t *testing.T) {
	_, sock, _ := testServerConfig(t, 8<<20, InlineOff,
		Config{Shards: 1, ArenaSize: arenaSizeMin})
	tc := dial(t, sock, wire.ClientOptions{BlockSize: true})
	const max = arenaSizeMin / arenaPerBlockMax
	if tc.ex.BlockMax != max {
		t.Fatalf("advertised maximum %d, want %d", tc.ex.BlockMax, max)
	}
	big := make([]byte, 2*max)
	if e := tc.do(wire.CmdRead, 0, 0, 2*max, nil, big); e != wire.EINVAL {
		t.Errorf("READ of %d: %v, want EINVAL", 2*max, e)
	}
	if e := tc.do(wire.CmdWrite, 0, 0, 2*max, big, nil); e != wire.EINVAL {
		t.Errorf("WRITE of %d: %v, want EINVAL", 2*max, e)
	}
	// Unaligned, so it needs its span and its payload at once.
	tcLoose := dial(t, sock, wire.ClientOptions{})
	data := make([]byte, max)
	for i := range data {
		data[i] = byte(i*3 + 1)
	}
	if e := tcLoose.do(wire.CmdWrite, 0, 100, max, data, nil); e != wire.EOK {
		t.Fatalf("unaligned WRITE of %d: %v", max, e)
	}
	got := make([]byte, max)
	if e := tc.do(wire.CmdRead, 0, 0, max, nil, got); e != wire.EOK {
		t.Fatalf("READ after: %v", e)
	}
	if string(got[100:]) != string(data[:max-100]) {
		t.Error("the unaligned write did not land")
	}
}

// TestMaxConnections: a connection past -max-connections is closed
// before its handshake, and one that ends makes room for the next.
func TestMaxConnections(t *testing.T) {
	srv, sock, _ := testServerConfig(t, 1<<20, InlineOff,
		Config{Shards: 1, ArenaSize: arenaSizeMin, MaxConns: 2})
	a := dial(t, sock, wire.ClientOptions{})
	dial(t, sock, wire.ClientOptions{})
	// A client's handshake ends with the server's last reply, a moment
	// before the server counts the connection on its shard (the shard's
	// own bound covers that moment); the limit is checked at accept, so
	// wait until both are counted.
	for wait := time.Now().Add(10 * time.Second); srv.connections() < 2; {
		if time.Now().After(wait) {
			t.Fatalf("%d connections counted, want 2", srv.connections())
		}
		time.Sleep(time.Millisecond)
	}
	c, err := net.Dial("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := wire.ClientHandshake(c, wire.ClientOptions{}); err == nil {
		t.Fatal("a third connection was served with -max-connections 2")
	}
	a.c.Close()
	deadline := time.Now().Add(10 * time.Second)
	for {
		c, err := net.Dial("unix", sock)
		if err != nil {
			t.Fatal(err)
		}
		_ = c.SetDeadline(time.Now().Add(10 * time.Second))
		_, err = wire.ClientHandshake(c, wire.ClientOptions{})
		c.Close()
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no room after a connection ended: %v", err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestBatchWait: with a batch wait, pipelined requests on two connections
// and requests one at a time are all answered; a kernel without min-wait
// falls back to plain waits, and a wait past the bound is refused.
func TestBatchWait(t *testing.T) {
	feat, err := ring.ProbeFeatures()
	if err != nil {
		skipMissing(t, "io_uring", "io_uring unavailable here: %v", err)
	}
	if us, err := batchWaitFor(20, ring.Features{}); us != 0 || err != nil {
		t.Errorf("without min-wait: %d us, %v; want plain waits", us, err)
	}
	if _, err := batchWaitFor(batchWaitMax+1, feat); err == nil ||
		!strings.Contains(err.Error(), "-batch-wait-us 1001: at most 1000") {
		t.Errorf("a wait past the bound: %v", err)
	}
	if !feat.MinWait {
		skipMissing(t, "kernel", "this kernel has no io_uring min-wait (Linux 6.12)")
	}
	srv, sock, _ := testServerConfig(t, 4<<20, InlineOff,
		Config{Shards: 1, ArenaSize: arenaSizeMin, BatchWait: 200})
	if srv.batchWait != 200 {
		t.Fatalf("batch wait %d, want 200", srv.batchWait)
	}
	const reads = 256
	var conns []*testClient
	for range 2 {
		tc := dial(t, sock, wire.ClientOptions{})
		if _, err := tc.c.Write(pipelinedReads(reads, 4096)); err != nil {
			t.Fatal(err)
		}
		conns = append(conns, tc)
	}
	buf := make([]byte, 4096)
	for _, tc := range conns {
		seen := make([]bool, reads)
		for range reads {
			cookie, e := tc.simple(buf)
			if e != wire.EOK || cookie >= reads || seen[cookie] {
				t.Fatalf("reply %d: %v", cookie, e)
			}
			seen[cookie] = true
		}
	}
	for i := range 50 {
		if e := conns[0].do(wire.CmdRead, 0, uint64(i)*4096, 4096, nil, buf); e != wire.EOK {
			t.Fatalf("READ %d alone: %v", i, e)
		}
	}
	r := srv.Snapshot().Shards[0]
	t.Logf("%d completions in %d enters; %d replies in %d sends", r.RingCompletions,
		r.RingEnters, r.SentReplies, r.Sends)
	if r.SentReplies != 2*reads+50 || r.Sends == 0 || r.Sends > r.SentReplies {
		t.Errorf("%d replies in %d sends, want %d replies", r.SentReplies, r.Sends, 2*reads+50)
	}
}

// TestShardsKeepProcs: shards wait in io_uring_enter holding their P, so
// with a shard on every CPU the rest of the process still runs: a client
// is served, and a garbage collection (which must stop every P) ends.
func TestShardsKeepProcs(t *testing.T) {
	n := runtime.NumCPU()
	_, sock, _ := testServerConfig(t, 1<<20, InlineOff, Config{Shards: n,
		ArenaSize: arenaSizeMin})
	if p := runtime.GOMAXPROCS(0); p < n+controlProcs {
		t.Errorf("GOMAXPROCS %d with %d shards waiting", p, n)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for range 5 {
			runtime.GC()
		}
	}()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("5 garbage collections took over 10 s with every shard waiting")
	}
	tc := dial(t, sock, wire.ClientOptions{})
	if e := tc.do(wire.CmdRead, 0, 0, 4096, nil, make([]byte, 4096)); e != wire.EOK {
		t.Fatalf("READ: %v", e)
	}
}
