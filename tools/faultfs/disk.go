package main

import (
	"errors"
	"fmt"
	"io"
	"os"
	"sort"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// pageSize is the overlay's unit: a write that covers part of a page
// reads the rest from the backing file first, so a page in the overlay is
// always its whole current content. 4 KiB is the page cache's unit, which
// is also what a real disk loses in one piece.
const pageSize = 4096

// eioRangesMax bounds the eio-read and eio-write ranges held at once: a
// handful is all a test needs, and the list is scanned on every request.
const eioRangesMax = 16

// Fallocate modes (linux/falloc.h).
const (
	fallocKeepSize  = 0x01 // FALLOC_FL_KEEP_SIZE
	fallocPunchHole = 0x02 // FALLOC_FL_PUNCH_HOLE
	fallocZeroRange = 0x10 // FALLOC_FL_ZERO_RANGE
)

// page is one overlay page. data nil is a punched hole (zeros, not
// allocated). A stale page lost its write-back to a failed fsync: it is
// still read (as the page cache would be) but never committed.
type page struct {
	data  []byte
	stale bool
}

type span struct{ off, end int64 }

// faults are the injected failures the control file sets.
type faults struct {
	eioRead, eioWrite []span
	enospc            bool
	enospcLeft        int64 // bytes new allocations may still take
	fsyncFail         int   // fsyncs still to fail
	delay             time.Duration
	noFallocate       bool // every fallocate mode answers EOPNOTSUPP
	noPunch           bool // PUNCH_HOLE and ZERO_RANGE answer EOPNOTSUPP
}

// counters say what happened, for the status a read of .control returns.
type counters struct {
	reads, writes, syncs, dsyncWrites, syncFailures uint64
	committedPages, writebacks, droppedPages        uint64
	injectedEIO, injectedENOSPC                     uint64
}

// disk is the served file: the backing file's durable content plus an
// overlay of writes not yet synced. One mutex guards it all; only the
// injected delay sleeps outside it.
type disk struct {
	mu       sync.Mutex
	f        *os.File
	size     int64
	pages    map[int64]*page // by page index
	pagesMax int
	alloc    []uint64 // bitmap: page holds data (for enospc accounting)
	cut      bool
	faults   faults
	count    counters
}

// openDisk opens the backing file and learns which of its pages hold data.
func openDisk(path string, overlayBytes int64) (*disk, error) {
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return nil, fmt.Errorf("open backing file: %w", err)
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("stat backing file: %w", err)
	}
	if !st.Mode().IsRegular() {
		f.Close()
		return nil, fmt.Errorf("backing file %s is not a regular file", path)
	}
	d := &disk{f: f, size: st.Size(), pages: make(map[int64]*page),
		pagesMax: int(max(overlayBytes/pageSize, 1))}
	npages := (d.size + pageSize - 1) / pageSize
	d.alloc = make([]uint64, (npages+63)/64)
	if err := d.loadAlloc(); err != nil {
		f.Close()
		return nil, err
	}
	return d, nil
}

// loadAlloc marks the pages SEEK_DATA finds in the backing file.
func (d *disk) loadAlloc() error {
	fd := int(d.f.Fd())
	for off := int64(0); off < d.size; {
		data, err := unix.Seek(fd, off, unix.SEEK_DATA)
		if errors.Is(err, unix.ENXIO) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("SEEK_DATA in backing file: %w", err)
		}
		hole, err := unix.Seek(fd, data, unix.SEEK_HOLE)
		if err != nil {
			return fmt.Errorf("SEEK_HOLE in backing file: %w", err)
		}
		d.markAlloc(data, hole, true)
		off = hole
	}
	return nil
}

func (d *disk) markAlloc(off, end int64, on bool) {
	for p := off / pageSize; p*pageSize < end; p++ {
		if on {
			d.alloc[p/64] |= 1 << (p % 64)
		} else {
			d.alloc[p/64] &^= 1 << (p % 64)
		}
	}
}

func (d *disk) allocated(p int64) bool { return d.alloc[p/64]&(1<<(p%64)) != 0 }

// newBytes is how many bytes of [off, end) lie in pages holding no data.
func (d *disk) newBytes(off, end int64) int64 {
	var n int64
	for p := off / pageSize; p*pageSize < end; p++ {
		if !d.allocated(p) {
			n += pageSize
		}
	}
	return n
}

func hits(spans []span, off, end int64) bool {
	for _, s := range spans {
		if off < s.end && s.off < end {
			return true
		}
	}
	return false
}

// sleep is the slow-device delay, taken outside the lock so requests
// overlap as they would on a device with a queue.
func (d *disk) sleep() {
	d.mu.Lock()
	delay := d.faults.delay
	d.mu.Unlock()
	if delay > 0 {
		time.Sleep(delay)
	}
}

