package main

import (
	"bufio"
	"context"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"
)

// sideServer serves a /metrics that answers "ok" within lim on a loopback
// port, as serveSide does (newSideServer, serveSideOn), and tracks the most connections the server
// held at once.
type sideServer struct {
	addr string
	mu   sync.Mutex
	open int
	peak int
}

func startSide(t *testing.T, lim httpLimits) *sideServer {
	t.Helper()
	var lc net.ListenConfig
	lc.SetMultipathTCP(false)
	ln, err := lc.Listen(context.Background(), "tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := &sideServer{addr: ln.Addr().String()}
	mux := http.NewServeMux()
	mux.HandleFunc("/metrics", func(w http.ResponseWriter, _ *http.Request) {
		io.WriteString(w, "ok\n")
	})
	srv := newSideServer(mux, lim)
	srv.ConnState = func(_ net.Conn, st http.ConnState) {
		s.mu.Lock()
		defer s.mu.Unlock()
		switch st {
		case http.StateNew:
			s.open++
			s.peak = max(s.peak, s.open)
		case http.StateClosed, http.StateHijacked:
			s.open--
		}
	}
	go serveSideOn(ln, srv, lim)
	t.Cleanup(func() { srv.Close() })
	return s
}

// halfHeader connects and sends a request line and half a header.
func (s *sideServer) halfHeader(t *testing.T) net.Conn {
	t.Helper()
	c, err := net.Dial("tcp", s.addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	if _, err := io.WriteString(c, "GET /metrics HTTP/1.1\r\nHost: x\r\n"); err != nil {
		t.Fatal(err)
	}
	return c
}

// cutWithin waits up to d for the server to close c (EOF or reset, no
// reply) and says whether it did.
func cutWithin(t *testing.T, c net.Conn, d time.Duration) bool {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(d))
	n, err := c.Read(make([]byte, 512))
	if ne, ok := err.(net.Error); ok && ne.Timeout() {
		return false
	}
	if n > 0 {
		t.Fatalf("the server answered half a header with %d bytes", n)
	}
	return true
}

// testLimits are the side limits with a short header timeout, so a test
// sees it fire.
func testLimits(connsMax int) httpLimits {
	lim := metricsLimits
	lim.readHeader, lim.read, lim.connsMax = 300*time.Millisecond, time.Second, connsMax
	return lim
}

// TestSideHTTPHeaderTimeout: a client that sends half a header is cut
// after the header timeout, and a whole request is still answered.
func TestSideHTTPHeaderTimeout(t *testing.T) {
	s := startSide(t, testLimits(4))
	c := s.halfHeader(t)
	if !cutWithin(t, c, 10*time.Second) {
		t.Fatalf("a client with half a header still held its connection after 10 s "+
			"(header timeout %v)", testLimits(4).readHeader)
	}
	sideGet(t, s.addr, 10*time.Second)
}

// TestSideHTTPConnCap: with the cap's worth of slow clients connected, one
// more waits unanswered (the server holds no more than the cap); once the
// header timeout cuts the slow ones, its /metrics request is answered.
func TestSideHTTPConnCap(t *testing.T) {
	const connsMax = 2
	lim := testLimits(connsMax)
	lim.readHeader = 2 * time.Second // long enough to see the extra client wait
	s := startSide(t, lim)
	slow := []net.Conn{s.halfHeader(t), s.halfHeader(t)}
	time.Sleep(100 * time.Millisecond) // let the server accept both

	c, err := net.Dial("tcp", s.addr) // the kernel completes it: it waits in the backlog
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := io.WriteString(c, "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	c.SetReadDeadline(time.Now().Add(500 * time.Millisecond))
	if n, err := c.Read(make([]byte, 64)); err == nil || n > 0 {
		t.Fatalf("a client beyond the cap of %d was answered while the cap's worth of "+
			"slow clients held the server", connsMax)
	}
	for _, sc := range slow {
		if !cutWithin(t, sc, 10*time.Second) {
			t.Fatal("a slow client was not cut by the header timeout")
		}
	}
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatalf("the waiting client got no answer once the slow ones were cut: %v", err)
	}
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 64))
	if resp.StatusCode != 200 || strings.TrimSpace(string(body)) != "ok" {
		t.Fatalf("the waiting client got %d %q", resp.StatusCode, body)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.peak > connsMax {
		t.Errorf("the server held %d connections at once, cap %d", s.peak, connsMax)
	}
}

// sideGet fetches /metrics and wants "ok".
func sideGet(t *testing.T, addr string, d time.Duration) {
	t.Helper()
	cl := http.Client{Timeout: d}
	resp, err := cl.Get("http://" + addr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 || strings.TrimSpace(string(body)) != "ok" {
		t.Fatalf("/metrics: %d %q", resp.StatusCode, body)
	}
}

// TestPprofWriteTimeoutAllowsLongestProfile: net/http/pprof refuses a
// profile longer than the server's WriteTimeout, so pprof's must exceed
// the longest profile allowed, and /metrics' must not be that long.
func TestPprofWriteTimeoutAllowsLongestProfile(t *testing.T) {
	if pprofLimits.write <= pprofProfileSecondsMax*time.Second {
		t.Errorf("-pprof WriteTimeout %v does not cover a %d s profile", pprofLimits.write,
			pprofProfileSecondsMax)
	}
	for _, lim := range []httpLimits{metricsLimits, pprofLimits} {
		if lim.readHeader == 0 || lim.read == 0 || lim.write == 0 || lim.idle == 0 ||
			lim.connsMax == 0 {
			t.Errorf("a side server limit is unset (no limit): %+v", lim)
		}
	}
}
