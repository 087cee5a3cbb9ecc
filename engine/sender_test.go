package engine

import (
	"testing"
	"unsafe"

	"github.com/nbdring/nbdring/ring"
	"github.com/nbdring/nbdring/wire"
	"golang.org/x/sys/unix"
)

// newTestSender is a sender alone, with no shard or ring: 24 slots with
// their header space, 2 connections (0 may send zero-copy), and the
// counters it adds to.
func newTestSender(t *testing.T) (*sender, *ShardStats) {
	t.Helper()
	mem, err := newShardMem(24, 2)
	if err != nil {
		skipMissing(t, "memory", "cannot map shard memory here: %v", err)
	}
	t.Cleanup(mem.close)
	st := new(ShardStats)
	tab := new(slotTable)
	tab.init(&sizing{conns: 2, slots: 24, slotsShared: 24}, nil, st, mem.hdrs)
	m := new(shardMetrics)
	m.init(1)
	tx := new(sender)
	tx.init(2, tab.rows, mem.conns, m, st)
	tx.reset(0, wire.StyleSimple, true)
	tx.reset(1, wire.StyleStructured, false)
	return tx, st
}

// fakeReply queues on connection ci a reply in slot si of n iovecs of
// size bytes each.
func fakeReply(tx *sender, ci, si int32, n int, size uint64, buf []byte) {
	sl := &tx.rows[si]
	sl.conn, sl.nout, sl.outLen = ci, 0, 0
	for range n {
		sl.put(buf[:size])
	}
	tx.enqueue(si)
}

// TestSenderBatches: replies queued together go out in one vector of
// whole replies, capped at iovecsPerSendMax; the rest waits for the next
// batch, and none is built while a send is in flight. A large batch on a
// zero-copy connection is sent zero-copy.
func TestSenderBatches(t *testing.T) {
	tx, st := newTestSender(t)
	buf := make([]byte, 64<<10)
	// 20 replies of 7 iovecs: 18 fit (126), the 19th would pass 128.
	for si := range int32(20) {
		fakeReply(tx, 0, si, 7, 1024, buf)
	}
	fakeReply(tx, 1, 23, 1, 100, buf)
	if d := tx.takeDirty(); len(d) != 2 || d[0] != 0 || d[1] != 1 {
		t.Fatalf("dirty %v, want [0 1] once each", d)
	}
	if !tx.batch(0) {
		t.Fatal("no batch built")
	}
	q := &tx.q[0]
	if q.iovN != 126 || q.sendHead != 0 || tx.rows[17].next != -1 || q.head != 18 {
		t.Fatalf("batch of %d iovecs from %d (next %d), queue at %d; want 126 from 0, "+
			"ending at 17, queue at 18", q.iovN, q.sendHead, tx.rows[17].next, q.head)
	}
	head, msg, zc := tx.submit(0)
	if head != 0 || msg.Iovlen != 126 || !zc || st.SendsZC.Load() != 1 {
		t.Fatalf("submit: head %d, %d iovecs, zero-copy %v", head, msg.Iovlen, zc)
	}
	if tx.batch(0) {
		t.Fatal("a second batch built while a send is in flight")
	}
	if tx.sent(0, 126*1024, false) != sendDone || tx.takeBatch(0) != 0 {
		t.Fatal("a whole send did not finish its batch")
	}
	if !tx.batch(0) || tx.q[0].iovN != 14 || tx.q[0].head != -1 || tx.q[0].tail != -1 {
		t.Fatalf("the next batch: %d iovecs, queue %d..%d", tx.q[0].iovN, tx.q[0].head,
			tx.q[0].tail)
	}
	if !tx.batch(1) {
		t.Fatal("connection 1 built no batch")
	}
	if _, _, zc := tx.submit(1); zc {
		t.Fatal("a 100-byte batch on a copied connection sent zero-copy")
	}
}

// TestSenderPartial: a partial send resumes at the byte it stopped, inside
// an iovec; a refused zero-copy send is sent again copied, and the
// connection stays copied; copied notifications turn zero-copy off after
// zcCopiedRunMax in a row.
func TestSenderPartial(t *testing.T) {
	tx, st := newTestSender(t)
	buf := make([]byte, 64<<10)
	fakeReply(tx, 0, 0, 3, 32<<10, buf) // 96 KiB: zero-copy
	tx.batch(0)
	tx.submit(0)
	if r := tx.sent(0, -int32(unix.EOPNOTSUPP), false); r != sendResubmit {
		t.Fatalf("refused zero-copy: %d, want a resubmit", r)
	}
	if _, _, zc := tx.submit(0); zc || tx.q[0].zc || st.ZCRefused.Load() != 1 {
		t.Fatal("the refused batch was not sent copied")
	}
	if r := tx.sent(0, 40<<10, false); r != sendResubmit {
		t.Fatalf("a partial send: %d, want a resubmit", r)
	}
	v := tx.mem[0].iov[tx.q[0].iovAt]
	if tx.q[0].iovAt != 1 || v.Len != 24<<10 ||
		uintptr(unsafe.Pointer(v.Base)) != uintptr(unsafe.Pointer(&buf[8<<10])) {
		t.Fatalf("resumed at iovec %d, %d bytes", tx.q[0].iovAt, v.Len)
	}
	if r := tx.sent(0, 56<<10, false); r != sendDone {
		t.Fatalf("the rest sent: %d, want done", r)
	}
	if r := tx.sent(1, -int32(unix.EPIPE), false); r != sendFailed {
		t.Fatalf("a failed send: %d, want failed", r)
	}
	tx.q[1].zc = true
	copied := uint32(ring.NotifCopied)
	for i := range zcCopiedRunMax {
		if !tx.q[1].zc {
			t.Fatalf("zero-copy off after %d copied notifications", i)
		}
		tx.notified(1, int32(copied))
	}
	if tx.q[1].zc || st.ZCDisabled.Load() != 1 || st.ZCCopied.Load() != zcCopiedRunMax {
		t.Fatalf("after %d copied: zero-copy %v", zcCopiedRunMax, tx.q[1].zc)
	}
}

// TestSenderReplyAllocations: encoding and queueing a reply, building and
// submitting a batch and finishing it allocate nothing.
func TestSenderReplyAllocations(t *testing.T) {
	tx, _ := newTestSender(t)
	tx.rows[0].conn = 1
	n := testing.AllocsPerRun(100, func() {
		tx.replyOK(0)
		tx.takeDirty()
		tx.batch(1)
		tx.submit(1)
		tx.sent(1, 16, false)
		tx.takeBatch(1)
	})
	if n != 0 {
		t.Fatalf("%v allocations a reply", n)
	}
}

// TestSenderInvariants: a queue whose tail is not its last reply, or that
// holds another connection's reply, is refused by the invariants build.
func TestSenderInvariants(t *testing.T) {
	needInvariants(t)
	tx, _ := newTestSender(t)
	buf := make([]byte, 64)
	fakeReply(tx, 0, 0, 1, 16, buf)
	fakeReply(tx, 0, 1, 1, 16, buf)
	tx.q[0].tail = 0
	refused(t, "a tail short of the queue's end", func() { tx.batch(0) })
	tx.q[0].tail = 1
	tx.rows[1].conn = 1
	refused(t, "another connection's reply", func() { tx.batch(0) })
}
