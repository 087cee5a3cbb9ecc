package wire

import (
	"bytes"
	"errors"
	"strings"
	"testing"
	"unicode/utf8"
)

// The handshake tests speak bytes: the client's side is built field by
// field as proto.md lays it out, the server's answers are compared with
// bytes written the same way.

func u16b(v uint16) []byte { return []byte{byte(v >> 8), byte(v)} }
func u32b(v uint32) []byte { return []byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)} }
func u64b(v uint64) []byte { return append(u32b(uint32(v>>32)), u32b(uint32(v))...) }

func cat(parts ...[]byte) []byte { return bytes.Join(parts, nil) }

// optMsg is a client option: "IHAVEOPT", 32-bit option, 32-bit length, data.
func optMsg(opt uint32, data []byte) []byte {
	return cat([]byte("IHAVEOPT"), u32b(opt), u32b(uint32(len(data))), data)
}

// repMsg is an option reply: 0x3e889045565a9, option, reply type, length,
// data.
func repMsg(opt, typ uint32, data []byte) []byte {
	return cat([]byte{0x00, 0x03, 0xe8, 0x89, 0x04, 0x55, 0x65, 0xa9}, u32b(opt), u32b(typ),
		u32b(uint32(len(data))), data)
}

// goReq is NBD_OPT_INFO/GO data: 32-bit name length, name, 16-bit count,
// 16-bit info requests.
func goReq(name string, infos ...uint16) []byte {
	b := cat(u32b(uint32(len(name))), []byte(name), u16b(uint16(len(infos))))
	for _, i := range infos {
		b = append(b, u16b(i)...)
	}
	return b
}

// Reply types and options as proto.md numbers them.
const (
	nOptExportName = 1
	nOptAbort      = 2
	nOptList       = 3
	nOptStartTLS   = 5
	nOptInfo       = 6
	nOptGo         = 7
	nOptStructured = 8
	nOptListMeta   = 9
	nOptSetMeta    = 10
	nRepAck        = 1
	nRepServer     = 2
	nRepInfo       = 3
	nRepMeta       = 4
	nRepErrUnsup   = 1<<31 + 1
	nRepErrInvalid = 1<<31 + 3
	nRepErrUnknown = 1<<31 + 6
	nRepErrTooBig  = 1<<31 + 9
)

// hsExports: "" (1 MiB, flush, FUA, DF) and "ro" (8 KiB, read-only).
// Transmission flags: "" is 0x008d (HAS_FLAGS|SEND_FLUSH|SEND_FUA|SEND_DF),
// 0x000d when DF is hidden; "ro" is 0x0003 (HAS_FLAGS|READ_ONLY).
func hsExports() []Export {
	return []Export{
		{Name: "", Description: "default disk", Size: 0x100000,
			Flags:    TxHasFlags | TxSendFlush | TxSendFUA | TxSendDF,
			BlockMin: 512, BlockPreferred: 4096, BlockMax: 32 << 20},
		{Name: "ro", Size: 0x2000, Flags: TxHasFlags | TxReadOnly,
			BlockMin: 1, BlockPreferred: 4096, BlockMax: 32 << 20},
	}
}

// transcript is what a server connection loop did with a client's bytes.
type transcript struct {
	h      *ServerHandshake
	out    []byte // everything sent after the greeting
	opts   int    // options answered
	step   Step   // the last option's step (StepContinue if none)
	err    error  // ClientFlags or OptionHeader error: the loop hangs up
	unread int    // client bytes never consumed
}

// hsDrive runs the loop a server runs: 4 bytes of client flags, then
// option headers and data until a step other than StepContinue, an error,
// or the end of the client's bytes.
func hsDrive(exports []Export, in []byte) transcript {
	tr := transcript{h: NewServerHandshake(exports)}
	if len(in) < 4 {
		tr.unread = len(in)
		return tr
	}
	if tr.err = tr.h.ClientFlags(in[:4]); tr.err != nil {
		tr.unread = len(in) - 4
		return tr
	}
	in = in[4:]
	for len(in) >= OptionHeaderSize {
		opt, n, err := tr.h.OptionHeader(in[:OptionHeaderSize])
		if err != nil {
			tr.err = err
			break
		}
		if uint64(n) > uint64(len(in)-OptionHeaderSize) {
			break // the client has not sent the data (yet)
		}
		data := in[OptionHeaderSize : OptionHeaderSize+int(n)]
		in = in[OptionHeaderSize+int(n):]
		out, step := tr.h.Option(opt, data)
		tr.out = append(tr.out, out...)
		tr.opts++
		tr.step = step
		if step != StepContinue {
			break
		}
	}
	tr.unread = len(in)
	return tr
}

