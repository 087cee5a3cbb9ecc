//go:build invariants

package engine

// invariantsOn: assert checks (tests of the checks themselves skip without).
const invariantsOn = true

// assert panics when an invariant does not hold. It is compiled in only
// with the invariants build tag (make test uses it); see assert_off.go.
func assert(ok bool, msg string) {
	if !ok {
		panic("engine invariant violated: " + msg)
	}
}
