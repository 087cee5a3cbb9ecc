package engine

import (
	"unsafe"

	"github.com/nbdring/nbdring/ring"
	"github.com/nbdring/nbdring/wire"
	"golang.org/x/sys/unix"
)

// A reply header goes out only when the result is known; headers and data
// leave together in one vectored send, and replies that are ready at the
// same time share one sendmsg. Each reply is a list of iovecs (sl.out):
// headers in the slot's header space, data in the arena.

// sender is a shard's sending side: each connection's queue of replies
// (linked through slot.next), the batch in flight as a vector in the
// connection's kernel-visible memory (connMem), zero-copy and its copied
// auto-off, and the list of connections with replies queued (dirty). It
// encodes replies into their slots and builds batches; the shard issues
// what it says to submit through the ledger and frees a finished batch's
// slots. It names connections and slots by index.
//
// Invariants (asserted under -tags invariants):
//   - one send in flight per connection: a batch is built only while none
//     is (sending), so a partial send never interleaves replies;
//   - a batch holds at most iovecsPerSendMax iovecs, and a reply is never
//     split between batches;
//   - a connection is on dirty once (its dirty flag);
//   - a queue's tail is its last reply, -1 exactly when it is empty
//     (check, on every batch).
type sender struct {
	q     []txQueue
	rows  []slot    // the slot table's rows (slot.go): their out vectors and links
	mem   []connMem // each connection's sendmsg and vector
	m     *shardMetrics
	stats *ShardStats
	// dirty: connections with replies queued but not yet sent; spare swaps
	// with it while they are sent.
	dirty, spare []int32
}

// txQueue is one connection's sending state.
type txQueue struct {
	head, tail  int32 // replies ready to send, linked through slot.next
	sendHead    int32 // first slot of the sendmsg in flight
	sending     bool
	zc          bool // zero-copy sends allowed: a TCP socket, a kernel that has them
	sendZC      bool // the send in flight is zero-copy
	zcCopiedRun int  // consecutive zero-copy notifications that said "copied"
	iovAt, iovN int  // the in-flight vector is mem.iov[iovAt:iovN]
	dirty       bool // on sender.dirty
	style       wire.ReplyStyle
}

// sendResult is what the shard does after a send completed.
type sendResult uint8

const (
	sendDone     sendResult = iota // the batch is sent: free it, send the next
	sendResubmit                   // partial, or refused zero-copy: submit again
	sendFailed                     // an error, or the connection is closing
)

func (t *sender) init(conns int, rows []slot, mem []connMem, m *shardMetrics,
	stats *ShardStats) {
	t.q = make([]txQueue, conns)
	t.rows, t.mem, t.m, t.stats = rows, mem, m, stats
	t.dirty = make([]int32, 0, conns)
	t.spare = make([]int32, 0, conns)
	for ci := range int32(conns) {
		t.reset(ci, 0, false)
	}
}

// reset readies connection ci's queue for a new connection.
func (t *sender) reset(ci int32, style wire.ReplyStyle, zc bool) {
	t.q[ci] = txQueue{head: -1, tail: -1, sendHead: -1, zc: zc, style: style}
}

// busy reports whether a send is in flight on connection ci.
func (t *sender) busy(ci int32) bool { return t.q[ci].sending }

// pending reports whether connection ci has replies to send or in flight.
func (t *sender) pending(ci int32) bool { return t.q[ci].sending || t.q[ci].head >= 0 }

func (t *sender) replyOK(si int32) {
	sl := &t.rows[si]
	n := wire.EncodeDone(sl.hdr, t.q[sl.conn].style, sl.req.Cookie, sl.req.Offset)
	sl.nout, sl.outLen = 0, 0
	sl.put(sl.hdr[:n])
	t.enqueue(si)
}

// replyErr answers with errno; on structured and extended connections as
// an ERROR chunk carrying msg for a human.
func (t *sender) replyErr(si int32, errno wire.Errno, msg string) {
	sl := &t.rows[si]
	t.m.countError(sl.conn, sl.req.Type)
	n := wire.EncodeError(sl.hdr, t.q[sl.conn].style, sl.req.Cookie, sl.req.Offset, errno,
		msg)
	sl.nout, sl.outLen = 0, 0
	sl.put(sl.hdr[:n])
	t.enqueue(si)
}

