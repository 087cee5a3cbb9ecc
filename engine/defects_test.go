package engine

// Regression tests for defects found in review. Each is named after its
// defect and asserts the behaviour the fixed engine has.

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nbdring/nbdring/wire"
)

// defectStopGrace mirrors engine/limits.go's stopGrace (5 s): how long Stop
// waits for connections before cutting them. defectStopSlack is what the
// test allows on top for a loaded machine.
const (
	defectStopGrace = 5 * time.Second
	defectStopSlack = 2 * time.Second
)

// defectServer serves the existing file path (one shard per shards) on a
// Unix socket in its own temporary directory. stop stops it once and says
// how long Stop took; the cleanup stops it if the test did not.
type defectServer struct {
	srv     *Server
	sock    string
	errc    chan error
	stopped bool
}

func serveFile(t *testing.T, path string, shards int) *defectServer {
	t.Helper()
	exp, err := OpenExport(ExportConfig{Path: path})
	if err != nil {
		skipMissing(t, "direct-io", "cannot serve %s here: %v", path, err)
	}
	srv, err := New(Config{Shards: shards, ArenaSize: 128 << 20}, []*Export{exp})
	if err != nil {
		exp.Close()
		skipMissing(t, "io_uring", "engine unavailable here: %v", err)
	}
	ds := &defectServer{srv: srv, sock: filepath.Join(t.TempDir(), "sock"),
		errc: make(chan error, 1)}
	ln, err := Listen("unix:" + ds.sock)
	if err != nil {
		srv.Stop()
		t.Fatal(err)
	}
	go func() { ds.errc <- srv.Serve(ln) }()
	t.Cleanup(func() {
		if !ds.stopped {
			if _, err := ds.stop(); err != nil {
				t.Errorf("stop: %v", err)
			}
		}
	})
	return ds
}

// sparseFile creates an empty sparse file of size bytes.
func sparseFile(t *testing.T, size int64) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "img")
	if err := os.WriteFile(path, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(path, size); err != nil {
		t.Fatal(err)
	}
	return path
}

func (ds *defectServer) stop() (time.Duration, error) {
	ds.stopped = true
	t0 := time.Now()
	err := ds.srv.Stop()
	d := time.Since(t0)
	return d, errors.Join(err, <-ds.errc)
}

// structured reads the reply to a READ on a structured connection: its
// chunks until DONE (or one simple reply), the data assembled into buf
// (holes as zeros), and the first error chunk's errno.
func (tc *testClient) structured(buf []byte, off uint64) (uint64, wire.Errno) {
	tc.t.Helper()
	var hb [wire.ExtReplySize]byte
	var errno wire.Errno
	for {
		var rep wire.Reply
		if err := wire.ReadReplyHeader(tc.c, hb[:], &rep); err != nil {
			tc.t.Fatalf("read reply: %v", err)
		}
		if !rep.Structured {
			if rep.Errno == 0 && buf != nil {
				if _, err := io.ReadFull(tc.c, buf); err != nil {
					tc.t.Fatal(err)
				}
			}
			return rep.Cookie, rep.Errno
		}
		p := make([]byte, rep.Length)
		if _, err := io.ReadFull(tc.c, p); err != nil {
			tc.t.Fatal(err)
		}
		switch {
		case rep.Type.IsErr():
			if len(p) < 4 {
				tc.t.Fatalf("error chunk of %d bytes", len(p))
			}
			if errno == 0 {
				errno = wire.Errno(binary.BigEndian.Uint32(p))
			}
		case rep.Type == wire.ReplyOffsetData:
			at := binary.BigEndian.Uint64(p) - off
			copy(buf[at:], p[8:])
		case rep.Type == wire.ReplyOffsetHole:
			at := binary.BigEndian.Uint64(p) - off
			clear(buf[at : at+uint64(binary.BigEndian.Uint32(p[8:]))])
		}
		if rep.Flags&wire.ReplyFlagDone != 0 {
			return rep.Cookie, errno
		}
	}
}

