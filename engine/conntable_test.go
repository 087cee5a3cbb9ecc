package engine

import (
	"testing"
	"time"

	"github.com/nbdring/nbdring/wire"
)

// tableExport is an export for connTable tests: nothing reads its file.
var tableExport = &Export{Name: "t", fd: -1, size: 1 << 20, align: 512}

func tableOpen(t *testing.T, tab *connTable, fd int) int32 {
	t.Helper()
	if tab.full() {
		t.Fatal("table full")
	}
	return tab.open(handoff{fd: fd, exp: tableExport, peer: "test"}, wire.PayloadMax)
}

// TestConnTableFreeList: rows come off the free list once each, a full
// table says so, a released row comes back (closing over), and the ledger
// gives the reused row a new generation so a late completion for the old
// connection is told apart.
func TestConnTableFreeList(t *testing.T) {
	var tab connTable
	tab.init(3, 0)
	var l ledger
	l.init(0, 4, 3, &ShardStats{})
	seen := map[int32]bool{}
	for i := 0; i < 3; i++ {
		ci := tableOpen(t, &tab, 100+i)
		if seen[ci] {
			t.Fatalf("row %d handed out twice", ci)
		}
		seen[ci] = true
		l.renewConn(ci)
	}
	if !tab.full() || tab.live != 3 {
		t.Fatalf("full %v, live %d after three opens of three rows", tab.full(), tab.live)
	}
	gen := l.connGen[1]
	tab.rows[1].closing = true
	tab.release(1)
	l.renewConn(1)
	if tab.full() || tab.live != 2 || tab.rows[1].fd != -1 || tab.rows[1].closing {
		t.Fatalf("after release: full %v, live %d, fd %d, closing %v", tab.full(), tab.live,
			tab.rows[1].fd, tab.rows[1].closing)
	}
	if got := tableOpen(t, &tab, 200); got != 1 {
		t.Fatalf("open after release took row %d, want the released 1", got)
	}
	l.renewConn(1)
	if l.connGen[1] == gen {
		t.Fatalf("reused row kept generation %d", gen)
	}
	if tab.rows[1].fd != 200 || !tab.active(1) {
		t.Fatalf("reused row: fd %d, active %v", tab.rows[1].fd, tab.active(1))
	}
}

// TestConnTableWaiting: parked connections are retried once, in order; a
// connection parked during the retry lands on the next list, and a
// released one leaves the list.
func TestConnTableWaiting(t *testing.T) {
	var tab connTable
	tab.init(4, 0)
	a, b, c := tableOpen(t, &tab, 10), tableOpen(t, &tab, 11), tableOpen(t, &tab, 12)
	tab.park(a)
	tab.park(b)
	tab.park(c)
	tab.rows[b].closing = true
	tab.release(b) // gone while waiting
	w := tab.takeWaiting()
	if len(w) != 2 || w[0] != a || w[1] != c {
		t.Fatalf("waiting %v, want [%d %d]", w, a, c)
	}
	if tab.rows[a].waiting || tab.rows[c].waiting {
		t.Fatal("taken connections still flagged waiting")
	}
	tab.park(c) // waits again during its retry
	if len(w) != 2 || w[0] != a || w[1] != c {
		t.Fatalf("parking during a retry changed the list being retried: %v", w)
	}
	if w2 := tab.takeWaiting(); len(w2) != 1 || w2[0] != c {
		t.Fatalf("next retry %v, want [%d]", w2, c)
	}
	if w3 := tab.takeWaiting(); len(w3) != 0 {
		t.Fatalf("a retried connection came back: %v", w3)
	}
}

