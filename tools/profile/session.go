package profile

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"
)

const (
	// serverReadyMax bounds the wait for the server's pprof page: nbdring opens its
	// exports and rings in well under a second; ten is for a loaded machine.
	serverReadyMax = 10 * time.Second
	// loadStopMax and serverStopMax bound the wait after SIGINT/SIGTERM before
	// SIGKILL: fio and nbdbench print their results and exit within a second;
	// nbdring finishes the requests in flight.
	loadStopMax   = 5 * time.Second
	serverStopMax = 10 * time.Second
	// logTail is how much of a child's log an error quotes.
	logTail = 1500
)

// SessionConfig is one `nbdprof session`.
type SessionConfig struct {
	Server  string        // the nbdring binary
	Image   string        // the file or device it serves
	Load    string        // load command; {uri} becomes the server's NBD URI
	Seconds int           // length of the CPU profile
	Warmup  time.Duration // load runs this long before the capture starts
	OutDir  string        // cpu.pb.gz, report.txt, server.log, load.log go here
	Base    string        // an earlier profile to diff against; "" for none
	Top     int           // functions listed in top and diff
}

// child is a process this session started, and its end.
type child struct {
	name string
	cmd  *exec.Cmd
	log  string
	done chan struct{}
	err  error // valid after done is closed
}

func start(name, logPath string, argv []string) (*child, error) {
	f, err := os.Create(logPath)
	if err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Stdout, cmd.Stderr = f, f
	// Should nbdprof die without stopping it (SIGKILL, or SIGPIPE from `| head`), the
	// kernel sends the child SIGTERM rather than leaving a server behind. nbdprof locks
	// no goroutine to a thread, so the forking thread lives as long as the process.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGTERM}
	if err := cmd.Start(); err != nil {
		f.Close()
		return nil, fmt.Errorf("start %s %q: %w", name, argv[0], err)
	}
	c := &child{name: name, cmd: cmd, log: logPath, done: make(chan struct{})}
	go func() {
		c.err = cmd.Wait()
		f.Close()
		close(c.done)
	}()
	return c, nil
}

func (c *child) exited() bool {
	select {
	case <-c.done:
		return true
	default:
		return false
	}
}

// stop sends sig to the child's pid, waits up to max, then kills it.
func (c *child) stop(sig os.Signal, max time.Duration) {
	if c.exited() {
		return
	}
	_ = c.cmd.Process.Signal(sig)
	select {
	case <-c.done:
	case <-time.After(max):
		_ = c.cmd.Process.Kill()
		<-c.done
	}
}

// tail returns the end of the child's log, for an error message.
func (c *child) tail() string {
	data, _ := os.ReadFile(c.log)
	if len(data) > logTail {
		data = append([]byte("..."), data[len(data)-logTail:]...)
	}
	return strings.TrimSpace(string(data))
}

// SplitCommand splits a load command into arguments at spaces, keeping text in
// single or double quotes together (the quotes are removed), and replaces {uri}
// in every argument with uri. No shell runs, so the URI's '?' and '&' need no
// quoting, and the pid this session stops is the load's own.
func SplitCommand(cmd, uri string) ([]string, error) {
	var args []string
	var cur strings.Builder
	inArg := false
	var quote rune
	for _, r := range cmd {
		switch {
		case quote != 0 && r == quote:
			quote = 0
		case quote != 0:
			cur.WriteRune(r)
		case r == '\'' || r == '"':
			quote, inArg = r, true
		case r == ' ' || r == '\t' || r == '\n':
			if inArg {
				args = append(args, cur.String())
				cur.Reset()
				inArg = false
			}
		default:
			cur.WriteRune(r)
			inArg = true
		}
	}
	if quote != 0 {
		return nil, fmt.Errorf("-load %q: unterminated %c quote", cmd, quote)
	}
	if inArg {
		args = append(args, cur.String())
	}
	if len(args) == 0 {
		return nil, fmt.Errorf("-load is empty: give a load command, e.g. \"fio " +
			"--name=x --ioengine=nbd --uri={uri} --rw=randread --bs=4k --iodepth=32 " +
			"--time_based --runtime=15 --size=1G\"")
	}
	for i := range args {
		args[i] = strings.ReplaceAll(args[i], "{uri}", uri)
	}
	return args, nil
}

