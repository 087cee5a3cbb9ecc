package ring

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// newTestRing creates a ring on a locked thread (SINGLE_ISSUER ties the
// ring to it); the test must stay on that goroutine.
func newTestRing(t *testing.T) *Ring {
	t.Helper()
	runtime.LockOSThread()
	t.Cleanup(runtime.UnlockOSThread)
	r, err := New(64, 16, time.Millisecond)
	if err != nil {
		skipMissing(t, "io_uring", "io_uring unavailable here: %v", err)
	}
	t.Cleanup(r.Close)
	return r
}

// wait submits and returns the result of the single completion with ud.
func wait(t *testing.T, r *Ring, ud uint64) int32 { return waitCQE(t, r, ud).Res }

// waitCQE submits and returns the single completion, which must be ud's.
func waitCQE(t *testing.T, r *Ring, ud uint64) CQE {
	t.Helper()
	for {
		if err := r.SubmitAndWait(1); err != nil {
			t.Fatal(err)
		}
		cqes := r.Reap()
		for _, c := range cqes {
			if c.UserData != ud {
				t.Fatalf("completion for %#x, want %#x", c.UserData, ud)
			}
			got := *c
			r.Advance(len(cqes))
			return got
		}
	}
}

// sqe is a zeroed SQE carrying user_data ud (the engine's ledger does this).
func sqe(r *Ring, ud uint64) *SQE {
	e := r.SQE()
	e.UserData = ud
	return e
}

func alignedBuf(t *testing.T, n int) []byte {
	b, err := unix.Mmap(-1, 0, n, unix.PROT_READ|unix.PROT_WRITE,
		unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Munmap(b) })
	return b
}

func TestUserDataRoundTrip(t *testing.T) {
	for _, c := range []struct {
		op       uint8
		gen, idx uint32
	}{{1, 0, 0}, {5, GenMask, 1<<32 - 1}, {255, 12345, 77}, {2, GenMask + 3, 9}} {
		op, gen, idx := SplitUserData(UserData(c.op, c.gen, c.idx))
		if op != c.op || gen != c.gen&GenMask || idx != c.idx {
			t.Errorf("UserData(%d,%d,%d) split to %d,%d,%d", c.op, c.gen, c.idx, op, gen, idx)
		}
	}
}

