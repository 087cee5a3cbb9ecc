package engine

import (
	"bufio"
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"
)

// TestKeepaliveOnAcceptedSocket: a TCP socket the server's own listener
// accepted runs the keepalive timer with keepAliveIdle, not Go's default
// 15 s and not off, so a vanished idle peer is found (/proc/net/tcp shows
// the timer kind and what is left of it for the server's side).
func TestKeepaliveOnAcceptedSocket(t *testing.T) {
	srv, _, _ := testServer(t, 1<<20, 1)
	ln, err := ListenWith("127.0.0.1:0", ListenOptions{})
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(ln) // ends with srv.Stop at cleanup
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	srvPort := ln.Addr().(*net.TCPAddr).Port
	cliPort := c.LocalAddr().(*net.TCPAddr).Port
	deadline := time.Now().Add(2 * time.Second)
	for {
		kind, left, ok := tcpTimer(t, srvPort, cliPort)
		// Timer kind 2 is keepalive; its time left started at the idle
		// time, and Go's default (15 s) would be below 20 s already.
		if ok && kind == 2 && left > 20*time.Second && left <= keepAliveIdle {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("server side of %d->%d: timer kind %d with %v left (found %v); "+
				"want keepalive (2) with up to %v", cliPort, srvPort, kind, left, ok,
				keepAliveIdle)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// tcpTimer finds the IPv4 socket with local port local and remote port
// remote in /proc/net/tcp and returns its timer kind and time left.
func tcpTimer(t *testing.T, local, remote int) (kind int, left time.Duration, ok bool) {
	f, err := os.Open("/proc/net/tcp")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	want := [2]string{fmt.Sprintf(":%04X", local), fmt.Sprintf(":%04X", remote)}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fs := strings.Fields(sc.Text())
		if len(fs) < 6 || !strings.HasSuffix(fs[1], want[0]) ||
			!strings.HasSuffix(fs[2], want[1]) {
			continue
		}
		k, when, _ := strings.Cut(fs[5], ":") // tr:tm->when, clock ticks
		kn, _ := strconv.ParseInt(k, 16, 32)
		ticks, _ := strconv.ParseInt(when, 16, 64)
		return int(kn), time.Duration(ticks) * time.Second / 100, true
	}
	return 0, 0, false
}
