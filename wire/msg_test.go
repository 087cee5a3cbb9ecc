package wire

import (
	"bufio"
	"bytes"
	"encoding/hex"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"unicode/utf8"
)

// hexBytes decodes hex written with spaces between fields.
func hexBytes(t *testing.T, s string) []byte {
	t.Helper()
	b, err := hex.DecodeString(strings.Join(strings.Fields(s), ""))
	if err != nil {
		t.Fatalf("bad hex %q: %v", s, err)
	}
	return b
}

// goldenSet is one testdata/golden file: "name: hex" lines written by hand
// from the spec's layouts. used records which entries a test looked at, so
// that an entry nobody checks is reported.
type goldenSet struct {
	t    *testing.T
	file string
	b    map[string][]byte
	used map[string]bool
}

func loadGolden(t *testing.T, file string) *goldenSet {
	t.Helper()
	f, err := os.Open(filepath.Join("testdata", "golden", file))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	g := &goldenSet{t: t, file: file, b: map[string][]byte{}, used: map[string]bool{}}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || line[0] == '#' {
			continue
		}
		name, h, ok := strings.Cut(line, ":")
		if !ok {
			t.Fatalf("%s: line without a name: %q", file, line)
		}
		if _, dup := g.b[name]; dup {
			t.Fatalf("%s: %s twice", file, name)
		}
		g.b[name] = hexBytes(t, h)
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return g
}

func (g *goldenSet) get(t *testing.T, name string) []byte {
	t.Helper()
	b, ok := g.b[name]
	if !ok {
		t.Fatalf("%s: no golden entry %q", g.file, name)
	}
	g.used[name] = true
	return b
}

// allUsed fails the test for entries no case checked.
func (g *goldenSet) allUsed() {
	g.t.Helper()
	for name := range g.b {
		if !g.used[name] {
			g.t.Errorf("%s: golden entry %q is not checked by any case", g.file, name)
		}
	}
}

func TestRequestGoldenTable(t *testing.T) {
	g := loadGolden(t, "requests.txt")
	for _, c := range []struct {
		golden string
		want   Request
	}{
		{"read-4k", Request{Type: CmdRead, Cookie: 1, Offset: 4096, Length: 4096}},
		{"write-fua-4g", Request{Flags: CmdFlagFUA, Type: CmdWrite,
			Cookie: 0x1122334455667788, Offset: 1 << 32, Length: 512}},
		{"disc", Request{Type: CmdDisc, Cookie: 0xff}},
		{"flush-fua", Request{Flags: CmdFlagFUA, Type: CmdFlush, Cookie: 2}},
		{"trim-2m", Request{Type: CmdTrim, Cookie: 3, Offset: 1 << 20, Length: 2 << 20}},
		{"cache", Request{Type: CmdCache, Cookie: 4, Offset: 512, Length: 512}},
		{"zeroes-nohole-fastzero", Request{Flags: CmdFlagNoHole | CmdFlagFastZero,
			Type: CmdWriteZeroes, Cookie: 5, Length: 32 << 20}},
		{"block-status-req-one", Request{Flags: CmdFlagReqOne, Type: CmdBlockStatus,
			Cookie: 6, Length: 1<<32 - 1}},
		{"read-df-byte-order", Request{Flags: CmdFlagDF, Type: CmdRead,
			Cookie: 0x0102030405060708, Offset: 0x1112131415161718, Length: 0x21222324}},
		{"all-ones", Request{Flags: 0xffff, Type: 0xffff, Cookie: 1<<64 - 1,
			Offset: 1<<64 - 1, Length: 1<<32 - 1}},
	} {
		t.Run(c.golden, func(t *testing.T) {
			golden := g.get(t, c.golden)
			if len(golden) != RequestSize {
				t.Fatalf("golden entry has %d bytes, want %d", len(golden), RequestSize)
			}
			// Decode from a longer buffer: bytes past the header are not read.
			in := append(append([]byte{}, golden...), 0xee, 0xee, 0xee, 0xee)
			r := Request{Flags: 0x5555, Type: 0x5555, Cookie: 5, Offset: 5, Length: 5}
			if err := DecodeRequest(in, &r); err != nil {
				t.Fatalf("DecodeRequest: %v", err)
			}
			if r != c.want {
				t.Fatalf("decoded %+v, want %+v", r, c.want)
			}
			// Encode into a poisoned buffer: exactly RequestSize bytes written.
			out := bytes.Repeat([]byte{0xaa}, RequestSize+4)
			EncodeRequest(out, &c.want)
			if !bytes.Equal(out[:RequestSize], golden) {
				t.Fatalf("encoded\n% x\nwant\n% x", out[:RequestSize], golden)
			}
			if !bytes.Equal(out[RequestSize:], []byte{0xaa, 0xaa, 0xaa, 0xaa}) {
				t.Fatalf("EncodeRequest wrote past RequestSize: % x", out[RequestSize:])
			}
		})
	}
	g.allUsed()
}

