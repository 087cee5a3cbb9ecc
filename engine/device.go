package engine

import (
	"fmt"
	"log/slog"
	"time"
	"unsafe"

	"github.com/nbdring/nbdring/ring"
	"github.com/nbdring/nbdring/wire"
	"golang.org/x/sys/unix"
)

// Device operations: every one is issued through the ledger (opIO on the
// slot) and completes in onIO, which moves the slot to its next phase.

// Fallocate modes (linux/falloc.h), fadvise advice and RWF flags.
const (
	fallocKeepSize  = 0x01 // FALLOC_FL_KEEP_SIZE
	fallocPunchHole = 0x02 // FALLOC_FL_PUNCH_HOLE
	fallocZeroRange = 0x10 // FALLOC_FL_ZERO_RANGE
	fadvWillNeed    = 3    // POSIX_FADV_WILLNEED
	// rwfDSync is RWF_DSYNC: the write is durable before it completes (FUA).
	rwfDSync = 0x2
	// rwfNoWait is RWF_NOWAIT: fail with EAGAIN rather than block. The ring
	// would hand a blocking read or write to an io-wq thread silently; with
	// it the shard sees the EAGAIN, counts the punt and issues it again.
	rwfNoWait = 0x8
)

// Reasons a device operation runs on an io-wq thread rather than in the
// submitting enter, counted per shard (ShardStats.Punts).
const (
	// puntEAGAIN: a read or write with RWF_NOWAIT would have blocked (a
	// full device queue, a filesystem that must allocate or take a lock),
	// so it was issued again without it.
	puntEAGAIN = iota
	// puntNoNowait: the export refuses RWF_NOWAIT (zram, tmpfs), so the
	// ring hands every read and write to io-wq, unless the shard does it
	// itself (Export.inline).
	puntNoNowait
	// puntAlways: fdatasync, fallocate and fadvise, which io_uring always
	// runs on io-wq.
	puntAlways
	puntReasons
)

// puntLabel names each punt reason for the counters page and Prometheus.
var puntLabel = [puntReasons]string{"eagain", "no_nowait", "always"}

// inline reports whether slot sl's next device operation is done by the
// shard itself: on an inline export, while the shard has few requests in
// flight. At depth, the ring's io-wq threads run the I/O in parallel on
// other CPUs, which beats one shard doing it in turn.
func (d *deviceIO) inline(sl *slot) bool {
	return sl.exp.inline && d.stats.Inflight.Load() <= inlineSlotsMax
}

// rwFlags returns the RWF_* flags for a ring read or write of slot sl
// (rwf: RWF_DSYNC or 0) and counts a punt the ring will make.
func (d *deviceIO) rwFlags(sl *slot, rwf uint32) uint32 {
	switch {
	case !sl.exp.nowait:
		d.stats.Punts[puntNoNowait].Add(1)
	case !sl.blocking:
		rwf |= rwfNoWait
	}
	return rwf
}

// retryBlocking says whether to issue slot si's read or write again
// without RWF_NOWAIT after res: res is the EAGAIN that flag asked for (or
// EOPNOTSUPP: a filesystem that takes it for reads but not writes). The
// caller issues it again (no callback: see COMPOSITION.md's pitfalls).
func (d *deviceIO) retryBlocking(si int32, res int32) bool {
	sl := &d.slots.rows[si]
	if res != -int32(unix.EAGAIN) && res != -int32(unix.EOPNOTSUPP) || !sl.exp.nowait ||
		sl.blocking {
		return false
	}
	sl.blocking = true
	d.stats.Punts[puntEAGAIN].Add(1)
	return true
}

// zeroSteps are WRITE_ZEROES strategies, tried in order while the
// filesystem answers EOPNOTSUPP, indexed by zeroPlan. Without NO_HOLE a
// hole is best: punch, else ZERO_RANGE. With NO_HOLE the range should
// stay allocated: ZERO_RANGE, else punch and then allocate (tmpfs has no
// ZERO_RANGE). With FAST_ZERO on a device only the punch is fast (the
// kernel's ZERO_RANGE may fall back to writing zeros). When every step is
// refused, the zeros are written (not fast: FAST_ZERO gets ENOTSUP).
var zeroSteps = [3][]uint32{
	{fallocPunchHole | fallocKeepSize, fallocZeroRange | fallocKeepSize},
	{fallocZeroRange | fallocKeepSize, fallocPunchHole | fallocKeepSize},
	{fallocPunchHole | fallocKeepSize},
}

