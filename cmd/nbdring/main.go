// Command nbdring serves files and block devices over NBD from a
// shard-per-core io_uring engine.
package main

import (
	"flag"
	"fmt"
	"log"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/nbdring/nbdring/engine"
)

func main() {
	listen := flag.String("listen", "localhost:10809",
		"address to serve on: host:port for TCP, or unix:/path for a Unix socket")
	readOnly := flag.Bool("readonly", false,
		"serve every export read-only (writes, trims and zeroing get EPERM)")
	shards := flag.Int("shards", 0,
		"number of shards (pinned goroutines, one io_uring each); 0: one per usable CPU")
	arenaMiB := flag.Int("arena-mib", 128,
		"buffer arena per shard in MiB (a power of two, at least 128)")
	inlineIO := flag.String("inline-io", "auto",
		"auto: the shard does an export's I/O itself where the kernel would hand it to an "+
			"io-wq thread (no RWF_NOWAIT) and it answers in microseconds; on; off")
	zeroCopy := flag.Bool("zero-copy", true,
		"send READ replies of 64 KiB or more with SENDMSG_ZC where the socket takes it")
	pprofAddr := flag.String("pprof", "",
		"serve net/http/pprof and per-shard counters (/counters) on this host:port")
	metricsAddr := flag.String("metrics", "",
		"serve Prometheus metrics on http://host:port/metrics (nothing else on that port)")
	var svc serviceFlags
	flag.StringVar(&svc.user, "user", "",
		"after opening exports and sockets, switch to this user (name or uid; needs root)")
	flag.StringVar(&svc.group, "group", "",
		"after opening exports and sockets, switch to this group (default: -user's group)")
	flag.BoolVar(&svc.printURI, "print-uri", false,
		"print the URI clients should use on stdout, one line per listener, once serving")
	version := flag.Bool("version", false,
		"print nbdring's version, its Go version and its dependencies, and exit")
	flag.Usage = usage
	flag.Parse()
	if *version {
		fmt.Print(versionText(readBuildInfo()))
		os.Exit(0)
	}
	log.SetFlags(log.LstdFlags | log.Lmicroseconds)
	log.SetPrefix("nbdring: ")
	if flag.NArg() == 0 {
		usage()
		os.Exit(2)
	}
	cfg := engine.Config{Shards: *shards, ArenaSize: *arenaMiB << 20, NoZeroCopy: !*zeroCopy}
	tmpl := engine.ExportConfig{ReadOnly: *readOnly}
	switch *inlineIO {
	case "auto":
	case "on":
		tmpl.Inline = engine.InlineOn
	case "off":
		tmpl.Inline = engine.InlineOff
	default:
		log.Printf("-inline-io %q: want auto, on or off", *inlineIO)
		os.Exit(2)
	}
	obs := observability{pprof: *pprofAddr, metrics: *metricsAddr}
	if err := run(*listen, tmpl, cfg, obs, svc, flag.Args()); err != nil {
		log.Print(err)
		os.Exit(1)
	}
}

func usage() {
	fmt.Fprintf(os.Stderr, `usage: nbdring [flags] EXPORT...

Serves each EXPORT over NBD. EXPORT is PATH (the default export, name "")
or NAME=PATH; PATH is a regular file or a block device, opened with O_DIRECT.

Connect with, for example:
  nbdinfo nbd://localhost          qemu-img info nbd://localhost
  nbdinfo nbd://localhost/NAME     nbdinfo 'nbd+unix:///?socket=/path'

Under systemd (or libnbd: nbdinfo -- [ nbdring FILE ]), the sockets passed
by socket activation (LISTEN_FDS) replace -listen, and readiness is reported
to NOTIFY_SOCKET (Type=notify).

flags:
`)
	flag.PrintDefaults()
}

func run(listen string, tmpl engine.ExportConfig, cfg engine.Config, obs observability,
	svc serviceFlags, args []string) error {
	log.Printf("nbdring %s", buildVersion(readBuildInfo()))
	ntf, err := newNotifier(os.Getenv)
	if err != nil {
		return err
	}
	// Inherited sockets are checked first, so malformed activation fails
	// before any export is opened; -listen is bound only once shards run.
	lns, err := activationListeners(activationFDFirst)
	if err != nil {
		return err
	}
	defer func() { closeListeners(lns) }() // the server closes them too; twice is harmless
	var exports []*engine.Export
	defer func() {
		for _, e := range exports {
			e.Close()
		}
	}()
	for _, a := range args {
		ec := tmpl
		ec.Path = a
		if _, err := os.Stat(a); err != nil {
			if name, path, ok := strings.Cut(a, "="); ok {
				ec.Name, ec.Path = name, path
			}
		}
		e, err := engine.OpenExport(ec)
		if err != nil {
			return err
		}
		exports = append(exports, e)
	}
	srv, err := engine.New(cfg, exports)
	if err != nil {
		return err
	}
	if lns == nil {
		if lns, err = listenOn(listen); err != nil {
			exports = nil // Stop closes them; a second close could hit a reused fd
			srv.Stop()
			return err
		}
	}
	if obs.pprof != "" {
		servePprof(obs.pprof, srv)
	}
	if obs.metrics != "" {
		if err := serveMetrics(obs.metrics, srv); err != nil {
			exports = nil
			srv.Stop()
			return err
		}
	}
	if err := dropPrivileges(svc.user, svc.group); err != nil {
		exports = nil
		srv.Stop()
		return err
	}
	var names []string
	for _, e := range exports {
		io := "on the ring"
		if e.Inline() {
			io = "inline (no RWF_NOWAIT here, and reads answer in microseconds)"
		}
		log.Printf("export %q: %s, %d bytes, block size %d (direct I/O), read-only %v, "+
			"I/O %s", e.Name, e.Path, e.Size(), e.Align(), tmpl.ReadOnly, io)
		names = append(names, e.Name)
	}
	announce(lns, uriExport(names), svc.printURI)
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGINT, syscall.SIGTERM)
	errc := make(chan error, len(lns))
	for _, l := range lns {
		go func() { errc <- srv.Serve(l.ln) }()
	}
	ntf.ready(fmt.Sprintf("serving %d exports on %d listeners", len(exports), len(lns)))
	select {
	case s := <-sig:
		ntf.stopping()
		log.Printf("%v: finishing requests in flight, then exiting (send it again to "+
			"exit at once)", s)
	case err := <-errc:
		srv.Stop()
		return err
	}
	exports = nil // the server closes them
	stopped := make(chan error, 1)
	go func() { stopped <- srv.Stop() }()
	select {
	case err := <-stopped:
		return err
	case s := <-sig:
		return fmt.Errorf("%v again: exiting at once, without waiting for connections "+
			"or a final fdatasync", s)
	}
}

// announce logs each listener with the URI to try, and with -print-uri
// prints the URIs on stdout, for scripts.
func announce(lns []listener, export string, printURI bool) {
	for _, l := range lns {
		uri := clientURI(l.listen, l.ln.Addr(), export)
		log.Printf("listening on %s; try: nbdinfo %s", l.label, shellQuote(uri))
		if printURI {
			fmt.Println(uri)
		}
	}
}

// serviceFlags are the flags for running under a service manager.
type serviceFlags struct {
	user, group string
	printURI    bool
}

// observability are the HTTP side ports: -pprof and -metrics.
type observability struct {
	pprof, metrics string
}
