package main

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"encoding/binary"
	"io"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// Raw protocol numbers (proto.md), written out rather than taken from
// package wire, so a mistake there is not mirrored here.
const (
	rawOptMagic     = 0x49484156454F5054 // "IHAVEOPT"
	rawOptReplyMag  = 0x0003e889045565a9
	rawOptStartTLS  = 5
	rawOptGo        = 7
	rawOptStruct    = 8  // NBD_OPT_STRUCTURED_REPLY
	rawOptSetMeta   = 10 // NBD_OPT_SET_META_CONTEXT
	rawRepAck       = 1
	rawRepMeta      = 4
	rawReqMagic     = 0x25609513
	rawSimpleMagic  = 0x67446698
	rawStructMagic  = 0x668e33ef
	rawCmdRead      = 0
	rawCmdDisc      = 2
	rawCmdBlockStat = 7
	rawFlagDF       = 1 << 2 // NBD_CMD_FLAG_DF: structured replies only
	rawEINVAL       = 22
)

// TestE2ETLSForgetsPlaintextNegotiation is CVE-2021-3716 end to end: a
// client negotiates structured replies and base:allocation in plaintext,
// upgrades with STARTTLS and, over TLS, goes straight to GO. The server
// must have forgotten the plaintext agreement: a READ gets a simple
// reply, and the structured-only requests (READ with DF, BLOCK_STATUS)
// get EINVAL in simple replies, with the stream still in step after.
func TestE2ETLSForgetsPlaintextNegotiation(t *testing.T) {
	ts := e2eNewTLS(t)
	s := e2eStart(t, "-tls", "on", "-tls-certificates", ts.serverDir, ts.export)
	want := e2eReadFile(t, ts.export)[:4096]
	c, err := net.Dial("unix", s.sock)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	greeting := make([]byte, 18)
	if _, err := io.ReadFull(c, greeting); err != nil || string(greeting[:8]) != "NBDMAGIC" {
		t.Fatalf("greeting % x: %v", greeting, err)
	}
	rawWrite(t, c, binary.BigEndian.AppendUint32(nil, 3)) // FIXED_NEWSTYLE|NO_ZEROES
	rawOption(t, c, rawOptStruct, nil)
	rawExpect(t, c, rawOptStruct, rawRepAck)
	meta := binary.BigEndian.AppendUint32(nil, 0) // export ""
	meta = binary.BigEndian.AppendUint32(meta, 1)
	meta = binary.BigEndian.AppendUint32(meta, uint32(len("base:allocation")))
	meta = append(meta, "base:allocation"...)
	rawOption(t, c, rawOptSetMeta, meta)
	rawExpect(t, c, rawOptSetMeta, rawRepMeta)
	rawExpect(t, c, rawOptSetMeta, rawRepAck)
	rawOption(t, c, rawOptStartTLS, nil)
	rawExpect(t, c, rawOptStartTLS, rawRepAck)

	pool := x509.NewCertPool()
	ca, err := os.ReadFile(filepath.Join(ts.client, "ca-cert.pem"))
	if err != nil || !pool.AppendCertsFromPEM(ca) {
		t.Fatalf("client CA: %v", err)
	}
	tc := tls.Client(c, &tls.Config{RootCAs: pool, ServerName: "localhost"})
	if err := tc.Handshake(); err != nil {
		t.Fatalf("TLS handshake after STARTTLS: %v", err)
	}
	// GO for "" with no info requests: INFO replies, then ACK.
	rawOption(t, tc, rawOptGo, make([]byte, 6))
	for {
		typ, _ := rawReply(t, tc, rawOptGo)
		if typ == rawRepAck {
			break
		}
		if typ&(1<<31) != 0 {
			t.Fatalf("GO over TLS refused: reply type %#x", typ)
		}
	}
	rawRequest(t, tc, 0, rawCmdRead, 1, 0, 4096)
	rawSimpleReply(t, tc, 1, 0, want)
	rawRequest(t, tc, rawFlagDF, rawCmdRead, 2, 0, 4096)
	rawSimpleReply(t, tc, 2, rawEINVAL, nil)
	rawRequest(t, tc, 0, rawCmdBlockStat, 3, 0, 4096)
	rawSimpleReply(t, tc, 3, rawEINVAL, nil)
	rawRequest(t, tc, 0, rawCmdRead, 4, 0, 4096)
	rawSimpleReply(t, tc, 4, 0, want)
	rawRequest(t, tc, 0, rawCmdDisc, 5, 0, 0)
}

