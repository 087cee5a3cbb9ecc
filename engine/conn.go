package engine

import (
	"fmt"
	"log/slog"
	"time"

	"github.com/nbdring/nbdring/ring"
	"github.com/nbdring/nbdring/wire"
	"golang.org/x/sys/unix"
)

// conn is one client connection in the transmission phase. One recv is in
// flight at a time: into the shard's receive pool (recvpool.go), or
// straight into a WRITE's data, or (TLS) into its ciphertext buffer.
type conn struct {
	fd   int
	exp  *Export
	sess wire.Session
	peer string    // the client's address, for logs
	tls  *tlsState // nil: plaintext

	// Received bytes not yet parsed are in the shard's rx (rx.go).
	recvOn     bool  // a recv is in flight
	recvSlot   int32 // the slot that recv receives a payload into, or -1
	pslot      int32 // slot whose WRITE payload is arriving, or -1
	pgot       uint32
	drain      uint64 // bytes of a rejected request's payload still to discard
	req        wire.Request
	reqHeld    bool   // req is decoded and waits for a slot or buffer
	payloadLen uint64 // payload bytes following req's header
	style      wire.ReplyStyle
	reqSize    int // request header size: compact or extended

	inflight int // live slots (from decode until the reply is sent)

	// -io-timeout (stall.go): prog counts receives and sends that moved
	// bytes; the shard's tick compares it with progSeen, and stuckSince is
	// the tick that last saw progress, or the server not waiting on it.
	prog       uint32
	progSeen   uint32
	stuckSince time.Time

	// Replies queued and in flight are in the shard's sender (sender.go).

	waiting  bool // on the shard's waiting list
	disc     bool // NBD_CMD_DISC received: read no more
	draining bool // server stopping: new requests get ESHUTDOWN
	closing  bool // hard close under way: waiting for ops to drain

	// For the connection's close line (connlog.go).
	started  time.Time   // attached to the shard
	served   uint64      // requests decoded
	closeWhy closeReason // the first reason beginClose was given
}

// reset readies the connection for h; blockMax is the largest request
// its shard serves.
func (c *conn) reset(h handoff, blockMax uint32) {
	*c = conn{fd: h.fd, exp: h.exp, peer: h.peer, tls: h.tls, recvSlot: -1, pslot: -1,
		started: time.Now()}
	c.sess = wire.Session{
		Size: h.exp.size, Flags: h.neg.Flags, BlockMin: h.exp.align,
		BlockMax: blockMax, Strict: h.neg.BlockSizeAsked, Structured: h.neg.Structured,
		Extended: h.neg.Extended, BaseAllocation: h.neg.BaseAllocation,
	}
	if h.exp.isDevice {
		// A block device zeroes whole sectors only; an unaligned range is a
		// read-modify-write (startZeroRMW) in one span buffer of at most
		// blockMax, and only its unmapping zeroes fast (zeroPlanFast).
		c.sess.Zero = wire.ZeroCaps{Align: h.exp.align, RMWMax: blockMax,
			FastNeedsHole: true}
	}
	c.style, c.reqSize = h.neg.Style(), wire.RequestSize
	if h.neg.Extended {
		c.reqSize = wire.ExtRequestSize
	}
}

// armRecv starts the connection's next receive, unless one is in flight or
// the connection is waiting, done reading, or closing.
func (s *shard) armRecv(ci int32) {
	c := &s.conns.rows[ci]
	if c.recvOn || c.waiting || c.disc || c.closing {
		return
	}
	if c.tls != nil {
		s.armRecvTLS(ci)
		return
	}
	if c.pslot >= 0 && s.rx.avail(ci) == 0 {
		pl := s.slots.payload(c.pslot)
		if rest := len(pl) - int(c.pgot); rest >= recvDirectMin {
			c.recvSlot, c.recvOn = c.pslot, true
			ring.PrepRecv(s.issue(opRecv, ci), c.fd, bytesAt(pl[c.pgot:]), uint32(rest))
			return
		}
	}
	assert(!s.rx.pooled(ci), "receive armed with pool buffers still queued")
	c.recvOn = true
	ring.PrepRecvSelect(s.issue(opRecv, ci), c.fd, recvBufSize, recvPoolGroup,
		s.rx.pool.bundles)
}

