package engine

import (
	"fmt"
	"log/slog"
	"time"

	"golang.org/x/sys/unix"
)

// connTable is the shard's connection component: the connections, their
// free list, and the waiting list of connections whose held request waits
// for a slot, a buffer or a QoS token (or, TLS, whose plaintext crypto/tls
// still holds). It keeps their bookkeeping and decides what a close, a
// drain or the -io-timeout tick does; the shard carries the decision out
// across the other components (COMPOSITION.md: it calls none of them).
//
// Invariants (check, under -tags invariants):
//   - a row is free (on the free list, once) exactly when its fd is -1 and
//     it is not closing; live counts the others;
//   - a row is on the waiting list, once, exactly when its waiting flag is
//     set, and only a live row is.
type connTable struct {
	rows []conn
	free []int32 // rows not in use; attach takes from the end
	live int     // rows in use: attached, closing included

	waiting []int32 // connections waiting for a slot or a buffer
	// spare swaps with waiting while it is retried, so a retry that waits
	// again appends to a list nobody is iterating.
	spare []int32

	shard int // the shard's id, for log lines
}

func (t *connTable) init(n, shard int) {
	t.rows = make([]conn, n)
	t.free = make([]int32, 0, n)
	for i := n - 1; i >= 0; i-- {
		t.rows[i].fd = -1
		t.free = append(t.free, int32(i))
	}
	t.waiting = make([]int32, 0, n)
	t.spare = make([]int32, 0, n)
	t.shard = shard
}

// full reports whether every row is in use.
func (t *connTable) full() bool { return len(t.free) == 0 }

// open takes a free row for h; the caller has checked full.
func (t *connTable) open(h handoff, blockMax uint32) int32 {
	ci := t.free[len(t.free)-1]
	t.free = t.free[:len(t.free)-1]
	t.rows[ci].reset(h, blockMax)
	t.live++
	t.check()
	return ci
}

// active reports whether ci is attached and not closing.
func (t *connTable) active(ci int32) bool {
	c := &t.rows[ci]
	return c.fd >= 0 && !c.closing
}

// release returns a closed row, one no operation holds, to the free list.
func (t *connTable) release(ci int32) {
	c := &t.rows[ci]
	assert(c.closing, "connTable: released a connection that was not closing")
	if c.waiting {
		keep := t.waiting[:0]
		for _, w := range t.waiting {
			if w != ci {
				keep = append(keep, w)
			}
		}
		t.waiting = keep
		c.waiting = false
	}
	c.fd, c.closing = -1, false // released: a second call finds nothing to do
	t.live--
	t.free = append(t.free, ci)
	t.check()
}

// park puts ci on the waiting list; the loop's next turn retries it.
func (t *connTable) park(ci int32) {
	c := &t.rows[ci]
	assert(!c.waiting, "connTable: a connection parked twice")
	c.waiting = true
	t.waiting = append(t.waiting, ci)
}

// takeWaiting returns the waiting connections, their flags cleared; valid
// until the next call. A connection parked meanwhile goes on a new list.
func (t *connTable) takeWaiting() []int32 {
	w := t.waiting
	t.waiting, t.spare = t.spare[:0], w
	for _, ci := range w {
		t.rows[ci].waiting = false
	}
	return w
}

// finishing says whether ci, after NBD_CMD_DISC or during a drain, has
// answered everything (txBusy: its sender still holds replies) and may
// close in order now, and with which reason.
func (t *connTable) finishing(ci int32, txBusy bool) (closeReason, bool) {
	c := &t.rows[ci]
	if !(c.disc || c.draining) || c.inflight > 0 || txBusy || c.closing {
		return closeUnknown, false
	}
	if c.disc {
		return closeDisc, true
	}
	return closeShutdown, true
}

// drain marks ci draining for the server's shutdown; true: it is halfway
// through a payload (a WRITE's or a rejected request's) and must be cut
// at once, since that write was never acknowledged and a client that
// stopped sending would hold the shutdown for the whole grace.
func (t *connTable) drain(ci int32) bool {
	c := &t.rows[ci]
	c.draining = true
	return c.pslot >= 0 || c.drain > 0
}

