package profile

import (
	"bytes"
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/http/pprof"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

const countersPage = `shard 0 (cpu 2)
  connections           1
  requests_READ         %d
  bytes_read            %d
  ring_enters           %d
  ring_completions      %d
  submissions_per_enter 1.50
shard 1 (cpu 3)
  connections           0
  requests_READ         0
  bytes_read            0
  ring_enters           0
  ring_completions      0
`

func counters(reads int64) string {
	return fmt.Sprintf(countersPage, reads, reads*4096, reads/4, reads)
}

func TestCounterDelta(t *testing.T) {
	before, err := ParseCounters(strings.NewReader(counters(1000)))
	if err != nil {
		t.Fatal(err)
	}
	after, err := ParseCounters(strings.NewReader(counters(3000)))
	if err != nil {
		t.Fatal(err)
	}
	if len(after.Shards) != 2 || after.Total("requests_READ") != 3000 ||
		after.Total("submissions_per_enter") != 0 {
		t.Fatalf("parsed %+v", after)
	}
	var out bytes.Buffer
	WriteCounterDelta(&out, before, after, 2*time.Second)
	for _, line := range []string{
		"  requests_READ                    1000           3000           2000         1000",
		"  shard 0 (cpu 2): requests +2000, ring_enters +500, completions per enter 4.00",
		"  shard 1 (cpu 3): requests +0, ring_enters +0",
	} {
		if !strings.Contains(out.String(), line+"\n") {
			t.Errorf("delta lacks %q:\n%s", line, out.String())
		}
	}
	if _, err := ParseCounters(strings.NewReader("  orphan 1\n")); err == nil {
		t.Error("a counter before any shard line parsed without error")
	}
}

// spinSyscalls burns CPU half in getppid system calls, half in Go, until stop.
//
//go:noinline
func spinSyscalls(stop *atomic.Bool) {
	x := 1
	for !stop.Load() {
		syscall.Syscall(syscall.SYS_GETPPID, 0, 0, 0)
		for i := 0; i < 2000; i++ {
			x = x*31 + i
		}
	}
	_ = x
}

// pprofServer is a net/http/pprof server like nbdring's -pprof page.
func pprofServer(t *testing.T, withCounters bool) *httptest.Server {
	mux := http.NewServeMux()
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	var reads atomic.Int64
	if withCounters {
		mux.HandleFunc("/counters", func(w http.ResponseWriter, _ *http.Request) {
			fmt.Fprint(w, counters(reads.Add(1000)))
		})
	}
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	return srv
}

func TestCaptureRealProfile(t *testing.T) {
	srv := pprofServer(t, true)
	var stop atomic.Bool
	done := make(chan struct{})
	go func() { spinSyscalls(&stop); close(done) }()
	defer func() { stop.Store(true); <-done }()

	out := filepath.Join(t.TempDir(), "sub", "cpu.pb.gz")
	var log bytes.Buffer
	r, err := Capture(context.Background(), srv.URL, 1, out, &log)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Load(out); err != nil {
		t.Fatalf("saved profile does not load: %v", err)
	}
	if !strings.Contains(log.String(), "requests_READ") {
		t.Errorf("capture printed no counter deltas:\n%s", log.String())
	}
	var spinCum int64
	for _, f := range r.Funcs {
		if strings.HasSuffix(f.Name, ".spinSyscalls") {
			spinCum = f.Cum
		}
	}
	// The spinning goroutine is this process's only busy one for the whole second.
	if r.Percent(spinCum) < 50 || r.Shares.Syscall == 0 || r.Shares.Go == 0 {
		t.Errorf("spinSyscalls cum %.1f%%, syscall %.1f%%, go %.1f%%: want >= 50%% and "+
			"both shares above 0", r.Percent(spinCum), r.Share(ClassSyscall), r.Share(ClassGo))
	}
}

func TestCaptureErrorsSayWhatToDo(t *testing.T) {
	ctx := context.Background()
	plain := httptest.NewServer(http.NotFoundHandler())
	defer plain.Close()
	_, err := FetchProfile(ctx, plain.URL, 1)
	if err == nil || !strings.Contains(err.Error(), "started with -pprof") {
		t.Errorf("no pprof page: error %v, want one naming -pprof", err)
	}
	// Nothing listens on a closed server's port.
	gone := httptest.NewServer(http.NotFoundHandler())
	gone.Close()
	_, err = Capture(ctx, gone.URL, 1, filepath.Join(t.TempDir(), "x"), &bytes.Buffer{})
	if err == nil || !strings.Contains(err.Error(), "running with -pprof") {
		t.Errorf("no server: error %v, want one asking for -pprof", err)
	}
	if _, err := FetchProfile(ctx, plain.URL, 0); err == nil {
		t.Error("-seconds 0 accepted")
	}
	if _, err := FetchCounters(ctx, plain.URL); err != ErrNoCounters {
		t.Errorf("FetchCounters on a 404: %v, want ErrNoCounters", err)
	}
	for in, want := range map[string]string{
		"localhost:6061":        "http://localhost:6061",
		"http://127.0.0.1:1/x/": "http://127.0.0.1:1",
		"https://h:2":           "https://h:2",
	} {
		if got, err := BaseURL(in); got != want || err != nil {
			t.Errorf("BaseURL(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	if _, err := BaseURL("ftp://h:1"); err == nil {
		t.Error("BaseURL accepted ftp://")
	}
}

func TestMain(m *testing.M) {
	switch filepath.Base(os.Args[0]) {
	case fakeServerName:
		fakeServer(os.Args[1:])
	case fakeLoadName:
		fakeLoad(os.Args[1:])
	default:
		os.Exit(m.Run())
	}
}
