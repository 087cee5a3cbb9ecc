package wire

import (
	"bytes"
	"errors"
	"io"
	"net"
	"strings"
	"testing"
	"time"
)

// serverEnd is how the server side of a piped handshake ended.
type serverEnd struct {
	result Negotiated
	step   Step
	reason string
	err    error
}

// afterHandshake is what the test server sends once it enters the
// transmission phase: the client must find exactly it next on the wire,
// which proves the handshake left no stray bytes (such as zero padding).
var afterHandshake = []byte("TRANSMISSION")

// pipeServe runs the server side of a handshake over c, as the engine does
// around ServerHandshake, and reports how it ended.
func pipeServe(c net.Conn, exports []Export, done chan<- serverEnd) {
	defer c.Close()
	h := NewServerHandshake(exports)
	end := func(step Step, err error) {
		done <- serverEnd{h.Result, step, h.CloseReason(), err}
	}
	if _, err := c.Write(h.Greeting()); err != nil {
		end(StepClose, err)
		return
	}
	var hdr [OptionHeaderSize]byte
	if _, err := io.ReadFull(c, hdr[:4]); err != nil {
		end(StepClose, err)
		return
	}
	if err := h.ClientFlags(hdr[:4]); err != nil {
		end(StepClose, err)
		return
	}
	for {
		if _, err := io.ReadFull(c, hdr[:]); err != nil {
			end(StepClose, err)
			return
		}
		opt, n, err := h.OptionHeader(hdr[:])
		if err != nil {
			end(StepClose, err)
			return
		}
		data := make([]byte, n)
		if _, err := io.ReadFull(c, data); err != nil {
			end(StepClose, err)
			return
		}
		out, step := h.Option(opt, data)
		if _, err := c.Write(out); err != nil {
			end(StepClose, err)
			return
		}
		switch step {
		case StepServe:
			_, err := c.Write(afterHandshake)
			end(step, err)
			return
		case StepClose:
			end(step, nil)
			return
		}
	}
}

// pipe starts a server over net.Pipe and returns the client's end; the
// deadline only keeps a broken handshake from hanging the test.
func pipe(t *testing.T, exports []Export) (net.Conn, <-chan serverEnd) {
	t.Helper()
	a, b := net.Pipe()
	deadline := time.Now().Add(10 * time.Second)
	a.SetDeadline(deadline)
	b.SetDeadline(deadline)
	done := make(chan serverEnd, 1)
	go pipeServe(b, exports, done)
	t.Cleanup(func() { a.Close() })
	return a, done
}

func TestClientHandshakeAgainstServer(t *testing.T) {
	blocks := ClientExport{BlockMin: 512, BlockPreferred: 4096, BlockMax: 32 << 20}
	for _, c := range []struct {
		name   string
		o      ClientOptions
		ex     ClientExport
		result Negotiated
	}{
		{"GO", ClientOptions{},
			withSize(blocks, 0x100000, 0x000d, false),
			Negotiated{Export: 0, Flags: 0x000d}},
		{"GO with block size", ClientOptions{BlockSize: true},
			withSize(blocks, 0x100000, 0x000d, false),
			Negotiated{Export: 0, Flags: 0x000d, BlockSizeAsked: true}},
		{"GO ro", ClientOptions{Name: "ro"},
			ClientExport{Size: 0x2000, Flags: 0x0003, BlockMin: 1, BlockPreferred: 4096,
				BlockMax: 32 << 20},
			Negotiated{Export: 1, Flags: 0x0003}},
		{"GO structured", ClientOptions{Structured: true, BlockSize: true},
			withSize(blocks, 0x100000, 0x008d, true),
			Negotiated{Export: 0, Flags: 0x008d, Structured: true, BlockSizeAsked: true}},
		{"EXPORT_NAME", ClientOptions{ExportName: true, Name: "ro"},
			ClientExport{Size: 0x2000, Flags: 0x0003},
			Negotiated{Export: 1, Flags: 0x0003}},
		{"EXPORT_NAME structured", ClientOptions{ExportName: true, Structured: true},
			ClientExport{Size: 0x100000, Flags: 0x008d, Structured: true},
			Negotiated{Export: 0, Flags: 0x008d, Structured: true}},
		{"GO base:allocation", ClientOptions{Structured: true, BaseAllocation: true},
			func() ClientExport {
				ex := withSize(blocks, 0x100000, 0x008d, true)
				ex.MetaID = MetaIDBaseAllocation
				return ex
			}(),
			Negotiated{Export: 0, Flags: 0x008d, Structured: true, BaseAllocation: true}},
	} {
		t.Run(c.name, func(t *testing.T) {
			conn, done := pipe(t, hsExports())
			ex, err := ClientHandshake(conn, c.o)
			if err != nil {
				t.Fatalf("ClientHandshake: %v", err)
			}
			if ex != c.ex {
				t.Fatalf("export %+v, want %+v", ex, c.ex)
			}
			next := make([]byte, len(afterHandshake))
			if _, err := io.ReadFull(conn, next); err != nil ||
				!bytes.Equal(next, afterHandshake) {
				t.Fatalf("after the handshake the client reads %q (%v), want %q", next, err,
					afterHandshake)
			}
			end := <-done
			if end.err != nil || end.step != StepServe || end.result != c.result {
				t.Fatalf("server: %+v, want Result %+v", end, c.result)
			}
			if ex.Style() != end.result.Style() {
				t.Fatalf("client style %v, server style %v", ex.Style(), end.result.Style())
			}
		})
	}
}

