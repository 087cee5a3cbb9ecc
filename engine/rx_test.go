package engine

import (
	"bytes"
	"slices"
	"testing"
)

// testRx is an rx alone, with no shard: a pool of 8 buffers on a ring of
// its own (never submitted to: the test plays the kernel) and 2 cursors.
type testRx struct {
	rx
	head uint16 // the ring position the kernel fills next
	st   ShardStats
}

func newTestRx(t *testing.T) *testRx {
	t.Helper()
	rg := testRing(t, 16)
	tr := new(testRx)
	tr.init(2, &tr.st)
	var err error
	if tr.pool, err = newRecvPool(rg, 8, true); err != nil {
		skipMissing(t, "io_uring", "no provided buffer ring here: %v", err)
	}
	t.Cleanup(func() { tr.pool.close() })
	tr.reset(0, nil)
	tr.reset(1, nil)
	return tr
}

// recv plays a receive of data on connection ci: the kernel fills the
// buffers at the ring's head in order and names the first.
func (tr *testRx) recv(ci int32, data []byte) {
	p := tr.pool
	first := p.at[int(tr.head)&(p.n-1)]
	for i := 0; i*recvPoolBufSize < len(data); i++ {
		bid := p.at[(int(tr.head))&(p.n-1)]
		copy(p.buf(bid), data[i*recvPoolBufSize:])
		tr.head++
	}
	tr.received(ci, first, len(data))
}

func pattern(n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(i*7 + i>>8)
	}
	return b
}

// TestRxHeaderAcrossBuffers: a header split across two pool buffers of
// one receive is gathered whole by peek, the emptied buffers go back to
// the pool as they are parsed, and a settled cursor holds none.
func TestRxHeaderAcrossBuffers(t *testing.T) {
	tr := newTestRx(t)
	const lead, hdr = recvPoolBufSize - 10, 28
	data := pattern(lead + hdr + 5)
	tr.recv(0, data)
	if tr.avail(0) != len(data) || tr.pool.free != 6 {
		t.Fatalf("after the receive: %d bytes, %d buffers free; want %d and 6",
			tr.avail(0), tr.pool.free, len(data))
	}
	if got := tr.consume(0, nil, lead); got != lead {
		t.Fatalf("consumed %d, want %d", got, lead)
	}
	if tr.peek(0, hdr+6) != nil {
		t.Fatal("peek returned more bytes than arrived")
	}
	h := tr.peek(0, hdr)
	if !bytes.Equal(h, data[lead:lead+hdr]) {
		t.Fatalf("the split header came back as %x, want %x", h, data[lead:lead+hdr])
	}
	if tr.pool.free != 7 {
		t.Fatalf("%d buffers free once the first was gathered, want 7", tr.pool.free)
	}
	tr.consume(0, nil, hdr)
	tr.settle(0)
	if tr.pooled(0) || tr.pool.free != 8 || tr.avail(0) != 5 {
		t.Fatalf("settled: pooled %v, %d free, %d bytes; want false, 8, 5",
			tr.pooled(0), tr.pool.free, tr.avail(0))
	}
	// The rest of the next header arrives in a second receive.
	rest := pattern(hdr + 100)
	tr.recv(0, rest[5:])
	if h := tr.peek(0, hdr); !bytes.Equal(h[:5], data[lead+hdr:]) ||
		!bytes.Equal(h[5:], rest[5:hdr]) {
		t.Fatalf("a header across two receives came back as %x", h)
	}
	dst := make([]byte, hdr+100)
	if got := tr.consume(0, dst, len(dst)); got != hdr+100 {
		t.Fatalf("consumed %d, want %d", got, hdr+100)
	}
	tr.settle(0)
	if tr.pooled(0) || tr.pool.free != 8 || tr.avail(0) != 0 {
		t.Fatalf("drained: pooled %v, %d free, %d bytes", tr.pooled(0), tr.pool.free,
			tr.avail(0))
	}
}

// TestRxConsumeSpansBuffers: a payload spanning several buffers and two
// receives is copied out whole, in order, to its last byte.
func TestRxConsumeSpansBuffers(t *testing.T) {
	tr := newTestRx(t)
	data := pattern(3*recvPoolBufSize + 700)
	tr.recv(1, data[:2*recvPoolBufSize+1])
	tr.recv(1, data[2*recvPoolBufSize+1:])
	got := make([]byte, len(data))
	n := tr.consume(1, got[:100], 100)
	n += tr.consume(1, got[n:], len(data)) // asks for more than there is
	if n != len(data) || !bytes.Equal(got, data) {
		t.Fatalf("consumed %d bytes (want %d), equal %v", n, len(data), bytes.Equal(got, data))
	}
	if tr.pooled(1) || tr.pool.free != 8 {
		t.Fatalf("all parsed: pooled %v, %d buffers free", tr.pooled(1), tr.pool.free)
	}
}

// TestRxStarvedAndRelease: receives that found the pool empty are handed
// back once buffers return, each once, without those released since; a
// released connection gives back every buffer it held, and buffers of a
// receive nobody parses go straight back.
func TestRxStarvedAndRelease(t *testing.T) {
	tr := newTestRx(t)
	tr.recv(0, pattern(8*recvPoolBufSize)) // the whole pool
	tr.starve(1)
	tr.starve(0)
	if w := tr.takeStarved(); w != nil {
		t.Fatalf("starved receives retried with the pool empty: %v", w)
	}
	tr.release(0)
	tr.reset(0, nil) // a new connection at index 0: its old starve is void
	if tr.pool.free != 8 || tr.pooled(0) {
		t.Fatalf("released: %d buffers free, pooled %v", tr.pool.free, tr.pooled(0))
	}
	if w := tr.takeStarved(); !slices.Equal(w, []int32{1}) {
		t.Fatalf("retried %v, want [1]", w)
	}
	if w := tr.takeStarved(); len(w) != 0 {
		t.Fatalf("retried %v a second time", w)
	}
	if tr.st.RecvNoBufs.Load() != 2 {
		t.Fatalf("RecvNoBufs %d, want 2", tr.st.RecvNoBufs.Load())
	}
	first := tr.pool.at[int(tr.head)&7]
	tr.head += 3
	tr.dropBuffers(first, 2*recvPoolBufSize+1)
	if tr.pool.free != 8 {
		t.Fatalf("dropped a receive: %d buffers free, want 8", tr.pool.free)
	}
}

// TestRxTLSStage: a TLS cursor parses its staging buffer; stage drops the
// parsed bytes, and a cursor holding only unparsed bytes is full.
func TestRxTLSStage(t *testing.T) {
	tr := newTestRx(t)
	buf := make([]byte, 64)
	tr.reset(1, buf)
	room := tr.stage(1)
	n := copy(room, pattern(64))
	tr.staged(1, n)
	if !tr.stageFull(1) || tr.avail(1) != 64 {
		t.Fatalf("a staged 64 bytes: full %v, avail %d", tr.stageFull(1), tr.avail(1))
	}
	tr.consume(1, nil, 40)
	tr.settle(1) // holds no pool buffer: nothing moves
	if room := tr.stage(1); len(room) != 40 || tr.avail(1) != 24 ||
		!bytes.Equal(buf[:24], pattern(64)[40:]) {
		t.Fatalf("after stage: room %d, avail %d", len(room), tr.avail(1))
	}
}
