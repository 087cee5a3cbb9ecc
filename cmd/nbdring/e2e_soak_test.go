package main

// The soak test: a long verified load against a real nbdring process,
// watching its memory, descriptors and goroutines for growth. It runs only
// when NBDRING_SOAK names a duration (`make soak SOAK_DURATION=1h`).

import (
	"bufio"
	"fmt"
	"io"
	"net/http"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"
)

const (
	soakExportSize = 64 << 20
	soakConns      = 4
	soakReadPct    = 30
	// soakWarmup: by then every arena buffer the load uses has been
	// touched and the Go heap has reached its working size, so later
	// samples are compared with the first one at or after it.
	soakWarmup = 10 * time.Second
	// soakRSSGrowthMax is how far RSS may grow after warm-up: the heap's
	// size varies with when the collector last ran (a few MiB at this
	// load), while a leak of even 100 bytes per request (some 10^4 per
	// second here) passes it within about a minute.
	soakRSSGrowthMax = 32 << 20
	// soakGoroutineSlack: the runtime's own goroutines (a finalizer or
	// scavenger waking) may differ by one or two between samples.
	soakGoroutineSlack = 2
)

type soakSample struct {
	at         time.Duration
	rssKiB     int64
	fds        int
	goroutines int
	ops        uint64
}

// TestSoak: mixed reads (which verify the last write), plain and FUA
// writes and FLUSHes over four connections on two shards for $NBDRING_SOAK;
// fails on any verify or protocol error, when RSS, open descriptors or
// goroutines at the end exceed the first sample after warm-up (RSS by
// soakRSSGrowthMax, goroutines by soakGoroutineSlack), or when descriptors
// exceed those before the load by more than its connections.
func TestSoak(t *testing.T) {
	env := os.Getenv("NBDRING_SOAK")
	if env == "" {
		t.Skip("set NBDRING_SOAK to a duration (e.g. 60s) to run the soak test: make soak")
	}
	dur, err := time.ParseDuration(env)
	if err != nil || dur < 2*soakWarmup {
		t.Fatalf("NBDRING_SOAK=%q: want a duration of at least %v", env, 2*soakWarmup)
	}
	every := 10 * time.Second
	if dur >= 5*time.Minute {
		every = time.Minute
	}
	addr := soakFreeAddr(t)
	path := e2eMakeFile(t, t.TempDir(), "disk.img", soakExportSize, 0)
	s := e2eStart(t, "-shards", "2", "-pprof", addr, path)
	pp := newSoakPprof(addr)
	pp.wait(t, e2eStartTimeout)

	m := newCrashModel(soakExportSize, crashBS, soakConns)
	sm := &soakSampler{t: t, s: s, pp: pp, m: m, start: time.Now()}
	t.Logf("%8s %10s %6s %10s %12s", "time", "RSS KiB", "fds", "goroutines", "requests")
	base := sm.sample() // before the load connects
	stop := make(chan struct{})
	res := make(chan *crashModel, 1)
	go func() {
		res <- runLoadInto(m, s.uri(""), stop, loadOptions{readPct: soakReadPct,
			lastOnly: true, seed: uint64(time.Now().UnixNano())})
	}()
	tick := time.NewTicker(every)
	defer tick.Stop()
	done := time.After(dur)
wait:
	for {
		select {
		case <-tick.C:
			sm.sample()
		case <-done:
			break wait
		case m2 := <-res: // the load ended early: a connection failed
			res <- m2
			break wait
		}
	}
	last := sm.sample()
	close(stop)
	select {
	case m = <-res:
	case <-time.After(2 * crashReplyTimeout):
		t.Fatal("the load did not stop")
	}
	t.Logf("load: %v in %v", m, time.Since(sm.start).Round(time.Second))
	soakVerdict(t, m, sm.samples, base, last)
	// Every block holds its last write, read through a fresh connection.
	m.checkAcked(t, crashReader(t, s.uri("")))
}

// soakSampler takes and prints the server's samples.
type soakSampler struct {
	t       *testing.T
	s       *e2eServer
	pp      *soakPprof
	m       *crashModel
	start   time.Time
	samples []soakSample
}

