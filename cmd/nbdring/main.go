// Command nbdring serves files and block devices over NBD from a
// shard-per-core io_uring engine.
package main

import (
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"maps"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/nbdring/nbdring/engine"
	"github.com/nbdring/nbdring/engine/topology"
	"github.com/nbdring/nbdring/wire"
)

func main() {
	listen := flag.String("listen", "localhost:10809",
		"address to serve on: host:port for TCP, or unix:/path for a Unix socket")
	readOnly := flag.Bool("readonly", false,
		"serve every export read-only (no TRIM or WRITE_ZEROES advertised; writes get EPERM)")
	shards := flag.Int("shards", 0,
		"number of shards (pinned goroutines, one io_uring each), at most one per usable "+
			"CPU; 0: one per core")
	arenaMiB := flag.Int("arena-mib", 0,
		"buffer arena per shard in MiB (a power of two, at least 4; a quarter of it is the "+
			"largest request served); 0: the -memory-mib share, at most 128")
	memoryMiB := flag.Int("memory-mib", 1024,
		"buffer memory of all shards in MiB, pinned at start: each shard's arena is its "+
			"share rounded down to a power of two, at most 128 (unless -arena-mib)")
	maxConns := flag.Int("max-connections", 256,
		"connections served at once in all; each shard's metadata is sized for its share, "+
			"and a connection past it is closed at once")
	batchWait := flag.Uint("batch-wait-us", 0,
		"with more than one request in flight, a shard waits up to this many microseconds "+
			"for a batch of completions (io_uring min-wait, Linux 6.12); 0: off")
	pollUs := flag.Uint("poll-us", 0,
		"a shard that has just had work spins up to this many microseconds on its "+
			"completion queue before it sleeps (only while its waits end that fast; "+
			"costs CPU for latency; at most 1000); 0: off")
	ioTimeout := flag.Duration("io-timeout", engine.IOTimeoutDefault,
		"cut a connection that makes no progress this long while the server waits on it "+
			"(replies it does not read, a WRITE payload or request header it does not "+
			"finish); an idle connection is never cut; 0: off")
	recvBundles := flag.Bool("recv-bundles", true,
		"a receive fills several pool buffers where the kernel can (IORING_RECVSEND_BUNDLE, "+
			"Linux 6.10); false: one buffer a receive")
	inlineIO := flag.String("inline-io", "auto",
		"auto: the shard does an export's I/O itself where the kernel would hand it to an "+
			"io-wq thread (no RWF_NOWAIT) and it answers in microseconds; on; off")
	zeroCopy := flag.Bool("zero-copy", true,
		"send READ replies of 64 KiB or more with SENDMSG_ZC where the socket takes it")
	mptcp := flag.Bool("mptcp", false,
		"listen with Multipath TCP where the kernel has it; turns zero-copy sends off "+
			"(sockets accepted from an MPTCP listener refuse SENDMSG_ZC)")
	pprofAddr := flag.String("pprof", "",
		"serve net/http/pprof and per-shard counters (/counters) on this host:port")
	configFile := flag.String("config", "",
		"read listen addresses and exports from this TOML file (instead of EXPORT arguments)")
	runCmd := flag.String("run", "",
		"captive mode: run this shell command with $uri (also $nbd, $port, $unixsocket, "+
			"$exportname) set, stop when it exits, and exit with its status")
	logFormat := flag.String("log-format", "text", "log format: text or json (one object a line)")
	logLevel := flag.String("log-level", "info", "least severe level logged: debug, info, "+
		"warn or error")
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
	logger, err := newLogger(os.Stderr, *logFormat, *logLevel)
	if err != nil {
		fmt.Fprintf(os.Stderr, "nbdring: %v\n", err)
		os.Exit(2)
	}
	setLogger(logger)
	if flag.NArg() == 0 && *configFile == "" {
		usage()
		os.Exit(2)
	}
	o := options{readOnly: *readOnly, svc: svc, sec: sec, run: *runCmd, mptcp: *mptcp,
		cfg: engine.Config{Shards: *shards, ArenaSize: *arenaMiB << 20,
			Memory: *memoryMiB << 20, MaxConns: *maxConns, NoZeroCopy: !*zeroCopy,
			BatchWait: uint32(min(*batchWait, 1<<31)), NoRecvBundles: !*recvBundles,
			IOTimeout: *ioTimeout, PollUs: uint32(min(*pollUs, 1<<31))}}
	switch *inlineIO {
	case "auto":
	case "on":
		o.inline = engine.InlineOn
	case "off":
		o.inline = engine.InlineOff
	default:
		slog.Error(fmt.Sprintf("-inline-io %q: want auto, on or off", *inlineIO))
		os.Exit(2)
	}
	flag.Visit(func(f *flag.Flag) {
		if f.Name == "listen" {
			o.listen = []string{*listen}
		}
	})
	if err := o.resolve(*configFile, flag.Args(), *shards, *arenaMiB, *memoryMiB); err != nil {
		slog.Error(err.Error())
		os.Exit(1)
	}
	o.listenDefault = *listen
	o.obs = observability{pprof: *pprofAddr, metrics: *metricsAddr}
	err = run(o)
	var ce *captiveExit
	switch {
	case errors.As(err, &ce):
		os.Exit(ce.status)
	case err != nil:
		slog.Error(err.Error())
		os.Exit(1)
	}
}