// optReply is one parsed option reply.
type optReply struct {
	opt, typ uint32
	data     []byte
}

// parseReplies splits server bytes into option replies, failing on
// anything that is not a well-formed reply.
func parseReplies(t *testing.T, b []byte) []optReply {
	t.Helper()
	var reps []optReply
	for len(b) > 0 {
		if len(b) < 20 || !bytes.Equal(b[:8], []byte{0, 3, 0xe8, 0x89, 4, 0x55, 0x65, 0xa9}) {
			t.Fatalf("not an option reply: % x", b)
		}
		n := be.Uint32(b[16:])
		if uint64(n) > uint64(len(b)-20) {
			t.Fatalf("reply claims %d bytes, %d follow", n, len(b)-20)
		}
		reps = append(reps, optReply{be.Uint32(b[8:]), be.Uint32(b[12:]), b[20 : 20+n]})
		b = b[20+n:]
	}
	return reps
}

// anyMessage marks an expected error reply whose data is a message for a
// human: any valid string (proto.md "strings": UTF-8, no NUL, at most
// 4096 bytes).
var anyMessage = []byte("\x00any message\x00")

// expectReplies compares replies with want; an error reply with data
// anyMessage may carry any valid message.
func expectReplies(t *testing.T, got []optReply, want ...optReply) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("%d replies, want %d:\n got %s\nwant %s", len(got), len(want),
			fmtReplies(got), fmtReplies(want))
	}
	for i := range want {
		g, w := got[i], want[i]
		if g.opt != w.opt || g.typ != w.typ {
			t.Fatalf("reply %d: option %d type %v, want option %d type %v", i, g.opt,
				Rep(g.typ), w.opt, Rep(w.typ))
		}
		if bytes.Equal(w.data, anyMessage) {
			checkMessage(t, g.data)
			continue
		}
		if !bytes.Equal(g.data, w.data) {
			t.Fatalf("reply %d (%v) data\n% x\nwant\n% x", i, Rep(g.typ), g.data, w.data)
		}
	}
}

func checkMessage(t *testing.T, m []byte) {
	t.Helper()
	if !utf8.Valid(m) || bytes.IndexByte(m, 0) >= 0 || len(m) > StringMax {
		t.Fatalf("error message of %d bytes is not a valid NBD string (UTF-8, no NUL, "+
			"at most 4096 bytes): %.80q", len(m), m)
	}
}

func fmtReplies(reps []optReply) string {
	var s []string
	for _, r := range reps {
		s = append(s, Opt(r.opt).String()+"/"+Rep(r.typ).String())
	}
	return "[" + strings.Join(s, " ") + "]"
}

func rep(opt, typ uint32, data []byte) optReply { return optReply{opt, typ, data} }
func errRep(opt, typ uint32) optReply           { return optReply{opt, typ, anyMessage} }

// Hand-written INFO payloads for hsExports.
var (
	infoExportDefault   = cat(u16b(0), u64b(0x100000), u16b(0x000d))
	infoExportDefaultDF = cat(u16b(0), u64b(0x100000), u16b(0x008d))
	infoExportRO        = cat(u16b(0), u64b(0x2000), u16b(0x0003))
	infoBlockDefault    = cat(u16b(3), u32b(512), u32b(4096), u32b(32<<20))
	infoBlockRO         = cat(u16b(3), u32b(1), u32b(4096), u32b(32<<20))
)

func TestHandshakeGreetingBytes(t *testing.T) {
	// S: 64 bits "NBDMAGIC", 64 bits "IHAVEOPT", 16 bits handshake flags
	// (FIXED_NEWSTYLE | NO_ZEROES).
	want := hexBytes(t, "4e42444d41474943 49484156454f5054 0003")
	if g := NewServerHandshake(nil).Greeting(); !bytes.Equal(g, want) {
		t.Fatalf("greeting % x, want % x", g, want)
	}
	if GreetingSize != len(want) {
		t.Fatalf("GreetingSize %d", GreetingSize)
	}
}

