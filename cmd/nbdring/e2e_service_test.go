package main

// End-to-end tests of running nbdring as a service: socket activation by
// libnbd (nbdinfo/nbdcopy -- [ nbdring ... ]), by systemd-socket-activate and
// by hand-made descriptors (and the refusals of malformed ones), readiness on
// a fake NOTIFY_SOCKET, -print-uri accepted by nbdinfo, -version, -user
// (every thread ends up as nobody and the export still serves), and the unit
// files (systemd-analyze verify and security) and `make install`.
//
// Run: go test -ldflags=-checklinkname=0 -run E2EService -count=1 -v ./cmd/nbdring

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// e2eSvcLight keeps each server small: these tests are about start-up and
// wiring, not throughput.
var e2eSvcLight = []string{"-shards", "1", "-arena-mib", "128"}

// e2eSvcProc is a process a test started with its own argv, environment
// and descriptors, with stdout (the -print-uri lines) kept apart.
type e2eSvcProc struct {
	cmd            *exec.Cmd
	stdout, stderr *e2eBuffer
	done           chan struct{}
	err            error
	stopped        bool
}

// e2eSvcStart starts cmd and registers a cleanup that stops it (SIGTERM,
// exit status 0 wanted) and logs its output when the test failed.
func e2eSvcStart(t *testing.T, cmd *exec.Cmd) *e2eSvcProc {
	t.Helper()
	p := &e2eSvcProc{cmd: cmd, stdout: &e2eBuffer{}, stderr: &e2eBuffer{},
		done: make(chan struct{})}
	cmd.Stdout, cmd.Stderr = p.stdout, p.stderr
	if err := cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", cmd.Path, err)
	}
	go func() {
		p.err = cmd.Wait()
		close(p.done)
	}()
	t.Cleanup(func() {
		p.stop(t)
		if t.Failed() {
			t.Logf("%s output:\nstdout:\n%s\nstderr:\n%s", strings.Join(cmd.Args, " "),
				p.stdout, p.stderr)
		}
	})
	return p
}

// exit waits for the process to end on its own and returns its result.
func (p *e2eSvcProc) exit(t *testing.T) error {
	t.Helper()
	select {
	case <-p.done:
		p.stopped = true
		return p.err
	case <-time.After(e2eStartTimeout):
		t.Fatalf("%s still running after %v", p.cmd.Path, e2eStartTimeout)
		return nil
	}
}

// stop sends SIGTERM and asserts exit status 0 within e2eStopTimeout.
func (p *e2eSvcProc) stop(t *testing.T) {
	if p.stopped {
		return
	}
	p.stopped = true
	select {
	case <-p.done:
		t.Errorf("%s exited before the test ended: %v", p.cmd.Path, p.err)
		return
	default:
	}
	p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
		if p.err != nil {
			t.Errorf("%s after SIGTERM: %v, want exit status 0", p.cmd.Path, p.err)
		}
	case <-time.After(e2eStopTimeout):
		p.cmd.Process.Kill()
		<-p.done
		t.Errorf("%s still running %v after SIGTERM; killed", p.cmd.Path, e2eStopTimeout)
	}
}

