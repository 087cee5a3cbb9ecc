package main

// Unit tests of the service-manager glue: the socket-activation and
// NOTIFY_SOCKET parsers, the descriptor checks, the client URI, the version
// string and the /proc thread-ID check. End-to-end tests of the same
// features, against the built binary, are in e2e_service_test.go.

import (
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"runtime/debug"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nbdring/nbdring/engine"
	"golang.org/x/sys/unix"
)

func envMap(m map[string]string) func(string) string {
	return func(k string) string { return m[k] }
}

func TestParseActivation(t *testing.T) {
	const pid = 4242
	cases := []struct {
		name    string
		env     map[string]string
		want    []activatedSocket
		wantErr string // substring; "" for success
	}{
		{"absent", map[string]string{}, nil, ""},
		{"other process", map[string]string{"LISTEN_PID": "1", "LISTEN_FDS": "1"}, nil, ""},
		{"one", map[string]string{"LISTEN_PID": "4242", "LISTEN_FDS": "1"},
			[]activatedSocket{{fd: 3}}, ""},
		{"two named", map[string]string{"LISTEN_PID": "4242", "LISTEN_FDS": "2",
			"LISTEN_FDNAMES": "tcp:unix"},
			[]activatedSocket{{3, "tcp"}, {4, "unix"}}, ""},
		{"pid not a number", map[string]string{"LISTEN_PID": "abc", "LISTEN_FDS": "1"},
			nil, `LISTEN_PID="abc" is not a process ID`},
		{"pid negative", map[string]string{"LISTEN_PID": "-4242", "LISTEN_FDS": "1"},
			nil, "is not a process ID"},
		{"fds not a number", map[string]string{"LISTEN_PID": "4242", "LISTEN_FDS": "x"},
			nil, `LISTEN_FDS="x" is not a count`},
		{"fds zero", map[string]string{"LISTEN_PID": "4242", "LISTEN_FDS": "0"},
			nil, `LISTEN_FDS="0" is not a count of sockets between 1 and 64`},
		{"fds too many", map[string]string{"LISTEN_PID": "4242", "LISTEN_FDS": "65"},
			nil, "between 1 and 64"},
		{"fds missing", map[string]string{"LISTEN_PID": "4242"},
			nil, "LISTEN_FDS is not set"},
		{"pid missing", map[string]string{"LISTEN_FDS": "1"},
			nil, "set without LISTEN_PID"},
		{"names mismatch", map[string]string{"LISTEN_PID": "4242", "LISTEN_FDS": "2",
			"LISTEN_FDNAMES": "one"}, nil, `LISTEN_FDNAMES="one" names 1 sockets`},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got, err := parseActivation(envMap(c.env), pid, activationFDFirst)
			if c.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), c.wantErr) {
					t.Fatalf("error %v, want one containing %q", err, c.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if fmt.Sprint(got) != fmt.Sprint(c.want) {
				t.Fatalf("got %v, want %v", got, c.want)
			}
		})
	}
}

// fdOf returns a duplicate of the descriptor behind a socket or file.
func fdOf(t *testing.T, c interface {
	File() (*os.File, error)
}) int {
	t.Helper()
	f, err := c.File()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return int(f.Fd())
}

