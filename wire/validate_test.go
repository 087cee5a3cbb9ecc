package wire

import (
	"fmt"
	"testing"
)

const (
	vSize = 1 << 30 // export size used by the validator tables
	vMiB  = 1 << 20
)

// vFull advertises everything, negotiated structured replies and
// base:allocation, and holds the client to 512-byte alignment.
var vFull = Session{Size: vSize, BlockMin: 512, Strict: true, Structured: true,
	BaseAllocation: true, Flags: TxHasFlags | TxSendFlush | TxSendFUA | TxSendTrim |
		TxSendWriteZeros | TxSendDF | TxSendCache | TxSendFastZero | TxCanMultiConn}

func vWith(f func(s *Session)) Session {
	s := vFull
	f(&s)
	return s
}

func TestValidateRules(t *testing.T) {
	ro := vWith(func(s *Session) { s.Flags |= TxReadOnly })
	simple := vWith(func(s *Session) { s.Structured = false })
	noDF := vWith(func(s *Session) { s.Flags &^= TxSendDF })
	noFUA := vWith(func(s *Session) { s.Flags &^= TxSendFUA })
	noFast := vWith(func(s *Session) { s.Flags &^= TxSendFastZero })
	loose := vWith(func(s *Session) { s.Strict = false })
	big := vWith(func(s *Session) { s.Size = 1<<64 - 4096 })
	for _, c := range []struct {
		name string
		s    Session
		r    Request
		want Errno
	}{
		// Commands.
		{"read ok", vFull, Request{Type: CmdRead, Offset: 4096, Length: 4096}, EOK},
		{"write ok", vFull, Request{Type: CmdWrite, Offset: 4096, Length: 4096}, EOK},
		{"trim ok", vFull, Request{Type: CmdTrim, Length: 64 * vMiB}, EOK},
		{"cache ok", vFull, Request{Type: CmdCache, Length: 4096}, EOK},
		{"zeroes ok", vFull, Request{Type: CmdWriteZeroes, Length: 64 * vMiB}, EOK},
		{"block status ok", vFull, Request{Type: CmdBlockStatus, Length: vSize}, EOK},
		{"unknown command 9", vFull, Request{Type: 9, Length: 512}, EINVAL},
		{"unknown command 0xffff", vFull, Request{Type: 0xffff, Length: 512}, EINVAL},
		{"resize not served", vFull, Request{Type: CmdResize, Length: 512}, EINVAL},
		// Flags.
		{"unknown flag bit 6", vFull, Request{Type: CmdRead, Flags: 1 << 6, Length: 512}, EINVAL},
		{"unknown flag bit 15", vFull, Request{Type: CmdWrite, Flags: 1 << 15, Length: 512},
			EINVAL},
		{"NO_HOLE on write", vFull, Request{Type: CmdWrite, Flags: CmdFlagNoHole, Length: 512},
			EINVAL},
		{"DF on write", vFull, Request{Type: CmdWrite, Flags: CmdFlagDF, Length: 512}, EINVAL},
		{"REQ_ONE on read", vFull, Request{Type: CmdRead, Flags: CmdFlagReqOne, Length: 512},
			EINVAL},
		{"FAST_ZERO on trim", vFull, Request{Type: CmdTrim, Flags: CmdFlagFastZero,
			Length: 512}, EINVAL},
		{"PAYLOAD_LEN compact", vFull, Request{Type: CmdWrite, Flags: CmdFlagPayloadLen,
			Length: 512}, EINVAL},
		{"FUA write", vFull, Request{Type: CmdWrite, Flags: CmdFlagFUA, Length: 512}, EOK},
		{"FUA on read (valid for all commands)", vFull, Request{Type: CmdRead,
			Flags: CmdFlagFUA, Length: 512}, EOK},
		{"FUA without SEND_FUA", noFUA, Request{Type: CmdWrite, Flags: CmdFlagFUA,
			Length: 512}, EINVAL},
		{"FUA flush without SEND_FUA", noFUA, Request{Type: CmdFlush, Flags: CmdFlagFUA},
			EINVAL},
		{"DF with structured", vFull, Request{Type: CmdRead, Flags: CmdFlagDF, Length: 512},
			EOK},
		{"DF without structured replies", simple, Request{Type: CmdRead, Flags: CmdFlagDF,
			Length: 512}, EINVAL},
		{"DF without SEND_DF", noDF, Request{Type: CmdRead, Flags: CmdFlagDF, Length: 512},
			EINVAL},
		{"FAST_ZERO", vFull, Request{Type: CmdWriteZeroes, Flags: CmdFlagFastZero,
			Length: 512}, EOK},
		{"FAST_ZERO without SEND_FAST_ZERO", noFast, Request{Type: CmdWriteZeroes,
			Flags: CmdFlagFastZero, Length: 512}, EINVAL},
		{"NO_HOLE|FUA zeroes", vFull, Request{Type: CmdWriteZeroes,
			Flags: CmdFlagNoHole | CmdFlagFUA, Length: 512}, EOK},
		{"REQ_ONE block status", vFull, Request{Type: CmdBlockStatus, Flags: CmdFlagReqOne,
			Length: 512}, EOK},
		// Read-only.
		{"write read-only", ro, Request{Type: CmdWrite, Length: 512}, EPERM},
		{"trim read-only", ro, Request{Type: CmdTrim, Length: 512}, EPERM},
		{"zeroes read-only", ro, Request{Type: CmdWriteZeroes, Length: 512}, EPERM},
		{"write read-only past end", ro, Request{Type: CmdWrite, Offset: vSize,
			Length: 512}, EPERM},
		{"read read-only", ro, Request{Type: CmdRead, Length: 512}, EOK},
		{"cache read-only", ro, Request{Type: CmdCache, Length: 512}, EOK},
		{"flush read-only", ro, Request{Type: CmdFlush}, EOK},
		// Lengths.
		{"zero-length read", vFull, Request{Type: CmdRead}, EINVAL},
		{"zero-length write", vFull, Request{Type: CmdWrite}, EINVAL},
		{"zero-length trim", vFull, Request{Type: CmdTrim, Offset: 512}, EINVAL},
		{"zero-length zeroes", vFull, Request{Type: CmdWriteZeroes}, EINVAL},
		{"read of 32 MiB", vFull, Request{Type: CmdRead, Length: 32 * vMiB}, EOK},
		{"write of 32 MiB", vFull, Request{Type: CmdWrite, Length: 32 * vMiB}, EOK},
		{"read over 32 MiB", vFull, Request{Type: CmdRead, Length: 32*vMiB + 512}, EINVAL},
		{"write over 32 MiB", vFull, Request{Type: CmdWrite, Length: 32*vMiB + 512}, EINVAL},
		{"trim over 32 MiB", vFull, Request{Type: CmdTrim, Length: 32*vMiB + 512}, EOK},
		{"zeroes over 32 MiB", vFull, Request{Type: CmdWriteZeroes, Length: 32*vMiB + 512},
			EOK},
		// Range.
		{"read to the end", vFull, Request{Type: CmdRead, Offset: vSize - 512, Length: 512},
			EOK},
		{"read past end", vFull, Request{Type: CmdRead, Offset: vSize - 512, Length: 1024},
			EINVAL},
		{"read at end", vFull, Request{Type: CmdRead, Offset: vSize, Length: 512}, EINVAL},
		{"trim past end", vFull, Request{Type: CmdTrim, Offset: vSize, Length: 512}, EINVAL},
		{"cache past end", vFull, Request{Type: CmdCache, Offset: vSize, Length: 512}, EINVAL},
		{"block status past end", vFull, Request{Type: CmdBlockStatus, Offset: vSize,
			Length: 512}, EINVAL},
		{"write past end", vFull, Request{Type: CmdWrite, Offset: vSize - 512, Length: 1024},
			ENOSPC},
		{"write at end", vFull, Request{Type: CmdWrite, Offset: vSize, Length: 512}, ENOSPC},
		{"zeroes past end", vFull, Request{Type: CmdWriteZeroes, Offset: vSize - 512,
			Length: 1024}, ENOSPC},
		// offset + length would wrap around 2^64: must not look in range.
		{"read offset 2^64-512", vFull, Request{Type: CmdRead, Offset: 1<<64 - 512,
			Length: 1024}, EINVAL},
		{"write offset 2^64-512", vFull, Request{Type: CmdWrite, Offset: 1<<64 - 512,
			Length: 1024}, ENOSPC},
		{"trim offset 2^64-1 length 2^32-1", vFull, Request{Type: CmdTrim, Offset: 1<<64 - 1,
			Length: 1<<32 - 1}, EINVAL},
		{"huge export, wrapping read", big, Request{Type: CmdRead, Offset: 1<<64 - 8192,
			Length: 16384}, EINVAL},
		{"huge export, last block", big, Request{Type: CmdRead, Offset: 1<<64 - 8192,
			Length: 4096}, EOK},
		// Alignment.
		{"strict unaligned offset", vFull, Request{Type: CmdRead, Offset: 1, Length: 512},
			EINVAL},
		{"strict unaligned length", vFull, Request{Type: CmdWrite, Length: 513}, EINVAL},
		{"strict unaligned trim", vFull, Request{Type: CmdTrim, Offset: 256, Length: 512},
			EINVAL},
		{"strict unaligned block status ok", vFull, Request{Type: CmdBlockStatus, Offset: 3,
			Length: 5}, EOK},
		{"loose unaligned read", loose, Request{Type: CmdRead, Offset: 1, Length: 3}, EOK},
		{"loose unaligned write", loose, Request{Type: CmdWrite, Offset: 511, Length: 7}, EOK},
		{"loose unaligned zeroes", loose, Request{Type: CmdWriteZeroes, Offset: 3,
			Length: 5}, EOK},
		// FLUSH and DISC carry no range.
		{"flush", vFull, Request{Type: CmdFlush}, EOK},
		{"flush with garbage range", vFull, Request{Type: CmdFlush, Offset: 1<<64 - 1,
			Length: 1<<32 - 1}, EOK},
		{"flush FUA", vFull, Request{Type: CmdFlush, Flags: CmdFlagFUA}, EOK},
		{"disc", vFull, Request{Type: CmdDisc}, EOK},
		{"disc on read-only", ro, Request{Type: CmdDisc, Length: 7, Offset: 3}, EOK},
		// DISC has no reply (proto.md): whatever it carries, it disconnects.
		{"disc with NO_HOLE", vFull, Request{Type: CmdDisc, Flags: CmdFlagNoHole}, EOK},
		{"disc with an undefined flag", vFull, Request{Type: CmdDisc, Flags: 0x8000}, EOK},
		{"disc with every flag", vFull, Request{Type: CmdDisc, Flags: 0xffff}, EOK},
		{"disc with FUA not advertised", vWith(func(s *Session) { s.Flags &^= TxSendFUA }),
			Request{Type: CmdDisc, Flags: CmdFlagFUA}, EOK},
		{"disc with a range", vFull, Request{Type: CmdDisc, Offset: 1<<64 - 1,
			Length: 1<<32 - 1}, EOK},
		// Block status needs a context.
		{"block status without context", vWith(func(s *Session) { s.BaseAllocation = false }),
			Request{Type: CmdBlockStatus, Length: 512}, EINVAL},
	} {
		if got := c.s.Validate(&c.r); got != c.want {
			t.Errorf("%s: Validate(%+v) = %v, want %v", c.name, c.r, got, c.want)
		}
	}
}

