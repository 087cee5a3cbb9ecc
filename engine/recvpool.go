package engine

import (
	"fmt"
	"unsafe"

	"github.com/nbdring/nbdring/ring"
	"golang.org/x/sys/unix"
)

// recvPool is a shard's receive memory for its plaintext connections: a
// ring of provided buffers (one buffer group) the kernel picks from when a
// receive completes, several at once with bundles (Linux 6.10), one
// without. A connection holds buffers only from a receive until it has
// parsed them, so an idle connection holds none: the pool is sized for
// the shard's connections at recvPoolPerConn buffers each, not 64 KiB
// each. A receive that finds the pool empty fails with ENOBUFS and is
// armed again once buffers come back (shard.starved).
//
// The kernel names only a completion's first buffer; the others are the
// ring positions after it. So the pool remembers which buffer it put at
// each position (at) and where each buffer went (pos).
type recvPool struct {
	mem     []byte // n buffers of recvPoolBufSize
	br      *ring.BufRing
	n       int
	at      []uint16 // at[position & (n-1)]: the buffer added there
	pos     []uint16 // pos[bid]: the position bid was last added at
	free    int      // buffers in the ring
	dirty   bool     // buffers added since the last publish
	bundles bool     // receives fill several buffers
	// A connection's received buffers are a list through next (-1 ends
	// it), each holding bytes [off, fill) still to parse. One receive may
	// fill more than its length asks for (a 64 KiB receive filled 17 on
	// Linux 6.18; 1 MiB writes, 50 on average), so no fixed bound holds.
	next      []int32
	off, fill []uint16
}

// recvPoolBufs is how many buffers a shard with conns connections gets.
func recvPoolBufs(conns int) int {
	n := recvPoolMin
	for n < conns*recvPoolPerConn && n < recvPoolMax {
		n *= 2
	}
	return n
}

// newRecvPool maps the shard's pool (n buffers) and registers its ring.
func newRecvPool(r *ring.Ring, n int, bundles bool) (*recvPool, error) {
	mem, err := unix.Mmap(-1, 0, n*recvPoolBufSize, unix.PROT_READ|unix.PROT_WRITE,
		unix.MAP_PRIVATE|unix.MAP_ANONYMOUS|unix.MAP_POPULATE)
	if err != nil {
		return nil, fmt.Errorf("map %d KiB of receive buffers: %w (lower -max-connections)",
			n*recvPoolBufSize>>10, err)
	}
	br, err := r.NewBufRing(n, recvPoolGroup)
	if err != nil {
		_ = unix.Munmap(mem)
		return nil, err
	}
	p := &recvPool{mem: mem, br: br, n: n, at: make([]uint16, n), pos: make([]uint16, n),
		bundles: bundles, next: make([]int32, n), off: make([]uint16, n),
		fill: make([]uint16, n)}
	for bid := range n {
		p.put(uint16(bid))
	}
	p.publish()
	return p, nil
}

// close unmaps the pool once the shard's ring is closed.
func (p *recvPool) close() {
	if p != nil {
		p.br.Unmap()
		_ = unix.Munmap(p.mem)
	}
}

// buf is buffer bid's memory.
func (p *recvPool) buf(bid uint16) []byte {
	off := int(bid) * recvPoolBufSize
	return p.mem[off : off+recvPoolBufSize : off+recvPoolBufSize]
}

// put gives buffer bid back to the ring (seen by the kernel at publish).
func (p *recvPool) put(bid uint16) {
	b := p.buf(bid)
	at := p.br.Add(unsafe.Pointer(&b[0]), recvPoolBufSize, bid)
	p.at[int(at)&(p.n-1)] = bid
	p.pos[bid] = at
	p.free++
	p.dirty = true
}

// publish makes the buffers put since the last call visible to the kernel;
// the loop calls it before every submit.
func (p *recvPool) publish() {
	if p.dirty {
		p.br.Publish()
		p.dirty = false
	}
}

// took hands the buffers a receive of res bytes filled, starting with
// buffer first, to fn in order, each with its byte count.
func (p *recvPool) took(first uint16, res int, fn func(bid uint16, n int)) {
	at := p.pos[first]
	for i := 0; res > 0; i++ {
		bid := p.at[(int(at)+i)&(p.n-1)]
		assert(i > 0 || bid == first, "receive pool: a completion's first buffer is not "+
			"where it was put")
		n := min(res, recvPoolBufSize)
		p.free--
		fn(bid, n)
		res -= n
	}
}

// avail is how many bytes connection c has received and not parsed: its
// window and its queued buffers.
func (c *conn) avail() int { return c.rhi - c.rlo + c.queued }

