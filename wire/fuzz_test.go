package wire

import (
	"bytes"
	"errors"
	"math/bits"
	"testing"
	"unicode/utf8"
)

// FuzzDecodeRequest: DecodeRequest never panics on a full header, accepts
// exactly the headers with NBD_REQUEST_MAGIC and re-encodes them bit for
// bit; Validate never panics for any session and only passes requests that
// obey the rules proto.md states, checked here independently of
// validate.go.
//
// Corpus: testdata/fuzz/FuzzDecodeRequest, one file per scenario.
func FuzzDecodeRequest(f *testing.F) {
	f.Fuzz(func(t *testing.T, b []byte, size uint64, tx uint16, blockMin uint32,
		strict, structured, extended, baseAlloc bool) {
		if len(b) < RequestSize {
			return // callers always hand over a full header
		}
		var r Request
		err := DecodeRequest(b, &r)
		if be.Uint32(b) != MagicRequest {
			if !errors.Is(err, ErrRequestMagic) {
				t.Fatalf("magic %#x: err %v", be.Uint32(b), err)
			}
			return
		}
		if err != nil {
			t.Fatalf("good magic rejected: %v", err)
		}
		var out [RequestSize]byte
		EncodeRequest(out[:], &r)
		if !bytes.Equal(out[:], b[:RequestSize]) {
			t.Fatalf("encode(decode(b)) changed\n% x\ninto\n% x", b[:RequestSize], out)
		}
		s := Session{Size: size, Flags: TxFlags(tx), BlockMin: blockMin, Strict: strict,
			Structured: structured || extended, Extended: extended,
			BaseAllocation: baseAlloc}
		checkValidate(t, &s, &r)
		// The same header fields as an extended request.
		if extended {
			var ext [ExtRequestSize]byte
			EncodeExtendedRequest(ext[:], &r)
			var r2 Request
			if err := DecodeExtendedRequest(ext[:], &r2); err != nil || r2 != r {
				t.Fatalf("extended round trip: %+v %v, want %+v", r2, err, r)
			}
		}
	})
}