func TestHandshakeClientFlagsTable(t *testing.T) {
	for _, c := range []struct {
		flags   uint32
		ok      bool
		fixed   bool
		zeroes  bool // EXPORT_NAME is followed by 124 zero bytes
		comment string
	}{
		{0x0, true, false, true, "plain newstyle"},
		{0x1, true, true, true, "C_FIXED_NEWSTYLE"},
		{0x2, true, false, false, "C_NO_ZEROES only"},
		{0x3, true, true, false, "both"},
		{0x4, false, false, false, "bit 2 unknown"},
		{0x7, false, false, false, "known bits plus bit 2"},
		{0x80000000, false, false, false, "bit 31"},
		{0xffffffff, false, false, false, "all bits"},
	} {
		t.Run(c.comment, func(t *testing.T) {
			h := NewServerHandshake(hsExports())
			err := h.ClientFlags(u32b(c.flags))
			if (err == nil) != c.ok {
				t.Fatalf("ClientFlags(%#x) = %v, want ok %v", c.flags, err, c.ok)
			}
			if !c.ok {
				return
			}
			// Fixed newstyle shows in whether LIST gets an answer.
			out, step := h.Option(OptList, nil)
			if c.fixed != (step == StepContinue && len(out) > 0) {
				t.Fatalf("LIST: step %v, %d bytes; fixed newstyle %v", step, len(out), c.fixed)
			}
			out, step = h.Option(OptExportName, nil)
			want := cat(u64b(0x100000), u16b(0x000d))
			if c.zeroes {
				want = append(want, make([]byte, 124)...)
			}
			if step != StepServe || !bytes.Equal(out, want) {
				t.Fatalf("EXPORT_NAME: step %v\n% x\nwant\n% x", step, out, want)
			}
		})
	}
}

func TestHandshakeOptionHeaderTable(t *testing.T) {
	for _, c := range []struct {
		name  string
		hdr   []byte
		opt   Opt
		n     uint32
		magic bool // ErrOptionMagic
		ok    bool
	}{
		{"GO no data", optMsg(7, nil), OptGo, 0, false, true},
		{"unknown option", optMsg(0xdeadbeef, nil), 0xdeadbeef, 0, false, true},
		{"data at the bound", cat([]byte("IHAVEOPT"), u32b(3), u32b(OptionDataMax)),
			OptList, OptionDataMax, false, true},
		{"data over the bound", cat([]byte("IHAVEOPT"), u32b(3), u32b(OptionDataMax+1)),
			OptList, OptionDataMax + 1, false, false},
		{"data 4 GiB-1", cat([]byte("IHAVEOPT"), u32b(7), u32b(0xffffffff)), OptGo,
			0xffffffff, false, false},
		{"magic NBDMAGIC", cat([]byte("NBDMAGIC"), u32b(7), u32b(0)), 0, 0, true, false},
		{"magic last byte", cat([]byte("IHAVEOPt"), u32b(7), u32b(0)), 0, 0, true, false},
		{"magic zero", make([]byte, 16), 0, 0, true, false},
		{"reply magic", cat(u64b(0x3e889045565a9), u32b(7), u32b(0)), 0, 0, true, false},
	} {
		h := NewServerHandshake(hsExports())
		opt, n, err := h.OptionHeader(c.hdr)
		switch {
		case c.ok && err != nil:
			t.Errorf("%s: %v", c.name, err)
		case !c.ok && err == nil:
			t.Errorf("%s: accepted", c.name)
		case c.magic && !errors.Is(err, ErrOptionMagic):
			t.Errorf("%s: %v, want ErrOptionMagic", c.name, err)
		case !c.magic && errors.Is(err, ErrOptionMagic):
			t.Errorf("%s: ErrOptionMagic for a good magic", c.name)
		case !c.magic && (opt != c.opt || n != c.n):
			t.Errorf("%s: %v %d, want %v %d", c.name, opt, n, c.opt, c.n)
		}
	}
}

// TestHandshakeOversizedOptionHangsUp: the connection loop stops on the
// header, before reading any of the oversized data.
func TestHandshakeOversizedOptionHangsUp(t *testing.T) {
	in := cat(u32b(3), []byte("IHAVEOPT"), u32b(7), u32b(OptionDataMax+1),
		make([]byte, OptionDataMax+1))
	tr := hsDrive(hsExports(), in)
	if tr.err == nil || tr.opts != 0 || len(tr.out) != 0 || tr.unread != len(in)-4 {
		t.Fatalf("oversized GO: err %v, %d options, %d bytes out", tr.err, tr.opts,
			len(tr.out))
	}
}

func TestHandshakeRoundsBounded(t *testing.T) {
	var in []byte
	in = append(in, u32b(3)...)
	for i := 0; i < OptionRoundsMax+5; i++ {
		in = append(in, optMsg(0x1000, []byte("x"))...)
	}
	tr := hsDrive(hsExports(), in)
	if tr.err == nil || tr.opts != OptionRoundsMax {
		t.Fatalf("%d options answered, err %v; want %d then an error", tr.opts, tr.err,
			OptionRoundsMax)
	}
	reps := parseReplies(t, tr.out)
	if len(reps) != OptionRoundsMax {
		t.Fatalf("%d replies", len(reps))
	}
	for _, r := range reps {
		if r.opt != 0x1000 || r.typ != nRepErrUnsup {
			t.Fatalf("reply %v to %d", Rep(r.typ), r.opt)
		}
	}
	// A bad magic also ends the loop with ErrOptionMagic.
	tr = hsDrive(hsExports(), cat(u32b(1), optMsg(3, nil), []byte("IHAVEOPX"), u32b(3),
		u32b(0)))
	if !errors.Is(tr.err, ErrOptionMagic) || tr.opts != 1 {
		t.Fatalf("bad magic after LIST: %v after %d options", tr.err, tr.opts)
	}
}

