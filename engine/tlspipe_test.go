package engine

import (
	"bytes"
	"crypto/tls"
	"encoding/binary"
	"net"
	"testing"
	"time"
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
// writes are captured.
func handedOffTLS(t *testing.T) (*tls.Conn, *tlsPipe, *tls.Conn, *captureConn) {
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
	pipe := newTLSPipe(a)
	srv := tls.Server(pipe, srvCfg)
	cc := &captureConn{Conn: b}
	client := tls.Client(cc, clientCfg)
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
	return srv, pipe, client, cc
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
	srv, pipe, client, cc := handedOffTLS(t)
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
