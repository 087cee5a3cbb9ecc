package main

import (
	"encoding/json"
	"io"
	"net"
	"net/http"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nbdring/nbdring/wire"
)

// e2eSample is one row metrics.py prints: name, labels, value.
type e2eSample struct {
	Name   string
	Labels map[string]string
	Value  float64
}

// e2eMetrics reads url's /metrics through testdata/metrics.py (the
// Prometheus client library's parsers, text format and OpenMetrics, plus
// the checks that hold for any load) and returns the text format's
// samples: the nbdring_* families and the process and Go ones it checks.
func e2eMetrics(t *testing.T, url string) []e2eSample {
	t.Helper()
	out := e2eRun(t, "/usr/bin/python3", "testdata/metrics.py", url)
	var rows [][3]json.RawMessage
	if err := json.Unmarshal([]byte(out), &rows); err != nil {
		t.Fatalf("metrics.py output: %v\n%s", err, out)
	}
	var ss []e2eSample
	for _, r := range rows {
		var s e2eSample
		if json.Unmarshal(r[0], &s.Name) != nil || json.Unmarshal(r[1], &s.Labels) != nil ||
			json.Unmarshal(r[2], &s.Value) != nil {
			t.Fatalf("metrics.py row %s", r)
		}
		ss = append(ss, s)
	}
	return ss
}

// e2eSum adds the samples named name whose labels include want's.
func e2eSum(ss []e2eSample, name string, want ...string) float64 {
	var v float64
next:
	for _, s := range ss {
		if s.Name != name {
			continue
		}
		for i := 0; i+1 < len(want); i += 2 {
			if s.Labels[want[i]] != want[i+1] {
				continue next
			}
		}
		v += s.Value
	}
	return v
}

