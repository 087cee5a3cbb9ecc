package engine

import (
	"github.com/nbdring/nbdring/ring"
	"github.com/nbdring/nbdring/wire"
	"golang.org/x/sys/unix"
)

// dispatch starts the held request; false means it must wait for a slot
// or a buffer (nothing was consumed, and it is dispatched again later).
func (s *shard) dispatch(ci int32) bool {
	c := &s.conns.rows[ci]
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
	if q := c.exp.reg.qos; q != nil && errno == wire.EOK && !c.draining {
		var data uint64
		if r.Type == wire.CmdRead || r.Type == wire.CmdWrite {
			data = r.Length
		}
		ok, parked := s.qos.admit(ci, s.led.connGen[ci], c.served, q, data, q.now(),
			c.exp.reg.throttledNs)
		if parked {
			s.m.connWaited[ci] = true // a throttled wait is not backpressure
		}
		if !ok {
			return false // throttled (qos.go): the loop's timer brings it back
		}
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
		s.dev.setSpan(sl, r.Offset, r.Length)
	}
	started := true
	switch r.Type {
	case wire.CmdRead:
		started = s.dev.startRead(si)
	case wire.CmdWrite:
		return s.startWrite(si)
	case wire.CmdFlush:
		s.dev.startSync(si, phFlush)
	case wire.CmdTrim:
		s.dev.startTrim(si)
	case wire.CmdWriteZeroes:
		started = s.dev.startZero(si)
	case wire.CmdCache:
		s.dev.startCache(si)
	case wire.CmdBlockStatus:
		started = s.dev.blockStatus(si)
	}
	if !started {
		s.releaseSlot(si) // no buffer now: the connection waits, and comes back here
	}
	return started
}

// setSpan sets the aligned span of [off, off+n) that O_DIRECT reads and
// writes, and where the request starts within it.
func (d *deviceIO) setSpan(sl *slot, off, n uint64) {
	a := uint64(sl.exp.align)
	sl.spanOff = alignDown(off, a)
	sl.spanLen = uint32(alignUp(off+n, a) - sl.spanOff)
	sl.skip = uint32(off - sl.spanOff)
}

// allocData gives slot si a span buffer of n bytes within its connection's
// budget; false: there is none now, and the shard releases the slot (the
// connection waits).
func (d *deviceIO) allocData(si int32, n int) bool {
	b, h, ok := d.slots.allocArena(si, n)
	if !ok {
		return false
	}
	sl := &d.slots.rows[si]
	sl.data, sl.buf = b, h
	return true
}

// startRead plans the reply (sparse files: holes are not read or sent)
// and reads the span.
func (d *deviceIO) startRead(si int32) bool {
	sl := &d.slots.rows[si]
	d.planRead(sl, d.conns[sl.conn].style)
	if sl.nsegs == 1 && sl.segs[0].hole {
		d.m.countBytes(sl.conn, sl.req.Type, sl.req.Length)
		d.tx.replyRead(si) // all hole: nothing to read
		return true
	}
	if !d.allocData(si, int(sl.spanLen)) {
		return false
	}
	sl.phase = phRead
	d.submitRead(si)
	return true
}

