package engine

import (
	"github.com/nbdring/nbdring/wire"
	"golang.org/x/sys/unix"
)

// slot is one request from decode until its reply has been sent and the
// kernel has let go of its buffers.
type slot struct {
	state uint8
	conn  int32 // owner; kept while released, for a send still holding it
	next  int32 // send queue link
	exp   *Export
	req   wire.Request

	data    []byte // span buffer (arena), aligned for O_DIRECT
	buf     int32  // its arena handle, or -1
	payload []byte // unaligned WRITE's payload, before it is merged
	pbuf    int32  // its arena handle, or -1
	budget  int    // arena bytes counted against the connection's budget
	cgen    uint32 // the owner's generation: its budget is its own until released
	// The tenants' rule (limits.go, arenaReserveShare): the slot itself,
	// and its buffers, are counted in the shard's reserve, not the shared
	// part.
	slotResv, bufResv bool

	spanOff uint64 // the aligned span the device sees (READ, WRITE)
	spanLen uint32
	skip    uint32 // the request's first byte within the span
	done    uint64 // bytes done (short reads and writes resume; zero writes)
	phase   uint8
	step    uint8 // WRITE_ZEROES: which fallocate strategy is running
	lock    int   // range lock held (rangeLocks), or lockNone
	// blocking: a read or write of this request met EAGAIN with RWF_NOWAIT;
	// the rest of it is issued without (it runs on io-wq).
	blocking bool

	// A sparse READ's reply pieces, in order (see planRead).
	segs  [readSegmentsMax]segment
	nsegs int

	hdr    []byte // reply headers (shard metadata memory)
	out    [replyIovecsMax]unix.Iovec
	nout   int    // out[:nout] is the reply, ready to send
	outLen uint64 // its bytes
}

// Slot states. A released slot belongs to no request any more but is
// still held by the kernel; the ledger frees it when the last operation
// holding it completes.
const (
	slotFree uint8 = iota
	slotLive
	slotReleased
)

// segment is part of a READ's range: data sent from the span buffer, or a
// hole sent as an OFFSET_HOLE chunk.
type segment struct {
	off  uint64
	len  uint32
	hole bool
}

// Slot phases: what the slot's next completion completes.
const (
	phRead      uint8 = iota + 1 // reading the span for a READ
	phRMWRead                    // reading the span to merge an unaligned write into
	phWrite                      // writing the span
	phFlush                      // fdatasync for FLUSH
	phTrim                       // discard or PUNCH_HOLE for TRIM
	phZero                       // fallocate for WRITE_ZEROES
	phZeroWrite                  // writing zeros where fallocate cannot zero
	phSync                       // fdatasync after TRIM/WRITE_ZEROES with FUA
	phCache                      // fadvise(WILLNEED) for CACHE
)

var phaseName = [...]string{phRead: "read", phRMWRead: "read for read-modify-write",
	phWrite: "write", phFlush: "fdatasync", phTrim: "trim", phZero: "zero",
	phZeroWrite: "write of zeros", phSync: "fdatasync", phCache: "fadvise"}

// slotTable is the component that owns the slots: their rows, the free
// list, the arena and the tenants' budgets (limits.go, arenaReserveShare,
// slotsPerShardMax): how many slots and arena bytes each connection holds,
// and how much of the shared part is taken. It is a leaf: other
// components name a slot by its index; it calls nothing but the arena.
// Generations are the ledger's (renewSlot), range locks the device's.
//
// Invariants (asserted under -tags invariants): a slot is on the free
// list if and only if its state is slotFree; a slot is allocated only
// from the free list and freed only once released; sharedSlots counts
// the live and released slots not taken from the reserve, sharedBytes the
// arena bytes of those buffers not taken from it; a connection's counts
// cover only its own slots: a slot outliving its connection (released,
// held by the kernel) is uncounted from it no more (epoch).
type slotTable struct {
	rows []slot
	free []int32
	lim  *sizing     // slotsShared, shared, connBuf, resvReq
	ar   *arena      // the shard's buffer arena
	st   *ShardStats // Inflight and ArenaBytes: written here only
	// Per connection: slots not yet free (live, or released but held by
	// the kernel), arena bytes they hold, and the epoch that tells its
	// slots from those of the connection that had the index before.
	connSlots []int
	connBytes []int
	epoch     []uint32
	// The tenants' rule: slots and arena bytes held beyond the reserve.
	sharedSlots int
	sharedBytes int
}

func (t *slotTable) init(lim *sizing, ar *arena, st *ShardStats, hdrs []replyHeader) {
	t.lim, t.ar, t.st = lim, ar, st
	t.rows = make([]slot, lim.slots)
	t.free = make([]int32, 0, lim.slots)
	for i := lim.slots - 1; i >= 0; i-- {
		sl := &t.rows[i]
		if hdrs != nil {
			sl.hdr = hdrs[i][:]
		}
		sl.buf, sl.pbuf, sl.conn = -1, -1, -1
		t.free = append(t.free, int32(i))
	}
	t.connSlots = make([]int, lim.conns)
	t.connBytes = make([]int, lim.conns)
	t.epoch = make([]uint32, lim.conns)
}

// connGone forgets connection ci's counts: its slots still held by the
// kernel are no longer its own, and the next connection at ci starts at 0.
func (t *slotTable) connGone(ci int32) {
	t.epoch[ci]++
	t.connSlots[ci], t.connBytes[ci] = 0, 0
}

