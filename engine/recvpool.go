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
// armed again once buffers come back (rx.starved).
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

// take is the i-th buffer a receive filled whose first buffer is first
// (the kernel names only the first; the others are the ring positions
// after it), now out of the ring.
func (p *recvPool) take(first uint16, i int) uint16 {
	bid := p.at[(int(p.pos[first])+i)&(p.n-1)]
	assert(i > 0 || bid == first, "receive pool: a completion's first buffer is not "+
		"where it was put")
	p.free--
	return bid
}