// TestValidateFlagMatrix checks every command against every single flag
// bit, with everything advertised, from proto.md's "Request flags":
// FUA is valid for all commands, NO_HOLE and FAST_ZERO for WRITE_ZEROES,
// DF for READ, REQ_ONE for BLOCK_STATUS; PAYLOAD_LEN needs extended
// headers; bits 6..15 are not defined. DISC is the exception: it has no
// reply, so any flag on it still disconnects.
func TestValidateFlagMatrix(t *testing.T) {
	allowed := map[Cmd]CmdFlags{
		CmdRead:        CmdFlagFUA | CmdFlagDF,
		CmdWrite:       CmdFlagFUA,
		CmdDisc:        0xffff,
		CmdFlush:       CmdFlagFUA,
		CmdTrim:        CmdFlagFUA,
		CmdCache:       CmdFlagFUA,
		CmdWriteZeroes: CmdFlagFUA | CmdFlagNoHole | CmdFlagFastZero,
		CmdBlockStatus: CmdFlagFUA | CmdFlagReqOne,
	}
	for cmd, ok := range allowed {
		for bit := 0; bit < 16; bit++ {
			f := CmdFlags(1 << bit)
			r := Request{Type: cmd, Flags: f, Offset: 4096, Length: 4096}
			want := EINVAL
			if ok&f != 0 {
				want = EOK
			}
			if got := vFull.Validate(&r); got != want {
				t.Errorf("%v with flag bit %d: %v, want %v", cmd, bit, got, want)
			}
		}
	}
}