// checkValidate holds one Validate answer to proto.md's rules.
func checkValidate(t *testing.T, s *Session, r *Request) {
	t.Helper()
	got := s.Validate(r)
	switch got {
	case EOK, EPERM, EINVAL, ENOSPC:
	case ENOTSUP:
		if r.Type != CmdWriteZeroes || s.Zero.Align == 0 {
			t.Fatalf("ENOTSUP for %v on an export that zeroes any range", r.Type)
		}
	default:
		t.Fatalf("Validate(%+v) = %v: not an answer the validator gives", *r, got)
	}
	writes := r.Type == CmdWrite || r.Type == CmdTrim || r.Type == CmdWriteZeroes
	if got == EPERM && !(writes && s.Flags&TxReadOnly != 0) {
		t.Fatalf("EPERM for %v on a writable export or a non-writing command", r.Type)
	}
	if got == ENOSPC && r.Type != CmdWrite && r.Type != CmdWriteZeroes {
		t.Fatalf("ENOSPC for %v", r.Type)
	}
	if got != EOK {
		return
	}
	if r.Type > CmdBlockStatus {
		t.Fatalf("unknown or unserved command %v accepted", r.Type)
	}
	flags := r.Flags
	if s.Extended {
		if (flags&CmdFlagPayloadLen != 0) != (r.Type == CmdWrite) {
			t.Fatalf("extended %v with flags %#x accepted", r.Type, flags)
		}
		flags &^= CmdFlagPayloadLen
	}
	if flags&^(CmdFlagFUA|CmdFlagNoHole|CmdFlagDF|CmdFlagReqOne|CmdFlagFastZero) != 0 {
		t.Fatalf("undefined flags %#x accepted", flags)
	}
	if flags&CmdFlagFUA != 0 && s.Flags&TxSendFUA == 0 {
		t.Fatal("FUA accepted without NBD_FLAG_SEND_FUA")
	}
	if flags&CmdFlagDF != 0 && (r.Type != CmdRead || !s.Structured || s.Flags&TxSendDF == 0) {
		t.Fatalf("DF accepted on %v (structured %v, tx %#x)", r.Type, s.Structured, s.Flags)
	}
	if flags&(CmdFlagNoHole|CmdFlagFastZero) != 0 && r.Type != CmdWriteZeroes {
		t.Fatalf("NO_HOLE/FAST_ZERO accepted on %v", r.Type)
	}
	if flags&CmdFlagFastZero != 0 && s.Flags&TxSendFastZero == 0 {
		t.Fatal("FAST_ZERO accepted without NBD_FLAG_SEND_FAST_ZERO")
	}
	if flags&CmdFlagReqOne != 0 && r.Type != CmdBlockStatus {
		t.Fatalf("REQ_ONE accepted on %v", r.Type)
	}
	if r.Type == CmdDisc || r.Type == CmdFlush {
		return // no range
	}
	if writes && s.Flags&TxReadOnly != 0 {
		t.Fatalf("%v accepted on a read-only export", r.Type)
	}
	if r.Type == CmdBlockStatus && !s.BaseAllocation {
		t.Fatal("BLOCK_STATUS accepted without a metadata context")
	}
	if r.Length == 0 {
		t.Fatalf("zero-length %v accepted", r.Type)
	}
	if end, carry := bits.Add64(r.Offset, r.Length, 0); carry != 0 || end > s.Size {
		t.Fatalf("%v [%d, +%d) accepted on an export of %d bytes", r.Type, r.Offset,
			r.Length, s.Size)
	}
	if (r.Type == CmdRead || r.Type == CmdWrite) && r.Length > 32<<20 {
		t.Fatalf("%v of %d bytes accepted", r.Type, r.Length)
	}
	if s.Strict && r.Type != CmdBlockStatus && s.BlockMin != 0 &&
		bits.OnesCount32(s.BlockMin) == 1 &&
		(r.Offset%uint64(s.BlockMin) != 0 || r.Length%uint64(s.BlockMin) != 0) {
		t.Fatalf("unaligned %v [%d, +%d) accepted with minimum block %d", r.Type, r.Offset,
			r.Length, s.BlockMin)
	}
}

// FuzzHandshake feeds 4 bytes of client flags and then the client's raw
// option stream through ServerHandshake, the way a connection loop does.
// It must never panic; what it sends must be well-formed option replies
// (or the EXPORT_NAME reply); each option's replies must end with a final
// one (ACK or an error) unless the handshake closes; a GO that enters
// transmission ends in ACK after NBD_INFO_EXPORT; rounds stay bounded.
//
// Corpus: testdata/fuzz/FuzzHandshake, one file per scenario.
func FuzzHandshake(f *testing.F) {
	f.Fuzz(func(t *testing.T, clientFlags uint32, stream []byte) {
		exports := hsExports()
		h := NewServerHandshake(exports)
		if err := h.ClientFlags(u32b(clientFlags)); err != nil {
			if clientFlags&^3 == 0 {
				t.Fatalf("known client flags %#x refused: %v", clientFlags, err)
			}
			return
		}
		if clientFlags&^3 != 0 {
			t.Fatalf("unknown client flags %#x accepted", clientFlags)
		}
		fixed := clientFlags&ClientFlagFixedNewstyle != 0
		answered := 0
		for len(stream) >= OptionHeaderSize {
			opt, n, err := h.OptionHeader(stream[:OptionHeaderSize])
			if err != nil {
				if !errors.Is(err, ErrOptionMagic) && n <= OptionDataMax &&
					answered < OptionRoundsMax {
					t.Fatalf("option %v of %d bytes refused after %d rounds: %v", opt, n,
						answered, err)
				}
				return
			}
			if answered >= OptionRoundsMax {
				t.Fatalf("option %d accepted; the bound is %d", answered+1, OptionRoundsMax)
			}
			stream = stream[OptionHeaderSize:]
			if uint64(n) > uint64(len(stream)) {
				return
			}
			data := stream[:n]
			stream = stream[n:]
			out, step := h.Option(opt, data)
			answered++
			checkOptionAnswer(t, h, exports, fixed, opt, out, step)
			if step != StepContinue {
				return
			}
		}
	})
}

