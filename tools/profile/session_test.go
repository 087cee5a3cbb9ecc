package profile

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"net"
	"net/http"
	"net/http/pprof"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// The session tests run this test binary as a stand-in server and load, chosen by
// the name it is started under (a symlink), since the session passes the server
// fixed arguments and both children inherit the test's environment.
const (
	fakeServerName = "fake-nbdring"
	fakeLoadName   = "fake-load"
)

// fakeServer takes nbdring's session arguments (-listen unix:PATH -pprof ADDR
// IMAGE), serves pprof and a /counters page counting connections, and burns CPU.
func fakeServer(args []string) {
	fs := flag.NewFlagSet(fakeServerName, flag.ExitOnError)
	listen := fs.String("listen", "", "")
	addr := fs.String("pprof", "", "")
	_ = fs.Parse(args)
	ln, err := net.Listen("unix", strings.TrimPrefix(*listen, "unix:"))
	if err != nil || fs.NArg() != 1 {
		fmt.Fprintln(os.Stderr, "fake server:", err, fs.Args())
		os.Exit(1)
	}
	var conns atomic.Int64
	go func() {
		var open []net.Conn // held, so the load stays connected
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			open = append(open, c)
			conns.Store(int64(len(open)))
		}
	}()
	mux := http.NewServeMux()
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/counters", func(w http.ResponseWriter, _ *http.Request) {
		fmt.Fprintf(w, "shard 0 (cpu 0)\n  connections %d\n", conns.Load())
	})
	go func() { fmt.Fprintln(os.Stderr, http.ListenAndServe(*addr, mux)); os.Exit(1) }()
	var stop atomic.Bool
	spinSyscalls(&stop) // until SIGTERM ends the process
}

// fakeLoad takes URI OUTFILE: it writes the URI it was given to OUTFILE, connects
// to the socket in it and waits for SIGINT.
func fakeLoad(args []string) {
	if len(args) != 2 {
		os.Exit(2)
	}
	_, sock, _ := strings.Cut(args[0], "?socket=")
	c, err := net.Dial("unix", sock)
	if err != nil {
		fmt.Fprintln(os.Stderr, "fake load:", err)
		os.Exit(1)
	}
	defer c.Close()
	if err := os.WriteFile(args[1], []byte(args[0]), 0o644); err != nil {
		os.Exit(1)
	}
	select {}
}

func fakeBinaries(t *testing.T) (server, load string) {
	dir := t.TempDir()
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	server, load = filepath.Join(dir, fakeServerName), filepath.Join(dir, fakeLoadName)
	for _, p := range []string{server, load} {
		if err := os.Symlink(self, p); err != nil {
			t.Fatal(err)
		}
	}
	return server, load
}

var pidRE = regexp.MustCompile(`\(pid (\d+)\)`)

// assertGone checks that every process the session reported starting has ended.
func assertGone(t *testing.T, out string) {
	t.Helper()
	m := pidRE.FindAllStringSubmatch(out, -1)
	if len(m) != 2 {
		t.Fatalf("session reported %d pids, want server and load:\n%s", len(m), out)
	}
	for _, s := range m {
		pid, _ := strconv.Atoi(s[1])
		if err := syscall.Kill(pid, 0); !errors.Is(err, syscall.ESRCH) {
			t.Errorf("pid %d still there after the session (kill 0: %v)", pid, err)
		}
	}
}

func TestSessionFake(t *testing.T) {
	server, load := fakeBinaries(t)
	dir := t.TempDir()
	image := filepath.Join(dir, "image")
	uriFile := filepath.Join(dir, "uri")
	if err := os.WriteFile(image, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	cfg := SessionConfig{Server: server, Image: image, Load: load + " {uri} '" + uriFile + "'",
		Seconds: 1, Warmup: 300 * time.Millisecond, OutDir: filepath.Join(dir, "out"), Top: 5}
	if err := RunSession(context.Background(), cfg, &out); err != nil {
		t.Fatalf("%v\n%s", err, out.String())
	}
	assertGone(t, out.String())
	uri, err := os.ReadFile(uriFile)
	if err != nil || !regexp.MustCompile(`^nbd\+unix:///\?socket=/.*/nbd\.sock$`).Match(uri) {
		t.Errorf("load got URI %q (%v), want nbd+unix:///?socket=.../nbd.sock", uri, err)
	}
	report, err := os.ReadFile(filepath.Join(cfg.OutDir, "report.txt"))
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		"  connections                         1              1              0",
		"share: syscall ", "top 5 by flat",
	} {
		if !strings.Contains(string(report), want) {
			t.Errorf("report.txt lacks %q:\n%s", want, report)
		}
	}
	p, err := Load(filepath.Join(cfg.OutDir, "cpu.pb.gz"))
	if err != nil {
		t.Fatal(err)
	}
	if r, err := Analyze(p); err != nil || r.Shares.Syscall == 0 {
		t.Errorf("session profile: %v, syscall share 0 though the server spun in getppid", err)
	}
	// Again, diffing against the profile the new session overwrites.
	cfg.Base = filepath.Join(cfg.OutDir, "cpu.pb.gz")
	out.Reset()
	if err := RunSession(context.Background(), cfg, &out); err != nil {
		t.Fatalf("with -base: %v\n%s", err, out.String())
	}
	if !strings.Contains(out.String(), "diff against "+cfg.Base) {
		t.Errorf("no diff against the base:\n%s", out.String())
	}
}