func TestValidateExtended(t *testing.T) {
	ext := vWith(func(s *Session) { s.Extended = true; s.Size = 16 << 30 })
	for _, c := range []struct {
		name string
		r    Request
		want Errno
	}{
		{"write with PAYLOAD_LEN", Request{Type: CmdWrite, Flags: CmdFlagPayloadLen,
			Length: 4096}, EOK},
		{"write without PAYLOAD_LEN", Request{Type: CmdWrite, Length: 4096}, EINVAL},
		{"read with PAYLOAD_LEN", Request{Type: CmdRead, Flags: CmdFlagPayloadLen,
			Length: 4096}, EINVAL},
		{"trim with 64-bit length", Request{Type: CmdTrim, Length: 8 << 30}, EOK},
		{"read with 64-bit length", Request{Type: CmdRead, Length: 8 << 30}, EINVAL},
		{"disc with PAYLOAD_LEN", Request{Type: CmdDisc, Flags: CmdFlagPayloadLen,
			Length: 4096}, EOK},
		{"write over 32 MiB", Request{Type: CmdWrite, Flags: CmdFlagPayloadLen,
			Length: 32*vMiB + 512}, EINVAL},
		{"zeroes past end", Request{Type: CmdWriteZeroes, Offset: 8 << 30, Length: 9 << 30},
			ENOSPC},
	} {
		if got := ext.Validate(&c.r); got != c.want {
			t.Errorf("%s: %v, want %v", c.name, got, c.want)
		}
	}
}

