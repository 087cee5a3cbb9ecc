package main

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"runtime"
	"runtime/debug"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/nbdring/nbdring/engine"
)

// serveMetrics serves /metrics on addr, on a mux of its own: a metrics
// port may be reachable by more hosts than pprof should be, so nothing else
// is served there. The page is a private registry's (never the library's
// global one, which any imported package could fill): the engine's nbdring_*
// families, nbdring_build_info, and the library's process_* and go_*
// collectors that dashboards expect. A scraper that asks for OpenMetrics gets
// it; others get the text format 0.0.4. It binds before returning, so a
// privileged port is bound before -user applies.
func serveMetrics(addr string, srv *engine.Server) error {
	reg := prometheus.NewRegistry()
	reg.MustRegister(engine.NewCollector(srv.Snapshot), buildInfoCollector(readBuildInfo()),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		collectors.NewGoCollector())
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{
		EnableOpenMetrics: true,
		// A collector that fails (the process collector cannot read /proc)
		// costs its own families, not the page: log it and serve the rest.
		ErrorHandling: promhttp.ContinueOnError,
		ErrorLog:      metricsErrorLog{},
	}))
	ln, err := serveSide(addr, mux, metricsLimits, "-metrics")
	if err != nil {
		return fmt.Errorf("-metrics %s: %w (choose another host:port)", addr, err)
	}
	slog.Info(fmt.Sprintf("metrics on http://%s/metrics", ln.Addr()))
	return nil
}

// metricsErrorLog is promhttp's error log: a warning in the server's log.
type metricsErrorLog struct{}

func (metricsErrorLog) Println(v ...any) {
	slog.Warn("-metrics: " + strings.TrimSuffix(fmt.Sprintln(v...), "\n"))
}

// buildInfoCollector is the nbdring_build_info family: a constant 1 whose
// labels say what is running (the version -version prints).
func buildInfoCollector(bi *debug.BuildInfo) prometheus.Collector {
	goVersion := runtime.Version()
	if bi != nil && bi.GoVersion != "" {
		goVersion = bi.GoVersion
	}
	g := prometheus.NewGauge(prometheus.GaugeOpts{Name: "nbdring_build_info",
		Help: "The running nbdring's version and Go version.",
		ConstLabels: prometheus.Labels{
			"version":   strings.ToValidUTF8(buildVersion(bi), "\uFFFD"),
			"goversion": goVersion}})
	g.Set(1)
	return g
}

// servePprof serves net/http/pprof and srv's counters on addr, on a mux of
// its own (http.DefaultServeMux, where net/http/pprof registers itself, is
// served nowhere). It binds before returning, so a privileged port is bound
// before -user applies.
func servePprof(addr string, srv *engine.Server) {
	mux := http.NewServeMux()
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	mux.HandleFunc("/counters", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		srv.Snapshot().WriteCounters(w)
	})
	ln, err := serveSide(addr, mux, pprofLimits, "-pprof")
	if err != nil {
		slog.Error(fmt.Sprintf("-pprof %s: %v", addr, err))
		return
	}
	slog.Info(fmt.Sprintf("pprof and counters on http://%s/debug/pprof/ and /counters",
		ln.Addr()))
}

// The side HTTP servers (-metrics, -pprof) share the process's file
// descriptors with NBD clients, so a client there is bounded in time (each
// timeout below) and in number (a limiting listener).

// httpLimits bound one side HTTP server.
type httpLimits struct {
	readHeader time.Duration // the request line and header must arrive within this
	read       time.Duration // the whole request (these are GETs: no body)
	write      time.Duration // from the end of the header to the end of the reply
	idle       time.Duration // a keep-alive connection between requests
	connsMax   int           // connections served at once; more wait in the backlog
}

