package main

import (
	"testing"

	"github.com/nbdring/nbdring/internal/testenv"
)

// skipMissing skips for something this machine lacks, or fails under
// NBDRING_REQUIRE (internal/testenv).
func skipMissing(t testing.TB, what, format string, args ...any) {
	t.Helper()
	testenv.SkipMissing(t, what, format, args...)
}
