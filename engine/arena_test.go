package engine

import (
	"math/rand"
	"testing"
	"unsafe"
)

func TestOrderFor(t *testing.T) {
	for _, c := range []struct{ n, order int }{
		{1, 0}, {4096, 0}, {4097, 1}, {8192, 1}, {8193, 2}, {1 << 20, 8}, {32 << 20, 13},
		{32<<20 + 4096, 14},
	} {
		if got := orderFor(c.n); got != c.order {
			t.Errorf("orderFor(%d) = %d, want %d", c.n, got, c.order)
		}
	}
}

// TestArenaAllocFree allocates random sizes until full, checks that no two
// buffers overlap and that every buffer is page-aligned, frees in random
// order and checks that the arena coalesces back to one block.
func TestArenaAllocFree(t *testing.T) {
	const size = 4 << 20
	a, err := newArena(size)
	if err != nil {
		t.Fatal(err)
	}
	defer a.close()
	rng := rand.New(rand.NewSource(1))
	type buf struct {
		b []byte
		h int32
	}
	var bufs []buf
	owner := make([]int, size/arenaBlockSize)
	for i := range owner {
		owner[i] = -1
	}
	base := uintptr(unsafe.Pointer(&a.mem[0]))
	for {
		n := 1 + rng.Intn(300<<10)
		b, h, ok := a.alloc(n)
		if !ok {
			break
		}
		p := uintptr(unsafe.Pointer(&b[0]))
		if p%arenaBlockSize != 0 || len(b) != n || cap(b) < n {
			t.Fatalf("alloc(%d): misaligned or short buffer (addr %#x len %d cap %d)",
				n, p, len(b), cap(b))
		}
		first := int(p-base) / arenaBlockSize
		for i := first; i < first+cap(b)/arenaBlockSize; i++ {
			if owner[i] >= 0 {
				t.Fatalf("block %d handed out twice", i)
			}
			owner[i] = len(bufs)
		}
		bufs = append(bufs, buf{b, h})
	}
	if a.inUse < size/2 {
		t.Fatalf("arena reported full with only %d of %d bytes in use", a.inUse, size)
	}
	rng.Shuffle(len(bufs), func(i, j int) { bufs[i], bufs[j] = bufs[j], bufs[i] })
	for _, b := range bufs {
		a.free(b.h)
	}
	if a.inUse != 0 {
		t.Fatalf("inUse %d after freeing everything", a.inUse)
	}
	if _, _, ok := a.alloc(size); !ok {
		t.Fatal("arena did not coalesce back into one block")
	}
}

func TestArenaAllocDoesNotAllocate(t *testing.T) {
	a, err := newArena(1 << 20)
	if err != nil {
		t.Fatal(err)
	}
	defer a.close()
	allocs := testing.AllocsPerRun(1000, func() {
		_, h1, _ := a.alloc(4096)
		_, h2, _ := a.alloc(100 << 10)
		a.free(h1)
		a.free(h2)
	})
	if allocs != 0 {
		t.Fatalf("arena alloc/free allocates %v times per run", allocs)
	}
}

func TestRangeLocks(t *testing.T) {
	var l rangeLocks
	i, ok := l.tryLock(0, 4096)
	if !ok {
		t.Fatal("first lock refused")
	}
	if _, ok := l.tryLock(4095, 8192); ok {
		t.Fatal("overlapping lock granted")
	}
	j, ok := l.tryLock(4096, 8192)
	if !ok {
		t.Fatal("adjacent lock refused")
	}
	l.unlock(i)
	if k, ok := l.tryLock(0, 512); !ok {
		t.Fatal("lock refused after unlock")
	} else {
		l.unlock(k)
	}
	l.unlock(j)
	var held []int
	for n := 0; ; n++ {
		k, ok := l.tryLock(uint64(n)*512, uint64(n+1)*512)
		if !ok {
			if n != rangeLocksMax {
				t.Fatalf("table full after %d locks, want %d", n, rangeLocksMax)
			}
			break
		}
		held = append(held, k)
	}
	for _, k := range held {
		l.unlock(k)
	}
}