const (
	// httpReadHeaderTimeout: a scraper or curl sends its header in one
	// packet; 5 s allows a slow network and frees a silent connection soon.
	httpReadHeaderTimeout = 5 * time.Second
	// httpReadTimeout: the whole request; GETs carry no body, so a little
	// over the header's time.
	httpReadTimeout = 10 * time.Second
	// httpIdleTimeout: above Prometheus' default 1 minute scrape_interval,
	// so a scraper's keep-alive connection lasts from one scrape to the next.
	httpIdleTimeout = 75 * time.Second
	// metricsWriteTimeout: /metrics is a few KiB a shard, rendered in
	// microseconds; 10 s is Prometheus' default scrape_timeout.
	metricsWriteTimeout = 10 * time.Second
	// metricsConnsMax: a few scrapers (an HA pair, a federation) and a
	// person with curl.
	metricsConnsMax = 16
	// pprofProfileSecondsMax is the longest ?seconds= a CPU profile or
	// trace may ask for: net/http/pprof refuses one longer than the
	// server's WriteTimeout ("profile duration exceeds server's
	// WriteTimeout"). nbdprof asks for 10 s by default.
	pprofProfileSecondsMax = 120
	// pprofWriteTimeout: the longest profile, plus 30 s to encode and send
	// it (a heap profile of a large arena takes a few seconds).
	pprofWriteTimeout = (pprofProfileSecondsMax + 30) * time.Second
	// pprofConnsMax: a profile capture, an index page and a /counters
	// poll at once, with room for one more.
	pprofConnsMax = 4
)

var (
	metricsLimits = httpLimits{readHeader: httpReadHeaderTimeout, read: httpReadTimeout,
		write: metricsWriteTimeout, idle: httpIdleTimeout, connsMax: metricsConnsMax}
	pprofLimits = httpLimits{readHeader: httpReadHeaderTimeout, read: httpReadTimeout,
		write: pprofWriteTimeout, idle: httpIdleTimeout, connsMax: pprofConnsMax}
)

// serveSide listens on addr (plain TCP, as the NBD listeners) and serves h
// there within lim; flag names the server in its log. It binds before
// returning, so a privileged port is bound before -user applies.
func serveSide(addr string, h http.Handler, lim httpLimits, flag string) (net.Listener,
	error) {
	var lc net.ListenConfig
	lc.SetMultipathTCP(false)
	ln, err := lc.Listen(context.Background(), "tcp", addr)
	if err != nil {
		return nil, err
	}
	srv := newSideServer(h, lim)
	go func() {
		if err := serveSideOn(ln, srv, lim); err != nil {
			slog.Error(fmt.Sprintf("%s %s: %v", flag, addr, err))
		}
	}()
	return ln, nil
}

// serveSideOn serves srv on ln, lim.connsMax connections at a time.
func serveSideOn(ln net.Listener, srv *http.Server, lim httpLimits) error {
	return srv.Serve(newLimitListener(ln, lim.connsMax))
}

// newSideServer is an http.Server for h with lim's timeouts.
func newSideServer(h http.Handler, lim httpLimits) *http.Server {
	return &http.Server{Handler: h, ReadHeaderTimeout: lim.readHeader,
		ReadTimeout: lim.read, WriteTimeout: lim.write, IdleTimeout: lim.idle,
		ErrorLog: slog.NewLogLogger(slog.Default().Handler(), slog.LevelDebug)}
}

// limitListener accepts at most cap connections open at once; Accept waits
// for one to close, and the kernel holds later clients in the listen
// backlog, where they cost this process no descriptor.
type limitListener struct {
	net.Listener
	sem       chan struct{} // one token per open connection
	done      chan struct{} // closed by Close: a waiting Accept returns
	closeOnce sync.Once
}

func newLimitListener(ln net.Listener, connsMax int) *limitListener {
	return &limitListener{Listener: ln, sem: make(chan struct{}, connsMax),
		done: make(chan struct{})}
}

func (l *limitListener) Accept() (net.Conn, error) {
	select {
	case l.sem <- struct{}{}:
	case <-l.done:
		return nil, net.ErrClosed
	}
	c, err := l.Listener.Accept()
	if err != nil {
		<-l.sem
		return nil, err
	}
	return &limitConn{Conn: c, sem: l.sem}, nil
}

func (l *limitListener) Close() error {
	l.closeOnce.Do(func() { close(l.done) })
	return l.Listener.Close()
}

// limitConn gives its token back on its first Close.
type limitConn struct {
	net.Conn
	sem  chan struct{}
	once sync.Once
}

func (c *limitConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(func() { <-c.sem })
	return err
}
