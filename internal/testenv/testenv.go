// Package testenv is the one place that decides whether a test may skip
// for something the machine lacks (root, FUSE, a loop or zram device,
// io_uring, a client program). Only tests import it, so ring and wire stay
// free of project imports in what they build.
package testenv

import (
	"fmt"
	"os"
	"strings"
	"testing"
)

// SkipMissing skips a test that needs something this machine lacks, saying
// what (root, fuse, loop, zram, io_uring, kernel, client, ...) and why.
// NBDRING_REQUIRE turns the skip into a failure, so a run that could not
// test something cannot pass as one that did: "all" (CI, .ci/run) for
// every what, or a comma-separated list of them (NBDRING_REQUIRE=root,zram).
func SkipMissing(t testing.TB, what, format string, args ...any) {
	t.Helper()
	msg := fmt.Sprintf(format, args...) + " [" + what + "]"
	if req := os.Getenv("NBDRING_REQUIRE"); Listed(req, what) {
		t.Fatalf("%s: NBDRING_REQUIRE=%s requires it here; provide it, or drop %q "+
			"from NBDRING_REQUIRE to let this test skip", msg, req, what)
	}
	t.Skip(msg)
}

// Listed reports whether NBDRING_REQUIRE's value list names what.
func Listed(list, what string) bool {
	for _, w := range strings.Split(list, ",") {
		if w = strings.TrimSpace(w); w == "all" || w == what {
			return true
		}
	}
	return false
}
