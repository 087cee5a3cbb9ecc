package main

import (
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"os/exec"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nbdring/nbdring/wire"
)

// The hostile tenants' load (issue 16): clients that never read their
// replies, stall in a request header or a WRITE payload, or trickle a
// request a byte at a time, all at once against one 2-shard server.
const (
	hostileUnread  = 12  // connections pipelining 1 MiB READs, never reading
	hostileReads   = 128 // READs each of them pipelines
	hostileStalled = 4   // of each other kind
	hostileVictims = 2   // QD1 4 KiB readers whose latency must hold
	hostileSamples = 300 // READs each victim times, alone and under load
)

// e2eHostileDial connects with a receive buffer of 4 KiB (set before
// connect, so the window stays tiny) and negotiates simple replies.
func e2eHostileDial(t *testing.T, addr string) net.Conn {
	t.Helper()
	d := net.Dialer{Timeout: 5 * time.Second, Control: func(_, _ string,
		rc syscall.RawConn) error {
		var err error
		_ = rc.Control(func(fd uintptr) {
			err = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, 4096)
		})
		return err
	}}
	c, err := d.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := wire.ClientHandshake(c, wire.ClientOptions{BlockSize: true}); err != nil {
		t.Fatalf("handshake: %v", err)
	}
	_ = c.SetDeadline(time.Time{})
	return c
}

// e2eHostiles starts every kind of hostile client against addr and
// returns them by kind. The slow-loris writers trickle until done closes.
func e2eHostiles(t *testing.T, addr string, done <-chan struct{}) map[string][]net.Conn {
	t.Helper()
	h := map[string][]net.Conn{}
	for range hostileUnread {
		c := e2eHostileDial(t, addr)
		var reqs []byte
		for i := range uint64(hostileReads) {
			reqs = append(reqs, e2eRequest(wire.CmdRead, i, i%32<<20, 1<<20)...)
		}
		if _, err := c.Write(reqs); err != nil {
			t.Fatal(err)
		}
		h["unread"] = append(h["unread"], c)
	}
	for range hostileStalled {
		c := e2eDialNBD(t, addr)
		half := e2eRequest(wire.CmdRead, 1, 0, 4096)[:wire.RequestSize/2]
		if _, err := c.Write(half); err != nil {
			t.Fatal(err)
		}
		h["header"] = append(h["header"], c)
		h["payload"] = append(h["payload"], e2eStalledWriter(t, addr))
		c = e2eDialNBD(t, addr)
		msg := append(e2eRequest(wire.CmdWrite, 1, 0, 4096), make([]byte, 4096)...)
		go func() {
			for _, b := range msg {
				select {
				case <-done:
					return
				case <-time.After(100 * time.Millisecond):
				}
				if _, err := c.Write([]byte{b}); err != nil {
					return
				}
			}
		}()
		h["slow-loris"] = append(h["slow-loris"], c)
	}
	return h
}

// e2eVictimP50 does hostileSamples QD1 4 KiB READs on a fresh connection
// and returns their median latency.
func e2eVictimP50(t *testing.T, addr string) (time.Duration, error) {
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		return 0, err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(20 * time.Second))
	if _, err := wire.ClientHandshake(c, wire.ClientOptions{BlockSize: true}); err != nil {
		return 0, fmt.Errorf("handshake: %w", err)
	}
	rep := make([]byte, wire.SimpleReplySize+4096)
	lat := make([]time.Duration, 0, hostileSamples)
	for i := range uint64(hostileSamples) {
		t0 := time.Now()
		if _, err := c.Write(e2eRequest(wire.CmdRead, i, i%256*4096, 4096)); err != nil {
			return 0, err
		}
		if _, err := io.ReadFull(c, rep); err != nil {
			return 0, fmt.Errorf("READ %d of %d: %w", i, hostileSamples, err)
		}
		if e := binary.BigEndian.Uint32(rep[4:]); e != 0 {
			return 0, fmt.Errorf("READ %d: NBD error %d", i, e)
		}
		lat = append(lat, time.Since(t0))
	}
	slices.Sort(lat)
	return lat[len(lat)/2], nil
}

// e2eVictims runs hostileVictims victims at once and returns their p50s.
func e2eVictims(t *testing.T, addr string) []time.Duration {
	t.Helper()
	type res struct {
		p50 time.Duration
		err error
	}
	ch := make(chan res, hostileVictims)
	for range hostileVictims {
		go func() {
			p, err := e2eVictimP50(t, addr)
			ch <- res{p, err}
		}()
	}
	var p50s []time.Duration
	for range hostileVictims {
		r := <-ch
		if r.err != nil {
			t.Fatalf("victim: %v", r.err)
		}
		p50s = append(p50s, r.p50)
	}
	return p50s
}

