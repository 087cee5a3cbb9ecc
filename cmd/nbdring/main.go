// Command nbdring serves files and block devices over NBD from a
// shard-per-core io_uring engine.
package main

import (
	"flag"
	"fmt"
	"log"
	"net/http"
	_ "net/http/pprof" // the -pprof page
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
		"buffer arena per shard in MiB (a power of two, at least 64)")
	zeroCopy := flag.Bool("zero-copy", true,
		"send READ replies of 64 KiB or more with SENDMSG_ZC where the socket takes it")
	pprofAddr := flag.String("pprof", "",
		"serve net/http/pprof and per-shard counters (/counters) on this host:port")
	flag.Usage = usage
	flag.Parse()
	log.SetFlags(log.LstdFlags | log.Lmicroseconds)
	log.SetPrefix("nbdring: ")
	if flag.NArg() == 0 {
		usage()
		os.Exit(2)
	}
	cfg := engine.Config{Shards: *shards, ArenaSize: *arenaMiB << 20, NoZeroCopy: !*zeroCopy}
	if err := run(*listen, *readOnly, cfg, *pprofAddr, flag.Args()); err != nil {
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

func run(listen string, readOnly bool, cfg engine.Config, pprofAddr string,
	args []string) error {
	var exports []*engine.Export
	defer func() {
		for _, e := range exports {
			e.Close()
		}
	}()
	for _, a := range args {
		ec := engine.ExportConfig{Path: a, ReadOnly: readOnly}
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
	ln, err := engine.Listen(listen)
	if err != nil {
		srv.Stop()
		return err
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
		log.Printf("export %q: %s, %d bytes, block size %d (direct I/O), read-only %v",
			e.Name, e.Path, e.Size(), e.Align(), readOnly)
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

func uriFor(listen string) string {
	if path, ok := strings.CutPrefix(listen, "unix:"); ok {
		return "'nbd+unix:///?socket=" + path + "'"
	}
	return "nbd://" + listen
}
