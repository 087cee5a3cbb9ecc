package ring

import (
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// TestSubmitAndWaitMin: a batch wait submits what is queued, returns
// with the whole batch when it is there, and returns with fewer once the
// minimum wait has passed, rather than waiting for the rest (here a
// timeout two seconds away).
func TestSubmitAndWaitMin(t *testing.T) {
	feat, err := ProbeFeatures()
	if err != nil {
		skipMissing(t, "io_uring", "io_uring unavailable here: %v", err)
	}
	if !feat.MinWait {
		skipMissing(t, "kernel", "this kernel has no io_uring min-wait (Linux 6.12)")
	}
	r := newTestRing(t)
	for i := range 3 {
		e := r.SQE()
		e.PrepareNop()
		e.UserData = uint64(i + 1)
	}
	if err := r.SubmitAndWaitMin(3, 100); err != nil {
		t.Fatal(err)
	}
	if n := len(r.Reap()); n != 3 {
		t.Fatalf("reaped %d of 3 NOPs after a batch wait for 3", n)
	}
	r.Advance(3)

	ts := unix.NsecToTimespec((2 * time.Second).Nanoseconds())
	PrepTimeout(r.SQE(), &ts)
	e := r.SQE()
	e.PrepareNop()
	e.UserData = 9
	t0 := time.Now()
	if err := r.SubmitAndWaitMin(2, 1000); err != nil {
		t.Fatal(err)
	}
	took := time.Since(t0)
	cqes := r.Reap()
	if len(cqes) != 1 || cqes[0].UserData != 9 {
		t.Fatalf("reaped %d completions (want the NOP alone) after %v", len(cqes), took)
	}
	r.Advance(1)
	if took >= time.Second {
		t.Errorf("the batch wait took %v: it waited for the timeout, not 1 ms", took)
	}
}

// TestWaitHold: a wait that outlasts the ring's hold goes on as an
// ordinary system call and still gets its completion; one that ends
// within the hold does not count as a timeout.
func TestWaitHold(t *testing.T) {
	r := newTestRing(t) // hold: 1 ms
	ts := unix.NsecToTimespec((20 * time.Millisecond).Nanoseconds())
	PrepTimeout(r.SQE(), &ts)
	if err := r.SubmitAndWait(1); err != nil {
		t.Fatal(err)
	}
	if n := len(r.Reap()); n != 1 {
		t.Fatalf("reaped %d completions after a wait for the 20 ms timeout", n)
	}
	r.Advance(1)
	if n := r.Stats.HoldTimeouts.Load(); n != 1 {
		t.Fatalf("%d hold timeouts for a 20 ms wait, want 1", n)
	}
	e := r.SQE()
	e.PrepareNop()
	if err := r.SubmitAndWait(1); err != nil {
		t.Fatal(err)
	}
	r.Advance(len(r.Reap()))
	if n := r.Stats.HoldTimeouts.Load(); n != 1 {
		t.Fatalf("%d hold timeouts after a NOP, want still 1", n)
	}
}
