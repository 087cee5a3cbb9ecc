package engine

import (
	"github.com/nbdring/nbdring/ring"
	"github.com/nbdring/nbdring/wire"
	"golang.org/x/sys/unix"
)

// dispatch starts the held request; false means it must wait for a slot
// or a buffer (nothing was consumed, and it is dispatched again later).
func (s *shard) dispatch(ci int32) bool {
	c := &s.conns[ci]
	r := &c.req
	errno, why := c.sess.Check(r)
	if errno == wire.EOK && r.Type == wire.CmdDisc {
		c.disc = true
		s.maybeFinish(ci)
		return true
	}
	if c.inflight >= inflightPerConnMax {
		return false
	}
	if errno == wire.EOK && !c.draining && !s.admitQoS(ci) {
		return false // throttled (qos.go): the loop's timer brings it back
	}
	si := s.allocSlot(ci)
	if si < 0 {
		return false
	}
	s.m.slotTimed(si, ci)
	sl := &s.slots.rows[si]
	sl.req = *r
	if errno == wire.EOK && c.draining {
		errno = wire.ESHUTDOWN
	}
	if errno != wire.EOK {
		c.drain = c.payloadLen // rejected: its payload is discarded
		msg := "request rejected"
		switch {
		case errno == wire.ESHUTDOWN:
			msg = "server is shutting down"
		case why != "":
			msg = why
		}
		s.tx.replyErr(si, errno, msg)
		return true
	}
	if r.Type == wire.CmdRead || r.Type == wire.CmdWrite {
		s.setSpan(sl, r.Offset, r.Length)
	}
	switch r.Type {
	case wire.CmdRead:
		return s.startRead(si)
	case wire.CmdWrite:
		return s.startWrite(si)
	case wire.CmdFlush:
		s.startSync(si, phFlush)
	case wire.CmdTrim:
		s.startTrim(si)
	case wire.CmdWriteZeroes:
		return s.startZero(si)
	case wire.CmdCache:
		sl.phase = phCache
		s.stats.Punts[puntAlways].Add(1)
		ring.PrepFadvise(s.issue(opIO, si), sl.exp.fd, r.Offset, r.Length, fadvWillNeed)
	case wire.CmdBlockStatus:
		return s.blockStatus(si)
	}
	return true
}

// setSpan sets the aligned span of [off, off+n) that O_DIRECT reads and
// writes, and where the request starts within it.
func (s *shard) setSpan(sl *slot, off, n uint64) {
	a := uint64(sl.exp.align)
	sl.spanOff = alignDown(off, a)
	sl.spanLen = uint32(alignUp(off+n, a) - sl.spanOff)
	sl.skip = uint32(off - sl.spanOff)
}

// allocData gives slot si a span buffer of n bytes within its connection's
// budget; on failure the slot is released and the caller waits.
func (s *shard) allocData(si int32, n int) bool {
	b, h, ok := s.slots.allocArena(si, n)
	if !ok {
		s.releaseSlot(si)
		return false
	}
	sl := &s.slots.rows[si]
	sl.data, sl.buf = b, h
	return true
}

