package engine

import (
	"log"

	"github.com/nbdring/nbdring/ring"
	"github.com/nbdring/nbdring/wire"
	"golang.org/x/sys/unix"
)

// slot is one request from decode until its reply has been sent.
type slot struct {
	gen  uint32
	conn int32
	next int32 // send queue link
	req  wire.Request

	data    []byte // span buffer (arena), aligned for O_DIRECT
	buf     int32  // its arena handle, or -1
	payload []byte // unaligned WRITE's payload, before it is merged
	pbuf    int32  // its arena handle, or -1

	spanOff uint64 // the aligned span the device sees (READ, WRITE)
	spanLen uint32
	skip    uint32 // the request's first byte within the span
	done    uint32 // bytes of the span done (short reads and writes resume)
	phase   uint8
	step    uint8 // WRITE_ZEROES: which fallocate strategy is running
	lock    int   // range lock held during read-modify-write, or -1

	// A sparse READ's reply pieces, in order (see planRead).
	segs  [readSegmentsMax]segment
	nsegs int

	hdr  []byte // reply headers (shard metadata memory)
	out  [replyIovecsMax]unix.Iovec
	nout int // out[:nout] is the reply, ready to send
}

// segment is part of a READ's range: data sent from the span buffer, or a
// hole sent as an OFFSET_HOLE chunk.
type segment struct {
	off  uint64
	len  uint32
	hole bool
}

// Slot phases: what the slot's next completion completes.
const (
	phRead    uint8 = iota + 1 // reading the span for a READ
	phRMWRead                  // reading the span to merge an unaligned write into
	phWrite                    // writing the span
	phFlush                    // fdatasync for FLUSH
	phTrim                     // fallocate(PUNCH_HOLE) for TRIM
	phZero                     // fallocate for WRITE_ZEROES
	phSync                     // fdatasync after TRIM/WRITE_ZEROES with FUA
	phCache                    // fadvise(WILLNEED) for CACHE
)

// Fallocate modes (linux/falloc.h) and fadvise advice.
const (
	fallocKeepSize  = 0x01 // FALLOC_FL_KEEP_SIZE
	fallocPunchHole = 0x02 // FALLOC_FL_PUNCH_HOLE
	fallocZeroRange = 0x10 // FALLOC_FL_ZERO_RANGE
	fadvWillNeed    = 3    // POSIX_FADV_WILLNEED
	// rwfDSync is RWF_DSYNC: the write is durable before it completes (FUA).
	rwfDSync = 0x2
)

// zeroSteps are WRITE_ZEROES strategies, tried in order while the
// filesystem answers EOPNOTSUPP, indexed by zeroPlan. With NO_HOLE the
// range must stay allocated: ZERO_RANGE, else punch then allocate (tmpfs
// has no ZERO_RANGE). Without it a hole is best: punch, else ZERO_RANGE.
// With FAST_ZERO on a device only the punch is fast (the kernel's
// ZERO_RANGE may fall back to writing zeros); its EOPNOTSUPP is ENOTSUP.
var zeroSteps = [3][]uint32{
	{fallocPunchHole | fallocKeepSize, fallocZeroRange | fallocKeepSize},
	{fallocZeroRange | fallocKeepSize, fallocPunchHole | fallocKeepSize, fallocKeepSize},
	{fallocPunchHole | fallocKeepSize},
}

const (
	zeroPlanHole   = 0
	zeroPlanNoHole = 1
	zeroPlanFast   = 2
)

func (s *shard) ud(si int32) uint64 {
	return ring.UserData(opIO, s.slots[si].gen, uint32(si))
}

// payload is where a WRITE's data is received.
func (s *shard) payload(si int32) []byte {
	sl := &s.slots[si]
	if sl.pbuf >= 0 {
		return sl.payload
	}
	return sl.data[:sl.req.Length]
}

