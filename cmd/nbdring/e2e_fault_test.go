package main

// Fault tests: nbdring serving a disk on faultfs (tools/faultfs), a FUSE
// filesystem that keeps writes in memory until they are synced, forgets
// them on a power cut, and injects device errors on command. Each test
// builds faultfs with `go build`, mounts it in a temporary directory and
// drives nbdring with the raw client of package wire, so every request,
// flag and reply is the test's own.
//
// They need root (faultfs mounts with mount(2)) and /dev/fuse, and skip,
// saying why, without them.

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/nbdring/nbdring/wire"
	"golang.org/x/sys/unix"
)

const (
	faultBlock = 4096
	// faultReadyTimeout bounds faultfs's build, and its mount.
	faultReadyTimeout = 60 * time.Second
	// faultStopTimeout bounds faultfs's exit after SIGTERM: its unmount
	// waits up to 5 s for a killed client's io_uring to let go.
	faultStopTimeout = 10 * time.Second
	// faultIOTimeout bounds every socket operation of a test client.
	faultIOTimeout = 20 * time.Second
	// faultLogTimeout bounds the wait for a line in the server's log.
	faultLogTimeout = 2 * time.Second
	// faultLogQuiet outlasts the quiet time after a logged device error
	// (engine/limits.go deviceErrorLogEvery, 1 s, per shard).
	faultLogQuiet = 1100 * time.Millisecond
)

// faultFS is one running faultfs process.
type faultFS struct {
	dir     string // the mount point
	backing string
	cmd     *exec.Cmd
	out     *e2eBuffer
	done    chan struct{}
	err     error
	stopped bool
}

// faultNeed skips the test when faultfs cannot run here.
func faultNeed(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		skipMissing(t, "root", "faultfs mounts with mount(2): run the fault tests as root")
	}
	if _, err := os.Stat("/dev/fuse"); err != nil {
		skipMissing(t, "fuse", "no FUSE here (%v): load the fuse module", err)
	}
}

// faultBin builds tools/faultfs into the test's temporary directory.
func faultBin(t *testing.T) string {
	t.Helper()
	// go test puts its own GOROOT/bin first in PATH.
	goBin, err := exec.LookPath("go")
	if err != nil {
		t.Fatalf("no go command to build tools/faultfs with: %v", err)
	}
	bin := filepath.Join(t.TempDir(), "faultfs")
	cmd := exec.Command(goBin, "build", "-o", bin, "./tools/faultfs")
	cmd.Dir = "../.."
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("build faultfs: %v\n%s", err, out)
	}
	return bin
}

// faultStart mounts faultfs over backing in a new directory and waits for
// its ready line. A cleanup stops it and asserts a clean exit.
func faultStart(t *testing.T, bin, backing string) *faultFS {
	t.Helper()
	f := &faultFS{dir: t.TempDir(), backing: backing, out: &e2eBuffer{},
		done: make(chan struct{})}
	f.cmd = exec.Command(bin, "-backing", backing, "-mount", f.dir)
	f.cmd.Stdout, f.cmd.Stderr = f.out, f.out
	if err := f.cmd.Start(); err != nil {
		t.Fatalf("start faultfs: %v", err)
	}
	go func() {
		f.err = f.cmd.Wait()
		close(f.done)
	}()
	t.Cleanup(func() {
		f.stop(t)
		if t.Failed() {
			t.Logf("faultfs output:\n%s", f.out)
		}
	})
	deadline := time.Now().Add(faultReadyTimeout)
	for !strings.Contains(f.out.String(), "faultfs: ready") {
		select {
		case <-f.done:
			if out := f.out.String(); strings.Contains(out, "mount on") &&
				strings.Contains(out, "operation not permitted") {
				skipMissing(t, "mount", "mount(2) is not allowed here (a container?): %s", out)
			}
			t.Fatalf("faultfs exited before it was ready: %v\n%s", f.err, f.out)
		case <-time.After(10 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("faultfs not ready after %v:\n%s", faultReadyTimeout, f.out)
		}
	}
	return f
}

func (f *faultFS) disk() string { return filepath.Join(f.dir, "disk.img") }

// stop sends SIGTERM and asserts exit status 0; a mount left behind is
// detached so the temporary directory can go.
func (f *faultFS) stop(t *testing.T) {
	t.Helper()
	if f.stopped {
		return
	}
	f.stopped = true
	if err := f.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Errorf("SIGTERM faultfs: %v", err)
	}
	select {
	case <-f.done:
		if f.err != nil {
			t.Errorf("faultfs after SIGTERM: %v, want exit status 0\n%s", f.err, f.out)
		}
	case <-time.After(faultStopTimeout):
		f.cmd.Process.Kill()
		<-f.done
		t.Errorf("faultfs still running %v after SIGTERM; killed", faultStopTimeout)
	}
	unix.Unmount(f.dir, unix.MNT_DETACH) // EINVAL when it was unmounted: fine
}

