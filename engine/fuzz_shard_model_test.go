package engine

import (
	"bytes"
	"fmt"
	"io"

	"github.com/nbdring/nbdring/wire"
)

// fuzzModel is what FuzzShard's export must hold, byte for byte, where
// known. It lives as long as the export (the whole process): the file
// starts as all zeros; a WRITE or WRITE_ZEROES applies once answered with
// success, unless a request overlapping it was in flight at the same time
// (then the order is the server's choice and the range is forgotten); a
// TRIM (its contents are unspecified afterwards), a failed modifier, or
// one left unanswered when the connection ended forgets its range. A
// sector becomes known again when a later modifier covers all of it.
type fuzzModel struct {
	data  []byte
	known []bool // per fuzzSector bytes
}

// fuzzSector is the model's unit of knowing: a partly written sector keeps
// the knowledge it had.
const fuzzSector = 512

func newFuzzModel(size uint64) *fuzzModel {
	m := &fuzzModel{data: make([]byte, size), known: make([]bool, size/fuzzSector)}
	for i := range m.known {
		m.known[i] = true
	}
	return m
}

// clip bounds off+n to the model; requests that reach past it fail, but
// an unanswered one is forgotten as far as it goes.
func (m *fuzzModel) clip(off, n uint64) (uint64, uint64) {
	size := uint64(len(m.data))
	off = min(off, size)
	return off, min(n, size-off)
}

func (m *fuzzModel) forget(off, n uint64) {
	off, n = m.clip(off, n)
	if n == 0 {
		return
	}
	for s := off / fuzzSector; s <= (off+n-1)/fuzzSector; s++ {
		m.known[s] = false
	}
}

// learn: the sectors [off, off+n) covers whole are now known.
func (m *fuzzModel) learn(off, n uint64) {
	for s := (off + fuzzSector - 1) / fuzzSector; (s+1)*fuzzSector <= off+n; s++ {
		m.known[s] = true
	}
}

// write records a WRITE whose payload byte i was pattern[(start+i) % len].
func (m *fuzzModel) write(off, n uint64, pattern []byte, start uint64) {
	plen := uint64(len(pattern))
	for done := uint64(0); done < n; {
		ps := (start + done) % plen
		k := min(n-done, plen-ps)
		copy(m.data[off+done:], pattern[ps:ps+k])
		done += k
	}
	m.learn(off, n)
}

func (m *fuzzModel) zero(off, n uint64) {
	clear(m.data[off : off+n])
	m.learn(off, n)
}

// check compares b, read at off, with the model where known; it returns a
// description of the first difference, or "".
func (m *fuzzModel) check(off uint64, b []byte) string {
	end := off + uint64(len(b))
	for pos := off; pos < end; {
		s := pos / fuzzSector
		next := min((s+1)*fuzzSector, end)
		got, want := b[pos-off:next-off], m.data[pos:next]
		if m.known[s] && !bytes.Equal(got, want) {
			i := 0
			for got[i] == want[i] {
				i++
			}
			return fmt.Sprintf("byte %d is %#x, want %#x", pos+uint64(i), got[i], want[i])
		}
		pos = next
	}
	return ""
}

var fuzzZeros = make([]byte, 64<<10)

// checkZero: a hole read as zeros must be zeros where known.
func (m *fuzzModel) checkZero(off, n uint64) string {
	for n > 0 {
		k := min(n, uint64(len(fuzzZeros)))
		if d := m.check(off, fuzzZeros[:k]); d != "" {
			return d
		}
		off, n = off+k, n-k
	}
	return ""
}

// modifies: the request may change the export's contents.
func (r *fuzzReq) modifies() bool {
	return r.typ == wire.CmdWrite || r.typ == wire.CmdTrim || r.typ == wire.CmdWriteZeroes
}

// overlaps reports whether two requests' ranges meet (ranges that wrap
// past 2^64 are cut there; such requests are refused anyway).
func (r *fuzzReq) overlaps(o *fuzzReq) bool {
	end := func(x *fuzzReq) uint64 {
		if x.off+x.length < x.off {
			return 1<<64 - 1
		}
		return x.off + x.length
	}
	return r.off < end(o) && o.off < end(r)
}

// markConflicts (s.mu held) flags r and every request in flight whose
// outcome depends on the order in which the server runs them.
func (s *fuzzSession) markConflicts(r *fuzzReq) {
	if !r.modifies() && r.typ != wire.CmdRead {
		return
	}
	for _, p := range s.pending {
		if (p.modifies() || r.modifies()) && (p.modifies() || p.typ == wire.CmdRead) &&
			p.overlaps(r) {
			p.conflict, r.conflict = true, true
		}
	}
}

// applyToModel (s.mu held) records a complete reply's effect.
func (s *fuzzSession) applyToModel(r *fuzzReq) {
	m := s.h.model
	switch {
	case !r.modifies():
	case r.errno == wire.EINVAL || r.errno == wire.EPERM:
		// refused before anything was done
	case r.conflict || r.errno != wire.EOK || r.typ == wire.CmdTrim:
		m.forget(r.off, r.length)
	case r.typ == wire.CmdWrite:
		m.write(r.off, r.length, s.h.pattern, r.start)
	case r.typ == wire.CmdWriteZeroes:
		m.zero(r.off, r.length)
	}
}

// forgetUnanswered: once the connection is gone, a modifier that got no
// reply may or may not have happened.
func (s *fuzzSession) forgetUnanswered() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, r := range s.pending {
		if r.modifies() {
			s.h.model.forget(r.off, r.length)
		}
	}
}

// readData receives n bytes of r's data, read at off, and compares them
// with the model unless a conflicting request makes them unknowable.
func (s *fuzzSession) readData(r *fuzzReq, off, n uint64) (string, error) {
	s.mu.Lock()
	checked := !r.conflict
	s.mu.Unlock()
	if off > uint64(len(s.h.model.data)) || n > uint64(len(s.h.model.data))-off {
		return fmt.Sprintf("%v answered with data at %d+%d, past the export", r, off, n), nil
	}
	for n > 0 {
		k := min(n, uint64(len(s.h.scratch)))
		p := s.h.scratch[:k]
		if _, err := io.ReadFull(s.c, p); err != nil {
			return "", err
		}
		if !checked {
		} else if d := s.h.model.check(off, p); d != "" {
			return fmt.Sprintf("%v returned other bytes than were written: %s", r, d), nil
		}
		off, n = off+k, n-k
	}
	return "", nil
}
