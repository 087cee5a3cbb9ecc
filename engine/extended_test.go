package engine

import (
	"bytes"
	"encoding/binary"
	"io"
	"net"
	"os"
	"testing"
	"time"
)

// The bytes in this file are written from proto-extended-headers.md, not
// with the wire package, so that a shared misreading cannot pass.

var be64, be32, be16 = binary.BigEndian.PutUint64, binary.BigEndian.PutUint32,
	binary.BigEndian.PutUint16

type rawConn struct {
	t *testing.T
	c net.Conn
}

func (r *rawConn) write(b []byte) {
	r.t.Helper()
	if _, err := r.c.Write(b); err != nil {
		r.t.Fatal(err)
	}
}

func (r *rawConn) read(n int) []byte {
	r.t.Helper()
	b := make([]byte, n)
	if _, err := io.ReadFull(r.c, b); err != nil {
		r.t.Fatalf("read %d bytes: %v", n, err)
	}
	return b
}

// option sends "IHAVEOPT", option, length, data.
func (r *rawConn) option(opt uint32, data []byte) {
	b := make([]byte, 16+len(data))
	copy(b, "IHAVEOPT")
	be32(b[8:], opt)
	be32(b[12:], uint32(len(data)))
	copy(b[16:], data)
	r.write(b)
}

// optReply reads one option reply: magic 0x3e889045565a9, option, type,
// length, data.
func (r *rawConn) optReply(opt uint32) (typ uint32, data []byte) {
	r.t.Helper()
	h := r.read(20)
	if binary.BigEndian.Uint64(h) != 0x3e889045565a9 || binary.BigEndian.Uint32(h[8:]) != opt {
		r.t.Fatalf("bad option reply header % x", h)
	}
	return binary.BigEndian.Uint32(h[12:]), r.read(int(binary.BigEndian.Uint32(h[16:])))
}

// request sends a 32-byte extended request: magic 0x21e41c71, flags, type,
// cookie, offset, 64-bit length.
func (r *rawConn) request(flags, typ uint16, cookie, off, length uint64, payload []byte) {
	b := make([]byte, 32, 32+len(payload))
	be32(b, 0x21e41c71)
	be16(b[4:], flags)
	be16(b[6:], typ)
	be64(b[8:], cookie)
	be64(b[16:], off)
	be64(b[24:], length)
	r.write(append(b, payload...))
}

type extReply struct {
	flags, typ     uint16
	cookie, offset uint64
	payload        []byte
}

// reply reads an extended reply chunk: magic 0x6e8a278c, flags, type,
// cookie, offset, 64-bit length, payload.
func (r *rawConn) reply() extReply {
	r.t.Helper()
	h := r.read(32)
	if m := binary.BigEndian.Uint32(h); m != 0x6e8a278c {
		r.t.Fatalf("reply magic %#x, want the extended 0x6e8a278c", m)
	}
	n := binary.BigEndian.Uint64(h[24:])
	if n > 64<<20 {
		r.t.Fatalf("reply payload of %d bytes", n)
	}
	return extReply{flags: binary.BigEndian.Uint16(h[4:]), typ: binary.BigEndian.Uint16(h[6:]),
		cookie: binary.BigEndian.Uint64(h[8:]), offset: binary.BigEndian.Uint64(h[16:]),
		payload: r.read(int(n))}
}