// startRead plans the reply (sparse files: holes are not read or sent)
// and reads the span.
func (s *shard) startRead(si int32) bool {
	sl := &s.slots.rows[si]
	s.planRead(sl, s.conns[sl.conn].style)
	if sl.nsegs == 1 && sl.segs[0].hole {
		s.m.countBytes(sl.conn, sl.req.Type, sl.req.Length)
		s.tx.replyRead(si) // all hole: nothing to read
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
	sl := &s.slots.rows[si]
	c := &s.conns[sl.conn]
	aligned := sl.skip == 0 && uint64(sl.spanLen) == sl.req.Length
	if !s.allocData(si, int(sl.spanLen)) {
		return false
	}
	if !aligned {
		b, h, ok := s.slots.allocArena(si, int(sl.req.Length))
		if !ok {
			s.releaseSlot(si)
			return false
		}
		sl.payload, sl.pbuf = b, h
	}
	c.pslot, c.pgot = si, 0
	return true
}

// payloadDone: a WRITE's payload is all here; write it, or merge it first,
// once it holds its blocks (startLocked).
func (s *shard) payloadDone(ci int32) {
	c := &s.conns[ci]
	si := c.pslot
	c.pslot = -1
	sl := &s.slots.rows[si]
	sl.phase = phWrite
	if sl.pbuf >= 0 {
		sl.phase = phRMWRead
	}
	s.startLocked(si)
}

// startLocked takes the range lock over slot si's blocks that its next
// phase needs (rangeLocks says which), then starts the phase: an RMW's
// read (phRMWRead), a write (phWrite), a zeroing (phZero) or a trim
// (phTrim). A slot that cannot take it waits in rmwWait and comes back
// here on a later turn of the loop.
func (s *shard) startLocked(si int32) {
	sl := &s.slots.rows[si]
	a := uint64(sl.exp.align)
	start, end := alignDown(sl.req.Offset, a), alignUp(sl.req.Offset+sl.req.Length, a)
	var ok bool
	if sl.phase == phRMWRead {
		ok = sl.exp.spanLocks().lockRMW(start, end, &sl.lock)
	} else {
		ok = sl.exp.spanLocks().lockPlain(s.id, start, end, &sl.lock)
	}
	if !ok {
		s.rmwWait = append(s.rmwWait, si)
		return
	}
	switch sl.phase {
	case phRMWRead:
		sl.done = 0
		s.submitRead(si)
	case phWrite:
		s.submitWrite(si)
	case phZero:
		s.submitZeroStep(si)
	case phTrim:
		s.submitTrim(si)
	default:
		assert(false, "range lock taken for a phase that changes no data")
	}
}

// unlockSpan gives up slot sl's range lock, if it holds one, once the
// device operation that changed its blocks has completed.
func (s *shard) unlockSpan(sl *slot) {
	if sl.lock != lockNone {
		sl.exp.spanLocks().release(s.id, &sl.lock)
	}
}

// startSync runs fdatasync for FLUSH, or after a FUA TRIM or WRITE_ZEROES.
// After an earlier fdatasync failed, acknowledged writes may be lost, so
// no later FLUSH may claim durability: it fails at once.
func (s *shard) startSync(si int32, phase uint8) {
	sl := &s.slots.rows[si]
	if sl.exp.syncFailed.Load() {
		s.tx.replyErr(si, wire.EIO, "an earlier fdatasync failed: acknowledged data may be "+
			"lost; restart the server after checking the device")
		return
	}
	sl.phase = phase
	if s.inline(sl) {
		s.issueInline(si, sysResult(0, unix.Fdatasync(sl.exp.fd)))
		return
	}
	s.stats.Punts[puntAlways].Add(1)
	ring.PrepFdatasync(s.issue(opIO, si), sl.exp.fd)
}

// startTrim punches a hole in a file and discards on a block device
// (BLOCK_URING_CMD_DISCARD, else PUNCH_HOLE, which the kernel turns into
// an unmapping zero-out). TRIM is advisory, so on a device (which takes
// only whole sectors) the unaligned edges are simply left alone, and an
// export configured with trim = "ignore" leaves all of it alone.
func (s *shard) startTrim(si int32) {
	sl := &s.slots.rows[si]
	off, end := s.trimRange(sl)
	sl.phase, sl.step = phTrim, 0
	if sl.exp.trimIgnore {
		end = off // succeeds as a TRIM of nothing: FUA still flushes
	} else {
		sl.exp.sparse.Store(true)
	}
	if end <= off {
		s.afterFallocate(si)
		return
	}
	s.startLocked(si)
}

// submitTrim issues a TRIM's discard (device) or hole punch (file).
func (s *shard) submitTrim(si int32) {
	sl := &s.slots.rows[si]
	off, end := s.trimRange(sl)
	if sl.exp.isDevice {
		ring.PrepDiscard(s.issue(opIO, si), sl.exp.fd, off, end-off)
		return
	}
	s.submitFallocate(si, fallocPunchHole|fallocKeepSize, off, end-off)
}

// trimRange is the part of a TRIM the export can discard: all of it on a
// file, the whole sectors within it on a device.
func (s *shard) trimRange(sl *slot) (off, end uint64) {
	off, end = sl.req.Offset, sl.req.Offset+sl.req.Length
	if sl.exp.isDevice {
		a := uint64(sl.exp.align)
		off, end = alignUp(off, a), alignDown(end, a)
	}
	return off, end
}

// startZero zeroes with fallocate. A block device takes only whole
// sectors, so there an unaligned request is a read-modify-write of zeros.
func (s *shard) startZero(si int32) bool {
	sl := &s.slots.rows[si]
	r := &sl.req
	fast, noHole := r.Flags&wire.CmdFlagFastZero != 0, r.Flags&wire.CmdFlagNoHole != 0
	if sl.exp.isDevice && !isAligned(r.Offset|r.Length, uint64(sl.exp.align)) {
		assert(!fast, "an unaligned FAST_ZERO on a device passed validation")
		return s.startZeroRMW(si)
	}
	assert(!sl.exp.isDevice || !fast || !noHole,
		"a FAST_ZERO with NO_HOLE on a device passed validation")
	sl.phase, sl.step = phZero, 0
	s.startLocked(si)
	return true
}

// startZeroRMW zeroes an unaligned range by reading its span, clearing the
// range and writing the span back, holding the span alone (rangeLocks).
// The validator refused what it cannot do (wire.ZeroCaps, conn.reset).
func (s *shard) startZeroRMW(si int32) bool {
	sl := &s.slots.rows[si]
	assert(sl.req.Length <= uint64(s.srv.sz.blockMax),
		"an unaligned zeroing over blockMax on a device passed validation")
	s.setSpan(sl, sl.req.Offset, sl.req.Length)
	if !s.allocData(si, int(sl.spanLen)) {
		return false
	}
	sl.phase = phRMWRead
	s.startLocked(si)
	return true
}
