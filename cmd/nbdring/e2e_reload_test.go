package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nbdring/nbdring/bench"
)

// e2eReloadWait bounds the wait for a reload's log line.
const e2eReloadWait = 5 * time.Second

// e2eExportTOML is one [[export]] table.
func e2eExportTOML(name, path string, extra ...string) string {
	s := fmt.Sprintf("[[export]]\nname = %q\npath = %q\n", name, path)
	for _, x := range extra {
		s += x + "\n"
	}
	return s
}

// e2eReload writes text as the config and sends SIGHUP, then waits until
// the log has grown by a line matching want.
func e2eReload(t *testing.T, s *e2eServer, cfg, text string, want *regexp.Regexp) {
	t.Helper()
	before := len(s.stderr.String())
	if err := os.WriteFile(cfg, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := s.cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(e2eReloadWait)
	for !want.MatchString(s.stderr.String()[before:]) {
		if time.Now().After(deadline) {
			t.Fatalf("no log line matching %q within %v of SIGHUP; log since:\n%s", want,
				e2eReloadWait, s.stderr.String()[before:])
		}
		time.Sleep(20 * time.Millisecond)
	}
}

var (
	e2eReloaded      = regexp.MustCompile(`reload: \d+ exports served`)
	e2eReloadRefused = regexp.MustCompile(`reload refused`)
)

// e2eListNames are the exports nbdinfo --list sees.
func e2eListNames(t *testing.T, s *e2eServer) []string {
	t.Helper()
	var l e2eInfoList
	out := e2eRun(t, "nbdinfo", "--list", "--json", s.uri(""))
	if err := json.Unmarshal([]byte(out), &l); err != nil {
		t.Fatalf("nbdinfo --list --json: %v\n%s", err, out)
	}
	var names []string
	for _, e := range l.Exports {
		names = append(names, e.Name)
	}
	return names
}

// TestE2EReloadUnderLoad: clients on every export while the config is
// reloaded several times (an export added, one changed, one removed and
// added back, a broken file): the verified client on the export that
// never changes sees no error at all.
func TestE2EReloadUnderLoad(t *testing.T) {
	e2eNeedTool(t, "nbdinfo")
	dir := t.TempDir()
	var img [4]string
	for i := range img {
		img[i] = e2eMakeFile(t, dir, fmt.Sprintf("d%d.img", i), 16<<20, uint64(i))
	}
	base := e2eExportTOML("a", img[0]) + e2eExportTOML("b", img[1]) +
		e2eExportTOML("c", img[2])
	cfg := e2eWriteConfig(t, dir, base)
	s := e2eStart(t, append([]string{"-config", cfg}, e2eLight...)...)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	run := func(name string, verify bool, d time.Duration) chan *bench.Result {
		ch := make(chan *bench.Result, 1)
		go func() {
			res, err := bench.Run(ctx, bench.Config{URI: s.uri(name), RW: "randrw",
				Mix: 50, BS: 4096, QD: 8, Conns: 2, Duration: d, Verify: verify})
			if err != nil {
				res = bench.Result{Errors: 1, FirstError: err.Error()}
			}
			ch <- &res
		}()
		return ch
	}
	verified := run("a", true, 6*time.Second)
	others := []chan *bench.Result{run("b", false, 5*time.Second),
		run("c", false, 5*time.Second)}
	time.Sleep(500 * time.Millisecond)
	// counts: the reload's log line, down to how many exports it left
	// untouched (an unchanged export is not reopened).
	counts := func(s string) *regexp.Regexp {
		return regexp.MustCompile(`reload: \d+ exports served: ` + s + ` unchanged`)
	}
	steps := []struct {
		text string
		want *regexp.Regexp
	}{
		{base + e2eExportTOML("d", img[3]), counts("1 added, 0 changed, 0 removed, 3")},
		{base + e2eExportTOML("d", img[3], `description = "changed"`),
			counts("0 added, 1 changed, 0 removed, 3")},
		{strings.Replace(base, `name = "b"`, `name = "b"`+"\nmax-iops = 2000", 1),
			counts("0 added, 1 changed, 1 removed, 2")},
		{e2eExportTOML("a", img[0]) + e2eExportTOML("b", img[1]),
			counts("0 added, 1 changed, 1 removed, 1")},
		{base + "[[export\n", e2eReloadRefused},
		{base, counts("1 added, 0 changed, 0 removed, 2")},
	}
	for i, st := range steps {
		e2eReload(t, s, cfg, st.text, st.want)
		t.Logf("reload %d done", i+1)
		time.Sleep(300 * time.Millisecond)
	}
	res := <-verified
	if res.Errors > 0 || res.VerifyErrors > 0 || res.Ops == 0 {
		t.Errorf("verified client on the unchanged export: %d ops, %d errors, %d verify "+
			"errors (first: %s); want ops and no error", res.Ops, res.Errors,
			res.VerifyErrors, res.FirstError)
	}
	t.Logf("unchanged export: %d ops, %.0f IOPS, %d errors across %d reloads", res.Ops,
		res.IOPS, res.Errors+res.VerifyErrors, len(steps))
	for _, ch := range others {
		r := <-ch
		t.Logf("changed or removed export's client: %d ops, %d errors (%s)", r.Ops, r.Errors,
			r.FirstError)
	}
	if got := strings.Join(e2eListNames(t, s), ","); got != "a,b,c" {
		t.Errorf("exports after the reloads %q, want a,b,c", got)
	}
}

// e2eRemovePy writes NWRITES 4 KiB writes (block i filled with byte
// i+1) on one connection to export x, sends SIGHUP (the test has already
// written a config without x) while they are queued, and prints which
// succeeded and which failed with which errno.
const e2eRemovePy = `
import json, os, signal, sys, time, nbd
sock, pid, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
h = nbd.NBD()
h.set_export_name("x")
h.connect_unix(sock)
cookies = []
for i in range(n):
    cookies.append(h.aio_pwrite(bytearray([i + 1]) * 4096, i * 4096))
deadline = time.time() + 0.4
while time.time() < deadline:
    h.poll(0)
    time.sleep(0.01)
os.kill(pid, signal.SIGHUP)
ok, failed = [], {}
for i, c in enumerate(cookies):
    while True:
        try:
            if h.aio_command_completed(c):
                ok.append(i)
                break
        except nbd.Error as e:
            failed[i] = e.errnum or 0
            break
        try:
            h.poll(-1)
        except nbd.Error:
            pass
print(json.dumps({"ok": ok, "failed": failed}))
`

// TestE2EReloadRemoveInFlight: an export is removed while its client has
// writes queued (max-iops holds them back): those the server accepted are
// answered and are in the file; the rest fail (ESHUTDOWN, or the
// connection closes); the export is synced and closed.
func TestE2EReloadRemoveInFlight(t *testing.T) {
	e2eNeedTool(t, e2ePython)
	dir := t.TempDir()
	keep := e2eMakeFile(t, dir, "keep.img", 4<<20, 1)
	x := e2eMakeFile(t, dir, "x.img", 4<<20, 2)
	cfg := e2eWriteConfig(t, dir, e2eExportTOML("keep", keep)+
		e2eExportTOML("x", x, "max-iops = 40"))
	s := e2eStart(t, append([]string{"-config", cfg}, e2eLight...)...)
	// The reload the script triggers removes x.
	if err := os.WriteFile(cfg, []byte(e2eExportTOML("keep", keep)), 0o644); err != nil {
		t.Fatal(err)
	}
	py := filepath.Join(dir, "remove.py")
	if err := os.WriteFile(py, []byte(e2eRemovePy), 0o644); err != nil {
		t.Fatal(err)
	}
	// Few enough that every request fits in the socket's buffers before the
	// reload: libnbd fails all it has in flight with ENOTCONN, replies
	// already received included, if a send of its own meets the close
	// (EPIPE), and a client still sending when the server closes is racing.
	const writes = 30
	out := e2eRun(t, e2ePython, py, s.sock, fmt.Sprint(s.cmd.Process.Pid), fmt.Sprint(writes))
	var r struct {
		OK     []int          `json:"ok"`
		Failed map[string]int `json:"failed"`
	}
	if err := json.Unmarshal([]byte(out), &r); err != nil {
		t.Fatalf("script output %q: %v", out, err)
	}
	t.Logf("%d writes answered, %d failed (errnos %v)", len(r.OK), len(r.Failed), r.Failed)
	if len(r.OK) == 0 || len(r.Failed) == 0 || len(r.OK)+len(r.Failed) != writes {
		t.Fatalf("%d answered and %d failed of %d: want some of each (the removal "+
			"came while writes were queued)", len(r.OK), len(r.Failed), writes)
	}
	for i, ok := range r.OK {
		if ok != i {
			t.Fatalf("write %d answered after write %d failed: answers must be a prefix", ok, i)
		}
	}
	shutdown := 0
	for _, errno := range r.Failed {
		if errno == int(syscall.ESHUTDOWN) {
			shutdown++
		} else if errno != int(syscall.ENOTCONN) {
			t.Errorf("a write failed with errno %d; want ESHUTDOWN (or ENOTCONN once "+
				"closed)", errno)
		}
	}
	if shutdown == 0 {
		t.Errorf("no write got ESHUTDOWN: the request the server held was dropped " +
			"unanswered")
	}
	deadline := time.Now().Add(e2eReloadWait)
	for !strings.Contains(s.stderr.String(), `export "x" (`+x+`): synced and closed`) {
		if time.Now().After(deadline) {
			t.Fatalf("export x not synced and closed within %v of its removal", e2eReloadWait)
		}
		time.Sleep(20 * time.Millisecond)
	}
	data := e2eReadFile(t, x)
	for _, i := range r.OK {
		for _, b := range data[i*4096 : (i+1)*4096] {
			if b != byte(i+1) {
				t.Fatalf("block %d: acknowledged write not in the file (byte %#x)", i, b)
			}
		}
	}
	if got := strings.Join(e2eListNames(t, s), ","); got != "keep" {
		t.Errorf("exports after removing x: %q, want keep", got)
	}
}

// TestE2EReloadBrokenConfig: a file with a syntax error, and one naming a
// missing file, are refused whole with FILE:LINE in the log; the server
// keeps serving its exports and adds none from the refused file.
func TestE2EReloadBrokenConfig(t *testing.T) {
	e2eNeedTool(t, "nbdinfo")
	dir := t.TempDir()
	a := e2eMakeFile(t, dir, "a.img", 4<<20, 1)
	b := e2eMakeFile(t, dir, "b.img", 4<<20, 2)
	base := e2eExportTOML("a", a)
	cfg := e2eWriteConfig(t, dir, base)
	s := e2eStart(t, append([]string{"-config", cfg}, e2eLight...)...)
	syntax := base + e2eExportTOML("b", b) + "read-only = \n"
	e2eReload(t, s, cfg, syntax, regexp.MustCompile(
		regexp.QuoteMeta(cfg)+`:7: .*still serving the exports as before`))
	missing := base + e2eExportTOML("b", b) + e2eExportTOML("m", filepath.Join(dir, "no.img"))
	e2eReload(t, s, cfg, missing, regexp.MustCompile(
		regexp.QuoteMeta(cfg)+`:9: key export.path .*no such file.*still serving`))
	if got := strings.Join(e2eListNames(t, s), ","); got != "a" {
		t.Errorf("exports after two refused reloads: %q, want a", got)
	}
	e2eRun(t, "nbdinfo", "--size", s.uri("a"))
}

// TestE2ESighupWithoutConfig: exports from the command line; SIGHUP is
// logged as having nothing to reload and the server keeps serving.
func TestE2ESighupWithoutConfig(t *testing.T) {
	e2eNeedTool(t, "nbdinfo")
	img := e2eMakeFile(t, t.TempDir(), "a.img", 4<<20, 1)
	s := e2eStart(t, append(append([]string{}, e2eLight...), img)...)
	for range 2 {
		if err := s.cmd.Process.Signal(syscall.SIGHUP); err != nil {
			t.Fatal(err)
		}
		time.Sleep(200 * time.Millisecond)
	}
	select {
	case <-s.done:
		t.Fatalf("SIGHUP ended nbdring: %v", s.err)
	default:
	}
	if n := strings.Count(s.stderr.String(), "no -config file to reload"); n != 2 {
		t.Errorf("%d log lines about no -config for 2 SIGHUPs, want 2", n)
	}
	e2eRun(t, "nbdinfo", "--size", s.uri(""))
}

// TestE2EReloadQoS: max-iops = 500 and max-bandwidth = "20M", measured
// with nbdbench at QD8 over a few seconds, give 350-600 IOPS and 14-24
// MB/s (the bounds). max-iops arrives by a reload, so it also
// shows a changed limit applying to new connections.
func TestE2EReloadQoS(t *testing.T) {
	dir := t.TempDir()
	a := e2eMakeFile(t, dir, "a.img", 16<<20, 1)
	b := e2eMakeFile(t, dir, "b.img", 16<<20, 2)
	bw := e2eExportTOML("bw", b, `max-bandwidth = "20M"`)
	cfg := e2eWriteConfig(t, dir, e2eExportTOML("iops", a)+bw)
	s := e2eStart(t, append([]string{"-config", cfg, "-metrics", "127.0.0.1:0"},
		e2eLight...)...)
	e2eReload(t, s, cfg, e2eExportTOML("iops", a, "max-iops = 500")+bw, e2eReloaded)
	measure := func(name string, bs int) *bench.Result {
		res, err := bench.Run(context.Background(), bench.Config{URI: s.uri(name),
			RW: "randread", BS: bs, QD: 8, Conns: 1, Duration: 3 * time.Second})
		if err != nil {
			t.Fatal(err)
		}
		if res.Errors > 0 {
			t.Fatalf("%s: %d errors: %s", name, res.Errors, res.FirstError)
		}
		return &res
	}
	r := measure("iops", 4096)
	t.Logf("max-iops = 500: %.0f IOPS", r.IOPS)
	if r.IOPS < 350 || r.IOPS > 600 {
		t.Errorf("max-iops = 500 gave %.0f IOPS; want 350 to 600", r.IOPS)
	}
	r = measure("bw", 64<<10)
	mbs := r.BytesPerSec / 1e6
	t.Logf("max-bandwidth = 20M: %.1f MB/s", mbs)
	if mbs < 14 || mbs > 24 {
		t.Errorf("max-bandwidth = \"20M\" gave %.1f MB/s; want 14 to 24", mbs)
	}
	_, page := e2eGetStatus(t, "http://"+e2eLogAddr(t, s, "metrics")+"/metrics")
	for _, name := range []string{"iops", "bw"} {
		m := regexp.MustCompile(`\nnbdring_export_throttled_seconds_total\{export="` + name +
			`"\} ([0-9.e+-]+)\n`).FindStringSubmatch(page)
		if m == nil || m[1] == "0" {
			t.Errorf("export %s: throttled seconds %v, want more than 0", name, m)
		}
	}
}

// TestE2EReloadNotify: under a service manager (NOTIFY_SOCKET) a reload
// says RELOADING=1 with MONOTONIC_USEC, then READY=1, and so does a
// refused one.
func TestE2EReloadNotify(t *testing.T) {
	dir := e2eSocketDir(t)
	img := e2eMakeFile(t, t.TempDir(), "a.img", 4<<20, 1)
	cfg := e2eWriteConfig(t, dir, e2eExportTOML("a", img))
	addr := fmt.Sprintf("@nbdring-e2e-reload-%d-%d", os.Getpid(), time.Now().UnixNano())
	mgr := e2eSvcManager(t, addr)
	cmd := exec.Command(e2eBin(t), append([]string{"-listen", "unix:" +
		filepath.Join(dir, "nbd.sock"), "-config", cfg}, e2eSvcLight...)...)
	cmd.Env = append(os.Environ(), "NOTIFY_SOCKET="+addr)
	p := e2eSvcStart(t, cmd)
	if got := e2eSvcNotified(t, mgr); !strings.HasPrefix(got, "READY=1") {
		t.Fatalf("first notification %q, want READY=1", got)
	}
	for _, text := range []string{e2eExportTOML("b", img), "[[export\n"} {
		if err := os.WriteFile(cfg, []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
		if err := cmd.Process.Signal(syscall.SIGHUP); err != nil {
			t.Fatal(err)
		}
		got := e2eSvcNotified(t, mgr)
		if !strings.HasPrefix(got, "RELOADING=1\n") ||
			!regexp.MustCompile(`\nMONOTONIC_USEC=[1-9][0-9]*$`).MatchString(got) {
			t.Fatalf("notification on SIGHUP %q, want RELOADING=1 and MONOTONIC_USEC", got)
		}
		if got := e2eSvcNotified(t, mgr); !strings.HasPrefix(got, "READY=1\n") {
			t.Fatalf("notification after the reload %q, want READY=1", got)
		}
	}
	p.stop(t)
}

// TestE2EReloadGrown: a backing file that has grown is seen at its new
// size by connections made after a reload, with the config unchanged.
func TestE2EReloadGrown(t *testing.T) {
	e2eNeedTool(t, "nbdinfo")
	dir := t.TempDir()
	a := e2eMakeFile(t, dir, "a.img", 4<<20, 1)
	text := e2eExportTOML("a", a)
	cfg := e2eWriteConfig(t, dir, text)
	s := e2eStart(t, append([]string{"-config", cfg}, e2eLight...)...)
	if err := os.Truncate(a, 8<<20); err != nil {
		t.Fatal(err)
	}
	e2eReload(t, s, cfg, text, regexp.MustCompile(`1 changed`))
	if got := strings.TrimSpace(e2eRun(t, "nbdinfo", "--size", s.uri("a"))); got != "8388608" {
		t.Errorf("size after growing to 8 MiB and reloading: %s", got)
	}
}