func withSize(ex ClientExport, size uint64, flags TxFlags, structured bool) ClientExport {
	ex.Size, ex.Flags, ex.Structured = size, flags, structured
	return ex
}

func TestClientHandshakeUnknownExport(t *testing.T) {
	conn, done := pipe(t, hsExports())
	_, err := ClientHandshake(conn, ClientOptions{Name: "nope", BlockSize: true})
	var oe *OptionError
	if !errors.As(err, &oe) || oe.Opt != OptGo || oe.Rep != RepErrUnknown {
		t.Fatalf("err %v, want an OptionError for GO with ERR_UNKNOWN", err)
	}
	for _, s := range []string{"NBD_OPT_GO", "NBD_REP_ERR_UNKNOWN", "nope"} {
		if !strings.Contains(err.Error(), s) {
			t.Errorf("error %q does not mention %s", err, s)
		}
	}
	conn.Close() // the server is waiting for the next option
	if end := <-done; end.step == StepServe {
		t.Fatalf("server entered transmission: %+v", end)
	}
}

func TestClientList(t *testing.T) {
	conn, done := pipe(t, hsExports())
	names, err := ClientList(conn)
	if err != nil || len(names) != 2 || names[0] != "" || names[1] != "ro" {
		t.Fatalf("ClientList = %q, %v", names, err)
	}
	end := <-done
	if end.err != nil || end.step != StepClose || !strings.Contains(end.reason, "ABORT") {
		t.Fatalf("server after LIST: %+v, want a close after NBD_OPT_ABORT", end)
	}
	conn2, _ := pipe(t, nil)
	if names, err := ClientList(conn2); err != nil || len(names) != 0 {
		t.Fatalf("ClientList of no exports = %q, %v", names, err)
	}
}

// scripted is a server that is only bytes: the client reads in and its
// writes are collected in out.
type scripted struct {
	in  *bytes.Reader
	out bytes.Buffer
}

func (s *scripted) Read(p []byte) (int, error)  { return s.in.Read(p) }
func (s *scripted) Write(p []byte) (int, error) { return s.out.Write(p) }

func script(parts ...[]byte) *scripted { return &scripted{in: bytes.NewReader(cat(parts...))} }

var greeting = cat([]byte("NBDMAGICIHAVEOPT"), u16b(3))