func (sm *soakSampler) sample() soakSample {
	t := sm.t
	x := soakSample{at: time.Since(sm.start).Round(time.Second), rssKiB: soakRSS(t, sm.s),
		fds: sm.s.fdCount(t), ops: sm.m.ops.Load()}
	var err error
	if x.goroutines, err = sm.pp.goroutines(); err != nil {
		t.Errorf("goroutine count at %v: %v", x.at, err)
		x.goroutines = -1
	}
	sm.samples = append(sm.samples, x)
	t.Logf("%8v %10d %6d %10d %12d", x.at, x.rssKiB, x.fds, x.goroutines, x.ops)
	return x
}

// soakVerdict fails t for load errors and for growth after warm-up.
func soakVerdict(t *testing.T, m *crashModel, samples []soakSample, base, last soakSample) {
	t.Helper()
	for c, st := range m.stats {
		if st.end != nil {
			t.Errorf("connection %d failed: %v", c, st.end)
		}
	}
	if st := m.totals(); st.replyErrs > 0 {
		t.Errorf("%d error replies; first: %s", st.replyErrs, st.firstErr)
	}
	if m.verifyN > 0 {
		t.Errorf("%d reads did not return the last write; first: %q", m.verifyN,
			m.verifyErrs)
	}
	var warm *soakSample
	for i := range samples {
		if samples[i].at >= soakWarmup {
			warm = &samples[i]
			break
		}
	}
	if warm == nil || warm.ops == last.ops {
		t.Fatalf("no load after warm-up (samples %+v)", samples)
	}
	if d := (last.rssKiB - warm.rssKiB) << 10; d > soakRSSGrowthMax {
		t.Errorf("RSS grew by %d KiB after warm-up (%d at %v, %d at %v), more than %d KiB",
			d>>10, warm.rssKiB, warm.at, last.rssKiB, last.at, soakRSSGrowthMax>>10)
	}
	if last.fds > base.fds+soakConns {
		t.Errorf("%d open descriptors at %v, %d before the load's %d connections", last.fds,
			last.at, base.fds, soakConns)
	}
	if last.fds > warm.fds {
		t.Errorf("open descriptors grew after warm-up: %d at %v, %d at %v", warm.fds,
			warm.at, last.fds, last.at)
	}
	if last.goroutines > warm.goroutines+soakGoroutineSlack {
		t.Errorf("goroutines grew after warm-up: %d at %v, %d at %v (slack %d)",
			warm.goroutines, warm.at, last.goroutines, last.at, soakGoroutineSlack)
	}
}

// soakFreeAddr finds a free loopback TCP port for the server's -pprof.
func soakFreeAddr(t *testing.T) string {
	t.Helper()
	ln, err := plainTCPListen("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// soakRSS is the server's resident set in KiB (VmRSS).
func soakRSS(t *testing.T, s *e2eServer) int64 {
	t.Helper()
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", s.cmd.Process.Pid))
	if err != nil {
		t.Fatalf("server status: %v", err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "VmRSS:"); ok {
			n, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			if err != nil {
				t.Fatalf("VmRSS %q: %v", v, err)
			}
			return n
		}
	}
	t.Fatal("no VmRSS in the server's /proc status")
	return 0
}

// soakPprof reads the server's goroutine count from its pprof page over
// one kept-alive connection, so the sampling itself holds a steady one
// descriptor and one goroutine in the server.
type soakPprof struct {
	url string
	cl  http.Client
}

func newSoakPprof(addr string) *soakPprof {
	return &soakPprof{url: "http://" + addr + "/debug/pprof/goroutine?debug=1",
		cl: http.Client{Timeout: 5 * time.Second,
			Transport: &http.Transport{MaxIdleConns: 1, IdleConnTimeout: 0}}}
}

// wait polls until the page answers (the server is up), for at most d.
func (p *soakPprof) wait(t *testing.T, d time.Duration) {
	t.Helper()
	deadline := time.Now().Add(d)
	for {
		_, err := p.goroutines()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("goroutine count from %s: %v", p.url, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func (p *soakPprof) goroutines() (int, error) {
	resp, err := p.cl.Get(p.url)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body) // all of it, so the connection is reused
	if err != nil {
		return 0, err
	}
	line, _, _ := strings.Cut(string(body), "\n")
	v, ok := strings.CutPrefix(strings.TrimSpace(line), "goroutine profile: total ")
	if !ok {
		return 0, fmt.Errorf("first line %q is not \"goroutine profile: total N\"", line)
	}
	return strconv.Atoi(v)
}