func TestCheckListenFD(t *testing.T) {
	dir := t.TempDir()
	tcp, err := plainTCPListen("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer tcp.Close()
	ux, err := net.Listen("unix", filepath.Join(dir, "l.sock"))
	if err != nil {
		t.Fatal(err)
	}
	defer ux.Close()
	dgram, err := net.ListenUnixgram("unixgram", &net.UnixAddr{
		Name: filepath.Join(dir, "d.sock"), Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	defer dgram.Close()
	conn, err := net.Dial("tcp", tcp.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	unbound, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(unbound)
	file, err := os.Create(filepath.Join(dir, "file"))
	if err != nil {
		t.Fatal(err)
	}
	defer file.Close()
	const closed = 999 // a descriptor number nothing here opens
	if _, err := unix.FcntlInt(closed, unix.F_GETFD, 0); err != syscall.EBADF {
		t.Fatalf("fd %d is open (%v); pick another for the closed case", closed, err)
	}

	cases := []struct {
		name    string
		fd      int
		wantErr string
	}{
		{"tcp listener", fdOf(t, tcp.(*net.TCPListener)), ""},
		{"unix listener", fdOf(t, ux.(*net.UnixListener)), ""},
		{"datagram socket", fdOf(t, dgram), "not a stream socket"},
		{"connected socket", fdOf(t, conn.(*net.TCPConn)), "not listening"},
		{"unbound socket", unbound, "not listening"},
		{"regular file", int(file.Fd()), "is not a socket"},
		{"closed descriptor", closed, "is not an open descriptor"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			err := checkListenFD(c.fd)
			if c.wantErr == "" {
				if err != nil {
					t.Fatalf("fd %d: %v, want it accepted", c.fd, err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), c.wantErr) {
				t.Fatalf("fd %d: error %v, want one containing %q", c.fd, err, c.wantErr)
			}
		})
	}
}

// TestActivationListeners passes a TCP and a Unix listener at two
// consecutive high descriptors, as a launcher passes them at 3 and 4, and
// checks both are served, the variables are unset and the originals closed.
func TestActivationListeners(t *testing.T) {
	const fdFirst = 900 // below any RLIMIT_NOFILE, above what a test process holds
	tcp, err := plainTCPListen("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer tcp.Close()
	ux, err := net.Listen("unix", filepath.Join(t.TempDir(), "l.sock"))
	if err != nil {
		t.Fatal(err)
	}
	defer ux.Close()
	for i, fd := range []int{fdOf(t, tcp.(*net.TCPListener)), fdOf(t, ux.(*net.UnixListener))} {
		if err := unix.Dup3(fd, fdFirst+i, 0); err != nil {
			t.Fatalf("dup3 to %d: %v", fdFirst+i, err)
		}
		t.Cleanup(func() { unix.Close(fdFirst + i) })
	}
	t.Setenv("LISTEN_PID", fmt.Sprint(os.Getpid()))
	t.Setenv("LISTEN_FDS", "2")
	t.Setenv("LISTEN_FDNAMES", "tcp:unix")
	lns, err := activationListeners(fdFirst)
	if err != nil {
		t.Fatal(err)
	}
	defer closeListeners(lns)
	for _, v := range []string{"LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"} {
		if val, ok := os.LookupEnv(v); ok {
			t.Errorf("%s=%q still set after activation", v, val)
		}
	}
	if len(lns) != 2 {
		t.Fatalf("%d listeners, want 2", len(lns))
	}
	for i, want := range []net.Addr{tcp.Addr(), ux.Addr()} {
		if got := lns[i].ln.Addr().String(); got != want.String() {
			t.Errorf("listener %d on %s, want %s", i, got, want)
		}
		if !strings.Contains(lns[i].label, "socket-activated fd") {
			t.Errorf("listener %d label %q does not say it was activated", i, lns[i].label)
		}
		c, err := net.DialTimeout(want.Network(), want.String(), time.Second)
		if err != nil {
			t.Fatal(err)
		}
		c.Close()
		lns[i].ln.(interface{ SetDeadline(time.Time) error }).SetDeadline(
			time.Now().Add(time.Second))
		a, err := lns[i].ln.Accept()
		if err != nil {
			t.Fatalf("accept on activated listener %d: %v", i, err)
		}
		a.Close()
		if _, err := unix.FcntlInt(uintptr(fdFirst+i), unix.F_GETFD, 0); err != syscall.EBADF {
			t.Errorf("inherited fd %d still open after wrapping (%v): it would leak",
				fdFirst+i, err)
		}
	}
}

// TestNotifier sends to a fake service manager on a path and on an
// abstract socket, and checks the datagrams.
func TestNotifier(t *testing.T) {
	for _, abstract := range []bool{false, true} {
		t.Run(fmt.Sprintf("abstract=%v", abstract), func(t *testing.T) {
			addr := filepath.Join(t.TempDir(), "notify")
			if abstract {
				addr = fmt.Sprintf("@nbdring-test-%d-%d", os.Getpid(), time.Now().UnixNano())
			}
			mgr, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: addr,
				Net: "unixgram"})
			if err != nil {
				t.Fatal(err)
			}
			defer mgr.Close()
			n, err := newNotifier(envMap(map[string]string{"NOTIFY_SOCKET": addr}))
			if err != nil {
				t.Fatal(err)
			}
			n.ready("serving 1 exports on 1 listeners")
			n.stopping()
			buf := make([]byte, 4096)
			for _, want := range []string{
				"READY=1\nSTATUS=serving 1 exports on 1 listeners", "STOPPING=1"} {
				mgr.SetReadDeadline(time.Now().Add(2 * time.Second))
				k, err := mgr.Read(buf)
				if err != nil {
					t.Fatalf("manager read: %v", err)
				}
				if got := string(buf[:k]); got != want {
					t.Fatalf("datagram %q, want %q", got, want)
				}
			}
			if abstract {
				if _, err := os.Stat(addr); err == nil {
					t.Fatalf("%s exists as a file: the socket was not abstract", addr)
				}
			}
		})
	}
}

func TestNewNotifier(t *testing.T) {
	if n, err := newNotifier(envMap(nil)); n != nil || err != nil {
		t.Fatalf("unset NOTIFY_SOCKET: %v, %v; want no notifier and no error", n, err)
	}
	for _, bad := range []string{"relative/path", "@", "vsock:2:1234"} {
		_, err := newNotifier(envMap(map[string]string{"NOTIFY_SOCKET": bad}))
		if err == nil || !strings.Contains(err.Error(), "neither an absolute path") {
			t.Errorf("NOTIFY_SOCKET=%q: error %v, want a refusal", bad, err)
		}
	}
	var n *notifier // what an unset NOTIFY_SOCKET gives: sends nothing, fails nothing
	if err := n.send("READY=1"); err != nil {
		t.Fatal(err)
	}
}

func TestClientURI(t *testing.T) {
	tcp := func(s string) net.Addr {
		a, err := net.ResolveTCPAddr("tcp", s)
		if err != nil {
			t.Fatal(err)
		}
		return a
	}
	ux := func(p string) net.Addr { return &net.UnixAddr{Name: p, Net: "unix"} }
	cases := []struct {
		listen string
		addr   net.Addr
		export string
		want   string
	}{
		{":10910", tcp("[::]:10910"), "", "nbd://localhost:10910"},
		{"0.0.0.0:10910", tcp("0.0.0.0:10910"), "", "nbd://localhost:10910"},
		{"[::]:10910", tcp("[::]:10910"), "", "nbd://localhost:10910"},
		{"localhost:10809", tcp("127.0.0.1:10809"), "", "nbd://localhost:10809"},
		{"localhost:0", tcp("127.0.0.1:43210"), "", "nbd://localhost:43210"},
		{"127.0.0.1:0", tcp("127.0.0.1:43210"), "", "nbd://127.0.0.1:43210"},
		{"[::1]:10809", tcp("[::1]:10809"), "", "nbd://[::1]:10809"},
		{"[fe80::1%eth0]:10809", &net.TCPAddr{IP: net.ParseIP("fe80::1"), Port: 10809,
			Zone: "eth0"}, "", "nbd://[fe80::1%25eth0]:10809"},
		{"192.0.2.7:10809", tcp("192.0.2.7:10809"), "disk", "nbd://192.0.2.7:10809/disk"},
		{"", tcp("[::]:10809"), "", "nbd://localhost:10809"}, // socket-activated
		{":10809", tcp("[::]:10809"), "a b/c", "nbd://localhost:10809/a%20b/c"},
		{"unix:/run/nbd.sock", ux("/run/nbd.sock"), "", "nbd+unix:///?socket=/run/nbd.sock"},
		{"unix:/run/nbd.sock", ux("/run/nbd.sock"), "disk",
			"nbd+unix:///disk?socket=/run/nbd.sock"},
		{"unix:/tmp/a&b.sock", ux("/tmp/a&b.sock"), "", "nbd+unix:///?socket=/tmp/a%26b.sock"},
	}
	for _, c := range cases {
		if got := clientURI(c.listen, c.addr, c.export); got != c.want {
			t.Errorf("clientURI(%q, %v, %q) = %q, want %q", c.listen, c.addr, c.export,
				got, c.want)
		}
	}
}

func TestURIExport(t *testing.T) {
	cases := []struct {
		names []string
		want  string
	}{
		{[]string{""}, ""},
		{[]string{"disk"}, "disk"},
		{[]string{"a", "", "b"}, ""},
		{[]string{"a", "b"}, "a"},
	}
	for _, c := range cases {
		if got := uriExport(c.names); got != c.want {
			t.Errorf("uriExport(%q) = %q, want %q", c.names, got, c.want)
		}
	}
}

func TestShellQuote(t *testing.T) {
	cases := map[string]string{
		"nbd://localhost:10809":            "nbd://localhost:10809",
		"nbd+unix:///?socket=/tmp/s":       "'nbd+unix:///?socket=/tmp/s'",
		"nbd+unix:///?socket=/tmp/it's":    `'nbd+unix:///?socket=/tmp/it'\''s'`,
		"nbd://[::1]:10809":                "'nbd://[::1]:10809'",
		"nbd://localhost:10809/a%20b":      "nbd://localhost:10809/a%20b",
		"nbd+unix:///d?socket=/tmp/a%26b&": "'nbd+unix:///d?socket=/tmp/a%26b&'",
	}
	for in, want := range cases {
		if got := shellQuote(in); got != want {
			t.Errorf("shellQuote(%q) = %s, want %s", in, got, want)
		}
	}
}

func TestBuildVersion(t *testing.T) {
	rev := "fa1a057a1dfdaf0e06030d1e79bf99564296e5ae"
	set := func(kv ...string) []debug.BuildSetting {
		var s []debug.BuildSetting
		for i := 0; i < len(kv); i += 2 {
			s = append(s, debug.BuildSetting{Key: kv[i], Value: kv[i+1]})
		}
		return s
	}
	cases := []struct {
		name string
		bi   *debug.BuildInfo
		want string
	}{
		{"no build info", nil, "devel"},
		{"tag", &debug.BuildInfo{Main: debug.Module{Version: "v1.2.3"}}, "v1.2.3"},
		{"pseudo-version", &debug.BuildInfo{Main: debug.Module{
			Version: "v0.0.0-20261123054940-fa1a057a1dfd+dirty"},
			Settings: set("vcs.revision", rev)}, "v0.0.0-20261123054940-fa1a057a1dfd+dirty"},
		{"revision", &debug.BuildInfo{Main: debug.Module{Version: "(devel)"},
			Settings: set("vcs.revision", rev, "vcs.modified", "false")}, "fa1a057a1dfd"},
		{"modified", &debug.BuildInfo{Main: debug.Module{Version: "(devel)"},
			Settings: set("vcs.revision", rev, "vcs.modified", "true")},
			"fa1a057a1dfd+modified"},
		{"nothing", &debug.BuildInfo{Main: debug.Module{Version: "(devel)"}}, "devel"},
	}
	for _, c := range cases {
		if got := buildVersion(c.bi); got != c.want {
			t.Errorf("%s: buildVersion = %q, want %q", c.name, got, c.want)
		}
	}
	text := versionText(&debug.BuildInfo{GoVersion: "go1.99", Main: debug.Module{
		Version: "v1.2.3"}, Deps: []*debug.Module{{Path: "golang.org/x/sys",
		Version: "v0.49.0"}, {Path: "example.com/a", Version: "v1.0.0",
		Replace: &debug.Module{Path: "../a", Version: ""}}}})
	for _, want := range []string{"nbdring v1.2.3\n", "go1.99 linux/", "golang.org/x/sys v0.49.0\n",
		"example.com/a v1.0.0 => ../a"} {
		if !strings.Contains(text, want) {
			t.Errorf("versionText lacks %q:\n%s", want, text)
		}
	}
}

// TestCheckThreads runs the thread-ID check on fake /proc task
// directories: one with every thread switched, one with a thread left at
// root's IDs.
func TestCheckThreads(t *testing.T) {
	status := func(uid, gid int) string {
		return fmt.Sprintf("Name:\tnbdring\nUid:\t%d\t%[1]d\t%[1]d\t%[1]d\n"+
			"Gid:\t%d\t%[2]d\t%[2]d\t%[2]d\nGroups:\t%[2]d\n", uid, gid)
	}
	mk := func(threads map[string]string) string {
		dir := t.TempDir()
		for tid, s := range threads {
			os.Mkdir(filepath.Join(dir, tid), 0o755)
			if err := os.WriteFile(filepath.Join(dir, tid, "status"), []byte(s),
				0o644); err != nil {
				t.Fatal(err)
			}
		}
		return dir
	}
	good := mk(map[string]string{"100": status(65534, 65534), "101": status(65534, 65534)})
	if err := checkThreads(good, 65534, 65534); err != nil {
		t.Fatalf("all threads switched: %v", err)
	}
	if err := checkThreads(good, -1, 65534); err != nil {
		t.Fatalf("group only: %v", err)
	}
	bad := mk(map[string]string{"100": status(65534, 65534), "101": status(0, 65534)})
	err := checkThreads(bad, 65534, 65534)
	if err == nil || !strings.Contains(err.Error(), "thread 101 still has Uid") {
		t.Fatalf("a thread kept uid 0: error %v, want a refusal naming thread 101", err)
	}
	badGid := mk(map[string]string{"100": status(65534, 0)})
	if err := checkThreads(badGid, 65534, 65534); err == nil {
		t.Fatal("a thread kept gid 0: no error")
	}
	garbled := mk(map[string]string{"100": "Uid:\t1\t2\n"})
	if err := checkThreads(garbled, 1, 1); err == nil {
		t.Fatal("a status without four IDs: no error")
	}
	// The real process: this test's own threads all have its IDs.
	if err := checkThreads("/proc/self/task", os.Getuid(), os.Getgid()); err != nil {
		t.Fatalf("this process: %v", err)
	}
}

// TestServeSeveralListeners runs the engine the way run does under socket
// activation, one Serve per listener: both greet a client, and Stop ends
// both Serve calls and closes both listeners; a Serve after Stop returns at
// once.
func TestServeSeveralListeners(t *testing.T) {
	path := filepath.Join(t.TempDir(), "disk.img")
	if err := os.WriteFile(path, make([]byte, 1<<20), 0o644); err != nil {
		t.Fatal(err)
	}
	exp, err := engine.OpenExport(engine.ExportConfig{Path: path})
	if err != nil {
		t.Fatal(err)
	}
	srv, err := engine.New(engine.Config{Shards: 1, ArenaSize: 128 << 20},
		[]*engine.Export{exp})
	if err != nil {
		t.Fatal(err)
	}
	var lns []net.Listener
	errc := make(chan error, 2)
	for i := 0; i < 2; i++ {
		ln, err := plainTCPListen("127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		lns = append(lns, ln)
		go func() { errc <- srv.Serve(ln) }()
	}
	for _, ln := range lns {
		c, err := net.DialTimeout("tcp", ln.Addr().String(), time.Second)
		if err != nil {
			t.Fatal(err)
		}
		c.SetDeadline(time.Now().Add(2 * time.Second))
		magic := make([]byte, 8)
		if _, err := io.ReadFull(c, magic); err != nil || string(magic) != "NBDMAGIC" {
			t.Fatalf("listener %v: greeting %q, %v", ln.Addr(), magic, err)
		}
		c.Close()
	}
	if err := srv.Stop(); err != nil {
		t.Fatal(err)
	}
	for range lns {
		select {
		case err := <-errc:
			if err != nil {
				t.Fatalf("Serve after Stop: %v, want nil", err)
			}
		case <-time.After(2 * time.Second):
			t.Fatal("a Serve call still runs after Stop: its listener was not closed")
		}
	}
	for _, ln := range lns {
		if c, err := net.DialTimeout("tcp", ln.Addr().String(), time.Second); err == nil {
			c.Close()
			t.Errorf("listener %v still accepts after Stop", ln.Addr())
		}
	}
	late, err := plainTCPListen("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- srv.Serve(late) }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Serve after Stop: %v", err)
		}
	case <-time.After(2 * time.Second):
		late.Close()
		t.Fatal("Serve called after Stop kept accepting")
	}
}
