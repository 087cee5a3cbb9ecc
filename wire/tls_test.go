package wire

import (
	"testing"
)

// The TLS rules of proto.md ("TLS support"), as table tests. hsDriveTLS
// runs the same loop as hsDrive but, like the server, goes on reading
// options after StepStartTLS (the bytes that follow stand for what the
// TLS session would carry); it records where TLS started.

const (
	nRepErrPolicy  = 1<<31 + 2
	nRepErrTLSReqd = 1<<31 + 5
	nOptExtended   = 11
)

type tlsTranscript struct {
	transcript
	starts  int // StepStartTLS seen
	plainAt int // bytes of replies sent before the last StepStartTLS
}

func hsDriveTLS(exports []Export, mode TLSMode, in []byte) tlsTranscript {
	h := NewServerHandshake(exports)
	h.SetTLS(mode)
	return hsDriveWith(h, in)
}

// hsDriveWith is hsDriveTLS on a handshake the caller has set up.
func hsDriveWith(h *ServerHandshake, in []byte) tlsTranscript {
	tr := tlsTranscript{transcript: transcript{h: h}}
	if tr.err = tr.h.ClientFlags(in[:4]); tr.err != nil {
		return tr
	}
	in = in[4:]
	for len(in) >= OptionHeaderSize {
		opt, n, err := tr.h.OptionHeader(in[:OptionHeaderSize])
		if err != nil {
			tr.err = err
			break
		}
		data := in[OptionHeaderSize : OptionHeaderSize+int(n)]
		in = in[OptionHeaderSize+int(n):]
		out, step := tr.h.Option(opt, data)
		tr.out = append(tr.out, out...)
		tr.opts++
		tr.step = step
		if step == StepStartTLS {
			tr.starts++
			tr.plainAt = len(tr.out)
			continue
		}
		if step != StepContinue {
			break
		}
	}
	tr.unread = len(in)
	return tr
}

// tlsExports: "" is plain, "secret" requires TLS.
func tlsExports() []Export {
	e := hsExports()
	e[1].Name, e[1].TLSOnly = "secret", true
	return e
}

func TestTLSForcedRefusesEverythingButStartTLSAndAbort(t *testing.T) {
	// FORCEDTLS: each option (with data, which must be consumed so the
	// next option is read in step) gets ERR_TLS_REQD; LIST after it
	// proves the stream stayed in step.
	for _, o := range []struct {
		opt  uint32
		data []byte
	}{
		{nOptList, nil}, {nOptInfo, goReq("")}, {nOptGo, goReq("", 3)},
		{nOptStructured, nil}, {nOptExtended, nil}, {nOptListMeta, []byte("junk data")},
		{nOptSetMeta, nil}, {0x1000, []byte("unknown option's data")}, {4, nil},
	} {
		tr := hsDriveTLS(hsExports(), TLSRequire, cat(u32b(3), optMsg(o.opt, o.data),
			optMsg(nOptList, nil)))
		if tr.err != nil || tr.step != StepContinue || tr.opts != 2 || tr.unread != 0 {
			t.Fatalf("option %d: err %v step %v, %d options, %d unread", o.opt, tr.err,
				tr.step, tr.opts, tr.unread)
		}
		expectReplies(t, parseReplies(t, tr.out), errRep(o.opt, nRepErrTLSReqd),
			errRep(nOptList, nRepErrTLSReqd))
		if tr.h.Result != (Negotiated{}) {
			t.Fatalf("option %d: negotiated %+v without TLS", o.opt, tr.h.Result)
		}
	}
}

func TestTLSForcedExportNameCloses(t *testing.T) {
	tr := hsDriveTLS(hsExports(), TLSRequire, cat(u32b(3), optMsg(nOptExportName, nil)))
	if tr.step != StepClose || len(tr.out) != 0 {
		t.Fatalf("EXPORT_NAME before TLS: step %v, sent % x", tr.step, tr.out)
	}
	tr = hsDriveTLS(hsExports(), TLSRequire, cat(u32b(3), optMsg(nOptAbort, nil)))
	if tr.step != StepClose {
		t.Fatalf("ABORT: step %v", tr.step)
	}
	expectReplies(t, parseReplies(t, tr.out), rep(nOptAbort, nRepAck, nil))
}