// onRecv: the ledger has already dropped the recv's hold on its payload
// slot (recvSlot), so direct tells where the bytes went; flags are the
// CQE's (which pool buffers it filled).
func (s *shard) onRecv(ci int32, res int32, direct bool, flags uint32) {
	c := &s.conns.rows[ci]
	c.recvOn = false
	pooled := flags&ring.CQEBuffer != 0
	if c.closing {
		if pooled {
			s.rx.dropBuffers(ring.CQEBufferID(flags), int(res))
		}
		s.maybeRelease(ci)
		return
	}
	if res == -int32(unix.ENOBUFS) && !direct && c.tls == nil {
		s.rx.starve(ci)
		return
	}
	if res > 0 {
		c.prog++
	}
	if res <= 0 {
		if res == 0 && c.disc {
			return // our own shutdown of the read side
		}
		why := closeClient // hung up, possibly with requests in flight
		if res < 0 && res != -int32(unix.ECONNRESET) {
			slog.Warn("recv: "+unix.Errno(-res).Error(), "client", c.peer, "shard", s.id)
			why = closeRecvErr
		}
		s.beginClose(ci, why)
		return
	}
	switch {
	case c.tls != nil:
		c.tls.pipe.inHi += int(res) // ciphertext: decrypt it into the staging buffer
		if !s.tlsPump(ci) {
			return
		}
	case direct:
		c.pgot += uint32(res)
		if int(c.pgot) == len(s.slots.payload(c.pslot)) {
			s.payloadDone(ci)
		}
	default:
		assert(pooled, "a plaintext receive completed without pool buffers")
		s.rx.received(ci, ring.CQEBufferID(flags), int(res))
	}
	s.parse(ci)
}

// parse consumes staged bytes: drains rejected payloads, fills a WRITE's
// payload, decodes and dispatches requests; then re-arms the receive.
func (s *shard) parse(ci int32) {
	c := &s.conns.rows[ci]
	for !c.disc && !c.closing {
		if c.drain > 0 {
			c.drain -= uint64(s.rx.consume(ci, nil, int(min(c.drain, uint64(s.rx.avail(ci))))))
			if c.drain > 0 {
				break
			}
			continue
		}
		if c.pslot >= 0 {
			pl := s.slots.payload(c.pslot)
			c.pgot += uint32(s.rx.consume(ci, pl[c.pgot:], len(pl)-int(c.pgot)))
			if int(c.pgot) < len(pl) {
				break
			}
			s.payloadDone(ci)
			continue
		}
		if !c.reqHeld {
			if s.rx.avail(ci) < c.reqSize {
				break
			}
			if !s.decode(ci) {
				return
			}
		}
		if !s.dispatch(ci) {
			s.m.countWait(ci)
			s.conns.park(ci)
			return
		}
		c.reqHeld = false
	}
	if !c.closing && !c.disc {
		s.rx.settle(ci) // after DISC what is left is never parsed; release drops it
	}
	s.armRecv(ci)
}

// decode takes the next request header off the received bytes and counts
// it (once: a request held under backpressure is dispatched again, not
// decoded again). A header the protocol cannot resync from closes the
// connection; false then.
func (s *shard) decode(ci int32) bool {
	c := &s.conns.rows[ci]
	hdr := s.rx.peek(ci, c.reqSize)
	var err error
	if c.style == wire.StyleExtended {
		err = wire.DecodeExtendedRequest(hdr, &c.req)
	} else {
		err = wire.DecodeRequest(hdr, &c.req)
	}
	if err != nil {
		slog.Warn(err.Error()+"; disconnecting it", "client", c.peer, "shard", s.id)
		s.beginClose(ci, closeProtocol)
		return false
	}
	s.rx.consume(ci, nil, c.reqSize)
	c.served++
	s.m.countRequest(ci, s.conns.rows[ci].req.Type)
	var ok bool
	if c.payloadLen, ok = wire.PayloadLen(&c.req, c.sess.Extended); !ok {
		slog.Warn(fmt.Sprintf("%v payload of %d bytes exceeds %d; disconnecting it",
			c.req.Type, c.payloadLen, wire.PayloadMax), "client", c.peer, "shard", s.id)
		s.beginClose(ci, closeProtocol)
		return false
	}
	c.reqHeld = true
	return true
}