const (
	zeroPlanHole   = 0
	zeroPlanNoHole = 1
	zeroPlanFast   = 2
	// zeroStepAllocate marks the allocation after a NO_HOLE punch.
	zeroStepAllocate = 0xff
)

func (d *deviceIO) submitRead(si int32) {
	sl := &d.slots.rows[si]
	p, n := bytesAt(sl.data[sl.done:]), sl.spanLen-uint32(sl.done)
	off := sl.spanOff + sl.done
	if d.inline(sl) {
		d.issueInline(si, sysResult(unix.Pread(sl.exp.fd, sl.data[sl.done:sl.spanLen],
			int64(off))))
		return
	}
	rwf := d.rwFlags(sl, 0)
	e := d.issue(si)
	if d.fixedBufs {
		ring.PrepReadFixed(e, sl.exp.fd, p, n, off, 0)
	} else {
		ring.PrepRead(e, sl.exp.fd, p, n, off)
	}
	e.OpcodeFlags = rwf
}

func (d *deviceIO) submitWrite(si int32) {
	sl := &d.slots.rows[si]
	var rwf uint32
	if sl.req.Flags&wire.CmdFlagFUA != 0 {
		rwf = rwfDSync
	}
	p, n := bytesAt(sl.data[sl.done:]), sl.spanLen-uint32(sl.done)
	off := sl.spanOff + sl.done
	if d.inline(sl) {
		d.issueInline(si, sysResult(pwritev2(sl.exp.fd, sl.data[sl.done:sl.spanLen],
			int64(off), int(rwf))))
		return
	}
	rwf = d.rwFlags(sl, rwf)
	if d.fixedBufs {
		ring.PrepWriteFixed(d.issue(si), sl.exp.fd, p, n, off, rwf, 0)
		return
	}
	ring.PrepWrite(d.issue(si), sl.exp.fd, p, n, off, rwf)
}

func (d *deviceIO) submitFallocate(si int32, mode uint32, off, n uint64) {
	d.stats.Punts[puntAlways].Add(1)
	ring.PrepFallocate(d.issue(si), d.slots.rows[si].exp.fd, mode, off, n)
}

// submitZeroWrite writes the next piece of zeros from the shard's zero
// buffer (read-only to the kernel: it is the source of the write).
func (d *deviceIO) submitZeroWrite(si int32) {
	sl := &d.slots.rows[si]
	n := min(sl.req.Length-sl.done, uint64(len(d.zeros)))
	ring.PrepWrite(d.issue(si), sl.exp.fd, bytesAt(d.zeros), uint32(n),
		sl.req.Offset+sl.done, d.rwFlags(sl, 0))
}

// sysResult turns a system call's outcome into a CQE result: bytes done,
// or the negated errno.
func sysResult(n int, err error) int32 {
	if err != nil {
		if errno, ok := err.(unix.Errno); ok {
			return -int32(errno)
		}
		return -int32(unix.EIO)
	}
	return int32(n)
}

// pwritev2 writes b at off with RWF_* flags (RWF_DSYNC for FUA), without
// allocating.
func pwritev2(fd int, b []byte, off int64, flags int) (int, error) {
	iov := unix.Iovec{Base: unsafe.SliceData(b), Len: uint64(len(b))}
	n, _, e := unix.Syscall6(unix.SYS_PWRITEV2, uintptr(fd), uintptr(unsafe.Pointer(&iov)),
		1, uintptr(off), uintptr(off>>32), uintptr(flags))
	if e != 0 {
		return 0, e
	}
	return int(n), nil
}