func TestDecodeRequestBadMagic(t *testing.T) {
	body := hexBytes(t, "0000 0000 0000000000000001 0000000000000000 00000200")
	for _, c := range []struct {
		name  string
		magic string
	}{
		{"zero", "00000000"},
		{"byte-swapped request magic", "13956025"},
		{"last byte off", "25609512"},
		{"first byte off", "26609513"},
		{"extended request magic", "21e41c71"},
		{"simple reply magic", "67446698"},
		{"structured reply magic", "668e33ef"},
		{"ascii NBDM", "4e42444d"},
		{"all ones", "ffffffff"},
	} {
		b := append(hexBytes(t, c.magic), body...)
		var r Request
		if err := DecodeRequest(b, &r); !errors.Is(err, ErrRequestMagic) {
			t.Errorf("%s: DecodeRequest = %v, want ErrRequestMagic", c.name, err)
		}
	}
	// The extended decoder wants the extended magic, not the compact one.
	ext := append(hexBytes(t, "25609513"), make([]byte, ExtRequestSize-4)...)
	var r Request
	if err := DecodeExtendedRequest(ext, &r); !errors.Is(err, ErrRequestMagic) {
		t.Errorf("DecodeExtendedRequest(compact magic) = %v, want ErrRequestMagic", err)
	}
}

func TestExtendedRequestGolden(t *testing.T) {
	// proto-extended-headers.md: magic 0x21e41c71, flags 16, type 16,
	// cookie 64, offset 64, length 64.
	golden := hexBytes(t, "21e41c71 0020 0001 0000000000000063 0000000200000000 0000000000010000")
	want := Request{Flags: CmdFlagPayloadLen, Type: CmdWrite, Cookie: 0x63, Offset: 8 << 30,
		Length: 64 << 10}
	var r Request
	if err := DecodeExtendedRequest(golden, &r); err != nil || r != want {
		t.Fatalf("DecodeExtendedRequest = %+v, %v; want %+v", r, err, want)
	}
	out := bytes.Repeat([]byte{0xaa}, ExtRequestSize+1)
	EncodeExtendedRequest(out, &want)
	if !bytes.Equal(out[:ExtRequestSize], golden) || out[ExtRequestSize] != 0xaa {
		t.Fatalf("EncodeExtendedRequest: % x", out)
	}
}

// TestReplyGoldenTable checks every entry of testdata/golden/replies.txt.
func TestReplyGoldenTable(t *testing.T) {
	g := loadGolden(t, "replies.txt")
	t.Run("simple", func(t *testing.T) { testSimpleReplyGolden(t, g) })
	t.Run("chunk", func(t *testing.T) { testChunkHeaderGolden(t, g) })
	t.Run("encoders", func(t *testing.T) { testReplyEncodersGolden(t, g) })
	g.allUsed()
}