// TestConnTableStall: the -io-timeout decision from progress counts. A
// connection is cut only after timeout without progress while the server
// waited on it; progress, or the server not waiting, restarts the clock.
func TestConnTableStall(t *testing.T) {
	var tab connTable
	tab.init(1, 0)
	ci := tableOpen(t, &tab, 10)
	c := &tab.rows[ci]
	const timeout = 10 * time.Second
	t0 := time.Unix(1000, 0)
	if tab.stalledOn(ci, false, 0) != stallNone {
		t.Fatal("an idle connection is stalled on something")
	}
	c.pslot = 3
	if k := tab.stalledOn(ci, false, 0); k != stallPayload {
		t.Fatalf("mid-payload: %v, want payload", k)
	}
	if tab.stalled(ci, true, t0, timeout) {
		t.Fatal("cut at the first tick")
	}
	if tab.stalled(ci, true, t0.Add(timeout-time.Second), timeout) {
		t.Fatal("cut before the timeout")
	}
	c.prog++ // a receive moved bytes
	if tab.stalled(ci, true, t0.Add(timeout), timeout) {
		t.Fatal("cut despite progress")
	}
	if tab.stalled(ci, true, t0.Add(2*timeout-time.Second), timeout) {
		t.Fatal("progress did not restart the clock")
	}
	if !tab.stalled(ci, true, t0.Add(2*timeout), timeout) {
		t.Fatal("not cut after the timeout without progress")
	}
	// Not waited on (idle, or its requests are with the device): never cut.
	if tab.stalled(ci, false, t0.Add(5*timeout), timeout) {
		t.Fatal("cut while the server waited on nothing from it")
	}
	c.pslot = -1
	if k := tab.stalledOn(ci, true, 0); k != stallReplies {
		t.Fatalf("replies pending: %v, want replies", k)
	}
	if k := tab.stalledOn(ci, false, 5); k != stallHeader {
		t.Fatalf("half a header: %v, want header", k)
	}
	c.reqHeld = true // a decoded request waiting for memory owes nothing
	if k := tab.stalledOn(ci, false, 5); k != stallNone {
		t.Fatalf("held request: %v, want none", k)
	}
}

// TestConnTableFinishing: a connection after DISC or in a drain closes
// in order only once its requests are answered and its replies sent.
func TestConnTableFinishing(t *testing.T) {
	var tab connTable
	tab.init(1, 0)
	ci := tableOpen(t, &tab, 10)
	c := &tab.rows[ci]
	if _, ok := tab.finishing(ci, false); ok {
		t.Fatal("a working connection finishes")
	}
	if cut := tab.drain(ci); cut || !c.draining {
		t.Fatalf("drain: cut %v, draining %v", cut, c.draining)
	}
	c.inflight = 1
	if _, ok := tab.finishing(ci, false); ok {
		t.Fatal("finishes with a request unanswered")
	}
	c.inflight = 0
	if _, ok := tab.finishing(ci, true); ok {
		t.Fatal("finishes with replies unsent")
	}
	if why, ok := tab.finishing(ci, false); !ok || why != closeShutdown {
		t.Fatalf("drained: %v %v, want server shutdown", why, ok)
	}
	c.disc = true
	if why, ok := tab.finishing(ci, false); !ok || why != closeDisc {
		t.Fatalf("after DISC: %v %v, want DISC", why, ok)
	}
	c.pslot = 0
	if !tab.drain(ci) {
		t.Fatal("a drain halfway through a payload is not cut")
	}
}

// TestCloseWaitsForHeld: a connection closed while the kernel holds an
// operation on it stays in the table (its row is not reused) until the
// last one completes; then it is released onto the free list.
func TestCloseWaitsForHeld(t *testing.T) {
	s, ci := ledgerShard(t)
	s.m.connAttached(ci, 0)
	s.led.holdConn(ci) // a recv in flight
	s.beginClose(ci, closeClient)
	if !s.conns.rows[ci].closing || s.conns.live != 1 {
		t.Fatalf("closing %v, live %d: released with an operation held",
			s.conns.rows[ci].closing, s.conns.live)
	}
	s.led.unholdConn(ci)
	s.maybeRelease(ci)
	if s.conns.rows[ci].closing || s.conns.live != 0 || s.conns.full() {
		t.Fatalf("closing %v, live %d: not released once nothing held it",
			s.conns.rows[ci].closing, s.conns.live)
	}
}
