package engine

import (
	"log/slog"
	"unsafe"

	"github.com/nbdring/nbdring/ring"
	"github.com/nbdring/nbdring/wire"
	"golang.org/x/sys/unix"
)

// A reply header goes out only when the result is known; headers and data
// leave together in one vectored send, and replies that are ready at the
// same time share one sendmsg. Each reply is a list of iovecs (sl.out):
// headers in the slot's header space, data in the arena.

func (s *shard) replyOK(si int32) {
	sl := &s.slots.rows[si]
	c := &s.conns[sl.conn]
	n := wire.EncodeDone(sl.hdr, c.style, sl.req.Cookie, sl.req.Offset)
	sl.nout, sl.outLen = 0, 0
	sl.put(sl.hdr[:n])
	s.enqueue(si)
}

// replyErr answers with errno; on structured and extended connections as
// an ERROR chunk carrying msg for a human.
func (s *shard) replyErr(si int32, errno wire.Errno, msg string) {
	sl := &s.slots.rows[si]
	c := &s.conns[sl.conn]
	s.m.countError(sl.conn, sl.req.Type)
	n := wire.EncodeError(sl.hdr, c.style, sl.req.Cookie, sl.req.Offset, errno, msg)
	sl.nout, sl.outLen = 0, 0
	sl.put(sl.hdr[:n])
	s.enqueue(si)
}

// replyRead sends the read's segments: data from the span buffer, holes
// as OFFSET_HOLE chunks; the last chunk carries the DONE flag.
func (s *shard) replyRead(si int32) {
	sl := &s.slots.rows[si]
	c := &s.conns[sl.conn]
	r := &sl.req
	checkSegments(sl)
	sl.nout, sl.outLen = 0, 0
	at := 0
	for i := 0; i < sl.nsegs; i++ {
		seg := &sl.segs[i]
		last := i == sl.nsegs-1
		if seg.hole {
			n := wire.EncodeHole(sl.hdr[at:], c.style, r.Cookie, r.Offset, seg.off, seg.len,
				last)
			sl.put(sl.hdr[at : at+n])
			at += n
			continue
		}
		n := wire.EncodeRead(sl.hdr[at:], c.style, r.Cookie, r.Offset, seg.off, seg.len, last)
		sl.put(sl.hdr[at : at+n])
		at += n
		from := uint64(sl.skip) + seg.off - r.Offset
		sl.put(sl.data[from : from+uint64(seg.len)])
	}
	s.enqueue(si)
}

// replyBlockStatus sends count descriptors (descLen bytes in sl.data).
func (s *shard) replyBlockStatus(si int32, count, descLen int) {
	sl := &s.slots.rows[si]
	c := &s.conns[sl.conn]
	n := wire.EncodeBlockStatus(sl.hdr, c.style, sl.req.Cookie, sl.req.Offset,
		wire.MetaIDBaseAllocation, count)
	sl.nout, sl.outLen = 0, 0
	sl.put(sl.hdr[:n])
	sl.put(sl.data[:descLen])
	s.enqueue(si)
}

func (sl *slot) put(b []byte) {
	sl.out[sl.nout] = unix.Iovec{Base: unsafe.SliceData(b), Len: uint64(len(b))}
	sl.nout++
	sl.outLen += uint64(len(b))
}

func (s *shard) enqueue(si int32) {
	sl := &s.slots.rows[si]
	ci := sl.conn
	c := &s.conns[ci]
	sl.next = -1
	s.m.replyQueued(si)
	if c.qTail >= 0 {
		s.slots.rows[c.qTail].next = si
	} else {
		c.qHead = si
	}
	c.qTail = si
	if !c.dirty {
		c.dirty = true
		s.dirty = append(s.dirty, ci)
	}
}

// flushDirty sends the replies queued during the last batch of completions.
func (s *shard) flushDirty() {
	for _, ci := range s.dirty {
		s.conns[ci].dirty = false
		s.sendQueued(ci)
	}
	s.dirty = s.dirty[:0]
}

