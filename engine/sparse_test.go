package engine

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/nbdring/nbdring/wire"
	"golang.org/x/sys/unix"
)

// sparseRaceFile makes a file of size bytes, all data, and makes lseek
// punch [at, at+4096) right after the first SEEK_DATA:
// the TRIM that raced a READ in FuzzShard (an OFFSET_DATA chunk of 8
// bytes, that is of length 0, at 258048+4096).
func sparseRaceFile(t *testing.T, size, at int64) int {
	t.Helper()
	path := filepath.Join(t.TempDir(), "disk.img")
	if err := os.WriteFile(path, make([]byte, size), 0o644); err != nil {
		t.Fatal(err)
	}
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	fd := int(f.Fd())
	if err := unix.Fsync(fd); err != nil {
		t.Fatal(err)
	}
	if d, err := unix.Seek(fd, at, unix.SEEK_DATA); err != nil || d != at {
		t.Fatalf("SEEK_DATA at %d of a written file: %d, %v (want %d)", at, d, err, at)
	}
	punched := false
	lseek = func(fd int, off int64, whence int) (int64, error) {
		r, err := unix.Seek(fd, off, whence)
		if whence == unix.SEEK_DATA && !punched {
			punched = true
			mode := uint32(unix.FALLOC_FL_PUNCH_HOLE | unix.FALLOC_FL_KEEP_SIZE)
			if err := unix.Fallocate(fd, mode, at, 4096); err != nil {
				t.Errorf("punch a hole at %d: %v", at, err)
			}
		}
		return r, err
	}
	t.Cleanup(func() { lseek = unix.Seek })
	return fd
}

// TestNextExtentPunchedBetweenSeeks: data at pos that is punched between
// SEEK_DATA and SEEK_HOLE still gives an extent with a length.
func TestNextExtentPunchedBetweenSeeks(t *testing.T) {
	const at = 258048
	fd := sparseRaceFile(t, 1<<20, at)
	n, hole, ok := nextExtent(fd, at, at+4096)
	t.Logf("extent at %d: %d bytes, hole %v, ok %v", at, n, hole, ok)
	if ok && n == 0 {
		t.Fatalf("nextExtent(%d) gave a zero-length extent (hole %v)", at, hole)
	}
}

// TestPlanReadPunchedBetweenSeeks: a sparse READ racing a TRIM of its
// range plans chunks that have lengths and cover it exactly, once.
func TestPlanReadPunchedBetweenSeeks(t *testing.T) {
	for _, c := range []struct {
		name     string
		off, len uint64
	}{
		{"the fuzz input's read", 258048, 4096},
		{"a read starting before the punch", 258048 - 8192, 16384},
	} {
		t.Run(c.name, func(t *testing.T) {
			fd := sparseRaceFile(t, 1<<20, 258048)
			e := &Export{fd: fd}
			e.sparse.Store(true)
			sl := &slot{exp: e, req: wire.Request{Type: wire.CmdRead, Offset: c.off,
				Length: c.len}}
			var d deviceIO // planning needs nothing of it but the slot
			d.planRead(sl, wire.StyleStructured)
			pos := c.off
			for i, seg := range sl.segs[:sl.nsegs] {
				t.Logf("chunk %d: %d+%d hole %v", i, seg.off, seg.len, seg.hole)
				if seg.len == 0 {
					t.Errorf("chunk %d at %d is empty", i, seg.off)
				}
				if seg.off != pos {
					t.Errorf("chunk %d starts at %d, want %d (overlap or gap)", i, seg.off,
						pos)
				}
				pos = seg.off + uint64(seg.len)
			}
			if pos != c.off+c.len {
				t.Errorf("chunks end at %d, want %d", pos, c.off+c.len)
			}
		})
	}
}
