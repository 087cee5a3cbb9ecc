package engine

import (
	"bytes"
	"math/rand"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/nbdring/nbdring/wire"
)

// zcServer serves a file of random bytes over TCP on loopback, where
// zero-copy sends are accepted (and the kernel copies anyway), and over
// a Unix socket, where they are refused.
func zcServer(t *testing.T, size int) (srv *Server, tcp, unixSock string, data []byte) {
	t.Helper()
	dir := t.TempDir()
	path := filepath.Join(dir, "img")
	data = make([]byte, size)
	rand.New(rand.NewSource(1)).Read(data)
	if err := os.WriteFile(path, data, 0o644); err != nil {
		t.Fatal(err)
	}
	exp, err := OpenExport(ExportConfig{Path: path})
	if err != nil {
		skipMissing(t, "direct-io", "cannot serve a file here: %v", err)
	}
	srv, err = New(Config{Shards: 1, ArenaSize: 128 << 20}, []*Export{exp})
	if err != nil {
		skipMissing(t, "io_uring", "engine unavailable here: %v", err)
	}
	if !srv.shards[0].ring.SendZC {
		srv.Stop()
		skipMissing(t, "kernel", "this kernel has no IORING_OP_SENDMSG_ZC")
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	unixSock = filepath.Join(dir, "sock")
	uln, err := Listen("unix:" + unixSock)
	if err != nil {
		t.Fatal(err)
	}
	errc := make(chan error, 2)
	go func() { errc <- srv.Serve(ln) }()
	go func() { errc <- srv.Serve(uln) }()
	t.Cleanup(func() {
		ln.Close()
		uln.Close()
		if err := srv.Stop(); err != nil {
			t.Errorf("stop: %v", err)
		}
		<-errc
		<-errc
	})
	return srv, ln.Addr().String(), unixSock, data
}

// zcDial connects to the server over network and returns the client
// side; for "tcp-dialed" the server is handed the dialing end of a
// loopback pair (this kernel flags only dialed TCP sockets for zero-copy:
// accepted ones refuse SENDMSG_ZC with EOPNOTSUPP).
func zcDial(t *testing.T, srv *Server, network, tcpAddr, unixSock string) net.Conn {
	t.Helper()
	var c net.Conn
	var err error
	switch network {
	case "tcp-accepted":
		c, err = net.Dial("tcp", tcpAddr)
	case "unix":
		c, err = net.Dial("unix", unixSock)
	case "tcp-dialed":
		ln, lerr := net.Listen("tcp", "127.0.0.1:0")
		if lerr != nil {
			t.Fatal(lerr)
		}
		defer ln.Close()
		d, derr := net.Dial("tcp", ln.Addr().String())
		if derr != nil {
			t.Fatal(derr)
		}
		c, err = ln.Accept()
		ip, why := srv.gate.enter(d.RemoteAddr())
		if why != "" {
			t.Fatal(why)
		}
		go srv.handshake(d, ip)
	}
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// TestZeroCopyReads: large READ replies go out zero-copy where the socket
// takes it (the kernel holds the buffers until the notification, and on
// loopback says it copied), and copied where it refuses (the same batch is
// sent again copied, once per connection); byte for byte right either
// way. A client that vanishes with zero-copy sends in flight leaves
// nothing behind.
func TestZeroCopyReads(t *testing.T) {
	const size, n = 16 << 20, 256 << 10
	srv, tcpAddr, unixSock, data := zcServer(t, size)
	st := &srv.shards[0].stats
	for _, network := range []string{"tcp-dialed", "tcp-accepted", "unix"} {
		zc0, copied0, refused0 := st.SendsZC.Load(), st.ZCCopied.Load(), st.ZCRefused.Load()
		c := zcDial(t, srv, network, tcpAddr, unixSock)
		_ = c.SetDeadline(time.Now().Add(20 * time.Second))
		if _, err := wire.ClientHandshake(c, wire.ClientOptions{BlockSize: true}); err != nil {
			t.Fatal(err)
		}
		tc := &testClient{t: t, c: c}
		buf := make([]byte, n)
		for round := 0; round < 8; round++ {
			for k := 0; k < 8; k++ {
				off := uint64((round*8+k)%(size/n)) * n
				tc.send(wire.CmdRead, 0, off, off, n, nil)
			}
			for k := 0; k < 8; k++ {
				off, errno := tc.simple(buf)
				if errno != 0 || !bytes.Equal(buf, data[off:off+n]) {
					t.Fatalf("%s: read at %d: %v, or wrong bytes", network, off, errno)
				}
			}
		}
		// Vanish with sixteen 1 MiB reads asked for and nothing read.
		for k := uint64(0); k < 16; k++ {
			tc.send(wire.CmdRead, 0, k, k<<20, 1<<20, nil)
		}
		c.Close()
		zc, copied := st.SendsZC.Load()-zc0, st.ZCCopied.Load()-copied0
		refused := st.ZCRefused.Load() - refused0
		t.Logf("%s: zero-copy sends %d, copied %d, refused %d", network, zc, copied, refused)
		switch network {
		case "tcp-dialed":
			if zc < 2 || copied == 0 || refused != 0 {
				t.Errorf("%s: want zero-copy sends, loopback notifications saying it "+
					"copied, no refusal", network)
			}
		case "unix":
			if refused != 1 {
				t.Errorf("%s: refusal counted %d times, want once", network, refused)
			}
		}
	}
	deadline := time.Now().Add(10 * time.Second)
	for srv.shards[0].snapshot().Conns() != 0 || st.Inflight.Load() != 0 || st.ArenaBytes.Load() != 0 ||
		st.OpsInflight.Load() != 1 {
		if time.Now().After(deadline) {
			t.Fatalf("leak after vanishing: %d connections, %d slots, %d arena bytes, "+
				"%d kernel ops", srv.shards[0].snapshot().Conns(), st.Inflight.Load(), st.ArenaBytes.Load(),
				st.OpsInflight.Load()-1)
		}
		time.Sleep(10 * time.Millisecond)
	}
	if st.Stale.Load() != 0 {
		t.Fatalf("%d stale completions", st.Stale.Load())
	}
}
