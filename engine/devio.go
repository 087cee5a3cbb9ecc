package engine

import (
	"time"

	"github.com/nbdring/nbdring/ring"
	"github.com/nbdring/nbdring/wire"
)

// deviceIO is a shard's device side: it moves a request's slot through its
// phases (dispatch.go start*, device.go submit* and on*, sparse.go
// planning) and owns the phases' own state: the slots waiting for a range
// lock (rmwWait), the zero buffer, the device-error log's rate limit and
// what it knows of each connection (its reply style, its address for
// logs). One concrete type, a switch on the phase, no interface: each
// operation is issued through the ledger as opIO on its slot, and each
// completion comes back to onIO by the op byte. A phase ends in a reply
// through the sender (to its right); it never calls the connection table:
// a start that finds no buffer returns false and the shard releases the
// slot, and a completion on a closing connection is the shard's to end
// (onIO returns false).
//
// Invariants: a slot holds its range lock only between startLocked and
// the completion of the operation that changed its blocks (unlockSpan;
// freeSlot asserts none is left); a slot is on rmwWait at most once, and
// only while it waits for a lock; refusals are the validator's
// (wire.ZeroCaps: the zeroing phases assert what it refused).
type deviceIO struct {
	id        int
	ring      *ring.Ring // made in shard.run
	led       *ledger
	slots     *slotTable
	tx        *sender
	m         *shardMetrics
	stats     *ShardStats
	zeros     []byte // read-only zeros, the source of writes of zeros
	fixedBufs bool   // the arena is registered as fixed buffer 0
	blockMax  uint32 // the largest span buffer a request gets
	conns     []devConn
	rmwWait   []int32 // slots waiting for a range lock
	// rmwSpare swaps with rmwWait while it is retried, so a retry that
	// waits again appends to a list nobody is iterating.
	rmwSpare []int32
	// Device errors are logged at most once per deviceErrorLogEvery, with
	// a count of those left out since the last line.
	errLogNext  time.Time
	errLogQuiet int
}

// devConn is what the device side knows of a connection.
type devConn struct {
	style wire.ReplyStyle
	peer  string // for logs
}

func (d *deviceIO) init(id, conns, slots int, blockMax uint32, led *ledger, tab *slotTable,
	tx *sender, m *shardMetrics, stats *ShardStats) {
	d.id, d.blockMax, d.led, d.slots, d.tx, d.m, d.stats = id, blockMax, led, tab, tx, m,
		stats
	d.conns = make([]devConn, conns)
	d.rmwWait = make([]int32, 0, slots)
	d.rmwSpare = make([]int32, 0, slots)
}

// attach records a new connection at index ci.
func (d *deviceIO) attach(ci int32, style wire.ReplyStyle, peer string) {
	d.conns[ci] = devConn{style: style, peer: peer}
}

// issue returns slot si's SQE for its next device operation, stamped by
// the ledger, which holds the slot until the completion.
func (d *deviceIO) issue(si int32) *ring.SQE {
	d.led.holdSlot(si)
	d.m.deviceIssued(si)
	ud := d.led.stamp(opIO, si)
	sqe := d.ring.SQE()
	sqe.UserData = ud
	return sqe
}

// issueInline completes slot si's device operation the shard has just
// done itself (ledger.inline): the slot is held until its completion.
func (d *deviceIO) issueInline(si int32, res int32) {
	d.led.holdSlot(si)
	d.m.inlineDone(si)
	d.led.inline(si, res)
}

// peer is the address of slot sl's client, for logs.
func (d *deviceIO) peer(sl *slot) string {
	if sl.conn < 0 || int(sl.conn) >= len(d.conns) {
		return "" // no owner: not a request's slot
	}
	return d.conns[sl.conn].peer
}

// lockWaiting reports whether slots wait for a range lock (the loop then
// arms its retry timer).
func (d *deviceIO) lockWaiting() bool { return len(d.rmwWait) > 0 }

// retryLocked gives the slots waiting for a range lock another try.
func (d *deviceIO) retryLocked() {
	if len(d.rmwWait) == 0 {
		return
	}
	w := d.rmwWait
	d.rmwWait, d.rmwSpare = d.rmwSpare[:0], w
	for _, si := range w {
		d.startLocked(si)
	}
}

// forget drops connection ci's slots from rmwWait (it is released).
func (d *deviceIO) forget(ci int32) {
	keep := d.rmwWait[:0]
	for _, si := range d.rmwWait {
		if d.slots.rows[si].conn != ci {
			keep = append(keep, si)
		}
	}
	d.rmwWait = keep
}

// writeArrived: slot si's WRITE payload is all here; write it, or merge it
// first, once it holds its blocks (startLocked).
func (d *deviceIO) writeArrived(si int32) {
	sl := &d.slots.rows[si]
	sl.phase = phWrite
	if sl.pbuf >= 0 {
		sl.phase = phRMWRead
	}
	d.startLocked(si)
}

// startCache asks the kernel to read slot si's range ahead (CACHE).
func (d *deviceIO) startCache(si int32) {
	sl := &d.slots.rows[si]
	sl.phase = phCache
	d.stats.Punts[puntAlways].Add(1)
	ring.PrepFadvise(d.issue(si), sl.exp.fd, sl.req.Offset, sl.req.Length, fadvWillNeed)
}