func TestTLSStartTLSThenServe(t *testing.T) {
	for _, mode := range []TLSMode{TLSOn, TLSRequire} {
		tr := hsDriveTLS(hsExports(), mode, cat(u32b(3), optMsg(nOptStartTLS, nil),
			optMsg(nOptGo, goReq(""))))
		if tr.starts != 1 || tr.step != StepServe || !tr.h.TLS() {
			t.Fatalf("%v: %d STARTTLS steps, last step %v, TLS %v", mode, tr.starts,
				tr.step, tr.h.TLS())
		}
		reps := parseReplies(t, tr.out)
		expectReplies(t, reps[:1], rep(nOptStartTLS, nRepAck, nil))
		if last := reps[len(reps)-1]; last.opt != nOptGo || last.typ != nRepAck {
			t.Fatalf("%v: GO after TLS: %s", mode, fmtReplies(reps))
		}
	}
}

func TestTLSStartTLSRules(t *testing.T) {
	for _, c := range []struct {
		name string
		mode TLSMode
		in   []byte
		want []optReply
	}{
		{"off: policy", TLSOff, optMsg(nOptStartTLS, nil),
			[]optReply{errRep(nOptStartTLS, nRepErrPolicy)}},
		{"data: invalid", TLSOn, optMsg(nOptStartTLS, []byte("x")),
			[]optReply{errRep(nOptStartTLS, nRepErrInvalid)}},
		{"forced, data: invalid", TLSRequire, optMsg(nOptStartTLS, []byte("x")),
			[]optReply{errRep(nOptStartTLS, nRepErrInvalid)}},
		{"second: invalid", TLSOn, cat(optMsg(nOptStartTLS, nil), optMsg(nOptStartTLS, nil)),
			[]optReply{rep(nOptStartTLS, nRepAck, nil), errRep(nOptStartTLS, nRepErrInvalid)}},
		{"forced second: invalid", TLSRequire,
			cat(optMsg(nOptStartTLS, nil), optMsg(nOptStartTLS, nil)),
			[]optReply{rep(nOptStartTLS, nRepAck, nil), errRep(nOptStartTLS, nRepErrInvalid)}},
	} {
		tr := hsDriveTLS(hsExports(), c.mode, cat(u32b(3), c.in))
		expectReplies(t, parseReplies(t, tr.out), c.want...)
		if tr.starts > 1 {
			t.Fatalf("%s: TLS started %d times", c.name, tr.starts)
		}
	}
}

// CVE-2021-3716: negotiation before STARTTLS must be forgotten.
func TestTLSStartTLSForgetsEarlierState(t *testing.T) {
	setMeta := cat(u32b(0), u32b(1), u32b(uint32(len(MetaBaseAllocation))),
		[]byte(MetaBaseAllocation))
	tr := hsDriveTLS(hsExports(), TLSOn, cat(u32b(3), optMsg(nOptStructured, nil),
		optMsg(nOptExtended, nil), optMsg(nOptSetMeta, setMeta), optMsg(nOptStartTLS, nil),
		optMsg(nOptGo, goReq(""))))
	if tr.step != StepServe {
		t.Fatalf("step %v", tr.step)
	}
	r := tr.h.Result
	if r.Structured || r.Extended || r.BaseAllocation || r.Style() != StyleSimple {
		t.Fatalf("state from before STARTTLS survived: %+v", r)
	}
	// EXPORT_NAME is refused after plaintext EXTENDED_HEADERS only while
	// that state lives; after STARTTLS it is allowed again.
	tr = hsDriveTLS(hsExports(), TLSOn, cat(u32b(3), optMsg(nOptExtended, nil),
		optMsg(nOptStartTLS, nil), optMsg(nOptExportName, nil)))
	if tr.step != StepServe || tr.h.Result.Extended {
		t.Fatalf("EXPORT_NAME after STARTTLS: step %v, %+v", tr.step, tr.h.Result)
	}
	// And meta contexts need structured replies again.
	tr = hsDriveTLS(hsExports(), TLSOn, cat(u32b(3), optMsg(nOptStructured, nil),
		optMsg(nOptStartTLS, nil), optMsg(nOptSetMeta, setMeta)))
	reps := parseReplies(t, tr.out)
	expectReplies(t, reps[len(reps)-1:], errRep(nOptSetMeta, nRepErrInvalid))
}