// dispatch starts the held request; false means it must wait for a slot
// or a buffer (nothing was consumed).
func (s *shard) dispatch(ci int32) bool {
	c := &s.conns[ci]
	r := &c.req
	if r.Type < wire.CmdCount {
		s.stats.Requests[r.Type].Add(1)
	}
	errno := c.sess.Validate(r)
	if errno == wire.EOK && r.Type == wire.CmdDisc {
		c.disc = true
		s.maybeFinishDisc(ci)
		return true
	}
	if c.inflight >= inflightPerConnMax {
		return false
	}
	si := s.allocSlot(ci)
	if si < 0 {
		return false
	}
	sl := &s.slots[si]
	sl.req = *r
	if errno != wire.EOK {
		c.drain = uint32(c.payloadLen) // rejected: its payload is discarded
		s.replyErr(si, errno, "request rejected")
		return true
	}
	if r.Type == wire.CmdRead || r.Type == wire.CmdWrite {
		align := uint64(c.exp.align)
		sl.spanOff = r.Offset &^ (align - 1)
		end := (r.Offset + r.Length + align - 1) &^ (align - 1)
		sl.spanLen, sl.skip = uint32(end-sl.spanOff), uint32(r.Offset-sl.spanOff)
	}
	switch r.Type {
	case wire.CmdRead:
		return s.startRead(si)
	case wire.CmdWrite:
		return s.startWrite(si)
	case wire.CmdFlush:
		if c.exp.writeFailed.Load() {
			s.replyErr(si, wire.EIO, "an earlier write failed; data may be lost")
			return true
		}
		sl.phase = phFlush
		c.ops++
		ring.PrepFdatasync(s.ring.SQE(), c.exp.fd, s.ud(si))
	case wire.CmdTrim:
		s.startTrim(si)
	case wire.CmdWriteZeroes:
		return s.startZero(si)
	case wire.CmdCache:
		sl.phase = phCache
		c.ops++
		ring.PrepFadvise(s.ring.SQE(), c.exp.fd, r.Offset, r.Length, fadvWillNeed, s.ud(si))
	case wire.CmdBlockStatus:
		return s.blockStatus(si)
	}
	return true
}

// allocData gives slot si a span buffer of n bytes within its connection's
// budget; on failure the slot is released and the caller waits.
func (s *shard) allocData(si int32, n int) bool {
	sl := &s.slots[si]
	c := &s.conns[sl.conn]
	if c.bufBytes+n > connBufBytesMax && c.inflight > 1 {
		s.freeSlot(si)
		return false
	}
	b, h, ok := s.arena.alloc(n)
	if !ok {
		s.freeSlot(si)
		return false
	}
	sl.data, sl.buf = b, h
	c.bufBytes += cap(b)
	s.stats.ArenaBytes.Add(int64(cap(b)))
	return true
}

// startRead plans the reply (sparse files: holes are not read or sent)
// and reads the span.
func (s *shard) startRead(si int32) bool {
	sl := &s.slots[si]
	c := &s.conns[sl.conn]
	if !s.planRead(sl, c) {
		return true // failed: replied
	}
	if sl.nsegs == 1 && sl.segs[0].hole {
		s.replyRead(si) // all hole: nothing to read
		return true
	}
	if !s.allocData(si, int(sl.spanLen)) {
		return false
	}
	sl.phase = phRead
	s.submitRead(si)
	return true
}

func (s *shard) startWrite(si int32) bool {
	sl := &s.slots[si]
	c := &s.conns[sl.conn]
	aligned := sl.skip == 0 && uint64(sl.spanLen) == sl.req.Length
	if !s.allocData(si, int(sl.spanLen)) {
		return false
	}
	if !aligned {
		b, h, ok := s.arena.alloc(int(sl.req.Length))
		if !ok || c.bufBytes+cap(b) > connBufBytesMax && c.inflight > 1 {
			if ok {
				s.arena.free(h)
			}
			s.freeSlot(si)
			return false
		}
		sl.payload, sl.pbuf = b, h
		c.bufBytes += cap(b)
		s.stats.ArenaBytes.Add(int64(cap(b)))
	}
	c.pslot, c.pgot = si, 0
	return true
}

// payloadDone: a WRITE's payload is all here; write it, or merge it first.
func (s *shard) payloadDone(ci int32) {
	c := &s.conns[ci]
	si := c.pslot
	c.pslot = -1
	if s.slots[si].pbuf >= 0 {
		s.startRMW(si)
		return
	}
	s.slots[si].phase = phWrite
	s.submitWrite(si)
}

// startRMW locks the span across shards and reads it, so the unaligned
// bytes can be merged into whole blocks.
func (s *shard) startRMW(si int32) {
	sl := &s.slots[si]
	c := &s.conns[sl.conn]
	lock, ok := c.exp.locks.tryLock(sl.spanOff, sl.spanOff+uint64(sl.spanLen))
	if !ok {
		s.rmwWait = append(s.rmwWait, si)
		return
	}
	sl.lock, sl.phase, sl.done = lock, phRMWRead, 0
	s.submitRead(si)
}

func (s *shard) submitRead(si int32) {
	sl := &s.slots[si]
	c := &s.conns[sl.conn]
	c.ops++
	p, n, off := bytesAt(sl.data[sl.done:]), sl.spanLen-sl.done, sl.spanOff+uint64(sl.done)
	if s.fixedBufs {
		ring.PrepReadFixed(s.ring.SQE(), c.exp.fd, p, n, off, 0, s.ud(si))
		return
	}
	ring.PrepRead(s.ring.SQE(), c.exp.fd, p, n, off, s.ud(si))
}

