package engine

import (
	"testing"
	"time"

	"github.com/nbdring/nbdring/wire"
)

// TestPlacementByLoad: a new connection goes to the shard with the fewest,
// whatever order earlier ones came and went in (round robin would put it
// beside a busy one here).
func TestPlacementByLoad(t *testing.T) {
	srv, sock, _ := testServer(t, 16<<20, 2)
	if len(srv.shards) < 2 {
		skipMissing(t, "cpus", "needs 2 shards, this machine gave %d", len(srv.shards))
	}
	conns := func() (per []int64) {
		for _, sh := range srv.shards {
			per = append(per, sh.snapshot().Conns())
		}
		return per
	}
	waitFor := func(total int64) []int64 {
		deadline := time.Now().Add(5 * time.Second)
		for {
			per := conns()
			var n int64
			for _, c := range per {
				n += c
			}
			if n == total {
				return per
			}
			if time.Now().After(deadline) {
				t.Fatalf("connections per shard %v, want %d in all", per, total)
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
	var cs []*testClient
	for i := 0; i < 3; i++ {
		cs = append(cs, dial(t, sock, wire.ClientOptions{}))
		waitFor(int64(i + 1))
	}
	// Close the two that share a shard, leaving one connection.
	per := conns()
	busy := 0
	if per[1] > per[0] {
		busy = 1
	}
	closed := 0
	for _, c := range cs {
		if closed < 2 && srv.shards[busy].snapshot().Conns() > 0 && onShard(t, srv, c, busy) {
			c.c.Close()
			closed++
			waitFor(int64(3 - closed))
		}
	}
	dial(t, sock, wire.ClientOptions{})
	if per := waitFor(2); per[0] != 1 || per[1] != 1 {
		t.Fatalf("connections per shard %v after placing one more, want [1 1]", per)
	}
}

// onShard reports whether client c's connection lives on shard i: it
// sends a FLUSH and looks at which shard counts it (Unix socket clients
// have no address to tell them apart by).
func onShard(t *testing.T, srv *Server, c *testClient, i int) bool {
	t.Helper()
	before := srv.shards[i].snapshot().Requests(wire.CmdFlush)
	if errno := c.do(wire.CmdFlush, 0, 0, 0, nil, nil); errno != 0 {
		t.Fatalf("flush: %v", errno)
	}
	return srv.shards[i].snapshot().Requests(wire.CmdFlush) > before
}
