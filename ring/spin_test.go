package ring

import (
	"testing"
	"time"

	"github.com/pawelgaczynski/giouring"
	"golang.org/x/sys/unix"
)

// waitTimeout waits for a timeout of d, the only operation in flight.
func waitTimeout(t *testing.T, r *Ring, d time.Duration) {
	t.Helper()
	ts := unix.NsecToTimespec(d.Nanoseconds())
	PrepTimeout(sqe(r, 7), &ts)
	waitCQE(t, r, 7)
}

// waitNop waits for a NOP, which completes as it is submitted.
func waitNop(t *testing.T, r *Ring) {
	t.Helper()
	sqe(r, 8).OpCode = giouring.OpNop
	waitCQE(t, r, 8)
}

// TestSpinThenSleep: a hot ring spins, and a spin that runs out leaves it
// cold (the next wait sleeps at once); a quick wait makes it hot again,
// and a spin then finds a completion the kernel deferred as task work.
func TestSpinThenSleep(t *testing.T) {
	r := newTestRing(t)
	r.SetSpin(5 * time.Millisecond)
	waitNop(t, r) // cold: sleeps (not at all: it is there), then hot
	if n := r.Stats.Spins.Load(); n != 0 {
		t.Fatalf("a cold ring's wait spun (%d spins)", n)
	}
	waitTimeout(t, r, 50*time.Millisecond) // hot: spins 5 ms, misses, sleeps
	if n, h := r.Stats.Spins.Load(), r.Stats.SpinHits.Load(); n != 1 || h != 0 {
		t.Fatalf("after a 50 ms wait: %d spins, %d hits; want 1, 0", n, h)
	}
	waitTimeout(t, r, 20*time.Millisecond) // cold after the miss: no spin
	if n := r.Stats.Spins.Load(); n != 1 {
		t.Fatalf("a wait after a spin that ran out spun again (%d spins)", n)
	}
	waitNop(t, r) // the long wait left it cold; this quick one makes it hot
	waitTimeout(t, r, 50*time.Microsecond)
	if n, h := r.Stats.Spins.Load(), r.Stats.SpinHits.Load(); n != 2 || h != 1 {
		t.Fatalf("after a 50 us wait: %d spins, %d hits; want 2, 1", n, h)
	}
}

// TestSpinOff: without a spin time no wait spins.
func TestSpinOff(t *testing.T) {
	r := newTestRing(t)
	for range 3 {
		waitNop(t, r)
		waitTimeout(t, r, 100*time.Microsecond)
	}
	if n := r.Stats.Spins.Load(); n != 0 {
		t.Fatalf("%d spins with no spin time", n)
	}
}

// TestWaitSettlesAfterHold: a wait for two completions of which only one
// comes returns once the hold has passed, with that one.
func TestWaitSettlesAfterHold(t *testing.T) {
	r := newTestRing(t)
	sqe(r, 9).OpCode = giouring.OpNop
	if err := r.SubmitAndWait(2); err != nil {
		t.Fatal(err)
	}
	if n := len(r.Reap()); n != 1 {
		t.Fatalf("reaped %d completions, want the NOP's", n)
	}
	if n, e := r.Stats.HoldTimeouts.Load(), r.Stats.Enters.Load(); n != 1 || e != 1 {
		t.Fatalf("%d hold timeouts in %d enters, want 1 in 1 (no second wait)", n, e)
	}
}