// freeAddr returns a loopback TCP address nothing listens on right now. Another
// process could take it before the server does; the server then fails to serve
// pprof and the session says so.
func freeAddr() (string, error) {
	var lc net.ListenConfig
	lc.SetMultipathTCP(false) // as the server's -pprof listener
	ln, err := lc.Listen(context.Background(), "tcp", "127.0.0.1:0")
	if err != nil {
		return "", fmt.Errorf("find a free port for -pprof: %w", err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return addr, nil
}

// waitReady polls the server's pprof index and its socket until both answer.
func waitReady(ctx context.Context, srv *child, base, sock string) error {
	deadline := time.Now().Add(serverReadyMax)
	for {
		if srv.exited() {
			return fmt.Errorf("the server exited before it was ready (%v); its log (%s):\n%s",
				srv.err, srv.log, srv.tail())
		}
		_, statErr := os.Stat(sock)
		resp, err := http.Get(base + "/debug/pprof/")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK && statErr == nil {
				return nil
			}
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("the server did not serve %s/debug/pprof/ and %s within %v; "+
				"does it take -pprof? its log (%s):\n%s", base, sock, serverReadyMax,
				srv.log, srv.tail())
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// check validates the configuration and analyses the base profile, if any, now:
// before a bad -base costs a whole session, and before the session's own cpu.pb.gz
// could overwrite it.
func (cfg *SessionConfig) check() (base *Report, err error) {
	if cfg.Server == "" || cfg.Image == "" || cfg.Load == "" || cfg.OutDir == "" {
		return nil, errors.New("session needs -server BIN, -image FILE, -load CMD and -o DIR")
	}
	if fi, err := os.Stat(cfg.Server); err != nil || fi.IsDir() || fi.Mode()&0o111 == 0 {
		return nil, fmt.Errorf("-server %s is not an executable file: build it with "+
			"`make build`", cfg.Server)
	}
	if _, err := os.Stat(cfg.Image); err != nil {
		return nil, fmt.Errorf("-image: %w: make one with `truncate -s 1G %s` (or fill it "+
			"with fio so reads return data)", err, cfg.Image)
	}
	if cfg.Base == "" {
		return nil, nil
	}
	p, err := Load(cfg.Base)
	if err != nil {
		return nil, fmt.Errorf("-base: %w", err)
	}
	if base, err = Analyze(p); err != nil {
		return nil, fmt.Errorf("-base %s: %w", cfg.Base, err)
	}
	return base, nil
}

// RunSession starts the server on a unix socket in a temporary directory with
// -pprof on a free loopback port, starts the load against it, waits cfg.Warmup,
// captures a profile of cfg.Seconds, stops the load and then the server (each by its
// pid), and writes the counters, the summary, the top functions and, given a base,
// the diff to w and to OutDir/report.txt.
func RunSession(ctx context.Context, cfg SessionConfig, w io.Writer) error {
	baseReport, err := cfg.check()
	if err != nil {
		return err
	}
	if err := os.MkdirAll(cfg.OutDir, 0o755); err != nil {
		return fmt.Errorf("-o: %w", err)
	}
	tmp, err := os.MkdirTemp("", "nbdprof-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	sock := filepath.Join(tmp, "nbd.sock")
	uri := "nbd+unix:///?socket=" + sock
	loadArgv, err := SplitCommand(cfg.Load, uri)
	if err != nil {
		return err
	}
	addr, err := freeAddr()
	if err != nil {
		return err
	}
	report, err := os.Create(filepath.Join(cfg.OutDir, "report.txt"))
	if err != nil {
		return fmt.Errorf("-o: %w", err)
	}
	defer report.Close()
	w = io.MultiWriter(w, report)

	srv, err := start("server", filepath.Join(cfg.OutDir, "server.log"),
		[]string{cfg.Server, "-listen", "unix:" + sock, "-pprof", addr, cfg.Image})
	if err != nil {
		return err
	}
	defer srv.stop(syscall.SIGTERM, serverStopMax)
	base := "http://" + addr
	if err := waitReady(ctx, srv, base, sock); err != nil {
		return err
	}
	fmt.Fprintf(w, "server %s (pid %d) serving %s at %s, pprof %s\n", cfg.Server,
		srv.cmd.Process.Pid, cfg.Image, uri, base)
	load, err := start("load", filepath.Join(cfg.OutDir, "load.log"), loadArgv)
	if err != nil {
		return err
	}
	defer load.stop(syscall.SIGINT, loadStopMax)
	fmt.Fprintf(w, "load (pid %d): %s\n", load.cmd.Process.Pid, strings.Join(loadArgv, " "))
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-load.done:
		return fmt.Errorf("the load exited within the %v warm-up (%v); its log (%s):\n%s",
			cfg.Warmup, load.err, load.log, load.tail())
	case <-time.After(cfg.Warmup):
	}
	out := filepath.Join(cfg.OutDir, "cpu.pb.gz")
	r, err := Capture(ctx, base, cfg.Seconds, out, w)
	if err != nil {
		return err
	}
	if load.exited() {
		fmt.Fprintf(w, "warning: the load ended before the capture did, so the profile "+
			"holds idle time; give it a run time over %v (warm-up + -seconds)\n",
			cfg.Warmup+time.Duration(cfg.Seconds)*time.Second)
	}
	load.stop(syscall.SIGINT, loadStopMax)
	srv.stop(syscall.SIGTERM, serverStopMax)
	fmt.Fprintf(w, "stopped load and server; logs in %s\n\n", cfg.OutDir)
	writeSessionReport(w, r, baseReport, cfg)
	return nil
}

// writeSessionReport writes the summary and top functions and, given a base, the diff.
func writeSessionReport(w io.Writer, r, base *Report, cfg SessionConfig) {
	WriteSummary(w, r)
	fmt.Fprintln(w)
	WriteTop(w, r, cfg.Top)
	if base != nil {
		fmt.Fprintf(w, "\ndiff against %s:\n", cfg.Base)
		WriteDiff(w, base, r, cfg.Top)
	}
}