func TestHandshakeExportNameTable(t *testing.T) {
	zeroes := make([]byte, 124)
	for _, c := range []struct {
		name   string
		in     []byte
		out    []byte
		step   Step
		result Negotiated
	}{
		{"default, NO_ZEROES", cat(u32b(3), optMsg(1, nil)),
			cat(u64b(0x100000), u16b(0x000d)), StepServe,
			Negotiated{Export: 0, Flags: 0x000d}},
		{"ro, zeroes", cat(u32b(1), optMsg(1, []byte("ro"))),
			cat(u64b(0x2000), u16b(0x0003), zeroes), StepServe,
			Negotiated{Export: 1, Flags: 0x0003}},
		{"plain newstyle", cat(u32b(0), optMsg(1, []byte("ro"))),
			cat(u64b(0x2000), u16b(0x0003), zeroes), StepServe,
			Negotiated{Export: 1, Flags: 0x0003}},
		{"plain newstyle NO_ZEROES", cat(u32b(2), optMsg(1, nil)),
			cat(u64b(0x100000), u16b(0x000d)), StepServe,
			Negotiated{Export: 0, Flags: 0x000d}},
		{"after STRUCTURED_REPLY: DF shown", cat(u32b(3), optMsg(8, nil), optMsg(1, nil)),
			cat(repMsg(8, 1, nil), u64b(0x100000), u16b(0x008d)), StepServe,
			Negotiated{Export: 0, Structured: true, Flags: 0x008d}},
		{"after a GO error", cat(u32b(3), optMsg(7, goReq("nope")), optMsg(1, []byte("ro"))),
			nil, StepServe, Negotiated{Export: 1, Flags: 0x0003}},
		{"unknown export closes", cat(u32b(3), optMsg(1, []byte("nope"))), nil, StepClose,
			Negotiated{}},
		{"name with NUL closes", cat(u32b(3), optMsg(1, []byte("ro\x00"))), nil, StepClose,
			Negotiated{}},
		{"name prefix closes", cat(u32b(3), optMsg(1, []byte("r"))), nil, StepClose,
			Negotiated{}},
	} {
		t.Run(c.name, func(t *testing.T) {
			tr := hsDrive(hsExports(), c.in)
			if tr.err != nil || tr.step != c.step || tr.unread != 0 {
				t.Fatalf("err %v step %v unread %d", tr.err, tr.step, tr.unread)
			}
			if c.out != nil && !bytes.Equal(tr.out, c.out) {
				t.Fatalf("sent\n% x\nwant\n% x", tr.out, c.out)
			}
			if c.step == StepClose {
				if len(tr.out) != 0 || tr.h.CloseReason() == "" {
					t.Fatalf("close: %d bytes sent, reason %q", len(tr.out), tr.h.CloseReason())
				}
				return
			}
			if c.out == nil && !bytes.HasSuffix(tr.out, cat(u64b(0x2000), u16b(3))) {
				t.Fatalf("EXPORT_NAME reply missing: % x", tr.out)
			}
			if tr.h.Result != c.result {
				t.Fatalf("Result %+v, want %+v", tr.h.Result, c.result)
			}
		})
	}
}

func TestHandshakeAbortBytes(t *testing.T) {
	// proto.md: "The server MUST reply with NBD_REP_ACK", and SHOULD ignore
	// data sent with the option. Nothing after it is read.
	ack := hexBytes(t, "0003e889045565a9 00000002 00000001 00000000")
	for _, data := range [][]byte{nil, []byte("ignored")} {
		in := cat(u32b(3), optMsg(2, data), optMsg(3, nil))
		tr := hsDrive(hsExports(), in)
		if tr.err != nil || tr.step != StepClose || !bytes.Equal(tr.out, ack) {
			t.Fatalf("ABORT %q: err %v step %v\n% x", data, tr.err, tr.step, tr.out)
		}
		if tr.unread != len(optMsg(3, nil)) {
			t.Fatalf("ABORT %q: %d bytes after it unread, want the LIST", data, tr.unread)
		}
	}
}