func usage() {
	fmt.Fprintf(os.Stderr, `usage: nbdring [flags] EXPORT...
       nbdring [flags] -config FILE

Serves each EXPORT over NBD. EXPORT is PATH (the default export, name "")
or NAME=PATH; PATH is a regular file or a block device, opened with O_DIRECT
and served raw: clients see its bytes as they are (an image in qcow2 or
another container format gets a warning at start; convert it first with
qemu-img convert -O raw).
-config FILE describes listen addresses and exports in TOML instead
(example: service/nbdring.toml). With -run CMD, nbdring serves (on a private
Unix socket unless -listen is given) while CMD runs, as nbdkit --run:
  nbdring -run 'qemu-img info "$uri"' disk.img

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

// options are the flags and the -config file, resolved.
type options struct {
	listen []string // -listen if given, else the config's; empty: default or private
	// listenDefault is -listen's default, used when neither names an
	// address and the server is not captive (which uses a private socket).
	listenDefault string
	readOnly      bool
	mptcp         bool              // -mptcp: Multipath TCP listeners (no zero-copy)
	inline        engine.InlineMode // -inline-io, for every export
	cfg           engine.Config
	obs           observability // -pprof, -metrics
	svc           serviceFlags
	sec           security
	run           string
	exports       []engine.ExportConfig
	exportsWhere  []string // where -config wrote each export, for open errors
	tlsWhere      []string // where -config wrote each tls-required
	reload        reloadState
}

// resolve reads the exports from -config or the arguments and checks
// the flags, before anything is opened.
func (o *options) resolve(configFile string, args []string, shards, arenaMiB,
	memoryMiB int) error {
	usable, err := topology.UsableCPUs()
	if err != nil {
		return err
	}
	if err := checkShards(shards, usable); err != nil {
		return err
	}
	if err := checkArenaMiB(arenaMiB); err != nil {
		return err
	}
	if err := checkMemoryMiB(memoryMiB); err != nil {
		return err
	}
	if o.cfg.MaxConns < 1 {
		return fmt.Errorf("-max-connections %d: want at least 1", o.cfg.MaxConns)
	}
	if o.cfg.IOTimeout < 0 {
		return fmt.Errorf("-io-timeout %v: want a duration such as 30s, or 0 to turn it off",
			o.cfg.IOTimeout)
	}
	if configFile != "" {
		if len(args) > 0 {
			return fmt.Errorf("-config %s names the exports, so EXPORT arguments (%s) "+
				"are not taken as well: put them in the file, or drop -config",
				configFile, strings.Join(args, " "))
		}
		sc, err := loadConfig(configFile)
		if err != nil {
			return err
		}
		if len(o.listen) > 0 && len(sc.listen) > 0 {
			return fmt.Errorf("-listen %s and %s's listen both say where to serve: "+
				"keep one", o.listen[0], configFile)
		}
		if len(sc.listen) > 0 {
			o.listen = sc.listen
		}
		o.exports, o.exportsWhere, o.tlsWhere = sc.exports, sc.where, sc.tlsWhere
		o.reload.file, o.reload.listen = configFile, sc.listen
	} else {
		o.exports = exportArgs(args)
	}
	for i := range o.exports {
		o.exports[i].ReadOnly = o.exports[i].ReadOnly || o.readOnly
		o.exports[i].Inline = o.inline
	}
	if o.run != "" && len(o.listen) == 0 && (o.svc.user != "" || o.svc.group != "") {
		return errors.New("-run with -user or -group needs -listen: the private " +
			"socket's directory belongs to the user nbdring starts as")
	}
	return nil
}

// exportArgs reads EXPORT arguments: PATH, or NAME=PATH when no file is
// named like the whole argument.
func exportArgs(args []string) []engine.ExportConfig {
	var ecs []engine.ExportConfig
	for _, a := range args {
		ec := engine.ExportConfig{Path: a}
		if _, err := os.Stat(a); err != nil {
			if name, path, ok := strings.Cut(a, "="); ok {
				ec.Name, ec.Path = name, path
			}
		}
		ecs = append(ecs, ec)
	}
	return ecs
}

func run(o options) error {
	slog.Info(fmt.Sprintf("nbdring %s", buildVersion(readBuildInfo())))
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP) // from the start: SIGHUP's default action kills
	tlsOnly, err := o.sec.config(&o.cfg)
	if err != nil {
		return err
	}
	o.reload.tlsExports = maps.Clone(tlsOnly)
	mode, err := strconv.ParseUint(o.sec.socketMode, 8, 32)
	if err != nil || mode > 0o777 || mode == 0 {
		return fmt.Errorf("-socket-mode %q: want an octal file mode such as 0660",
			o.sec.socketMode)
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
	listen, cleanup, err := o.listenAddrs(lns != nil)
	if err != nil {
		return err
	}
	defer cleanup()
	exports, err := o.openExports(tlsOnly)
	if err != nil {
		return err
	}
	srv, err := engine.New(o.cfg, exports)
	if err != nil {
		for _, e := range exports {
			e.Close()
		}
		return err
	}
	// From here on the server owns the exports: Stop closes them.
	if lns == nil {
		if lns, err = listenOn(listen, engine.ListenOptions{
			MPTCP: o.mptcp, SocketMode: os.FileMode(mode)}); err != nil {
			srv.Stop()
			return err
		}
	}
	if err := o.startSide(srv); err != nil {
		srv.Stop()
		return err
	}
	names := logExports(exports, o.cfg.TLSMode)
	announce(lns, uriExport(names), o.svc.printURI, o.cfg.TLSMode == wire.TLSRequire)
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGINT, syscall.SIGTERM)
	errc := make(chan error, len(lns))
	for _, l := range lns {
		go func() { errc <- srv.Serve(l.ln) }()
	}
	ntf.ready(fmt.Sprintf("serving %d exports on %d listeners", len(exports), len(lns)))
	go o.reloadOnHUP(srv, hup, ntf)
	if o.run != "" {
		env := captiveEnv(lns[0], uriExport(names), o.cfg.TLSMode)
		return runCaptive(o.run, env, srv, sig, errc, ntf)
	}
	select {
	case s := <-sig:
		ntf.stopping()
		slog.Info(fmt.Sprintf("%v: finishing requests in flight, then exiting (send it "+
			"again to exit at once)", s))
	case err := <-errc:
		srv.Stop()
		return err
	}
	return stop(srv, sig)
}

// listenAddrs is what to listen on when not socket-activated: -listen or
// the config's listen, checked before anything is opened; for -run
// without either, a private Unix socket in a fresh directory, which
// cleanup removes; else -listen's default.
func (o *options) listenAddrs(activated bool) ([]string, func(), error) {
	none := func() {}
	if activated {
		if len(o.listen) > 0 {
			slog.Warn(fmt.Sprintf("socket-activated: serving the inherited sockets; "+
				"the listen addresses %q are not used", o.listen))
		}
		return nil, none, nil
	}
	for _, l := range o.listen {
		if err := checkListen(l); err != nil {
			return nil, none, fmt.Errorf("-listen %w", err)
		}
	}
	switch {
	case len(o.listen) > 0:
		return o.listen, none, nil
	case o.run != "":
		dir, err := os.MkdirTemp("", "nbdring-run-")
		if err != nil {
			return nil, none, fmt.Errorf("-run: private socket directory: %w", err)
		}
		return []string{"unix:" + filepath.Join(dir, "nbd.sock")},
			func() { os.RemoveAll(dir) }, nil
	}
	return []string{o.listenDefault}, none, nil
}

// openExports opens every export; on an error it closes those it opened.
// tlsOnly (from -tls-exports) is consumed: a name left over is an error.
func (o *options) openExports(tlsOnly map[string]bool) ([]*engine.Export, error) {
	var exports []*engine.Export
	fail := func(err error) ([]*engine.Export, error) {
		for _, e := range exports {
			e.Close()
		}
		return nil, err
	}
	for i, ec := range o.exports {
		if ec.TLSOnly && o.cfg.TLSMode == wire.TLSOff && i < len(o.tlsWhere) {
			return fail(fmt.Errorf("%stls-required = true needs -tls on (or -tls "+
				"require, which requires TLS of every export) and -tls-certificates",
				o.tlsWhere[i]))
		}
		ec.TLSOnly = ec.TLSOnly || tlsOnly[ec.Name]
		delete(tlsOnly, ec.Name)
		e, err := engine.OpenExport(ec)
		if err != nil {
			if i < len(o.exportsWhere) {
				err = fmt.Errorf("%s%w", o.exportsWhere[i], err)
			}
			return fail(err)
		}
		exports = append(exports, e)
	}
	for n := range tlsOnly {
		return fail(fmt.Errorf("-tls-exports names %q, which is not an export", n))
	}
	return exports, nil
}

// startSide starts -pprof and -metrics, then drops privileges: every
// socket is bound by then.
func (o *options) startSide(srv *engine.Server) error {
	if o.obs.pprof != "" {
		servePprof(o.obs.pprof, srv)
	}
	if o.obs.metrics != "" {
		if err := serveMetrics(o.obs.metrics, srv); err != nil {
			return err
		}
	}
	return dropPrivileges(o.svc.user, o.svc.group)
}

// logExports logs one line per export and returns their names.
func logExports(exports []*engine.Export, tls wire.TLSMode) []string {
	var names []string
	for _, e := range exports {
		io := "on the ring"
		if e.Inline() {
			io = "inline (no RWF_NOWAIT here, and reads answer in microseconds)"
		}
		slog.Info(fmt.Sprintf("export %q: %s, %d bytes, block size %d (direct I/O), "+
			"read-only %v, I/O %s%s", e.Name, e.Path, e.Size(), e.Align(), e.ReadOnly(), io,
			tlsNote(tls, e.TLSOnly())), "export", e.Name)
		names = append(names, e.Name)
	}
	return names
}

// stop shuts the server down gracefully; a signal meanwhile cuts it short.
func stop(srv *engine.Server, sig <-chan os.Signal) error {
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
		slog.Info(fmt.Sprintf("listening on %s; try: nbdinfo %s", l.label, shellQuote(uri)))
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
