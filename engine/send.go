package engine

import (
	"github.com/nbdring/nbdring/ring"
)

// The shard's side of sending: it asks the sender (sender.go) for batches,
// issues them through the ledger, and frees a sent batch's slots.

// flushDirty sends the replies queued during the last batch of completions.
func (s *shard) flushDirty() {
	for _, ci := range s.tx.takeDirty() {
		s.sendQueued(ci)
	}
}

// sendQueued sends connection ci's queued replies, unless a send is in
// flight or the connection is closing.
func (s *shard) sendQueued(ci int32) {
	c := &s.conns.rows[ci]
	if s.tx.busy(ci) || s.tx.front(ci) < 0 || c.closing || c.fd < 0 {
		return
	}
	if c.tls != nil {
		s.sendQueuedTLS(ci)
		return
	}
	if s.tx.batch(ci) {
		s.submitSend(ci)
	}
}

// submitSend issues the sender's batch: zero-copy for a large batch on a
// connection that allows it (the ledger holds the batch's slots until the
// notification), else copied into the socket.
func (s *shard) submitSend(ci int32) {
	head, msg, zc := s.tx.submit(ci)
	s.turn.sendIssued()
	s.m.sendIssued(ci) // the counters mark it (stages.go)
	if zc {
		ring.PrepSendmsgZC(s.issue(opSend, head), s.conns.rows[ci].fd, msg)
		return
	}
	ring.PrepSendmsg(s.issue(opSend, head), s.conns.rows[ci].fd, msg)
}

// onSendNotif: a zero-copy send's buffers are free again (the ledger has
// dropped its holds).
func (s *shard) onSendNotif(ci int32, res int32) {
	s.tx.notified(ci, res)
	s.maybeRelease(ci)
}

// onSend: the ledger has already dropped the send's holds on its batch.
func (s *shard) onSend(ci int32, res int32) {
	c := &s.conns.rows[ci]
	if res > 0 {
		c.prog++
	}
	switch s.tx.sent(ci, res, c.closing) {
	case sendResubmit:
		s.submitSend(ci)
	case sendFailed:
		why := s.conns.sendCloseWhy(ci, res)
		s.freeSlots(s.tx.takeBatch(ci))
		if c.closing {
			s.maybeRelease(ci)
		} else {
			s.beginClose(ci, why)
		}
	case sendDone:
		head, now := s.tx.takeBatch(ci), s.m.sentAt(ci)
		for si := head; si >= 0; si = s.slots.rows[si].next {
			s.m.observeSent(si, s.slots.rows[si].req.Type, now)
		}
		s.freeSlots(head)
		s.sendQueued(ci)
		s.maybeFinish(ci)
	}
}

// freeSlots releases a sent batch's slots, a list from head.
func (s *shard) freeSlots(head int32) {
	for si := head; si >= 0; {
		next := s.slots.rows[si].next
		s.releaseSlot(si)
		si = next
	}
}
