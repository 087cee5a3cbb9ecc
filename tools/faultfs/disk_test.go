package main

import (
	"bytes"
	"os"
	"path/filepath"
	"syscall"
	"testing"
)

// The overlay's rules, without FUSE: what is synced survives a cut, what
// is not is gone, and each fault does what the control file says.

func testDisk(t *testing.T, size, overlay int64) (*disk, string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "backing")
	if err := os.WriteFile(path, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(path, size); err != nil {
		t.Fatal(err)
	}
	d, err := openDisk(path, overlay)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.f.Close() })
	return d, path
}

func mustWrite(t *testing.T, d *disk, b byte, off, n int64) {
	t.Helper()
	if _, errno := d.writeAt(bytes.Repeat([]byte{b}, int(n)), off); errno != 0 {
		t.Fatalf("write %d+%d: %v", off, n, errno)
	}
}

func wantRead(t *testing.T, d *disk, off, n int64, want byte) {
	t.Helper()
	buf := make([]byte, n)
	if _, errno := d.readAt(buf, off); errno != 0 {
		t.Fatalf("read %d+%d: %v", off, n, errno)
	}
	if !bytes.Equal(buf, bytes.Repeat([]byte{want}, int(n))) {
		t.Fatalf("read %d+%d: got %x..., want all %#x", off, n, buf[:8], want)
	}
}

func wantBacking(t *testing.T, path string, off, n int64, want byte) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(b[off:off+n], bytes.Repeat([]byte{want}, int(n))) {
		t.Fatalf("backing %d+%d: got %x..., want all %#x", off, n, b[off:off+8], want)
	}
}

func TestSyncAndCut(t *testing.T) {
	d, path := testDisk(t, 1<<20, 1<<20)
	mustWrite(t, d, 1, 0, 8192)
	mustWrite(t, d, 2, 100, 10) // unaligned, inside page 0
	if errno := d.sync(0, d.size, true); errno != 0 {
		t.Fatal(errno)
	}
	mustWrite(t, d, 3, 8192, 4096)  // never synced
	mustWrite(t, d, 4, 12288, 4096) // synced by range (a DSYNC write)
	if errno := d.sync(12288, 16384, false); errno != 0 {
		t.Fatal(errno)
	}
	wantRead(t, d, 8192, 4096, 3)
	wantBacking(t, path, 8192, 4096, 0)
	if n := d.powerCut(); n != 1 {
		t.Fatalf("cut dropped %d pages, want 1", n)
	}
	if _, errno := d.readAt(make([]byte, 512), 0); errno != syscall.EIO {
		t.Fatalf("read after cut: %v, want EIO", errno)
	}
	wantBacking(t, path, 0, 100, 1)
	wantBacking(t, path, 100, 10, 2)
	wantBacking(t, path, 110, 8192-110, 1)
	wantBacking(t, path, 8192, 4096, 0)
	wantBacking(t, path, 12288, 4096, 4)
}

func TestFsyncFailLosesData(t *testing.T) {
	d, path := testDisk(t, 1<<20, 1<<20)
	if err := d.control("fsync-fail 1"); err != nil {
		t.Fatal(err)
	}
	mustWrite(t, d, 5, 0, 4096)
	if errno := d.sync(0, d.size, true); errno != syscall.EIO {
		t.Fatalf("first fsync: %v, want EIO", errno)
	}
	if errno := d.sync(0, d.size, true); errno != 0 {
		t.Fatalf("second fsync: %v, want success", errno)
	}
	wantRead(t, d, 0, 4096, 5)       // still seen, as in the page cache
	wantBacking(t, path, 0, 4096, 0) // but never written back
}