// onIO completes a slot's device operation and moves it to its next phase.
// A slot whose connection has gone (released) is freed by the ledger; its
// result still counts where it is about durability. closing: the slot's
// connection is closing; onIO then returns false and the shard ends the
// request.
func (d *deviceIO) onIO(si int32, res int32, closing bool) bool {
	sl := &d.slots.rows[si]
	if (sl.phase == phFlush || sl.phase == phSync) && res < 0 {
		d.syncFailed(sl, res)
	}
	if sl.state != slotLive {
		return true
	}
	if closing {
		return false
	}
	switch sl.phase {
	case phRead, phRMWRead, phWrite:
		d.onReadWrite(si, res)
	case phFlush, phSync:
		if res < 0 {
			d.deviceError(si, res, "fdatasync")
			return true
		}
		d.tx.replyOK(si)
	case phTrim:
		d.onTrim(si, res)
	case phZero:
		d.onZero(si, res)
	case phZeroWrite:
		d.onZeroWrite(si, res)
	case phCache:
		// CACHE is advice: a refusal changes nothing the client can see.
		d.tx.replyOK(si)
	}
	return true
}

// syncFailed poisons the export's FLUSH: after a failed fdatasync the
// kernel may have dropped the dirty data it could not write, so writes
// already acknowledged may be gone, and a later fdatasync that succeeds
// proves nothing about them (the lesson of fsyncgate).
func (d *deviceIO) syncFailed(sl *slot, res int32) {
	if sl.exp.syncFailed.Swap(true) {
		return
	}
	slog.Error(fmt.Sprintf("export %q: fdatasync failed: %v; acknowledged writes may be "+
		"lost, so every later FLUSH fails with EIO until the server is restarted",
		sl.exp.Name, unix.Errno(-res)), "client", d.peer(sl),
		"export", sl.exp.Name, "shard", d.id)
}

func (d *deviceIO) onReadWrite(si int32, res int32) {
	sl := &d.slots.rows[si]
	if d.retryBlocking(si, res) {
		if sl.phase == phWrite {
			d.submitWrite(si)
		} else {
			d.submitRead(si)
		}
		return
	}
	if res <= 0 {
		if res == 0 {
			res = -int32(unix.EIO) // the file shrank under us
		}
		if sl.phase == phWrite && sl.req.Flags&wire.CmdFlagFUA != 0 && res == -int32(unix.EIO) {
			// RWF_DSYNC's sync part may have failed on other writes' data too.
			d.syncFailed(sl, res)
		}
		d.deviceError(si, res, phaseName[sl.phase])
		return
	}
	sl.done += uint64(res)
	if sl.done < uint64(sl.spanLen) {
		if sl.phase == phWrite {
			d.submitWrite(si)
		} else {
			d.submitRead(si)
		}
		return
	}
	switch sl.phase {
	case phRead:
		d.m.countBytes(sl.conn, sl.req.Type, sl.req.Length)
		d.tx.replyRead(si)
	case phRMWRead:
		part := sl.data[sl.skip : uint64(sl.skip)+sl.req.Length]
		if sl.req.Type == wire.CmdWriteZeroes {
			clear(part)
		} else {
			copy(part, sl.payload)
			d.slots.freePayload(si)
		}
		sl.phase, sl.done = phWrite, 0
		d.submitWrite(si)
	case phWrite:
		d.unlockSpan(sl)
		if sl.req.Type == wire.CmdWrite {
			d.m.countBytes(sl.conn, sl.req.Type, sl.req.Length)
		}
		d.tx.replyOK(si)
	}
}

// onTrim: a device that refused the discard command gets PUNCH_HOLE; a
// refusal of that is no error, TRIM being advice.
func (d *deviceIO) onTrim(si int32, res int32) {
	sl := &d.slots.rows[si]
	unsupported := res == -int32(unix.EOPNOTSUPP) || res == -int32(unix.EINVAL)
	if sl.exp.isDevice && sl.step == 0 && unsupported {
		sl.step = 1
		off, end := d.trimRange(sl)
		d.submitFallocate(si, fallocPunchHole|fallocKeepSize, off, end-off)
		return
	}
	if res < 0 && res != -int32(unix.EOPNOTSUPP) {
		d.deviceError(si, res, "trim")
		return
	}
	d.afterFallocate(si)
}

func zeroPlan(sl *slot) int {
	switch {
	case sl.exp.isDevice && sl.req.Flags&wire.CmdFlagFastZero != 0:
		return zeroPlanFast
	case sl.req.Flags&wire.CmdFlagNoHole != 0:
		return zeroPlanNoHole
	}
	return zeroPlanHole
}

