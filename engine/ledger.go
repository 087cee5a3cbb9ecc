package engine

import (
	"fmt"
	"log/slog"

	"github.com/nbdring/nbdring/ring"
)

// The ledger: every kernel operation a shard starts goes through issue,
// and every completion through complete. issue counts the operation in
// flight for its owner and stamps op, generation and index into
// user_data; complete checks the generation (in every build), drops and
// counts a completion whose owner has moved on, and uncounts the
// operation when its last CQE arrives (a CQE with IORING_CQE_F_MORE is
// not the last: multishot receives and zero-copy sends post more).
//
// Owners and what an operation holds until its last CQE:
//
//	op       index   generation  holds
//	opRecv   conn    conn's      nothing of the conn's when it receives into
//	                             the shard's pool (the buffers it fills are
//	                             handed over with its CQE); else the payload
//	                             slot it receives straight into, or (TLS)
//	                             the conn's ciphertext buffer
//	opSend   slot    slot's      the first slot of the batch it sends: the
//	                             conn's send vector, and every slot of the
//	                             batch (its headers and data)
//	opSendTLS conn   conn's      the conn's ciphertext send buffer (a TLS
//	                             reply's slots are released once copied
//	                             into records, before the send)
//	opIO     slot    slot's      the slot's buffers (and its range lock)
//	opWake,  -       0           the shard's own words
//	opTimer,
//	opTick
//
// A send is named by its batch's first slot, not by its connection, so a
// zero-copy send's notification, which may arrive after the connection
// has moved on to its next batch, still finds the slots it holds.
//
// A connection is released only when no operation holds it (conn.ops);
// a slot's buffers only when no operation holds the slot (slot.ops):
// releaseSlot on a held slot leaves it to the ledger, which frees it
// when the last operation holding it completes. So no buffer goes back
// to the arena while the kernel may still read or write it.
const (
	opWake    uint8 = iota + 1 // eventfd read: new connections or stop
	opTimer                    // wake-up while requests wait for a range lock
	opRecv                     // a connection's socket receive
	opSend                     // a connection's reply sendmsg
	opIO                       // a slot's device operation
	opSendTLS                  // a TLS connection's ciphertext sendmsg
	opTick                     // the -io-timeout tick (stall.go)
)

// ledger is the component that accounts for kernel operations. It owns
// the generations of connections and slots, the holds on each (how many
// operations in flight still use it), the count of device operations in
// flight and the queue of inline completions. It is a leaf: it stamps,
// counts and checks, and calls no handler and no other component; the
// shard says which owner each operation holds (hold*, unhold*) and
// routes what complete returns.
//
// Invariants (asserted under -tags invariants): a hold is dropped at
// most as often as it was taken; a generation moves on only while
// nothing holds its owner, so a completion carrying an old generation
// can only be a defect (counted in ShardStats.Stale and dropped); every
// stamped operation is uncounted exactly once, by its last CQE.
type ledger struct {
	shard   int         // for the stale completion's log line
	stats   *ShardStats // OpsInflight, Stale, InlineOps: written here only
	connGen []uint32
	connOps []int32 // operations holding each connection (recv, send)
	slotGen []uint32
	slotOps []int32 // operations holding each slot (I/O, a send's batch, a recv)
	ioOps   int     // device operations in flight
	// local holds the completions of inline operations (inline) until the
	// loop hands them to complete; localSpare swaps with it meanwhile.
	local      []ring.CQE
	localSpare []ring.CQE
}

func (l *ledger) init(shard, slots, conns int, stats *ShardStats) {
	l.shard, l.stats = shard, stats
	l.connGen, l.connOps = make([]uint32, conns), make([]int32, conns)
	l.slotGen, l.slotOps = make([]uint32, slots), make([]int32, slots)
	l.local = make([]ring.CQE, 0, slots)
	l.localSpare = make([]ring.CQE, 0, slots)
}

// renewConn moves connection ci to its next generation (attached,
// released); nothing may hold it then.
func (l *ledger) renewConn(ci int32) {
	assert(l.connOps[ci] == 0, "connection recycled while the kernel holds it")
	l.connGen[ci]++
}