func TestHandshakeListBytes(t *testing.T) {
	// NBD_REP_SERVER: 32-bit name length, name, then a description.
	want := cat(
		hexBytes(t, "0003e889045565a9 00000003 00000002 00000010 00000000"),
		[]byte("default disk"),
		hexBytes(t, "0003e889045565a9 00000003 00000002 00000006 00000002"), []byte("ro"),
		hexBytes(t, "0003e889045565a9 00000003 00000001 00000000"))
	tr := hsDrive(hsExports(), cat(u32b(3), optMsg(3, nil)))
	if tr.err != nil || tr.step != StepContinue || !bytes.Equal(tr.out, want) {
		t.Fatalf("LIST: err %v step %v\n% x\nwant\n% x", tr.err, tr.step, tr.out, want)
	}
	// With data: ERR_INVALID, and the next LIST is answered in full.
	tr = hsDrive(hsExports(), cat(u32b(3), optMsg(3, []byte{0}), optMsg(3, nil)))
	reps := parseReplies(t, tr.out)
	expectReplies(t, reps, errRep(3, nRepErrInvalid),
		rep(3, nRepServer, cat(u32b(0), []byte("default disk"))),
		rep(3, nRepServer, cat(u32b(2), []byte("ro"))), rep(3, nRepAck, nil))
	// No exports: just the ACK.
	tr = hsDrive(nil, cat(u32b(3), optMsg(3, nil)))
	if !bytes.Equal(tr.out, hexBytes(t, "0003e889045565a9 00000003 00000001 00000000")) {
		t.Fatalf("LIST of nothing: % x", tr.out)
	}
}

func TestHandshakeInfoThenGo(t *testing.T) {
	in := cat(u32b(3),
		optMsg(6, goReq("", 1, 2)), // INFO "" asking NAME and DESCRIPTION
		optMsg(7, goReq("ro")))     // GO "ro" asking nothing
	tr := hsDrive(hsExports(), in)
	if tr.err != nil || tr.step != StepServe || tr.opts != 2 {
		t.Fatalf("err %v step %v after %d options", tr.err, tr.step, tr.opts)
	}
	want := cat(
		repMsg(6, 3, infoExportDefault),
		repMsg(6, 3, u16b(1)), // NBD_INFO_NAME of "": just the type
		repMsg(6, 3, cat(u16b(2), []byte("default disk"))),
		repMsg(6, 3, infoBlockDefault),
		repMsg(6, 1, nil),
		repMsg(7, 3, infoExportRO),
		repMsg(7, 3, infoBlockRO), // block sizes are sent even unasked
		repMsg(7, 1, nil))
	if !bytes.Equal(tr.out, want) {
		t.Fatalf("sent %s\n% x\nwant\n% x", fmtReplies(parseReplies(t, tr.out)), tr.out, want)
	}
	if r := tr.h.Result; r != (Negotiated{Export: 1, Flags: 0x0003}) || r.BlockSizeAsked {
		t.Fatalf("Result %+v", r)
	}
}

func TestHandshakeGoBlockSizeAsked(t *testing.T) {
	for _, c := range []struct {
		name  string
		in    []byte
		asked bool
	}{
		{"GO without", cat(u32b(3), optMsg(7, goReq(""))), false},
		{"GO with", cat(u32b(3), optMsg(7, goReq("", 3))), true},
		{"GO with unknown items too", cat(u32b(3), optMsg(7, goReq("", 0x42, 0, 3, 0xffff))),
			true},
		{"GO with NAME only", cat(u32b(3), optMsg(7, goReq("", 1))), false},
		// proto.md NBD_INFO_BLOCK_SIZE: the promise cannot be inferred
		// from an NBD_OPT_INFO request alone.
		{"INFO with, GO without", cat(u32b(3), optMsg(6, goReq("", 3)),
			optMsg(7, goReq(""))), false},
		{"INFO without, GO with", cat(u32b(3), optMsg(6, goReq("")),
			optMsg(7, goReq("", 3))), true},
	} {
		tr := hsDrive(hsExports(), c.in)
		if tr.step != StepServe || tr.h.Result.BlockSizeAsked != c.asked {
			t.Errorf("%s: step %v, BlockSizeAsked %v, want %v", c.name, tr.step,
				tr.h.Result.BlockSizeAsked, c.asked)
		}
		reps := parseReplies(t, tr.out)
		last := reps[len(reps)-1]
		if last.opt != nOptGo || last.typ != nRepAck {
			t.Errorf("%s: last reply %v", c.name, fmtReplies(reps))
		}
	}
}

