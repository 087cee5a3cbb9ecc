package main

// End-to-end tests: the built nbdring binary, served on a unix socket, driven
// by clients nobody here wrote (nbdinfo, nbdcopy, nbdsh's Python binding via
// /usr/bin/python3, qemu-img, qemu-io, fio's nbd engine) on files and on loop
// block devices.
//
// The binary comes from NBDRING_BIN (default ../../bin/nbdring, built by
// `make build`). Protocol corner cases live in testdata/nbdcases.py, which
// uses libnbd with its client-side checks off, or testdata/nbdraw.py, a
// hand-written client for what libnbd cannot send.
//
// Run: go test -ldflags=-checklinkname=0 -run E2E -count=1 -v ./cmd/nbdring

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

const (
	// e2ePython is Debian's Python, the one with libnbd's `nbd` module.
	e2ePython = "/usr/bin/python3"

	e2eStartTimeout = 10 * time.Second
	// e2eStopTimeout bounds the wait for a clean exit after SIGTERM.
	e2eStopTimeout = 5 * time.Second
	// e2eToolTimeout bounds every client process.
	e2eToolTimeout = 60 * time.Second
	// e2eFDSettleTimeout bounds the wait for a server to close a vanished
	// client's descriptors.
	e2eFDSettleTimeout = 5 * time.Second

	e2eExportSize = 64 << 20
	// e2ePayloadMax is the maximum payload nbdring advertises: 2^25, the
	// size proto.md says every server should accept.
	e2ePayloadMax = 32 << 20
)

// e2eServer is one running nbdring process.
type e2eServer struct {
	sock   string
	cmd    *exec.Cmd
	stderr *e2eBuffer
	done   chan struct{} // closed when cmd.Wait returns
	err    error         // cmd.Wait's result, valid after done

	stopped bool // stop has run
}

// e2eBuffer collects the server's output while tests read it.
type e2eBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *e2eBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *e2eBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// e2eBin returns the nbdring binary under test, failing the test when it
// is missing: a suite that skips because nothing was built proves nothing.
func e2eBin(t *testing.T) string {
	t.Helper()
	bin := os.Getenv("NBDRING_BIN")
	if bin == "" {
		bin = "../../bin/nbdring"
	}
	abs, err := filepath.Abs(bin)
	if err != nil {
		t.Fatalf("NBDRING_BIN %q: %v", bin, err)
	}
	if st, err := os.Stat(abs); err != nil || st.IsDir() || st.Mode()&0o111 == 0 {
		t.Fatalf("nbdring binary %s is missing or not executable (%v): run `make build` "+
			"in the repository root, or set NBDRING_BIN", abs, err)
	}
	return abs
}

