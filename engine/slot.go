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

// allocSlot takes a free slot for connection ci, or -1. A shared slot
// while there are any; else a reserved one, but only for a connection
// holding no other slot (limits.go, slotsPerShardMax).
func (s *shard) allocSlot(ci int32) int32 {
	c := &s.conns[ci]
	resv := s.slotsShared >= s.srv.sz.slotsShared
	if len(s.slotFree) == 0 || resv && c.slotsHeld > 0 {
		return -1
	}
	i := s.slotFree[len(s.slotFree)-1]
	s.slotFree = s.slotFree[:len(s.slotFree)-1]
	sl := &s.slots[i]
	assert(sl.state == slotFree, "allocated a slot in use")
	s.led.renewSlot(i)
	sl.state, sl.conn, sl.next, sl.lock = slotLive, ci, -1, lockNone
	sl.exp = c.exp
	sl.done, sl.phase, sl.step, sl.nout, sl.nsegs, sl.blocking = 0, 0, 0, 0, 0, false
	sl.cgen, sl.slotResv, sl.bufResv = s.led.connGen[ci], resv, false
	if !resv {
		s.slotsShared++
	}
	c.slotsHeld++
	c.inflight++
	s.stats.Inflight.Add(1)
	return i
}

// releaseSlot ends a request for its connection. The slot and its
// buffers are freed now, or, while an operation still holds them, by the
// ledger when it completes; they count against the connection's budget
// until then.
func (s *shard) releaseSlot(si int32) {
	sl := &s.slots[si]
	assert(sl.state == slotLive, "released a slot twice")
	s.conns[sl.conn].inflight--
	sl.state = slotReleased
	if !s.led.slotHeld(si) {
		s.freeSlot(si)
	}
}

// freeSlot returns a released slot that no operation holds, with its
// buffers and range lock, and wakes waiters on their next turn.
func (s *shard) freeSlot(si int32) {
	sl := &s.slots[si]
	assert(sl.state == slotReleased && !s.led.slotHeld(si), "freed a slot the kernel holds")
	s.freeArena(&sl.buf, &sl.data)
	s.freeArena(&sl.pbuf, &sl.payload)
	s.unbudget(sl, sl.budget)
	if c := &s.conns[sl.conn]; s.led.connGen[sl.conn] == sl.cgen {
		c.slotsHeld--
	}
	if !sl.slotResv {
		s.slotsShared--
	}
	s.unlockSpan(sl)
	s.led.renewSlot(si)
	sl.state, sl.exp = slotFree, nil
	s.stats.Inflight.Add(-1)
	s.slotFree = append(s.slotFree, si)
}

// unbudget uncounts n bytes of slot sl's buffers, freed: from its
// connection (unless released since) and from the shared part or the
// reserve.
func (s *shard) unbudget(sl *slot, n int) {
	sl.budget -= n
	if c := &s.conns[sl.conn]; s.led.connGen[sl.conn] == sl.cgen {
		c.bufBytes -= n
	}
	if !sl.bufResv {
		s.bytesShared -= n
	}
}

// allocArena gives slot si an arena buffer of n bytes by the tenants' rule
// (limits.go, arenaReserveShare): from the shared part within its
// connection's budget (a request alone on its connection may exceed it),
// else, for a request alone on its connection, from the reserve up to
// resvReq. false: the request waits.
func (s *shard) allocArena(si int32, n int) ([]byte, int32, bool) {
	sl := &s.slots[si]
	c := &s.conns[sl.conn]
	sz := &s.srv.sz
	size := arenaBlockSize << orderFor(n)
	alone := c.slotsHeld == 1
	if sl.budget == 0 {
		sl.bufResv = alone && s.bytesShared+size > sz.shared
	}
	switch {
	case sl.bufResv:
		if sl.budget+size > sz.resvReq {
			return nil, -1, false
		}
	case s.bytesShared+size > sz.shared, c.bufBytes+size > sz.connBuf && !alone:
		return nil, -1, false
	}
	b, h, ok := s.arena.alloc(n)
	if !ok {
		return nil, -1, false
	}
	c.bufBytes += size
	sl.budget += size
	if !sl.bufResv {
		s.bytesShared += size
	}
	s.stats.ArenaBytes.Add(int64(size))
	return b, h, true
}

// freeArena returns one of a slot's buffers to the arena.
func (s *shard) freeArena(h *int32, b *[]byte) {
	if *h < 0 {
		return
	}
	s.stats.ArenaBytes.Add(-int64(cap(*b)))
	s.arena.free(*h)
	*h, *b = -1, nil
}

// freePayload frees an unaligned WRITE's payload once it has been merged
// into the span (no operation holds it then).
func (s *shard) freePayload(si int32) {
	sl := &s.slots[si]
	if sl.pbuf < 0 {
		return
	}
	n := cap(sl.payload)
	s.freeArena(&sl.pbuf, &sl.payload)
	s.unbudget(sl, n)
}
