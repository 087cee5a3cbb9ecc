package main

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/nbdring/nbdring/wire"
)

// The flood: this many connections from one address that never
// speak, while another address must be served within floodServeMax.
const (
	floodConns    = 1000
	floodServeMax = time.Second
	// floodPerAddr is engine's handshakesPerAddrMax: the flood's share.
	floodPerAddr = 8
)

// TestE2EHalfOpenFlood: 1,000 connections from 127.0.0.1 that never
// speak get 8 handshakes (handshakesPerAddrMax) and the rest are closed
// at once, logged about once a second rather than 992 times; while the
// flood arrives and once it is all held open, 127.0.0.2 connects,
// negotiates and completes a READ within 1 s, and the server holds no
// more sockets than the handshakes it admitted.
func TestE2EHalfOpenFlood(t *testing.T) {
	t.Parallel()
	e2eNeedFDs(t, floodConns+200)
	export := e2eMakeFile(t, t.TempDir(), "export.img", 1<<20, 5)
	want := e2eReadFile(t, export)[:4096]
	s, addr := e2eStartTCP(t, export)
	t.Logf("server's open-files limit: %s", e2eNofileLimit(t, s.cmd.Process.Pid))
	var dialed atomic.Int64
	conns := make([]net.Conn, 0, floodConns) // the flood's goroutine's until done
	var floodErr error
	done := make(chan struct{})
	t.Cleanup(func() {
		<-done
		for _, c := range conns {
			c.Close()
		}
	})
	start := time.Now()
	go func() {
		defer close(done)
		d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)},
			Timeout: 5 * time.Second}
		for range floodConns {
			c, err := d.Dial("tcp", addr)
			if err != nil {
				floodErr = fmt.Errorf("flood connection %d: %w", dialed.Load(), err)
				return
			}
			conns = append(conns, c)
			dialed.Add(1)
		}
	}()
	for dialed.Load() < floodConns/2 && time.Since(start) < 5*time.Second {
		time.Sleep(time.Millisecond)
	}
	took := e2eReadFrom(t, "127.0.0.2", addr, want)
	t.Logf("during the flood (%d connections made): 127.0.0.2 read in %v", dialed.Load(), took)
	if took > floodServeMax {
		t.Errorf("127.0.0.2 took %v to connect and read during the flood; want %v at most",
			took, floodServeMax)
	}
	<-done
	if floodErr != nil {
		t.Fatal(floodErr)
	}
	floodTook := time.Since(start)
	admitted := 0
	// One deadline for all: a server that neither greets nor closes them
	// must not make this loop take a deadline per connection.
	greeted := time.Now().Add(2 * time.Second)
	for _, c := range conns {
		_ = c.SetReadDeadline(greeted)
		if n, _ := io.ReadFull(c, make([]byte, 18)); n == 18 {
			admitted++
		}
	}
	// One fewer if the start-up probe's handshake had not yet ended.
	if admitted != floodPerAddr && admitted != floodPerAddr-1 {
		t.Fatalf("%d of %d half-open connections from one address got a greeting; want %d",
			admitted, floodConns, floodPerAddr)
	}
	took = e2eReadFrom(t, "127.0.0.2", addr, want)
	t.Logf("flood of %d made in %v; with it all open, 127.0.0.2 read in %v", floodConns,
		floodTook, took)
	if took > floodServeMax {
		t.Errorf("127.0.0.2 took %v to connect and read with the flood open; want %v at "+
			"most", took, floodServeMax)
	}
	e2eFloodHeld(t, s)
	e2eWaitLog(t, s, "refusing 127.0.0.1:")
	// One line per refusalLogEvery (1 s) while the flood arrived, and the
	// first at once.
	lines := strings.Count(s.stderr.String(), "refusing 127.0.0.1:")
	if max := int(floodTook/time.Second) + 3; lines > max {
		t.Fatalf("%d refusal lines for a flood of %v; want them rate limited (at most %d)",
			lines, floodTook, max)
	}
	for _, c := range conns {
		c.Close()
	}
	// Once they are gone, 127.0.0.1 is served again.
	deadline := time.Now().Add(5 * time.Second)
	for {
		_, _, err := e2eRunErr("nbdinfo", "--size", "nbd://"+addr)
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("127.0.0.1 not served after its flood closed: %v", err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// e2eFloodHeld: the server keeps only the admitted handshakes' sockets
// of the flood, not a descriptor per connection.
func e2eFloodHeld(t *testing.T, s *e2eServer) {
	t.Helper()
	sockets := 0
	ents, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", s.cmd.Process.Pid))
	if err != nil {
		t.Fatalf("server's descriptors: %v", err)
	}
	for _, e := range ents {
		l, err := os.Readlink(fmt.Sprintf("/proc/%d/fd/%s", s.cmd.Process.Pid, e.Name()))
		if err == nil && strings.HasPrefix(l, "socket:") {
			sockets++
		}
	}
	// The listener and the admitted handshakes; the probe's and
	// 127.0.0.2's may not be closed yet.
	if sockets > 1+floodPerAddr+2 {
		t.Errorf("server holds %d sockets during a flood of %d; want at most %d", sockets,
			floodConns, 1+floodPerAddr+2)
	}
}

// e2eReadFrom connects to addr from src, negotiates the default export
// (simple replies), reads its first 4 KiB, checks them against want and
// returns how long it all took.
func e2eReadFrom(t *testing.T, src, addr string, want []byte) time.Duration {
	t.Helper()
	start := time.Now()
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}, Timeout: 5 * time.Second}
	c, err := d.Dial("tcp", addr)
	if err != nil {
		t.Fatalf("dial %s from %s: %v", addr, src, err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := wire.ClientHandshake(c, wire.ClientOptions{}); err != nil {
		t.Fatalf("handshake from %s: %v", src, err)
	}
	var req [wire.RequestSize]byte
	wire.EncodeRequest(req[:], &wire.Request{Type: wire.CmdRead, Cookie: 1,
		Length: uint64(len(want))})
	if _, err := c.Write(req[:]); err != nil {
		t.Fatalf("READ from %s: %v", src, err)
	}
	rep := make([]byte, wire.SimpleReplySize+len(want))
	if _, err := io.ReadFull(c, rep); err != nil {
		t.Fatalf("READ reply to %s: %v", src, err)
	}
	took := time.Since(start)
	if e := binary.BigEndian.Uint32(rep[4:]); e != 0 {
		t.Fatalf("READ from %s: NBD error %d", src, e)
	}
	if !bytes.Equal(rep[wire.SimpleReplySize:], want) {
		t.Fatalf("READ from %s returned other bytes than the export's", src)
	}
	var disc [wire.RequestSize]byte
	wire.EncodeRequest(disc[:], &wire.Request{Type: wire.CmdDisc})
	_, _ = c.Write(disc[:])
	return took
}

// e2eNeedFDs makes sure this process may open n descriptors, raising
// RLIMIT_NOFILE if it must (Go starts with the soft limit at the hard
// one; only root may raise the hard one), and skips if it cannot.
func e2eNeedFDs(t *testing.T, n uint64) {
	t.Helper()
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		t.Fatalf("getrlimit: %v", err)
	}
	if lim.Cur >= n {
		return
	}
	raised := syscall.Rlimit{Cur: n, Max: max(lim.Max, n)}
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &raised); err != nil {
		skipMissing(t, "rlimit", "need %d open files for the flood, RLIMIT_NOFILE "+
			"allows %d: %v (raise ulimit -n or run as root)", n, lim.Cur, err)
	}
}

// e2eNofileLimit is the "Max open files" line of pid's /proc limits.
func e2eNofileLimit(t *testing.T, pid int) string {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/limits", pid))
	if err != nil {
		t.Fatalf("server's limits: %v", err)
	}
	for _, l := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(l, "Max open files") {
			return strings.Join(strings.Fields(l)[3:], " ")
		}
	}
	return "unknown"
}
