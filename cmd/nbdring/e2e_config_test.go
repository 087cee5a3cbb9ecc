package main

// End-to-end tests of the operator's side: -config, -run (captive mode),
// the log lines, and the start-up checks, against the built binary.

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nbdring/nbdring/wire"
)

// e2eLight keeps each server small: one shard, the smallest arena.
var e2eLight = []string{"-shards", "1", "-arena-mib", "128"}

// e2eNbdring runs nbdring to completion (within e2eToolTimeout) and
// returns its combined output and exit status.
func e2eNbdring(t *testing.T, args ...string) (string, int) {
	t.Helper()
	return e2eNbdringCmd(t, exec.Command(e2eBin(t), args...))
}

func e2eNbdringCmd(t *testing.T, cmd *exec.Cmd) (string, int) {
	t.Helper()
	var out e2eBuffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	var err error
	select {
	case err = <-done:
	case <-time.After(e2eToolTimeout):
		cmd.Process.Kill()
		<-done
		t.Fatalf("nbdring %s still running after %v; killed:\n%s",
			strings.Join(cmd.Args[1:], " "), e2eToolTimeout, out.String())
	}
	var ee *exec.ExitError
	if err != nil && !errors.As(err, &ee) {
		t.Fatal(err)
	}
	return out.String(), cmd.ProcessState.ExitCode()
}