// e2eLogAddr waits for the server's log line "what on http://ADDR" and
// returns ADDR.
func e2eLogAddr(t *testing.T, s *e2eServer, what string) string {
	t.Helper()
	re := regexp.MustCompile(regexp.QuoteMeta(what) + ` on http://([^/ ]+)`)
	deadline := time.Now().Add(5 * time.Second)
	for {
		if m := re.FindStringSubmatch(s.stderr.String()); m != nil {
			return m[1]
		}
		if time.Now().After(deadline) {
			t.Fatalf("no %q address in the server's log", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// e2eMetricLine waits (5 s at most) for /metrics of a server started with
// -metrics to show line.
func e2eMetricLine(t *testing.T, s *e2eServer, line string) {
	t.Helper()
	url := "http://" + e2eLogAddr(t, s, "metrics") + "/metrics"
	deadline := time.Now().Add(5 * time.Second)
	for {
		_, page := e2eGetStatus(t, url)
		if strings.Contains(page, "\n"+line+"\n") {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("/metrics has no line %s:\n%s", line, page)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func e2eGetStatus(t *testing.T, url string) (int, string) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(body)
}

// TestE2EMetrics: after fio and nbdcopy ran a known load on two exports,
// /metrics (parsed by the Prometheus client library, as the text format and
// as OpenMetrics) counts exactly that load under the right command and
// export, the histogram holds every request, the process and Go families
// are there with live values, /counters agrees (one snapshot renders both),
// and the metrics port serves nothing but /metrics.
func TestE2EMetrics(t *testing.T) {
	e2eNeedTool(t, "fio", "nbdcopy", "/usr/bin/python3")
	if _, _, err := e2eRunErr("/usr/bin/python3", "-c", "import prometheus_client"); err != nil {
		skipMissing(t, "client", "python3-prometheus-client not installed (make deps): %v", err)
	}
	dir := t.TempDir()
	const size = 4 << 20
	a := e2eMakeFile(t, dir, "a.img", size, 1)
	b := e2eMakeFile(t, dir, "b.img", size, 0)
	src := e2eMakeFile(t, dir, "src.img", size, 2)
	s := e2eStart(t, "-shards", "2", "-metrics", "127.0.0.1:0", "-pprof", "127.0.0.1:0",
		"a="+a, "b="+b)
	maddr, paddr := e2eLogAddr(t, s, "metrics"), e2eLogAddr(t, s, "pprof and counters")

	// fio: 1024 READs of 4 KiB, then 64 WRITEs of 64 KiB, on export a; 64
	// READs of 64 KiB on b while it is all hole (answered without reading).
	for _, job := range [][3]string{{"a", "read", "4k"}, {"a", "write", "64k"},
		{"b", "read", "64k"}} {
		e2eRun(t, "fio", "--name=m", "--ioengine=nbd", "--uri="+s.uri(job[0]),
			"--rw="+job[1], "--bs="+job[2], "--size="+strconv.Itoa(size), "--iodepth=8",
			"--output=/dev/null")
	}
	e2eRun(t, "nbdcopy", src, s.uri("b"))
	// One client stays connected to b, to be counted.
	nc, err := net.Dial("unix", s.sock)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	if _, err := wire.ClientHandshake(nc, wire.ClientOptions{Name: "b"}); err != nil {
		t.Fatal(err)
	}

	url := "http://" + maddr + "/metrics"
	var ss []e2eSample
	deadline := time.Now().Add(5 * time.Second)
	for { // fio's and nbdcopy's connections close after their DISC
		ss = e2eMetrics(t, url)
		if e2eSum(ss, "nbdring_connections") == 1 || time.Now().After(deadline) {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	for _, c := range []struct {
		name   string
		labels []string
		want   float64
	}{
		{"nbdring_requests_total", []string{"command", "read", "export", "a"}, 1024},
		{"nbdring_requests_total", []string{"command", "write", "export", "a"}, 64},
		{"nbdring_request_bytes_total", []string{"command", "read", "export", "a"}, size},
		{"nbdring_request_bytes_total", []string{"command", "write", "export", "a"}, size},
		{"nbdring_request_bytes_total", []string{"command", "write", "export", "b"}, size},
		{"nbdring_requests_total", []string{"command", "read", "export", "b"}, 64},
		{"nbdring_request_bytes_total", []string{"command", "read", "export", "b"}, size},
		{"nbdring_request_errors_total", nil, 0},
		{"nbdring_request_duration_seconds_count", []string{"command", "read"}, 1088},
		{"nbdring_connections", []string{"export", "a"}, 0},
		{"nbdring_connections", []string{"export", "b"}, 1},
		{"nbdring_handshakes_total", []string{"result", "refused"}, 0},
		{"nbdring_handshakes_total", []string{"result", "timed_out"}, 0},
		{"nbdring_handshakes_total", []string{"result", "tls_failed"}, 0},
		{"nbdring_export_flush_failing", nil, 0},
		{"nbdring_stale_completions_total", nil, 0},
		{"nbdring_export_size_bytes", []string{"export", "b"}, size},
		{"nbdring_shard_info", nil, 2},
		{"nbdring_build_info", nil, 1},
	} {
		if got := e2eSum(ss, c.name, c.labels...); got != c.want {
			t.Errorf("%s%v = %v, want %v", c.name, c.labels, got, c.want)
		}
	}
	// Writes to b: whatever request size nbdcopy chose, at least size/32 MiB.
	if w := e2eSum(ss, "nbdring_requests_total", "command", "write", "export", "b"); w < 1 {
		t.Errorf("nbdcopy's writes to b: %v requests", w)
	}
	// fio's three connections, nbdcopy's (one or more) and ours.
	if ok := e2eSum(ss, "nbdring_handshakes_total", "result", "ok"); ok < 5 {
		t.Errorf("%v handshakes ok, want at least 5", ok)
	}
	// The client library's process and Go collectors: this process's memory
	// (its arenas alone are MiBs) and goroutines (shards, listeners, HTTP).
	if rss := e2eSum(ss, "process_resident_memory_bytes"); rss < 1<<20 {
		t.Errorf("process_resident_memory_bytes = %v", rss)
	}
	if g := e2eSum(ss, "go_goroutines"); g < 2 {
		t.Errorf("go_goroutines = %v", g)
	}
	enters := e2eSum(ss, "nbdring_ring_enters_total")
	if comps := e2eSum(ss, "nbdring_ring_completions_total"); enters == 0 || comps < 1024 {
		t.Errorf("ring: %v enters, %v completions", enters, comps)
	}

	// /counters renders the same snapshot: the same request counts.
	code, page := e2eGetStatus(t, "http://"+paddr+"/counters")
	if code != http.StatusOK {
		t.Fatalf("/counters: %d", code)
	}
	var reads, writes int
	for _, line := range strings.Split(page, "\n") {
		f := strings.Fields(line)
		if len(f) == 2 && (f[0] == "requests_READ" || f[0] == "requests_WRITE") {
			n, _ := strconv.Atoi(f[1])
			if f[0] == "requests_READ" {
				reads += n
			} else {
				writes += n
			}
		}
	}
	wantW := e2eSum(ss, "nbdring_requests_total", "command", "write")
	if reads != 1088 || float64(writes) != wantW {
		t.Errorf("/counters: %d READs, %d WRITEs; /metrics: 1088, %v\n%s", reads, writes,
			wantW, page)
	}

	// The metrics port serves /metrics only; pprof stays on its own port.
	for _, c := range []struct {
		url  string
		want int
	}{
		{"http://" + maddr + "/debug/pprof/", http.StatusNotFound},
		{"http://" + maddr + "/debug/pprof/goroutine", http.StatusNotFound},
		{"http://" + maddr + "/counters", http.StatusNotFound},
		{"http://" + paddr + "/debug/pprof/", http.StatusOK},
		{"http://" + paddr + "/metrics", http.StatusNotFound},
	} {
		if code, _ := e2eGetStatus(t, c.url); code != c.want {
			t.Errorf("GET %s: %d, want %d", c.url, code, c.want)
		}
	}
}

// TestE2EMetricsPortTaken: a -metrics port that cannot be bound stops the
// start with the reason and what to do, rather than serving unmonitored.
func TestE2EMetricsPortTaken(t *testing.T) {
	ln, err := plainTCPListen("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	dir := t.TempDir()
	img := e2eMakeFile(t, dir, "img", 1<<20, 0)
	_, errOut, err := e2eRunErr(e2eBin(t), "-listen", "unix:"+e2eSocketDir(t)+"/s",
		"-metrics", ln.Addr().String(), img)
	if err == nil || !strings.Contains(errOut, "-metrics "+ln.Addr().String()) ||
		!strings.Contains(errOut, "choose another") {
		t.Fatalf("nbdring with a taken -metrics port: %v, want exit 1 saying so:\n%s", err,
			errOut)
	}
}