// TestListenKeepsNonSocket: Listen("unix:PATH") used to delete whatever was
// at PATH when nothing answered there. Only a stale socket may be removed;
// a regular file or a directory is an error that names the path and says
// it is not a socket, and stays as it was.
func TestListenKeepsNonSocket(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "vm.img")
	content := bytes.Repeat([]byte("precious image bytes "), 1000)
	if err := os.WriteFile(file, content, 0o644); err != nil {
		t.Fatal(err)
	}
	sub := filepath.Join(dir, "emptydir")
	if err := os.Mkdir(sub, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, path := range []string{file, sub} {
		ln, err := Listen("unix:" + path)
		if err == nil {
			ln.Close()
			t.Errorf("Listen(unix:%s) succeeded over a non-socket", path)
		} else if !strings.Contains(err.Error(), path) ||
			!strings.Contains(err.Error(), "not a socket") {
			t.Errorf("Listen(unix:%s): %q; want an error naming the path and saying "+
				"it is not a socket", path, err)
		}
	}
	if got, err := os.ReadFile(file); err != nil || !bytes.Equal(got, content) {
		t.Errorf("regular file at the listen path: %d bytes (%v), want its %d bytes intact",
			len(got), err, len(content))
	}
	if st, err := os.Stat(sub); err != nil || !st.IsDir() {
		t.Errorf("directory at the listen path is gone: %v", err)
	}
	// A stale socket of an earlier run is still replaced.
	stale := filepath.Join(dir, "stale.sock")
	old, err := net.Listen("unix", stale)
	if err != nil {
		t.Fatal(err)
	}
	old.(*net.UnixListener).SetUnlinkOnClose(false)
	old.Close()
	ln, err := Listen("unix:" + stale)
	if err != nil {
		t.Fatalf("Listen over a stale socket: %v", err)
	}
	ln.Close()
}

// mountTmpfs mounts a tmpfs of size bytes on a fresh directory for the
// test and unmounts it in cleanup (after everything registered later).
func mountTmpfs(t *testing.T, size string) string {
	t.Helper()
	if os.Geteuid() != 0 {
		skipMissing(t, "root", "mounting a small tmpfs needs root")
	}
	dir := filepath.Join(t.TempDir(), "fs")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size="+size, "tmpfs",
		dir).CombinedOutput(); err != nil {
		skipMissing(t, "mount", "mount tmpfs: %v: %s", err, out)
	}
	t.Cleanup(func() {
		if out, err := exec.Command("umount", dir).CombinedOutput(); err != nil {
			t.Errorf("umount %s: %v: %s", dir, err, out)
		}
	})
	return dir
}

// TestENOSPCDoesNotPoisonFlush: a WRITE that fails with ENOSPC was reported
// to its client and left nothing unflushed behind, so once space is freed
// and the write retried, FLUSH succeeds, on that connection and on a new
// one. (It used to answer EIO to every later FLUSH.)
func TestENOSPCDoesNotPoisonFlush(t *testing.T) {
	dir := mountTmpfs(t, "16m")
	filler := filepath.Join(dir, "filler")
	if err := os.WriteFile(filler, bytes.Repeat([]byte{1}, 8<<20), 0o644); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "img")
	const size = 64 << 20 // larger than the filesystem
	if err := os.WriteFile(path, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(path, size); err != nil {
		t.Fatal(err)
	}
	ds := serveFile(t, path, 1)
	tc := dial(t, ds.sock, wire.ClientOptions{BlockSize: true})
	data := bytes.Repeat([]byte{0x5a}, 4096)
	failed := uint64(1 << 63)
	for off := uint64(0); off < size; off += 4096 {
		errno := tc.do(wire.CmdWrite, 0, off, 4096, data, nil)
		if errno == wire.ENOSPC {
			failed = off
			break
		}
		if errno != 0 {
			t.Fatalf("write at %d: %v, want OK or ENOSPC", off, errno)
		}
	}
	if failed == 1<<63 {
		t.Fatalf("no write got ENOSPC on a 16 MiB tmpfs holding a %d MiB export", size>>20)
	}
	t.Logf("ENOSPC at offset %d MiB", failed>>20)
	if err := os.Remove(filler); err != nil {
		t.Fatal(err)
	}
	if errno := tc.do(wire.CmdWrite, 0, failed, 4096, data, nil); errno != 0 {
		t.Fatalf("retried write after freeing space: %v", errno)
	}
	if errno := tc.do(wire.CmdFlush, 0, 0, 0, nil, nil); errno != 0 {
		t.Errorf("FLUSH after a retried ENOSPC write: %v, want OK", errno)
	}
	got := make([]byte, 4096)
	if errno := tc.do(wire.CmdRead, 0, failed, 4096, nil, got); errno != 0 ||
		!bytes.Equal(got, data) {
		t.Errorf("read back the retried write: %v, data equal %v", errno,
			bytes.Equal(got, data))
	}
	other := dial(t, ds.sock, wire.ClientOptions{BlockSize: true})
	if errno := other.do(wire.CmdFlush, 0, 0, 0, nil, nil); errno != 0 {
		t.Errorf("FLUSH on a new connection after an ENOSPC write: %v, want OK", errno)
	}
}

