package engine

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"

	"github.com/nbdring/nbdring/wire"
)

// FuzzShard's client side of the transmission phase: it reads every reply
// and holds it to proto.md and proto-extended-headers.md. Layouts:
//
//	simple:     magic 0x67446698 (4), error (4), cookie (8) [, READ data]
//	structured: magic 0x668e33ef (4), flags (2), type (2), cookie (8), length (4)
//	extended:   magic 0x6e8a278c (4), flags (2), type (2), cookie (8),
//	            offset (8, the request's), length (8)
//	then length bytes of payload: OFFSET_DATA offset (8) + data; OFFSET_HOLE
//	offset (8) + length (4); BLOCK_STATUS context (4) + (length (4), flags (4))*;
//	BLOCK_STATUS_EXT context (4), count (4) + (length (8), flags (8))*;
//	ERROR error (4), message length (2), message; ERROR_OFFSET adds offset (8).

// fuzzScratchSize: the largest payload read whole (a BLOCK_STATUS reply of
// blockStatusExtentsMax extended descriptors); data is read through it.
const fuzzScratchSize = 8 + blockStatusExtentsMax*16

// fuzzErrorMessageMax: proto.md strings SHOULD NOT exceed 4096 bytes.
const fuzzErrorMessageMax = wire.StringMax

// readReplies is the reader goroutine: it stops at the first violation
// (s.failure) or read error (s.readErr), then closes readerDone.
func (s *fuzzSession) readReplies() {
	defer close(s.readerDone)
	var buf [wire.ExtReplySize]byte
	var rep wire.Reply
	for {
		err := wire.ReadReplyHeader(s.c, buf[:], &rep)
		if errors.Is(err, wire.ErrReplyMagic) {
			s.failure = fmt.Sprintf("reply with magic %#x", binary.BigEndian.Uint32(buf[:]))
			return
		}
		if err != nil {
			s.readErr = err
			return
		}
		violation, err := s.onReply(&rep, binary.BigEndian.Uint32(buf[:]))
		if violation != "" {
			s.failure = violation
			return
		}
		if err != nil {
			if errors.Is(err, io.EOF) {
				err = io.ErrUnexpectedEOF // inside a reply
			}
			s.readErr = err
			return
		}
	}
}

// onReply checks one simple reply or chunk and reads its payload.
func (s *fuzzSession) onReply(rep *wire.Reply, magic uint32) (string, error) {
	s.mu.Lock()
	r := s.pending[rep.Cookie]
	s.mu.Unlock()
	if r == nil {
		return fmt.Sprintf("reply (magic %#x, type %v, error %v) to cookie %#x, which awaits "+
			"none", magic, rep.Type, rep.Errno, rep.Cookie), nil
	}
	if !rep.Structured {
		return s.onSimple(rep, r)
	}
	return s.onChunk(rep, r, magic)
}

func (s *fuzzSession) onSimple(rep *wire.Reply, r *fuzzReq) (string, error) {
	switch {
	case s.style == wire.StyleExtended:
		return fmt.Sprintf("simple reply to %v with extended headers", r), nil
	case r.chunks > 0:
		return fmt.Sprintf("simple reply to %v after %d chunks", r, r.chunks), nil
	case s.style == wire.StyleStructured && r.typ == wire.CmdRead:
		return fmt.Sprintf("simple reply to %v with structured replies", r), nil
	case !knownErrno(rep.Errno):
		return fmt.Sprintf("simple reply to %v with error %v", r, rep.Errno), nil
	}
	if rep.Errno == wire.EOK && r.typ == wire.CmdRead {
		if v, err := s.readData(r, r.off, r.length); v != "" || err != nil {
			return v, err
		}
	}
	r.errno = rep.Errno
	return s.finish(rep.Cookie, r), nil
}