// alloc takes a free slot for connection ci of export exp, or -1. A
// shared slot while there are any; else a reserved one, but only for a
// connection holding no other slot (limits.go, slotsPerShardMax).
func (t *slotTable) alloc(ci int32, exp *Export) int32 {
	resv := t.sharedSlots >= t.lim.slotsShared
	if len(t.free) == 0 || resv && t.connSlots[ci] > 0 {
		return -1
	}
	i := t.free[len(t.free)-1]
	t.free = t.free[:len(t.free)-1]
	sl := &t.rows[i]
	assert(sl.state == slotFree, "allocated a slot in use")
	sl.state, sl.conn, sl.next, sl.lock = slotLive, ci, -1, lockNone
	sl.exp = exp
	sl.done, sl.phase, sl.step, sl.nout, sl.nsegs, sl.blocking = 0, 0, 0, 0, 0, false
	sl.cgen, sl.slotResv, sl.bufResv = t.epoch[ci], resv, false
	if !resv {
		t.sharedSlots++
	}
	t.connSlots[ci]++
	t.st.Inflight.Add(1)
	return i
}

// release ends slot si's request: it belongs to no request any more.
// The caller frees it (free) once no operation holds it.
func (t *slotTable) release(si int32) {
	sl := &t.rows[si]
	assert(sl.state == slotLive, "released a slot twice")
	sl.state = slotReleased
}

// put returns released slot si, which no operation holds, with its
// buffers, to the free list.
func (t *slotTable) put(si int32) {
	sl := &t.rows[si]
	assert(sl.state == slotReleased, "freed a slot that was not released")
	t.freeArena(&sl.buf, &sl.data)
	t.freeArena(&sl.pbuf, &sl.payload)
	t.unbudget(sl, sl.budget)
	if t.epoch[sl.conn] == sl.cgen {
		t.connSlots[sl.conn]--
	}
	if !sl.slotResv {
		t.sharedSlots--
	}
	sl.state, sl.exp = slotFree, nil
	t.st.Inflight.Add(-1)
	t.free = append(t.free, si)
}

// unbudget uncounts n bytes of slot sl's buffers, freed: from its
// connection (unless gone since) and from the shared part or the reserve.
func (t *slotTable) unbudget(sl *slot, n int) {
	sl.budget -= n
	if t.epoch[sl.conn] == sl.cgen {
		t.connBytes[sl.conn] -= n
	}
	if !sl.bufResv {
		t.sharedBytes -= n
	}
}

// allocArena gives slot si an arena buffer of n bytes by the tenants' rule
// (limits.go, arenaReserveShare): from the shared part within its
// connection's budget (a request alone on its connection may exceed it),
// else, for a request alone on its connection, from the reserve up to
// resvReq. false: the request waits.
func (t *slotTable) allocArena(si int32, n int) ([]byte, int32, bool) {
	sl := &t.rows[si]
	ci := sl.conn
	size := arenaBlockSize << orderFor(n)
	alone := t.connSlots[ci] == 1
	if sl.budget == 0 {
		sl.bufResv = alone && t.sharedBytes+size > t.lim.shared
	}
	switch {
	case sl.bufResv:
		if sl.budget+size > t.lim.resvReq {
			return nil, -1, false
		}
	case t.sharedBytes+size > t.lim.shared, t.connBytes[ci]+size > t.lim.connBuf && !alone:
		return nil, -1, false
	}
	b, h, ok := t.ar.alloc(n)
	if !ok {
		return nil, -1, false
	}
	t.connBytes[ci] += size
	sl.budget += size
	if !sl.bufResv {
		t.sharedBytes += size
	}
	t.st.ArenaBytes.Add(int64(size))
	return b, h, true
}

// freeArena returns one of a slot's buffers to the arena.
func (t *slotTable) freeArena(h *int32, b *[]byte) {
	if *h < 0 {
		return
	}
	t.st.ArenaBytes.Add(-int64(cap(*b)))
	t.ar.free(*h)
	*h, *b = -1, nil
}

// freePayload frees an unaligned WRITE's payload once it has been merged
// into the span (no operation holds it then).
func (t *slotTable) freePayload(si int32) {
	sl := &t.rows[si]
	if sl.pbuf < 0 {
		return
	}
	n := cap(sl.payload)
	t.freeArena(&sl.pbuf, &sl.payload)
	t.unbudget(sl, n)
}

// payload is where slot si's WRITE data is received.
func (t *slotTable) payload(si int32) []byte {
	sl := &t.rows[si]
	if sl.pbuf >= 0 {
		return sl.payload
	}
	return sl.data[:sl.req.Length]
}

// allocSlot takes a slot for connection ci (slotTable.alloc), in the
// ledger's next generation.
func (s *shard) allocSlot(ci int32) int32 {
	c := &s.conns.rows[ci]
	si := s.slots.alloc(ci, c.exp)
	if si >= 0 {
		s.led.renewSlot(si)
		c.inflight++
	}
	return si
}

// releaseSlot ends a request for its connection. The slot and its
// buffers are freed now, or, while an operation still holds them, by the
// ledger's last completion (unhold); they count against the connection's
// budget until then.
func (s *shard) releaseSlot(si int32) {
	s.conns.rows[s.slots.rows[si].conn].inflight--
	s.slots.release(si)
	if !s.led.slotHeld(si) {
		s.freeSlot(si)
	}
}

// freeSlot returns a released slot that no operation holds, with its
// buffers and range lock, in the ledger's next generation.
func (s *shard) freeSlot(si int32) {
	assert(!s.led.slotHeld(si), "freed a slot the kernel holds")
	s.dev.unlockSpan(&s.slots.rows[si])
	s.led.renewSlot(si)
	s.slots.put(si)
}
