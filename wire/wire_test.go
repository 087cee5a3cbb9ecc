package wire

import (
	"bytes"
	"encoding/hex"
	"errors"
	"net"
	"strings"
	"syscall"
	"testing"
)

// Golden bytes are written by hand from proto.md's layouts, not produced
// by the encoders under test.
func unhex(t *testing.T, s string) []byte {
	t.Helper()
	b, err := hex.DecodeString(strings.ReplaceAll(s, " ", ""))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestRequestGolden(t *testing.T) {
	// magic 25609513, flags 0001 (FUA), type 0001 (WRITE), cookie, offset,
	// length 4096.
	golden := unhex(t, "25609513 0001 0001 0102030405060708 0000000100000000 00001000")
	var r Request
	if err := DecodeRequest(golden, &r); err != nil {
		t.Fatal(err)
	}
	want := Request{Flags: CmdFlagFUA, Type: CmdWrite, Cookie: 0x0102030405060708,
		Offset: 1 << 32, Length: 4096}
	if r != want {
		t.Fatalf("decoded %+v, want %+v", r, want)
	}
	var out [RequestSize]byte
	EncodeRequest(out[:], &want)
	if !bytes.Equal(out[:], golden) {
		t.Fatalf("encoded % x", out)
	}
	bad := append([]byte{}, golden...)
	bad[0] = 0x26
	if err := DecodeRequest(bad, &r); !errors.Is(err, ErrRequestMagic) {
		t.Fatalf("bad magic: %v", err)
	}
	// Extended: magic 21e41c71 and a 64-bit length.
	ext := unhex(t, "21e41c71 0020 0001 0000000000000009 0000000000001000 0000000100000000")
	if err := DecodeExtendedRequest(ext, &r); err != nil || r.Length != 1<<32 ||
		r.Flags != CmdFlagPayloadLen || r.Cookie != 9 {
		t.Fatalf("extended: %v %+v", err, r)
	}
}

func TestReplyGolden(t *testing.T) {
	b := make([]byte, ReplyHeaderMax)
	for _, c := range []struct {
		name   string
		encode func([]byte) int
		want   string
	}{
		{"simple ok", func(b []byte) int { return EncodeDone(b, StyleSimple, 7, 0) },
			"67446698 00000000 0000000000000007"},
		{"simple EIO", func(b []byte) int { return EncodeError(b, StyleSimple, 7, 0, EIO, "x") },
			"67446698 00000005 0000000000000007"},
		{"structured read", func(b []byte) int {
			return EncodeRead(b, StyleStructured, 7, 512, 512, 4096, true)
		}, "668e33ef 0001 0001 0000000000000007 00001008 0000000000000200"},
		{"structured hole", func(b []byte) int {
			return EncodeHole(b, StyleStructured, 7, 0, 4096, 8192, false)
		}, "668e33ef 0000 0002 0000000000000007 0000000c 0000000000001000 00002000"},
		{"structured error", func(b []byte) int {
			return EncodeError(b, StyleStructured, 7, 0, EINVAL, "no")
		}, "668e33ef 0001 8001 0000000000000007 00000008 00000016 0002 6e6f"},
		{"extended done", func(b []byte) int { return EncodeDone(b, StyleExtended, 7, 4096) },
			"6e8a278c 0001 0000 0000000000000007 0000000000001000 0000000000000000"},
		{"extended block status", func(b []byte) int {
			return EncodeBlockStatus(b, StyleExtended, 7, 0, 1, 2)
		}, "6e8a278c 0001 0006 0000000000000007 0000000000000000 0000000000000028 " +
			"00000001 00000002"},
		{"structured block status", func(b []byte) int {
			return EncodeBlockStatus(b, StyleStructured, 7, 0, 1, 2)
		}, "668e33ef 0001 0005 0000000000000007 00000014 00000001"},
	} {
		got := b[:c.encode(b)]
		if want := unhex(t, c.want); !bytes.Equal(got, want) {
			t.Errorf("%s: % x, want % x", c.name, got, want)
		}
	}
	e := make([]byte, 16)
	if PutExtent(e, StyleStructured, 4096, StateHole|StateZero) != 8 ||
		!bytes.Equal(e[:8], unhex(t, "00001000 00000003")) {
		t.Errorf("compact extent % x", e[:8])
	}
	if PutExtent(e, StyleExtended, 5<<30, 0) != 16 ||
		!bytes.Equal(e, unhex(t, "0000000140000000 0000000000000000")) {
		t.Errorf("extended extent % x", e)
	}
	long := strings.Repeat("x", 200)
	if n := EncodeError(b, StyleExtended, 1, 0, EIO, long); n != ExtReplySize+6+ErrorMessageMax {
		t.Errorf("long message not cut: %d bytes", n)
	}
}

func TestErrnoFromSys(t *testing.T) {
	for in, want := range map[syscall.Errno]Errno{
		0: EOK, syscall.EPERM: EPERM, syscall.EROFS: EPERM, syscall.EACCES: EPERM,
		syscall.EIO: EIO, syscall.ENOMEM: ENOMEM, syscall.EINVAL: EINVAL,
		syscall.ENOSPC: ENOSPC, syscall.EDQUOT: ENOSPC, syscall.EFBIG: ENOSPC,
		syscall.EOVERFLOW: EOVERFLOW, syscall.EOPNOTSUPP: ENOTSUP,
		syscall.ESHUTDOWN: ESHUTDOWN, syscall.ENODEV: EIO, syscall.EBADMSG: EIO,
	} {
		if got := ErrnoFromSys(in); got != want {
			t.Errorf("ErrnoFromSys(%v) = %v, want %v", in, got, want)
		}
	}
}

func TestStrings(t *testing.T) {
	for got, want := range map[string]string{
		CmdRead.String(): "NBD_CMD_READ", Cmd(99).String(): "NBD_CMD_99",
		OptGo.String(): "NBD_OPT_GO", Opt(77).String(): "NBD_OPT_77",
		RepErrUnsup.String(): "NBD_REP_ERR_UNSUP", InfoBlockSize.String(): "NBD_INFO_BLOCK_SIZE",
		ReplyOffsetHole.String(): "NBD_REPLY_TYPE_OFFSET_HOLE", EINVAL.String(): "EINVAL",
		ReplyBlockStatusExt.String(): "NBD_REPLY_TYPE_BLOCK_STATUS_EXT",
	} {
		if got != want {
			t.Errorf("String() = %q, want %q", got, want)
		}
	}
}

func TestValidateTable(t *testing.T) {
	base := Session{Size: 1 << 20, BlockMin: 512, Strict: true, Structured: true,
		Flags: TxSendFUA | TxSendFlush | TxSendDF | TxSendFastZero, BaseAllocation: true}
	ro := base
	ro.Flags |= TxReadOnly
	loose := base
	loose.Strict = false
	ext := base
	ext.Extended = true
	noCtx := base
	noCtx.BaseAllocation = false
	simple := base
	simple.Structured = false
	dev := loose // a block device of 4 KiB sectors, read-modify-write up to 8 KiB
	dev.Zero = ZeroCaps{Align: 4096, RMWMax: 8192, FastNeedsHole: true}
	for _, c := range []struct {
		name string
		s    Session
		r    Request
		want Errno
	}{
		{"read", base, Request{Type: CmdRead, Offset: 512, Length: 4096}, EOK},
		{"unknown command", base, Request{Type: 42, Length: 512}, EINVAL},
		{"resize not served", base, Request{Type: CmdResize, Length: 512}, EINVAL},
		{"unknown flag", base, Request{Type: CmdRead, Flags: 1 << 9, Length: 512}, EINVAL},
		{"NO_HOLE on write", base, Request{Type: CmdWrite, Flags: CmdFlagNoHole, Length: 512}, EINVAL},
		{"REQ_ONE on read", base, Request{Type: CmdRead, Flags: CmdFlagReqOne, Length: 512}, EINVAL},
		{"DF without structured", simple, Request{Type: CmdRead, Flags: CmdFlagDF, Length: 512}, EINVAL},
		{"DF with structured", base, Request{Type: CmdRead, Flags: CmdFlagDF, Length: 512}, EOK},
		{"FUA not advertised", Session{Size: 1 << 20, BlockMin: 512},
			Request{Type: CmdWrite, Flags: CmdFlagFUA, Length: 512}, EINVAL},
		{"write read-only", ro, Request{Type: CmdWrite, Length: 512}, EPERM},
		{"trim read-only", ro, Request{Type: CmdTrim, Length: 512}, EPERM},
		{"zero read-only", ro, Request{Type: CmdWriteZeroes, Length: 512}, EPERM},
		{"read on read-only", ro, Request{Type: CmdRead, Length: 512}, EOK},
		{"zero length", base, Request{Type: CmdRead}, EINVAL},
		{"read over 32 MiB", Session{Size: 1 << 30, BlockMin: 512},
			Request{Type: CmdRead, Length: PayloadMax + 512}, EINVAL},
		{"read past end", base, Request{Type: CmdRead, Offset: 1 << 20, Length: 512}, EINVAL},
		{"trim past end", base, Request{Type: CmdTrim, Offset: 1<<20 - 512, Length: 1024}, EINVAL},
		{"write past end", base, Request{Type: CmdWrite, Offset: 1<<20 - 512, Length: 1024}, ENOSPC},
		{"zero past end", base, Request{Type: CmdWriteZeroes, Offset: 1 << 21, Length: 512}, ENOSPC},
		{"offset near 2^64", base, Request{Type: CmdRead, Offset: 1<<64 - 512, Length: 1024}, EINVAL},
		{"strict unaligned", base, Request{Type: CmdRead, Offset: 1, Length: 512}, EINVAL},
		{"loose unaligned", loose, Request{Type: CmdWrite, Offset: 1, Length: 7}, EOK},
		{"flush", base, Request{Type: CmdFlush}, EOK},
		{"disc", base, Request{Type: CmdDisc}, EOK},
		{"block status", base, Request{Type: CmdBlockStatus, Offset: 3, Length: 5}, EOK},
		{"block status no context", noCtx, Request{Type: CmdBlockStatus, Length: 512}, EINVAL},
		{"PAYLOAD_LEN compact", base, Request{Type: CmdWrite, Flags: CmdFlagPayloadLen, Length: 512}, EINVAL},
		{"ext write", ext, Request{Type: CmdWrite, Flags: CmdFlagPayloadLen, Length: 512}, EOK},
		{"ext write no PAYLOAD_LEN", ext, Request{Type: CmdWrite, Length: 512}, EINVAL},
		{"ext read with PAYLOAD_LEN", ext, Request{Type: CmdRead, Flags: CmdFlagPayloadLen, Length: 512}, EINVAL},
		{"ext 64-bit zero", Session{Size: 8 << 30, BlockMin: 512, Extended: true, Structured: true},
			Request{Type: CmdWriteZeroes, Length: 5 << 30}, EOK},
		{"fast zero", base, Request{Type: CmdWriteZeroes, Flags: CmdFlagFastZero, Length: 512}, EOK},
		{"device: unaligned fast zero", dev, Request{Type: CmdWriteZeroes,
			Flags: CmdFlagFastZero, Offset: 512, Length: 512}, ENOTSUP},
		{"device: unaligned zero", dev, Request{Type: CmdWriteZeroes, Offset: 512,
			Length: 8192}, EOK},
		{"device: unaligned zero over RMWMax", dev, Request{Type: CmdWriteZeroes,
			Offset: 512, Length: 8192 + 512}, EINVAL},
		{"device: aligned zero over RMWMax", dev, Request{Type: CmdWriteZeroes,
			Length: 16384}, EOK},
		{"device: fast NO_HOLE zero", dev, Request{Type: CmdWriteZeroes,
			Flags: CmdFlagFastZero | CmdFlagNoHole, Length: 4096}, ENOTSUP},
		{"device: fast zero", dev, Request{Type: CmdWriteZeroes, Flags: CmdFlagFastZero,
			Length: 4096}, EOK},
		{"device: NO_HOLE zero", dev, Request{Type: CmdWriteZeroes, Flags: CmdFlagNoHole,
			Length: 4096}, EOK},
		{"file: unaligned fast NO_HOLE zero", loose, Request{Type: CmdWriteZeroes,
			Flags: CmdFlagFastZero | CmdFlagNoHole, Offset: 1, Length: 512}, EOK},
	} {
		if got := c.s.Validate(&c.r); got != c.want {
			t.Errorf("%s: %v, want %v", c.name, got, c.want)
		}
	}
	for _, c := range []struct {
		r   Request
		ext bool
		n   uint64
		ok  bool
	}{
		{Request{Type: CmdWrite, Length: 4096}, false, 4096, true},
		{Request{Type: CmdWrite, Length: PayloadMax + 1}, false, PayloadMax + 1, false},
		{Request{Type: CmdRead, Length: 4096}, false, 0, true},
		{Request{Type: CmdWrite, Length: 4096}, true, 0, true},
		{Request{Type: CmdRead, Flags: CmdFlagPayloadLen, Length: 8}, true, 8, true},
		{Request{Type: CmdWrite, Flags: CmdFlagPayloadLen, Length: 1 << 40}, true, 1 << 40, false},
	} {
		if n, ok := PayloadLen(&c.r, c.ext); n != c.n || ok != c.ok {
			t.Errorf("PayloadLen(%+v, %v) = %d, %v", c.r, c.ext, n, ok)
		}
	}
}

// hs drives a ServerHandshake with hand-written option bytes.
type hs struct {
	t *testing.T
	h *ServerHandshake
}

func newHS(t *testing.T, clientFlags uint32) *hs {
	h := NewServerHandshake([]Export{
		{Name: "", Description: "/img", Size: 1 << 20, Flags: TxHasFlags | TxSendFlush | TxSendDF,
			BlockMin: 512, BlockPreferred: 4096, BlockMax: 32 << 20},
		{Name: "b", Size: 4096, Flags: TxHasFlags | TxReadOnly, BlockMin: 512,
			BlockPreferred: 4096, BlockMax: 32 << 20},
	})
	if g := h.Greeting(); !bytes.Equal(g, []byte("NBDMAGICIHAVEOPT\x00\x03")) {
		t.Fatalf("greeting % x", g)
	}
	var f [4]byte
	be.PutUint32(f[:], clientFlags)
	if err := h.ClientFlags(f[:]); err != nil {
		t.Fatal(err)
	}
	return &hs{t, h}
}

// opt sends one option and splits the replies into (type, data) pairs.
func (x *hs) opt(opt Opt, data []byte) (reps []Rep, datas [][]byte, step Step) {
	x.t.Helper()
	hdr := make([]byte, 16)
	copy(hdr, "IHAVEOPT")
	be.PutUint32(hdr[8:], uint32(opt))
	be.PutUint32(hdr[12:], uint32(len(data)))
	o, n, err := x.h.OptionHeader(hdr)
	if err != nil || o != opt || int(n) != len(data) {
		x.t.Fatalf("OptionHeader: %v %v %d", err, o, n)
	}
	out, step := x.h.Option(opt, data)
	for len(out) >= 20 && opt != OptExportName {
		if be.Uint64(out) != 0x3e889045565a9 || Opt(be.Uint32(out[8:])) != opt {
			x.t.Fatalf("bad reply header % x", out[:20])
		}
		n := be.Uint32(out[16:])
		reps = append(reps, Rep(be.Uint32(out[12:])))
		datas = append(datas, out[20:20+n])
		out = out[20+n:]
	}
	if len(out) != 0 && opt != OptExportName {
		x.t.Fatalf("%d trailing reply bytes", len(out))
	}
	return reps, datas, step
}

func goData(name string, infos ...Info) []byte {
	b := be.AppendUint32(nil, uint32(len(name)))
	b = append(b, name...)
	b = be.AppendUint16(b, uint16(len(infos)))
	for _, i := range infos {
		b = be.AppendUint16(b, uint16(i))
	}
	return b
}

func TestHandshakeOptions(t *testing.T) {
	x := newHS(t, 3)
	// Unknown option: ERR_UNSUP, and the next option is still parsed.
	if reps, _, step := x.opt(99, []byte("junk")); len(reps) != 1 || reps[0] != RepErrUnsup ||
		step != StepContinue {
		t.Fatalf("unknown option: %v %v", reps, step)
	}
	// LIST: both exports, then ACK; with data: ERR_INVALID.
	reps, datas, _ := x.opt(OptList, nil)
	if len(reps) != 3 || reps[0] != RepServer || reps[2] != RepAck ||
		!bytes.Equal(datas[0], []byte("\x00\x00\x00\x00/img")) {
		t.Fatalf("LIST: %v % x", reps, datas)
	}
	if reps, _, _ := x.opt(OptList, []byte{1}); reps[0] != RepErrInvalid {
		t.Fatalf("LIST with data: %v", reps)
	}
	// Malformed GO data.
	for name, d := range map[string][]byte{
		"short":         {0, 0},
		"name too long": {0, 0, 0, 9, 'a', 0, 0},
		"count off":     append(goData(""), 0, 3),
		"NUL in name":   goData("a\x00"),
	} {
		if reps, _, step := x.opt(OptGo, d); reps[len(reps)-1] != RepErrInvalid ||
			step != StepContinue {
			t.Errorf("GO %s: %v", name, reps)
		}
	}
	if reps, _, _ := x.opt(OptGo, goData("nope")); len(reps) != 1 || reps[0] != RepErrUnknown {
		t.Fatalf("GO unknown export: %v", reps)
	}
	// INFO with NAME and DESCRIPTION: EXPORT, NAME, DESCRIPTION, BLOCK_SIZE, ACK.
	reps, datas, step := x.opt(OptInfo, goData("", InfoName, InfoDescription))
	if step != StepContinue || len(reps) != 5 || reps[4] != RepAck {
		t.Fatalf("INFO: %v", reps)
	}
	if !bytes.Equal(datas[0], unhex(t, "0000 0000000000100000 0005")) {
		t.Fatalf("INFO_EXPORT % x (DF must be hidden without structured replies)", datas[0])
	}
	if !bytes.Equal(datas[3], unhex(t, "0003 00000200 00001000 02000000")) {
		t.Fatalf("INFO_BLOCK_SIZE % x", datas[3])
	}
	// STRUCTURED_REPLY: with data ERR_INVALID, then ACK, then ERR_INVALID.
	if reps, _, _ := x.opt(OptStructured, []byte{0}); reps[0] != RepErrInvalid {
		t.Fatalf("STRUCTURED_REPLY with data: %v", reps)
	}
	if reps, _, _ := x.opt(OptStructured, nil); reps[0] != RepAck {
		t.Fatalf("STRUCTURED_REPLY: %v", reps)
	}
	if reps, _, _ := x.opt(OptStructured, nil); reps[0] != RepErrInvalid {
		t.Fatalf("STRUCTURED_REPLY again: %v", reps)
	}
	// GO asking for block sizes: strict, structured, DF now advertised.
	reps, datas, step = x.opt(OptGo, goData("", InfoBlockSize))
	if step != StepServe || reps[len(reps)-1] != RepAck {
		t.Fatalf("GO: %v %v", reps, step)
	}
	if be.Uint16(datas[0][10:])&uint16(TxSendDF) == 0 {
		t.Fatal("DF not advertised after structured replies")
	}
	r := x.h.Result
	if r.Export != 0 || !r.Structured || !r.BlockSizeAsked || r.Style() != StyleStructured {
		t.Fatalf("result %+v", r)
	}
}

func TestHandshakeExportNameAndAbort(t *testing.T) {
	x := newHS(t, 1) // fixed newstyle without NO_ZEROES
	out, step := x.h.Option(OptExportName, []byte("b"))
	if step != StepServe || len(out) != 10+124 || be.Uint64(out) != 4096 ||
		TxFlags(be.Uint16(out[8:]))&TxReadOnly == 0 {
		t.Fatalf("EXPORT_NAME: step %v, %d bytes", step, len(out))
	}
	if x.h.Result.BlockSizeAsked {
		t.Fatal("EXPORT_NAME made the client strict")
	}
	y := newHS(t, 3)
	if out, _ := y.h.Option(OptExportName, nil); len(out) != 10 {
		t.Fatalf("EXPORT_NAME with NO_ZEROES: %d bytes", len(out))
	}
	z := newHS(t, 3)
	if _, step := z.h.Option(OptExportName, []byte("nope")); step != StepClose {
		t.Fatal("EXPORT_NAME of an unknown export must close")
	}
	a := newHS(t, 3)
	if reps, _, step := a.opt(OptAbort, nil); reps[0] != RepAck || step != StepClose {
		t.Fatalf("ABORT: %v %v", reps, step)
	}
	old := newHS(t, 0) // not fixed newstyle: no error replies exist
	if _, step := old.h.Option(OptList, nil); step != StepClose {
		t.Fatal("plain newstyle client's option must close")
	}
}

func TestHandshakeBounds(t *testing.T) {
	h := NewServerHandshake(nil)
	if err := h.ClientFlags([]byte{0, 0, 0, 4}); err == nil {
		t.Fatal("unknown client flag accepted")
	}
	hdr := make([]byte, 16)
	if _, _, err := h.OptionHeader(hdr); !errors.Is(err, ErrOptionMagic) {
		t.Fatalf("bad option magic: %v", err)
	}
	copy(hdr, "IHAVEOPT")
	be.PutUint32(hdr[12:], OptionDataMax+1)
	if _, _, err := h.OptionHeader(hdr); err == nil {
		t.Fatal("oversized option accepted")
	}
	be.PutUint32(hdr[12:], 0)
	var err error
	for i := 0; i < OptionRoundsMax+2 && err == nil; i++ {
		_, _, err = h.OptionHeader(hdr)
	}
	if err == nil {
		t.Fatal("option rounds unbounded")
	}
}

func TestHandshakeMetaAndExtended(t *testing.T) {
	meta := func(name string, queries ...string) []byte {
		b := be.AppendUint32(nil, uint32(len(name)))
		b = append(b, name...)
		b = be.AppendUint32(b, uint32(len(queries)))
		for _, q := range queries {
			b = be.AppendUint32(b, uint32(len(q)))
			b = append(b, q...)
		}
		return b
	}
	x := newHS(t, 3)
	if reps, _, _ := x.opt(OptSetMeta, meta("", MetaBaseAllocation)); reps[0] != RepErrInvalid {
		t.Fatalf("SET before structured replies: %v", reps)
	}
	if reps, _, _ := x.opt(OptExtendedHdrs, nil); reps[0] != RepAck {
		t.Fatal("EXTENDED_HEADERS refused")
	}
	if reps, _, _ := x.opt(OptStructured, nil); reps[0] != RepErrExtHdrReqd {
		t.Fatalf("STRUCTURED after EXTENDED: %v", reps)
	}
	reps, datas, _ := x.opt(OptListMeta, meta("", "base:"))
	if len(reps) != 2 || reps[0] != RepMetaContext || be.Uint32(datas[0]) != 0 ||
		string(datas[0][4:]) != MetaBaseAllocation {
		t.Fatalf("LIST base: %v % x", reps, datas)
	}
	if reps, _, _ := x.opt(OptListMeta, meta("", "other:x")); len(reps) != 1 || reps[0] != RepAck {
		t.Fatalf("LIST unknown namespace: %v", reps)
	}
	reps, datas, _ = x.opt(OptSetMeta, meta("", MetaBaseAllocation))
	if reps[0] != RepMetaContext || be.Uint32(datas[0]) != MetaIDBaseAllocation {
		t.Fatalf("SET: %v", reps)
	}
	// A failing SET clears the selection (proto.md).
	if reps, _, _ := x.opt(OptSetMeta, meta("nope", MetaBaseAllocation)); reps[0] != RepErrUnknown {
		t.Fatalf("SET unknown export: %v", reps)
	}
	if _, _, step := x.opt(OptGo, goData("")); step != StepServe || x.h.Result.BaseAllocation {
		t.Fatal("stale base:allocation survived a failed SET")
	}
	if !x.h.Result.Extended || x.h.Result.Style() != StyleExtended {
		t.Fatalf("result %+v", x.h.Result)
	}
	y := newHS(t, 3)
	y.opt(OptStructured, nil)
	y.opt(OptSetMeta, meta("", MetaBaseAllocation))
	if _, _, _ = y.opt(OptGo, goData("b")); y.h.Result.BaseAllocation {
		t.Fatal("context for export \"\" applied to export b")
	}
	z := newHS(t, 3)
	z.opt(OptExtendedHdrs, nil)
	if _, step := z.h.Option(OptExportName, nil); step != StepClose {
		t.Fatal("EXPORT_NAME after EXTENDED_HEADERS must close")
	}
}

// TestClientAgainstServer runs the client handshake against the server
// state machine over a pipe.
func TestClientAgainstServer(t *testing.T) {
	exports := []Export{{Name: "disk", Size: 1 << 30, Flags: TxHasFlags | TxCanMultiConn,
		BlockMin: 512, BlockPreferred: 4096, BlockMax: 32 << 20}}
	serve := func(c net.Conn) {
		defer c.Close()
		h := NewServerHandshake(exports)
		c.Write(h.Greeting())
		b := make([]byte, 16)
		if _, err := readFull(c, b[:4]); err != nil || h.ClientFlags(b[:4]) != nil {
			return
		}
		for {
			if _, err := readFull(c, b); err != nil {
				return
			}
			opt, n, err := h.OptionHeader(b)
			if err != nil {
				return
			}
			data := make([]byte, n)
			readFull(c, data)
			out, step := h.Option(opt, data)
			c.Write(out)
			if step != StepContinue {
				return
			}
		}
	}
	for _, o := range []ClientOptions{
		{Name: "disk", BlockSize: true},
		{Name: "disk", Structured: true, BaseAllocation: true},
		{Name: "disk", Extended: true, BaseAllocation: true},
		{Name: "disk", ExportName: true},
	} {
		a, b := net.Pipe()
		go serve(b)
		ex, err := ClientHandshake(a, o)
		a.Close()
		if err != nil {
			t.Fatalf("%+v: %v", o, err)
		}
		if ex.Size != 1<<30 || ex.Flags&TxCanMultiConn == 0 {
			t.Errorf("%+v: export %+v", o, ex)
		}
		if !o.ExportName && ex.BlockMin != 512 {
			t.Errorf("%+v: block sizes %+v", o, ex)
		}
		if o.BaseAllocation && ex.MetaID != MetaIDBaseAllocation {
			t.Errorf("%+v: context ID %d", o, ex.MetaID)
		}
		if o.Extended && ex.Style() != StyleExtended {
			t.Errorf("%+v: style %v", o, ex.Style())
		}
	}
	a, b := net.Pipe()
	go serve(b)
	_, err := ClientHandshake(a, ClientOptions{Name: "missing"})
	var oe *OptionError
	if !errors.As(err, &oe) || oe.Rep != RepErrUnknown {
		t.Fatalf("unknown export: %v", err)
	}
	a.Close()
	a, b = net.Pipe()
	go serve(b)
	names, err := ClientList(a)
	if err != nil || len(names) != 1 || names[0] != "disk" {
		t.Fatalf("ClientList: %v %v", names, err)
	}
	a.Close()
}

func readFull(c net.Conn, b []byte) (int, error) {
	n := 0
	for n < len(b) {
		m, err := c.Read(b[n:])
		n += m
		if err != nil {
			return n, err
		}
	}
	return n, nil
}

func TestReadReplyHeader(t *testing.T) {
	buf := make([]byte, ExtReplySize)
	var r Reply
	simple := unhex(t, "67446698 00000016 0000000000000003")
	if err := ReadReplyHeader(bytes.NewReader(simple), buf, &r); err != nil ||
		r.Structured || r.Errno != EINVAL || r.Cookie != 3 {
		t.Fatalf("simple: %v %+v", err, r)
	}
	chunk := unhex(t, "668e33ef 0001 0001 0000000000000003 00001008")
	if err := ReadReplyHeader(bytes.NewReader(chunk), buf, &r); err != nil ||
		!r.Structured || r.Type != ReplyOffsetData || r.Length != 4104 || r.Flags != 1 {
		t.Fatalf("structured: %v %+v", err, r)
	}
	ext := unhex(t, "6e8a278c 0001 0000 0000000000000003 0000000000001000 0000000000000000")
	if err := ReadReplyHeader(bytes.NewReader(ext), buf, &r); err != nil ||
		r.Offset != 4096 || r.Type != ReplyNone {
		t.Fatalf("extended: %v %+v", err, r)
	}
	if err := ReadReplyHeader(bytes.NewReader(make([]byte, 32)), buf, &r); !errors.Is(err,
		ErrReplyMagic) {
		t.Fatalf("bad magic: %v", err)
	}
}
