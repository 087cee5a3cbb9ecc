package engine

import (
	"fmt"
	"math/bits"

	"golang.org/x/sys/unix"
)

// arena is one shard's data memory: a single anonymous mapping made at
// start, page-aligned (so every buffer suits O_DIRECT) and outside the Go
// heap (so handing its addresses to the kernel is safe). Buffers are carved
// out by a buddy allocator in power-of-two multiples of arenaBlockSize, so
// a buffer is always contiguous and the allocator never allocates itself.
type arena struct {
	mem      []byte
	orderMax int
	// free lists per order, doubly linked through next/prev (block indices).
	head []int32
	next []int32
	prev []int32
	// freeOrder[i] is the order of the free block starting at block i, or
	// -1 when block i does not start a free block.
	freeOrder []int8
	inUse     int // bytes handed out
}

func newArena(size int) (*arena, error) {
	if size < arenaBlockSize || size&(size-1) != 0 {
		return nil, fmt.Errorf("arena size %d is not a power of two of at least %d",
			size, arenaBlockSize)
	}
	mem, err := unix.Mmap(-1, 0, size, unix.PROT_READ|unix.PROT_WRITE,
		unix.MAP_PRIVATE|unix.MAP_ANONYMOUS|unix.MAP_POPULATE)
	if err != nil {
		return nil, fmt.Errorf("map %d MiB buffer arena: %w (lower -arena-mib or -shards)",
			size>>20, err)
	}
	n := size / arenaBlockSize
	a := &arena{
		mem: mem, orderMax: bits.TrailingZeros(uint(n)),
		next: make([]int32, n), prev: make([]int32, n), freeOrder: make([]int8, n),
	}
	a.head = make([]int32, a.orderMax+1)
	for i := range a.head {
		a.head[i] = -1
	}
	for i := range a.freeOrder {
		a.freeOrder[i] = -1
	}
	a.push(0, a.orderMax)
	return a, nil
}

func (a *arena) close() { _ = unix.Munmap(a.mem) }

// orderFor returns the order of the smallest buffer holding n bytes.
func orderFor(n int) int {
	blocks := (n + arenaBlockSize - 1) / arenaBlockSize
	if blocks <= 1 {
		return 0
	}
	return bits.Len(uint(blocks - 1))
}

// alloc returns a buffer of at least n bytes and its handle for free, or
// ok=false when no free block is large enough (the caller waits).
func (a *arena) alloc(n int) (buf []byte, handle int32, ok bool) {
	order := orderFor(n)
	k := order
	for k <= a.orderMax && a.head[k] < 0 {
		k++
	}
	if k > a.orderMax {
		return nil, -1, false
	}
	i := a.head[k]
	a.remove(i, k)
	for k > order {
		k--
		a.push(i+1<<k, k)
	}
	a.freeOrder[i] = int8(-2 - order) // in use: remember the order
	size := arenaBlockSize << order
	a.inUse += size
	off := int(i) * arenaBlockSize
	return a.mem[off : off+n : off+size], i, true
}

// free returns a buffer obtained from alloc.
func (a *arena) free(i int32) {
	order := int(-2 - a.freeOrder[i])
	assert(order >= 0 && order <= a.orderMax, "arena: free of a block not in use")
	a.inUse -= arenaBlockSize << order
	for order < a.orderMax {
		buddy := i ^ (1 << order)
		if a.freeOrder[buddy] != int8(order) {
			break
		}
		a.remove(buddy, order)
		i &= buddy
		order++
	}
	a.push(i, order)
}

func (a *arena) push(i int32, order int) {
	a.freeOrder[i] = int8(order)
	a.prev[i] = -1
	a.next[i] = a.head[order]
	if a.head[order] >= 0 {
		a.prev[a.head[order]] = i
	}
	a.head[order] = i
}

func (a *arena) remove(i int32, order int) {
	if a.prev[i] >= 0 {
		a.next[a.prev[i]] = a.next[i]
	} else {
		a.head[order] = a.next[i]
	}
	if a.next[i] >= 0 {
		a.prev[a.next[i]] = a.prev[i]
	}
	a.freeOrder[i] = -1
}
