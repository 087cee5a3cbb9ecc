package engine

import (
	"testing"

	"github.com/nbdring/nbdring/wire"
)

// TestZeroCapsRefusals: a connection to a block device tells the validator
// what the device can zero (conn.reset), so the refusals that depend on it
// are decided at decode, with their errno and reason: an unaligned
// FAST_ZERO and FAST_ZERO with NO_HOLE are ENOTSUP, unaligned zeroing past
// what one read-modify-write can hold is EINVAL. A file zeroes any range.
func TestZeroCapsRefusals(t *testing.T) {
	const blockMax = 1 << 20
	neg := wire.Negotiated{Flags: wire.TxSendFastZero, Structured: true}
	dev := &Export{Name: "dev", size: 1 << 30, align: 4096, isDevice: true}
	file := &Export{Name: "file", size: 1 << 30, align: 512}
	var c conn
	for _, tc := range []struct {
		name string
		exp  *Export
		r    wire.Request
		want wire.Errno
	}{
		{"unaligned fast", dev, wire.Request{Flags: wire.CmdFlagFastZero, Offset: 512,
			Length: 4096}, wire.ENOTSUP},
		{"fast no-hole", dev, wire.Request{Flags: wire.CmdFlagFastZero | wire.CmdFlagNoHole,
			Length: 4096}, wire.ENOTSUP},
		{"unaligned over blockMax", dev, wire.Request{Offset: 512, Length: blockMax + 512},
			wire.EINVAL},
		{"unaligned within blockMax", dev, wire.Request{Offset: 512, Length: blockMax},
			wire.EOK},
		{"aligned fast", dev, wire.Request{Flags: wire.CmdFlagFastZero, Length: 1 << 24},
			wire.EOK},
		{"file: unaligned fast no-hole", file, wire.Request{
			Flags: wire.CmdFlagFastZero | wire.CmdFlagNoHole, Offset: 512, Length: 1 << 24},
			wire.EOK},
	} {
		c.reset(handoff{fd: -1, exp: tc.exp, neg: neg}, blockMax)
		tc.r.Type = wire.CmdWriteZeroes
		got, why := c.sess.Check(&tc.r)
		if got != tc.want || (got != wire.EOK) != (why != "") {
			t.Errorf("%s: %v %q, want %v with a reason when refused", tc.name, got, why,
				tc.want)
		}
	}
}
