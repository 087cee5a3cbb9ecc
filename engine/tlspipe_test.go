package engine

import (
	"bytes"
	"crypto/tls"
	"encoding/binary"
	"io"
	"net"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// captureConn is a client's net.Conn whose writes, once capture is set,
// go to out instead of the socket: the test hands them to a tlsPipe.
type captureConn struct {
	net.Conn
	capture bool
	out     bytes.Buffer
}

func (c *captureConn) Write(b []byte) (int, error) {
	if c.capture {
		return c.out.Write(b)
	}
	return c.Conn.Write(b)
}

// handedOffTLS runs a TLS handshake over a socket pair, the server over a
// tlsPipe, then hands the pipe off as a shard does; the client's later
// writes are captured. sock is the server's socket: what the server
// seals into the pipe reaches the client written there.
func handedOffTLS(t *testing.T) (srv *tls.Conn, pipe *tlsPipe, client *tls.Conn,
	cc *captureConn, sock net.Conn) {
	t.Helper()
	dir, clientCfg := testPKI(t)
	srvCfg, err := LoadTLS(dir, true)
	if err != nil {
		t.Fatal(err)
	}
	clientCfg.DynamicRecordSizingDisabled = true // a write of up to 16 KiB: one record
	a, b := socketPair(t)
	for _, c := range []net.Conn{a, b} {
		t.Cleanup(func() { c.Close() })
		_ = c.SetDeadline(time.Now().Add(20 * time.Second))
	}
	pipe = newTLSPipe(a)
	srv = tls.Server(pipe, srvCfg)
	cc = &captureConn{Conn: b}
	client = tls.Client(cc, clientCfg)
	done := make(chan error, 1)
	go func() { done <- client.Handshake() }()
	if err := srv.Handshake(); err != nil {
		t.Fatalf("server handshake: %v", err)
	}
	if err := <-done; err != nil {
		t.Fatalf("client handshake: %v", err)
	}
	if err := pipe.handOff(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pipe.release)
	cc.capture = true
	return srv, pipe, client, cc, a
}

// feed appends ciphertext to the pipe's receive buffer, as onRecv does.
func (p *tlsPipe) feed(t *testing.T, b []byte) {
	t.Helper()
	if len(b) > len(p.in)-p.inHi {
		t.Fatalf("feed %d bytes: the pipe's buffer has %d free", len(b), len(p.in)-p.inHi)
	}
	p.inHi += copy(p.in[p.inHi:], b)
}

// TestCryptoTLSWouldBlock pins the crypto/tls behaviour a handed-off
// tlsPipe relies on (tls.go's top comment; crypto/tls/conn.go,
// readRecordOrCCS): when the pipe's Read returns errWouldBlock, a
// net.Error whose Temporary() is true, tls.Conn.Read returns that very
// error (tlsPump compares it with ==), only after reading the pipe dry
// (armRecvTLS asserts there is room), keeps the partial record it holds,
// and a later Read with the rest of the record returns its plaintext
// (were the error not temporary, crypto/tls would keep it and fail every
// later Read). It also pins that one record of tlsRecordPlainMax plaintext seals into at most
// tlsRecordCipherMax bytes, the room sendQueuedTLS leaves per record.
func TestCryptoTLSWouldBlock(t *testing.T) {
	srv, pipe, client, cc, _ := handedOffTLS(t)
	msg := bytes.Repeat([]byte("nbdring "), 512) // 4 KiB: one record
	if _, err := client.Write(msg); err != nil {
		t.Fatal(err)
	}
	rec := bytes.Clone(cc.out.Bytes())
	cc.out.Reset()
	if len(rec) < 5+len(msg) || 5+int(binary.BigEndian.Uint16(rec[3:])) != len(rec) {
		t.Fatalf("the client wrote %d bytes for %d of plaintext, not one record",
			len(rec), len(msg))
	}
	buf := make([]byte, 2*len(msg))
	readWouldBlock := func(when string) {
		t.Helper()
		n, err := srv.Read(buf)
		if n != 0 || err != errWouldBlock {
			t.Fatalf("%s: Read = %d, %v (%T); want 0, errWouldBlock itself", when, n, err, err)
		}
		if pipe.inLo != pipe.inHi {
			t.Fatalf("%s: would-block with %d bytes left in the pipe", when,
				pipe.inHi-pipe.inLo)
		}
	}
	readWouldBlock("nothing received")
	pipe.feed(t, rec[:3]) // part of the record header
	readWouldBlock("3 bytes of the header")
	pipe.feed(t, rec[3:5+100]) // the header and part of the payload
	readWouldBlock("header and 100 bytes of payload")
	pipe.feed(t, rec[5+100:])
	n, err := srv.Read(buf)
	if err != nil || !bytes.Equal(buf[:n], msg) {
		t.Fatalf("Read after the whole record: %d bytes (want %d), %v", n, len(msg), err)
	}
	readWouldBlock("after the record")

	pipe.outLo, pipe.outHi = 0, 0
	plain := make([]byte, tlsRecordPlainMax)
	if _, err := srv.Write(plain); err != nil {
		t.Fatal(err)
	}
	if sealed := pipe.outHi; sealed > tlsRecordCipherMax {
		t.Fatalf("a %d-byte record sealed into %d bytes; tlsRecordCipherMax is %d",
			len(plain), sealed, tlsRecordCipherMax)
	}
}

// TestTLSSeal: tlsState.seal copies a reply's iovecs into records, a
// record each time the plaintext buffer fills, keeps the tail for the
// next reply, stops while the send buffer has no room for a record (the
// cursor kept, to go on after the send), and the client reads back the
// reply's bytes in order.
func TestTLSSeal(t *testing.T) {
	srv, pipe, client, _, sock := handedOffTLS(t)
	ts := &tlsState{tc: srv, pipe: pipe}
	head := bytes.Repeat([]byte("H"), 16)
	data := make([]byte, 3*tlsRecordPlainMax+100)
	for i := range data {
		data[i] = byte(i * 7)
	}
	var sl slot
	sl.out[0] = unix.Iovec{Base: &head[0]}
	sl.out[0].SetLen(len(head))
	sl.out[1] = unix.Iovec{Base: &data[0]}
	sl.out[1].SetLen(len(data))
	sl.nout = 2
	done, err := ts.seal(&sl)
	if err != nil || !done {
		t.Fatalf("seal = %v, %v; want done", done, err)
	}
	if want := (len(head) + len(data)) % tlsRecordPlainMax; pipe.plainN != want ||
		ts.iov != 0 || ts.off != 0 {
		t.Fatalf("after seal: %d bytes of plaintext kept (want %d), cursor %d/%d (want 0/0)",
			pipe.plainN, want, ts.iov, ts.off)
	}
	if err := ts.write(); err != nil || pipe.plainN != 0 {
		t.Fatalf("write = %v, %d bytes of plaintext left", err, pipe.plainN)
	}
	if _, err := sock.Write(pipe.out[pipe.outLo:pipe.outHi]); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, len(head)+len(data))
	if _, err := io.ReadFull(client, got); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, append(head, data...)) {
		t.Fatal("the client read other bytes than the reply's")
	}

	// A send buffer without room for a record: nothing is copied.
	pipe.outLo, pipe.outHi = 0, tlsOutBufSize-tlsRecordCipherMax+1
	if done, err := ts.seal(&sl); done || err != nil || pipe.plainN != 0 || ts.iov != 0 {
		t.Fatalf("full buffer: seal = %v, %v, copied %d bytes", done, err, pipe.plainN)
	}
	// Room for one record: the reply stops after it, the cursor kept.
	pipe.outHi = tlsOutBufSize - tlsRecordCipherMax
	if done, err := ts.seal(&sl); done || err != nil || ts.iov != 1 ||
		ts.off != tlsRecordPlainMax-len(head) {
		t.Fatalf("room for one record: seal = %v, %v, cursor %d/%d; want not done, 1/%d",
			done, err, ts.iov, ts.off, tlsRecordPlainMax-len(head))
	}
}