// readAt fills dest from off: the backing file, then the overlay on top.
func (d *disk) readAt(dest []byte, off int64) (int, syscall.Errno) {
	d.sleep()
	d.mu.Lock()
	defer d.mu.Unlock()
	d.count.reads++
	if d.cut {
		return 0, syscall.EIO
	}
	if off >= d.size {
		return 0, 0
	}
	dest = dest[:min(int64(len(dest)), d.size-off)]
	end := off + int64(len(dest))
	if hits(d.faults.eioRead, off, end) {
		d.count.injectedEIO++
		return 0, syscall.EIO
	}
	n, err := d.f.ReadAt(dest, off)
	if err != nil && err != io.EOF {
		return 0, errnoOf(err)
	}
	clear(dest[n:])
	for p := off / pageSize; p*pageSize < end; p++ {
		pg, ok := d.pages[p]
		if !ok {
			continue
		}
		lo, hi := max(p*pageSize, off), min((p+1)*pageSize, end)
		if pg.data == nil {
			clear(dest[lo-off : hi-off])
		} else {
			copy(dest[lo-off:hi-off], pg.data[lo-p*pageSize:hi-p*pageSize])
		}
	}
	return len(dest), 0
}

// writeAt puts data into the overlay. An injected fault fails it whole;
// only a failing backing file can stop it part way.
func (d *disk) writeAt(data []byte, off int64) (int, syscall.Errno) {
	d.sleep()
	d.mu.Lock()
	defer d.mu.Unlock()
	d.count.writes++
	end := off + int64(len(data))
	if errno := d.writeCheck(off, end); errno != 0 {
		return 0, errno
	}
	if errno := d.makeRoom(off, end); errno != 0 {
		return 0, errno
	}
	for p := off / pageSize; p*pageSize < end; p++ {
		pg, errno := d.page(p)
		if errno != 0 {
			return 0, errno
		}
		lo, hi := max(p*pageSize, off), min((p+1)*pageSize, end)
		copy(pg.data[lo-p*pageSize:hi-p*pageSize], data[lo-off:hi-off])
		pg.stale = false
	}
	d.markAlloc(off, end, true)
	return len(data), 0
}

// writeCheck applies the faults a write or an allocation can meet.
func (d *disk) writeCheck(off, end int64) syscall.Errno {
	if d.cut {
		return syscall.EIO
	}
	if end > d.size {
		return syscall.ENOSPC // the disk has a fixed size
	}
	if hits(d.faults.eioWrite, off, end) {
		d.count.injectedEIO++
		return syscall.EIO
	}
	if d.faults.enospc {
		n := d.newBytes(off, end)
		if n > d.faults.enospcLeft {
			d.count.injectedENOSPC++
			return syscall.ENOSPC
		}
		d.faults.enospcLeft -= n
	}
	return 0
}

// makeRoom keeps the overlay within pagesMax. When a write needs more
// pages, the overlay is written back first, as a disk's volatile cache
// does when full: an unsynced write may then survive a power cut, which
// is allowed; a synced one is never lost. Stale pages go last, as the
// page cache would reclaim them.
func (d *disk) makeRoom(off, end int64) syscall.Errno {
	need := 0
	for p := off / pageSize; p*pageSize < end; p++ {
		if _, ok := d.pages[p]; !ok {
			need++
		}
	}
	if len(d.pages)+need <= d.pagesMax {
		return 0
	}
	d.count.writebacks++
	if errno := d.commit(0, d.size); errno != 0 {
		return errno
	}
	if len(d.pages)+need > d.pagesMax {
		clear(d.pages)
	}
	return 0
}

// page returns overlay page p, filling a new one from the backing file.
func (d *disk) page(p int64) (*page, syscall.Errno) {
	pg, ok := d.pages[p]
	if ok && pg.data != nil {
		return pg, 0
	}
	buf := make([]byte, pageSize)
	if !ok {
		n, err := d.f.ReadAt(buf, p*pageSize)
		if err != nil && err != io.EOF {
			return nil, errnoOf(err)
		}
		clear(buf[n:])
		pg = &page{}
		d.pages[p] = pg
	}
	pg.data = buf
	return pg, 0
}

// sync commits the overlay pages in [off, end) to the backing file and
// makes them durable there; fsync covers the whole file.
func (d *disk) sync(off, end int64, whole bool) syscall.Errno {
	d.mu.Lock()
	defer d.mu.Unlock()
	if whole {
		d.count.syncs++
	} else {
		d.count.dsyncWrites++
	}
	if d.cut {
		return syscall.EIO
	}
	if d.faults.fsyncFail > 0 {
		// As Linux does after a failed write-back: the error is reported
		// and the pages are marked clean, so the data is lost for good.
		d.faults.fsyncFail--
		d.count.syncFailures++
		for p, pg := range d.pages {
			if whole || p*pageSize < end && off < (p+1)*pageSize {
				pg.stale = true
			}
		}
		return syscall.EIO
	}
	return d.commit(off, end)
}

