package bench

import (
	"fmt"
	"os"
	"strings"
	"testing"
)

// skipMissing skips a test that needs something this machine lacks, saying
// what (root, fuse, loop, zram, io_uring, kernel, client, ...) and why.
// NBDRING_REQUIRE turns the skip into a failure, so a run that could not
// test something cannot pass as one that did: "all" (CI, .ci/run) for
// every what, or a comma-separated list of them (NBDRING_REQUIRE=root,zram).
// Each test package has its own copy (README, Testing).
func skipMissing(t testing.TB, what, format string, args ...any) {
	t.Helper()
	msg := fmt.Sprintf(format, args...) + " [" + what + "]"
	if req := os.Getenv("NBDRING_REQUIRE"); requireListed(req, what) {
		t.Fatalf("%s: NBDRING_REQUIRE=%s requires it here; provide it, or drop %q "+
			"from NBDRING_REQUIRE to let this test skip", msg, req, what)
	}
	t.Skip(msg)
}

// requireListed reports whether NBDRING_REQUIRE's value list names what.
func requireListed(list, what string) bool {
	for _, w := range strings.Split(list, ",") {
		if w = strings.TrimSpace(w); w == "all" || w == what {
			return true
		}
	}
	return false
}