func (s *shard) submitWrite(si int32) {
	sl := &s.slots[si]
	c := &s.conns[sl.conn]
	var rwf uint32
	if sl.req.Flags&wire.CmdFlagFUA != 0 {
		rwf = rwfDSync
	}
	c.ops++
	p, n, off := bytesAt(sl.data[sl.done:]), sl.spanLen-sl.done, sl.spanOff+uint64(sl.done)
	if s.fixedBufs {
		ring.PrepWriteFixed(s.ring.SQE(), c.exp.fd, p, n, off, rwf, 0, s.ud(si))
		return
	}
	ring.PrepWrite(s.ring.SQE(), c.exp.fd, p, n, off, rwf, s.ud(si))
}

func (s *shard) submitFallocate(si int32, mode uint32, off, n uint64) {
	c := &s.conns[s.slots[si].conn]
	c.ops++
	ring.PrepFallocate(s.ring.SQE(), c.exp.fd, mode, off, n, s.ud(si))
}

// startTrim punches a hole in a file and discards on a block device
// (BLOCK_URING_CMD_DISCARD, else PUNCH_HOLE, which the kernel turns into
// an unmapping zero-out). TRIM is advisory, so on a device (which takes
// only whole sectors) the unaligned edges are simply left alone.
func (s *shard) startTrim(si int32) {
	sl := &s.slots[si]
	c := &s.conns[sl.conn]
	off, end := sl.req.Offset, sl.req.Offset+sl.req.Length
	if c.exp.isDevice {
		a := uint64(c.exp.align)
		off, end = (off+a-1)&^(a-1), end&^(a-1)
	}
	sl.phase, sl.step = phTrim, 0
	c.exp.sparse.Store(true)
	if end <= off {
		s.afterFallocate(si)
		return
	}
	if c.exp.isDevice {
		c.ops++
		ring.PrepDiscard(s.ring.SQE(), c.exp.fd, off, end-off, s.ud(si))
		return
	}
	s.submitFallocate(si, fallocPunchHole|fallocKeepSize, off, end-off)
}

// onTrim: a device that refused the discard command gets PUNCH_HOLE; a
// refusal of that is no error, TRIM being advice.
func (s *shard) onTrim(si int32, res int32) {
	sl := &s.slots[si]
	c := &s.conns[sl.conn]
	unsupported := res == -int32(unix.EOPNOTSUPP) || res == -int32(unix.EINVAL)
	if c.exp.isDevice && sl.step == 0 && unsupported {
		sl.step = 1
		a := uint64(c.exp.align)
		off, end := (sl.req.Offset+a-1)&^(a-1), (sl.req.Offset+sl.req.Length)&^(a-1)
		s.submitFallocate(si, fallocPunchHole|fallocKeepSize, off, end-off)
		return
	}
	if res < 0 && res != -int32(unix.EOPNOTSUPP) {
		s.deviceError(si, res, "trim")
		return
	}
	s.afterFallocate(si)
}

// startZero zeroes with fallocate. A block device takes only whole
// sectors, so there an unaligned request is a read-modify-write of zeros.
func (s *shard) startZero(si int32) bool {
	sl := &s.slots[si]
	c := &s.conns[sl.conn]
	r := &sl.req
	fast, noHole := r.Flags&wire.CmdFlagFastZero != 0, r.Flags&wire.CmdFlagNoHole != 0
	if c.exp.isDevice {
		a := uint64(c.exp.align)
		if (r.Offset|r.Length)&(a-1) != 0 {
			if fast {
				s.replyErr(si, wire.ENOTSUP, "unaligned zeroing of a device is not fast")
				return true
			}
			if r.Length > blockSizeMax {
				s.replyErr(si, wire.EINVAL, "unaligned zeroing over 32 MiB on a device")
				return true
			}
			sl.spanOff = r.Offset &^ (a - 1)
			end := (r.Offset + r.Length + a - 1) &^ (a - 1)
			sl.spanLen, sl.skip = uint32(end-sl.spanOff), uint32(r.Offset-sl.spanOff)
			if !s.allocData(si, int(sl.spanLen)) {
				return false
			}
			s.startRMW(si)
			return true
		}
		if fast && noHole {
			s.replyErr(si, wire.ENOTSUP, "zeroing a device without unmapping is not fast")
			return true
		}
	}
	sl.phase, sl.step = phZero, 0
	s.submitZeroStep(si)
	return true
}

func zeroPlan(sl *slot, isDevice bool) int {
	switch {
	case isDevice && sl.req.Flags&wire.CmdFlagFastZero != 0:
		return zeroPlanFast
	case sl.req.Flags&wire.CmdFlagNoHole != 0:
		return zeroPlanNoHole
	}
	return zeroPlanHole
}