// e2eWriteConfig writes a -config file into dir.
func e2eWriteConfig(t *testing.T, dir, text string) string {
	t.Helper()
	p := filepath.Join(dir, "nbdring.toml")
	if err := os.WriteFile(p, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// e2eInfoList is `nbdinfo --list --json` with the fields read here.
type e2eInfoList struct {
	Exports []struct {
		Name        string `json:"export-name"`
		Description string `json:"description"`
		Size        int64  `json:"export-size"`
		ReadOnly    bool   `json:"is_read_only"`
		CanTrim     bool   `json:"can_trim"`
		CanZero     bool   `json:"can_zero"`
		CanFastZero bool   `json:"can_fast_zero"`
		CanFlush    bool   `json:"can_flush"`
	} `json:"exports"`
}

// TestE2EConfigExports: two exports from -config, listed by nbdinfo with
// their descriptions and flags: the read-only one advertises neither TRIM
// nor WRITE_ZEROES nor FAST_ZERO; trim = "ignore" keeps data a TRIM would
// have dropped, while the default honours it.
func TestE2EConfigExports(t *testing.T) {
	e2eNeedTool(t, "nbdinfo", "qemu-io")
	dir := t.TempDir()
	rw := e2eMakeFile(t, dir, "rw.img", 4<<20, 0)
	ro := e2eMakeFile(t, dir, "ro.img", 2<<20, 7)
	keep := e2eMakeFile(t, dir, "keep.img", 1<<20, 0)
	cfg := e2eWriteConfig(t, dir, fmt.Sprintf(`
[[export]]
name = "rw"
path = %q
description = "scratch disk"

[[export]]
name = "ro"
path = %q
read-only = true

[[export]]
name = "keep"
path = %q
trim = "ignore"
`, rw, ro, keep))
	s := e2eStart(t, append(e2eLight, "-config", cfg)...)
	var list e2eInfoList
	out := e2eRun(t, "nbdinfo", "--list", "--json", s.uri(""))
	if err := json.Unmarshal([]byte(out), &list); err != nil {
		t.Fatalf("nbdinfo --list --json: %v\n%s", err, out)
	}
	if len(list.Exports) != 3 {
		t.Fatalf("nbdinfo lists %d exports, want 3:\n%s", len(list.Exports), out)
	}
	byName := map[string]int{}
	for i, e := range list.Exports {
		byName[e.Name] = i
	}
	e := list.Exports[byName["rw"]]
	if e.Description != "scratch disk" || e.Size != 4<<20 || e.ReadOnly || !e.CanTrim ||
		!e.CanZero || !e.CanFastZero {
		t.Errorf("export rw: %+v, want description, 4 MiB, writable with trim and zero", e)
	}
	e = list.Exports[byName["ro"]]
	if e.Description != "" || e.Size != 2<<20 || !e.ReadOnly || e.CanTrim || e.CanZero ||
		e.CanFastZero || !e.CanFlush {
		t.Errorf("export ro: %+v, want no description (not the path), read-only, no "+
			"trim, zero or fast zero", e)
	}
	// TRIM on "keep" succeeds and the data stays; on "rw" it is gone.
	for _, c := range []struct{ export, after string }{{"keep", "0x55"}, {"rw", "0"}} {
		out := e2eProtoQemuIO(t, s.uri(c.export), "write -P 0x55 0 64k", "discard 0 64k",
			"read -P "+c.after+" 0 64k")
		if strings.Contains(out, "Pattern verification failed") {
			t.Errorf("export %s: after TRIM, want pattern %s:\n%s", c.export, c.after, out)
		}
	}
}

// TestE2EConfigMistakes: a mistake in the file names FILE:LINE and the
// key, and the server stops before any shard starts; -config with EXPORT
// arguments, or two listen settings, is refused saying so.
func TestE2EConfigMistakes(t *testing.T) {
	dir := t.TempDir()
	img := e2eMakeFile(t, dir, "a.img", 1<<20, 0)
	good := fmt.Sprintf("listen = [\"unix:%s/s.sock\"]\n\n[[export]]\npath = %q\n", dir, img)
	cfg := e2eWriteConfig(t, dir, good+"read_only = true\n")
	cfgGood := e2eWriteConfig(t, t.TempDir(), good)
	cfgMissing := e2eWriteConfig(t, t.TempDir(), good+"\n[[export]]\nname = \"m\"\n"+
		"path = \"/nonexistent/m.img\"\n")
	cases := []struct {
		name string
		args []string
		want string
	}{
		{"unknown key", []string{"-config", cfg}, cfg + ":5: key export.read_only " +
			"(export 1): unknown key"},
		{"export missing", []string{"-config", cfgMissing}, cfgMissing + ":8: key " +
			"export.path (export 2, name \"m\"): open export \"/nonexistent/m.img\": no such"},
		{"exports as well", []string{"-config", cfgGood, img}, "-config " + cfgGood +
			" names the exports, so EXPORT arguments (" + img + ") are not taken"},
		{"listen twice", []string{"-listen", "localhost:0", "-config", cfgGood},
			"-listen localhost:0 and " + cfgGood + "'s listen both say where to serve"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			out, code := e2eNbdring(t, append(e2eLight, c.args...)...)
			if code != 1 || !strings.Contains(out, c.want) {
				t.Errorf("exit %d, want 1 and %q:\n%s", code, c.want, out)
			}
			if strings.Contains(out, "shards on CPUs") {
				t.Errorf("shards started before the mistake was found:\n%s", out)
			}
		})
	}
}

// TestE2ERun: captive mode. The command gets $uri (and nbdkit's other
// variables) for a private Unix socket, real clients connect through it,
// its exit status becomes nbdring's, and the socket's directory is gone
// afterwards; with -config's listen, $uri names that address.
func TestE2ERun(t *testing.T) {
	e2eNeedTool(t, "nbdinfo", "qemu-img")
	dir := t.TempDir()
	img := e2eMakeFile(t, dir, "disk.img", 3<<20, 0)
	seen := filepath.Join(dir, "seen")
	cases := []struct {
		name   string
		args   []string
		cmd    string
		status int
		want   string
	}{
		{"nbdinfo", nil, `nbdinfo "$uri"`, 0, "export-size: 3145728"},
		{"qemu-img", nil, `qemu-img info "$uri"`, 0, "virtual size: 3 MiB"},
		{"status passed through", nil, `nbdinfo "$uri" >/dev/null && exit 7`, 7, ""},
		{"killed by a signal", nil, `kill -TERM $$`, 128 + 15, ""},
		{"variables", nil, `echo "uri=$uri nbd=$nbd port=[$port] exportname=[$exportname]"` +
			`; echo "$unixsocket" > ` + seen + `; test "$nbd" = "$uri" && test -z "$port" ` +
			`&& test -S "$unixsocket" && test -z "${NOTIFY_SOCKET+set}"`, 0,
			"uri=nbd+unix:///?socket=/"},
		{"tcp listen", []string{"-listen", "127.0.0.1:0"},
			`test "$port" -gt 0 && test -z "$unixsocket" && nbdinfo "$uri"`, 0,
			"uri: nbd://127.0.0.1:"},
		{"named export", []string{"-run", `nbdinfo "$uri"; echo "[$exportname]"`},
			"", 0, "[d]"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			args := append(append([]string{}, e2eLight...), c.args...)
			if c.cmd != "" {
				args = append(args, "-run", c.cmd, img)
			} else {
				args = append(args, "d="+img)
			}
			cmd := exec.Command(e2eBin(t), args...)
			cmd.Env = append(os.Environ(), "NOTIFY_SOCKET=@nbdring-test-none")
			out, code := e2eNbdringCmd(t, cmd)
			if code != c.status || !strings.Contains(out, c.want) {
				t.Errorf("exit %d, want %d; output lacks %q? output:\n%s", code, c.status,
					c.want, out)
			}
		})
	}
	sock, err := os.ReadFile(seen)
	if err != nil {
		t.Fatal(err)
	}
	if d := filepath.Dir(strings.TrimSpace(string(sock))); d == "." {
		t.Errorf("$unixsocket %q has no directory", sock)
	} else if _, err := os.Stat(d); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("private socket directory %s still there after exit: %v", d, err)
	}
	t.Run("config listen", func(t *testing.T) {
		cfg := e2eWriteConfig(t, t.TempDir(), fmt.Sprintf(
			"listen = [\"unix:%s/c.sock\"]\n[[export]]\nname = \"c\"\npath = %q\n", dir, img))
		out, code := e2eNbdring(t, append(e2eLight, "-config", cfg,
			"-run", `echo "uri=$uri"; nbdinfo "$uri"`)...)
		want := "uri=nbd+unix:///c?socket=" + dir + "/c.sock"
		if code != 0 || !strings.Contains(out, want) {
			t.Errorf("exit %d, want 0 and %q:\n%s", code, want, out)
		}
	})
}