// control writes commands to .control.
func (f *faultFS) control(t *testing.T, cmds ...string) {
	t.Helper()
	text := strings.Join(cmds, "\n") + "\n"
	if err := os.WriteFile(filepath.Join(f.dir, ".control"), []byte(text), 0); err != nil {
		t.Fatalf("faultfs control %q: %v\n%s", cmds, err, f.out)
	}
}

// status reads faultfs's status: name value, one a line.
func (f *faultFS) status(t *testing.T) map[string]string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(f.dir, ".control"))
	if err != nil {
		t.Fatalf("faultfs status: %v", err)
	}
	m := map[string]string{}
	for _, line := range strings.Split(string(b), "\n") {
		if k, v, ok := strings.Cut(line, " "); ok {
			m[k] = v
		}
	}
	return m
}

// faultSetup makes a sparse backing file, mounts faultfs on it and serves
// its disk.img with nbdring.
func faultSetup(t *testing.T, size int64) (*faultFS, *e2eServer, string) {
	t.Helper()
	faultNeed(t)
	bin := faultBin(t)
	backing := e2eMakeFile(t, t.TempDir(), "backing.img", size, 0)
	f := faultStart(t, bin, backing)
	return f, e2eStart(t, f.disk()), bin
}

// faultConn is a raw NBD client with simple replies.
type faultConn struct {
	t      *testing.T
	c      net.Conn
	hdr    [wire.SimpleReplySize]byte
	cookie uint64
}

func faultDial(t *testing.T, s *e2eServer) *faultConn {
	t.Helper()
	c, err := net.Dial("unix", s.sock)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(faultIOTimeout))
	if _, err := wire.ClientHandshake(c, wire.ClientOptions{BlockSize: true}); err != nil {
		t.Fatalf("handshake: %v", err)
	}
	return &faultConn{t: t, c: c}
}

// do sends one request (payload for WRITE, n bytes long) and waits for
// its reply, reading a READ's data into buf.
func (fc *faultConn) do(typ wire.Cmd, flags wire.CmdFlags, off uint64, n int,
	payload, buf []byte) wire.Errno {
	fc.t.Helper()
	fc.cookie++
	req := make([]byte, wire.RequestSize, wire.RequestSize+len(payload))
	wire.EncodeRequest(req, &wire.Request{Type: typ, Flags: flags, Cookie: fc.cookie,
		Offset: off, Length: uint64(n)})
	if _, err := fc.c.Write(append(req, payload...)); err != nil {
		fc.t.Fatalf("send %v: %v", typ, err)
	}
	if _, err := io.ReadFull(fc.c, fc.hdr[:]); err != nil {
		fc.t.Fatalf("reply to %v: %v", typ, err)
	}
	if m := binary.BigEndian.Uint32(fc.hdr[:]); m != wire.MagicSimple {
		fc.t.Fatalf("reply to %v: magic %#x, want a simple reply", typ, m)
	}
	if c := binary.BigEndian.Uint64(fc.hdr[8:]); c != fc.cookie {
		fc.t.Fatalf("reply to %v: cookie %d, want %d", typ, c, fc.cookie)
	}
	errno := wire.Errno(binary.BigEndian.Uint32(fc.hdr[4:]))
	if errno == wire.EOK && typ == wire.CmdRead {
		if _, err := io.ReadFull(fc.c, buf[:n]); err != nil {
			fc.t.Fatalf("read data: %v", err)
		}
	}
	return errno
}

