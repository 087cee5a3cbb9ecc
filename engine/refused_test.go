package engine

import "testing"

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