// stallKind is what the server waits on a client for (stall.go).
type stallKind uint8

const (
	stallNone    stallKind = iota // nothing the client owes
	stallReplies                  // replies queued it does not read
	stallPayload                  // a payload it does not finish sending
	stallHeader                   // a request header it does not finish sending
)

// stalledOn says what the server waits on ci for: replies tells whether
// its sender has replies pending, avail how many received bytes wait to
// be parsed. A connection idle between requests, or whose requests are
// with the device or waiting for memory, owes nothing.
func (t *connTable) stalledOn(ci int32, replies bool, avail int) stallKind {
	c := &t.rows[ci]
	switch {
	case replies:
		return stallReplies
	case c.pslot >= 0, c.drain > 0:
		return stallPayload
	case !c.waiting && !c.reqHeld && avail > 0:
		return stallHeader
	}
	return stallNone
}

// stalled is the -io-timeout tick's look at ci: true once the server has
// waited on it (waited) for timeout with no receive or send moving bytes
// (prog unchanged since the tick that last saw progress).
func (t *connTable) stalled(ci int32, waited bool, now time.Time, timeout time.Duration) bool {
	c := &t.rows[ci]
	if !waited || c.prog != c.progSeen || c.stuckSince.IsZero() {
		c.progSeen, c.stuckSince = c.prog, now
		return false
	}
	return now.Sub(c.stuckSince) >= timeout
}

// logCut says, once, who a connection cut at shutdown was and what it was
// waiting for: payload is the size of the WRITE payload it is receiving,
// txBusy whether its sender still holds replies.
func (t *connTable) logCut(ci int32, payload int, txBusy bool) {
	c := &t.rows[ci]
	why := "replies still to send"
	switch {
	case c.pslot >= 0:
		why = fmt.Sprintf("stalled %d bytes into a %d-byte WRITE payload", c.pgot, payload)
	case c.drain > 0:
		why = fmt.Sprintf("%d bytes of a rejected request's payload still to come", c.drain)
	case txBusy:
		why = "not reading its replies"
	}
	slog.Warn(fmt.Sprintf("shutdown: cutting connection from %s (export %q): %d requests "+
		"unanswered, %s", c.peer, c.exp.Name, c.inflight, why), "client", c.peer,
		"export", c.exp.Name, "shard", t.shard)
}

// sendCloseWhy says why a send that failed (or completed on a closing
// connection) ends connection ci, and logs an error the client did not
// cause by hanging up.
func (t *connTable) sendCloseWhy(ci int32, res int32) closeReason {
	c := &t.rows[ci]
	if res < 0 && !c.closing && res != -int32(unix.EPIPE) && res != -int32(unix.ECONNRESET) {
		slog.Warn("send: "+unix.Errno(-res).Error(), "client", c.peer, "shard", t.shard)
		return closeSendErr
	}
	return closeClient
}

// check asserts the table's invariants (a walk of every row: only with
// -tags invariants).
func (t *connTable) check() {
	if !invariantsOn {
		return
	}
	// Per row: how often it is on the free list (low two bits) and on
	// the waiting list (the bits above).
	on := make([]uint8, len(t.rows))
	for _, ci := range t.free {
		on[ci]++
	}
	for _, ci := range t.waiting {
		on[ci] += 4
	}
	for i := range t.rows {
		c := &t.rows[i]
		free := c.fd < 0 && !c.closing
		assert(on[i]&3 <= 1 && free == (on[i]&3 == 1),
			"connTable: a free row off the free list, or a live row on it")
		assert(on[i]>>2 <= 1 && c.waiting == (on[i]>>2 == 1) && (!c.waiting || !free),
			"connTable: the waiting flag and the waiting list disagree")
	}
	assert(t.live == len(t.rows)-len(t.free), "connTable: live miscounts the rows in use")
}