// renewSlot moves slot si to its next generation (allocated, freed).
func (l *ledger) renewSlot(si int32) {
	assert(l.slotOps[si] == 0, "slot recycled while the kernel holds it")
	l.slotGen[si]++
}

func (l *ledger) holdConn(ci int32) { l.connOps[ci]++ }
func (l *ledger) holdSlot(si int32) { l.slotOps[si]++ }

// unholdConn drops one operation's hold on ci.
func (l *ledger) unholdConn(ci int32) {
	assert(l.connOps[ci] > 0, "connection completion with no operation in flight")
	l.connOps[ci]--
}

// unholdSlot drops one operation's hold on si and reports whether any
// hold is left.
func (l *ledger) unholdSlot(si int32) bool {
	assert(l.slotOps[si] > 0, "slot hold dropped twice")
	l.slotOps[si]--
	return l.slotOps[si] > 0
}

func (l *ledger) connHeld(ci int32) bool { return l.connOps[ci] > 0 }
func (l *ledger) slotHeld(si int32) bool { return l.slotOps[si] > 0 }

// stamp counts operation op of owner idx in flight and returns its
// user_data, carrying the owner's generation: a connection's for opRecv
// and opSendTLS, a slot's for opSend (the batch's first) and opIO. It
// takes no hold: the caller holds what the operation uses.
func (l *ledger) stamp(op uint8, idx int32) uint64 {
	var gen uint32
	switch op {
	case opRecv, opSendTLS:
		gen = l.connGen[idx]
	case opSend:
		gen = l.slotGen[idx]
	case opIO:
		gen = l.slotGen[idx]
		l.ioOps++
	default:
		idx = 0
	}
	l.stats.OpsInflight.Add(1)
	return ring.UserData(op, gen, uint32(idx))
}

// inline stamps a device operation of slot si that the shard has just
// done itself with a plain system call (see Export.inline), and queues its
// result res as a CQE of the shard's own, which the loop hands to
// complete like any other. So an inline operation is counted, completed
// and checked exactly as a ring operation is.
func (l *ledger) inline(si int32, res int32) {
	l.local = append(l.local, ring.CQE{UserData: l.stamp(opIO, si), Res: res})
	l.stats.InlineOps.Add(1)
}

// takeLocal returns the inline completions queued so far; those queued
// while the caller completes them wait for the next call.
func (l *ledger) takeLocal() []ring.CQE {
	batch := l.local
	l.local, l.localSpare = l.localSpare[:0], batch
	return batch
}

// complete checks a completion against its owner's generation. ok false:
// the owner has moved on; the completion is counted as stale and must be
// dropped. Else op and idx name the owner, res is the result and last
// says the operation is over (uncounted here: a CQE with
// IORING_CQE_F_MORE is not the last). The holds the operation took stay
// for the caller to drop.
func (l *ledger) complete(cqe *ring.CQE) (op uint8, idx int32, res int32, last, ok bool) {
	op, gen, i := ring.SplitUserData(cqe.UserData)
	idx, res = int32(i), cqe.Res
	last = cqe.Flags&ring.CQEMore == 0
	switch op {
	case opRecv, opSendTLS:
		ok = l.connGen[idx]&ring.GenMask == gen
	case opSend, opIO:
		ok = l.slotGen[idx]&ring.GenMask == gen
	case opWake, opTimer, opTick:
		ok = true
	default:
		panic(fmt.Sprintf("shard %d: completion with unknown op %d", l.shard, op))
	}
	if !ok {
		l.dropStale(op, gen, i)
		return op, idx, res, last, false
	}
	if last {
		if op == opIO {
			l.ioOps--
		}
		l.stats.OpsInflight.Add(-1)
	}
	return op, idx, res, last, true
}