func TestClientSendsSpecBytes(t *testing.T) {
	// GO "ro" asking for block sizes: flags, then IHAVEOPT, 7, length 10,
	// name length 2, "ro", one info request, NBD_INFO_BLOCK_SIZE.
	s := script(greeting,
		repMsg(7, 3, cat(u16b(0x42), []byte("unknown info item"))), // ignored
		repMsg(7, 3, cat(u16b(0), u64b(1<<40), u16b(0x0105))),
		repMsg(7, 3, cat(u16b(3), u32b(4096), u32b(65536), u32b(1<<20))),
		repMsg(7, 1, nil))
	ex, err := ClientHandshake(s, ClientOptions{Name: "ro", BlockSize: true})
	if err != nil {
		t.Fatal(err)
	}
	want := ClientExport{Size: 1 << 40, Flags: 0x0105, BlockMin: 4096,
		BlockPreferred: 65536, BlockMax: 1 << 20}
	if ex != want {
		t.Fatalf("export %+v, want %+v", ex, want)
	}
	sent := hexBytes(t, "00000003 49484156454f5054 00000007 0000000a 00000002 726f 0001 0003")
	if !bytes.Equal(s.out.Bytes(), sent) {
		t.Fatalf("client sent\n% x\nwant\n% x", s.out.Bytes(), sent)
	}
	// EXPORT_NAME "ro": the option, then exactly 10 bytes read.
	s = script(greeting, u64b(4096), u16b(3), []byte("tail"))
	ex, err = ClientHandshake(s, ClientOptions{Name: "ro", ExportName: true})
	if err != nil || ex != (ClientExport{Size: 4096, Flags: 3}) || s.in.Len() != 4 {
		t.Fatalf("EXPORT_NAME: %+v %v, %d bytes left", ex, err, s.in.Len())
	}
	sent = hexBytes(t, "00000003 49484156454f5054 00000001 00000002 726f")
	if !bytes.Equal(s.out.Bytes(), sent) {
		t.Fatalf("client sent\n% x\nwant\n% x", s.out.Bytes(), sent)
	}
	// GO "" without block sizes: zero info requests.
	s = script(greeting, repMsg(7, 1, nil))
	if _, err := ClientHandshake(s, ClientOptions{}); err != nil {
		t.Fatal(err)
	}
	sent = hexBytes(t, "00000003 49484156454f5054 00000007 00000006 00000000 0000")
	if !bytes.Equal(s.out.Bytes(), sent) {
		t.Fatalf("client sent\n% x\nwant\n% x", s.out.Bytes(), sent)
	}
}

func TestClientRejectsBadServers(t *testing.T) {
	for _, c := range []struct {
		name string
		s    *scripted
		o    ClientOptions
	}{
		{"no greeting", script(), ClientOptions{}},
		{"short greeting", script([]byte("NBDMAGICIHAVE")), ClientOptions{}},
		{"oldstyle magic", script([]byte("NBDMAGIC"), u64b(0x00420281861253), u16b(3)),
			ClientOptions{}},
		{"not fixed newstyle", script([]byte("NBDMAGICIHAVEOPT"), u16b(2)), ClientOptions{}},
		{"no NO_ZEROES", script([]byte("NBDMAGICIHAVEOPT"), u16b(1)), ClientOptions{}},
		{"reply to another option", script(greeting, repMsg(3, 1, nil)), ClientOptions{}},
		{"reply with bad magic", script(greeting, cat(u64b(1), u32b(7), u32b(1), u32b(0))),
			ClientOptions{}},
		{"reply too long", script(greeting, cat(u64b(MagicReply), u32b(7), u32b(3),
			u32b(OptionDataMax+1)), cat(u16b(0x42), make([]byte, OptionDataMax-1)),
			repMsg(7, 1, nil)), ClientOptions{}},
		{"reply cut short", script(greeting, repMsg(7, 3, infoExportRO)[:25]),
			ClientOptions{}},
		{"no ACK", script(greeting, repMsg(7, 3, infoExportRO)), ClientOptions{}},
		{"GO refused", script(greeting, repMsg(7, nRepErrUnsup, []byte("no GO"))),
			ClientOptions{}},
		{"EXPORT_NAME cut short", script(greeting, u64b(4096)),
			ClientOptions{ExportName: true}},
		{"STRUCTURED_REPLY cut short", script(greeting), ClientOptions{Structured: true}},
	} {
		if ex, err := ClientHandshake(c.s, c.o); err == nil {
			t.Errorf("%s: accepted, %+v", c.name, ex)
		}
	}
	if _, err := ClientList(script(greeting, repMsg(3, nRepErrInvalid, []byte("x")))); err ==
		nil {
		t.Error("ClientList accepted an error reply")
	}
}

func TestClientStructuredRefused(t *testing.T) {
	// A server may answer STRUCTURED_REPLY with ERR_UNSUP: then simple
	// replies, and the handshake goes on.
	s := script(greeting, repMsg(8, nRepErrUnsup, nil), repMsg(7, 3, infoExportRO),
		repMsg(7, 1, nil))
	ex, err := ClientHandshake(s, ClientOptions{Structured: true})
	if err != nil || ex.Structured || ex.Style() != StyleSimple || ex.Size != 0x2000 {
		t.Fatalf("%+v %v", ex, err)
	}
}