func TestSessionServerWithoutPprof(t *testing.T) {
	image := filepath.Join(t.TempDir(), "image")
	if err := os.WriteFile(image, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	sh, err := exec.LookPath("false")
	if err != nil {
		skipMissing(t, "client", "no false(1) to stand in for a server that exits")
	}
	cfg := SessionConfig{Server: sh, Image: image, Load: "true", Seconds: 1,
		OutDir: t.TempDir(), Top: 5}
	err = RunSession(context.Background(), cfg, &bytes.Buffer{})
	if err == nil || !strings.Contains(err.Error(), "exited before it was ready") {
		t.Errorf("error %v, want one saying the server exited before it was ready", err)
	}
	cfg.Server = filepath.Join(t.TempDir(), "missing")
	err = RunSession(context.Background(), cfg, &bytes.Buffer{})
	if err == nil || !strings.Contains(err.Error(), "make build") {
		t.Errorf("missing server: error %v, want one saying to build it", err)
	}
}

func TestSplitCommand(t *testing.T) {
	got, err := SplitCommand(`fio --uri={uri}  --name="a b" 'c d' -x`, "nbd+unix:///?socket=/s")
	want := []string{"fio", "--uri=nbd+unix:///?socket=/s", "--name=a b", "c d", "-x"}
	if err != nil || strings.Join(got, "|") != strings.Join(want, "|") {
		t.Errorf("SplitCommand = %q, %v; want %q", got, err, want)
	}
	for _, bad := range []string{"", "  ", `fio 'open`} {
		if _, err := SplitCommand(bad, "u"); err == nil {
			t.Errorf("SplitCommand(%q) accepted", bad)
		}
	}
}

// TestSessionNbdring profiles the real server under fio's nbd engine. make test sets
// NBDRING_BIN; the test skips without it or without fio.
func TestSessionNbdring(t *testing.T) {
	bin := os.Getenv("NBDRING_BIN")
	if bin == "" {
		skipMissing(t, "client", "NBDRING_BIN not set (make test sets it to the built server)")
	}
	if out, err := exec.Command("fio", "--enghelp").Output(); err != nil ||
		!strings.Contains(string(out), "nbd") {
		skipMissing(t, "client", "fio with the nbd engine is not installed (make deps installs it)")
	}
	dir := t.TempDir()
	image := filepath.Join(dir, "image")
	if err := os.WriteFile(image, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(image, 64<<20); err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	cfg := SessionConfig{Server: bin, Image: image, Seconds: 1, Warmup: time.Second,
		OutDir: filepath.Join(dir, "out"), Top: 10,
		Load: "fio --name=p --ioengine=nbd --uri={uri} --rw=randread --bs=4k " +
			"--iodepth=32 --time_based --runtime=30 --size=64M"}
	if err := RunSession(context.Background(), cfg, &out); err != nil {
		t.Fatalf("%v\n%s", err, out.String())
	}
	assertGone(t, out.String())
	p, err := Load(filepath.Join(cfg.OutDir, "cpu.pb.gz"))
	if err != nil {
		t.Fatal(err)
	}
	r, err := Analyze(p)
	if err != nil {
		t.Fatal(err)
	}
	var engine bool
	for _, f := range r.Funcs {
		engine = engine || PackageOf(f.Name) == "github.com/nbdring/nbdring/engine"
	}
	// Every request costs the server a ring enter, so system calls cannot be absent.
	if !engine || r.Shares.Syscall == 0 {
		t.Errorf("no engine frames (%v) or no syscall time (%.1f%%):\n%s", engine,
			r.Share(ClassSyscall), out.String())
	}
}
