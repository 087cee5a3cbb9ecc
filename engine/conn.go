package engine

import (
	"log"
	"unsafe"

	"github.com/nbdring/nbdring/ring"
	"github.com/nbdring/nbdring/wire"
	"golang.org/x/sys/unix"
)

// conn is one client connection in the transmission phase. Its receive
// side is libnbd's shape: want N bytes into a buffer; one recv is in flight
// at a time, into the staging buffer or straight into a WRITE's data.
type conn struct {
	gen  uint32
	fd   int
	exp  *Export
	sess wire.Session

	rbuf       []byte // staging buffer (shard metadata memory, fixed per index)
	rlo, rhi   int    // unparsed bytes are rbuf[rlo:rhi]
	recvOn     bool   // a recv is in flight
	direct     bool   // that recv targets pslot's payload
	pslot      int32  // slot whose WRITE payload is arriving, or -1
	pgot       uint32 // payload bytes received so far
	drain      uint32 // bytes of a rejected request's payload still to discard
	req        wire.Request
	reqHeld    bool   // req is decoded and waits for a slot or buffer
	payloadLen uint64 // payload bytes following req's header
	style      wire.ReplyStyle
	reqSize    int // request header size: compact or extended

	inflight int // slots owned (from decode until the reply is sent)
	ops      int // kernel operations in flight (recv, send, device I/O)
	bufBytes int // arena bytes held by this connection's slots

	qHead, qTail int32 // replies ready to send, linked through slot.next
	sendHead     int32 // first slot of the sendmsg in flight
	sending      bool
	msg          *unix.Msghdr
	iov          []unix.Iovec
	iovAt, iovN  int // the in-flight vector is iov[iovAt:iovN]

	waiting bool // on the shard's waiting list
	dirty   bool // on the shard's dirty list
	disc    bool // NBD_CMD_DISC received or server stopping: read no more
	closing bool // hard close under way: waiting for ops to drain
}

func (c *conn) reset(h handoff) {
	gen := c.gen + 1
	rbuf, msg, iov := c.rbuf, c.msg, c.iov
	*c = conn{gen: gen, fd: h.fd, exp: h.exp, rbuf: rbuf, pslot: -1,
		qHead: -1, qTail: -1, sendHead: -1, msg: msg, iov: iov}
	c.sess = wire.Session{
		Size: h.exp.size, Flags: h.neg.Flags, BlockMin: h.exp.align,
		Strict: h.neg.BlockSizeAsked, Structured: h.neg.Structured,
		Extended: h.neg.Extended, BaseAllocation: h.neg.BaseAllocation,
	}
	c.style, c.reqSize = h.neg.Style(), wire.RequestSize
	if h.neg.Extended {
		c.reqSize = wire.ExtRequestSize
	}
}

// armRecv starts the connection's next receive, unless one is in flight or
// the connection is waiting, done reading, or closing.
func (s *shard) armRecv(ci int32) {
	c := &s.conns[ci]
	if c.recvOn || c.waiting || c.disc || c.closing {
		return
	}
	var p unsafe.Pointer
	var n int
	if c.pslot >= 0 && c.rlo == c.rhi {
		pl := s.payload(c.pslot)
		if rest := len(pl) - int(c.pgot); rest >= recvDirectMin {
			p, n, c.direct = bytesAt(pl[c.pgot:]), rest, true
		}
	}
	if p == nil {
		if c.rlo > 0 {
			c.rhi = copy(c.rbuf, c.rbuf[c.rlo:c.rhi])
			c.rlo = 0
		}
		if c.rhi == len(c.rbuf) {
			return // full: parse must make progress first
		}
		p, n = bytesAt(c.rbuf[c.rhi:]), len(c.rbuf)-c.rhi
	}
	c.recvOn = true
	c.ops++
	ring.PrepRecv(s.ring.SQE(), c.fd, p, uint32(n), ring.UserData(opRecv, c.gen, uint32(ci)))
}

func (s *shard) onRecv(ci int32, res int32) {
	c := &s.conns[ci]
	c.recvOn = false
	c.ops--
	direct := c.direct
	c.direct = false
	if c.closing {
		s.maybeRelease(ci)
		return
	}
	if res <= 0 {
		if res == 0 && c.disc {
			return // our own shutdown of the read side while stopping
		}
		if res < 0 && res != -int32(unix.ECONNRESET) {
			log.Printf("shard %d: connection %d: recv: %v", s.id, ci, unix.Errno(-res))
		}
		s.beginClose(ci) // client hung up, possibly with requests in flight
		return
	}
	if direct {
		c.pgot += uint32(res)
		if int(c.pgot) == len(s.payload(c.pslot)) {
			s.payloadDone(ci)
		}
	} else {
		c.rhi += int(res)
	}
	s.parse(ci)
}

