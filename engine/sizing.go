package engine

import (
	"fmt"
	"math/bits"

	"github.com/nbdring/nbdring/wire"
)

// sizing is what every shard is built for, derived once from the Config
// and the shard count, so the memory a server pins follows what it was
// configured to serve rather than a fixed amount per shard.
type sizing struct {
	conns       int    // connections per shard
	slots       int    // requests in flight per shard: shared, then one reserved per connection
	slotsShared int    // slots any request may take (slotsPerShardMax)
	arena       int    // buffer arena bytes per shard
	blockMax    uint32 // largest READ/WRITE payload advertised and served
	ring        uint32 // submission queue entries (the completion queue is twice that)
	connBuf     int    // arena bytes one connection's requests may hold (connBufShare)
	shared      int    // arena bytes all requests may hold before the reserve (arenaReserveShare)
	resvReq     int    // arena bytes a connection's only request may take from the reserve
	recvBufs    int    // receive pool buffers per shard (recvPoolBufs)
}

// sizeShards derives the shards' sizing. The connections are spread by
// load (leastLoaded picks the shard with the fewest), so no shard ever has
// more than its share; the arena is the memory budget's share, rounded
// down to a power of two and capped at arenaSizeDefault, unless ArenaSize
// gives it; the largest request is what one such arena can always serve.
func sizeShards(cfg Config, shards int) (sizing, error) {
	maxConns := cfg.MaxConns
	if maxConns == 0 {
		maxConns = maxConnsDefault
	}
	if maxConns < 1 || maxConns > shards*connsPerShardMax {
		return sizing{}, fmt.Errorf("-max-connections %d: want 1 to %d (%d per shard "+
			"on %d shards)", maxConns, shards*connsPerShardMax, connsPerShardMax, shards)
	}
	var sz sizing
	sz.conns = (maxConns + shards - 1) / shards
	sz.slotsShared = min(slotsPerShardMax, sz.conns*inflightPerConnMax)
	sz.slots = sz.slotsShared + sz.conns // one in reserve per connection
	// The completion queue must hold every operation a shard can have in
	// flight: a device operation per slot, a receive and a send per
	// connection, the wake-up read and the two timers.
	sz.ring = uint32(1) << bits.Len(uint((sz.slots+2*sz.conns+3)/2))
	sz.arena = cfg.ArenaSize
	if sz.arena == 0 {
		budget := cfg.Memory
		if budget == 0 {
			budget = memoryDefault
		}
		share := budget / shards
		if share < arenaSizeMin {
			return sizing{}, fmt.Errorf("-memory-mib %d: %d shards need at least %d MiB "+
				"of buffers each (%d MiB in all); raise -memory-mib or lower -shards",
				budget>>20, shards, arenaSizeMin>>20, shards*arenaSizeMin>>20)
		}
		sz.arena = min(arenaSizeDefault, 1<<(bits.Len(uint(share))-1))
	}
	if sz.arena < arenaSizeMin || sz.arena&(sz.arena-1) != 0 {
		return sizing{}, fmt.Errorf("-arena-mib %d: the buffer arena per shard must be a "+
			"power of two of at least %d MiB", sz.arena>>20, arenaSizeMin>>20)
	}
	sz.blockMax = uint32(min(wire.PayloadMax, sz.arena/arenaPerBlockMax))
	sz.connBuf = sz.arena / connBufShare
	reserve := sz.arena / arenaReserveShare
	sz.shared = sz.arena - reserve
	// A power of two (what the buddy allocator hands out) no larger than
	// the reserve's share, so conns of them always fit in the reserve.
	sz.resvReq = 1 << (bits.Len(uint(reserve/sz.conns)) - 1)
	sz.recvBufs = recvPoolBufs(sz.conns)
	return sz, nil
}

// metaSize is the memory one shard maps besides its arena: metadata and
// the receive pool with its ring (its zeros are the kernel's zero page,
// mapped read-only, and cost nothing).
func (sz sizing) metaSize() int {
	return shardMemSize(sz.slots, sz.conns) + sz.recvBufs*(recvPoolBufSize+16)
}

// String describes the sizing for the start-up line.
func (sz sizing) String() string {
	return fmt.Sprintf("%d MiB arena (requests up to %d MiB) + %d KiB metadata and "+
		"receive pool (%d slots, %d connections, %d receive buffers of %d KiB)",
		sz.arena>>20, sz.blockMax>>20, sz.metaSize()>>10, sz.slots, sz.conns, sz.recvBufs,
		recvPoolBufSize>>10)
}