// commit writes the overlay's live pages that meet [off, end) to the
// backing file, in order, syncs it and drops them from the overlay.
func (d *disk) commit(off, end int64) syscall.Errno {
	var todo []int64
	for p, pg := range d.pages {
		if !pg.stale && p*pageSize < end && off < (p+1)*pageSize {
			todo = append(todo, p)
		}
	}
	if len(todo) == 0 {
		return 0
	}
	sort.Slice(todo, func(i, j int) bool { return todo[i] < todo[j] })
	fd := int(d.f.Fd())
	for _, p := range todo {
		pg, poff := d.pages[p], p*pageSize
		n := min(pageSize, d.size-poff)
		var err error
		if pg.data == nil {
			err = unix.Fallocate(fd, fallocPunchHole|fallocKeepSize, poff, n)
		} else {
			_, err = d.f.WriteAt(pg.data[:n], poff)
		}
		if err != nil {
			return errnoOf(err)
		}
	}
	if err := unix.Fdatasync(fd); err != nil {
		return errnoOf(err)
	}
	for _, p := range todo {
		delete(d.pages, p)
	}
	d.count.committedPages += uint64(len(todo))
	return 0
}

// fallocate implements PUNCH_HOLE and ZERO_RANGE in the overlay and plain
// allocation as accounting only.
func (d *disk) fallocate(off, n int64, mode uint32) syscall.Errno {
	d.mu.Lock()
	defer d.mu.Unlock()
	end := off + n
	zeroing := mode&(fallocPunchHole|fallocZeroRange) != 0
	switch {
	case d.cut:
		return syscall.EIO
	case d.faults.noFallocate, d.faults.noPunch && zeroing:
		return syscall.EOPNOTSUPP
	case mode&^(fallocKeepSize|fallocPunchHole|fallocZeroRange) != 0:
		return syscall.EOPNOTSUPP
	}
	if mode&fallocKeepSize != 0 {
		end = min(end, d.size)
	}
	if off >= end {
		return 0
	}
	if mode&fallocPunchHole == 0 {
		if errno := d.writeCheck(off, end); errno != 0 {
			return errno
		}
	} else if end > d.size {
		return syscall.EINVAL // the kernel insists on KEEP_SIZE with a punch
	}
	if mode == 0 || mode == fallocKeepSize {
		d.markAlloc(off, end, true)
		return 0
	}
	return d.zero(off, end, mode&fallocPunchHole != 0)
}

// zero zeroes [off, end) in the overlay; whole pages become holes when
// punched.
func (d *disk) zero(off, end int64, punch bool) syscall.Errno {
	if errno := d.makeRoom(off, end); errno != 0 {
		return errno
	}
	for p := off / pageSize; p*pageSize < end; p++ {
		lo, hi := max(p*pageSize, off), min((p+1)*pageSize, end)
		if punch && hi-lo == pageSize {
			d.pages[p] = &page{}
			continue
		}
		pg, errno := d.page(p)
		if errno != 0 {
			return errno
		}
		clear(pg.data[lo-p*pageSize : hi-p*pageSize])
		pg.stale = false
	}
	first, last := (off+pageSize-1)/pageSize*pageSize, end/pageSize*pageSize
	if punch && first < last {
		d.markAlloc(first, last, false)
	}
	if !punch {
		d.markAlloc(off, end, true)
	}
	return 0
}

// powerCut drops every unsynced write and fails every later operation.
func (d *disk) powerCut() int {
	d.mu.Lock()
	defer d.mu.Unlock()
	n := len(d.pages)
	d.count.droppedPages += uint64(n)
	clear(d.pages)
	d.cut = true
	return n
}

// shutdown is an orderly power-off: the overlay is written back, as a
// disk flushes its cache, unless the power was cut.
func (d *disk) shutdown() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if !d.cut {
		if errno := d.commit(0, d.size); errno != 0 {
			return fmt.Errorf("write back the overlay: %w", errno)
		}
	}
	return d.f.Close()
}

func (d *disk) allocatedBytes() int64 {
	var n int64
	for p := int64(0); p*pageSize < d.size; p++ {
		if d.allocated(p) {
			n += pageSize
		}
	}
	return n
}

func errnoOf(err error) syscall.Errno {
	var errno syscall.Errno
	if errors.As(err, &errno) {
		return errno
	}
	return syscall.EIO
}