// nextWin moves a connection whose window is parsed on to its next queued
// buffer, giving the parsed one back to the pool.
func (s *shard) nextWin(c *conn) {
	if c.winBid >= 0 {
		s.pool.put(uint16(c.winBid))
		c.winBid = -1
	}
	if c.rxHead < 0 {
		c.win, c.rlo, c.rhi = c.carry[:0], 0, 0
		return
	}
	p, bid := s.pool, c.rxHead
	c.rxHead = p.next[bid]
	c.queued -= int(p.fill[bid] - p.off[bid])
	c.win, c.rlo, c.rhi, c.winBid = p.buf(uint16(bid)), int(p.off[bid]), int(p.fill[bid]), bid
}

// peek returns the connection's next n bytes (n <= carryMax) contiguous,
// without consuming them, or nil when fewer have arrived. Bytes split
// across buffers are gathered into the connection's carry.
func (s *shard) peek(c *conn, n int) []byte {
	for c.rhi-c.rlo < n {
		if c.avail() < n {
			return nil
		}
		if c.rlo == c.rhi {
			s.nextWin(c)
			continue
		}
		s.gather(c, n)
	}
	return c.win[c.rlo : c.rlo+n]
}

// gather makes the carry the window, holding the window's bytes and then
// queued bytes, up to n of them.
func (s *shard) gather(c *conn, n int) {
	k := copy(c.carry[:], c.win[c.rlo:c.rhi])
	if c.winBid >= 0 {
		s.pool.put(uint16(c.winBid))
		c.winBid = -1
	}
	p := s.pool
	for k < n && c.rxHead >= 0 {
		bid := c.rxHead
		m := copy(c.carry[k:n], p.buf(uint16(bid))[p.off[bid]:p.fill[bid]])
		p.off[bid] += uint16(m)
		k += m
		c.queued -= m
		if p.off[bid] == p.fill[bid] {
			c.rxHead = p.next[bid]
			p.put(uint16(bid))
		}
	}
	c.win, c.rlo, c.rhi = c.carry[:], 0, k
}

// consume takes up to n received bytes, copying them to dst unless it is
// nil (a drained payload), and returns how many it took. Buffers it
// empties go back to the pool at once.
func (s *shard) consume(c *conn, dst []byte, n int) int {
	got := 0
	for got < n {
		if c.rlo == c.rhi {
			if c.rxHead < 0 {
				break
			}
			s.nextWin(c)
			continue
		}
		m := min(n-got, c.rhi-c.rlo)
		if dst != nil {
			copy(dst[got:], c.win[c.rlo:c.rlo+m])
		}
		c.rlo += m
		got += m
	}
	if c.rlo == c.rhi && c.winBid >= 0 {
		s.nextWin(c)
	}
	return got
}

// settleRecv readies a pooled connection for its next receive: the few
// bytes of a header still incomplete move to the carry, so no buffer
// stays held while the connection waits for the rest.
func (s *shard) settleRecv(c *conn) {
	if c.tls != nil || c.winBid < 0 && c.rxHead < 0 {
		return
	}
	assert(c.avail() < carryMax, "receive pool: more than a partial header left unparsed")
	s.gather(c, carryMax)
}

// onRecvPooled queues the buffers a receive filled on its connection.
func (s *shard) onRecvPooled(c *conn, first uint16, res int) {
	s.stats.Recvs.Add(1)
	p := s.pool
	p.took(first, res, func(bid uint16, n int) {
		b := int32(bid)
		p.next[b], p.off[b], p.fill[b] = -1, 0, uint16(n)
		if c.rxHead < 0 {
			c.rxHead = b
		} else {
			p.next[c.rxTail] = b
		}
		c.rxTail = b
		c.queued += n
		s.stats.RecvBufs.Add(1)
	})
}

// dropRecvBuffers gives back the buffers of a receive nobody will parse
// (its connection is closing, or the completion is stale).
func (s *shard) dropRecvBuffers(first uint16, res int) {
	s.pool.took(first, res, func(bid uint16, _ int) { s.pool.put(bid) })
}

// releaseRecv gives back every buffer a released connection holds.
func (s *shard) releaseRecv(c *conn) {
	for c.rxHead >= 0 || c.winBid >= 0 {
		c.rlo = c.rhi
		s.nextWin(c)
	}
	c.queued = 0
}

// retryStarved arms again the receives that found the pool empty, once
// buffers are back.
func (s *shard) retryStarved() {
	if len(s.starved) == 0 || s.pool.free == 0 {
		return
	}
	w := s.starved
	s.starved, s.starvedSpare = s.starvedSpare[:0], w
	for _, ci := range w {
		c := &s.conns[ci]
		if !c.starved {
			continue // released since (a connection reset clears it)
		}
		c.starved = false
		if c.fd >= 0 && !c.closing {
			s.armRecv(ci)
		}
	}
}
