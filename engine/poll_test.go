package engine

import (
	"testing"

	"github.com/nbdring/nbdring/wire"
)

// TestOneEnterPerRequest: at queue depth 1 a request costs one enter, not
// two: the wait that follows a reply's send also waits for the next
// request. (A client stalled past the ring's hold adds one; the bound
// leaves room for a few.)
func TestOneEnterPerRequest(t *testing.T) {
	srv, sock, _ := testServerIO(t, 1<<20, 1, InlineOn)
	tc := dial(t, sock, wire.ClientOptions{BlockSize: true})
	buf := make([]byte, 4096)
	for range 20 {
		tc.do(wire.CmdRead, 0, 0, 4096, nil, buf)
	}
	const n = 400
	before := srv.shards[0].ring.Stats.Enters.Load()
	for range n {
		tc.do(wire.CmdRead, 0, 0, 4096, nil, buf)
	}
	enters := srv.shards[0].ring.Stats.Enters.Load() - before
	if enters > n*3/2 {
		t.Fatalf("%d enters for %d requests at depth 1, want about one each", enters, n)
	}
}

// TestPollBound: -poll-us takes up to pollUsMax, and 0 is off.
func TestPollBound(t *testing.T) {
	if d, err := pollFor(0); d != 0 || err != nil {
		t.Fatalf("pollFor(0) = %v, %v", d, err)
	}
	if _, err := pollFor(pollUsMax); err != nil {
		t.Fatal(err)
	}
	if _, err := pollFor(pollUsMax + 1); err == nil {
		t.Fatalf("-poll-us %d accepted", pollUsMax+1)
	}
}

// TestTurnWaitNr: a turn's wait asks for one completion plus one per send
// it submitted, and the next turn starts from none.
func TestTurnWaitNr(t *testing.T) {
	var tn turn
	if n := tn.waitNr(); n != 1 {
		t.Fatalf("a turn without sends waits for %d; want 1", n)
	}
	for range 3 {
		tn.sendIssued()
	}
	if n := tn.waitNr(); n != 4 {
		t.Fatalf("a turn with 3 sends waits for %d; want 4", n)
	}
	if n := tn.waitNr(); n != 1 {
		t.Fatalf("the next turn waits for %d; want 1 (the sends were counted once)", n)
	}
}
