package main

import (
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"
)

// TestMountDirectIO mounts faultfs in this process and checks, through
// the kernel, what the server relies on: O_DIRECT opens, an RWF_DSYNC
// write is committed by itself (FUSE sends O_DSYNC in the WRITE's flags),
// a plain write waits for fdatasync, and a cut fails everything after it.
func TestMountDirectIO(t *testing.T) {
	if os.Geteuid() != 0 {
		skipMissing(t, "root", "faultfs mounts with mount(2): run as root")
	}
	if _, err := os.Stat("/dev/fuse"); err != nil {
		skipMissing(t, "fuse", "no FUSE here (%v)", err)
	}
	backing := filepath.Join(t.TempDir(), "backing")
	if err := os.WriteFile(backing, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(backing, 1<<20); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	d, srv, err := mount(backing, dir, 1<<20, false)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		unmount(srv, dir)
		d.f.Close()
	})
	fd, err := unix.Open(filepath.Join(dir, diskName), unix.O_RDWR|unix.O_DIRECT, 0)
	if err != nil {
		t.Fatalf("open disk.img O_DIRECT: %v", err)
	}
	defer unix.Close(fd)
	buf, err := unix.Mmap(-1, 0, pageSize, unix.PROT_READ|unix.PROT_WRITE,
		unix.MAP_PRIVATE|unix.MAP_ANONYMOUS) // aligned, as O_DIRECT wants
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Munmap(buf)
	onDisk := func(off int64) byte {
		b := make([]byte, 1)
		if _, err := d.f.ReadAt(b, off); err != nil {
			t.Fatal(err)
		}
		return b[0]
	}
	buf[0] = 1
	if _, err := unix.Pwritev2(fd, [][]byte{buf}, 0, 0); err != nil {
		t.Fatalf("plain write: %v", err)
	}
	buf[0] = 2
	if _, err := unix.Pwritev2(fd, [][]byte{buf}, pageSize, unix.RWF_DSYNC); err != nil {
		t.Fatalf("RWF_DSYNC write: %v", err)
	}
	if got0, got1 := onDisk(0), onDisk(pageSize); got0 != 0 || got1 != 2 {
		t.Fatalf("after a plain and an RWF_DSYNC write the backing file holds %d and %d, "+
			"want 0 and 2", got0, got1)
	}
	if err := unix.Fdatasync(fd); err != nil {
		t.Fatalf("fdatasync: %v", err)
	}
	if got := onDisk(0); got != 1 {
		t.Fatalf("after fdatasync the backing file holds %d, want 1", got)
	}
	buf[0] = 3
	if _, err := unix.Pwrite(fd, buf, 2*pageSize); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, controlName), []byte("cut\n"), 0); err != nil {
		t.Fatalf("write cut: %v", err)
	}
	if _, err := unix.Pread(fd, buf, 0); err != syscall.EIO {
		t.Fatalf("read after the cut: %v, want EIO", err)
	}
	if got := onDisk(2 * pageSize); got != 0 {
		t.Fatalf("the unsynced write survived the cut: %d", got)
	}
	st, err := os.ReadFile(filepath.Join(dir, controlName))
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"cut true", "dsync_writes 1", "syncs 1", "dropped_pages 1"} {
		if !strings.Contains(string(st), want+"\n") {
			t.Errorf("status has no %q:\n%s", want, st)
		}
	}
}