// TestE2EHostileTenants: 12 connections that pipeline 1 MiB READs into a
// 4 KiB receive window and never read, with stalled headers, stalled
// payloads and slow-loris writers, all at once on a 2-shard server. Two
// QD1 4 KiB readers keep their median latency within 3x their solo median
// plus 1 ms, and nbdinfo is served within a few seconds. (Before the
// tenants' rule the non-readers' replies filled both shards' arenas and
// the victims completed nothing.) -io-timeout stays at its 30 s default,
// beyond the test: the bounds alone must hold.
func TestE2EHostileTenants(t *testing.T) {
	e2eNeedTool(t, "nbdinfo")
	path := e2eMakeFile(t, t.TempDir(), "disk.img", 64<<20, 7)
	s, addr := e2eStartTCP(t, "-shards", "2", path)
	solo := e2eVictims(t, addr)
	done := make(chan struct{})
	defer close(done)
	h := e2eHostiles(t, addr, done)
	time.Sleep(time.Second) // the non-readers take what they may, then stall
	loaded := e2eVictims(t, addr)
	for i := range loaded {
		limit := 3*solo[i] + time.Millisecond
		t.Logf("victim %d: p50 %v alone, %v under %d hostile connections (limit %v)", i,
			solo[i], loaded[i], len(h["unread"])+4*hostileStalled, limit)
		if loaded[i] > limit {
			t.Errorf("victim %d: p50 %v under hostile load, want at most %v (3 x %v + 1 ms)",
				i, loaded[i], limit, solo[i])
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	t0 := time.Now()
	out, err := exec.CommandContext(ctx, "nbdinfo", "nbd://"+addr).CombinedOutput()
	took := time.Since(t0)
	t.Logf("nbdinfo took %v", took.Round(time.Millisecond))
	if err != nil || took > 5*time.Second {
		t.Errorf("nbdinfo under hostile load: %v after %v, want served within 5 s:\n%s",
			err, took.Round(time.Millisecond), out)
	}
	if strings.Contains(s.stderr.String(), "io-timeout: cutting") {
		t.Errorf("a connection was cut by -io-timeout within its 30 s default")
	}
}

// TestE2EHostileIOTimeout: with -io-timeout 2s, the non-readers, the
// stalled headers and the stalled payloads are cut, each logged once with
// its address and what was stuck; the slow-loris writers
// (they make progress) and an idle connection are not, and the idle one
// still serves.
func TestE2EHostileIOTimeout(t *testing.T) {
	path := e2eMakeFile(t, t.TempDir(), "disk.img", 64<<20, 7)
	s, addr := e2eStartTCP(t, "-shards", "2", "-io-timeout", "2s", path)
	done := make(chan struct{})
	defer close(done)
	h := e2eHostiles(t, addr, done)
	idle := e2eDialNBD(t, addr)
	// A client waiting for memory the stalled ones hold is waiting on the
	// server, not stalled; it stalls (and is cut) once it has its memory,
	// so the cuts come in rounds of -io-timeout.
	var stalled []net.Conn
	for _, kind := range []string{"unread", "header", "payload"} {
		stalled = append(stalled, h[kind]...)
	}
	cutLine := func(c net.Conn) string {
		return "io-timeout: cutting connection from " + c.LocalAddr().String() + " "
	}
	var out string
	for deadline := time.Now().Add(20 * time.Second); time.Now().Before(deadline); {
		out = s.stderr.String()
		if !slices.ContainsFunc(stalled, func(c net.Conn) bool {
			return !strings.Contains(out, cutLine(c))
		}) {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	for _, c := range stalled {
		if n := strings.Count(out, cutLine(c)); n != 1 {
			t.Errorf("client %s: %d io-timeout lines, want 1", c.LocalAddr(), n)
		}
		_ = c.SetReadDeadline(time.Now().Add(2 * time.Second))
		if _, err := io.Copy(io.Discard, c); err != nil && !isConnEnd(err) {
			t.Errorf("client %s: still open after its io-timeout line: %v", c.LocalAddr(),
				err)
		}
	}
	for _, c := range append(h["slow-loris"], idle) {
		if strings.Contains(out, "cutting connection from "+c.LocalAddr().String()+" ") {
			t.Errorf("client %s making progress or idle was cut", c.LocalAddr())
		}
	}
	for _, l := range strings.Split(out, "\n") {
		if strings.Contains(l, "io-timeout: cutting") {
			t.Logf("server said: %s", l)
			break
		}
	}
	if _, err := idle.Write(e2eRequest(wire.CmdRead, 9, 0, 4096)); err != nil {
		t.Fatal(err)
	}
	rep := make([]byte, wire.SimpleReplySize+4096)
	if _, err := io.ReadFull(idle, rep); err != nil {
		t.Fatalf("idle connection's READ after the timeouts: %v", err)
	}
}

// isConnEnd: the error a read of a connection the server cut may end with.
func isConnEnd(err error) bool {
	return strings.Contains(err.Error(), "connection reset")
}