// dropStale counts a completion whose owner's generation has moved on:
// the owner was recycled while the kernel still held an operation of it.
// The ledger's counts make that impossible, so it is a defect (tests
// assert the count stays 0); it is dropped rather than applied to
// whoever holds the index now, and logged at counts 1, 2, 4, ...
func (l *ledger) dropStale(op uint8, gen, idx uint32) {
	n := l.stats.Stale.Add(1)
	if n&(n-1) == 0 {
		slog.Error(fmt.Sprintf("dropped stale completion (op %d, index %d, generation %d); "+
			"%d so far: please report this defect", op, idx, gen, n), "shard", l.shard)
	}
}

// issue returns a zeroed SQE for operation op of owner idx (a connection
// for opRecv and opSendTLS, a batch's first slot for opSend, nothing for
// the shard's own), stamped by the ledger, with the holds the operation
// takes; the caller fills in the rest. A device operation (opIO, on its
// slot) is issued by deviceIO.issue.
func (s *shard) issue(op uint8, idx int32) *ring.SQE {
	switch op {
	case opSendTLS:
		s.led.holdConn(idx)
	case opRecv:
		s.led.holdConn(idx)
		if rs := s.conns.rows[idx].recvSlot; rs >= 0 {
			s.led.holdSlot(rs)
		}
	case opSend:
		s.led.holdConn(s.slots.rows[idx].conn)
		for si := idx; si >= 0; si = s.slots.rows[si].next {
			s.led.holdSlot(si)
		}
	case opIO:
		assert(false, "a device operation issued by the shard (deviceIO.issue does it)")
	}
	ud := s.led.stamp(op, idx)
	sqe := s.ring.SQE()
	sqe.UserData = ud
	return sqe
}

// completeLocal hands the inline operations' completions to complete; those
// they start meanwhile are completed on the loop's next turn.
func (s *shard) completeLocal() {
	batch := s.led.takeLocal()
	for i := range batch {
		s.complete(&batch[i])
	}
}

// complete is the one completion entry: the ledger checks it, then the
// shard drops the holds the operation took and routes the result to its
// owner's handler.
func (s *shard) complete(cqe *ring.CQE) {
	op, idx, res, last, ok := s.led.complete(cqe)
	if !ok {
		if op == opRecv && cqe.Flags&ring.CQEBuffer != 0 {
			s.rx.dropBuffers(ring.CQEBufferID(cqe.Flags), int(res))
		}
		return
	}
	switch op {
	case opWake:
		s.onWake()
	case opTimer:
		s.timerOn = false
	case opTick:
		s.onTick()
	case opRecv:
		c := &s.conns.rows[idx]
		direct := c.recvSlot >= 0
		if last {
			s.led.unholdConn(idx)
			if direct {
				s.unhold(c.recvSlot)
				c.recvSlot = -1
			}
		}
		s.onRecv(idx, res, direct, cqe.Flags)
	case opSend:
		ci := s.slots.rows[idx].conn
		if last {
			s.led.unholdConn(ci)
			for si := idx; si >= 0; {
				next := s.slots.rows[si].next // unhold may free si
				s.unhold(si)
				si = next
			}
		}
		if cqe.Flags&ring.CQENotif != 0 {
			s.onSendNotif(ci, res)
			return
		}
		s.onSend(ci, res)
	case opSendTLS:
		if last {
			s.led.unholdConn(idx)
		}
		if res > 0 {
			s.conns.rows[idx].prog++ // -io-timeout: the client reads its replies
		}
		s.onSendTLS(idx, res)
	case opIO:
		if last {
			s.led.unholdSlot(idx)
		}
		sl := &s.slots.rows[idx]
		closing := sl.state == slotLive && s.conns.rows[sl.conn].closing
		if !s.dev.onIO(idx, res, closing) {
			s.releaseSlot(idx) // its connection is closing: the request ends
			s.maybeRelease(sl.conn)
		}
		if s.slots.rows[idx].state == slotReleased && !s.led.slotHeld(idx) {
			s.freeSlot(idx) // its connection went while the kernel held it
		}
	}
}

// unhold drops one operation's hold on a slot; the last hold on a slot
// that was released meanwhile frees it.
func (s *shard) unhold(si int32) {
	if !s.led.unholdSlot(si) && s.slots.rows[si].state == slotReleased {
		s.freeSlot(si)
	}
}