func dialRaw(t *testing.T, sock string) *rawConn {
	c, err := net.Dial("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	_ = c.SetDeadline(time.Now().Add(20 * time.Second))
	r := &rawConn{t: t, c: c}
	g := r.read(18)
	if string(g[:16]) != "NBDMAGICIHAVEOPT" || binary.BigEndian.Uint16(g[16:])&3 != 3 {
		t.Fatalf("greeting % x", g)
	}
	r.write([]byte{0, 0, 0, 3}) // FIXED_NEWSTYLE | NO_ZEROES
	return r
}

// negotiateExtended: EXTENDED_HEADERS (11), SET_META_CONTEXT (10) for
// base:allocation on "", then GO (7) asking for NBD_INFO_BLOCK_SIZE (3).
// It returns the context ID.
func negotiateExtended(t *testing.T, r *rawConn) uint32 {
	r.option(11, nil)
	if typ, _ := r.optReply(11); typ != 1 {
		t.Fatalf("EXTENDED_HEADERS answered %#x, want ACK", typ)
	}
	q := "base:allocation"
	meta := make([]byte, 12+len(q))
	be32(meta[4:], 1) // name "" then one query
	be32(meta[8:], uint32(len(q)))
	copy(meta[12:], q)
	r.option(10, meta)
	typ, data := r.optReply(10)
	if typ != 4 || string(data[4:]) != q {
		t.Fatalf("SET_META_CONTEXT answered %#x % x", typ, data)
	}
	id := binary.BigEndian.Uint32(data)
	if typ, _ := r.optReply(10); typ != 1 {
		t.Fatalf("SET_META_CONTEXT not ended by ACK: %#x", typ)
	}
	r.option(7, []byte{0, 0, 0, 0, 0, 1, 0, 3})
	for {
		typ, data := r.optReply(7)
		if typ == 1 {
			return id
		}
		if typ != 3 || len(data) < 2 {
			t.Fatalf("GO answered %#x % x", typ, data)
		}
	}
}

// TestExtendedHeadersBytes: a 6 GiB sparse export, 64-bit effect lengths
// for WRITE_ZEROES and BLOCK_STATUS, PAYLOAD_LEN writes, offsets echoed,
// BLOCK_STATUS_EXT descriptors longer than 4 GiB, and never a simple reply.
func TestExtendedHeadersBytes(t *testing.T) {
	const size = 6 << 30
	_, sock, path := testServer(t, size, 2)
	r := dialRaw(t, sock)
	id := negotiateExtended(t, r)

	// WRITE_ZEROES (6) of 5 GiB at 0: one request, a 64-bit effect length.
	r.request(0, 6, 1, 0, 5<<30, nil)
	if rep := r.reply(); rep.typ != 0 || rep.flags != 1 || rep.cookie != 1 {
		t.Fatalf("WRITE_ZEROES reply %+v, want NONE with DONE", rep)
	}
	// WRITE (1) with PAYLOAD_LEN (1<<5) at 4 GiB + 4096.
	data := bytes.Repeat([]byte("nbdring!"), 512)
	const dataOff = 4<<30 + 4096
	r.request(1<<5, 1, 2, dataOff, uint64(len(data)), data)
	if rep := r.reply(); rep.typ != 0 || rep.cookie != 2 || rep.offset != dataOff {
		t.Fatalf("WRITE reply %+v", rep)
	}
	// BLOCK_STATUS (7) over the whole export: hole of 4 GiB + 4096 (more than
	// a 32-bit descriptor can say), 4096 of data, then hole.
	r.request(0, 7, 3, 0, size, nil)
	rep := r.reply()
	if rep.typ != 6 || rep.flags != 1 || len(rep.payload) < 8+16 {
		t.Fatalf("BLOCK_STATUS reply type %d flags %d len %d", rep.typ, rep.flags,
			len(rep.payload))
	}
	if got := binary.BigEndian.Uint32(rep.payload); got != id {
		t.Fatalf("context ID %d, want %d", got, id)
	}
	count := int(binary.BigEndian.Uint32(rep.payload[4:]))
	if 8+16*count != len(rep.payload) {
		t.Fatalf("descriptor count %d does not match length %d", count, len(rep.payload))
	}
	type ext struct{ n, flags uint64 }
	var exts []ext
	for i := 0; i < count; i++ {
		d := rep.payload[8+16*i:]
		exts = append(exts, ext{binary.BigEndian.Uint64(d), binary.BigEndian.Uint64(d[8:])})
	}
	want := []ext{{dataOff, 3}, {4096, 0}, {size - dataOff - 4096, 3}}
	if len(exts) != len(want) {
		t.Fatalf("extents %v, want %v", exts, want)
	}
	for i := range want {
		if exts[i] != want[i] {
			t.Fatalf("extents %v, want %v", exts, want)
		}
	}
	// READ (0) of 8 KiB at 4 GiB: a hole chunk (2) and a data chunk (1);
	// every chunk echoes the request's offset.
	r.request(0, 0, 4, 4<<30, 8192, nil)
	var holes, got int
	for {
		rep := r.reply()
		if rep.offset != 4<<30 || rep.cookie != 4 {
			t.Fatalf("READ chunk %+v does not echo the request", rep)
		}
		switch rep.typ {
		case 2:
			holes++
			if binary.BigEndian.Uint64(rep.payload) != 4<<30 ||
				binary.BigEndian.Uint32(rep.payload[8:]) != 4096 {
				t.Fatalf("hole chunk % x", rep.payload)
			}
		case 1:
			if binary.BigEndian.Uint64(rep.payload) != dataOff ||
				!bytes.Equal(rep.payload[8:], data) {
				t.Fatal("data chunk does not carry what was written")
			}
			got++
		default:
			t.Fatalf("READ chunk type %d", rep.typ)
		}
		if rep.flags&1 != 0 {
			break
		}
	}
	if holes != 1 || got != 1 {
		t.Fatalf("%d hole and %d data chunks, want 1 and 1", holes, got)
	}
	// WRITE without PAYLOAD_LEN sends no payload and is EINVAL (an ERROR
	// chunk, 0x8001, with errno 22), and the connection goes on.
	r.request(0, 1, 5, 0, 4096, nil)
	if rep := r.reply(); rep.typ != 0x8001 || binary.BigEndian.Uint32(rep.payload) != 22 {
		t.Fatalf("WRITE without PAYLOAD_LEN: %+v", rep)
	}
	// FLUSH (3) still answered with an extended chunk.
	r.request(0, 3, 6, 0, 0, nil)
	if rep := r.reply(); rep.typ != 0 || rep.cookie != 6 {
		t.Fatalf("FLUSH reply %+v", rep)
	}
	// The file really has the data at 4 GiB + 4096.
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	back := make([]byte, len(data))
	if _, err := f.ReadAt(back, dataOff); err != nil || !bytes.Equal(back, data) {
		t.Fatalf("file content at %d differs (%v)", dataOff, err)
	}
}

// TestExtendedNoExportName: after EXTENDED_HEADERS, NBD_OPT_EXPORT_NAME is
// a protocol violation that cannot be answered: the server closes.
func TestExtendedNoExportName(t *testing.T) {
	_, sock, _ := testServer(t, 1<<20, 1)
	r := dialRaw(t, sock)
	r.option(11, nil)
	if typ, _ := r.optReply(11); typ != 1 {
		t.Fatalf("EXTENDED_HEADERS answered %#x", typ)
	}
	r.option(1, nil)
	if _, err := io.ReadFull(r.c, make([]byte, 1)); err == nil {
		t.Fatal("server answered EXPORT_NAME after EXTENDED_HEADERS")
	}
}