func (s *fuzzSession) onChunk(rep *wire.Reply, r *fuzzReq, magic uint32) (string, error) {
	ext := s.style == wire.StyleExtended
	switch {
	case s.style == wire.StyleSimple:
		return fmt.Sprintf("chunk %v for %v without structured replies", rep.Type, r), nil
	case ext != (magic == wire.MagicExtReply):
		return fmt.Sprintf("chunk magic %#x for %v in reply style %d", magic, r,
			s.style), nil
	case ext && rep.Offset != r.off:
		return fmt.Sprintf("extended chunk for %v carries offset %d", r, rep.Offset), nil
	case rep.Flags&^wire.ReplyFlagDone != 0:
		return fmt.Sprintf("chunk for %v with unknown flags %#x", r, rep.Flags), nil
	case rep.Length > wire.PayloadMax+8:
		return fmt.Sprintf("chunk for %v with a %d-byte payload", r, rep.Length), nil
	}
	r.chunks++
	var violation string
	var err error
	switch rep.Type {
	case wire.ReplyNone:
		if rep.Length != 0 || rep.Flags&wire.ReplyFlagDone == 0 {
			violation = fmt.Sprintf("NONE chunk for %v: length %d, flags %#x", r,
				rep.Length, rep.Flags)
		}
	case wire.ReplyOffsetData, wire.ReplyOffsetHole:
		violation, err = s.onReadChunk(rep, r)
	case wire.ReplyBlockStatus, wire.ReplyBlockStatusExt:
		violation, err = s.onBlockStatus(rep, r)
	case wire.ReplyError, wire.ReplyErrorOffset:
		violation, err = s.onError(rep, r)
	default:
		violation = fmt.Sprintf("chunk of unknown type %v for %v", rep.Type, r)
	}
	if violation != "" || err != nil {
		return violation, err
	}
	if rep.Flags&wire.ReplyFlagDone != 0 {
		return s.finish(rep.Cookie, r), nil
	}
	return "", nil
}

// onReadChunk: data and holes lie within the READ and do not overlap.
func (s *fuzzSession) onReadChunk(rep *wire.Reply, r *fuzzReq) (string, error) {
	hole := rep.Type == wire.ReplyOffsetHole
	switch {
	case r.typ != wire.CmdRead:
		return fmt.Sprintf("%v chunk for %v", rep.Type, r), nil
	case hole && rep.Length != 12, !hole && rep.Length <= 8:
		return fmt.Sprintf("%v chunk of %d bytes for %v", rep.Type, rep.Length, r), nil
	}
	keep := uint64(8)
	if hole {
		keep = 12
	}
	p, err := s.readPayload(rep.Length, keep)
	if err != nil {
		return "", err
	}
	at, n := binary.BigEndian.Uint64(p), rep.Length-8
	if hole {
		n = uint64(binary.BigEndian.Uint32(p[8:]))
	}
	if n == 0 || at < r.off || at-r.off > r.length || n > r.length-(at-r.off) {
		return fmt.Sprintf("%v chunk %d+%d outside %v", rep.Type, at, n, r), nil
	}
	for _, c := range r.covered {
		if at < c[1] && c[0] < at+n {
			return fmt.Sprintf("%v chunk %d+%d overlaps %d..%d in %v", rep.Type, at, n,
				c[0], c[1], r), nil
		}
	}
	r.covered = append(r.covered, [2]uint64{at, at + n})
	r.total += n
	if !hole {
		return s.readData(r, at, n)
	}
	s.mu.Lock()
	checked := !r.conflict
	s.mu.Unlock()
	if d := s.h.model.checkZero(at, n); checked && d != "" {
		return fmt.Sprintf("%v: hole %d+%d where data was written: %s", r, at, n, d), nil
	}
	return "", nil
}

// onBlockStatus: one context, the one selected; descriptors in the
// negotiated size, each non-empty, inside the export; one with REQ_ONE.
func (s *fuzzSession) onBlockStatus(rep *wire.Reply, r *fuzzReq) (string, error) {
	ext := s.style == wire.StyleExtended
	head, desc := uint64(4), uint64(8)
	if ext {
		head, desc = 8, 16
	}
	switch {
	case r.typ != wire.CmdBlockStatus:
		return fmt.Sprintf("%v chunk for %v", rep.Type, r), nil
	case ext != (rep.Type == wire.ReplyBlockStatusExt):
		return fmt.Sprintf("%v chunk in reply style %d", rep.Type, s.style), nil
	case rep.Length < head+desc || (rep.Length-head)%desc != 0 || rep.Length > fuzzScratchSize:
		return fmt.Sprintf("%v chunk of %d bytes for %v", rep.Type, rep.Length, r), nil
	}
	p, err := s.readPayload(rep.Length, rep.Length)
	if err != nil {
		return "", err
	}
	count := (rep.Length - head) / desc
	if id := binary.BigEndian.Uint32(p); id != s.ex.MetaID {
		return fmt.Sprintf("block status for context %d; %d was selected", id, s.ex.MetaID), nil
	}
	if ext && uint64(binary.BigEndian.Uint32(p[4:])) != count {
		return fmt.Sprintf("block status count %d for %d descriptors",
			binary.BigEndian.Uint32(p[4:]), count), nil
	}
	if r.flags&wire.CmdFlagReqOne != 0 && count != 1 {
		return fmt.Sprintf("%d descriptors for %v with REQ_ONE", count, r), nil
	}
	var sum uint64
	for d := p[head:rep.Length]; len(d) > 0; d = d[desc:] {
		n, flags := uint64(binary.BigEndian.Uint32(d)), uint64(binary.BigEndian.Uint32(d[4:]))
		if ext {
			n, flags = binary.BigEndian.Uint64(d), binary.BigEndian.Uint64(d[8:])
		}
		sum += n
		if n == 0 || flags&^uint64(wire.StateHole|wire.StateZero) != 0 ||
			sum > s.h.exp.Size()-r.off {
			return fmt.Sprintf("block status descriptor %d bytes, flags %#x (%d in all) "+
				"for %v", n, flags, sum, r), nil
		}
	}
	return "", nil
}