func (fc *faultConn) write(off uint64, data []byte, flags wire.CmdFlags) wire.Errno {
	fc.t.Helper()
	return fc.do(wire.CmdWrite, flags, off, len(data), data, nil)
}

func (fc *faultConn) read(off uint64, buf []byte) wire.Errno {
	fc.t.Helper()
	return fc.do(wire.CmdRead, 0, off, len(buf), nil, buf)
}

func (fc *faultConn) flush() wire.Errno {
	fc.t.Helper()
	return fc.do(wire.CmdFlush, 0, 0, 0, nil, nil)
}

// want fails the test when a request's reply is not the one expected.
func faultWant(t *testing.T, what string, got, want wire.Errno) {
	t.Helper()
	if got != want {
		t.Errorf("%s: reply %v (%d), want %v", what, got, got, want)
	}
}

// faultLogged fails the test unless the server's log matches pattern.
// The log reaches the test through a pipe, so it may lag the reply.
func faultLogged(t *testing.T, s *e2eServer, pattern string) {
	t.Helper()
	re := regexp.MustCompile(pattern)
	for deadline := time.Now().Add(faultLogTimeout); !re.MatchString(s.stderr.String()); {
		if time.Now().After(deadline) {
			t.Errorf("server log has no line matching %q after %v", pattern, faultLogTimeout)
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// faultReq is one request of a pipelined load.
type faultReq struct {
	typ     wire.Cmd
	flags   wire.CmdFlags
	off     uint64
	n       uint32
	payload []byte
}

// faultPipeline keeps up to qd requests in flight on c. next gives each
// request just before it is sent (false: send no more); done sees each
// reply, with a READ's data. It returns nil once next said stop and every
// reply is in, or the connection's error.
func faultPipeline(c net.Conn, qd int, next func(cookie uint64) (faultReq, bool),
	done func(cookie uint64, errno wire.Errno, data []byte)) error {
	var mu sync.Mutex
	readLen := map[uint64]uint32{}
	tokens := make(chan struct{}, qd)
	dead := make(chan struct{})
	var finished atomic.Bool
	sendErr := make(chan error, 1)
	go func() {
		hdr := make([]byte, wire.RequestSize)
		for cookie := uint64(1); ; cookie++ {
			select {
			case tokens <- struct{}{}:
			case <-dead:
				sendErr <- nil
				return
			}
			r, ok := next(cookie)
			if !ok {
				<-tokens
				for range qd { // wait for every reply
					select {
					case tokens <- struct{}{}:
					case <-dead:
						sendErr <- nil
						return
					}
				}
				finished.Store(true)
				c.SetReadDeadline(time.Now())
				sendErr <- nil
				return
			}
			if r.typ == wire.CmdRead {
				mu.Lock()
				readLen[cookie] = r.n
				mu.Unlock()
			}
			wire.EncodeRequest(hdr, &wire.Request{Type: r.typ, Flags: r.flags,
				Cookie: cookie, Offset: r.off, Length: uint64(r.n)})
			if _, err := c.Write(append(hdr, r.payload...)); err != nil {
				sendErr <- err
				return
			}
		}
	}()
	err := faultReceive(c, &mu, readLen, tokens, done)
	if finished.Load() {
		err = nil
		c.SetDeadline(time.Now().Add(faultIOTimeout))
	}
	close(dead)
	if serr := <-sendErr; err == nil {
		err = serr
	}
	return err
}

func faultReceive(c net.Conn, mu *sync.Mutex, readLen map[uint64]uint32,
	tokens chan struct{}, done func(uint64, wire.Errno, []byte)) error {
	var hdr [wire.SimpleReplySize]byte
	var data []byte
	for {
		if _, err := io.ReadFull(c, hdr[:]); err != nil {
			return err
		}
		if m := binary.BigEndian.Uint32(hdr[:]); m != wire.MagicSimple {
			return fmt.Errorf("reply magic %#x, want a simple reply", m)
		}
		errno := wire.Errno(binary.BigEndian.Uint32(hdr[4:]))
		cookie := binary.BigEndian.Uint64(hdr[8:])
		mu.Lock()
		n := readLen[cookie]
		delete(readLen, cookie)
		mu.Unlock()
		data = data[:0]
		if n > 0 && errno == wire.EOK {
			data = append(data, make([]byte, n)...)
			if _, err := io.ReadFull(c, data); err != nil {
				return err
			}
		}
		done(cookie, errno, data)
		<-tokens
	}
}

// TestE2EFaultEIO: reads and writes over a failing range get EIO, the rest
// of the disk works, and the connection stays usable throughout.
func TestE2EFaultEIO(t *testing.T) {
	f, s, _ := faultSetup(t, 16<<20)
	fc := faultDial(t, s)
	data := bytes.Repeat([]byte{0x11}, 64*faultBlock)
	faultWant(t, "write 256 KiB", fc.write(0, data, 0), wire.EOK)
	faultWant(t, "flush", fc.flush(), wire.EOK)
	f.control(t, "eio-read 65536 4096", "eio-write 131072 4096")
	buf := make([]byte, 8192)
	faultWant(t, "read the bad block", fc.read(65536, buf[:4096]), wire.EIO)
	faultLogged(t, s, `read .*65536.*input/output error`)
	faultWant(t, "read across the bad block", fc.read(61440, buf), wire.EIO)
	faultWant(t, "read a good block", fc.read(0, buf[:4096]), wire.EOK)
	e2eSameBytes(t, "good block", buf[:4096], data[:4096])
	time.Sleep(faultLogQuiet) // so the write's error gets a line of its own
	faultWant(t, "write the bad block", fc.write(131072, data[:4096], 0), wire.EIO)
	faultLogged(t, s, `write .*131072.*input/output error`)
	faultWant(t, "write a good block", fc.write(8192, data[:4096], 0), wire.EOK)
	faultWant(t, "read the block writes fail on", fc.read(131072, buf[:4096]), wire.EOK)
	faultWant(t, "read the bad block again", fc.read(65536, buf[:4096]), wire.EIO)
	f.control(t, "clear")
	faultWant(t, "read the cleared block", fc.read(65536, buf[:4096]), wire.EOK)
	e2eSameBytes(t, "cleared block", buf[:4096], data[:4096])
}

// TestE2EFaultFsync: once an fdatasync failed, acknowledged data may be
// gone, so that FLUSH and every later one, on any connection, get EIO
// until the server restarts, although the device's next fsync succeeds.
func TestE2EFaultFsync(t *testing.T) {
	f, s, _ := faultSetup(t, 16<<20)
	fc := faultDial(t, s)
	data := bytes.Repeat([]byte{0x22}, faultBlock)
	faultWant(t, "write", fc.write(0, data, 0), wire.EOK)
	faultWant(t, "flush before the fault", fc.flush(), wire.EOK)
	f.control(t, "fsync-fail 1")
	faultWant(t, "write", fc.write(4096, data, 0), wire.EOK)
	faultWant(t, "flush that fails", fc.flush(), wire.EIO)
	faultLogged(t, s, `fdatasync.*input/output error`)
	if st := f.status(t); st["sync_failures"] != "1" || st["fsync_fail"] != "0" {
		t.Fatalf("faultfs failed %s fsyncs, %s still to fail; want 1 and 0",
			st["sync_failures"], st["fsync_fail"])
	}
	faultWant(t, "flush after the failed one", fc.flush(), wire.EIO)
	faultWant(t, "flush on a new connection", faultDial(t, s).flush(), wire.EIO)
	s.stop(t)
	s2 := e2eStart(t, f.disk())
	faultWant(t, "flush after a restart", faultDial(t, s2).flush(), wire.EOK)
}

// TestE2EFaultFUASyncFails: a FUA write whose sync part fails gets EIO, and
// so does every later FLUSH: the failed sync may have covered other
// acknowledged writes' data too.
func TestE2EFaultFUASyncFails(t *testing.T) {
	f, s, _ := faultSetup(t, 16<<20)
	fc := faultDial(t, s)
	data := bytes.Repeat([]byte{0x44}, faultBlock)
	faultWant(t, "plain write", fc.write(0, data, 0), wire.EOK)
	f.control(t, "fsync-fail 1")
	faultWant(t, "FUA write whose sync fails", fc.write(4096, data, wire.CmdFlagFUA),
		wire.EIO)
	if st := f.status(t); st["sync_failures"] != "1" {
		t.Fatalf("faultfs failed %s syncs, want 1", st["sync_failures"])
	}
	faultWant(t, "flush after it", fc.flush(), wire.EIO)
}

// TestE2EFaultENOSPC: a write the device has no room for gets ENOSPC; once
// there is room the retried write and a FLUSH succeed: a failed O_DIRECT
// write was reported to its client and leaves nothing unflushed behind.
func TestE2EFaultENOSPC(t *testing.T) {
	f, s, _ := faultSetup(t, 16<<20)
	fc := faultDial(t, s)
	data := bytes.Repeat([]byte{0x33}, faultBlock)
	f.control(t, "enospc-after 0")
	faultWant(t, "write to a full device", fc.write(40960, data, 0), wire.ENOSPC)
	faultLogged(t, s, `write .*40960.*no space left on device`)
	f.control(t, "enospc-off")
	faultWant(t, "retried write", fc.write(40960, data, 0), wire.EOK)
	faultWant(t, "flush after the retried write", fc.flush(), wire.EOK)
	buf := make([]byte, faultBlock)
	faultWant(t, "read back", fc.read(40960, buf), wire.EOK)
	e2eSameBytes(t, "retried block", buf, data)
}

// TestE2EFaultZeroNoHole: WRITE_ZEROES with NO_HOLE on a filesystem that
// will not zero a range must zero it some other way or fail; an OK over
// the old data is a lie. "no-fallocate" refuses every fallocate mode;
// "no-punch" refuses PUNCH_HOLE and ZERO_RANGE but allocates, as vfat does.
func TestE2EFaultZeroNoHole(t *testing.T) {
	f, s, _ := faultSetup(t, 16<<20)
	fc := faultDial(t, s)
	for i, mode := range []string{"no-fallocate", "no-punch"} {
		t.Run(mode, func(t *testing.T) {
			off := uint64(i+1) << 20
			data := bytes.Repeat([]byte{0x5a}, 16*faultBlock)
			faultWant(t, "write", fc.write(off, data, 0), wire.EOK)
			f.control(t, "clear", mode+" on")
			errno := fc.do(wire.CmdWriteZeroes, wire.CmdFlagNoHole, off, len(data), nil, nil)
			f.control(t, "clear")
			if errno != wire.EOK {
				t.Logf("WRITE_ZEROES NO_HOLE: %v (an honest refusal)", errno)
				return
			}
			buf := make([]byte, len(data))
			faultWant(t, "read back", fc.read(off, buf), wire.EOK)
			if !bytes.Equal(buf, make([]byte, len(buf))) {
				t.Errorf("WRITE_ZEROES NO_HOLE replied OK, but the range still holds "+
					"the old data (first byte %#x)", buf[0])
			}
		})
	}
}

// TestE2EFaultSlowDevice: on a device that takes 2 ms per request, 4 KiB
// requests at queue depth 16 all complete correctly, and SIGTERM under
// that load still ends the server within e2eStopTimeout.
func TestE2EFaultSlowDevice(t *testing.T) {
	const qd, blocks = 16, 256
	f, s, _ := faultSetup(t, 16<<20)
	f.control(t, "delay-us 2000")
	fc := faultDial(t, s)
	block := func(i int) []byte {
		return bytes.Repeat([]byte{byte(i + 1)}, faultBlock)
	}
	var bad []string
	for _, typ := range []wire.Cmd{wire.CmdWrite, wire.CmdRead} {
		i := 0
		err := faultPipeline(fc.c, qd, func(cookie uint64) (faultReq, bool) {
			if i == blocks {
				return faultReq{}, false
			}
			r := faultReq{typ: typ, off: uint64(i) * faultBlock, n: faultBlock}
			if typ == wire.CmdWrite {
				r.payload = block(i)
			}
			i++
			return r, true
		}, func(cookie uint64, errno wire.Errno, data []byte) {
			i := int(cookie - 1)
			switch {
			case errno != wire.EOK:
				bad = append(bad, fmt.Sprintf("%v of block %d: %v", typ, i, errno))
			case typ == wire.CmdRead && !bytes.Equal(data, block(i)):
				bad = append(bad, fmt.Sprintf("block %d read back %#x..., want %#x", i,
					data[:4], block(i)[:4]))
			}
		})
		if err != nil || len(bad) > 0 {
			t.Fatalf("%v at QD %d on a slow device: %v; %d of %d bad, first %q", typ, qd,
				err, len(bad), blocks, bad[:min(len(bad), 3)])
		}
	}
	// SIGTERM with the queue full: requests in flight finish, then exit.
	loadErr := make(chan error, 1)
	lc := faultDial(t, s)
	go func() {
		rng := rand.New(rand.NewPCG(1, 2))
		loadErr <- faultPipeline(lc.c, qd, func(cookie uint64) (faultReq, bool) {
			r := faultReq{typ: wire.CmdRead, off: rng.Uint64N(blocks) * faultBlock,
				n: faultBlock}
			if cookie%2 == 0 {
				r.typ, r.payload = wire.CmdWrite, block(0)
			}
			return r, true
		}, func(uint64, wire.Errno, []byte) {})
	}()
	time.Sleep(300 * time.Millisecond)
	start := time.Now()
	s.stop(t)
	t.Logf("nbdring exited %v after SIGTERM with %d requests in flight on a 2 ms "+
		"device", time.Since(start).Round(time.Millisecond), qd)
	if err := <-loadErr; err == nil {
		t.Errorf("the load's connection is still open after the server exited")
	}
}

// Power cut: the load, the record of what was acknowledged, the check.
const (
	cutExportSize = 32 << 20
	cutConns      = 2
	cutQD         = 8
	// cutLoadTime is how long the load runs before nbdring is killed;
	// the last cutTailTime of it sends no FLUSH, so acknowledged writes
	// are certain to be unflushed (the cut must have something to drop)
	// and FUA writes certain to be covered by nothing but their FUA.
	cutLoadTime = 2 * time.Second
	cutTailTime = 300 * time.Millisecond
	// cutPercentFlush and cutPercentFUA shape the mix (the rest are plain
	// writes): flushes rare enough that the last one leaves acknowledged
	// writes uncovered for the cut to drop, FUA writes common enough that
	// some come after it.
	cutPercentFlush = 3
	cutPercentFUA   = 25
	// cutMagic starts every block the load writes.
	cutMagic = "NBDRCUT1"
)

// cutWrite is one WRITE of the load; ackEv is 0 until acknowledged.
type cutWrite struct {
	seq   uint64
	fua   bool
	ackEv uint64
}

// cutLog records the load. Events (an acknowledgement received, a FLUSH
// about to be sent) are numbered by one clock across connections, so
// "acknowledged before this FLUSH was sent" is ackEv < the flush's event.
type cutLog struct {
	mu      sync.Mutex
	clock   atomic.Uint64
	seq     atomic.Uint64
	writes  map[int64][]*cutWrite // by block, in issue order
	flushOK uint64                // event of the latest FLUSH sent that was acknowledged OK
	errs    []string
	sent    [3]int // plain, FUA, FLUSH requests sent
}

// cutBlock fills b (one block) so that it names its offset and seq and
// the rest follows from both: a torn or misplaced block cannot pass.
func cutBlock(b []byte, off int64, seq uint64) {
	copy(b, cutMagic)
	binary.LittleEndian.PutUint64(b[8:], uint64(off))
	binary.LittleEndian.PutUint64(b[16:], seq)
	x := uint64(off)*0x9e3779b97f4a7c15 ^ seq
	for i := 24; i < len(b); i += 8 {
		x ^= x << 13
		x ^= x >> 7
		x ^= x << 17
		binary.LittleEndian.PutUint64(b[i:], x)
	}
}

// cutConnLoad runs one connection's load until the connection dies. It
// writes only its own blocks (block%cutConns == id) and never two writes
// to one block at once, so each block's writes are ordered.
func cutConnLoad(c net.Conn, id int, nblocks int64, lg *cutLog, tailAt,
	stopAt time.Time) error {
	rng := rand.New(rand.NewPCG(uint64(id), 42))
	type pend struct {
		block int64
		w     *cutWrite
		ev    uint64 // FLUSH: its send event
	}
	pending := map[uint64]pend{}
	busy := map[int64]bool{}
	next := func(cookie uint64) (faultReq, bool) {
		if time.Now().After(stopAt) {
			return faultReq{}, false // the kill never came: stop anyway
		}
		lg.mu.Lock()
		defer lg.mu.Unlock()
		if rng.IntN(100) < cutPercentFlush && time.Now().Before(tailAt) {
			pending[cookie] = pend{block: -1, ev: lg.clock.Add(1)}
			lg.sent[2]++
			return faultReq{typ: wire.CmdFlush}, true
		}
		b := rng.Int64N(nblocks/cutConns)*cutConns + int64(id)
		for busy[b] {
			b = rng.Int64N(nblocks/cutConns)*cutConns + int64(id)
		}
		busy[b] = true
		w := &cutWrite{seq: lg.seq.Add(1), fua: rng.IntN(100) < cutPercentFUA}
		lg.writes[b] = append(lg.writes[b], w)
		pending[cookie] = pend{block: b, w: w}
		r := faultReq{typ: wire.CmdWrite, off: uint64(b) * faultBlock, n: faultBlock,
			payload: make([]byte, faultBlock)}
		cutBlock(r.payload, b*faultBlock, w.seq)
		if w.fua {
			r.flags = wire.CmdFlagFUA
			lg.sent[1]++
		} else {
			lg.sent[0]++
		}
		return r, true
	}
	done := func(cookie uint64, errno wire.Errno, _ []byte) {
		ev := lg.clock.Add(1)
		lg.mu.Lock()
		defer lg.mu.Unlock()
		p := pending[cookie]
		delete(pending, cookie)
		if errno != wire.EOK {
			lg.errs = append(lg.errs, fmt.Sprintf("conn %d cookie %d: %v", id, cookie, errno))
			return
		}
		if p.w == nil {
			lg.flushOK = max(lg.flushOK, p.ev)
			return
		}
		delete(busy, p.block)
		p.w.ackEv = ev
	}
	return faultPipeline(c, cutQD, next, done)
}

// TestE2EFaultPowerCut: clients write self-describing blocks with plain
// writes, FUA writes and FLUSHes over two connections; nbdring is killed
// mid-load and the power cut. After a restart every block written by FUA,
// or acknowledged before a FLUSH that was acknowledged, holds that write
// or a later one; no block holds another's data; unwritten blocks are
// zeros; and the cut did drop some acknowledged, unflushed writes, or the
// test would prove nothing.
func TestE2EFaultPowerCut(t *testing.T) {
	faultNeed(t)
	bin := faultBin(t)
	backing := e2eMakeFile(t, t.TempDir(), "backing.img", cutExportSize, 0)
	f := faultStart(t, bin, backing)
	s := e2eStart(t, f.disk())
	// The last eighth is never written: it must read back as zeros.
	nblocks := int64(cutExportSize/faultBlock) * 7 / 8
	lg := &cutLog{writes: map[int64][]*cutWrite{}}
	var wg sync.WaitGroup
	start := time.Now()
	for id := range cutConns {
		fc := faultDial(t, s)
		wg.Add(1)
		go func() {
			defer wg.Done()
			cutConnLoad(fc.c, id, nblocks, lg, start.Add(cutLoadTime-cutTailTime),
				start.Add(cutLoadTime+10*time.Second))
		}()
	}
	time.Sleep(cutLoadTime)
	s.cmd.Process.Kill() // SIGKILL: no chance to finish anything
	<-s.done
	s.stopped = true
	f.control(t, "cut")
	wg.Wait()
	st := f.status(t)
	t.Logf("sent %d plain, %d FUA writes, %d FLUSHes; faultfs: %s pages dropped by the "+
		"cut, %s committed, %s syncs, %s DSYNC writes", lg.sent[0], lg.sent[1], lg.sent[2],
		st["dropped_pages"], st["committed_pages"], st["syncs"], st["dsync_writes"])
	if len(lg.errs) > 0 {
		t.Errorf("%d requests failed during the load, first: %s", len(lg.errs), lg.errs[0])
	}
	f.stop(t)
	f2 := faultStart(t, bin, backing)
	s2 := e2eStart(t, f2.disk())
	img := make([]byte, cutExportSize)
	fc := faultDial(t, s2)
	for off := 0; off < len(img); off += 1 << 20 {
		faultWant(t, fmt.Sprintf("read back %d+1 MiB", off), fc.read(uint64(off),
			img[off:off+1<<20]), wire.EOK)
	}
	cutCheck(t, lg, img)
}

// cutCheck compares what came back with what the log says must have.
func cutCheck(t *testing.T, lg *cutLog, img []byte) {
	t.Helper()
	var bad []string
	covered, fuaOnly, lost, zeros := 0, 0, 0, make([]byte, faultBlock)
	want := make([]byte, faultBlock)
	for b := int64(0); b < int64(len(img))/faultBlock; b++ {
		got := img[b*faultBlock : (b+1)*faultBlock]
		var gotSeq uint64 // 0: zeros
		switch {
		case bytes.Equal(got, zeros):
		case string(got[:8]) != cutMagic:
			bad = append(bad, fmt.Sprintf("block %d holds data the test never wrote", b))
			continue
		case int64(binary.LittleEndian.Uint64(got[8:])) != b*faultBlock:
			bad = append(bad, fmt.Sprintf("block %d holds the data of offset %d", b,
				binary.LittleEndian.Uint64(got[8:])))
			continue
		default:
			gotSeq = binary.LittleEndian.Uint64(got[16:])
			cutBlock(want, b*faultBlock, gotSeq)
			if !bytes.Equal(got, want) {
				bad = append(bad, fmt.Sprintf("block %d write %d is torn", b, gotSeq))
				continue
			}
		}
		// need: the latest durable write; last: the latest acknowledged one.
		var need, last *cutWrite
		known := gotSeq == 0
		for _, w := range lg.writes[b] {
			known = known || w.seq == gotSeq
			if w.ackEv == 0 {
				continue
			}
			last = w
			if w.fua || w.ackEv < lg.flushOK {
				need = w
			}
		}
		switch {
		case !known:
			bad = append(bad, fmt.Sprintf("block %d holds write %d, never sent there", b,
				gotSeq))
		case need != nil && gotSeq < need.seq:
			bad = append(bad, fmt.Sprintf("block %d lost durable write %d (fua %v): holds "+
				"%d", b, need.seq, need.fua, gotSeq))
		}
		if need != nil {
			covered++
			if need.ackEv > lg.flushOK {
				fuaOnly++ // durable by its FUA alone
			}
		}
		if last != nil && last != need && gotSeq < last.seq {
			lost++ // acknowledged, never made durable, and gone
		}
	}
	t.Logf("%d blocks had a durable write (%d by FUA alone, after the last FLUSH); %d "+
		"lost an acknowledged unflushed write", covered, fuaOnly, lost)
	if len(bad) > 0 {
		t.Errorf("%d blocks wrong after the power cut; first %d:\n%s", len(bad),
			min(len(bad), 10), strings.Join(bad[:min(len(bad), 10)], "\n"))
	}
	if fuaOnly == 0 || covered == fuaOnly || lost == 0 {
		t.Errorf("the cut tested too little: %d blocks durable by FLUSH, %d by FUA alone, "+
			"%d acknowledged writes dropped; each must be > 0", covered-fuaOnly, fuaOnly, lost)
	}
}