// replyRead sends the read's segments: data from the span buffer, holes
// as OFFSET_HOLE chunks; the last chunk carries the DONE flag.
func (t *sender) replyRead(si int32) {
	sl := &t.rows[si]
	style := t.q[sl.conn].style
	r := &sl.req
	checkSegments(sl)
	sl.nout, sl.outLen = 0, 0
	at := 0
	for i := 0; i < sl.nsegs; i++ {
		seg := &sl.segs[i]
		last := i == sl.nsegs-1
		if seg.hole {
			n := wire.EncodeHole(sl.hdr[at:], style, r.Cookie, r.Offset, seg.off, seg.len,
				last)
			sl.put(sl.hdr[at : at+n])
			at += n
			continue
		}
		n := wire.EncodeRead(sl.hdr[at:], style, r.Cookie, r.Offset, seg.off, seg.len, last)
		sl.put(sl.hdr[at : at+n])
		at += n
		from := uint64(sl.skip) + seg.off - r.Offset
		sl.put(sl.data[from : from+uint64(seg.len)])
	}
	t.enqueue(si)
}

// replyBlockStatus sends count descriptors (descLen bytes in sl.data).
func (t *sender) replyBlockStatus(si int32, count, descLen int) {
	sl := &t.rows[si]
	n := wire.EncodeBlockStatus(sl.hdr, t.q[sl.conn].style, sl.req.Cookie, sl.req.Offset,
		wire.MetaIDBaseAllocation, count)
	sl.nout, sl.outLen = 0, 0
	sl.put(sl.hdr[:n])
	sl.put(sl.data[:descLen])
	t.enqueue(si)
}

func (sl *slot) put(b []byte) {
	sl.out[sl.nout] = unix.Iovec{Base: unsafe.SliceData(b), Len: uint64(len(b))}
	sl.nout++
	sl.outLen += uint64(len(b))
}

// enqueue queues slot si's reply on its connection, which is then dirty.
func (t *sender) enqueue(si int32) {
	sl := &t.rows[si]
	ci := sl.conn
	q := &t.q[ci]
	sl.next = -1
	t.m.replyQueued(si)
	if q.tail >= 0 {
		t.rows[q.tail].next = si
	} else {
		q.head = si
	}
	q.tail = si
	if !q.dirty {
		q.dirty = true
		assert(len(t.dirty) < cap(t.dirty), "sender: a connection on the dirty list twice")
		t.dirty = append(t.dirty, ci)
	}
}

// check asserts connection ci's queue invariants (a walk of the queue:
// only with -tags invariants).
func (t *sender) check(ci int32) {
	if !invariantsOn {
		return
	}
	q := &t.q[ci]
	last := int32(-1)
	for si := q.head; si >= 0; si = t.rows[si].next {
		assert(t.rows[si].conn == ci, "sender: another connection's reply on the queue")
		last = si
	}
	assert(last == q.tail, "sender: the queue's tail is not its last reply")
}

// takeDirty returns the connections with replies queued since the last
// call, their flags cleared; valid until the next call.
func (t *sender) takeDirty() []int32 {
	w := t.dirty
	t.dirty, t.spare = t.spare[:0], w
	for _, ci := range w {
		t.q[ci].dirty = false
	}
	return w
}

// front is connection ci's first queued reply, or -1.
func (t *sender) front(ci int32) int32 { return t.q[ci].head }

// pop takes connection ci's first queued reply off its queue.
func (t *sender) pop(ci int32) {
	q := &t.q[ci]
	q.head = t.rows[q.head].next
	if q.head < 0 {
		q.tail = -1
	}
}

// batch gathers connection ci's queued replies into one vector, whole
// replies only, at most iovecsPerSendMax iovecs; false: a send is in
// flight (sends on one socket must not overlap) or nothing is queued.
func (t *sender) batch(ci int32) bool {
	q := &t.q[ci]
	if q.sending || q.head < 0 {
		return false
	}
	t.check(ci)
	iov := t.mem[ci].iov[:]
	n, last, replies := 0, int32(-1), 0
	var bytes uint64
	si := q.head
	for si >= 0 && n+t.rows[si].nout <= iovecsPerSendMax {
		sl := &t.rows[si]
		n += copy(iov[n:], sl.out[:sl.nout])
		bytes += sl.outLen
		last, si = si, sl.next
		replies++
	}
	assert(replies > 0, "a reply with more iovecs than a send holds")
	t.stats.Sends.Add(1)
	t.stats.SentReplies.Add(uint64(replies))
	t.rows[last].next = -1
	q.sendHead, q.head = q.head, si
	if si < 0 {
		q.tail = -1
	}
	q.iovAt, q.iovN = 0, n
	q.sendZC = q.zc && bytes >= sendZCMin
	return true
}

