package engine

import (
	"fmt"
	"log/slog"

	"github.com/nbdring/nbdring/wire"
	"golang.org/x/sys/unix"
)

// Holes are found with lseek(SEEK_DATA/SEEK_HOLE), synchronously on the
// shard: the filesystem answers from its extent tree, and only for exports
// that may be sparse (Export.sparse), so fully allocated images and block
// devices pay nothing.

// lseek is unix.Seek; a test seam, so a test can punch a hole between
// nextExtent's two seeks, the race a TRIM on another connection makes.
var lseek = unix.Seek

// nextExtent returns the extent of file fd that starts at pos, clipped to
// end: its length and whether it is a hole. ok is false when the
// filesystem will not say (the caller treats the rest as data). Past the
// file's end (a file truncated while served) nothing is a hole: reading
// there must fail, not return zeros. n is never 0: every chunk and
// extent built from it must have a length (proto.md).
func nextExtent(fd int, pos, end uint64) (n uint64, hole bool, ok bool) {
	d, err := lseek(fd, int64(pos), unix.SEEK_DATA)
	switch {
	case err == unix.ENXIO:
		// No data at or after pos: a hole up to the end of the file, or
		// pos is at or past the end.
		size, err := lseek(fd, 0, unix.SEEK_END)
		if err != nil || uint64(size) <= pos {
			return end - pos, false, err == nil
		}
		return min(uint64(size), end) - pos, true, true
	case err != nil:
		return 0, false, false
	case uint64(d) > pos:
		return min(uint64(d), end) - pos, true, true
	}
	h, err := lseek(fd, int64(pos), unix.SEEK_HOLE)
	if err != nil {
		return 0, false, false
	}
	if uint64(h) <= pos {
		// SEEK_DATA found data at pos, then a TRIM or WRITE_ZEROES punched
		// it before SEEK_HOLE: the range is changing under this request.
		// Data is a true answer for all of it (it is read as it is), and a
		// zero-length extent never is.
		return end - pos, false, true
	}
	return min(uint64(h), end) - pos, false, true
}

// planRead splits a READ into data and hole segments. Holes are only sent
// as such on structured connections to file exports that may be sparse;
// with DF the reply must be one chunk, so a range that is not entirely a
// hole is sent as data.
func (d *deviceIO) planRead(sl *slot, style wire.ReplyStyle) {
	off, end := sl.req.Offset, sl.req.Offset+sl.req.Length
	sl.nsegs = 1
	sl.segs[0] = segment{off: off, len: uint32(sl.req.Length)}
	if style == wire.StyleSimple || sl.exp.isDevice || !sl.exp.sparse.Load() {
		return
	}
	df := sl.req.Flags&wire.CmdFlagDF != 0
	sl.nsegs = 0
	for pos := off; pos < end; {
		if sl.nsegs == readSegmentsMax-1 {
			sl.segs[sl.nsegs] = segment{off: pos, len: uint32(end - pos)}
			sl.nsegs++
			break
		}
		n, hole, ok := nextExtent(sl.exp.fd, pos, end)
		if !ok {
			n, hole = end-pos, false
		}
		sl.segs[sl.nsegs] = segment{off: pos, len: uint32(n), hole: hole}
		sl.nsegs++
		pos += n
	}
	if df && sl.nsegs > 1 {
		sl.nsegs = 1
		sl.segs[0] = segment{off: off, len: uint32(sl.req.Length)}
	}
}

// checkSegments asserts what proto.md asks of a READ's chunks: each has a
// length (an OFFSET_DATA chunk's is at least 9 bytes, an OFFSET_HOLE's
// size non-zero), none overlaps another, and together they cover the
// request exactly.
func checkSegments(sl *slot) {
	pos := sl.req.Offset
	assert(sl.nsegs > 0 && sl.nsegs <= readSegmentsMax, "READ reply without chunks")
	for i := 0; i < sl.nsegs; i++ {
		seg := &sl.segs[i]
		assert(seg.len > 0, "empty READ chunk")
		assert(seg.off == pos, "READ chunks overlap or leave a gap")
		pos += uint64(seg.len)
	}
	assert(pos == sl.req.Offset+sl.req.Length, "READ chunks do not cover the request")
}

// blockStatus answers NBD_CMD_BLOCK_STATUS for base:allocation: holes are
// HOLE|ZERO, everything else (and all of a block device) data. The reply
// covers at most blockStatusExtentsMax extents (one with REQ_ONE) of the
// requested range; the client asks again for the rest.
func (d *deviceIO) blockStatus(si int32) bool {
	sl := &d.slots.rows[si]
	c := &d.conns[sl.conn] // its style, and its address for a log
	exp := sl.exp
	max := blockStatusExtentsMax
	if sl.req.Flags&wire.CmdFlagReqOne != 0 {
		max = 1
	}
	esz := wire.ExtentSize(c.style)
	if !d.allocData(si, max*esz) {
		return false
	}
	off, end := sl.req.Offset, sl.req.Offset+sl.req.Length
	count, at := 0, 0
	for pos := off; pos < end && count < max; {
		n, hole := end-pos, false
		if !exp.isDevice && exp.sparse.Load() {
			var ok bool
			if n, hole, ok = nextExtent(exp.fd, pos, end); !ok {
				slog.Warn(fmt.Sprintf("%s: lseek at %d failed; reporting data",
					exp.Path, pos), "client", c.peer, "export", exp.Name, "shard", d.id)
				n, hole = end-pos, false
			}
		}
		if c.style != wire.StyleExtended {
			n = min(n, extentCompactMax(exp.align))
		}
		assert(n > 0, "empty BLOCK_STATUS extent")
		var flags uint32
		if hole {
			flags = wire.StateHole | wire.StateZero
		}
		at += wire.PutExtent(sl.data[at:], c.style, n, flags)
		count++
		pos += n
	}
	d.tx.replyBlockStatus(si, count, at)
	return true
}

// extentCompactMax is the longest extent a 32-bit descriptor carries that
// is still a multiple of the minimum block size.
func extentCompactMax(align uint32) uint64 {
	return alignDown(1<<32-1, uint64(align))
}