func testSimpleReplyGolden(t *testing.T, g *goldenSet) {
	for _, c := range []struct {
		golden string
		cookie uint64
		errno  Errno
	}{
		{"simple-ok", 1, EOK},
		{"simple-eio", 1<<64 - 1, EIO},
		{"simple-enospc", 0x0102030405060708, ENOSPC},
		{"simple-eshutdown", 0, ESHUTDOWN},
		{"simple-eperm", 42, EPERM},
	} {
		out := bytes.Repeat([]byte{0xaa}, SimpleReplySize+1)
		EncodeSimpleReply(out, c.cookie, c.errno)
		if want := g.get(t, c.golden); !bytes.Equal(out[:SimpleReplySize], want) ||
			out[SimpleReplySize] != 0xaa {
			t.Errorf("%s: % x, want % x", c.golden, out, want)
		}
	}
}

func testChunkHeaderGolden(t *testing.T, g *goldenSet) {
	for _, c := range []struct {
		golden string
		flags  uint16
		typ    ReplyType
		cookie uint64
		length uint32
	}{
		{"chunk-none-done", ReplyFlagDone, ReplyNone, 9, 0},
		{"chunk-offset-data", 0, ReplyOffsetData, 9, 4104},
		{"chunk-error-done", ReplyFlagDone, ReplyError, 9, 6},
		{"chunk-block-status", ReplyFlagDone, ReplyBlockStatus, 0x0102030405060708, 20},
		{"chunk-error-offset-max", 0xffff, ReplyErrorOffset, 1<<64 - 1, 1<<32 - 1},
	} {
		out := bytes.Repeat([]byte{0xaa}, ChunkHeaderSize+1)
		EncodeChunkHeader(out, c.flags, c.typ, c.cookie, c.length)
		if want := g.get(t, c.golden); !bytes.Equal(out[:ChunkHeaderSize], want) ||
			out[ChunkHeaderSize] != 0xaa {
			t.Errorf("%s: % x, want % x", c.golden, out, want)
		}
		// EncodeChunk in the structured style is the same header.
		out2 := make([]byte, ExtReplySize)
		if n := EncodeChunk(out2, StyleStructured, c.flags, c.typ, c.cookie, 77,
			uint64(c.length)); n != ChunkHeaderSize || !bytes.Equal(out2[:n], out[:n]) {
			t.Errorf("%s: EncodeChunk structured wrote %d bytes % x", c.golden, n, out2[:n])
		}
	}
}

// testReplyEncodersGolden covers the offset-data header (EncodeRead), the
// error chunk (EncodeError), hole, done and block status headers in every
// style they support.
func testReplyEncodersGolden(t *testing.T, g *goldenSet) {
	for _, c := range []struct {
		golden string
		enc    func(b []byte) int
	}{
		{"read-structured-done", func(b []byte) int {
			return EncodeRead(b, StyleStructured, 42, 0x10000, 0x10000, 4096, true)
		}},
		{"read-structured-part", func(b []byte) int {
			return EncodeRead(b, StyleStructured, 42, 0x10000, 0x10200, 512, false)
		}},
		{"read-simple", func(b []byte) int {
			return EncodeRead(b, StyleSimple, 42, 0x10000, 0x10000, 4096, true)
		}},
		{"read-extended-done", func(b []byte) int {
			return EncodeRead(b, StyleExtended, 42, 0x10000, 0x10000, 4096, true)
		}},
		{"done-extended", func(b []byte) int { return EncodeDone(b, StyleExtended, 7, 0x2000) }},
		{"simple-ok", func(b []byte) int { return EncodeDone(b, StyleSimple, 1, 99) }},
		{"error-structured", func(b []byte) int {
			return EncodeError(b, StyleStructured, 11, 0x4000, EINVAL, "bad offset")
		}},
		{"error-structured-empty", func(b []byte) int {
			return EncodeError(b, StyleStructured, 11, 0x4000, EIO, "")
		}},
		{"error-extended", func(b []byte) int {
			return EncodeError(b, StyleExtended, 11, 0x4000, ENOSPC, "full")
		}},
		{"error-simple", func(b []byte) int {
			return EncodeError(b, StyleSimple, 11, 0x4000, EPERM, "message is dropped")
		}},
		{"hole-structured-done", func(b []byte) int {
			return EncodeHole(b, StyleStructured, 12, 0x3000, 0x3000, 4096, true)
		}},
		{"block-status-structured", func(b []byte) int {
			return EncodeBlockStatus(b, StyleStructured, 13, 0x200, 1, 3)
		}},
		{"block-status-extended", func(b []byte) int {
			return EncodeBlockStatus(b, StyleExtended, 13, 0x200, 1, 3)
		}},
	} {
		out := bytes.Repeat([]byte{0xaa}, ReplyHeaderMax+1)
		n := c.enc(out)
		want := g.get(t, c.golden)
		if n != len(want) || !bytes.Equal(out[:n], want) {
			t.Errorf("%s: %d bytes\n% x\nwant %d bytes\n% x", c.golden, n, out[:n],
				len(want), want)
		}
		if out[len(want)] != 0xaa {
			t.Errorf("%s: wrote past the returned length", c.golden)
		}
	}
}