// onError: a protocol error value and a message that fills the chunk.
func (s *fuzzSession) onError(rep *wire.Reply, r *fuzzReq) (string, error) {
	head := uint64(6)
	if rep.Type == wire.ReplyErrorOffset {
		head = 14
	}
	if rep.Length < head || rep.Length > head+fuzzErrorMessageMax {
		return fmt.Sprintf("%v chunk of %d bytes for %v", rep.Type, rep.Length, r), nil
	}
	p, err := s.readPayload(rep.Length, rep.Length)
	if err != nil {
		return "", err
	}
	errno, msgLen := wire.Errno(binary.BigEndian.Uint32(p)), binary.BigEndian.Uint16(p[4:])
	switch {
	case errno == wire.EOK || !knownErrno(errno):
		return fmt.Sprintf("%v chunk with error %v for %v", rep.Type, errno, r), nil
	case uint64(msgLen)+head != rep.Length:
		return fmt.Sprintf("%v chunk of %d bytes with a %d-byte message for %v", rep.Type,
			rep.Length, msgLen, r), nil
	}
	if head == 14 {
		at := binary.BigEndian.Uint64(p[6+msgLen:])
		if at < r.off || at-r.off >= r.length {
			return fmt.Sprintf("error offset %d outside %v", at, r), nil
		}
	}
	if r.errno == wire.EOK {
		r.errno = errno
	}
	return "", nil
}

// finish checks a complete reply against what the request must get and
// retires its cookie.
func (s *fuzzSession) finish(cookie uint64, r *fuzzReq) string {
	if r.typ == wire.CmdRead && r.chunks > 0 && r.errno == wire.EOK && r.total != r.length {
		return fmt.Sprintf("successful structured reply to %v covers %d bytes", r, r.total)
	}
	bad := false
	switch r.want {
	case wantOK:
		bad = r.errno != wire.EOK
	case wantOKOrNotsup:
		bad = r.errno != wire.EOK && r.errno != wire.ENOTSUP
	case wantEINVAL:
		bad = r.errno != wire.EINVAL
	}
	if bad {
		return fmt.Sprintf("%v answered with error %v; want %s", r, r.errno,
			[...]string{"any", "success", "success or ENOTSUP", "EINVAL"}[r.want])
	}
	s.mu.Lock()
	s.applyToModel(r) // before the cookie is retired: later reads must see it
	delete(s.pending, cookie)
	s.mu.Unlock()
	select {
	case s.answered <- struct{}{}:
	default:
	}
	return ""
}

// readPayload reads a payload of n bytes whose first keep bytes (at most
// fuzzScratchSize) are returned; the rest stays to be read.
func (s *fuzzSession) readPayload(n, keep uint64) ([]byte, error) {
	keep = min(n, keep)
	p := s.h.scratch[:keep]
	_, err := io.ReadFull(s.c, p)
	return p, err
}

func knownErrno(e wire.Errno) bool {
	switch e {
	case wire.EOK, wire.EPERM, wire.EIO, wire.ENOMEM, wire.EINVAL, wire.ENOSPC,
		wire.EOVERFLOW, wire.ENOTSUP, wire.ESHUTDOWN:
		return true
	}
	return false
}
