package engine

import "testing"

// TestRegistryChanged: a shard sees each reload once.
func TestRegistryChanged(t *testing.T) {
	var g registry
	var seen uint64
	if g.changed(&seen) {
		t.Fatal("changed before any reload")
	}
	g.gen.Add(1)
	if !g.changed(&seen) || seen != 1 {
		t.Fatalf("a reload not seen (seen %d)", seen)
	}
	if g.changed(&seen) {
		t.Fatal("the same reload seen twice")
	}
}

// TestRetireStep: after a reload a connection of a served export stays, one
// of a removed export drains once, and is cut once the grace is over,
// draining or not.
func TestRetireStep(t *testing.T) {
	var r exportReg
	for _, draining := range []bool{false, true} {
		if st := r.retireStep(draining); st != retireKeep {
			t.Errorf("served, draining %v: step %d; want keep", draining, st)
		}
	}
	r.removed.Store(true)
	if st := r.retireStep(false); st != retireDrain {
		t.Errorf("removed: step %d; want drain", st)
	}
	if st := r.retireStep(true); st != retireKeep {
		t.Errorf("removed, draining already: step %d; want keep", st)
	}
	r.cut.Store(true)
	for _, draining := range []bool{false, true} {
		if st := r.retireStep(draining); st != retireCut {
			t.Errorf("cut, draining %v: step %d; want cut", draining, st)
		}
	}
}
