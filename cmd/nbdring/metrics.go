package main

import (
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"runtime"
	"runtime/debug"
	"strings"

	"github.com/nbdring/nbdring/engine"
)

// serveMetrics serves /metrics (Prometheus text format) on addr, on a mux
// of its own: a metrics port may be reachable by more hosts than pprof
// should be, so nothing else is served there. It binds before returning,
// so a privileged port is bound before -user applies.
func serveMetrics(addr string, srv *engine.Server) error {
	mux := http.NewServeMux()
	info := buildInfoMetric(readBuildInfo())
	mux.HandleFunc("/metrics", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", engine.MetricsContentType)
		fmt.Fprint(w, info)
		if err := srv.Snapshot().WritePrometheus(w); err != nil {
			slog.Warn(fmt.Sprintf("-metrics: writing /metrics: %v", err))
		}
	})
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("-metrics %s: %w (choose another host:port)", addr, err)
	}
	slog.Info(fmt.Sprintf("metrics on http://%s/metrics", ln.Addr()))
	go func() {
		if err := http.Serve(ln, mux); err != nil {
			slog.Error(fmt.Sprintf("-metrics %s: %v", addr, err))
		}
	}()
	return nil
}

// buildInfoMetric is the nbdring_build_info family: a constant 1 whose
// labels say what is running (the version -version prints).
func buildInfoMetric(bi *debug.BuildInfo) string {
	goVersion := runtime.Version()
	if bi != nil && bi.GoVersion != "" {
		goVersion = bi.GoVersion
	}
	esc := strings.NewReplacer(`\`, `\\`, `"`, `\"`, "\n", `\n`)
	return "# HELP nbdring_build_info The running nbdring's version and Go version.\n" +
		"# TYPE nbdring_build_info gauge\n" +
		fmt.Sprintf("nbdring_build_info{version=\"%s\",goversion=\"%s\"} 1\n",
			esc.Replace(buildVersion(bi)), esc.Replace(goVersion))
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
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		slog.Error(fmt.Sprintf("-pprof %s: %v", addr, err))
		return
	}
	slog.Info(fmt.Sprintf("pprof and counters on http://%s/debug/pprof/ and /counters",
		ln.Addr()))
	go func() {
		if err := http.Serve(ln, mux); err != nil {
			slog.Error(fmt.Sprintf("-pprof %s: %v", addr, err))
		}
	}()
}