// sendQueued gathers queued replies into one sendmsg, unless one is in
// flight: sends on one socket must not overlap, or a partial send would
// interleave replies.
func (s *shard) sendQueued(ci int32) {
	c := &s.conns[ci]
	if c.sending || c.qHead < 0 || c.closing || c.fd < 0 {
		return
	}
	if c.tls != nil {
		s.sendQueuedTLS(ci)
		return
	}
	n, last, replies := 0, int32(-1), 0
	var bytes uint64
	si := c.qHead
	for si >= 0 && n+s.slots.rows[si].nout <= iovecsPerSendMax {
		sl := &s.slots.rows[si]
		n += copy(c.mem.iov[n:], sl.out[:sl.nout])
		bytes += sl.outLen
		last, si = si, sl.next
		replies++
	}
	s.stats.Sends.Add(1)
	s.stats.SentReplies.Add(uint64(replies))
	s.slots.rows[last].next = -1
	c.sendHead, c.qHead = c.qHead, si
	if si < 0 {
		c.qTail = -1
	}
	c.iovAt, c.iovN = 0, n
	c.sendZC = c.zc && bytes >= sendZCMin
	s.submitSend(ci)
}

// submitSend sends mem.iov[iovAt:iovN]: zero-copy for a large batch on a
// connection that allows it (the ledger holds the batch's slots until the
// notification), else copied into the socket.
func (s *shard) submitSend(ci int32) {
	c := &s.conns[ci]
	m := c.mem
	m.msg.Iov = &m.iov[c.iovAt]
	m.msg.Iovlen = uint64(c.iovN - c.iovAt)
	c.sending = true
	s.sendIssued(ci)
	if c.sendZC {
		s.stats.SendsZC.Add(1)
		ring.PrepSendmsgZC(s.issue(opSend, c.sendHead), c.fd, &m.msg)
		return
	}
	ring.PrepSendmsg(s.issue(opSend, c.sendHead), c.fd, &m.msg)
}

// onSendNotif: a zero-copy send's buffers are free again (the ledger has
// dropped its holds); count whether the kernel copied after all, and after
// zcCopiedRunMax copies in a row stop asking for zero-copy on this
// connection (on loopback the kernel always copies).
func (s *shard) onSendNotif(ci int32, res int32) {
	c := &s.conns[ci]
	if uint32(res)&ring.NotifCopied == 0 {
		c.zcCopiedRun = 0
	} else {
		s.stats.ZCCopied.Add(1)
		c.zcCopiedRun++
		if c.zcCopiedRun == zcCopiedRunMax && c.zc {
			c.zc = false // sends queued from now on are copied
			s.stats.ZCDisabled.Add(1)
		}
	}
	s.maybeRelease(ci)
}

// onSend: the ledger has already dropped the send's holds on its batch.
func (s *shard) onSend(ci int32, res int32) {
	c := &s.conns[ci]
	c.sending = false
	if res == -int32(unix.EOPNOTSUPP) && c.sendZC && !c.closing {
		// This socket refuses zero-copy: send the same batch copied, and
		// every later one on this connection.
		s.stats.ZCRefused.Add(1)
		c.zc, c.sendZC = false, false
		s.submitSend(ci)
		return
	}
	if res > 0 {
		c.prog++
		if c.sendZC {
			s.stats.ZCBytes.Add(uint64(res))
		}
	}
	if c.closing || res < 0 {
		why := s.sendCloseWhy(c, res)
		s.freeBatch(ci)
		if c.closing {
			s.maybeRelease(ci)
		} else {
			s.beginClose(ci, why)
		}
		return
	}
	// Resume a partial send where it stopped (as internal/poll's writev).
	iov := c.mem.iov[:]
	left := uint64(res)
	for c.iovAt < c.iovN && left >= iov[c.iovAt].Len {
		left -= iov[c.iovAt].Len
		c.iovAt++
	}
	if c.iovAt < c.iovN {
		v := &iov[c.iovAt]
		v.Base = (*byte)(unsafe.Add(unsafe.Pointer(v.Base), left))
		v.Len -= left
		s.submitSend(ci)
		return
	}
	now := s.m.sentAt(ci)
	for si := c.sendHead; si >= 0; si = s.slots.rows[si].next {
		s.m.observeSent(si, s.slots.rows[si].req.Type, now)
	}
	s.freeBatch(ci)
	s.sendQueued(ci)
	s.maybeFinish(ci)
}

func (s *shard) freeBatch(ci int32) {
	c := &s.conns[ci]
	for si := c.sendHead; si >= 0; {
		next := s.slots.rows[si].next
		s.releaseSlot(si)
		si = next
	}
	c.sendHead = -1
}

// sendCloseWhy says why a send that failed (or completed on a closing
// connection) ends its connection, and logs an error the client did not
// cause by hanging up.
func (s *shard) sendCloseWhy(c *conn, res int32) closeReason {
	if res < 0 && !c.closing && res != -int32(unix.EPIPE) && res != -int32(unix.ECONNRESET) {
		slog.Warn("send: "+unix.Errno(-res).Error(), "client", c.peer, "shard", s.id)
		return closeSendErr
	}
	return closeClient
}
