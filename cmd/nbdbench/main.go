// Command nbdbench measures NBD servers: `run` drives one server with one
// workload; `compare` runs the same workloads against several servers in
// turn and prints them side by side; `floor` serves a file with the bare
// loop (pread, write) that every server is measured against.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/nbdring/nbdring/bench"
	"github.com/nbdring/nbdring/engine/topology"
)

func main() {
	if len(os.Args) < 2 {
		usage()
		os.Exit(2)
	}
	var err error
	switch os.Args[1] {
	case "run":
		err = runCmd(os.Args[2:])
	case "compare":
		err = compareCmd(os.Args[2:])
	case "floor":
		err = floorCmd(os.Args[2:])
	case "-h", "-help", "--help", "help":
		usage()
		return
	default:
		fmt.Fprintf(os.Stderr, "nbdbench: unknown command %q\n", os.Args[1])
		usage()
		os.Exit(2)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "nbdbench:", err)
		os.Exit(1)
	}
}

func usage() {
	fmt.Fprint(os.Stderr, `usage:
  nbdbench run -uri URI [-rw MODE] [-bs SIZE] [-qd N] [-conns N] [-duration D | -ops N] ...
  nbdbench compare -file PATH -servers LIST -workloads LIST [-duration D] [-rounds N] ...
  nbdbench floor [-listen ADDR] [-cpus LIST] FILE

Run 'nbdbench run -h', 'nbdbench compare -h' or 'nbdbench floor -h' for the flags.
`)
}

func runCmd(args []string) error {
	fs := flag.NewFlagSet("run", flag.ExitOnError)
	uri := fs.String("uri", "nbd://localhost/",
		"server: nbd[s]://HOST[:PORT]/NAME or nbd[s]+unix:///NAME?socket=PATH; nbds: TLS, "+
			"with ?tls-certificates=DIR (ca-cert.pem, client-cert.pem, client-key.pem)")
	rw := fs.String("rw", "randread", "read, write, randread, randwrite or randrw")
	mix := fs.Int("mix", 70, "randrw: percentage of reads")
	bs := fs.String("bs", "4k", "block size (512, 4k, 1M, ...)")
	qd := fs.Int("qd", 32, "requests in flight per connection")
	batch := fs.Int("batch", bench.DefaultBatch, "read replies taken per read and "+
		"answered with one write (more: fewer syscalls, burstier load)")
	conns := fs.Int("conns", 1, "connections (writes on more than one need MULTI_CONN)")
	dur := fs.Duration("duration", 10*time.Second, "run time (unless -ops)")
	ops := fs.Int64("ops", 0, "total operations instead of -duration")
	rng := fs.String("range", "", "part of the export to use: OFFSET:LENGTH (sizes, e.g. 0:1G)")
	verify := fs.Bool("verify", false,
		"write self-describing blocks and check every read of them")
	pid := fs.Int("server-pid", 0, "server process: report its CPU time per operation")
	asJSON := fs.Bool("json", false, "print one JSON object")
	_ = fs.Parse(args)
	size, err := bench.ParseSize(*bs)
	if err != nil {
		return fmt.Errorf("-bs: %w", err)
	}
	cfg := bench.Config{URI: *uri, RW: *rw, Mix: *mix, BS: size, QD: *qd, Batch: *batch,
		Conns: *conns, Duration: *dur, Ops: *ops, Verify: *verify, ServerPID: *pid,
		Log: os.Stderr}
	if *rng != "" {
		if cfg.RangeOff, cfg.RangeLen, err = parseRange(*rng); err != nil {
			return err
		}
	}
	if !*asJSON && isTerminal(os.Stderr) {
		cfg.Progress = os.Stderr
	}
	ctx, cancel := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer cancel()
	res, err := bench.Run(ctx, cfg)
	if err != nil {
		return err
	}
	if topo, err := topology.Read(); err == nil {
		res.Machine = topo.String()
	}
	if *asJSON {
		enc := json.NewEncoder(os.Stdout)
		enc.SetIndent("", "  ")
		if err := enc.Encode(res); err != nil {
			return err
		}
	} else {
		printResult(res)
	}
	if res.Errors > 0 || res.VerifyErrors > 0 {
		return fmt.Errorf("%d request errors, %d verify errors; first: %s", res.Errors,
			res.VerifyErrors, res.FirstError)
	}
	return nil
}