func TestReadReplyHeaderTable(t *testing.T) {
	for _, c := range []struct {
		name    string
		in      string
		want    Reply
		err     error
		payload int // bytes left unread
	}{
		{"simple ok", "67446698 00000000 0000000000000001 aabbcc",
			Reply{Cookie: 1}, nil, 3},
		{"simple EIO", "67446698 00000005 ffffffffffffffff",
			Reply{Errno: EIO, Cookie: 1<<64 - 1}, nil, 0},
		{"simple unknown errno", "67446698 0000ffff 0000000000000002",
			Reply{Errno: 0xffff, Cookie: 2}, nil, 0},
		{"chunk offset data", "668e33ef 0000 0001 0000000000000003 00001008 00",
			Reply{Structured: true, Type: ReplyOffsetData, Cookie: 3, Length: 0x1008}, nil, 1},
		{"chunk none done", "668e33ef 0001 0000 0000000000000004 00000000",
			Reply{Structured: true, Flags: ReplyFlagDone, Type: ReplyNone, Cookie: 4}, nil, 0},
		{"chunk error", "668e33ef 0001 8001 0000000000000005 00000006 00000016 0000",
			Reply{Structured: true, Flags: 1, Type: ReplyError, Cookie: 5, Length: 6}, nil, 6},
		{"chunk max length", "668e33ef ffff 0005 0000000000000006 ffffffff",
			Reply{Structured: true, Flags: 0xffff, Type: ReplyBlockStatus, Cookie: 6,
				Length: 1<<32 - 1}, nil, 0},
		{"extended chunk", "6e8a278c 0001 0006 0000000000000007 0000000000002000 " +
			"0000000100000000",
			Reply{Structured: true, Flags: 1, Type: ReplyBlockStatusExt, Cookie: 7,
				Offset: 0x2000, Length: 1 << 32}, nil, 0},
		{"request magic", "25609513 00000000 0000000000000000", Reply{}, ErrReplyMagic, 0},
		{"zero magic", "00000000 00000000 0000000000000000", Reply{}, ErrReplyMagic, 0},
		{"swapped simple magic", "98664467 00000000 0000000000000000", Reply{},
			ErrReplyMagic, 0},
		{"empty", "", Reply{}, io.EOF, 0},
		{"simple cut short", "67446698 0000", Reply{}, io.ErrUnexpectedEOF, 0},
		{"chunk cut short", "668e33ef 0001 0000 0000000000000004 0000", Reply{},
			io.ErrUnexpectedEOF, 0},
		{"extended cut short", "6e8a278c 0001 0000 0000000000000004 0000000000000000",
			Reply{}, io.ErrUnexpectedEOF, 0},
	} {
		r := bytes.NewReader(hexBytes(t, c.in))
		buf := make([]byte, ExtReplySize)
		got := Reply{Cookie: 99, Errno: 99, Length: 99} // stale values must not survive
		err := ReadReplyHeader(r, buf, &got)
		if !errors.Is(err, c.err) {
			t.Errorf("%s: err %v, want %v", c.name, err, c.err)
			continue
		}
		if c.err != nil {
			continue
		}
		if got != c.want || r.Len() != c.payload {
			t.Errorf("%s: %+v with %d bytes left, want %+v with %d", c.name, got, r.Len(),
				c.want, c.payload)
		}
	}
}

func TestOptionErrorMessage(t *testing.T) {
	e := &OptionError{Opt: OptSetMeta, Rep: RepErrTooBig, Message: "too many queries"}
	want := "nbd: server answered NBD_OPT_SET_META_CONTEXT with NBD_REP_ERR_TOO_BIG: " +
		"too many queries"
	if e.Error() != want {
		t.Fatalf("%q, want %q", e.Error(), want)
	}
}

func TestClientExportStyle(t *testing.T) {
	for _, c := range []struct {
		ex   ClientExport
		want ReplyStyle
	}{
		{ClientExport{}, StyleSimple},
		{ClientExport{Structured: true}, StyleStructured},
		{ClientExport{Extended: true}, StyleExtended},
		{ClientExport{Structured: true, Extended: true}, StyleExtended},
	} {
		if got := c.ex.Style(); got != c.want {
			t.Errorf("%+v: %v, want %v", c.ex, got, c.want)
		}
	}
}