// beginClose hard-closes a connection: no more replies; it is released
// once the kernel has finished every operation that holds it. why is
// what its close line will say.
func (s *shard) beginClose(ci int32, why closeReason) {
	c := &s.conns.rows[ci]
	if c.closing {
		return
	}
	c.closing, c.closeWhy = true, why
	if why.abortive() {
		// Reset rather than finish: a zero-copy send's notification comes
		// only once the kernel frees what it still holds to send, which a
		// peer that stopped reading never lets it do while the socket
		// lives; a reset purges the queue. io_uring holds the file of every
		// operation in flight, and none is issued on a closing connection,
		// so the descriptor can go now (c.fd = -1: nothing reuses it).
		_ = unix.SetsockoptLinger(c.fd, unix.SOL_SOCKET, unix.SO_LINGER,
			&unix.Linger{Onoff: 1, Linger: 0})
		_ = unix.Shutdown(c.fd, unix.SHUT_RDWR)
		unix.Close(c.fd)
		c.fd = -1
	} else {
		_ = unix.Shutdown(c.fd, unix.SHUT_RDWR) // completes a pending recv and send
	}
	s.maybeRelease(ci)
}

// cutConn closes a connection at shutdown that cannot finish: halfway
// through a payload (connTable.drain), or still open when the grace ran
// out; the table says who it was and what it was waiting for.
func (s *shard) cutConn(ci int32) {
	c := &s.conns.rows[ci]
	plen := 0
	if c.pslot >= 0 {
		plen = len(s.slots.payload(c.pslot))
	}
	s.conns.logCut(ci, plen, s.tx.busy(ci))
	s.beginClose(ci, closeCut)
}

// maybeFinish closes a connection that is done (connTable.finishing):
// after NBD_CMD_DISC or during shutdown, once every request has been
// answered.
func (s *shard) maybeFinish(ci int32) {
	// A TLS connection's replies leave their slots before they are sent.
	why, ok := s.conns.finishing(ci, s.tx.busy(ci))
	if !ok {
		return
	}
	if t := s.conns.rows[ci].tls; t != nil && t.closeNotify() {
		s.submitSendTLS(ci) // close_notify first; its completion comes back here
		return
	}
	s.beginClose(ci, why)
}

// maybeRelease frees a closing connection once no kernel operation holds
// it. Its requests end with it; a slot the kernel still holds (a device
// operation in flight) is freed by the ledger when that completes.
func (s *shard) maybeRelease(ci int32) {
	c := &s.conns.rows[ci]
	if !c.closing || s.led.connHeld(ci) {
		return
	}
	s.dev.forget(ci)
	for i := range s.slots.rows {
		if sl := &s.slots.rows[i]; sl.state == slotLive && sl.conn == ci {
			s.releaseSlot(int32(i))
		}
	}
	c.pslot = -1
	s.tx.drop(ci)
	s.rx.release(ci) // a TLS connection holds no pool buffer
	assert(c.inflight == 0, "connection released with slots still owned")
	// Slots a device operation still holds are freed by the ledger; their
	// buffers no longer count against this connection (slot.cgen).
	s.conns.logClose(ci)
	if c.fd >= 0 {
		unix.Close(c.fd)
	}
	if c.tls != nil {
		c.tls.pipe.release() // no operation holds its buffers (the ledger holds none)
		c.tls = nil
	}
	c.exp.reg.leave()
	s.qos.forget(ci)
	s.conns.release(ci) // fd -1, off the waiting list, back on the free list
	s.led.renewConn(ci)
	s.slots.connGone(ci)
	s.assigned.Add(-1)
	s.m.connReleased(ci)
}