func TestTLSSelectivePerExport(t *testing.T) {
	in := cat(u32b(3), optMsg(nOptList, nil), optMsg(nOptInfo, goReq("secret")),
		optMsg(nOptGo, goReq("secret")), optMsg(nOptInfo, goReq("")))
	tr := hsDriveTLS(tlsExports(), TLSOn, in)
	reps := parseReplies(t, tr.out)
	// LIST shows only "" (the description is sent only because the
	// fixture has one).
	listed := cat(u32b(0), []byte("default disk"))
	expectReplies(t, reps[:6], rep(nOptList, nRepServer, listed), rep(nOptList, nRepAck, nil),
		errRep(nOptInfo, nRepErrTLSReqd), errRep(nOptGo, nRepErrTLSReqd),
		rep(nOptInfo, nRepInfo, infoExportDefault), reps[5])
	if tr.step != StepContinue {
		t.Fatalf("step %v", tr.step)
	}
	// Plaintext EXPORT_NAME of a TLS-only export closes.
	tr = hsDriveTLS(tlsExports(), TLSOn, cat(u32b(3), optMsg(nOptExportName, []byte("secret"))))
	if tr.step != StepClose || len(tr.out) != 0 {
		t.Fatalf("EXPORT_NAME secret: step %v, % x", tr.step, tr.out)
	}
	// Meta contexts of a hidden export: unknown, not TLS_REQD (proto.md
	// allows TLS_REQD only for INFO, GO and EXPORT_NAME).
	setMeta := cat(u32b(6), []byte("secret"), u32b(0))
	tr = hsDriveTLS(tlsExports(), TLSOn, cat(u32b(3), optMsg(nOptStructured, nil),
		optMsg(nOptListMeta, setMeta)))
	reps = parseReplies(t, tr.out)
	expectReplies(t, reps[1:], errRep(nOptListMeta, nRepErrUnknown))
	// After STARTTLS both are listed and "secret" is served.
	tr = hsDriveTLS(tlsExports(), TLSOn, cat(u32b(3), optMsg(nOptStartTLS, nil),
		optMsg(nOptList, nil), optMsg(nOptGo, goReq("secret"))))
	reps = parseReplies(t, tr.out)
	if len(reps) < 4 || reps[1].typ != nRepServer || reps[2].typ != nRepServer ||
		tr.step != StepServe || tr.h.Result.Export != 1 {
		t.Fatalf("after STARTTLS: %s, step %v, %+v", fmtReplies(reps), tr.step, tr.h.Result)
	}
	// No ERR_TLS_REQD is ever sent once TLS runs.
	for _, r := range reps {
		if r.typ == nRepErrTLSReqd {
			t.Fatalf("ERR_TLS_REQD after TLS: %s", fmtReplies(reps))
		}
	}
}

func TestTLSOffNeverSaysTLSRequired(t *testing.T) {
	// NOTLS: TLS_REQD is never sent, even for an export marked TLSOnly
	// (the server refuses such a configuration; the wire stays correct).
	tr := hsDriveTLS(tlsExports(), TLSOff, cat(u32b(3), optMsg(nOptList, nil),
		optMsg(nOptGo, goReq("secret")), optMsg(nOptGo, goReq(""))))
	reps := parseReplies(t, tr.out)
	for _, r := range reps {
		if r.typ == nRepErrTLSReqd {
			t.Fatalf("TLS_REQD with TLS off: %s", fmtReplies(reps))
		}
	}
	expectReplies(t, reps[:3], reps[0], rep(nOptList, nRepAck, nil),
		errRep(nOptGo, nRepErrUnknown))
	if tr.step != StepServe || tr.h.Result.Export != 0 {
		t.Fatalf("step %v, %+v", tr.step, tr.h.Result)
	}
}

// Bytes pipelined after STARTTLS in the same write must not be parsed as
// options by the state machine's caller: the state machine stops at
// StepStartTLS, before them.
func TestTLSStartTLSStopsBeforePipelinedBytes(t *testing.T) {
	h := NewServerHandshake(hsExports())
	h.SetTLS(TLSOn)
	if err := h.ClientFlags(u32b(3)); err != nil {
		t.Fatal(err)
	}
	in := cat(optMsg(nOptStartTLS, nil), optMsg(nOptGo, goReq("")))
	opt, n, err := h.OptionHeader(in[:OptionHeaderSize])
	if err != nil || opt != OptStartTLS || n != 0 {
		t.Fatalf("header: %v %d %v", opt, n, err)
	}
	if _, step := h.Option(opt, nil); step != StepStartTLS {
		t.Fatalf("step %v, want StepStartTLS", step)
	}
}