// waitOutput waits until the buffer holds n lines matching re, or the
// process ends or e2eStartTimeout passes, and returns the matches.
func (p *e2eSvcProc) waitOutput(t *testing.T, b *e2eBuffer, re *regexp.Regexp,
	n int) []string {
	t.Helper()
	deadline := time.Now().Add(e2eStartTimeout)
	for {
		var got []string
		for _, l := range strings.Split(b.String(), "\n") {
			if re.MatchString(l) {
				got = append(got, l)
			}
		}
		if len(got) >= n {
			return got
		}
		select {
		case <-p.done:
			t.Fatalf("%s exited (%v) before printing %d lines matching %s", p.cmd.Path,
				p.err, n, re)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("no %d lines matching %s after %v", n, re, e2eStartTimeout)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// e2eSvcActivated runs nbdring the way a socket-activating launcher does:
// fds 3... are files, LISTEN_PID is the pid nbdring will have (sh sets its
// own and execs), env adds LISTEN_FDS and the rest.
func e2eSvcActivated(t *testing.T, ctx context.Context, files []*os.File, env []string,
	args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, "/bin/sh", append([]string{"-c",
		`export LISTEN_PID=$$; exec "$0" "$@"`, e2eBin(t)}, args...)...)
	cmd.Env = append(os.Environ(), env...)
	cmd.ExtraFiles = files
	return cmd
}

// e2eSvcFile returns an *os.File for a socket or file, closed at cleanup.
func e2eSvcFile(t *testing.T, c interface{ File() (*os.File, error) }) *os.File {
	t.Helper()
	f, err := c.File()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return f
}

// e2eSvcSize is `nbdinfo --size URI`.
func e2eSvcSize(t *testing.T, uri string) int64 {
	t.Helper()
	out := strings.TrimSpace(e2eRun(t, "nbdinfo", "--size", uri))
	n, err := strconv.ParseInt(out, 10, 64)
	if err != nil {
		t.Fatalf("nbdinfo --size %s: %q is not a size", uri, out)
	}
	return n
}

// TestE2EServiceLibnbdSubprocess lets libnbd start nbdring itself on a
// socket it made (nbd_connect_systemd_socket_activation): nbdinfo reads the
// export, nbdcopy copies it out byte for byte.
func TestE2EServiceLibnbdSubprocess(t *testing.T) {
	e2eNeedTool(t, "nbdinfo", "nbdcopy")
	dir := t.TempDir()
	const size = 16 << 20
	src := e2eMakeFile(t, dir, "src.img", size, 11)
	cmd := append(append([]string{"[", e2eBin(t)}, e2eSvcLight...), src, "]")

	info := e2eNbdinfo(t, append([]string{"--"}, cmd...)...)
	if len(info.Exports) != 1 {
		t.Fatalf("nbdinfo -- [ nbdring ]: %d exports, want 1", len(info.Exports))
	}
	e2eCheckExport(t, info.Exports[0], size, false, 0)

	out := filepath.Join(dir, "out.img")
	e2eRun(t, "nbdcopy", append(append([]string{"--"}, cmd...), out)...)
	e2eSameBytes(t, "nbdcopy -- [ nbdring ] out.img", e2eReadFile(t, out), e2eReadFile(t, src))
}

// e2eSvcFreePort returns a TCP port on 127.0.0.1 that was free a moment ago.
func e2eSvcFreePort(t *testing.T) int {
	ln, err := plainTCPListen("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// e2eSvcManager is a fake service manager: the datagram socket
// NOTIFY_SOCKET names.
func e2eSvcManager(t *testing.T, addr string) *net.UnixConn {
	t.Helper()
	c, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: addr, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// e2eSvcNotified reads one sd_notify datagram within e2eStartTimeout.
func e2eSvcNotified(t *testing.T, mgr *net.UnixConn) string {
	t.Helper()
	buf := make([]byte, 4096)
	mgr.SetReadDeadline(time.Now().Add(e2eStartTimeout))
	n, err := mgr.Read(buf)
	if err != nil {
		t.Fatalf("fake service manager: no notification: %v", err)
	}
	return string(buf[:n])
}

// TestE2EServiceSocketActivate runs nbdring under systemd-socket-activate
// with a TCP and a Unix socket and a fake NOTIFY_SOCKET (a path): the first
// connection starts it, both sockets serve, the printed URIs are right and
// READY=1 and STOPPING=1 reach the manager.
func TestE2EServiceSocketActivate(t *testing.T) {
	e2eNeedTool(t, "nbdinfo", "systemd-socket-activate")
	dir := e2eSocketDir(t)
	const size = 8 << 20
	img := e2eMakeFile(t, t.TempDir(), "disk.img", size, 0)
	port := e2eSvcFreePort(t)
	sock := filepath.Join(dir, "nbd.sock")
	notify := filepath.Join(dir, "notify")
	mgr := e2eSvcManager(t, notify)
	args := append([]string{"-l", fmt.Sprintf("127.0.0.1:%d", port), "-l", sock,
		"--fdname=tcp:unix", "-E", "NOTIFY_SOCKET=" + notify, e2eBin(t), "-print-uri"},
		e2eSvcLight...)
	p := e2eSvcStart(t, exec.Command("systemd-socket-activate", append(args, img)...))
	p.waitOutput(t, p.stderr, regexp.MustCompile(`^Listening on .* as 4\.$`), 1)

	tcpURI := fmt.Sprintf("nbd://127.0.0.1:%d", port)
	if got := e2eSvcSize(t, tcpURI); got != size { // this connection starts nbdring
		t.Fatalf("size over TCP %d, want %d", got, size)
	}
	if got := e2eSvcNotified(t, mgr); !strings.HasPrefix(got, "READY=1\n") {
		t.Fatalf("first notification %q, want READY=1 first", got)
	}
	uris := p.waitOutput(t, p.stdout, regexp.MustCompile(`^nbd`), 2)
	want := []string{tcpURI, "nbd+unix:///?socket=" + sock}
	if strings.Join(uris, " ") != strings.Join(want, " ") {
		t.Fatalf("-print-uri printed %q, want %q", uris, want)
	}
	if got := e2eSvcSize(t, uris[1]); got != size {
		t.Fatalf("size over the Unix socket %d, want %d", got, size)
	}
	p.stop(t)
	if got := e2eSvcNotified(t, mgr); got != "STOPPING=1" {
		t.Fatalf("notification after SIGTERM %q, want STOPPING=1", got)
	}
	if !strings.Contains(p.stderr.String(), `(socket-activated fd 4, "unix")`) {
		t.Errorf("log does not name the activated Unix socket")
	}
}

// TestE2EServiceNotifyAbstract checks readiness on an abstract
// NOTIFY_SOCKET ("@..."): READY=1 comes only once the server answers, and
// never when an export fails to open.
func TestE2EServiceNotifyAbstract(t *testing.T) {
	e2eNeedTool(t, "nbdinfo")
	dir := e2eSocketDir(t)
	img := e2eMakeFile(t, t.TempDir(), "disk.img", 4<<20, 0)
	addr := fmt.Sprintf("@nbdring-e2e-%d-%d", os.Getpid(), time.Now().UnixNano())
	mgr := e2eSvcManager(t, addr)
	sock := filepath.Join(dir, "nbd.sock")

	failing := exec.Command(e2eBin(t), append(append([]string{"-listen", "unix:" + sock},
		e2eSvcLight...), filepath.Join(dir, "missing.img"))...)
	failing.Env = append(os.Environ(), "NOTIFY_SOCKET="+addr)
	if out, err := failing.CombinedOutput(); err == nil {
		t.Fatalf("nbdring with a missing export exited 0:\n%s", out)
	}
	mgr.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
	if n, err := mgr.Read(make([]byte, 64)); err == nil {
		t.Fatalf("a server that failed to start sent a notification (%d bytes)", n)
	}

	cmd := exec.Command(e2eBin(t), append(append([]string{"-listen", "unix:" + sock},
		e2eSvcLight...), img)...)
	cmd.Env = append(os.Environ(), "NOTIFY_SOCKET="+addr)
	p := e2eSvcStart(t, cmd)
	got := e2eSvcNotified(t, mgr)
	if !strings.HasPrefix(got, "READY=1\n") || !strings.Contains(got, "STATUS=serving 1 ") {
		t.Fatalf("notification %q, want READY=1 and a STATUS line", got)
	}
	// Ready means serving: no retry, no wait for the socket to appear.
	if size := e2eSvcSize(t, "nbd+unix:///?socket="+sock); size != 4<<20 {
		t.Fatalf("size right after READY=1: %d", size)
	}
	p.stop(t)
	if got := e2eSvcNotified(t, mgr); got != "STOPPING=1" {
		t.Fatalf("notification after SIGTERM %q, want STOPPING=1", got)
	}
}

// TestE2EServiceActivatedFDs passes a TCP and a Unix listener as fds 3 and
// 4, as systemd does for two ListenStream= lines, with a -listen that would
// fail if used: both inherited sockets serve.
func TestE2EServiceActivatedFDs(t *testing.T) {
	e2eNeedTool(t, "nbdinfo")
	dir := e2eSocketDir(t)
	img := e2eMakeFile(t, t.TempDir(), "disk.img", 4<<20, 0)
	tcp, err := plainTCPListen("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer tcp.Close()
	sock := filepath.Join(dir, "nbd.sock")
	ux, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer ux.Close()
	files := []*os.File{e2eSvcFile(t, tcp.(*net.TCPListener)),
		e2eSvcFile(t, ux.(*net.UnixListener))}
	args := append(append([]string{"-print-uri", "-listen", "unix:/nonexistent/dir/s"},
		e2eSvcLight...), "disk="+img)
	p := e2eSvcStart(t, e2eSvcActivated(t, context.Background(), files,
		[]string{"LISTEN_FDS=2", "LISTEN_FDNAMES=tcp:unix"}, args...))
	uris := p.waitOutput(t, p.stdout, regexp.MustCompile(`^nbd`), 2)
	want := []string{"nbd://" + tcp.Addr().String() + "/disk",
		"nbd+unix:///disk?socket=" + sock}
	if strings.Join(uris, " ") != strings.Join(want, " ") {
		t.Fatalf("-print-uri printed %q, want %q", uris, want)
	}
	for _, u := range uris {
		if got := e2eSvcSize(t, u); got != 4<<20 {
			t.Fatalf("%s: size %d", u, got)
		}
	}
}

// TestE2EServiceActivationRefused hands nbdring malformed activation
// variables and descriptors: each is refused at once, exit status 1, with a
// message naming what was wrong.
func TestE2EServiceActivationRefused(t *testing.T) {
	dir := e2eSocketDir(t)
	img := e2eMakeFile(t, t.TempDir(), "disk.img", 1<<20, 0)
	regular, err := os.Open(img)
	if err != nil {
		t.Fatal(err)
	}
	defer regular.Close()
	dgram, err := net.ListenUnixgram("unixgram", &net.UnixAddr{
		Name: filepath.Join(dir, "d.sock"), Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	defer dgram.Close()
	tcp, err := plainTCPListen("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer tcp.Close()
	conn, err := net.Dial("tcp", tcp.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	listening := e2eSvcFile(t, tcp.(*net.TCPListener))
	cases := []struct {
		name  string
		files []*os.File
		env   []string
		want  string
	}{
		{"count not a number", []*os.File{listening}, []string{"LISTEN_FDS=one"},
			`LISTEN_FDS="one" is not a count of sockets`},
		{"count zero", []*os.File{listening}, []string{"LISTEN_FDS=0"},
			`LISTEN_FDS="0" is not a count of sockets between 1 and 64`},
		{"regular file", []*os.File{regular}, []string{"LISTEN_FDS=1"},
			"LISTEN_FDS=1: fd 3 is not a socket"},
		{"datagram socket", []*os.File{e2eSvcFile(t, dgram)}, []string{"LISTEN_FDS=1"},
			"fd 3 is a socket of type 2, not a stream socket"},
		{"connection, not listener", []*os.File{e2eSvcFile(t, conn.(*net.TCPConn))},
			[]string{"LISTEN_FDS=1"}, "fd 3 is a stream socket that is not listening"},
		{"fewer fds than counted", []*os.File{listening}, []string{"LISTEN_FDS=2"},
			"LISTEN_FDS=2: fd 4 is not"}, // Go's runtime may hold fd 4 (cgroup files)
		{"names mismatch", []*os.File{listening},
			[]string{"LISTEN_FDS=1", "LISTEN_FDNAMES=a:b"}, `LISTEN_FDNAMES="a:b" names 2`},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), e2eStartTimeout)
			defer cancel()
			out, err := e2eSvcActivated(t, ctx, c.files, c.env,
				append(e2eSvcLight, img)...).CombinedOutput()
			var ee *exec.ExitError
			if !errors.As(err, &ee) || ee.ExitCode() != 1 {
				t.Fatalf("exit %v, want status 1; output:\n%s", err, out)
			}
			if !strings.Contains(string(out), c.want) {
				t.Fatalf("output lacks %q:\n%s", c.want, out)
			}
			if strings.Contains(string(out), "shards on CPUs") {
				t.Errorf("shards started before the sockets were checked:\n%s", out)
			}
		})
	}
}

// TestE2EServicePrintURI starts nbdring on each -listen form and hands
// the URI -print-uri printed to nbdinfo.
func TestE2EServicePrintURI(t *testing.T) {
	e2eNeedTool(t, "nbdinfo")
	img := e2eMakeFile(t, t.TempDir(), "disk.img", 4<<20, 0)
	sock := filepath.Join(e2eSocketDir(t), "nbd.sock")
	cases := []struct {
		listen, export string
		want           string // regexp for the printed URI
	}{
		{":0", img, `^nbd://localhost:[1-9][0-9]*$`},
		{"127.0.0.1:0", img, `^nbd://127\.0\.0\.1:[1-9][0-9]*$`},
		{"[::1]:0", img, `^nbd://\[::1\]:[1-9][0-9]*$`},
		{"unix:" + sock, "disk=" + img, `^nbd\+unix:///disk\?socket=` +
			regexp.QuoteMeta(sock) + `$`},
	}
	for _, c := range cases {
		t.Run(c.listen, func(t *testing.T) {
			if strings.HasPrefix(c.listen, "[::1]") {
				if ln, err := plainTCPListen("[::1]:0"); err != nil {
					skipMissing(t, "ipv6", "no IPv6 loopback: %v", err)
				} else {
					ln.Close()
				}
			}
			p := e2eSvcStart(t, exec.Command(e2eBin(t), append(append([]string{
				"-print-uri", "-listen", c.listen}, e2eSvcLight...), c.export)...))
			uri := p.waitOutput(t, p.stdout, regexp.MustCompile(`.`), 1)[0]
			if !regexp.MustCompile(c.want).MatchString(uri) {
				t.Fatalf("-listen %s printed %q, want %s", c.listen, uri, c.want)
			}
			if got := e2eSvcSize(t, uri); got != 4<<20 {
				t.Fatalf("nbdinfo --size %s: %d", uri, got)
			}
			if !strings.Contains(p.stderr.String(), "try: nbdinfo "+shellQuote(uri)+"\n") {
				t.Errorf("log's try line does not show %s", shellQuote(uri))
			}
		})
	}
}

func TestE2EServiceVersion(t *testing.T) {
	out, errOut, err := e2eRunErr(e2eBin(t), "-version")
	if err != nil {
		t.Fatalf("nbdring -version: %v\n%s%s", err, out, errOut)
	}
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) < 3 || !regexp.MustCompile(`^nbdring \S+$`).MatchString(lines[0]) ||
		!regexp.MustCompile(`^go1\.\d+\S* linux/`).MatchString(lines[1]) {
		t.Fatalf("nbdring -version printed:\n%s\nwant the version, the Go version and "+
			"the dependencies", out)
	}
	for _, dep := range []string{"golang.org/x/sys v", "github.com/pawelgaczynski/giouring v"} {
		if !strings.Contains(out, "\n"+dep) {
			t.Errorf("nbdring -version lacks %s...:\n%s", dep, out)
		}
	}
}

// e2eSvcThreads reads the Uid, Gid and Cpus_allowed_list lines of every
// thread of pid.
func e2eSvcThreads(t *testing.T, pid int) map[string]map[string]string {
	t.Helper()
	dir := fmt.Sprintf("/proc/%d/task", pid)
	tasks, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	threads := map[string]map[string]string{}
	for _, task := range tasks {
		f, err := os.Open(filepath.Join(dir, task.Name(), "status"))
		if err != nil {
			continue // exited
		}
		fields := map[string]string{}
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			if k, v, ok := strings.Cut(sc.Text(), ":"); ok {
				fields[k] = strings.Join(strings.Fields(v), " ")
			}
		}
		f.Close()
		threads[task.Name()] = fields
	}
	return threads
}

// TestE2EServiceDropPrivileges starts nbdring as root with -user nobody:
// every thread, the pinned shard threads started before the switch
// included, ends up with nobody's IDs, and the export still serves writes
// and reads.
func TestE2EServiceDropPrivileges(t *testing.T) {
	e2eNeedTool(t, "nbdcopy")
	if os.Geteuid() != 0 {
		skipMissing(t, "root", "needs root to switch users (euid %d)", os.Geteuid())
	}
	nobody, err := user.Lookup("nobody")
	if err != nil {
		skipMissing(t, "user", "no user nobody: %v", err)
	}
	dir := t.TempDir()
	const size = 8 << 20
	src := e2eMakeFile(t, dir, "src.img", size, 5)
	export := e2eMakeFile(t, dir, "export.img", size, 0)
	s := e2eStart(t, "-user", "nobody", "-shards", "2", "-arena-mib", "128", export)
	// The socket accepts before the switch; the try line comes after it.
	for deadline := time.Now().Add(e2eStartTimeout); !strings.Contains(s.stderr.String(),
		"try: nbdinfo"); time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("no \"try: nbdinfo\" line after %v", e2eStartTimeout)
		}
	}

	threads := e2eSvcThreads(t, s.cmd.Process.Pid)
	want := fmt.Sprintf("%s %[1]s %[1]s %[1]s", nobody.Uid)
	wantGid := fmt.Sprintf("%s %[1]s %[1]s %[1]s", nobody.Gid)
	pinned := 0
	for tid, f := range threads {
		if f["Uid"] != want || f["Gid"] != wantGid || f["Groups"] != nobody.Gid {
			t.Errorf("thread %s: Uid %q Gid %q Groups %q, want Uid %q Gid %q Groups %q",
				tid, f["Uid"], f["Gid"], f["Groups"], want, wantGid, nobody.Gid)
		}
		if l := f["Cpus_allowed_list"]; l != "" && !strings.ContainsAny(l, ",-") {
			pinned++ // a shard thread: pinned to one CPU before the switch
		}
	}
	if pinned < 2 {
		t.Errorf("%d threads pinned to one CPU, want the 2 shard threads (threads: %v)",
			pinned, threads)
	}
	e2eRun(t, "nbdcopy", "--flush", src, s.uri(""))
	e2eSameBytes(t, "export after nbdcopy as nobody", e2eReadFile(t, export),
		e2eReadFile(t, src))
	back := filepath.Join(dir, "back.img")
	e2eRun(t, "nbdcopy", s.uri(""), back)
	e2eSameBytes(t, "nbdcopy back as nobody", e2eReadFile(t, back), e2eReadFile(t, src))

	out, errOut, err := e2eRunErr(e2eBin(t), append(append([]string{"-user",
		"no-such-user-nbdring", "-listen", "unix:" + filepath.Join(e2eSocketDir(t), "s")},
		e2eSvcLight...), export)...)
	if err == nil || !strings.Contains(errOut, "-user no-such-user-nbdring:") ||
		!strings.Contains(errOut, "numeric uid") {
		t.Fatalf("-user no-such-user-nbdring: %v, want a refusal naming the user\n%s%s",
			err, out, errOut)
	}
}

// TestE2EServiceUnits installs with `make install` into a staging DESTDIR
// and checks the layout, that ExecStart names the final path, and that
// systemd-analyze accepts the units and rates the service's exposure at
// most e2eSvcExposureMax.
func TestE2EServiceUnits(t *testing.T) {
	e2eNeedTool(t, "make", "systemd-analyze")
	const e2eSvcExposureMax = "25" // systemd-analyze's 0-100 scale; 1.6 ("OK") when written
	tmp := t.TempDir()
	prefix := filepath.Join(tmp, "prefix")
	dest := filepath.Join(tmp, "dest")
	root, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	vars := []string{"-C", root, "BIN=" + filepath.Join(tmp, "bin"), "PREFIX=" + prefix,
		"DESTDIR=" + dest}
	e2eRun(t, "make", append([]string{"install"}, vars...)...)
	staged := dest + prefix
	modes := map[string]os.FileMode{
		"bin/nbdring": 0o755, "bin/nbdbench": 0o755,
		"lib/systemd/system/nbdring.service": 0o644,
		"lib/systemd/system/nbdring.socket":  0o644,
		"share/doc/nbdring/nbdring.env":      0o644,
	}
	for f, mode := range modes {
		st, err := os.Stat(filepath.Join(staged, f))
		if err != nil {
			t.Fatalf("make install DESTDIR=%s PREFIX=%s: %v", dest, prefix, err)
		}
		if st.Mode().Perm() != mode {
			t.Errorf("%s: mode %v, want %v", f, st.Mode().Perm(), mode)
		}
	}
	unitDir := filepath.Join(staged, "lib/systemd/system")
	unit := string(e2eReadFile(t, filepath.Join(unitDir, "nbdring.service")))
	if !strings.Contains(unit, "\nExecStart="+prefix+"/bin/nbdring ") {
		t.Fatalf("installed unit's ExecStart does not name %s/bin/nbdring:\n%s", prefix, unit)
	}
	if !strings.Contains(unit, "\nExecReload=/bin/kill -HUP $MAINPID\n") {
		t.Fatalf("installed unit has no ExecReload sending SIGHUP (systemctl reload):\n%s",
			unit)
	}
	// ExecStart names PREFIX without DESTDIR, as on the final system; make
	// that path exist so systemd-analyze can check the executable.
	if err := os.Symlink(staged, prefix); err != nil {
		t.Fatal(err)
	}
	units := []string{filepath.Join(unitDir, "nbdring.service"),
		filepath.Join(unitDir, "nbdring.socket")}
	out, errOut, err := e2eRunErr("systemd-analyze", append([]string{"verify"}, units...)...)
	if err != nil || strings.TrimSpace(out+errOut) != "" {
		t.Fatalf("systemd-analyze verify: %v\n%s%s", err, out, errOut)
	}
	out, errOut, err = e2eRunErr("systemd-analyze", "security", "--offline=true",
		"--threshold="+e2eSvcExposureMax, units[0])
	score := regexp.MustCompile(`Overall exposure level for nbdring.service: (\S+)`).
		FindStringSubmatch(out)
	if err != nil || score == nil {
		t.Fatalf("systemd-analyze security: %v (want exposure <= %s/10)\n%s%s", err,
			e2eSvcExposureMax, out, errOut)
	}
	t.Logf("systemd-analyze security: exposure %s", score[1])

	e2eRun(t, "make", append([]string{"uninstall"}, vars...)...)
	for f := range modes {
		if _, err := os.Stat(filepath.Join(staged, f)); err == nil {
			t.Errorf("make uninstall left %s", f)
		}
	}
}