// TestPayloadLen is what the brief calls WritePayloadOK: how many bytes
// follow the header and whether the stream can be kept in sync.
func TestPayloadLen(t *testing.T) {
	for _, c := range []struct {
		r   Request
		ext bool
		n   uint64
		ok  bool
	}{
		{Request{Type: CmdWrite, Length: 512}, false, 512, true},
		{Request{Type: CmdWrite, Length: PayloadMax}, false, PayloadMax, true},
		{Request{Type: CmdWrite, Length: PayloadMax + 1}, false, PayloadMax + 1, false},
		{Request{Type: CmdWrite, Length: 1<<32 - 1}, false, 1<<32 - 1, false},
		{Request{Type: CmdWrite}, false, 0, true},
		{Request{Type: CmdRead, Length: 1<<32 - 1}, false, 0, true},
		{Request{Type: CmdTrim, Length: 4096}, false, 0, true},
		{Request{Type: CmdWriteZeroes, Length: 4096}, false, 0, true},
		// Compact headers ignore PAYLOAD_LEN: only WRITE carries data.
		{Request{Type: CmdRead, Flags: CmdFlagPayloadLen, Length: 4096}, false, 0, true},
		{Request{Type: 0xffff, Length: 4096}, false, 0, true},
		{Request{Type: CmdWrite, Flags: CmdFlagPayloadLen, Length: 4096}, true, 4096, true},
		{Request{Type: CmdWrite, Length: 4096}, true, 0, true},
		{Request{Type: CmdBlockStatus, Flags: CmdFlagPayloadLen, Length: 8}, true, 8, true},
		{Request{Type: CmdWrite, Flags: CmdFlagPayloadLen, Length: PayloadMax + 1}, true,
			PayloadMax + 1, false},
		{Request{Type: CmdWrite, Flags: CmdFlagPayloadLen, Length: 1<<64 - 1}, true,
			1<<64 - 1, false},
	} {
		if n, ok := PayloadLen(&c.r, c.ext); n != c.n || ok != c.ok {
			t.Errorf("PayloadLen(%v %+v, ext %v) = %d, %v; want %d, %v", c.r.Type, c.r,
				c.ext, n, ok, c.n, c.ok)
		}
	}
}

func TestAligned(t *testing.T) {
	for _, c := range []struct {
		min            uint32
		offset, length uint64
		want           bool
	}{
		{512, 0, 512, true},
		{512, 512, 1024, true},
		{512, 1, 512, false},
		{512, 512, 1, false},
		{512, 1<<64 - 512, 512, true},
		{4096, 4096, 512, false},
		{4096, 8192, 4096, true},
		{1, 3, 7, true},
	} {
		s := Session{BlockMin: c.min}
		if got := s.Aligned(c.offset, c.length); got != c.want {
			t.Errorf("BlockMin %d: Aligned(%d, %d) = %v", c.min, c.offset, c.length, got)
		}
	}
}

// TestValidateDoesNotAllocate: Validate runs once per request.
func TestValidateDoesNotAllocate(t *testing.T) {
	r := Request{Type: CmdWrite, Flags: CmdFlagFUA, Offset: 4096, Length: 4096}
	var got Errno
	if n := testing.AllocsPerRun(100, func() { got = vFull.Validate(&r) }); n != 0 {
		t.Fatalf("Validate allocates %v times", n)
	}
	if got != EOK {
		t.Fatalf("Validate = %v", got)
	}
}

func ExampleSession_Validate() {
	s := Session{Size: 1 << 20, BlockMin: 512, Flags: TxHasFlags | TxSendFlush}
	for _, r := range []Request{
		{Type: CmdRead, Offset: 0, Length: 4096},
		{Type: CmdWrite, Offset: 1 << 20, Length: 512},
		{Type: CmdWrite, Flags: CmdFlagFUA, Length: 512},
	} {
		fmt.Println(r.Type, s.Validate(&r))
	}
	// Output:
	// NBD_CMD_READ OK
	// NBD_CMD_WRITE ENOSPC
	// NBD_CMD_WRITE EINVAL
}
