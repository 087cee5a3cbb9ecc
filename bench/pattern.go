package bench

import (
	"encoding/binary"
	"fmt"
)

// Verify pattern: every 512-byte sector written with -verify describes
// itself, so a read can tell a wrong, stale or misplaced block from the
// right one without keeping a copy:
//
//	0      8            16       24                 512
//	+------+------------+--------+------------------+
//	|offset| generation | magic  | filler(offset,gen)|
//	+------+------------+--------+------------------+
//
// offset is the sector's own export offset; generation counts writes of
// its block in this run (0 when unknown); the filler is a xorshift stream
// seeded by both, so any corrupted byte shows.
const (
	sectorSize   = 512
	patternMagic = 0x6e626462656e6368 // "nbdbench"
)

// fillPattern writes the pattern for a block at offset with gen into b.
func fillPattern(b []byte, offset uint64, gen uint64) {
	for s := 0; s+sectorSize <= len(b); s += sectorSize {
		sec := b[s : s+sectorSize]
		off := offset + uint64(s)
		binary.LittleEndian.PutUint64(sec[0:], off)
		binary.LittleEndian.PutUint64(sec[8:], gen)
		binary.LittleEndian.PutUint64(sec[16:], patternMagic)
		x := seed(off, gen)
		for i := 24; i < sectorSize; i += 8 {
			x = xorshift(x)
			binary.LittleEndian.PutUint64(sec[i:], x)
		}
	}
}

func seed(off, gen uint64) uint64 { return off*0x9e3779b97f4a7c15 ^ gen ^ 0x5851f42d4c957f2d }

func xorshift(x uint64) uint64 {
	x ^= x << 13
	x ^= x >> 7
	x ^= x << 17
	return x
}

// VerifyError describes a block that is not what was written.
type VerifyError struct {
	Offset uint64 // export offset of the bad sector
	Reason string
}

func (e *VerifyError) Error() string {
	return fmt.Sprintf("verify: sector at offset %d: %s", e.Offset, e.Reason)
}

// checkPattern checks a block read at offset. wantGen is the generation
// last written in this run, or 0 when this run has not written the block
// (then any generation is accepted, but the sector must still describe
// itself correctly). A sector that is all zeros is accepted only when
// wantGen is 0 (never written).
func checkPattern(b []byte, offset uint64, wantGen uint64) *VerifyError {
	for s := 0; s+sectorSize <= len(b); s += sectorSize {
		sec := b[s : s+sectorSize]
		off := offset + uint64(s)
		gotOff := binary.LittleEndian.Uint64(sec[0:])
		gen := binary.LittleEndian.Uint64(sec[8:])
		magic := binary.LittleEndian.Uint64(sec[16:])
		if magic != patternMagic {
			if wantGen == 0 && allZero(sec) {
				continue
			}
			return &VerifyError{off, "no nbdbench pattern (overwritten or never written)"}
		}
		if gotOff != off {
			return &VerifyError{off, fmt.Sprintf("holds the block written for offset %d "+
				"(misplaced)", gotOff)}
		}
		if wantGen != 0 && gen != wantGen {
			return &VerifyError{off, fmt.Sprintf("generation %d, want %d (stale or lost "+
				"write)", gen, wantGen)}
		}
		x := seed(off, gen)
		for i := 24; i < sectorSize; i += 8 {
			x = xorshift(x)
			if binary.LittleEndian.Uint64(sec[i:]) != x {
				return &VerifyError{off, fmt.Sprintf("corrupted at byte %d of the sector", i)}
			}
		}
	}
	return nil
}

func allZero(b []byte) bool {
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}