// TestE2ERunSigterm: SIGTERM to nbdring while the command runs is passed
// on to the command; nbdring stops once it exits and exits with its
// status (143: killed by SIGTERM).
func TestE2ERunSigterm(t *testing.T) {
	dir := t.TempDir()
	img := e2eMakeFile(t, dir, "disk.img", 1<<20, 0)
	started := filepath.Join(dir, "started")
	cmd := exec.Command(e2eBin(t), append(e2eLight, "-run",
		"echo $$ > "+started+"; exec sleep 30", img)...)
	var out e2eBuffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	t.Cleanup(func() {
		cmd.Process.Kill()
		if t.Failed() {
			t.Logf("output:\n%s", out.String())
		}
	})
	var pid []byte
	for deadline := time.Now().Add(e2eStartTimeout); len(pid) == 0; {
		if time.Now().After(deadline) {
			t.Fatalf("the -run command did not start in %v", e2eStartTimeout)
		}
		time.Sleep(20 * time.Millisecond)
		pid, _ = os.ReadFile(started)
	}
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case <-done:
	case <-time.After(e2eStopTimeout):
		t.Fatalf("nbdring still running %v after SIGTERM", e2eStopTimeout)
	}
	if code := cmd.ProcessState.ExitCode(); code != 143 {
		t.Errorf("exit status %d, want 143 (the command's: killed by SIGTERM)", code)
	}
	if !strings.Contains(out.String(), "passing it on to the -run command") {
		t.Errorf("no line says the signal was passed on:\n%s", out.String())
	}
	var p int
	fmt.Sscan(string(pid), &p)
	if p > 0 && syscall.Kill(p, 0) == nil {
		t.Errorf("the command (pid %d) still runs after nbdring exited", p)
	}
}

