package wire

import (
	"bytes"
	"testing"
)

// FuzzDecodeExtendedRequest: decoding a 32-byte extended header never
// panics and round-trips; the validator and PayloadLen never panic and
// agree on what a session may be sent.
func FuzzDecodeExtendedRequest(f *testing.F) {
	f.Fuzz(func(t *testing.T, b []byte, size uint64, flags uint16, strict bool) {
		if len(b) < ExtRequestSize {
			return
		}
		var r Request
		if err := DecodeExtendedRequest(b, &r); err != nil {
			if be.Uint32(b) == MagicExtRequest {
				t.Fatalf("rejected a header with the right magic: %v", err)
			}
			return
		}
		var out [ExtRequestSize]byte
		EncodeExtendedRequest(out[:], &r)
		if !bytes.Equal(out[:], b[:ExtRequestSize]) {
			t.Fatalf("round trip changed % x into % x", b[:ExtRequestSize], out)
		}
		s := Session{Size: size, Flags: TxFlags(flags), BlockMin: 512, Strict: strict,
			Structured: true, Extended: true, BaseAllocation: flags&1 != 0}
		errno := s.Validate(&r)
		n, ok := PayloadLen(&r, true)
		if errno == EOK {
			if r.Type == CmdWrite && (n != r.Length || !ok) {
				t.Fatalf("valid WRITE %+v with payload %d ok %v", r, n, ok)
			}
			if r.Type != CmdWrite && n != 0 {
				t.Fatalf("valid %v %+v carries a payload of %d", r.Type, r, n)
			}
			if r.Type != CmdFlush && r.Type != CmdDisc &&
				(r.Length == 0 || r.Offset > size || r.Length > size-r.Offset) {
				t.Fatalf("valid %+v outside an export of %d bytes", r, size)
			}
		}
	})
}