// TestTruncatedBackingReadsEIO: when the backing file shrinks under the
// server, a READ past its new end is EIO on every reply style and on old
// and new connections alike. On structured connections to a sparse export
// it used to come back as zeros (the hole path took "no data after here"
// for a hole).
func TestTruncatedBackingReadsEIO(t *testing.T) {
	const size, half = 16 << 20, 8 << 20
	_, sock, path := testServer(t, size, 1)
	opts := map[string]wire.ClientOptions{
		"simple":     {BlockSize: true},
		"structured": {BlockSize: true, Structured: true},
	}
	old := map[string]*testClient{}
	for name, o := range opts {
		old[name] = dial(t, sock, o)
	}
	if !old["structured"].ex.Structured {
		t.Fatal("server refused structured replies")
	}
	data := bytes.Repeat([]byte{0xc3}, 4096)
	w := old["simple"]
	for _, off := range []uint64{2 << 20, half - 4096, 12 << 20} {
		if errno := w.do(wire.CmdWrite, wire.CmdFlagFUA, off, 4096, data, nil); errno != 0 {
			t.Fatalf("write at %d: %v", off, errno)
		}
	}
	if err := os.Truncate(path, half); err != nil {
		t.Fatal(err)
	}
	reads := []struct {
		what string
		off  uint64
		n    uint32
	}{
		{"written data past the new end", 12 << 20, 4096},
		{"a hole past the new end", 10 << 20, 4096},
		{"a read across the new end", half - 4096, 8192},
	}
	check := func(conn string, tc *testClient) {
		for _, r := range reads {
			buf := make([]byte, r.n)
			tc.send(wire.CmdRead, 0, 9, r.off, r.n, nil)
			var cookie uint64
			var errno wire.Errno
			if tc.ex.Structured {
				cookie, errno = tc.structured(buf, r.off)
			} else {
				cookie, errno = tc.simple(buf)
			}
			if cookie != 9 {
				t.Fatalf("%s: reply cookie %d, want 9", conn, cookie)
			}
			if errno != wire.EIO {
				t.Errorf("%s connection, %s: %v, want EIO", conn, r.what, errno)
			}
		}
	}
	for name, tc := range old {
		check(name, tc)
	}
	for name, o := range opts {
		check("new "+name, dial(t, sock, o))
	}
}

// TestRequestCountersCountOnce: a request held under backpressure (the
// connection's in-flight bound, the arena budget) is retried, and each
// retry used to count it again. The per-shard request counters must say
// exactly how many requests the client sent.
func TestRequestCountersCountOnce(t *testing.T) {
	const reads, n = 600, 64 << 10
	srv, sock, _ := testServer(t, 64<<20, 1)
	tc := dial(t, sock, wire.ClientOptions{BlockSize: true})
	// All requests in one write, no reply read until they are all sent:
	// far more than inflightPerConnMax wait in the server.
	if _, err := tc.c.Write(pipelinedReads(reads, n)); err != nil {
		t.Fatal(err)
	}
	time.Sleep(200 * time.Millisecond) // let the server stall on the full socket
	seen := make([]bool, reads)
	buf := make([]byte, n)
	for i := 0; i < reads; i++ {
		cookie, errno := tc.simple(buf)
		if errno != 0 || cookie >= reads || seen[cookie] {
			t.Fatalf("reply %d: cookie %d, %v", i, cookie, errno)
		}
		seen[cookie] = true
	}
	var got uint64
	for _, sh := range srv.shards {
		got += sh.snapshot().Requests(wire.CmdRead)
	}
	if got != reads {
		t.Errorf("shards counted %d READs, the client sent %d", got, reads)
	}
	// Requests past the connection's bound waited; each counts once, however
	// often it was retried.
	waits := srv.shards[0].snapshot().BackpressureWaits
	if waits == 0 || waits > reads-inflightPerConnMax {
		t.Errorf("%d backpressure waits; want 1 to %d (once per waiting request)", waits,
			reads-inflightPerConnMax)
	}
}

// TestStopCutsStalledWriter: Stop returns within the shutdown grace while
// a client sits half-way through a WRITE payload, and that client's
// connection is closed. (Stop used to wait for the payload for 10 s and
// then give up with the shard still running.)
func TestStopCutsStalledWriter(t *testing.T) {
	ds := serveFile(t, sparseFile(t, 16<<20), 1)
	tc := dial(t, ds.sock, wire.ClientOptions{BlockSize: true})
	tc.send(wire.CmdWrite, 0, 1, 0, 1<<20, make([]byte, 1000))
	deadline := time.Now().Add(5 * time.Second)
	for ds.srv.shards[0].stats.Inflight.Load() == 0 {
		if time.Now().After(deadline) {
			t.Fatal("the server never took the WRITE")
		}
		time.Sleep(10 * time.Millisecond)
	}
	took, err := ds.stop()
	t.Logf("Stop took %v: %v", took.Round(time.Millisecond), err)
	if took > defectStopGrace+defectStopSlack {
		t.Errorf("Stop took %v with a client stalled mid-WRITE, want at most the %v grace",
			took.Round(time.Millisecond), defectStopGrace)
	}
	_ = tc.c.SetReadDeadline(time.Now().Add(2 * time.Second))
	if n, err := tc.c.Read(make([]byte, 64)); err == nil || errors.Is(err,
		os.ErrDeadlineExceeded) {
		t.Errorf("stalled client's connection still open after Stop: read %d, %v", n, err)
	}
}