func (s *shard) submitZeroStep(si int32) {
	sl := &s.slots[si]
	c := &s.conns[sl.conn]
	steps := zeroSteps[zeroPlan(sl, c.exp.isDevice)]
	if steps[sl.step]&fallocPunchHole != 0 {
		c.exp.sparse.Store(true)
	}
	s.submitFallocate(si, steps[sl.step], sl.req.Offset, sl.req.Length)
}

// onIO completes a slot's device operation and moves it to its next phase.
func (s *shard) onIO(si int32, res int32) {
	sl := &s.slots[si]
	c := &s.conns[sl.conn]
	c.ops--
	if c.closing {
		s.freeSlot(si)
		s.maybeRelease(sl.conn)
		return
	}
	switch sl.phase {
	case phRead, phRMWRead, phWrite:
		s.onReadWrite(si, res)
	case phFlush, phSync:
		if res < 0 {
			s.deviceError(si, res, "fdatasync")
			return
		}
		s.replyOK(si)
	case phTrim:
		s.onTrim(si, res)
	case phZero:
		s.onZero(si, res)
	case phCache:
		// CACHE is advice: a refusal changes nothing the client can see.
		s.replyOK(si)
	}
}

func (s *shard) onReadWrite(si int32, res int32) {
	sl := &s.slots[si]
	c := &s.conns[sl.conn]
	if res <= 0 {
		if sl.phase == phWrite {
			c.exp.writeFailed.Store(true)
		}
		if res == 0 {
			res = -int32(unix.EIO) // the file shrank under us
		}
		s.deviceError(si, res, phaseName[sl.phase])
		return
	}
	sl.done += uint32(res)
	if sl.done < sl.spanLen {
		if sl.phase == phWrite {
			s.submitWrite(si)
		} else {
			s.submitRead(si)
		}
		return
	}
	switch sl.phase {
	case phRead:
		s.stats.BytesRead.Add(sl.req.Length)
		s.replyRead(si)
	case phRMWRead:
		part := sl.data[sl.skip : uint64(sl.skip)+sl.req.Length]
		if sl.req.Type == wire.CmdWriteZeroes {
			clear(part)
		} else {
			copy(part, sl.payload)
			s.freePayload(sl, c)
		}
		sl.phase, sl.done = phWrite, 0
		s.submitWrite(si)
	case phWrite:
		if sl.lock >= 0 {
			c.exp.locks.unlock(sl.lock)
			sl.lock = -1
		}
		s.stats.BytesWritten.Add(sl.req.Length)
		s.replyOK(si)
	}
}

var phaseName = [...]string{phRead: "read", phRMWRead: "read for read-modify-write",
	phWrite: "write", phFlush: "fdatasync", phTrim: "trim", phZero: "zero",
	phSync: "fdatasync", phCache: "fadvise"}

func (s *shard) onZero(si int32, res int32) {
	sl := &s.slots[si]
	c := &s.conns[sl.conn]
	plan := zeroPlan(sl, c.exp.isDevice)
	steps := zeroSteps[plan]
	if res == -int32(unix.EOPNOTSUPP) && int(sl.step)+1 < len(steps) {
		sl.step++
		s.submitZeroStep(si)
		return
	}
	if res == -int32(unix.EOPNOTSUPP) && sl.req.Flags&wire.CmdFlagFastZero != 0 {
		s.replyErr(si, wire.ENOTSUP, "fast zeroing not supported here")
		return
	}
	if res < 0 {
		s.deviceError(si, res, "zero")
		return
	}
	if plan == zeroPlanNoHole && steps[sl.step] == fallocPunchHole|fallocKeepSize {
		sl.step++ // punched: now allocate, so the zeros are not a hole
		s.submitZeroStep(si)
		return
	}
	s.afterFallocate(si)
}

// afterFallocate finishes TRIM and WRITE_ZEROES, syncing first for FUA.
func (s *shard) afterFallocate(si int32) {
	sl := &s.slots[si]
	if sl.req.Flags&wire.CmdFlagFUA != 0 {
		c := &s.conns[sl.conn]
		sl.phase = phSync
		c.ops++
		ring.PrepFdatasync(s.ring.SQE(), c.exp.fd, s.ud(si))
		return
	}
	s.replyOK(si)
}

// deviceError logs the real errno, then replies with the protocol's code.
func (s *shard) deviceError(si int32, res int32, what string) {
	sl := &s.slots[si]
	c := &s.conns[sl.conn]
	if sl.lock >= 0 {
		c.exp.locks.unlock(sl.lock)
		sl.lock = -1
	}
	errno := unix.Errno(-res)
	log.Printf("shard %d: %s %s at %d+%d: %v", s.id, c.exp.Path, what, sl.req.Offset,
		sl.req.Length, errno)
	s.replyErr(si, wire.ErrnoFromSys(errno), "device error: "+errno.Error())
}
