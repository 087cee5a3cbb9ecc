package engine

import (
	"fmt"
	"time"
)

// Waiting. A shard's loop submits and waits in one io_uring_enter per
// turn. At queue depth 1 that took two enters per request: the turn that
// sends a reply asks for one completion, and the send itself, which the
// kernel completes as it is submitted (a socket with room), is that one,
// so the enter returns at once and the next turn enters again to wait for
// the next request. waitNr asks for one completion more than the sends
// the turn submitted, so the send and the wait for the next request are
// one enter; the ring settles for fewer once its hold has passed
// (ring.Ring.waitKernel), so a send's completion is never held back
// longer than that.
//
// -poll-us adds a spin before the wait sleeps (ring/spin.go has the rule
// that keeps an idle shard from spinning).

// pollFor checks -poll-us us and returns the ring's spin time.
func pollFor(us uint32) (time.Duration, error) {
	if us > pollUsMax {
		return 0, fmt.Errorf("-poll-us %d: at most %d (a spin longer than that burns "+
			"a core for nothing a sleep would not do as well); 0 turns it off",
			us, pollUsMax)
	}
	return time.Duration(us) * time.Microsecond, nil
}

// turn is the loop's state of one turn between waits: the sends it
// submitted, which the next wait also waits for.
type turn struct {
	sends uint32 // sends submitted since the last wait
}

// sendIssued: the turn submitted a send; the next wait expects its
// completion.
func (t *turn) sendIssued() { t.sends++ }

// waitNr is how many completions this turn's wait asks for: one, plus
// one for each send submitted since the last wait; it starts the next
// turn.
func (t *turn) waitNr() uint32 {
	n := 1 + t.sends
	t.sends = 0
	return n
}