func rawWrite(t *testing.T, w io.Writer, b []byte) {
	t.Helper()
	if _, err := w.Write(b); err != nil {
		t.Fatalf("write: %v", err)
	}
}

func rawOption(t *testing.T, w io.Writer, opt uint32, data []byte) {
	t.Helper()
	b := binary.BigEndian.AppendUint64(nil, rawOptMagic)
	b = binary.BigEndian.AppendUint32(b, opt)
	b = binary.BigEndian.AppendUint32(b, uint32(len(data)))
	rawWrite(t, w, append(b, data...))
}

// rawReply reads one option reply to opt and returns its type and data.
func rawReply(t *testing.T, r io.Reader, opt uint32) (uint32, []byte) {
	t.Helper()
	h := make([]byte, 20)
	if _, err := io.ReadFull(r, h); err != nil {
		t.Fatalf("reply to option %d: %v", opt, err)
	}
	be := binary.BigEndian
	if be.Uint64(h) != rawOptReplyMag || be.Uint32(h[8:]) != opt {
		t.Fatalf("reply to option %d: header % x", opt, h)
	}
	data := make([]byte, be.Uint32(h[16:]))
	if _, err := io.ReadFull(r, data); err != nil {
		t.Fatalf("reply to option %d: %v", opt, err)
	}
	return be.Uint32(h[12:]), data
}

func rawExpect(t *testing.T, r io.Reader, opt, typ uint32) {
	t.Helper()
	if got, data := rawReply(t, r, opt); got != typ {
		t.Fatalf("option %d: reply type %#x (%q), want %d", opt, got, data, typ)
	}
}

func rawRequest(t *testing.T, w io.Writer, flags uint16, cmd uint16, cookie, off uint64,
	n uint32) {
	t.Helper()
	b := binary.BigEndian.AppendUint32(nil, rawReqMagic)
	b = binary.BigEndian.AppendUint16(b, flags)
	b = binary.BigEndian.AppendUint16(b, cmd)
	b = binary.BigEndian.AppendUint64(b, cookie)
	b = binary.BigEndian.AppendUint64(b, off)
	rawWrite(t, w, binary.BigEndian.AppendUint32(b, n))
}

// rawSimpleReply wants a simple reply (not a structured chunk) for
// cookie with errno, followed by data when errno is 0.
func rawSimpleReply(t *testing.T, r io.Reader, cookie uint64, errno uint32, data []byte) {
	t.Helper()
	h := make([]byte, 16)
	if _, err := io.ReadFull(r, h); err != nil {
		t.Fatalf("reply to request %d: %v", cookie, err)
	}
	be := binary.BigEndian
	switch m := be.Uint32(h); m {
	case rawSimpleMagic:
	case rawStructMagic:
		t.Fatalf("reply to request %d is structured: what was negotiated in plaintext "+
			"(structured replies, base:allocation) survived STARTTLS (CVE-2021-3716)",
			cookie)
	default:
		t.Fatalf("reply to request %d: magic %#x", cookie, m)
	}
	if got := be.Uint32(h[4:]); got != errno || be.Uint64(h[8:]) != cookie {
		t.Fatalf("reply to request %d: errno %d cookie %d, want errno %d", cookie, got,
			be.Uint64(h[8:]), errno)
	}
	if errno != 0 {
		return
	}
	got := make([]byte, len(data))
	if _, err := io.ReadFull(r, got); err != nil {
		t.Fatalf("data of request %d: %v", cookie, err)
	}
	if !bytes.Equal(got, data) {
		t.Fatalf("request %d read other bytes than the export's", cookie)
	}
}
