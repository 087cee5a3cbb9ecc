package engine

import (
	"testing"

	"github.com/nbdring/nbdring/ring"
)

// newTestLedger is a ledger alone, with no shard, ring or memory.
func newTestLedger() (*ledger, *ShardStats) {
	st := new(ShardStats)
	l := new(ledger)
	l.init(0, 4, 2, st)
	return l, st
}

// TestLedgerRefusesStaleGeneration: a slot recycled (its generation moved
// on) after an operation was stamped: that operation's completion is
// refused and counted, and settles nothing of the slot's new owner.
func TestLedgerRefusesStaleGeneration(t *testing.T) {
	l, st := newTestLedger()
	l.renewSlot(1)
	l.holdSlot(1)
	old := l.stamp(opIO, 1)
	l.unholdSlot(1)
	l.renewSlot(1) // recycled: a defect the shard's holds prevent
	l.holdSlot(1)
	cur := l.stamp(opIO, 1)
	if _, _, _, _, ok := l.complete(&ring.CQE{UserData: old}); ok {
		t.Fatal("a completion of an older generation was accepted")
	}
	if st.Stale.Load() != 1 || l.ioOps != 2 || st.OpsInflight.Load() != 2 {
		t.Fatalf("stale: %d counted, %d I/O and %d ops in flight; want 1, 2, 2",
			st.Stale.Load(), l.ioOps, st.OpsInflight.Load())
	}
	op, idx, _, last, ok := l.complete(&ring.CQE{UserData: cur, Res: 7})
	if !ok || op != opIO || idx != 1 || !last || l.ioOps != 1 {
		t.Fatalf("current completion: ok %v, op %d, index %d, last %v, %d I/O left",
			ok, op, idx, last, l.ioOps)
	}
}

// TestLedgerMultishot: a CQE flagged MORE (multishot receive, zero-copy
// send) is not the operation's last; only the last one uncounts it.
func TestLedgerMultishot(t *testing.T) {
	l, st := newTestLedger()
	l.renewConn(0)
	l.holdConn(0)
	ud := l.stamp(opRecv, 0)
	_, _, _, last, ok := l.complete(&ring.CQE{UserData: ud, Flags: ring.CQEMore})
	if !ok || last || st.OpsInflight.Load() != 1 {
		t.Fatalf("MORE completion: ok %v, last %v, %d in flight; want true, false, 1",
			ok, last, st.OpsInflight.Load())
	}
	_, _, _, last, _ = l.complete(&ring.CQE{UserData: ud})
	if !last || st.OpsInflight.Load() != 0 {
		t.Fatalf("final completion: last %v, %d in flight", last, st.OpsInflight.Load())
	}
	l.unholdConn(0)
	if l.connHeld(0) {
		t.Fatal("connection still held after its only operation")
	}
}

// TestLedgerInlineQueue: inline completions wait in the ledger's own
// queue; those queued while a batch is handed out wait for the next.
func TestLedgerInlineQueue(t *testing.T) {
	l, st := newTestLedger()
	l.holdSlot(2)
	l.inline(2, 512)
	batch := l.takeLocal()
	l.holdSlot(3)
	l.inline(3, 0) // started by the completion of the first
	if len(batch) != 1 || batch[0].Res != 512 || len(l.local) != 1 {
		t.Fatalf("first batch %d completions, %d queued after; want 1 and 1",
			len(batch), len(l.local))
	}
	if _, idx, res, _, ok := l.complete(&batch[0]); !ok || idx != 2 || res != 512 {
		t.Fatalf("inline completion: ok %v, index %d, result %d", ok, idx, res)
	}
	if st.InlineOps.Load() != 2 || l.ioOps != 1 {
		t.Fatalf("%d inline ops counted, %d I/O in flight; want 2, 1",
			st.InlineOps.Load(), l.ioOps)
	}
}

// TestLedgerHoldInvariants: a hold dropped twice, or a generation moved
// on under a hold, is refused by the invariants build.
func TestLedgerHoldInvariants(t *testing.T) {
	needInvariants(t)
	l, _ := newTestLedger()
	l.holdSlot(0)
	refused(t, "a slot recycled under a hold", func() { l.renewSlot(0) })
	l.unholdSlot(0)
	refused(t, "a slot hold dropped twice", func() { l.unholdSlot(0) })
	l.holdConn(1)
	refused(t, "a connection recycled under a hold", func() { l.renewConn(1) })
}