func checkOptionAnswer(t *testing.T, h *ServerHandshake, exports []Export, fixed bool,
	opt Opt, out []byte, step Step) {
	t.Helper()
	if step == StepClose && len(out) == 0 {
		if h.CloseReason() == "" {
			t.Fatalf("%v: closed without a reason", opt)
		}
		return
	}
	if !fixed && opt != OptExportName {
		t.Fatalf("plain newstyle client got %d bytes and %v for %v", len(out), step, opt)
	}
	if opt == OptExportName {
		if step != StepServe || (len(out) != 10 && len(out) != 10+ExportNameZeroes) {
			t.Fatalf("EXPORT_NAME: %v with %d bytes", step, len(out))
		}
		if e := exports[h.Result.Export]; be.Uint64(out) != e.Size {
			t.Fatalf("EXPORT_NAME: size %d, export %+v", be.Uint64(out), e)
		}
		return
	}
	var last Rep
	var infoExport bool
	for len(out) > 0 {
		if len(out) < OptionReplyHeadSize || be.Uint64(out) != MagicReply ||
			Opt(be.Uint32(out[8:])) != opt {
			t.Fatalf("malformed reply to %v: % x", opt, out)
		}
		typ, n := Rep(be.Uint32(out[12:])), be.Uint32(out[16:])
		if uint64(n) > uint64(len(out)-OptionReplyHeadSize) {
			t.Fatalf("reply to %v claims %d bytes, %d follow", opt, n, len(out)-20)
		}
		data := out[OptionReplyHeadSize : OptionReplyHeadSize+n]
		out = out[OptionReplyHeadSize+n:]
		if last == RepAck || last.IsErr() {
			t.Fatalf("%v: %v after the final %v", opt, typ, last)
		}
		last = typ
		switch {
		case typ.IsErr():
			if !utf8.Valid(data) || bytes.IndexByte(data, 0) >= 0 {
				t.Fatalf("%v: %v message is not a string: %q", opt, typ, data)
			}
		case typ == RepInfo:
			if n < 2 {
				t.Fatalf("%v: INFO of %d bytes", opt, n)
			}
			switch Info(be.Uint16(data)) {
			case InfoExport:
				infoExport = true
				if n != 12 {
					t.Fatalf("NBD_INFO_EXPORT of %d bytes", n)
				}
			case InfoBlockSize:
				if n != 14 {
					t.Fatalf("NBD_INFO_BLOCK_SIZE of %d bytes", n)
				}
			}
		case typ == RepServer:
			if n < 4 || be.Uint32(data) > n-4 {
				t.Fatalf("NBD_REP_SERVER % x", data)
			}
		case typ == RepMetaContext:
			if n < 4 || !utf8.Valid(data[4:]) {
				t.Fatalf("NBD_REP_META_CONTEXT % x", data)
			}
		case typ != RepAck:
			t.Fatalf("%v: reply type %v", opt, typ)
		}
	}
	if last != RepAck && !last.IsErr() {
		t.Fatalf("%v: replies end with %v, not a final reply", opt, last)
	}
	switch step {
	case StepServe:
		if opt != OptGo || last != RepAck || !infoExport {
			t.Fatalf("%v entered transmission (last %v, INFO_EXPORT %v)", opt, last, infoExport)
		}
		if h.Result.Export < 0 || h.Result.Export >= len(exports) {
			t.Fatalf("Result.Export %d", h.Result.Export)
		}
	case StepClose:
		if opt != OptAbort || last != RepAck {
			t.Fatalf("%v closed after %v", opt, last)
		}
	}
}