func (d *deviceIO) submitZeroStep(si int32) {
	sl := &d.slots.rows[si]
	mode := uint32(fallocKeepSize) // zeroStepAllocate: allocate what was punched
	if sl.step != zeroStepAllocate {
		mode = zeroSteps[zeroPlan(sl)][sl.step]
	}
	if mode&fallocPunchHole != 0 {
		sl.exp.sparse.Store(true)
	}
	d.submitFallocate(si, mode, sl.req.Offset, sl.req.Length)
}

func (d *deviceIO) onZero(si int32, res int32) {
	sl := &d.slots.rows[si]
	plan := zeroPlan(sl)
	steps := zeroSteps[plan]
	refused := res == -int32(unix.EOPNOTSUPP)
	switch {
	case sl.step == zeroStepAllocate:
		// The range is zero (a hole) already; a filesystem that cannot
		// allocate it leaves it a hole, which NO_HOLE only asks to avoid.
		if res < 0 && !refused {
			d.deviceError(si, res, "allocate")
			return
		}
	case refused && int(sl.step)+1 < len(steps):
		sl.step++
		d.submitZeroStep(si)
		return
	case refused:
		d.zeroByWriting(si)
		return
	case res < 0:
		d.deviceError(si, res, "zero")
		return
	case plan == zeroPlanNoHole && steps[sl.step]&fallocPunchHole != 0:
		sl.step = zeroStepAllocate // punched: now allocate, so the zeros are not a hole
		d.submitZeroStep(si)
		return
	}
	d.afterFallocate(si)
}

// zeroByWriting zeroes where the export has no fallocate that zeroes: by
// writing zeros, which is not fast, and needs whole blocks (O_DIRECT).
func (d *deviceIO) zeroByWriting(si int32) {
	sl := &d.slots.rows[si]
	if sl.req.Flags&wire.CmdFlagFastZero != 0 {
		d.unlockSpan(sl) // refused: nothing more changes its blocks
		d.tx.replyErr(si, wire.ENOTSUP, "fast zeroing is not supported by this export")
		return
	}
	if !isAligned(sl.req.Offset|sl.req.Length, uint64(sl.exp.align)) {
		d.unlockSpan(sl)
		d.tx.replyErr(si, wire.ENOTSUP, "the export's filesystem cannot zero ranges and this "+
			"one is not aligned to the block size for writing zeros; write zeros instead")
		return
	}
	sl.phase, sl.done = phZeroWrite, 0
	d.submitZeroWrite(si)
}

func (d *deviceIO) onZeroWrite(si int32, res int32) {
	sl := &d.slots.rows[si]
	if d.retryBlocking(si, res) {
		d.submitZeroWrite(si)
		return
	}
	if res <= 0 {
		if res == 0 {
			res = -int32(unix.EIO)
		}
		d.deviceError(si, res, phaseName[sl.phase])
		return
	}
	sl.done += uint64(res)
	if sl.done < sl.req.Length {
		d.submitZeroWrite(si)
		return
	}
	d.afterFallocate(si)
}

// afterFallocate finishes TRIM and WRITE_ZEROES, syncing first for FUA;
// the blocks are changed, so their range lock goes before the sync.
func (d *deviceIO) afterFallocate(si int32) {
	d.unlockSpan(&d.slots.rows[si])
	if d.slots.rows[si].req.Flags&wire.CmdFlagFUA != 0 {
		d.startSync(si, phSync)
		return
	}
	d.tx.replyOK(si)
}

// deviceError logs the real errno, then replies with the protocol's code.
func (d *deviceIO) deviceError(si int32, res int32, what string) {
	sl := &d.slots.rows[si]
	d.unlockSpan(sl)
	errno := unix.Errno(-res)
	if now := time.Now(); now.After(d.errLogNext) {
		more := ""
		if d.errLogQuiet > 0 {
			more = fmt.Sprintf(" (and %d more device errors not logged)", d.errLogQuiet)
		}
		slog.Error(fmt.Sprintf("%s %s at %d+%d: %v%s", sl.exp.Path, what, sl.req.Offset,
			sl.req.Length, errno, more), "client", d.peer(sl),
			"export", sl.exp.Name, "shard", d.id)
		d.errLogNext, d.errLogQuiet = now.Add(deviceErrorLogEvery), 0
	} else {
		d.errLogQuiet++
	}
	d.tx.replyErr(si, wire.ErrnoFromSys(errno), "device error: "+errno.Error())
}
