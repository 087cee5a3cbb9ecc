package ring

import (
	"fmt"
	"sync/atomic"
	"unsafe"

	"github.com/pawelgaczynski/giouring"
	"golang.org/x/sys/unix"
)

// Provided buffers (linux/io_uring.h): a receive with BufferSelect takes
// its buffer from a ring of them the application fills; with
// RecvBundle (Linux 6.10) one receive fills several in ring order.
const (
	sqeBufferSelect = 1 << 5 // IOSQE_BUFFER_SELECT
	recvBundle      = 1 << 4 // IORING_RECVSEND_BUNDLE, in the SQE's ioprio
	// CQEBuffer marks a completion that took provided buffers; the first
	// one's id is in the flags' upper 16 bits.
	CQEBuffer      = 1 << 0 // IORING_CQE_F_BUFFER
	cqeBufferShift = 16
)

// CQEBufferID is the id of the first provided buffer a completion took.
func CQEBufferID(flags uint32) uint16 { return uint16(flags >> cqeBufferShift) }

// bufRingEntry is struct io_uring_buf; entry 0's resv is the ring's tail.
type bufRingEntry struct {
	addr uint64
	len  uint32
	bid  uint16
	resv uint16
}

// BufRing is a ring of provided buffers registered as one buffer group
// (IORING_REGISTER_PBUF_RING, Linux 5.19). Add queues a buffer at the
// local tail; Publish makes everything added visible to the kernel.
type BufRing struct {
	mem     []byte
	entries []bufRingEntry
	mask    uint16
	tail    uint16 // local: the position the next Add fills
	Group   uint16
}

// NewBufRing maps and registers a ring of entries (a power of two, at most
// 32768) provided buffers as group.
func (rg *Ring) NewBufRing(entries int, group uint16) (*BufRing, error) {
	if entries <= 0 || entries > 1<<15 || entries&(entries-1) != 0 {
		return nil, fmt.Errorf("provided buffer ring of %d entries: want a power of two "+
			"up to 32768", entries)
	}
	size := entries * int(unsafe.Sizeof(bufRingEntry{}))
	mem, err := unix.Mmap(-1, 0, size, unix.PROT_READ|unix.PROT_WRITE,
		unix.MAP_PRIVATE|unix.MAP_ANONYMOUS|unix.MAP_POPULATE)
	if err != nil {
		return nil, fmt.Errorf("map a provided buffer ring of %d entries: %w", entries, err)
	}
	reg := giouring.BufReg{RingAddr: uint64(uintptr(unsafe.Pointer(&mem[0]))),
		RingEntries: uint32(entries), Bgid: group}
	if _, err := rg.r.RegisterBufferRing(&reg, 0); err != nil {
		_ = unix.Munmap(mem)
		return nil, fmt.Errorf("register a provided buffer ring (IORING_REGISTER_PBUF_RING, "+
			"Linux 5.19): %w", err)
	}
	return &BufRing{mem: mem, mask: uint16(entries - 1), Group: group,
		entries: unsafe.Slice((*bufRingEntry)(unsafe.Pointer(&mem[0])), entries)}, nil
}

// Add queues buffer bid (n bytes at p) at the ring's next position, which
// it returns; the kernel sees it after Publish.
func (b *BufRing) Add(p unsafe.Pointer, n uint32, bid uint16) uint16 {
	pos := b.tail
	e := &b.entries[pos&b.mask]
	e.addr, e.len, e.bid = uint64(uintptr(p)), n, bid
	b.tail++
	return pos
}

// Publish stores the local tail in the ring's header with release
// semantics. The tail is the upper half of entry 0's last word, whose
// lower half is entry 0's bid, written only by Add on this thread: so a
// 32-bit store of both is the 16-bit store Go lacks.
func (b *BufRing) Publish() {
	e := &b.entries[0]
	word := (*uint32)(unsafe.Pointer(&e.bid))
	atomic.StoreUint32(word, uint32(e.bid)|uint32(b.tail)<<16)
}

// Unmap releases the ring's memory once its io_uring is closed (closing
// the io_uring unregisters it).
func (b *BufRing) Unmap() {
	if b != nil {
		_ = unix.Munmap(b.mem)
	}
}

// PrepRecvSelect receives up to n bytes on socket fd into buffers of group
// (BufferSelect): several of them in ring order with bundle, one without.
func PrepRecvSelect(e *SQE, fd int, n uint32, group uint16, bundle bool) {
	e.OpCode, e.Fd, e.Len = giouring.OpRecv, int32(fd), n
	e.Flags |= sqeBufferSelect
	e.BufIG = group
	if bundle {
		e.IoPrio |= recvBundle
	}
}