// TestHandshakeInfoGoSameAnswer: proto.md, NBD_OPT_INFO: a GO with the same
// parameters right after a successful INFO gets the same information.
func TestHandshakeInfoGoSameAnswer(t *testing.T) {
	for _, items := range [][]uint16{nil, {3}, {1, 2, 3}, {2}} {
		tr := hsDrive(hsExports(), cat(u32b(3), optMsg(8, nil),
			optMsg(6, goReq("", items...)), optMsg(7, goReq("", items...))))
		reps := parseReplies(t, tr.out)[1:] // after STRUCTURED_REPLY's ACK
		var info, gov [][]byte
		for _, r := range reps {
			if r.typ != nRepInfo {
				continue
			}
			if r.opt == nOptInfo {
				info = append(info, r.data)
			} else {
				gov = append(gov, r.data)
			}
		}
		if len(info) == 0 || !bytes.Equal(bytes.Join(info, []byte("|")),
			bytes.Join(gov, []byte("|"))) {
			t.Errorf("items %v: INFO %q, GO %q", items, info, gov)
		}
	}
}

func TestHandshakeDescriptionOnlyWhenAsked(t *testing.T) {
	for _, c := range []struct {
		name string
		req  []byte
		want []optReply
	}{
		{"default, nothing asked", goReq(""), []optReply{rep(6, nRepInfo, infoExportDefault),
			rep(6, nRepInfo, infoBlockDefault), rep(6, nRepAck, nil)}},
		{"default, DESCRIPTION", goReq("", 2), []optReply{
			rep(6, nRepInfo, infoExportDefault),
			rep(6, nRepInfo, cat(u16b(2), []byte("default disk"))),
			rep(6, nRepInfo, infoBlockDefault), rep(6, nRepAck, nil)}},
		{"ro, NAME", goReq("ro", 1), []optReply{rep(6, nRepInfo, infoExportRO),
			rep(6, nRepInfo, cat(u16b(1), []byte("ro"))),
			rep(6, nRepInfo, infoBlockRO), rep(6, nRepAck, nil)}},
		// "ro" has no description: nothing to send (proto.md lets the
		// server ignore requests other than NBD_INFO_EXPORT).
		{"ro, DESCRIPTION", goReq("ro", 2), []optReply{rep(6, nRepInfo, infoExportRO),
			rep(6, nRepInfo, infoBlockRO), rep(6, nRepAck, nil)}},
	} {
		t.Run(c.name, func(t *testing.T) {
			tr := hsDrive(hsExports(), cat(u32b(3), optMsg(6, c.req)))
			if tr.step != StepContinue {
				t.Fatalf("INFO step %v", tr.step)
			}
			expectReplies(t, parseReplies(t, tr.out), c.want...)
		})
	}
}

func TestHandshakeGoUnknownExport(t *testing.T) {
	// ERR_UNKNOWN, no NBD_REP_INFO before it (proto.md: SHOULD NOT), and
	// the next option is still parsed.
	tr := hsDrive(hsExports(), cat(u32b(3), optMsg(7, goReq("nope", 3)),
		optMsg(6, goReq("RO")), optMsg(7, goReq("ro"))))
	if tr.step != StepServe || tr.opts != 3 || tr.h.Result.Export != 1 {
		t.Fatalf("step %v after %d options, Result %+v", tr.step, tr.opts, tr.h.Result)
	}
	expectReplies(t, parseReplies(t, tr.out),
		errRep(7, nRepErrUnknown),
		errRep(6, nRepErrUnknown),
		rep(7, nRepInfo, infoExportRO), rep(7, nRepInfo, infoBlockRO), rep(7, nRepAck, nil))
}

func TestHandshakeGoMalformed(t *testing.T) {
	long := strings.Repeat("a", StringMax+1)
	for _, c := range []struct {
		name string
		data []byte
	}{
		{"empty", nil},
		{"5 bytes", hexBytes(t, "00000000 00")},
		{"name length 1, no name", hexBytes(t, "00000001 0000")},
		{"name length beyond data", hexBytes(t, "00000009 61 0000")},
		{"name length 2^32-1", hexBytes(t, "ffffffff 0000")},
		{"name length eats the count", hexBytes(t, "00000002 6161")},
		{"count 1, no item", hexBytes(t, "00000000 0001")},
		{"count 0, one item", hexBytes(t, "00000000 0000 0003")},
		{"count 2, one item", hexBytes(t, "00000000 0002 0003")},
		{"count 1, odd trailing byte", hexBytes(t, "00000000 0001 0003 00")},
		{"NUL in name", hexBytes(t, "00000003 72 00 6f 0000")},
		{"NUL name", hexBytes(t, "00000001 00 0000")},
		{"name over 4096 bytes", goReq(long)},
	} {
		for _, opt := range []uint32{nOptInfo, nOptGo} {
			tr := hsDrive(hsExports(), cat(u32b(3), optMsg(opt, c.data),
				optMsg(nOptGo, goReq(""))))
			if tr.err != nil || tr.opts != 2 || tr.step != StepServe {
				t.Errorf("%v %s: err %v, %d options, step %v", Opt(opt), c.name, tr.err,
					tr.opts, tr.step)
				continue
			}
			reps := parseReplies(t, tr.out)
			if len(reps) != 4 || reps[0].opt != opt || reps[0].typ != nRepErrInvalid {
				t.Errorf("%v %s: %s, want ERR_INVALID then GO's replies", Opt(opt), c.name,
					fmtReplies(reps))
				continue
			}
			checkMessage(t, reps[0].data)
		}
	}
}