// TestE2ELogLines: -log-format json; every line is a JSON object; each
// connection has one line at connect and one at close, with client,
// export, shard, tls, requests, duration and the reason it closed (DISC,
// client disconnect, protocol error, server shutdown, cut at shutdown);
// 200 requests add no line.
func TestE2ELogLines(t *testing.T) {
	path := e2eMakeFile(t, t.TempDir(), "disk.img", 1<<20, 0)
	s, addr := e2eStartTCP(t, append(e2eLight, "-log-format", "json", "-log-level",
		"info", "disk="+path)...)
	dial := func() net.Conn {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		_ = c.SetDeadline(time.Now().Add(30 * time.Second))
		_, err = wire.ClientHandshake(c, wire.ClientOptions{Name: "disk",
			BlockSize: true})
		if err != nil {
			t.Fatalf("handshake: %v", err)
		}
		return c
	}
	// A connection that does 200 READs, then DISC.
	disc := dial()
	const reads = 200
	var reqs []byte
	for i := uint64(0); i < reads; i++ {
		reqs = append(reqs, e2eRequest(wire.CmdRead, i, i*4096%(1<<20), 4096)...)
	}
	if _, err := disc.Write(reqs); err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(disc, make([]byte, reads*(wire.SimpleReplySize+4096))); err != nil {
		t.Fatal(err)
	}
	disc.Write(e2eRequest(wire.CmdDisc, reads, 0, 0))
	io.Copy(io.Discard, disc) // until the server closes
	// One that hangs up, one that sends garbage, one idle until shutdown.
	gone := dial()
	gone.Close()
	bad := dial()
	bad.Write(make([]byte, wire.RequestSize)) // magic 0
	io.Copy(io.Discard, bad)
	idle := dial()
	// Half a WRITE payload, then nothing: shutdown's grace ends, it is cut.
	stalled := dial()
	stalled.Write(append(e2eRequest(wire.CmdWrite, 1, 0, 1<<20), make([]byte, 512<<10)...))
	want := map[string]string{
		disc.LocalAddr().String():    "DISC",
		stalled.LocalAddr().String(): "cut at shutdown",
		gone.LocalAddr().String():    "client disconnect",
		bad.LocalAddr().String():     "protocol error",
		idle.LocalAddr().String():    "server shutdown",
	}
	for deadline := time.Now().Add(e2eStartTimeout); strings.Count(s.stderr.String(),
		`"msg":"connection"`) < len(want); time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("connection lines missing")
		}
	}
	sent := e2eSignal(t, s, syscall.SIGTERM)
	if _, ok := e2eWaitExit(s, sent, e2eGraceWait); !ok || s.err != nil {
		t.Fatalf("after SIGTERM: exited %v, %v", ok, s.err)
	}
	opened, closed := map[string]int{}, map[string]map[string]any{}
	lines := strings.Split(strings.TrimSpace(s.stderr.String()), "\n")
	for _, l := range lines {
		var r map[string]any
		if err := json.Unmarshal([]byte(l), &r); err != nil {
			t.Fatalf("not a JSON line: %q: %v", l, err)
		}
		client, _ := r["client"].(string)
		switch r["msg"] {
		case "connection":
			opened[client]++
		case "connection closed":
			closed[client] = r
		}
	}
	for client, reason := range want {
		r := closed[client]
		if opened[client] != 1 || r == nil {
			t.Errorf("%s: %d connect lines, close line %v; want one of each", client,
				opened[client], r)
			continue
		}
		if r["reason"] != reason || r["export"] != "disk" || r["tls"] != false ||
			r["shard"] != 0.0 || r["duration"] == nil || r["level"] != "INFO" {
			t.Errorf("%s: close line %v, want reason %q, export disk, shard 0, tls "+
				"false, a duration", client, r, reason)
		}
	}
	if n, _ := closed[disc.LocalAddr().String()]["requests"].(float64); n != reads+1 {
		t.Errorf("DISC connection: requests %v, want %d (READs and the DISC)", n, reads+1)
	}
	// Start-up lines, 2 per connection, the signal: far below one per request.
	if len(lines) > 30 {
		t.Errorf("%d log lines for %d requests: a line per request?", len(lines), reads)
	}
}