func TestEncodeDoneStructuredIsSimple(t *testing.T) {
	// proto.md: with structured replies a command other than READ may
	// still be answered by a simple reply.
	b := make([]byte, ReplyHeaderMax)
	if n := EncodeDone(b, StyleStructured, 5, 4096); n != SimpleReplySize ||
		!bytes.Equal(b[:n], hexBytes(t, "67446698 00000000 0000000000000005")) {
		t.Fatalf("EncodeDone structured: % x", b[:n])
	}
}

func TestEncodeErrorMessageCut(t *testing.T) {
	b := make([]byte, ReplyHeaderMax)
	msg := strings.Repeat("m", ErrorMessageMax+10)
	for _, c := range []struct {
		st  ReplyStyle
		hdr int
	}{{StyleStructured, ChunkHeaderSize}, {StyleExtended, ExtReplySize}} {
		n := EncodeError(b, c.st, 1, 0, EIO, msg)
		if n != c.hdr+6+ErrorMessageMax {
			t.Fatalf("style %d: %d bytes", c.st, n)
		}
		if got := be.Uint16(b[c.hdr+4:]); got != ErrorMessageMax {
			t.Fatalf("style %d: message length field %d", c.st, got)
		}
		var payload uint64
		if c.st == StyleExtended {
			payload = be.Uint64(b[24:])
		} else {
			payload = uint64(be.Uint32(b[16:]))
		}
		if payload != 6+ErrorMessageMax {
			t.Fatalf("style %d: chunk length %d", c.st, payload)
		}
	}
}

// TestEncodeErrorMessageStaysUTF8: proto.md "strings" are UTF-8, and the
// ERROR chunk's message is one; cutting it to ErrorMessageMax bytes must
// not split a character.
func TestEncodeErrorMessageStaysUTF8(t *testing.T) {
	b := make([]byte, ReplyHeaderMax)
	msg := strings.Repeat("x", ErrorMessageMax-1) + "é" // é is c3 a9
	n := EncodeError(b, StyleStructured, 1, 0, EIO, msg)
	m := b[ChunkHeaderSize+6 : n]
	if int(be.Uint16(b[ChunkHeaderSize+4:])) != len(m) {
		t.Fatalf("message length field %d, %d bytes sent", be.Uint16(b[24:]), len(m))
	}
	if !utf8.Valid(m) {
		t.Fatalf("ERROR chunk message cut inside a character: ...% x", m[len(m)-4:])
	}
}

