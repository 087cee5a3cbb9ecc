package engine

import (
	"fmt"
	"log/slog"
	"runtime"
	"sync"
)

// Shards wait in io_uring_enter as a raw system call (ring.Ring.enter), so
// each keeps its P while it sleeps. The process therefore needs a P more
// than it has shards for everything else (accept, handshakes, signals,
// metrics, the garbage collector's workers): procs keeps GOMAXPROCS at
// least the running shards plus controlProcs, across every Server of the
// process (tests run several).
var procs struct {
	mu     sync.Mutex
	shards int // shards of every Server started and not yet stopped
}

// shardsStarting counts n more shards and raises GOMAXPROCS if they need
// it. GOMAXPROCS above the CPU count costs nothing: a P is a token, the
// shards' threads are pinned, and the rest share what the kernel gives.
func shardsStarting(n int) {
	procs.mu.Lock()
	defer procs.mu.Unlock()
	procs.shards += n
	if have, want := runtime.GOMAXPROCS(0), procs.shards+controlProcs; have < want {
		runtime.GOMAXPROCS(want)
		slog.Debug(fmt.Sprintf("GOMAXPROCS %d -> %d: each of %d shards keeps a P while it "+
			"waits in io_uring_enter", have, want, procs.shards))
	}
}

// shardStopped uncounts a shard whose loop has ended (GOMAXPROCS stays).
func shardStopped() {
	procs.mu.Lock()
	procs.shards--
	procs.mu.Unlock()
}