func parseRange(s string) (off, n uint64, err error) {
	var a, b string
	for i := 0; i < len(s); i++ {
		if s[i] == ':' {
			a, b = s[:i], s[i+1:]
		}
	}
	if a == "" || b == "" {
		return 0, 0, fmt.Errorf("-range %q: use OFFSET:LENGTH, e.g. 0:1G", s)
	}
	o, err1 := bench.ParseSize(a)
	l, err2 := bench.ParseSize(b)
	if err1 != nil || err2 != nil {
		return 0, 0, fmt.Errorf("-range %q: use OFFSET:LENGTH, e.g. 0:1G", s)
	}
	return uint64(o), uint64(l), nil
}

func printResult(r bench.Result) {
	fmt.Printf("workload   %s\n", r.Workload)
	fmt.Printf("ops        %d in %.2f s\n", r.Ops, r.Seconds)
	fmt.Printf("iops       %.0f\n", r.IOPS)
	fmt.Printf("throughput %.1f MB/s\n", r.BytesPerSec/1e6)
	l := r.Latency
	fmt.Printf("latency us p50 %.1f  p90 %.1f  p99 %.1f  p99.9 %.1f  max %.1f\n",
		l.P50, l.P90, l.P99, l.P999, l.Max)
	fmt.Printf("errors     %d (verify %d)\n", r.Errors, r.VerifyErrors)
	if r.ServerCPUSeconds > 0 {
		fmt.Printf("server cpu %.2f s, %.1f us/op\n", r.ServerCPUSeconds, r.ServerCPUUsPerOp)
	}
	if r.Machine != "" {
		fmt.Printf("machine    %s\n", r.Machine)
	}
}

func isTerminal(f *os.File) bool {
	st, err := f.Stat()
	return err == nil && st.Mode()&os.ModeCharDevice != 0
}

func compareCmd(args []string) error {
	fs := flag.NewFlagSet("compare", flag.ExitOnError)
	file := fs.String("file", "", "backing file or block device every server serves")
	servers := fs.String("servers", "nbdring,qemu-nbd,nbdkit,nbd-server",
		"servers to compare, in order (nbdring, qemu-nbd, nbdkit, nbd-server, and floor: "+
			"the bare pread/write loop of nbdbench floor); ratios are to the first")
	workloads := fs.String("workloads", "randread:4k:32:1,read:1M:8:1",
		"workloads rw:bs:qd:conns, comma-separated")
	dur := fs.Duration("duration", 5*time.Second, "run time of each workload")
	rounds := fs.Int("rounds", 2, "rounds (A B C A B C ...); medians are reported")
	client := fs.String("client", "nbdbench", "load generator: nbdbench or fio")
	batch := fs.Int("batch", bench.DefaultBatch, "nbdbench: read replies taken per read "+
		"(see run -batch)")
	nbdring := fs.String("nbdring", "", "nbdring binary (default: beside nbdbench)")
	drop := fs.Bool("drop-caches", true,
		"drop the page cache before each server (needs root; skipped otherwise)")
	tlsDir := fs.String("tls-certificates", "", "run every server with TLS required on "+
		"this directory (ca-cert.pem, server-cert.pem, server-key.pem, and client-cert.pem "+
		"with client-key.pem for the client) and connect with nbds+unix://")
	serverCPUs := fs.String("server-cpus", "", "pin every server to these CPUs "+
		"(taskset list, e.g. 0), so each runs on the same ones")
	clientCPUs := fs.String("client-cpus", "", "pin the client (nbdbench or fio) to "+
		"these CPUs (e.g. 1), away from the server's")
	cores := fs.String("cores", "", "core counts, e.g. 1,4,8: one compare per count N, "+
		"every server on the first N CPUs (nbdring with -shards N), the client on the "+
		"rest (or -client-cpus); one table each")
	asJSON := fs.Bool("json", false, "print the rows as a JSON list")
	svg := fs.String("svg", "", "also write an SVG to this file: one panel per "+
		"workload, throughput and server CPU per operation for each server (with "+
		"-cores, one file per count: NAME-coresN.svg)")
	_ = fs.Parse(args)
	if *file == "" {
		return fmt.Errorf("compare needs -file: the image or device every server serves")
	}
	if *client != "nbdbench" && *client != "fio" {
		return fmt.Errorf("-client %q: use nbdbench or fio", *client)
	}
	wls, err := bench.ParseWorkloads(*workloads, *dur)
	if err != nil {
		return err
	}
	for i := range wls {
		wls[i].Batch = *batch
	}
	self, err := os.Executable()
	if err != nil {
		return err
	}
	if *nbdring == "" {
		*nbdring = filepath.Join(filepath.Dir(self), "nbdring")
	}
	cc := bench.CompareConfig{File: *file, Servers: strings.Split(*servers, ","),
		Workloads: wls, Rounds: *rounds, Client: *client, NbdRing: *nbdring, NbdBench: self,
		DropCaches: *drop && os.Geteuid() == 0, TLSCerts: *tlsDir, Log: os.Stderr,
		ServerCPUs: *serverCPUs, ClientCPUs: *clientCPUs}
	// Read before compare pins the client: the line describes the machine.
	machine := ""
	if topo, err := topology.Read(); err == nil {
		machine = topo.String()
	}
	ctx, cancel := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer cancel()
	var rows []bench.Row
	if *cores != "" {
		counts, err := bench.ParseCores(*cores)
		if err != nil {
			return err
		}
		rows, err = bench.CompareCores(ctx, cc, counts)
		if err != nil {
			return err
		}
	} else if rows, err = bench.Compare(ctx, cc); err != nil {
		return err
	}
	return printCompare(rows, *svg, *asJSON, machine, fmt.Sprintf("medians of %d rounds of %v each, "+
		"client %s over %s", *rounds, *dur, *client, map[bool]string{false: "plaintext",
		true: "TLS"}[*tlsDir != ""]))
}