func TestPutExtent(t *testing.T) {
	b := bytes.Repeat([]byte{0xaa}, 17)
	if n := PutExtent(b, StyleStructured, 0x12345678, StateZero); n != 8 ||
		!bytes.Equal(b[:9], hexBytes(t, "12345678 00000002 aa")) {
		t.Errorf("compact extent: %d % x", n, b[:9])
	}
	if n := PutExtent(b, StyleExtended, 0x123456789a, StateHole); n != 16 ||
		!bytes.Equal(b, hexBytes(t, "000000123456789a 0000000000000001 aa")) {
		t.Errorf("extended extent: %d % x", n, b)
	}
	if ExtentSize(StyleSimple) != 8 || ExtentSize(StyleStructured) != 8 ||
		ExtentSize(StyleExtended) != 16 {
		t.Error("ExtentSize")
	}
}

func TestErrnoFromSysTable(t *testing.T) {
	for _, c := range []struct {
		in   syscall.Errno
		want Errno
	}{
		{0, EOK},
		{syscall.EPERM, EPERM},
		{syscall.EACCES, EPERM},
		{syscall.EROFS, EPERM},
		{syscall.EIO, EIO},
		{syscall.ENOMEM, ENOMEM},
		{syscall.EINVAL, EINVAL},
		{syscall.ENOSPC, ENOSPC},
		{syscall.EDQUOT, ENOSPC},
		{syscall.EFBIG, ENOSPC},
		{syscall.EOVERFLOW, EOVERFLOW},
		{syscall.EOPNOTSUPP, ENOTSUP},
		{syscall.ENOTSUP, ENOTSUP}, // the same number on Linux
		{syscall.ESHUTDOWN, ESHUTDOWN},
		// Errors the protocol has no name for are I/O errors.
		{syscall.ENOENT, EIO},
		{syscall.EBADF, EIO},
		{syscall.EAGAIN, EIO},
		{syscall.EINTR, EIO},
		{syscall.ENODEV, EIO},
		{syscall.ENXIO, EIO},
		{syscall.EBADMSG, EIO},
		{syscall.ETIMEDOUT, EIO},
		{syscall.ECANCELED, EIO},
		{syscall.EFAULT, EIO},
		{syscall.Errno(4095), EIO},
		{syscall.Errno(1<<64 - 1), EIO},
	} {
		if got := ErrnoFromSys(c.in); got != c.want {
			t.Errorf("ErrnoFromSys(%d %v) = %v, want %v", uintptr(c.in), c.in, got, c.want)
		}
	}
}

// TestConstantsFromSpec pins every wire constant to the value proto.md
// gives, spelled out independently of consts.go.
func TestConstantsFromSpec(t *testing.T) {
	for _, c := range []struct {
		name      string
		got, want uint64
	}{
		{"NBDMAGIC", MagicInit, be.Uint64([]byte("NBDMAGIC"))},
		{"IHAVEOPT", MagicOpts, be.Uint64([]byte("IHAVEOPT"))},
		{"NBD_REP_MAGIC", MagicReply, 0x0003e889045565a9},
		{"NBD_REQUEST_MAGIC", MagicRequest, 0x25609513},
		{"NBD_SIMPLE_REPLY_MAGIC", MagicSimple, 0x67446698},
		{"NBD_STRUCTURED_REPLY_MAGIC", MagicStructured, 0x668e33ef},
		{"NBD_EXTENDED_REQUEST_MAGIC", MagicExtRequest, 0x21e41c71},
		{"NBD_EXTENDED_REPLY_MAGIC", MagicExtReply, 0x6e8a278c},
		{"NBD_EPERM", uint64(EPERM), 1},
		{"NBD_EIO", uint64(EIO), 5},
		{"NBD_ENOMEM", uint64(ENOMEM), 12},
		{"NBD_EINVAL", uint64(EINVAL), 22},
		{"NBD_ENOSPC", uint64(ENOSPC), 28},
		{"NBD_EOVERFLOW", uint64(EOVERFLOW), 75},
		{"NBD_ENOTSUP", uint64(ENOTSUP), 95},
		{"NBD_ESHUTDOWN", uint64(ESHUTDOWN), 108},
		{"NBD_REP_ERR_UNSUP", uint64(RepErrUnsup), 1<<31 + 1},
		{"NBD_REP_ERR_EXT_HEADER_REQD", uint64(RepErrExtHdrReqd), 1<<31 + 10},
		{"NBD_REPLY_TYPE_ERROR", uint64(ReplyError), 1<<15 + 1},
		{"NBD_REPLY_TYPE_ERROR_OFFSET", uint64(ReplyErrorOffset), 1<<15 + 2},
		{"NBD_FLAG_SEND_FAST_ZERO", uint64(TxSendFastZero), 1 << 11},
		{"NBD_CMD_FLAG_PAYLOAD_LEN", uint64(CmdFlagPayloadLen), 1 << 5},
	} {
		if c.got != c.want {
			t.Errorf("%s = %#x, want %#x", c.name, c.got, c.want)
		}
	}
}