// e2eSocketDir returns a directory for the server's socket whose path fits in
// sun_path (108 bytes), even for long test names.
func e2eSocketDir(t *testing.T) string {
	dir := t.TempDir()
	if len(dir) < 80 {
		return dir
	}
	dir, err := os.MkdirTemp("", "nbd")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

// e2eStart runs `nbdring -listen unix:SOCK args...`, waits until the
// socket accepts a connection, and registers a cleanup that sends SIGTERM
// and asserts a clean exit. The server's output goes to the test log when
// the test fails.
func e2eStart(t *testing.T, args ...string) *e2eServer {
	t.Helper()
	bin := e2eBin(t)
	s := &e2eServer{
		sock:   filepath.Join(e2eSocketDir(t), "nbd.sock"),
		stderr: &e2eBuffer{},
		done:   make(chan struct{}),
	}
	s.cmd = exec.Command(bin, append([]string{"-listen", "unix:" + s.sock}, args...)...)
	s.cmd.Stdout = s.stderr
	s.cmd.Stderr = s.stderr
	if err := s.cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", bin, err)
	}
	go func() {
		s.err = s.cmd.Wait()
		close(s.done)
	}()
	t.Cleanup(func() {
		s.stop(t)
		if t.Failed() {
			t.Logf("nbdring %s output:\n%s", strings.Join(s.cmd.Args[1:], " "), s.stderr)
		}
	})
	deadline := time.Now().Add(e2eStartTimeout)
	for {
		c, err := net.DialTimeout("unix", s.sock, time.Second)
		if err == nil {
			c.Close()
			return s
		}
		select {
		case <-s.done:
			t.Fatalf("nbdring exited before accepting connections: %v", s.err)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("nbdring not accepting on %s after %v: %v", s.sock, e2eStartTimeout, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// stop sends SIGTERM and asserts exit status 0 within e2eStopTimeout.
func (s *e2eServer) stop(t *testing.T) {
	if s.stopped {
		return
	}
	s.stopped = true
	select {
	case <-s.done:
		t.Errorf("nbdring exited on its own before the test ended: %v", s.err)
		return
	default:
	}
	if err := s.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Errorf("SIGTERM nbdring: %v", err)
	}
	select {
	case <-s.done:
		if s.err != nil {
			t.Errorf("nbdring after SIGTERM: %v, want exit status 0", s.err)
		}
	case <-time.After(e2eStopTimeout):
		s.cmd.Process.Kill()
		<-s.done
		t.Errorf("nbdring still running %v after SIGTERM; killed", e2eStopTimeout)
	}
}

func (s *e2eServer) uri(export string) string {
	return "nbd+unix:///" + export + "?socket=" + s.sock
}

// fdCount is the number of open descriptors of the server process.
func (s *e2eServer) fdCount(t *testing.T) int {
	t.Helper()
	ents, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", s.cmd.Process.Pid))
	if err != nil {
		t.Fatalf("count server fds: %v", err)
	}
	return len(ents)
}

// e2eNeedTool skips the test when a client program is not installed.
func e2eNeedTool(t *testing.T, names ...string) {
	t.Helper()
	for _, n := range names {
		if _, err := exec.LookPath(n); err != nil {
			skipMissing(t, "client", "client %s not installed: %v", n, err)
		}
	}
}

// e2eRun runs a client to completion within e2eToolTimeout and returns its
// stdout; a non-zero exit fails the test with the client's output.
func e2eRun(t *testing.T, name string, args ...string) string {
	t.Helper()
	out, errOut, err := e2eRunErr(name, args...)
	if err != nil {
		t.Fatalf("%s %s: %v\nstdout:\n%s\nstderr:\n%s", name, strings.Join(args, " "), err,
			out, errOut)
	}
	return out
}

// e2eRunErr is e2eRun without the verdict, for clients expected to fail.
func e2eRunErr(name string, args ...string) (stdout, stderr string, err error) {
	ctx, cancel := context.WithTimeout(context.Background(), e2eToolTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	// Leave no .pyc files in testdata/.
	cmd.Env = append(os.Environ(), "PYTHONDONTWRITEBYTECODE=1")
	var o, e bytes.Buffer
	cmd.Stdout, cmd.Stderr = &o, &e
	cmd.WaitDelay = time.Second
	err = cmd.Run()
	if ctx.Err() != nil {
		err = fmt.Errorf("timed out after %v: %w", e2eToolTimeout, err)
	}
	return o.String(), e.String(), err
}

// e2ePyCase runs one case of testdata/nbdcases.py against the server; the
// case's own assertions decide. Exit status 3 means the case does not
// apply to this export, which skips the test with the case's reason.
func e2ePyCase(t *testing.T, s *e2eServer, name, backing string, export ...string) {
	t.Helper()
	e2eScriptCase(t, "testdata/nbdcases.py", s, name, backing, export...)
}

// e2eScriptCase runs case name of a python case script against s: args are
// the export name and any arguments the case takes. Exit status 3 skips;
// success needs a "PASS name" line.
func e2eScriptCase(t *testing.T, script string, s *e2eServer, name, backing string,
	args ...string) {
	t.Helper()
	path, err := filepath.Abs(script)
	if err != nil {
		t.Fatal(err)
	}
	out, errOut, err := e2eRunErr(e2ePython, append([]string{path, name, s.sock, backing},
		args...)...)
	var ee *exec.ExitError
	if errors.As(err, &ee) && ee.ExitCode() == 3 {
		t.Skipf("case %s: %s", name, strings.TrimSpace(out))
	}
	if err != nil {
		t.Fatalf("case %s: %v\n%s%s", name, err, out, errOut)
	}
	if !strings.Contains(out, "PASS "+name) {
		t.Fatalf("case %s: no PASS line in output:\n%s%s", name, out, errOut)
	}
}

// e2eMakeFile creates a file of size bytes: sparse (all zeroes) when seed is
// 0, otherwise filled with pseudo-random bytes from seed.
func e2eMakeFile(t *testing.T, dir, name string, size int64, seed uint64) string {
	t.Helper()
	path := filepath.Join(dir, name)
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if seed != 0 {
		rng := rand.NewChaCha8([32]byte{byte(seed), byte(seed >> 8), byte(seed >> 16)})
		buf := make([]byte, 1<<20)
		for off := int64(0); off < size; off += int64(len(buf)) {
			n := min(int64(len(buf)), size-off)
			rng.Read(buf[:n])
			if _, err := f.Write(buf[:n]); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
	return path
}

func e2eReadFile(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// e2eSameBytes fails the test with the first differing offset.
func e2eSameBytes(t *testing.T, what string, got, want []byte) {
	t.Helper()
	if bytes.Equal(got, want) {
		return
	}
	i := 0
	for i < len(got) && i < len(want) && got[i] == want[i] {
		i++
	}
	t.Fatalf("%s: contents differ: got %d bytes, want %d; first difference at offset %d",
		what, len(got), len(want), i)
}

// e2eInfoExport is the part of `nbdinfo --json` these tests read; names
// are libnbd 1.14's.
type e2eInfoExport struct {
	Name           string `json:"export-name"`
	Size           int64  `json:"export-size"`
	ReadOnly       bool   `json:"is_read_only"`
	CanFlush       bool   `json:"can_flush"`
	CanFUA         bool   `json:"can_fua"`
	CanTrim        bool   `json:"can_trim"`
	CanZero        bool   `json:"can_zero"`
	CanMultiConn   bool   `json:"can_multi_conn"`
	BlockMin       *int64 `json:"block_size_minimum"`
	BlockPreferred *int64 `json:"block_size_preferred"`
	BlockMax       *int64 `json:"block_size_maximum"`
}

type e2eInfoOutput struct {
	Protocol string          `json:"protocol"`
	Exports  []e2eInfoExport `json:"exports"`
}

func e2eNbdinfo(t *testing.T, args ...string) e2eInfoOutput {
	t.Helper()
	out := e2eRun(t, "nbdinfo", append([]string{"--json"}, args...)...)
	var info e2eInfoOutput
	if err := json.Unmarshal([]byte(out), &info); err != nil {
		t.Fatalf("nbdinfo --json output: %v\n%s", err, out)
	}
	return info
}

func e2eIsPow2(n int64) bool { return n > 0 && n&(n-1) == 0 }

// e2eCheckExport asserts the size, flags and block sizes nbdring
// advertises; blockMinWant is the expected minimum block or 0 when only
// its range is known.
func e2eCheckExport(t *testing.T, e e2eInfoExport, size int64, readOnly bool,
	blockMinWant int64) {
	t.Helper()
	if e.Size != size {
		t.Errorf("export-size = %d, want %d", e.Size, size)
	}
	if e.ReadOnly != readOnly {
		t.Errorf("is_read_only = %v, want %v", e.ReadOnly, readOnly)
	}
	if !e.CanFlush || !e.CanMultiConn {
		t.Errorf("can_flush %v, can_multi_conn %v: want both true", e.CanFlush,
			e.CanMultiConn)
	}
	// FUA, TRIM and WRITE_ZEROES mean nothing on a read-only export.
	if !readOnly && (!e.CanFUA || !e.CanTrim || !e.CanZero) {
		t.Errorf("can_fua %v, can_trim %v, can_zero %v: want all true", e.CanFUA,
			e.CanTrim, e.CanZero)
	}
	if e.BlockMin == nil || e.BlockPreferred == nil || e.BlockMax == nil {
		t.Fatalf("no block sizes advertised (NBD_INFO_BLOCK_SIZE): %+v", e)
	}
	bmin, bpref, bmax := *e.BlockMin, *e.BlockPreferred, *e.BlockMax
	if !e2eIsPow2(bmin) || bmin > 4096 {
		t.Errorf("block_size_minimum = %d, want a power of two in [1, 4096]", bmin)
	}
	if blockMinWant != 0 && bmin != blockMinWant {
		t.Errorf("block_size_minimum = %d, want %d (the export's direct I/O alignment)",
			bmin, blockMinWant)
	}
	if !e2eIsPow2(bpref) || bpref < 4096 || bpref < bmin {
		t.Errorf("block_size_preferred = %d, want a power of two >= 4096 and >= minimum",
			bpref)
	}
	if bmax != e2ePayloadMax {
		t.Errorf("block_size_maximum = %d, want %d", bmax, e2ePayloadMax)
	}
}

// e2eDIOAlign is a file's direct I/O offset alignment from statx
// (STATX_DIOALIGN), or 0 when the kernel or filesystem does not say.
func e2eDIOAlign(t *testing.T, path string) int64 {
	var st unix.Statx_t
	if err := unix.Statx(unix.AT_FDCWD, path, 0, unix.STATX_DIOALIGN, &st); err != nil {
		t.Logf("statx %s: %v", path, err)
		return 0
	}
	if st.Mask&unix.STATX_DIOALIGN == 0 {
		return 0
	}
	return int64(st.Dio_offset_align)
}

func TestE2EInfo(t *testing.T) {
	e2eNeedTool(t, "nbdinfo")
	dir := t.TempDir()
	path := e2eMakeFile(t, dir, "disk.img", e2eExportSize, 0)
	align := e2eDIOAlign(t, path)
	t.Logf("%s: direct I/O alignment %d", path, align)

	t.Run("readwrite", func(t *testing.T) {
		s := e2eStart(t, path)
		info := e2eNbdinfo(t, s.uri(""))
		if info.Protocol != "newstyle-fixed" {
			t.Errorf("protocol = %q, want newstyle-fixed", info.Protocol)
		}
		if len(info.Exports) != 1 {
			t.Fatalf("nbdinfo: %d exports, want 1", len(info.Exports))
		}
		e2eCheckExport(t, info.Exports[0], e2eExportSize, false, align)
		// The same from the wire: greeting flags, transmission flags and
		// NBD_INFO_BLOCK_SIZE decoded by hand.
		e2ePyCase(t, s, "handshake", path)
	})
	t.Run("readonly", func(t *testing.T) {
		s := e2eStart(t, "-readonly", path)
		info := e2eNbdinfo(t, s.uri(""))
		if len(info.Exports) != 1 {
			t.Fatalf("nbdinfo: %d exports, want 1", len(info.Exports))
		}
		e2eCheckExport(t, info.Exports[0], e2eExportSize, true, align)
	})
}

// e2eRoundTripQemuImg copies src into the export at uri and back into a new
// file, and checks both copies.
func e2eRoundTripQemuImg(t *testing.T, uri, src, dir string) {
	t.Helper()
	e2eRun(t, "qemu-img", "convert", "-n", "-f", "raw", "-O", "raw", src, uri)
	e2eRun(t, "qemu-img", "compare", "-f", "raw", "-F", "raw", src, uri)
	back := filepath.Join(dir, "back.img")
	e2eRun(t, "qemu-img", "convert", "-f", "raw", "-O", "raw", uri, back)
	e2eRun(t, "cmp", src, back)
	e2eSameBytes(t, "qemu-img round trip", e2eReadFile(t, back), e2eReadFile(t, src))
}

func TestE2EQemuImg(t *testing.T) {
	e2eNeedTool(t, "qemu-img", "qemu-io", "cmp")
	dir := t.TempDir()
	const size = 16 << 20
	src := e2eMakeFile(t, dir, "src.img", size, 1)
	export := e2eMakeFile(t, dir, "export.img", size, 0)
	s := e2eStart(t, export)

	e2eRoundTripQemuImg(t, s.uri(""), src, dir)
	e2eSameBytes(t, "export file after qemu-img convert", e2eReadFile(t, export), e2eReadFile(t, src))

	// qemu-img compare must notice a difference (so it can fail above).
	other := e2eMakeFile(t, dir, "other.img", size, 2)
	if _, _, err := e2eRunErr("qemu-img", "compare", "-f", "raw", "-F", "raw", other,
		s.uri("")); err == nil {
		t.Errorf("qemu-img compare of different data through the server succeeded")
	}

	// qemu-io: pattern write, pattern verify, zero and discard.
	out := e2eRun(t, "qemu-io", "-f", "raw",
		"-c", "write -P 0xa5 12288 65536",
		"-c", "read -P 0xa5 12288 65536",
		"-c", "write -z 20480 8192",
		"-c", "read -P 0 20480 8192",
		"-c", "read -P 0xa5 12288 8192",
		"-c", "flush",
		s.uri(""))
	if strings.Contains(out, "Pattern verification failed") || strings.Contains(out, "error") {
		t.Fatalf("qemu-io:\n%s", out)
	}
	got := e2eReadFile(t, export)
	want := e2eReadFile(t, src)
	for i := 12288; i < 12288+65536; i++ {
		want[i] = 0xa5
	}
	clear(want[20480 : 20480+8192])
	e2eSameBytes(t, "export file after qemu-io", got, want)
}

func TestE2ENbdcopy(t *testing.T) {
	e2eNeedTool(t, "nbdcopy")
	dir := t.TempDir()
	const size = 32 << 20
	src := e2eMakeFile(t, dir, "src.img", size, 3)
	export := e2eMakeFile(t, dir, "export.img", size, 0)
	back := filepath.Join(dir, "back.img")
	s := e2eStart(t, "-shards", "2", export)

	e2eRun(t, "nbdcopy", "--connections=4", "--flush", src, s.uri(""))
	e2eSameBytes(t, "export file after nbdcopy", e2eReadFile(t, export), e2eReadFile(t, src))
	e2eRun(t, "nbdcopy", "--connections=4", s.uri(""), back)
	e2eSameBytes(t, "nbdcopy round trip", e2eReadFile(t, back), e2eReadFile(t, src))
}

// e2eFioJobs parses fio's JSON report, which must list jobs jobs.
func e2eFioJobs(t *testing.T, out string, jobs int) e2eFioOutput {
	t.Helper()
	var rep e2eFioOutput
	// fio may print notes before the JSON document.
	if i := strings.Index(out, "{"); i >= 0 {
		out = out[i:]
	}
	if err := json.Unmarshal([]byte(out), &rep); err != nil {
		t.Fatalf("fio JSON: %v\n%s", err, out)
	}
	if len(rep.Jobs) != jobs {
		t.Fatalf("fio reported %d jobs, want %d", len(rep.Jobs), jobs)
	}
	return rep
}

// e2eFioOutput is the part of fio's JSON report these tests read.
type e2eFioOutput struct {
	Jobs []struct {
		Name  string `json:"jobname"`
		Error int    `json:"error"`
		Read  struct {
			IOBytes int64 `json:"io_bytes"`
		} `json:"read"`
		Write struct {
			IOBytes int64 `json:"io_bytes"`
		} `json:"write"`
	} `json:"jobs"`
}

func TestE2EFio(t *testing.T) {
	e2eNeedTool(t, "fio")
	dir := t.TempDir()
	const (
		jobs    = 4
		jobSize = 8 << 20
	)
	export := e2eMakeFile(t, dir, "export.img", e2eExportSize, 0)
	s := e2eStart(t, "-shards", "2", export)

	// Each job has its own connection and its own region (offset_increment)
	// so that verification sees only its own writes.
	out := e2eRun(t, "fio", "--name=e2e", "--ioengine=nbd", "--uri="+s.uri(""),
		"--rw=randwrite", "--bs=4k", "--iodepth=16", "--numjobs="+strconv.Itoa(jobs),
		"--size="+strconv.Itoa(jobSize), "--offset_increment="+strconv.Itoa(jobSize),
		"--verify=crc32c", "--verify_fatal=1", "--do_verify=1", "--verify_state_save=0",
		"--output-format=json")
	rep := e2eFioJobs(t, out, jobs)
	for i, j := range rep.Jobs {
		if j.Error != 0 {
			t.Errorf("fio job %d: error %d", i, j.Error)
		}
		if j.Write.IOBytes != jobSize {
			t.Errorf("fio job %d: wrote %d bytes, want %d", i, j.Write.IOBytes, jobSize)
		}
		if j.Read.IOBytes != jobSize {
			t.Errorf("fio job %d: verified (read) %d bytes, want %d", i, j.Read.IOBytes,
				jobSize)
		}
	}
}

// TestE2EBadInput sends what a broken or hostile client sends; each case
// checks the error the spec asks for and that the server goes on serving.
func TestE2EBadInput(t *testing.T) {
	cases := []struct {
		name string
		doc  string
	}{
		{"read-oob", "READ past the end -> EINVAL"},
		{"trim-oob", "TRIM past the end -> EINVAL"},
		{"write-oob", "WRITE past the end -> ENOSPC, nothing written"},
		{"unknown-cmd", "unknown command -> EINVAL, connection usable"},
		{"unknown-flag", "unknown command flag -> EINVAL, WRITE payload drained"},
		{"unaligned-strict", "client asked for block sizes, unaligned -> EINVAL, drained"},
		{"bad-magic", "bad request magic -> that client disconnected, others served"},
		{"huge-write", "WRITE payload > 32 MiB -> that client disconnected, others served"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			t.Log(c.doc)
			path := e2eMakeFile(t, t.TempDir(), "disk.img", e2eExportSize, 4)
			s := e2eStart(t, path)
			e2ePyCase(t, s, c.name, path)
		})
	}
	t.Run("vanish", func(t *testing.T) {
		t.Log("clients hang up with requests in flight -> others served, fds released")
		path := e2eMakeFile(t, t.TempDir(), "disk.img", e2eExportSize, 5)
		s := e2eStart(t, path)
		// One full connection first, so lazily opened descriptors
		// (device files, rings) are counted in the baseline.
		e2eRun(t, "nbdinfo", s.uri(""))
		base := e2eWaitFDs(t, s, -1)
		// The count must see a client at all, or the check below proves
		// nothing.
		c, err := net.DialTimeout("unix", s.sock, time.Second)
		if err != nil {
			t.Fatal(err)
		}
		c.SetDeadline(time.Now().Add(5 * time.Second))
		if _, err := io.ReadFull(c, make([]byte, 18)); err != nil {
			t.Fatalf("read greeting: %v", err)
		}
		if n := s.fdCount(t); n <= base {
			t.Errorf("server fds: %d with a client connected, %d without", n, base)
		}
		c.Close()
		e2ePyCase(t, s, "vanish", path)
		n := e2eWaitFDs(t, s, base)
		t.Logf("server fds: %d before, %d after", base, n)
		if n > base {
			t.Errorf("server has %d fds %v after vanished clients, %d before", n,
				e2eFDSettleTimeout, base)
		}
	})
}

// e2eWaitFDs polls the server's descriptor count until it is at most want
// (or, for want < 0, until it stops changing), for at most e2eFDSettleTimeout.
func e2eWaitFDs(t *testing.T, s *e2eServer, want int) int {
	t.Helper()
	deadline := time.Now().Add(e2eFDSettleTimeout)
	last := s.fdCount(t)
	for time.Now().Before(deadline) {
		time.Sleep(100 * time.Millisecond)
		n := s.fdCount(t)
		if (want >= 0 && n <= want) || (want < 0 && n == last) {
			return n
		}
		last = n
	}
	return last
}

// TestE2EMultiConn: a FLUSH on any connection makes every write already
// acknowledged on any connection durable, whether the connections share a
// shard or not.
func TestE2EMultiConn(t *testing.T) {
	for _, shards := range []string{"1", "2"} {
		t.Run("shards="+shards, func(t *testing.T) {
			path := e2eMakeFile(t, t.TempDir(), "disk.img", e2eExportSize, 6)
			s := e2eStart(t, "-shards", shards, path)
			e2ePyCase(t, s, "multi-conn", path)
		})
	}
}

func TestE2EDisc(t *testing.T) {
	path := e2eMakeFile(t, t.TempDir(), "disk.img", e2eExportSize, 7)
	s := e2eStart(t, path)
	e2ePyCase(t, s, "disc-inflight", path)
}

func TestE2EReadOnly(t *testing.T) {
	e2eNeedTool(t, "qemu-img", "qemu-io")
	dir := t.TempDir()
	path := e2eMakeFile(t, dir, "disk.img", e2eExportSize, 8)
	want := e2eReadFile(t, path)
	s := e2eStart(t, "-readonly", path)

	e2ePyCase(t, s, "readonly", path)
	back := filepath.Join(dir, "back.img")
	e2eRun(t, "qemu-img", "convert", "-f", "raw", "-O", "raw", s.uri(""), back)
	e2eSameBytes(t, "qemu-img copy of read-only export", e2eReadFile(t, back), want)
	// qemu-io opens the image read-write, which a READ_ONLY export refuses.
	out, errOut, err := e2eRunErr("qemu-io", "-f", "raw", "-c", "write -P 0x11 0 4096",
		s.uri(""))
	if err == nil || !strings.Contains(out+errOut, "Permission denied") {
		t.Errorf("qemu-io write to read-only export: %v, want failure with "+
			"\"Permission denied\":\n%s%s", err, out, errOut)
	}
	e2eSameBytes(t, "read-only export file after write attempts", e2eReadFile(t, path), want)
}

func TestE2ENamedExports(t *testing.T) {
	e2eNeedTool(t, "nbdinfo", "qemu-img", "qemu-io")
	dir := t.TempDir()
	pathA := e2eMakeFile(t, dir, "a.img", 4<<20, 9)
	pathB := e2eMakeFile(t, dir, "b.img", 8<<20, 10)
	wantA := e2eReadFile(t, pathA)
	s := e2eStart(t, "a="+pathA, "b="+pathB)

	info := e2eNbdinfo(t, "--list", s.uri(""))
	sizes := map[string]int64{}
	for _, e := range info.Exports {
		sizes[e.Name] = e.Size
	}
	if len(sizes) != 2 || sizes["a"] != 4<<20 || sizes["b"] != 8<<20 {
		t.Errorf("nbdinfo --list: exports (name: size) %v, want a: %d, b: %d", sizes,
			4<<20, 8<<20)
	}
	for _, name := range []string{"a", "b"} {
		back := filepath.Join(dir, name+".back")
		e2eRun(t, "qemu-img", "convert", "-f", "raw", "-O", "raw", s.uri(name), back)
		e2eSameBytes(t, "export "+name, e2eReadFile(t, back), e2eReadFile(t, filepath.Join(dir,
			name+".img")))
	}
	e2eRun(t, "qemu-io", "-f", "raw", "-c", "write -P 0x5a 0 1M", "-c", "flush", s.uri("b"))
	e2eSameBytes(t, "export a after writing to b", e2eReadFile(t, pathA), wantA)
	if b := e2eReadFile(t, pathB); !bytes.Equal(b[:1<<20], bytes.Repeat([]byte{0x5a}, 1<<20)) {
		t.Errorf("export b's file does not hold the 0x5a written through b")
	}
	if out, errOut, err := e2eRunErr("nbdinfo", s.uri("nope")); err == nil {
		t.Errorf("nbdinfo of unknown export succeeded:\n%s%s", out, errOut)
	}
	e2ePyCase(t, s, "unknown-export", pathA, "a")
	e2ePyCase(t, s, "read-oob", pathB, "b")
}

// TestE2EUnaligned: a client that never asked for block sizes gets
// byte-exact results (read-modify-write in the server), alone and with
// several connections writing disjoint bytes of the same blocks.
func TestE2EUnaligned(t *testing.T) {
	for _, c := range []string{"unaligned-loose", "unaligned-concurrent"} {
		t.Run(c, func(t *testing.T) {
			path := e2eMakeFile(t, t.TempDir(), "disk.img", 8<<20, 11)
			s := e2eStart(t, path)
			e2ePyCase(t, s, c, path)
		})
	}
}

// e2eLoopDevice attaches path to a free loop device with the given logical
// block size, skipping the test when that is not possible here.
func e2eLoopDevice(t *testing.T, path string, blockSize int) string {
	t.Helper()
	if os.Geteuid() != 0 {
		skipMissing(t, "root", "loop devices need root")
	}
	e2eNeedTool(t, "losetup")
	out, errOut, err := e2eRunErr("losetup", "--find", "--show", "-b", strconv.Itoa(blockSize),
		path)
	if err != nil {
		skipMissing(t, "loop", "losetup failed, no loop device here: %v %s", err, errOut)
	}
	dev := strings.TrimSpace(out)
	t.Cleanup(func() {
		if _, errOut, err := e2eRunErr("losetup", "-d", dev); err != nil {
			t.Errorf("losetup -d %s: %v %s", dev, err, errOut)
		}
	})
	return dev
}

func TestE2ELoopDevice(t *testing.T) {
	e2eNeedTool(t, "nbdinfo", "qemu-img", "cmp")
	for _, lbs := range []int{512, 4096} {
		t.Run(fmt.Sprintf("lbs=%d", lbs), func(t *testing.T) {
			dir := t.TempDir()
			backing := e2eMakeFile(t, dir, "backing.img", e2eExportSize, 0)
			dev := e2eLoopDevice(t, backing, lbs)
			sysLBS := strings.TrimSpace(string(e2eReadFile(t,
				"/sys/block/"+filepath.Base(dev)+"/queue/logical_block_size")))
			if sysLBS != strconv.Itoa(lbs) {
				t.Fatalf("%s logical block size %s, asked losetup for %d", dev, sysLBS, lbs)
			}
			s := e2eStart(t, dev)

			info := e2eNbdinfo(t, s.uri(""))
			if len(info.Exports) != 1 {
				t.Fatalf("nbdinfo: %d exports, want 1", len(info.Exports))
			}
			e2eCheckExport(t, info.Exports[0], e2eExportSize, false, int64(lbs))

			src := e2eMakeFile(t, dir, "src.img", e2eExportSize, uint64(12+lbs))
			e2eRoundTripQemuImg(t, s.uri(""), src, dir)
			// Read-modify-write on a block device.
			e2ePyCase(t, s, "unaligned-loose", dev)
			e2ePyCase(t, s, "unaligned-concurrent", dev)
		})
	}
}

// TestE2ESigtermWithClients checks that SIGTERM ends the server cleanly
// while clients are connected, one of them idle in the handshake.
func TestE2ESigtermWithClients(t *testing.T) {
	path := e2eMakeFile(t, t.TempDir(), "disk.img", e2eExportSize, 0)
	s := e2eStart(t, path)
	c, err := net.DialTimeout("unix", s.sock, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	greeting := make([]byte, 18)
	if _, err := io.ReadFull(c, greeting); err != nil {
		t.Fatalf("read greeting: %v", err)
	}
	if string(greeting[:16]) != "NBDMAGICIHAVEOPT" {
		t.Fatalf("greeting %q, want NBDMAGIC IHAVEOPT", greeting[:16])
	}

	// A second client in transmission: NBD_OPT_EXPORT_NAME "" with the
	// client flags FIXED_NEWSTYLE|NO_ZEROES, then the 10-byte reply
	// (size, transmission flags).
	d, err := net.DialTimeout("unix", s.sock, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	d.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.ReadFull(d, greeting); err != nil {
		t.Fatalf("read greeting: %v", err)
	}
	msg := binary.BigEndian.AppendUint32(nil, 3)
	msg = append(msg, "IHAVEOPT"...)
	msg = binary.BigEndian.AppendUint32(msg, 1) // NBD_OPT_EXPORT_NAME
	msg = binary.BigEndian.AppendUint32(msg, 0)
	if _, err := d.Write(msg); err != nil {
		t.Fatal(err)
	}
	reply := make([]byte, 10)
	if _, err := io.ReadFull(d, reply); err != nil {
		t.Fatalf("read EXPORT_NAME reply: %v", err)
	}
	if size := binary.BigEndian.Uint64(reply); size != e2eExportSize {
		t.Fatalf("EXPORT_NAME: size %d, want %d", size, e2eExportSize)
	}

	s.stop(t)
	for _, conn := range []net.Conn{c, d} {
		conn.SetDeadline(time.Now().Add(time.Second))
		if n, err := conn.Read(make([]byte, 1)); err == nil {
			t.Errorf("connection still open after the server exited (read %d bytes)", n)
		}
	}
}