// printCompare writes compare's rows: as JSON, or as one table per core
// count (one in all without -cores), with an SVG per table when asked.
func printCompare(rows []bench.Row, svg string, asJSON bool, machine, how string) error {
	groups := map[int][]bench.Row{}
	var counts []int
	for _, r := range rows {
		if _, ok := groups[r.Cores]; !ok {
			counts = append(counts, r.Cores)
		}
		groups[r.Cores] = append(groups[r.Cores], r)
	}
	for _, n := range counts {
		g := groups[n]
		if svg != "" {
			name := svg
			if n > 0 {
				name = strings.TrimSuffix(svg, ".svg") + fmt.Sprintf("-cores%d.svg", n)
			}
			if err := writeSVG(name, g, machine); err != nil {
				return err
			}
		}
		if asJSON {
			continue
		}
		if n > 0 {
			fmt.Printf("cores %d: servers on CPUs %s (nbdring -shards %d), client on CPUs "+
				"%s\n", n, g[0].ServerCPUs, n, g[0].ClientCPUs)
		}
		bench.WriteTable(os.Stdout, g)
		fmt.Println()
	}
	if asJSON {
		enc := json.NewEncoder(os.Stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(rows)
	}
	fmt.Printf("machine: %s\n%s; cpu/op is the server's CPU time per operation\n",
		machine, how)
	return nil
}

func writeSVG(name string, rows []bench.Row, machine string) error {
	f, err := os.Create(name)
	if err != nil {
		return err
	}
	bench.WriteSVG(f, rows, "machine: "+machine)
	return f.Close()
}

func floorCmd(args []string) error {
	fs := flag.NewFlagSet("floor", flag.ExitOnError)
	listen := fs.String("listen", "localhost:10809",
		"address to serve on: host:port for TCP (plain, never multipath), or unix:/path")
	name := fs.String("name", "", "export name")
	cpus := fs.String("cpus", "", "run on these CPUs (taskset list, e.g. 0-3); each "+
		"connection's thread is pinned to one of them in turn. Default: the CPUs this "+
		"process may use (taskset is honoured)")
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), "usage: nbdbench floor [flags] FILE\n\nServe FILE (or a "+
			"block device) with the bare loop: per connection one thread that does only "+
			"pread (O_DIRECT) and write\nfor a READ, recv and pwrite (O_DIRECT) for a WRITE. "+
			"Requests must be 4 KiB aligned.\n\n")
		fs.PrintDefaults()
	}
	_ = fs.Parse(args)
	if fs.NArg() != 1 {
		fs.Usage()
		return fmt.Errorf("floor needs one FILE to serve, got %d arguments", fs.NArg())
	}
	if *cpus != "" {
		if err := bench.PinProcess(*cpus); err != nil {
			return fmt.Errorf("-cpus: %w", err)
		}
	}
	ctx, cancel := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer cancel()
	ln, err := bench.ListenFloor(ctx, *listen)
	if err != nil {
		return err
	}
	fmt.Fprintf(os.Stderr, "nbdbench floor: serving %s on %s, pid %d (for run -server-pid)\n",
		fs.Arg(0), ln.Addr(), os.Getpid())
	return bench.ServeFloor(ctx, ln, bench.FloorConfig{File: fs.Arg(0), Name: *name,
		Log: os.Stderr})
}