// TestE2EStartupChecks: each start-up mistake is refused before shards
// start, with the hint that fits it.
func TestE2EStartupChecks(t *testing.T) {
	img := e2eMakeFile(t, t.TempDir(), "a.img", 1<<20, 0)
	cases := []struct {
		name string
		args []string
		want string
	}{
		{"too many shards", []string{"-shards", "4096", img}, "-shards 4096: this " +
			"process may run on"},
		{"arena not a power of two", []string{"-arena-mib", "200", img},
			"-arena-mib 200: not a power of two"},
		{"arena too small", []string{"-arena-mib", "2", img},
			"-arena-mib 2: below the minimum of 4 MiB"},
		{"memory too small", []string{"-memory-mib", "2", img},
			"-memory-mib 2: below the minimum of 4 MiB"},
		{"memory short for the shards", []string{"-shards", "2", "-memory-mib", "6", img},
			"-memory-mib 6: 2 shards need at least 4 MiB of buffers each"},
		{"too many connections", []string{"-shards", "1", "-max-connections", "300", img},
			"-max-connections 300: want 1 to 256"},
		{"listen without port", []string{"-listen", "localhost", img},
			`-listen "localhost" has no port; add one: localhost:10809`},
		{"listen a URI", []string{"-listen", "nbd://localhost", img}, "is a URI"},
		{"log format", []string{"-log-format", "xml", img}, `-log-format "xml"`},
		{"run as another user", []string{"-run", "true", "-user", "nobody", img},
			"-run with -user or -group needs -listen"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			out, code := e2eNbdring(t, c.args...)
			if code == 0 || !strings.Contains(out, c.want) {
				t.Errorf("exit %d, want an error with %q:\n%s", code, c.want, out)
			}
			if strings.Contains(out, "shards on CPUs") {
				t.Errorf("shards started first:\n%s", out)
			}
		})
	}
	t.Run("port in use", func(t *testing.T) {
		ln, err := plainTCPListen("127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer ln.Close()
		out, code := e2eNbdring(t, append(e2eLight, "-listen", ln.Addr().String(), img)...)
		if code != 1 || !strings.Contains(out, "another NBD server on that port") {
			t.Errorf("exit %d, want 1 and the in-use hint:\n%s", code, out)
		}
	})
	t.Run("privileged port", func(t *testing.T) {
		if os.Geteuid() != 0 {
			skipMissing(t, "root", "needs root to start nbdring as another user")
		}
		cmd := exec.Command(e2eBin(t), "-listen", "127.0.0.1:80", img)
		cmd.SysProcAttr = &syscall.SysProcAttr{
			Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
		out, code := e2eNbdringCmd(t, cmd)
		if code != 1 || !strings.Contains(out, "port 80 is privileged") ||
			!strings.Contains(out, "CAP_NET_BIND_SERVICE") {
			t.Errorf("exit %d, want 1 and the privileged-port hint:\n%s", code, out)
		}
	})
}

// TestE2EOddSizes: a file whose size is not a multiple of its block is
// served up to its last whole block, and an empty file as an empty export
// (as qemu-nbd and nbdkit serve it); each with a warning that says what
// is hidden and the truncate -s that fixes it.
func TestE2EOddSizes(t *testing.T) {
	e2eNeedTool(t, "nbdinfo")
	dir := t.TempDir()
	odd := e2eMakeFile(t, dir, "odd.img", 1<<20+100, 0)
	empty := e2eMakeFile(t, dir, "empty.img", 0, 0)
	s := e2eStart(t, append(e2eLight, "odd="+odd, "empty="+empty)...)
	align := e2eDIOAlign(t, odd)
	for _, c := range []struct {
		export string
		size   int64
	}{{"odd", 1<<20 + 100 - (1<<20+100)%align}, {"empty", 0}} {
		info := e2eNbdinfo(t, s.uri(c.export))
		if len(info.Exports) != 1 || info.Exports[0].Size != c.size {
			t.Errorf("export %s: %+v, want size %d", c.export, info.Exports, c.size)
		}
	}
	out := s.stderr.String()
	hidden := (1<<20 + 100) % align
	for _, w := range []string{
		fmt.Sprintf("the last %d are hidden", hidden),
		fmt.Sprintf("truncate -s %d %s", 1<<20+100-hidden+align, odd),
		"export is empty (0 bytes)", "truncate -s SIZE " + empty,
	} {
		if !strings.Contains(out, w) {
			t.Errorf("output lacks %q:\n%s", w, out)
		}
	}
}

// TestE2EConfigTLS: tls-required = true in -config serves that export
// only over TLS (a plaintext client does not see it listed), a TLS client
// uses it and its close line says tls true; without -tls on the key is
// refused at start, naming the file, line and key.
func TestE2EConfigTLS(t *testing.T) {
	e2eNeedTool(t, "nbdinfo")
	ts := e2eNewTLS(t)
	dir := t.TempDir()
	pub := e2eMakeFile(t, dir, "public.img", 1<<20, 0)
	cfg := e2eWriteConfig(t, dir, fmt.Sprintf("[[export]]\nname = \"public\"\npath = %q\n"+
		"\n[[export]]\nname = \"secret\"\npath = %q\ntls-required = true\n", pub, ts.export))
	s, addr := e2eStartTCP(t, append(e2eLight, "-log-format", "json", "-tls", "on",
		"-tls-certificates", ts.serverDir, "-config", cfg)...)
	plain := e2eRun(t, "nbdinfo", "--list", "--json", "nbd://"+addr)
	if !strings.Contains(plain, `"public"`) || strings.Contains(plain, `"secret"`) {
		t.Errorf("plaintext --list shows the TLS-only export or hides the other:\n%s", plain)
	}
	out := e2eRun(t, "nbdinfo", "--size", e2eTLSURI(addr, "secret", ts.client))
	if strings.TrimSpace(out) != "67108864" {
		t.Errorf("secret over TLS: size %q", out)
	}
	e2eWaitLog(t, s, `"export":"secret","shard":0,"tls":true,"requests":`)
	t.Run("without -tls", func(t *testing.T) {
		out, code := e2eNbdring(t, append(e2eLight, "-config", cfg)...)
		want := cfg + ":8: key export.tls-required (export 2, name \"secret\"): " +
			"tls-required = true needs -tls on"
		if code != 1 || !strings.Contains(out, want) {
			t.Errorf("exit %d, want 1 and %q:\n%s", code, want, out)
		}
	})
}

// TestE2EConfigAllow: an export whose allow networks leave out the client
// (TCP from 127.0.0.1) is not listed and is refused by name with a
// message that says why; exports allowed to it, or with no allow rules,
// are served.
func TestE2EConfigAllow(t *testing.T) {
	e2eNeedTool(t, "nbdinfo")
	dir := t.TempDir()
	var paths []any
	for _, n := range []string{"lan", "local", "open"} {
		paths = append(paths, e2eMakeFile(t, dir, n+".img", 1<<20, 0))
	}
	cfg := e2eWriteConfig(t, dir, fmt.Sprintf(`
[[export]]
name = "lan"
path = %q
allow = ["10.0.0.0/8", "fd00::/8"]

[[export]]
name = "local"
path = %q
allow = ["127.0.0.1"]

[[export]]
name = "open"
path = %q
`, paths...))
	_, addr := e2eStartTCP(t, append(e2eLight, "-config", cfg)...)
	out := e2eRun(t, "nbdinfo", "--list", "--json", "nbd://"+addr)
	var list e2eInfoList
	if err := json.Unmarshal([]byte(out), &list); err != nil {
		t.Fatalf("nbdinfo --list --json: %v\n%s", err, out)
	}
	var names []string
	for _, e := range list.Exports {
		names = append(names, e.Name)
	}
	if strings.Join(names, ",") != "local,open" {
		t.Fatalf("listed %v from 127.0.0.1, want [local open]", names)
	}
	for _, n := range []string{"local", "open"} {
		e2eRun(t, "nbdinfo", "nbd://"+addr+"/"+n)
	}
	// libnbd shows the server's message only in its debug output; qemu-img
	// prints it as it is.
	if _, stderr, err := e2eRunErr("nbdinfo", "nbd://"+addr+"/lan"); err == nil {
		t.Fatalf("nbdinfo served the denied export: %s", stderr)
	}
	e2eNeedTool(t, "qemu-img")
	_, stderr, err := e2eRunErr("qemu-img", "info", "nbd://"+addr+"/lan")
	if err == nil || !strings.Contains(stderr, "not served to this client's address") {
		t.Fatalf("qemu-img info of the denied export: %v, said %q; want a refusal that "+
			"says why", err, stderr)
	}
}
