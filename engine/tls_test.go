package engine

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/binary"
	"encoding/pem"
	"errors"
	"io"
	"math/big"
	rand2 "math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/nbdring/nbdring/wire"
)

// testPKI writes a CA, a server certificate (localhost) and key in
// nbdring's layout to a directory, and returns it with a client
// configuration that trusts the CA and presents a client certificate.
func testPKI(t testing.TB) (dir string, client *tls.Config) {
	t.Helper()
	dir = t.TempDir()
	caKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	caT := &x509.Certificate{SerialNumber: big.NewInt(1),
		Subject:   pkix.Name{CommonName: "engine test CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	caDER, err := x509.CreateCertificate(rand.Reader, caT, caT, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	ca, _ := x509.ParseCertificate(caDER)
	leaf := func(cn string, usage x509.ExtKeyUsage, serial int64) tls.Certificate {
		key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		tmpl := &x509.Certificate{SerialNumber: big.NewInt(serial),
			Subject:   pkix.Name{CommonName: cn},
			NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
			KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{usage},
			DNSNames: []string{"localhost"}}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
		if err != nil {
			t.Fatal(err)
		}
		return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
	}
	srv := leaf("localhost", x509.ExtKeyUsageServerAuth, 2)
	keyDER, _ := x509.MarshalPKCS8PrivateKey(srv.PrivateKey)
	for name, blk := range map[string]*pemOut{
		tlsCAFile: {"CERTIFICATE", caDER}, tlsCertFile: {"CERTIFICATE", srv.Certificate[0]},
		tlsKeyFile: {"PRIVATE KEY", keyDER},
	} {
		if err := os.WriteFile(filepath.Join(dir, name), blk.encode(), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	pool := x509.NewCertPool()
	pool.AddCert(ca)
	return dir, &tls.Config{RootCAs: pool, ServerName: "localhost",
		Certificates: []tls.Certificate{leaf("engine client", x509.ExtKeyUsageClientAuth, 3)}}
}

type pemOut struct {
	typ string
	der []byte
}

func (p *pemOut) encode() []byte {
	return pem.EncodeToMemory(&pem.Block{Type: p.typ, Bytes: p.der})
}

func newTestRand(seed byte) *rand2.ChaCha8 { return rand2.NewChaCha8([32]byte{seed}) }

// testTLSServer is testServer with TLS in mode m (clients must present a
// certificate).
func testTLSServer(t testing.TB, size int64, m wire.TLSMode) (*Server, string, *tls.Config) {
	t.Helper()
	dir, client := testPKI(t)
	cfg, err := LoadTLS(dir, true)
	if err != nil {
		t.Fatal(err)
	}
	srv, sock, _ := testServerConfig(t, size, InlineOff, Config{Shards: 1,
		ArenaSize: 128 << 20, TLSMode: m, TLS: cfg})
	return srv, sock, client
}

// dialTLS connects with STARTTLS as the first option.
func dialTLS(t testing.TB, sock string, client *tls.Config, o wire.ClientOptions) *testClient {
	t.Helper()
	c, err := net.Dial("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	_ = c.SetDeadline(time.Now().Add(20 * time.Second))
	var tc *tls.Conn
	o.TLS = func(rw io.ReadWriter) (io.ReadWriter, error) {
		tc = tls.Client(c, client)
		return tc, tc.Handshake()
	}
	ex, err := wire.ClientHandshake(c, o)
	if err != nil {
		t.Fatal(err)
	}
	return &testClient{t: t, c: tc, ex: ex}
}

// TestTLSRequests: reads and writes over TLS from 512 bytes to 32 MiB
// (far above the 256 KiB send buffer, so a reply is encrypted in many
// rounds), and 64 pipelined 4 KiB requests whose replies share sends.
func TestTLSRequests(t *testing.T) {
	srv, sock, client := testTLSServer(t, 64<<20, wire.TLSRequire)
	tc := dialTLS(t, sock, client, wire.ClientOptions{})
	rng := newTestRand(1)
	for _, n := range []int{512, 4 << 10, 100 << 10, 1 << 20, 32 << 20} {
		data := make([]byte, n)
		rng.Read(data)
		if errno := tc.do(wire.CmdWrite, 0, 4096, uint32(n), data, nil); errno != 0 {
			t.Fatalf("write %d: %v", n, errno)
		}
		got := make([]byte, n)
		if errno := tc.do(wire.CmdRead, 0, 4096, uint32(n), nil, got); errno != 0 {
			t.Fatalf("read %d: %v", n, errno)
		}
		if !bytes.Equal(got, data) {
			t.Fatalf("read back %d bytes: different", n)
		}
	}
	const depth = 64
	var reqs bytes.Buffer
	for i := 0; i < depth; i++ {
		var r [wire.RequestSize]byte
		wire.EncodeRequest(r[:], &wire.Request{Type: wire.CmdRead, Cookie: uint64(i),
			Offset: uint64(i) * 4096, Length: 4096})
		reqs.Write(r[:])
	}
	if _, err := tc.c.Write(reqs.Bytes()); err != nil {
		t.Fatal(err)
	}
	seen := map[uint64]bool{}
	buf := make([]byte, 4096)
	for i := 0; i < depth; i++ {
		cookie, errno := tc.simple(buf)
		if errno != 0 || seen[cookie] || cookie >= depth {
			t.Fatalf("pipelined reply %d: cookie %d errno %v", i, cookie, errno)
		}
		seen[cookie] = true
	}
	// A clean close: close_notify right after a 32 MiB READ still gets
	// the whole reply (sent in many rounds after its slot is released),
	// then the server's close_notify (io.EOF, not an error).
	big := make([]byte, 32<<20)
	tc.send(wire.CmdRead, 0, 9, 4096, uint32(len(big)), nil)
	if err := tc.c.(*tls.Conn).CloseWrite(); err != nil {
		t.Fatal(err)
	}
	if cookie, errno := tc.simple(big); cookie != 9 || errno != 0 {
		t.Fatalf("READ before close_notify: cookie %d errno %v", cookie, errno)
	}
	if n, err := tc.c.Read(buf); n != 0 || err != io.EOF {
		t.Fatalf("after close_notify: %d bytes, %v; want io.EOF", n, err)
	}
	waitConns(t, srv, 0)
	if s := srv.shards[0].stats.Stale.Load(); s != 0 {
		t.Fatalf("%d stale completions", s)
	}
}

// TestTLSPipelinedFlood: 512 small WRITEs and READs sent in one stream
// while replies are read: the staging buffer fills with plaintext that
// crypto/tls still holds (the "more" path), requests wait for slots
// (128 per connection), and many replies share each send.
func TestTLSPipelinedFlood(t *testing.T) {
	_, sock, client := testTLSServer(t, 16<<20, wire.TLSRequire)
	tc := dialTLS(t, sock, client, wire.ClientOptions{})
	const n, size = 512, 4096
	want := make([]byte, n*size)
	newTestRand(2).Read(want)
	var writes, reads bytes.Buffer
	for i := 0; i < n; i++ {
		var r [wire.RequestSize]byte
		wire.EncodeRequest(r[:], &wire.Request{Type: wire.CmdWrite, Cookie: uint64(i),
			Offset: uint64(i) * size, Length: size})
		writes.Write(r[:])
		writes.Write(want[i*size : (i+1)*size])
		wire.EncodeRequest(r[:], &wire.Request{Type: wire.CmdRead, Cookie: uint64(i),
			Offset: uint64(i) * size, Length: size})
		reads.Write(r[:])
	}
	buf := make([]byte, size)
	for _, phase := range []*bytes.Buffer{&writes, &reads} {
		errc := make(chan error, 1)
		go func() { _, err := tc.c.Write(phase.Bytes()); errc <- err }()
		seen := map[uint64]bool{}
		for i := 0; i < n; i++ {
			if _, err := io.ReadFull(tc.c, tc.hdr[:wire.SimpleReplySize]); err != nil {
				t.Fatalf("reply %d: %v", i, err)
			}
			cookie := binary.BigEndian.Uint64(tc.hdr[8:])
			if e := binary.BigEndian.Uint32(tc.hdr[4:]); e != 0 || cookie >= n || seen[cookie] {
				t.Fatalf("reply %d: cookie %d, errno %d", i, cookie, e)
			}
			seen[cookie] = true
			if phase == &reads {
				if _, err := io.ReadFull(tc.c, buf); err != nil {
					t.Fatal(err)
				}
				if !bytes.Equal(buf, want[cookie*size:(cookie+1)*size]) {
					t.Fatalf("read %d: different data", cookie)
				}
			}
		}
		if err := <-errc; err != nil {
			t.Fatal(err)
		}
	}
}

// waitConns waits until the server has n connections attached.
func waitConns(t testing.TB, srv *Server, n int64) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		var got int64
		for _, sh := range srv.shards {
			got += sh.m.connCount()
		}
		if got == n {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d connections attached, want %d", got, n)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestTLSBrokenClients: a client that vanishes mid-record, one that sends
// a corrupt record, and one that sends plaintext NBD after the TLS
// handshake are each disconnected, their memory released, and a client
// beside them keeps working.
func TestTLSBrokenClients(t *testing.T) {
	srv, sock, client := testTLSServer(t, 1<<20, wire.TLSOn)
	good := dialTLS(t, sock, client, wire.ClientOptions{})
	for _, c := range []struct {
		name string
		raw  []byte // written to the socket under TLS
	}{
		{"vanishes mid-record", []byte{0x17, 0x03, 0x03, 0x01, 0x00, 1, 2, 3}},
		{"corrupt record", append([]byte{0x17, 0x03, 0x03, 0x00, 0x20}, make([]byte, 32)...)},
		{"plaintext request", make([]byte, wire.RequestSize)},
	} {
		bad := dialTLS(t, sock, client, wire.ClientOptions{})
		waitConns(t, srv, 2)
		raw := bad.c.(*tls.Conn).NetConn()
		if _, err := raw.Write(c.raw); err != nil {
			t.Fatal(err)
		}
		if c.name == "vanishes mid-record" {
			raw.Close()
		}
		waitConns(t, srv, 1)
		if errno := good.do(wire.CmdRead, 0, 0, 4096, nil, make([]byte, 4096)); errno != 0 {
			t.Fatalf("%s: the other client's read: %v", c.name, errno)
		}
	}
}

// TestTLSPipelinedAfterStartTLS: bytes a client sends right after
// NBD_OPT_STARTTLS, in the same write, belong to TLS; here they are an
// NBD_OPT_GO, which must never be answered: the server acknowledges
// STARTTLS, fails the TLS handshake on them and closes.
func TestTLSPipelinedAfterStartTLS(t *testing.T) {
	_, sock, _ := testTLSServer(t, 1<<20, wire.TLSOn)
	c, err := net.Dial("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	greet := make([]byte, wire.GreetingSize)
	if _, err := io.ReadFull(c, greet); err != nil {
		t.Fatal(err)
	}
	opt := func(o wire.Opt, data []byte) []byte {
		b := binary.BigEndian.AppendUint64(nil, wire.MagicOpts)
		b = binary.BigEndian.AppendUint32(b, uint32(o))
		b = binary.BigEndian.AppendUint32(b, uint32(len(data)))
		return append(b, data...)
	}
	goData := []byte{0, 0, 0, 0, 0, 0} // default export, no info requests
	msg := append([]byte{0, 0, 0, 3}, opt(wire.OptStartTLS, nil)...)
	msg = append(msg, opt(wire.OptGo, goData)...)
	if _, err := c.Write(msg); err != nil {
		t.Fatal(err)
	}
	rest, err := io.ReadAll(c)
	if err != nil && !errors.Is(err, net.ErrClosed) && !isReset(err) {
		t.Fatalf("read after STARTTLS: %v", err)
	}
	ack := make([]byte, wire.OptionReplyHeadSize)
	binary.BigEndian.PutUint64(ack, wire.MagicReply)
	binary.BigEndian.PutUint32(ack[8:], uint32(wire.OptStartTLS))
	binary.BigEndian.PutUint32(ack[12:], uint32(wire.RepAck))
	if !bytes.HasPrefix(rest, ack) {
		t.Fatalf("no STARTTLS ACK first: % x", rest)
	}
	// What follows may be a TLS alert, never an option reply.
	if after := rest[len(ack):]; bytes.Contains(after, ack[:8]) {
		t.Fatalf("the pipelined GO was answered in plaintext: % x", after)
	}
}

func isReset(err error) bool {
	var op *net.OpError
	return errors.As(err, &op) && op.Err != nil && (bytes.Contains([]byte(op.Err.Error()),
		[]byte("reset")))
}

// tlsAllocsPerRequestMax bounds TestTLSAllocationsPerRequest. The engine
// allocates nothing per request (plaintext's zero is
// TestRequestPathAllocations'); crypto/tls (Go 1.26) allocates one
// atLeastReader in each readFromUntil (crypto/tls/conn.go), that is in each
// Conn.Read that finds no whole record buffered. Per request that is
// three, measured with -memprofilerate=1 (all in readFromUntil): two in the
// shard's tlsPump (the request's record, then the read that reports would
// block) and one in the test's client (the reply's record).
const tlsAllocsPerRequestMax = 3

// TestTLSAllocationsPerRequest bounds the TLS request path's allocations:
// server and client share the process, so every malloc of either counts,
// and one more per request on the shard's TLS path fails it. Each request
// goes out as one record (header and payload in one Write), so the shard
// never receives half of it and pumps twice (which would be four).
func TestTLSAllocationsPerRequest(t *testing.T) {
	_, sock, client := testTLSServer(t, 16<<20, wire.TLSRequire)
	tc := dialTLS(t, sock, client, wire.ClientOptions{BlockSize: true})
	data := bytes.Repeat([]byte{0xa5}, 4096)
	buf := make([]byte, 4096)
	write := make([]byte, wire.RequestSize+len(data))
	wire.EncodeRequest(write, &wire.Request{Type: wire.CmdWrite, Cookie: 7, Offset: 8192,
		Length: uint64(len(data))})
	copy(write[wire.RequestSize:], data)
	read := make([]byte, wire.RequestSize)
	wire.EncodeRequest(read, &wire.Request{Type: wire.CmdRead, Cookie: 7, Offset: 8192,
		Length: uint64(len(buf))})
	oneRecord := func(req, reply []byte) func() {
		return func() {
			if _, err := tc.c.Write(req); err != nil {
				t.Fatal(err)
			}
			if cookie, errno := tc.simple(reply); cookie != 7 || errno != 0 {
				t.Fatalf("reply: cookie %d, error %v; want 7, none", cookie, errno)
			}
		}
	}
	for _, c := range []struct {
		name string
		run  func()
	}{
		{"write4k", oneRecord(write, nil)},
		{"read4k", oneRecord(read, buf)},
	} {
		c.run() // warm up
		allocs := testing.AllocsPerRun(200, c.run)
		t.Logf("%s over TLS: %v allocations per request (client and server)", c.name, allocs)
		if allocs > tlsAllocsPerRequestMax {
			t.Errorf("%s over TLS: %v allocations per request, want at most %d (see "+
				"tlsAllocsPerRequestMax)", c.name, allocs, tlsAllocsPerRequestMax)
		}
	}
	if !bytes.Equal(buf, data) {
		t.Fatal("read back different data")
	}
}

// BenchmarkTLSRequest is BenchmarkRequest over TLS 1.3.
func BenchmarkTLSRequest(b *testing.B) {
	_, sock, client := testTLSServer(b, 64<<20, wire.TLSRequire)
	tc := dialTLS(b, sock, client, wire.ClientOptions{BlockSize: true})
	_ = tc.c.SetDeadline(time.Time{}) // the whole run may take longer than dial's 20 s
	benchRoundTrips(b, tc)
}

// TestTLS12: a TLS 1.2 client (the spec's minimum) is served too; its
// records carry more overhead than 1.3's, within tlsRecordCipherMax.
func TestTLS12(t *testing.T) {
	_, sock, client := testTLSServer(t, 8<<20, wire.TLSRequire)
	client.MaxVersion = tls.VersionTLS12
	tc := dialTLS(t, sock, client, wire.ClientOptions{Structured: true})
	if v := tc.c.(*tls.Conn).ConnectionState().Version; v != tls.VersionTLS12 {
		t.Fatalf("negotiated %s, want TLS 1.2", tls.VersionName(v))
	}
	data := make([]byte, 4<<20)
	newTestRand(3).Read(data)
	if errno := tc.do(wire.CmdWrite, 0, 0, uint32(len(data)), data, nil); errno != 0 {
		t.Fatal(errno)
	}
	// A structured READ reply: chunk header and data gathered into records.
	tc.send(wire.CmdRead, 0, 5, 0, uint32(len(data)), nil)
	var rep wire.Reply
	buf := make([]byte, wire.ExtReplySize)
	got := make([]byte, 0, len(data))
	for {
		if err := wire.ReadReplyHeader(tc.c, buf, &rep); err != nil {
			t.Fatal(err)
		}
		if rep.Type == wire.ReplyOffsetData {
			chunk := make([]byte, rep.Length)
			if _, err := io.ReadFull(tc.c, chunk); err != nil {
				t.Fatal(err)
			}
			got = append(got, chunk[8:]...) // after the offset
		} else if rep.Length > 0 {
			t.Fatalf("unexpected chunk %v", rep.Type)
		}
		if rep.Flags&wire.ReplyFlagDone != 0 {
			break
		}
	}
	if !bytes.Equal(got, data) {
		t.Fatalf("read back %d bytes over TLS 1.2: different", len(got))
	}
}