func TestEnumStrings(t *testing.T) {
	for _, c := range []struct {
		got  string
		want string
	}{
		{OptExportName.String(), "NBD_OPT_EXPORT_NAME"},
		{OptAbort.String(), "NBD_OPT_ABORT"},
		{OptList.String(), "NBD_OPT_LIST"},
		{Opt(4).String(), "NBD_OPT_PEEK_EXPORT"},
		{OptStartTLS.String(), "NBD_OPT_STARTTLS"},
		{OptInfo.String(), "NBD_OPT_INFO"},
		{OptGo.String(), "NBD_OPT_GO"},
		{OptStructured.String(), "NBD_OPT_STRUCTURED_REPLY"},
		{OptListMeta.String(), "NBD_OPT_LIST_META_CONTEXT"},
		{OptSetMeta.String(), "NBD_OPT_SET_META_CONTEXT"},
		{OptExtendedHdrs.String(), "NBD_OPT_EXTENDED_HEADERS"},
		{Opt(0).String(), "NBD_OPT_0"},
		{Opt(12).String(), "NBD_OPT_12"},
		{Opt(1 << 31).String(), "NBD_OPT_2147483648"},

		{RepAck.String(), "NBD_REP_ACK"},
		{RepServer.String(), "NBD_REP_SERVER"},
		{RepInfo.String(), "NBD_REP_INFO"},
		{RepMetaContext.String(), "NBD_REP_META_CONTEXT"},
		{RepErrUnsup.String(), "NBD_REP_ERR_UNSUP"},
		{RepErrPolicy.String(), "NBD_REP_ERR_POLICY"},
		{RepErrInvalid.String(), "NBD_REP_ERR_INVALID"},
		{RepErrPlatform.String(), "NBD_REP_ERR_PLATFORM"},
		{RepErrTLSReqd.String(), "NBD_REP_ERR_TLS_REQD"},
		{RepErrUnknown.String(), "NBD_REP_ERR_UNKNOWN"},
		{RepErrShutdown.String(), "NBD_REP_ERR_SHUTDOWN"},
		{RepErrBlockSizeReq.String(), "NBD_REP_ERR_BLOCK_SIZE_REQD"},
		{RepErrTooBig.String(), "NBD_REP_ERR_TOO_BIG"},
		{RepErrExtHdrReqd.String(), "NBD_REP_ERR_EXT_HEADER_REQD"},
		// Unknown reply types print in hex, so the error bit stays readable.
		{Rep(0).String(), "NBD_REP_0"},
		{Rep(99).String(), "NBD_REP_63"},
		{Rep(1<<31 | 99).String(), "NBD_REP_80000063"},

		{InfoExport.String(), "NBD_INFO_EXPORT"},
		{InfoName.String(), "NBD_INFO_NAME"},
		{InfoDescription.String(), "NBD_INFO_DESCRIPTION"},
		{InfoBlockSize.String(), "NBD_INFO_BLOCK_SIZE"},
		{Info(4).String(), "NBD_INFO_4"},
		{Info(0xffff).String(), "NBD_INFO_65535"},

		{CmdRead.String(), "NBD_CMD_READ"},
		{CmdWrite.String(), "NBD_CMD_WRITE"},
		{CmdDisc.String(), "NBD_CMD_DISC"},
		{CmdFlush.String(), "NBD_CMD_FLUSH"},
		{CmdTrim.String(), "NBD_CMD_TRIM"},
		{CmdCache.String(), "NBD_CMD_CACHE"},
		{CmdWriteZeroes.String(), "NBD_CMD_WRITE_ZEROES"},
		{CmdBlockStatus.String(), "NBD_CMD_BLOCK_STATUS"},
		{CmdResize.String(), "NBD_CMD_RESIZE"},
		{Cmd(CmdCount).String(), "NBD_CMD_9"},
		{Cmd(0xffff).String(), "NBD_CMD_65535"},

		{ReplyNone.String(), "NBD_REPLY_TYPE_NONE"},
		{ReplyOffsetData.String(), "NBD_REPLY_TYPE_OFFSET_DATA"},
		{ReplyOffsetHole.String(), "NBD_REPLY_TYPE_OFFSET_HOLE"},
		{ReplyBlockStatus.String(), "NBD_REPLY_TYPE_BLOCK_STATUS"},
		{ReplyBlockStatusExt.String(), "NBD_REPLY_TYPE_BLOCK_STATUS_EXT"},
		{ReplyError.String(), "NBD_REPLY_TYPE_ERROR"},
		{ReplyErrorOffset.String(), "NBD_REPLY_TYPE_ERROR_OFFSET"},
		{ReplyType(3).String(), "NBD_REPLY_TYPE_3"},
		{ReplyType(1<<15 | 3).String(), "NBD_REPLY_TYPE_32771"},

		{EOK.String(), "OK"},
		{EPERM.String(), "EPERM"},
		{EIO.String(), "EIO"},
		{ENOMEM.String(), "ENOMEM"},
		{EINVAL.String(), "EINVAL"},
		{ENOSPC.String(), "ENOSPC"},
		{EOVERFLOW.String(), "EOVERFLOW"},
		{ENOTSUP.String(), "ENOTSUP"},
		{ESHUTDOWN.String(), "ESHUTDOWN"},
	} {
		if c.got != c.want {
			t.Errorf("String() = %q, want %q", c.got, c.want)
		}
	}
	// Errnos the protocol does not name still print as something distinct
	// from every named one.
	named := map[string]bool{}
	for _, e := range []Errno{EOK, EPERM, EIO, ENOMEM, EINVAL, ENOSPC, EOVERFLOW, ENOTSUP,
		ESHUTDOWN} {
		named[e.String()] = true
	}
	for _, e := range []Errno{2, 4, 9999, 1<<32 - 1} {
		s := e.String()
		if !strings.HasPrefix(s, "NBD_E") || len(s) <= len("NBD_E") || named[s] {
			t.Errorf("Errno(%d).String() = %q", uint32(e), s)
		}
	}
}

func TestIsErr(t *testing.T) {
	for r, want := range map[Rep]bool{RepAck: false, RepServer: false, RepInfo: false,
		RepMetaContext: false, RepErrUnsup: true, RepErrExtHdrReqd: true, 1 << 31: true} {
		if r.IsErr() != want {
			t.Errorf("%v.IsErr() = %v", r, !want)
		}
	}
	for typ, want := range map[ReplyType]bool{ReplyNone: false, ReplyOffsetData: false,
		ReplyOffsetHole: false, ReplyBlockStatus: false, ReplyBlockStatusExt: false,
		ReplyError: true, ReplyErrorOffset: true} {
		if typ.IsErr() != want {
			t.Errorf("%v.IsErr() = %v", typ, !want)
		}
	}
}