// parse consumes staged bytes: drains rejected payloads, fills a WRITE's
// payload, decodes and dispatches requests; then re-arms the receive.
func (s *shard) parse(ci int32) {
	c := &s.conns[ci]
	for !c.disc && !c.closing {
		avail := c.rhi - c.rlo
		if c.drain > 0 {
			n := min(uint32(avail), c.drain)
			c.rlo += int(n)
			c.drain -= n
			if c.drain > 0 {
				break
			}
			continue
		}
		if c.pslot >= 0 {
			pl := s.payload(c.pslot)
			n := copy(pl[c.pgot:], c.rbuf[c.rlo:c.rhi])
			c.rlo += n
			c.pgot += uint32(n)
			if int(c.pgot) < len(pl) {
				break
			}
			s.payloadDone(ci)
			continue
		}
		if !c.reqHeld {
			if avail < c.reqSize {
				break
			}
			var err error
			if c.style == wire.StyleExtended {
				err = wire.DecodeExtendedRequest(c.rbuf[c.rlo:], &c.req)
			} else {
				err = wire.DecodeRequest(c.rbuf[c.rlo:], &c.req)
			}
			if err != nil {
				log.Printf("shard %d: connection %d: %v; disconnecting it", s.id, ci, err)
				s.beginClose(ci)
				return
			}
			c.rlo += c.reqSize
			var ok bool
			if c.payloadLen, ok = wire.PayloadLen(&c.req, c.sess.Extended); !ok {
				log.Printf("shard %d: connection %d: %v payload of %d bytes exceeds %d; "+
					"disconnecting it", s.id, ci, c.req.Type, c.payloadLen, wire.PayloadMax)
				s.beginClose(ci)
				return
			}
			c.reqHeld = true
		}
		if !s.dispatch(ci) {
			c.waiting = true
			s.waiting = append(s.waiting, ci)
			return
		}
		c.reqHeld = false
	}
	s.armRecv(ci)
}

// beginClose hard-closes a connection: no more replies; resources are freed
// once the kernel has finished every operation it holds for it.
func (s *shard) beginClose(ci int32) {
	c := &s.conns[ci]
	if c.closing {
		return
	}
	c.closing = true
	_ = unix.Shutdown(c.fd, unix.SHUT_RDWR) // completes a pending recv
	s.maybeRelease(ci)
}

// disconnectGracefully stops reading, lets requests in flight finish and
// their replies go out, then closes (NBD_CMD_DISC, or the server stopping).
func (s *shard) disconnectGracefully(ci int32) {
	c := &s.conns[ci]
	c.disc = true
	if c.recvOn {
		_ = unix.Shutdown(c.fd, unix.SHUT_RD)
	}
	s.maybeFinishDisc(ci)
}

func (s *shard) maybeFinishDisc(ci int32) {
	c := &s.conns[ci]
	if c.disc && c.inflight == 0 && !c.closing {
		s.beginClose(ci)
	}
}

// maybeRelease frees a closing connection once no kernel operation refers
// to it or its buffers.
func (s *shard) maybeRelease(ci int32) {
	c := &s.conns[ci]
	if !c.closing || c.ops > 0 {
		return
	}
	if c.pslot >= 0 {
		s.freeSlot(c.pslot)
		c.pslot = -1
	}
	for si := c.qHead; si >= 0; {
		next := s.slots[si].next
		s.freeSlot(si)
		si = next
	}
	c.qHead, c.qTail = -1, -1
	keep := s.rmwWait[:0]
	for _, si := range s.rmwWait {
		if s.slots[si].conn == ci {
			s.freeSlot(si)
		} else {
			keep = append(keep, si)
		}
	}
	s.rmwWait = keep
	if c.waiting {
		keepC := s.waiting[:0]
		for _, w := range s.waiting {
			if w != ci {
				keepC = append(keepC, w)
			}
		}
		s.waiting = keepC
	}
	assert(c.inflight == 0, "connection released with slots still owned")
	assert(c.bufBytes == 0, "connection released with buffers still held")
	unix.Close(c.fd)
	c.fd, c.closing = -1, false // released: a second call finds nothing to do
	c.gen++
	s.live--
	s.stats.Conns.Add(-1)
	s.connFree = append(s.connFree, ci)
}
