// Command nbdring serves files and block devices over NBD from a
// shard-per-core io_uring engine.
package main

import (
	"errors"
	"flag"
	"fmt"
	"log"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/nbdring/nbdring/engine"
	"github.com/nbdring/nbdring/wire"
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
	var sec security
	flag.StringVar(&sec.tls, "tls", "off",
		"TLS: off, on (clients choose; -tls-exports need it) or require (every client)")
	flag.StringVar(&sec.certDir, "tls-certificates", "",
		"directory with ca-cert.pem, server-cert.pem, server-key.pem and optional "+
			"ca-crl.pem (qemu's and nbdkit's layout)")
	flag.BoolVar(&sec.verifyPeer, "tls-verify-peer", false,
		"require a client certificate signed by the directory's CA; its subject is logged")
	flag.StringVar(&sec.tlsExports, "tls-exports", "",
		"with -tls on: comma-separated export names served only over TLS")
	flag.StringVar(&sec.allow, "allow", "",
		"comma-separated rules: CIDR or address (TCP clients from elsewhere are closed "+
			"unanswered), subject:CN=NAME[+O=ORG] (needs -tls require -tls-verify-peer)")
	flag.StringVar(&sec.socketMode, "socket-mode", "0600",
		"file mode of a unix: socket (-listen), which decides who may connect to it")
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
	if err := run(*listen, tmpl, cfg, obs, svc, sec, flag.Args()); err != nil {
		log.Print(err)
		os.Exit(1)
	}
}

func usage() {
	fmt.Fprintf(os.Stderr, `usage: nbdring [flags] EXPORT...

Serves each EXPORT over NBD. EXPORT is PATH (the default export, name "")
or NAME=PATH; PATH is a regular file or a block device, opened with O_DIRECT
and served raw: clients see its bytes as they are (an image in qcow2 or
another container format gets a warning at start; convert it first with
qemu-img convert -O raw).

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
	svc serviceFlags, sec security, args []string) error {
	log.Printf("nbdring %s", buildVersion(readBuildInfo()))
	tlsOnly, err := sec.config(&cfg)
	if err != nil {
		return err
	}
	mode, err := strconv.ParseUint(sec.socketMode, 8, 32)
	if err != nil || mode > 0o777 {
		return fmt.Errorf("-socket-mode %q: want an octal file mode such as 0660", sec.socketMode)
	}
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
		ec.TLSOnly = tlsOnly[ec.Name]
		delete(tlsOnly, ec.Name)
		e, err := engine.OpenExport(ec)
		if err != nil {
			return err
		}
		exports = append(exports, e)
	}
	for n := range tlsOnly {
		return fmt.Errorf("-tls-exports names %q, which is not an export", n)
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
		if path, ok := strings.CutPrefix(listen, "unix:"); ok {
			if err := os.Chmod(path, os.FileMode(mode)); err != nil {
				exports = nil
				srv.Stop()
				return fmt.Errorf("-socket-mode: chmod %s: %w", path, err)
			}
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
			"I/O %s%s", e.Name, e.Path, e.Size(), e.Align(), tmpl.ReadOnly, io,
			tlsNote(cfg.TLSMode, e.TLSOnly()))
		names = append(names, e.Name)
	}
	announce(lns, uriExport(names), svc.printURI, cfg.TLSMode == wire.TLSRequire)
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
	first := time.Now()
	stopped := make(chan error, 1)
	go func() { stopped <- srv.Stop() }()
	for {
		select {
		case err := <-stopped:
			return err
		case s := <-sig:
			if time.Since(first) < signalRepeatMin {
				continue // the same request delivered twice (see signalRepeatMin)
			}
			return fmt.Errorf("%v again: exiting at once, without waiting for "+
				"connections or a final fdatasync", s)
		}
	}
}

// signalRepeatMin: a second signal this soon after the first is the same
// request delivered twice, not an operator insisting: a signal sent to a
// whole process group reaches nbdring and its parent, and make (under
// timeout, say) sends it on to its child again within microseconds.
const signalRepeatMin = 200 * time.Millisecond

// announce logs each listener with the URI to try, and with -print-uri
// prints the URIs on stdout, for scripts; nbds:// when TLS is required
// (the client adds its tls-certificates=).
func announce(lns []listener, export string, printURI, tlsRequired bool) {
	for _, l := range lns {
		uri := clientURI(l.listen, l.ln.Addr(), export)
		if tlsRequired {
			uri = "nbds" + strings.TrimPrefix(uri, "nbd")
		}
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

// security is the TLS and access flags.
type security struct {
	tls, certDir, tlsExports, allow, socketMode string
	verifyPeer                                  bool
}

// config turns the flags into the engine's settings and the set of
// exports that need TLS.
func (f security) config(cfg *engine.Config) (map[string]bool, error) {
	switch f.tls {
	case "off":
		cfg.TLSMode = wire.TLSOff
	case "on":
		cfg.TLSMode = wire.TLSOn
	case "require":
		cfg.TLSMode = wire.TLSRequire
	default:
		return nil, fmt.Errorf("-tls %q: want off, on or require", f.tls)
	}
	if cfg.TLSMode == wire.TLSOff && (f.certDir != "" || f.verifyPeer || f.tlsExports != "") {
		return nil, errors.New("-tls-certificates, -tls-verify-peer and -tls-exports " +
			"need -tls on or -tls require")
	}
	if cfg.TLSMode != wire.TLSOff {
		var err error
		if cfg.TLS, err = engine.LoadTLS(f.certDir, f.verifyPeer); err != nil {
			return nil, err
		}
	}
	only := map[string]bool{}
	if f.tlsExports != "" {
		if cfg.TLSMode != wire.TLSOn {
			return nil, errors.New("-tls-exports needs -tls on (with -tls require every " +
				"export needs TLS)")
		}
		for _, n := range strings.Split(f.tlsExports, ",") {
			only[n] = true
		}
	}
	if f.allow != "" {
		var err error
		if cfg.Allow, err = engine.ParseAllow(f.allow); err != nil {
			return nil, err
		}
	}
	return only, nil
}

func tlsNote(m wire.TLSMode, only bool) string {
	switch {
	case m == wire.TLSRequire || only:
		return ", TLS required"
	case m == wire.TLSOn:
		return ", TLS optional"
	}
	return ""
}