// TestDirectWriteReadFallocate drives O_DIRECT writes (with RWF_DSYNC),
// reads, fdatasync and fallocate punch/zero through the ring and checks
// the file with plain syscalls.
func TestDirectWriteReadFallocate(t *testing.T) {
	r := newTestRing(t)
	path := filepath.Join(t.TempDir(), "img")
	if err := os.WriteFile(path, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(path, 1<<20); err != nil {
		t.Fatal(err)
	}
	fd, err := unix.Open(path, unix.O_RDWR|unix.O_DIRECT, 0)
	if err != nil {
		skipMissing(t, "direct-io", "O_DIRECT refused on %s: %v", path, err)
	}
	defer unix.Close(fd)
	buf := alignedBuf(t, 8192)
	for i := range buf {
		buf[i] = 'B'
	}
	e := r.SQE()
	PrepWrite(e, fd, unsafe.Pointer(&buf[0]), 8192, 4096, 0x2 /* RWF_DSYNC */)
	e.UserData = 1
	if res := wait(t, r, 1); res != 8192 {
		t.Fatalf("write: res %d", res)
	}
	PrepFdatasync(sqe(r, 2), fd)
	if res := wait(t, r, 2); res != 0 {
		t.Fatalf("fdatasync: res %d", res)
	}
	// Punch 1000 bytes at 8000: only [8000, 9000) may become zero.
	PrepFallocate(sqe(r, 3), fd, 0x02|0x01, 8000, 1000)
	if res := wait(t, r, 3); res != 0 {
		t.Fatalf("punch: res %d", res)
	}
	// ZERO_RANGE 10 bytes at 5000. Filesystems without it (tmpfs) answer
	// EOPNOTSUPP and leave the bytes alone; the kernel promises nothing
	// more, so there the same bytes are punched instead, which every
	// filesystem the engine serves from supports: either way they read
	// back as zeros, and each opcode's result is checked where it exists.
	PrepFallocate(sqe(r, 4), fd, 0x10|0x01, 5000, 10)
	switch res := wait(t, r, 4); res {
	case 0:
	case -int32(unix.EOPNOTSUPP):
		t.Logf("ZERO_RANGE refused on %s (EOPNOTSUPP); punching [5000, 5010) instead",
			fsName(path))
		PrepFallocate(sqe(r, 6), fd, 0x02|0x01, 5000, 10)
		if res := wait(t, r, 6); res != 0 {
			t.Fatalf("punch [5000, 5010) after ZERO_RANGE was refused: res %d", res)
		}
	default:
		t.Fatalf("zero range: res %d", res)
	}
	got := alignedBuf(t, 16384)
	PrepRead(sqe(r, 5), fd, unsafe.Pointer(&got[0]), 16384, 0)
	if res := wait(t, r, 5); res != 16384 {
		t.Fatalf("read: res %d", res)
	}
	want := make([]byte, 16384)
	copy(want[4096:12288], bytes.Repeat([]byte{'B'}, 8192))
	clear(want[8000:9000])
	clear(want[5000:5010])
	if !bytes.Equal(got, want) {
		for i := range got {
			if got[i] != want[i] {
				t.Fatalf("byte %d is %q, want %q", i, got[i], want[i])
			}
		}
	}
}

// fsName names the filesystem holding path, for log lines.
func fsName(path string) string {
	var st unix.Statfs_t
	if err := unix.Statfs(path, &st); err != nil {
		return "an unknown filesystem (" + err.Error() + ")"
	}
	switch st.Type {
	case unix.TMPFS_MAGIC:
		return "tmpfs"
	case unix.EXT4_SUPER_MAGIC:
		return "ext4"
	case unix.XFS_SUPER_MAGIC:
		return "xfs"
	case unix.BTRFS_SUPER_MAGIC:
		return "btrfs"
	}
	return fmt.Sprintf("filesystem type %#x", st.Type)
}

// TestDiscardLoopDevice discards through the ring on a loop device, whose
// discard punches a hole in its backing file: the hole is the proof.
func TestDiscardLoopDevice(t *testing.T) {
	r := newTestRing(t)
	if os.Geteuid() != 0 {
		skipMissing(t, "root", "loop devices need root")
	}
	back := filepath.Join(t.TempDir(), "back")
	data := bytes.Repeat([]byte{0xab}, 4<<20)
	if err := os.WriteFile(back, data, 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command("losetup", "--find", "--show", back).Output()
	if err != nil {
		skipMissing(t, "loop", "losetup: %v", err)
	}
	dev := strings.TrimSpace(string(out))
	defer exec.Command("losetup", "-d", dev).Run()
	fd, err := unix.Open(dev, unix.O_RDWR|unix.O_DIRECT, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	PrepDiscard(sqe(r, 9), fd, 1<<20, 1<<20)
	res := wait(t, r, 9)
	if res == -int32(unix.EOPNOTSUPP) || res == -int32(unix.EINVAL) {
		skipMissing(t, "kernel", "kernel without BLOCK_URING_CMD_DISCARD (res %d)", res)
	}
	if res != 0 {
		t.Fatalf("discard: res %d", res)
	}
	bf, err := os.Open(back)
	if err != nil {
		t.Fatal(err)
	}
	defer bf.Close()
	hole, err := unix.Seek(int(bf.Fd()), 0, unix.SEEK_HOLE)
	if err != nil || hole != 1<<20 {
		t.Fatalf("backing file's first hole at %d (%v), want 1 MiB", hole, err)
	}
}
