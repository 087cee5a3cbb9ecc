package engine

import (
	"runtime"
	"testing"
	"time"

	"github.com/nbdring/nbdring/ring"
)

// needInvariants skips a test of an assertion that only the invariants
// build compiles in (make test builds with it).
func needInvariants(t *testing.T) {
	t.Helper()
	if !invariantsOn {
		t.Skip("needs -tags invariants")
	}
}

// refused fails the test unless f panics: an assertion refused what f did.
func refused(t *testing.T, what string, f func()) {
	t.Helper()
	defer func() {
		if recover() == nil {
			t.Errorf("%s was not refused", what)
		}
	}()
	f()
}

// testRing makes a ring of entries for a component test on this
// goroutine's thread, which it keeps for the test (a ring belongs to the
// thread that made it); closed when the test ends.
func testRing(t *testing.T, entries uint32) *ring.Ring {
	t.Helper()
	runtime.LockOSThread()
	t.Cleanup(runtime.UnlockOSThread)
	rg, err := ring.New(entries, 16, time.Millisecond)
	if err != nil {
		skipMissing(t, "io_uring", "io_uring unavailable here: %v", err)
	}
	t.Cleanup(rg.Close)
	return rg
}
