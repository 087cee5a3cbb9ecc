package engine

import (
	"errors"
	"io"
	"net"
	"os"
	"testing"
	"time"

	"github.com/nbdring/nbdring/wire"
)

// hostileReads connects and pipelines count READs of n bytes, never reading
// a reply: its replies fill the socket and then wait in the arena.
func hostileReads(t *testing.T, sock string, count int, n uint64) *testClient {
	t.Helper()
	tc := dial(t, sock, wire.ClientOptions{BlockSize: true})
	if _, err := tc.c.Write(pipelinedReads(count, n)); err != nil {
		t.Fatal(err)
	}
	return tc
}

// victimReads does QD1 4 KiB READs on a connection of its own and fails
// the test if one is not answered within a few seconds.
func victimReads(t *testing.T, sock string, reads int) {
	t.Helper()
	tc := dial(t, sock, wire.ClientOptions{BlockSize: true})
	buf := make([]byte, 4096)
	for i := range reads {
		_ = tc.c.SetDeadline(time.Now().Add(5 * time.Second))
		tc.send(wire.CmdRead, 0, uint64(i), uint64(i)*4096, 4096, nil)
		if _, errno := tc.simple(buf); errno != wire.EOK {
			t.Fatalf("victim read %d: %v", i, errno)
		}
	}
}

// TestTenantsCannotStarveNewConnection: connections that pipeline READs
// and never read a reply fill what they may of the shard: 1 MiB READs its
// arena, 4 KiB READs its slots. A new connection's QD1 READs are still
// answered at once, from the reserve (limits.go, arenaReserveShare).
// Before the rule, the arena (or the slot table) filled with replies that
// could not leave and the new connection waited forever.
func TestTenantsCannotStarveNewConnection(t *testing.T) {
	for _, c := range []struct {
		name         string
		arena, conns int
		reads        int
		n            uint64
	}{
		{"arena", 16 << 20, 6, 128, 1 << 20}, // 6 x 4 MiB (connBuf) > 16 MiB
		{"slots", 32 << 20, 10, 400, 4096},   // 10 x 128 slots > 1024
	} {
		t.Run(c.name, func(t *testing.T) {
			srv, sock, _ := testServerConfig(t, 64<<20, InlineOff,
				Config{Shards: 1, ArenaSize: c.arena, MaxConns: 32})
			for range c.conns {
				hostileReads(t, sock, c.reads, c.n)
			}
			st := &srv.shards[0].stats
			settle(t, st)
			t.Logf("hostile connections hold %d slots and %d MiB", st.Inflight.Load(),
				st.ArenaBytes.Load()>>20)
			victimReads(t, sock, 50)
			victimReads(t, sock, 50) // and another: the reserve came back
		})
	}
}

// settle waits until the shard's slots and arena bytes in use stop moving.
func settle(t *testing.T, st *ShardStats) {
	t.Helper()
	var last, same int64
	for deadline := time.Now().Add(10 * time.Second); same < 10; {
		n := st.Inflight.Load()<<32 | st.ArenaBytes.Load()
		if n == last {
			same++
		} else {
			last, same = n, 0
		}
		if time.Now().After(deadline) {
			t.Fatal("the hostile connections never settled")
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestIOTimeoutCutsStalledConnections: with -io-timeout, a connection that
// does not read its replies, one stalled in a WRITE payload and one
// stalled in a request header are cut and counted; an idle connection is
// not, and still serves.
func TestIOTimeoutCutsStalledConnections(t *testing.T) {
	srv, sock, _ := testServerConfig(t, 64<<20, InlineOff,
		Config{Shards: 1, ArenaSize: 16 << 20, IOTimeout: 300 * time.Millisecond})
	unread := hostileReads(t, sock, 128, 1<<20)
	payload := dial(t, sock, wire.ClientOptions{BlockSize: true})
	payload.send(wire.CmdWrite, 0, 1, 0, 1<<20, make([]byte, 1000))
	header := dial(t, sock, wire.ClientOptions{BlockSize: true})
	if _, err := header.c.Write(make([]byte, wire.RequestSize/2)); err != nil {
		t.Fatal(err)
	}
	idle := dial(t, sock, wire.ClientOptions{BlockSize: true})
	time.Sleep(1500 * time.Millisecond) // 5 timeouts
	for name, tc := range map[string]*testClient{"unread replies": unread,
		"stalled payload": payload, "stalled header": header} {
		if !closedSoon(tc.c) {
			t.Errorf("%s: connection still open after 5 x -io-timeout", name)
		}
	}
	if n := srv.shards[0].stats.IOTimeouts.Load(); n != 3 {
		t.Errorf("%d connections counted as cut by -io-timeout, want 3", n)
	}
	_ = idle.c.SetDeadline(time.Now().Add(5 * time.Second))
	if errno := idle.do(wire.CmdRead, 0, 0, 4096, nil, make([]byte, 4096)); errno != wire.EOK {
		t.Fatalf("idle connection's read after the timeouts: %v", errno)
	}
}

// closedSoon reads c (discarding replies) until it ends; false if it is
// still open after two seconds.
func closedSoon(c net.Conn) bool {
	_ = c.SetReadDeadline(time.Now().Add(2 * time.Second))
	_, err := io.Copy(io.Discard, c)
	return err == nil || !errors.Is(err, os.ErrDeadlineExceeded)
}

// TestShutdownCutsHalfSentPayloadAtOnce: Shutdown does not wait out the
// grace for a client halfway through a WRITE payload (it can never
// finish): the server is gone well within 2 s, while another connection's
// requests already received are still answered (done, or ESHUTDOWN for
// those not started) before it closes.
func TestShutdownCutsHalfSentPayloadAtOnce(t *testing.T) {
	ds := serveFile(t, sparseFile(t, 64<<20), 1)
	tc := dial(t, ds.sock, wire.ClientOptions{BlockSize: true})
	tc.send(wire.CmdWrite, 0, 1, 0, 1<<20, make([]byte, 512<<10))
	const reads = 200
	other := dial(t, ds.sock, wire.ClientOptions{BlockSize: true})
	if _, err := other.c.Write(pipelinedReads(reads, 64<<10)); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for ds.srv.shards[0].stats.Inflight.Load() < 1+inflightPerConnMax {
		if time.Now().After(deadline) {
			t.Fatal("the server never took the WRITE and the READs")
		}
		time.Sleep(10 * time.Millisecond)
	}
	stopped := make(chan time.Duration, 1)
	go func() {
		took, err := ds.stop()
		t.Logf("Stop took %v: %v", took.Round(time.Millisecond), err)
		stopped <- took
	}()
	time.Sleep(100 * time.Millisecond) // the shard has seen the stop
	buf := make([]byte, 64<<10)
	for i := range reads {
		if _, errno := other.simple(buf); errno != wire.EOK && errno != wire.ESHUTDOWN {
			t.Fatalf("the other connection's READ %d: %v; want it answered", i, errno)
		}
	}
	if took := <-stopped; took >= 2*time.Second {
		t.Errorf("Stop took %v with a client stalled mid-WRITE, want it cut at once "+
			"(under 2 s, not the %v grace)", took.Round(time.Millisecond), stopGrace)
	}
	if !closedSoon(tc.c) {
		t.Error("stalled client's connection still open after Stop")
	}
}