func (s *shard) startWrite(si int32) bool {
	sl := &s.slots.rows[si]
	c := &s.conns.rows[sl.conn]
	aligned := sl.skip == 0 && uint64(sl.spanLen) == sl.req.Length
	if !s.dev.allocData(si, int(sl.spanLen)) {
		s.releaseSlot(si)
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

// payloadDone: a WRITE's payload is all here; the device writes it.
func (s *shard) payloadDone(ci int32) {
	c := &s.conns.rows[ci]
	si := c.pslot
	c.pslot = -1
	s.m.payloadIn(si)
	s.dev.writeArrived(si)
}

// startLocked takes the range lock over slot si's blocks that its next
// phase needs (rangeLocks says which), then starts the phase: an RMW's
// read (phRMWRead), a write (phWrite), a zeroing (phZero) or a trim
// (phTrim). A slot that cannot take it waits in rmwWait and comes back
// here on a later turn of the loop.
func (d *deviceIO) startLocked(si int32) {
	sl := &d.slots.rows[si]
	a := uint64(sl.exp.align)
	start, end := alignDown(sl.req.Offset, a), alignUp(sl.req.Offset+sl.req.Length, a)
	var ok bool
	if sl.phase == phRMWRead {
		ok = sl.exp.spanLocks().lockRMW(start, end, &sl.lock)
	} else {
		ok = sl.exp.spanLocks().lockPlain(d.id, start, end, &sl.lock)
	}
	if !ok {
		d.rmwWait = append(d.rmwWait, si)
		return
	}
	switch sl.phase {
	case phRMWRead:
		sl.done = 0
		d.submitRead(si)
	case phWrite:
		d.submitWrite(si)
	case phZero:
		d.submitZeroStep(si)
	case phTrim:
		d.submitTrim(si)
	default:
		assert(false, "range lock taken for a phase that changes no data")
	}
}

// unlockSpan gives up slot sl's range lock, if it holds one, once the
// device operation that changed its blocks has completed.
func (d *deviceIO) unlockSpan(sl *slot) {
	if sl.lock != lockNone {
		sl.exp.spanLocks().release(d.id, &sl.lock)
	}
}

// startSync runs fdatasync for FLUSH, or after a FUA TRIM or WRITE_ZEROES.
// After an earlier fdatasync failed, acknowledged writes may be lost, so
// no later FLUSH may claim durability: it fails at once.
func (d *deviceIO) startSync(si int32, phase uint8) {
	sl := &d.slots.rows[si]
	if sl.exp.syncFailed.Load() {
		d.tx.replyErr(si, wire.EIO, "an earlier fdatasync failed: acknowledged data may be "+
			"lost; restart the server after checking the device")
		return
	}
	sl.phase = phase
	if d.inline(sl) {
		d.issueInline(si, sysResult(0, unix.Fdatasync(sl.exp.fd)))
		return
	}
	d.stats.Punts[puntAlways].Add(1)
	ring.PrepFdatasync(d.issue(si), sl.exp.fd)
}

// startTrim punches a hole in a file and discards on a block device
// (BLOCK_URING_CMD_DISCARD, else PUNCH_HOLE, which the kernel turns into
// an unmapping zero-out). TRIM is advisory, so on a device (which takes
// only whole sectors) the unaligned edges are simply left alone, and an
// export configured with trim = "ignore" leaves all of it alone.
func (d *deviceIO) startTrim(si int32) {
	sl := &d.slots.rows[si]
	off, end := d.trimRange(sl)
	sl.phase, sl.step = phTrim, 0
	if sl.exp.trimIgnore {
		end = off // succeeds as a TRIM of nothing: FUA still flushes
	} else {
		sl.exp.sparse.Store(true)
	}
	if end <= off {
		d.afterFallocate(si)
		return
	}
	d.startLocked(si)
}

// submitTrim issues a TRIM's discard (device) or hole punch (file).
func (d *deviceIO) submitTrim(si int32) {
	sl := &d.slots.rows[si]
	off, end := d.trimRange(sl)
	if sl.exp.isDevice {
		ring.PrepDiscard(d.issue(si), sl.exp.fd, off, end-off)
		return
	}
	d.submitFallocate(si, fallocPunchHole|fallocKeepSize, off, end-off)
}

// trimRange is the part of a TRIM the export can discard: all of it on a
// file, the whole sectors within it on a device.
func (d *deviceIO) trimRange(sl *slot) (off, end uint64) {
	off, end = sl.req.Offset, sl.req.Offset+sl.req.Length
	if sl.exp.isDevice {
		a := uint64(sl.exp.align)
		off, end = alignUp(off, a), alignDown(end, a)
	}
	return off, end
}

// startZero zeroes with fallocate. A block device takes only whole
// sectors, so there an unaligned request is a read-modify-write of zeros.
func (d *deviceIO) startZero(si int32) bool {
	sl := &d.slots.rows[si]
	r := &sl.req
	fast, noHole := r.Flags&wire.CmdFlagFastZero != 0, r.Flags&wire.CmdFlagNoHole != 0
	if sl.exp.isDevice && !isAligned(r.Offset|r.Length, uint64(sl.exp.align)) {
		assert(!fast, "an unaligned FAST_ZERO on a device passed validation")
		return d.startZeroRMW(si)
	}
	assert(!sl.exp.isDevice || !fast || !noHole,
		"a FAST_ZERO with NO_HOLE on a device passed validation")
	sl.phase, sl.step = phZero, 0
	d.startLocked(si)
	return true
}

// startZeroRMW zeroes an unaligned range by reading its span, clearing the
// range and writing the span back, holding the span alone (rangeLocks).
// The validator refused what it cannot do (wire.ZeroCaps, conn.reset).
func (d *deviceIO) startZeroRMW(si int32) bool {
	sl := &d.slots.rows[si]
	assert(sl.req.Length <= uint64(d.blockMax),
		"an unaligned zeroing over blockMax on a device passed validation")
	d.setSpan(sl, sl.req.Offset, sl.req.Length)
	if !d.allocData(si, int(sl.spanLen)) {
		return false
	}
	sl.phase = phRMWRead
	d.startLocked(si)
	return true
}
