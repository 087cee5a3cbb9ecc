package wire

import (
	"bytes"
	"testing"
)

// FuzzRequestCompact: decoding never panics and round-trips; validation
// never panics and only passes requests inside the export.
func FuzzRequestCompact(f *testing.F) {
	f.Fuzz(func(t *testing.T, b []byte, size uint64, flags uint16, strict, structured bool) {
		if len(b) < RequestSize {
			return
		}
		var r Request
		if err := DecodeRequest(b, &r); err != nil {
			return
		}
		var out [RequestSize]byte
		EncodeRequest(out[:], &r)
		if !bytes.Equal(out[:], b[:RequestSize]) {
			t.Fatalf("round trip changed % x into % x", b[:RequestSize], out)
		}
		s := Session{Size: size, Flags: TxFlags(flags), BlockMin: 512, Strict: strict,
			Structured: structured, BaseAllocation: structured && flags&1 != 0}
		if s.Validate(&r) == EOK && r.Type != CmdFlush && r.Type != CmdDisc &&
			(r.Length == 0 || r.Offset > size || r.Length > size-r.Offset) {
			t.Fatalf("valid %+v outside an export of %d bytes", r, size)
		}
		if n, ok := PayloadLen(&r, false); ok && n > PayloadMax {
			t.Fatalf("payload of %d accepted", n)
		}
	})
}

// FuzzOptionPhase feeds client flags and a stream of options through the
// server state machine: it must never panic, every reply must be a
// well-formed option reply for the option asked, and the number of rounds
// stays bounded.
func FuzzOptionPhase(f *testing.F) {
	f.Fuzz(func(t *testing.T, stream []byte) {
		h := NewServerHandshake([]Export{
			{Name: "", Size: 1 << 20, Flags: TxHasFlags | TxSendDF, BlockMin: 512,
				BlockPreferred: 4096, BlockMax: 32 << 20},
			{Name: "x", Size: 512, Flags: TxHasFlags, BlockMin: 512, BlockPreferred: 4096,
				BlockMax: 32 << 20},
		})
		if len(stream) < 4 || h.ClientFlags(stream[:4]) != nil {
			return
		}
		stream = stream[4:]
		for rounds := 0; len(stream) >= OptionHeaderSize; rounds++ {
			if rounds > OptionRoundsMax {
				t.Fatal("more rounds than OptionRoundsMax were accepted")
			}
			opt, n, err := h.OptionHeader(stream)
			if err != nil {
				return
			}
			stream = stream[OptionHeaderSize:]
			if int(n) > len(stream) {
				return
			}
			out, step := h.Option(opt, stream[:n])
			stream = stream[n:]
			if opt != OptExportName {
				checkReplies(t, opt, out)
			}
			if step != StepContinue {
				return
			}
		}
	})
}

func checkReplies(t *testing.T, opt Opt, out []byte) {
	for len(out) > 0 {
		if len(out) < OptionReplyHeadSize || be.Uint64(out) != MagicReply ||
			Opt(be.Uint32(out[8:])) != opt {
			t.Fatalf("malformed reply to %v: % x", opt, out)
		}
		n := int(be.Uint32(out[16:]))
		if n > len(out)-OptionReplyHeadSize {
			t.Fatalf("reply to %v claims %d bytes, has %d", opt, n, len(out)-20)
		}
		out = out[OptionReplyHeadSize+n:]
	}
}
