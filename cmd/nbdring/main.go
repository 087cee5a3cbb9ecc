// Command nbdring serves files and block devices over NBD from a
// shard-per-core io_uring engine.
package main

import (
	"errors"
	"flag"
	"fmt"
	"log"
	"net/http"
	_ "net/http/pprof" // the -pprof page
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"

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
		"buffer arena per shard in MiB (a power of two, at least 64)")
	pprofAddr := flag.String("pprof", "",
		"serve net/http/pprof and per-shard counters (/counters) on this host:port")
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
		"file mode of a unix: socket, which decides who may connect to it")
	flag.Usage = usage
	flag.Parse()
	log.SetFlags(log.LstdFlags | log.Lmicroseconds)
	log.SetPrefix("nbdring: ")
	if flag.NArg() == 0 {
		usage()
		os.Exit(2)
	}
	if err := run(*listen, *readOnly, *shards, *arenaMiB, *pprofAddr, sec,
		flag.Args()); err != nil {
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

flags:
`)
	flag.PrintDefaults()
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

func run(listen string, readOnly bool, shards, arenaMiB int, pprofAddr string, sec security,
	args []string) error {
	cfg := engine.Config{Shards: shards, ArenaSize: arenaMiB << 20}
	tlsOnly, err := sec.config(&cfg)
	if err != nil {
		return err
	}
	mode, err := strconv.ParseUint(sec.socketMode, 8, 32)
	if err != nil || mode > 0o777 {
		return fmt.Errorf("-socket-mode %q: want an octal file mode such as 0660", sec.socketMode)
	}
	var exports []*engine.Export
	defer func() {
		for _, e := range exports {
			e.Close()
		}
	}()
	for _, a := range args {
		ecfg := engine.ExportConfig{Path: a, ReadOnly: readOnly}
		if _, err := os.Stat(a); err != nil {
			if name, path, ok := strings.Cut(a, "="); ok {
				ecfg.Name, ecfg.Path = name, path
			}
		}
		ecfg.TLSOnly = tlsOnly[ecfg.Name]
		delete(tlsOnly, ecfg.Name)
		e, err := engine.OpenExport(ecfg)
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
	ln, err := engine.Listen(listen)
	if err != nil {
		srv.Stop()
		return err
	}
	if path, ok := strings.CutPrefix(listen, "unix:"); ok {
		if err := os.Chmod(path, os.FileMode(mode)); err != nil {
			srv.Stop()
			return fmt.Errorf("-socket-mode: chmod %s: %w", path, err)
		}
	}
	if pprofAddr != "" {
		http.HandleFunc("/counters", func(w http.ResponseWriter, _ *http.Request) {
			w.Header().Set("Content-Type", "text/plain; charset=utf-8")
			srv.WriteCounters(w)
		})
		go func() {
			log.Printf("pprof and counters on http://%s/debug/pprof/ and /counters", pprofAddr)
			if err := http.ListenAndServe(pprofAddr, nil); err != nil {
				log.Printf("-pprof %s: %v", pprofAddr, err)
			}
		}()
	}
	for _, e := range exports {
		log.Printf("export %q: %s, %d bytes, block size %d (direct I/O), read-only %v%s",
			e.Name, e.Path, e.Size(), e.Align(), readOnly, tlsNote(cfg.TLSMode, e.TLSOnly()))
	}
	log.Printf("listening on %s; try: nbdinfo %s", listen, uriFor(listen))
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGINT, syscall.SIGTERM)
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	select {
	case s := <-sig:
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

func tlsNote(m wire.TLSMode, only bool) string {
	switch {
	case m == wire.TLSRequire || only:
		return ", TLS required"
	case m == wire.TLSOn:
		return ", TLS optional"
	}
	return ""
}

func uriFor(listen string) string {
	if path, ok := strings.CutPrefix(listen, "unix:"); ok {
		return "'nbd+unix:///?socket=" + path + "'"
	}
	return "nbd://" + listen
}