func TestHandshakeStructuredReply(t *testing.T) {
	tr := hsDrive(hsExports(), cat(u32b(3),
		optMsg(8, []byte{0}),    // with data: ERR_INVALID, not negotiated
		optMsg(6, goReq("")),    // DF hidden
		optMsg(8, nil),          // ACK
		optMsg(8, nil),          // twice: ERR_INVALID
		optMsg(7, goReq("", 3)), // DF shown
	))
	if tr.step != StepServe || tr.opts != 5 {
		t.Fatalf("step %v after %d options", tr.step, tr.opts)
	}
	expectReplies(t, parseReplies(t, tr.out),
		errRep(8, nRepErrInvalid),
		rep(6, nRepInfo, infoExportDefault), rep(6, nRepInfo, infoBlockDefault),
		rep(6, nRepAck, nil),
		rep(8, nRepAck, nil),
		errRep(8, nRepErrInvalid),
		rep(7, nRepInfo, infoExportDefaultDF), rep(7, nRepInfo, infoBlockDefault),
		rep(7, nRepAck, nil))
	want := Negotiated{Export: 0, Structured: true, BlockSizeAsked: true, Flags: 0x008d}
	if r := tr.h.Result; r != want || r.Style() != StyleStructured {
		t.Fatalf("Result %+v, want %+v", r, want)
	}
	// The ACK on its own, byte for byte.
	tr = hsDrive(hsExports(), cat(u32b(1), optMsg(8, nil)))
	if !bytes.Equal(tr.out, hexBytes(t, "0003e889045565a9 00000008 00000001 00000000")) {
		t.Fatalf("STRUCTURED_REPLY ACK: % x", tr.out)
	}
}

func TestHandshakeUnknownOptions(t *testing.T) {
	for _, opt := range []uint32{0, 4, 12, 0x7fffffff, 0xffffffff} {
		tr := hsDrive(hsExports(), cat(u32b(3), optMsg(opt, []byte("some data")),
			optMsg(nOptList, nil)))
		if tr.err != nil || tr.step != StepContinue || tr.opts != 2 || tr.unread != 0 {
			t.Fatalf("option %d: err %v step %v, %d options", opt, tr.err, tr.step, tr.opts)
		}
		reps := parseReplies(t, tr.out)
		expectReplies(t, reps[:1], errRep(opt, nRepErrUnsup))
		if last := reps[len(reps)-1]; last.opt != nOptList || last.typ != nRepAck {
			t.Fatalf("option %d: LIST after it: %s", opt, fmtReplies(reps))
		}
	}
}

func TestHandshakePlainNewstyle(t *testing.T) {
	// Without NBD_FLAG_C_FIXED_NEWSTYLE only NBD_OPT_EXPORT_NAME exists and
	// nothing can be answered with an error: every other option closes,
	// without a reply.
	for _, flags := range []uint32{0, ClientFlagNoZeroes} {
		for _, o := range []struct {
			opt  uint32
			data []byte
		}{
			{nOptList, nil}, {nOptGo, goReq("")}, {nOptInfo, goReq("")}, {nOptAbort, nil},
			{nOptStructured, nil}, {0x1000, nil},
		} {
			tr := hsDrive(hsExports(), cat(u32b(flags), optMsg(o.opt, o.data),
				optMsg(nOptExportName, nil)))
			if tr.step != StepClose || len(tr.out) != 0 || tr.opts != 1 {
				t.Errorf("flags %d, %v: step %v, %d bytes, %d options", flags, Opt(o.opt),
					tr.step, len(tr.out), tr.opts)
			}
		}
	}
}

