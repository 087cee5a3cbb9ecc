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

// issue returns a zeroed SQE for operation op of owner idx (a connection
// for opRecv, a batch's first slot for opSend, a slot for opIO, nothing
// for the shard's own), counted in flight and stamped; the caller fills
// in the rest.
func (s *shard) issue(op uint8, idx int32) *ring.SQE {
	ud := s.stamp(op, idx)
	sqe := s.ring.SQE()
	sqe.UserData = ud
	return sqe
}

// issueInline is issue for a device operation the shard has just done
// itself with a plain system call (see Export.inline): counted the same
// way, and its result queued as a CQE of the shard's own, which the loop
// hands to complete like any other. So an inline operation is held,
// completed and checked exactly as a ring operation is.
func (s *shard) issueInline(idx int32, res int32) {
	s.local = append(s.local, ring.CQE{UserData: s.stamp(opIO, idx), Res: res})
	s.stats.InlineOps.Add(1)
}

// stamp counts operation op of owner idx in flight and returns its
// user_data.
func (s *shard) stamp(op uint8, idx int32) uint64 {
	var gen uint32
	switch op {
	case opSendTLS:
		c := &s.conns[idx]
		c.ops++
		gen = c.gen
	case opRecv:
		c := &s.conns[idx]
		c.ops++
		if c.recvSlot >= 0 {
			s.slots[c.recvSlot].ops++
		}
		gen = c.gen
	case opSend:
		s.conns[s.slots[idx].conn].ops++
		for si := idx; si >= 0; si = s.slots[si].next {
			s.slots[si].ops++
		}
		gen = s.slots[idx].gen
	case opIO:
		sl := &s.slots[idx]
		sl.ops++
		s.ioOps++
		gen = sl.gen
	default:
		idx = 0
	}
	s.stats.OpsInflight.Add(1)
	return ring.UserData(op, gen, uint32(idx))
}

// inline reports whether slot sl's next device operation is done by the
// shard itself: on an inline export, while the shard has few requests in
// flight. At depth, the ring's io-wq threads run the I/O in parallel on
// other CPUs, which beats one shard doing it in turn.
func (s *shard) inline(sl *slot) bool {
	return sl.exp.inline && s.stats.Inflight.Load() <= inlineSlotsMax
}

// completeLocal hands the inline operations' completions to complete; those
// they start meanwhile are completed on the loop's next turn.
func (s *shard) completeLocal() {
	batch := s.local
	s.local, s.localSpare = s.localSpare[:0], batch
	for i := range batch {
		s.complete(&batch[i])
	}
}

// complete is the one completion entry: it settles the ledger, then
// hands the result to the owner's handler.
func (s *shard) complete(cqe *ring.CQE) {
	op, gen, idx := ring.SplitUserData(cqe.UserData)
	last := cqe.Flags&ring.CQEMore == 0
	res := cqe.Res
	switch op {
	case opWake:
		s.stats.OpsInflight.Add(-1)
		s.onWake()
	case opTimer:
		s.stats.OpsInflight.Add(-1)
		s.timerOn = false
	case opTick:
		s.stats.OpsInflight.Add(-1)
		s.onTick()
	case opRecv:
		c := &s.conns[idx]
		if c.gen&ring.GenMask != gen {
			if cqe.Flags&ring.CQEBuffer != 0 {
				s.dropRecvBuffers(ring.CQEBufferID(cqe.Flags), int(res))
			}
			s.dropStale(op, gen, idx)
			return
		}
		direct := c.recvSlot >= 0
		if last {
			s.settleConn(c)
			if direct {
				s.unhold(c.recvSlot)
				c.recvSlot = -1
			}
		}
		s.onRecv(int32(idx), res, direct, cqe.Flags)
	case opSend:
		head := &s.slots[idx]
		if head.gen&ring.GenMask != gen {
			s.dropStale(op, gen, idx)
			return
		}
		ci := head.conn
		if last {
			s.settleConn(&s.conns[ci])
			for si := int32(idx); si >= 0; {
				next := s.slots[si].next // unhold may free si
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
		c := &s.conns[idx]
		if c.gen&ring.GenMask != gen {
			s.dropStale(op, gen, idx)
			return
		}
		if last {
			s.settleConn(c)
		}
		if res > 0 {
			c.prog++ // -io-timeout: the client reads its replies
		}
		s.onSendTLS(int32(idx), res)
	case opIO:
		sl := &s.slots[idx]
		if sl.gen&ring.GenMask != gen {
			s.dropStale(op, gen, idx)
			return
		}
		if last {
			assert(sl.ops > 0, "I/O completion with no operation in flight")
			sl.ops--
			s.ioOps--
			s.stats.OpsInflight.Add(-1)
		}
		s.onIO(int32(idx), res)
		if sl.state == slotReleased && sl.ops == 0 {
			s.freeSlot(int32(idx)) // its connection went while the kernel held it
		}
	default:
		panic(fmt.Sprintf("shard %d: completion with unknown op %d", s.id, op))
	}
}

func (s *shard) settleConn(c *conn) {
	assert(c.ops > 0, "connection completion with no operation in flight")
	c.ops--
	s.stats.OpsInflight.Add(-1)
}

// unhold drops one operation's hold on a slot; the last hold on a slot
// that was released meanwhile frees it.
func (s *shard) unhold(si int32) {
	sl := &s.slots[si]
	assert(sl.ops > 0, "slot hold dropped twice")
	sl.ops--
	if sl.ops == 0 && sl.state == slotReleased {
		s.freeSlot(si)
	}
}

// dropStale counts a completion whose owner's generation has moved on:
// the owner was recycled while the kernel still held an operation of it.
// The ledger's counts make that impossible, so it is a defect (tests
// assert the count stays 0); it is dropped rather than applied to
// whoever holds the index now, and logged at counts 1, 2, 4, ...
func (s *shard) dropStale(op uint8, gen, idx uint32) {
	n := s.stats.Stale.Add(1)
	if n&(n-1) == 0 {
		slog.Error(fmt.Sprintf("dropped stale completion (op %d, index %d, generation %d); "+
			"%d so far: please report this defect", op, idx, gen, n), "shard", s.id)
	}
}