// submit readies the rest of connection ci's batch for a sendmsg and
// returns the slot that names it (the ledger holds the batch's slots
// through it), the message, and whether to send it zero-copy.
func (t *sender) submit(ci int32) (head int32, msg *unix.Msghdr, zc bool) {
	q, m := &t.q[ci], &t.mem[ci]
	m.msg.Iov = &m.iov[q.iovAt]
	m.msg.Iovlen = uint64(q.iovN - q.iovAt)
	q.sending = true
	if q.sendZC {
		t.stats.SendsZC.Add(1)
	}
	return q.sendHead, &m.msg, q.sendZC
}

// submitBytes readies a sendmsg of b alone (a TLS connection's records).
func (t *sender) submitBytes(ci int32, b []byte) *unix.Msghdr {
	q, m := &t.q[ci], &t.mem[ci]
	assert(!q.sending, "a send issued while another is in flight")
	m.iov[0] = unix.Iovec{Base: unsafe.SliceData(b), Len: uint64(len(b))}
	m.msg.Iov, m.msg.Iovlen = &m.iov[0], 1
	q.sending = true
	return &m.msg
}

// sentBytes: connection ci's submitBytes send completed.
func (t *sender) sentBytes(ci int32) { t.q[ci].sending = false }

// sent takes a send's result (res bytes, or -errno) on connection ci and
// says what to do next; closing: the connection is being closed.
func (t *sender) sent(ci int32, res int32, closing bool) sendResult {
	q := &t.q[ci]
	q.sending = false
	if res == -int32(unix.EOPNOTSUPP) && q.sendZC && !closing {
		// This socket refuses zero-copy: send the same batch copied, and
		// every later one on this connection.
		t.stats.ZCRefused.Add(1)
		q.zc, q.sendZC = false, false
		return sendResubmit
	}
	if res > 0 && q.sendZC {
		t.stats.ZCBytes.Add(uint64(res))
	}
	if closing || res < 0 {
		return sendFailed
	}
	// Resume a partial send where it stopped (as internal/poll's writev).
	iov := t.mem[ci].iov[:]
	left := uint64(res)
	for q.iovAt < q.iovN && left >= iov[q.iovAt].Len {
		left -= iov[q.iovAt].Len
		q.iovAt++
	}
	if q.iovAt < q.iovN {
		v := &iov[q.iovAt]
		v.Base = (*byte)(unsafe.Add(unsafe.Pointer(v.Base), left))
		v.Len -= left
		return sendResubmit
	}
	return sendDone
}

// notified takes a zero-copy send's notification: whether the kernel
// copied after all; after zcCopiedRunMax copies in a row the connection
// stops asking for zero-copy (on loopback the kernel always copies).
func (t *sender) notified(ci int32, res int32) {
	q := &t.q[ci]
	if uint32(res)&ring.NotifCopied == 0 {
		q.zcCopiedRun = 0
		return
	}
	t.stats.ZCCopied.Add(1)
	q.zcCopiedRun++
	if q.zcCopiedRun == zcCopiedRunMax && q.zc {
		q.zc = false // sends queued from now on are copied
		t.stats.ZCDisabled.Add(1)
	}
}

// takeBatch hands over connection ci's sent (or failed) batch, a list of
// slots through slot.next, for the shard to free.
func (t *sender) takeBatch(ci int32) int32 {
	q := &t.q[ci]
	head := q.sendHead
	q.sendHead = -1
	return head
}

// drop forgets connection ci's queue (it is released; its slots are
// released by the shard).
func (t *sender) drop(ci int32) {
	q := &t.q[ci]
	q.head, q.tail, q.sendHead = -1, -1, -1
}

// unsent is what connection ci's queued replies and the unsent rest of
// its plaintext send in flight add up to.
func (t *sender) unsent(ci int32, plain bool) uint64 {
	q := &t.q[ci]
	var n uint64
	for si := q.head; si >= 0; si = t.rows[si].next {
		n += t.rows[si].outLen
	}
	if q.sending && plain {
		for _, v := range t.mem[ci].iov[q.iovAt:q.iovN] {
			n += v.Len
		}
	}
	return n
}