func TestHandshakeMetaContextBytes(t *testing.T) {
	meta := func(name string, queries ...string) []byte {
		b := cat(u32b(uint32(len(name))), []byte(name), u32b(uint32(len(queries))))
		for _, q := range queries {
			b = cat(b, u32b(uint32(len(q))), []byte(q))
		}
		return b
	}
	baseAlloc := []byte("base:allocation")
	tr := hsDrive(hsExports(), cat(u32b(3),
		optMsg(nOptStructured, nil),
		optMsg(nOptListMeta, meta("")),               // no query: all
		optMsg(nOptListMeta, meta("", "base:")),      // namespace wildcard
		optMsg(nOptListMeta, meta("", "qemu:dirty")), // unknown: just ACK
		optMsg(nOptSetMeta, meta("", "base:")),       // wildcards only list
		optMsg(nOptSetMeta, meta("ro", "base:allocation")),
		optMsg(nOptListMeta, cat(meta(""), []byte{0})),            // trailing byte
		optMsg(nOptSetMeta, meta("", strings.Repeat("q", 5))[:9]), // truncated query
		optMsg(nOptSetMeta, meta("", "base:allocation")),
		optMsg(nOptGo, goReq("")),
	))
	if tr.step != StepServe || !tr.h.Result.BaseAllocation || !tr.h.Result.Structured {
		t.Fatalf("step %v, Result %+v", tr.step, tr.h.Result)
	}
	expectReplies(t, parseReplies(t, tr.out),
		rep(nOptStructured, nRepAck, nil),
		rep(nOptListMeta, nRepMeta, cat(u32b(0), baseAlloc)), rep(nOptListMeta, nRepAck, nil),
		rep(nOptListMeta, nRepMeta, cat(u32b(0), baseAlloc)), rep(nOptListMeta, nRepAck, nil),
		rep(nOptListMeta, nRepAck, nil),
		rep(nOptSetMeta, nRepAck, nil),
		rep(nOptSetMeta, nRepMeta, cat(u32b(1), baseAlloc)), rep(nOptSetMeta, nRepAck, nil),
		errRep(nOptListMeta, nRepErrInvalid),
		errRep(nOptSetMeta, nRepErrInvalid),
		rep(nOptSetMeta, nRepMeta, cat(u32b(1), baseAlloc)), rep(nOptSetMeta, nRepAck, nil),
		rep(nOptGo, nRepInfo, infoExportDefaultDF), rep(nOptGo, nRepInfo, infoBlockDefault),
		rep(nOptGo, nRepAck, nil))
	// Too many queries: ERR_TOO_BIG (proto.md allows it for LIST).
	qs := make([]string, 200)
	for i := range qs {
		qs[i] = "base:"
	}
	tr = hsDrive(hsExports(), cat(u32b(3), optMsg(nOptStructured, nil),
		optMsg(nOptListMeta, meta("", qs...))))
	expectReplies(t, parseReplies(t, tr.out), rep(nOptStructured, nRepAck, nil),
		errRep(nOptListMeta, nRepErrTooBig))
}

// TestHandshakeErrorMessagesAreStrings: proto.md "strings": error messages
// are strings, so UTF-8 without NUL and at most 4096 bytes, whatever the
// client sent.
func TestHandshakeErrorMessagesAreStrings(t *testing.T) {
	longName := strings.Repeat("a", StringMax) // a legal export name
	badUTF8 := strings.Repeat("\xff", 64)
	for _, c := range []struct {
		name string
		in   []byte
	}{
		{"GO, unknown 4096-byte name", optMsg(nOptGo, goReq(longName))},
		{"INFO, unknown 4096-byte name", optMsg(nOptInfo, goReq(longName))},
		{"GO, invalid UTF-8 name", optMsg(nOptGo, goReq(badUTF8))},
		{"SET_META, unknown 4096-byte name", cat(optMsg(nOptStructured, nil),
			optMsg(nOptSetMeta, cat(u32b(StringMax), []byte(longName), u32b(0))))},
	} {
		tr := hsDrive(hsExports(), cat(u32b(3), c.in))
		reps := parseReplies(t, tr.out)
		last := reps[len(reps)-1]
		if last.typ != nRepErrUnknown {
			t.Errorf("%s: %s", c.name, fmtReplies(reps))
			continue
		}
		if !utf8.Valid(last.data) || bytes.IndexByte(last.data, 0) >= 0 ||
			len(last.data) > StringMax {
			t.Errorf("%s: %v message of %d bytes breaks proto.md's string rule "+
				"(MUST be no longer than 4096 bytes; applies to error messages)", c.name,
				Rep(last.typ), len(last.data))
		}
	}
}

func TestHandshakeOptionDoesNotKeepOldReplies(t *testing.T) {
	// The reply buffer is reused: each Option returns only its own replies.
	h := NewServerHandshake(hsExports())
	if err := h.ClientFlags(u32b(3)); err != nil {
		t.Fatal(err)
	}
	h.Option(OptList, nil)
	out, _ := h.Option(OptStructured, nil)
	if !bytes.Equal(out, repMsg(8, 1, nil)) {
		t.Fatalf("second option returned % x", out)
	}
}