func TestEnospc(t *testing.T) {
	d, _ := testDisk(t, 1<<20, 1<<20)
	mustWrite(t, d, 1, 0, 4096)
	if err := d.control("enospc-after 4096"); err != nil {
		t.Fatal(err)
	}
	mustWrite(t, d, 2, 0, 4096)    // overwrite: nothing new
	mustWrite(t, d, 3, 4096, 4096) // takes the last 4096 bytes
	if _, errno := d.writeAt(make([]byte, 4096), 8192); errno != syscall.ENOSPC {
		t.Fatalf("write past the budget: %v, want ENOSPC", errno)
	}
	if errno := d.fallocate(8192, 4096, fallocKeepSize); errno != syscall.ENOSPC {
		t.Fatalf("allocate past the budget: %v, want ENOSPC", errno)
	}
	if err := d.control("enospc-off"); err != nil {
		t.Fatal(err)
	}
	mustWrite(t, d, 4, 8192, 4096)
}

func TestEIORanges(t *testing.T) {
	d, _ := testDisk(t, 1<<20, 1<<20)
	if err := d.control("eio-read 4096 4096\neio-write 65536 1"); err != nil {
		t.Fatal(err)
	}
	if _, errno := d.readAt(make([]byte, 8192), 0); errno != syscall.EIO {
		t.Fatalf("read over the range: %v, want EIO", errno)
	}
	wantRead(t, d, 8192, 4096, 0)
	mustWrite(t, d, 1, 4096, 4096) // writes there are fine
	if _, errno := d.writeAt(make([]byte, 4096), 65536); errno != syscall.EIO {
		t.Fatalf("write over the range: %v, want EIO", errno)
	}
	if err := d.control("clear"); err != nil {
		t.Fatal(err)
	}
	wantRead(t, d, 4096, 4096, 1)
}

func TestFallocate(t *testing.T) {
	d, path := testDisk(t, 1<<20, 1<<20)
	mustWrite(t, d, 7, 0, 3*4096)
	if errno := d.fallocate(100, 8192, fallocPunchHole|fallocKeepSize); errno != 0 {
		t.Fatal(errno)
	}
	wantRead(t, d, 0, 100, 7)
	wantRead(t, d, 100, 8192, 0)
	wantRead(t, d, 8292, 3*4096-8292, 7)
	if err := d.control("no-punch on"); err != nil {
		t.Fatal(err)
	}
	if errno := d.fallocate(0, 4096, fallocZeroRange); errno != syscall.EOPNOTSUPP {
		t.Fatalf("ZERO_RANGE with no-punch: %v, want EOPNOTSUPP", errno)
	}
	if errno := d.fallocate(0, 4096, fallocKeepSize); errno != 0 {
		t.Fatalf("allocate with no-punch: %v, want success", errno)
	}
	if err := d.control("no-fallocate on"); err != nil {
		t.Fatal(err)
	}
	if errno := d.fallocate(0, 4096, fallocKeepSize); errno != syscall.EOPNOTSUPP {
		t.Fatalf("allocate with no-fallocate: %v, want EOPNOTSUPP", errno)
	}
	if errno := d.sync(0, d.size, true); errno != 0 {
		t.Fatal(errno)
	}
	wantBacking(t, path, 100, 8192, 0)
	wantBacking(t, path, 8292, 3*4096-8292, 7)
}

// TestOverlayBound: a full overlay is written back, never dropped.
func TestOverlayBound(t *testing.T) {
	d, path := testDisk(t, 1<<20, 2*pageSize)
	for i := int64(0); i < 5; i++ {
		mustWrite(t, d, byte(i+1), i*pageSize, pageSize)
	}
	if len(d.pages) > d.pagesMax || d.count.writebacks == 0 {
		t.Fatalf("overlay %d pages (max %d), %d write-backs", len(d.pages), d.pagesMax,
			d.count.writebacks)
	}
	d.powerCut()
	wantBacking(t, path, 0, pageSize, 1)
}

func TestControlErrors(t *testing.T) {
	d, _ := testDisk(t, 1<<20, 1<<20)
	for _, bad := range []string{"bogus", "eio-read 1", "delay-us -1", "no-punch maybe",
		"delay-us 99999999", "cut now"} {
		if err := d.control(bad); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}
