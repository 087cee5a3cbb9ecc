package engine

import (
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"github.com/nbdring/nbdring/wire"
)

// shardSeeds is FuzzShard's corpus, one program per scenario, written to
// testdata/fuzz/FuzzShard by `go test -ldflags=-checklinkname=0 ./engine/
// -run TestFuzzShardSeeds -update-fuzz-seeds`.
var shardSeeds = map[string][]byte{
	"read-write-simple": prog(0).
		valid(wire.CmdWrite, 0, 0, 1, 0).valid(wire.CmdRead, 0, 0, 1, 0).
		valid(wire.CmdFlush, 0, 0, 1, 0).op(fuzzOpSync),
	"structured-sparse-read-chunks": prog(fuzzHSStructured).
		valid(wire.CmdTrim, 0, 8, 4, 0).op(fuzzOpSync).
		valid(wire.CmdWrite, 0, 9, 1, 0).op(fuzzOpSync).
		valid(wire.CmdRead, 0, 8, 3, 0).valid(wire.CmdRead, fuzzFlExtra, 8, 3, 0).
		valid(wire.CmdRead, fuzzFlUnaligned, 8, 3, 77).op(fuzzOpSync),
	"structured-strict-unaligned-einval": prog(fuzzHSStructured|fuzzHSBlockSize).
		valid(wire.CmdRead, fuzzFlUnaligned, 3, 1, 9).
		valid(wire.CmdWrite, fuzzFlUnaligned, 3, 2, 200).
		valid(wire.CmdTrim, fuzzFlUnaligned, 3, 1, 0).
		valid(wire.CmdBlockStatus, 0, 0, 1, 0).
		valid(wire.CmdRead, 0, 3, 1, 0).op(fuzzOpSync),
	"extended-meta-every-command": prog(fuzzHSExtended|fuzzHSBaseAlloc|fuzzHSBlockSize).
		valid(wire.CmdWrite, fuzzFlFUA, 16, 8, 0).valid(wire.CmdRead, fuzzFlExtra, 16, 8, 0).
		valid(wire.CmdFlush, 0, 0, 1, 0).valid(wire.CmdTrim, fuzzFlBig, 20, 2, 0).
		valid(wire.CmdWriteZeroes, 0, 30, 1, 0).valid(wire.CmdCache, 0, 16, 8, 0).
		valid(wire.CmdBlockStatus, 0, 0, 64, 0).
		valid(wire.CmdBlockStatus, fuzzFlExtra|fuzzFlBig, 0, 64, 0).op(fuzzOpSync),
	"structured-meta-block-status": prog(fuzzHSStructured|fuzzHSBaseAlloc).
		valid(wire.CmdTrim, 0, 40, 2, 0).valid(wire.CmdWrite, 0, 41, 1, 0).op(fuzzOpSync).
		valid(wire.CmdBlockStatus, 0, 40, 4, 0).
		valid(wire.CmdBlockStatus, fuzzFlExtra, 40, 4, 0).
		valid(wire.CmdBlockStatus, fuzzFlUnaligned|fuzzFlBig, 0, 64, 5).op(fuzzOpSync),
	"loose-unaligned-rmw-overlap": prog(fuzzHSStructured).
		burst(20, wire.CmdWrite, fuzzFlUnaligned, 5, 1, 3).
		burst(20, wire.CmdRead, fuzzFlUnaligned, 5, 1, 3).
		valid(wire.CmdWriteZeroes, fuzzFlUnaligned, 5, 1, 100).op(fuzzOpSync),
	"loose-unaligned-writes-share-a-block": prog(fuzzHSStructured).
		valid(wire.CmdWriteZeroes, 0, 200, 5, 0).op(fuzzOpSync). // known before
		valid(wire.CmdWrite, fuzzFlUnaligned, 200, 1, 0).
		valid(wire.CmdWrite, fuzzFlUnaligned, 201, 1, 0).
		valid(wire.CmdWrite, fuzzFlUnaligned, 202, 1, 0).
		valid(wire.CmdWrite, fuzzFlUnaligned, 203, 1, 0).op(fuzzOpSync).
		valid(wire.CmdRead, 0, 200, 5, 0).op(fuzzOpSync),
	"write-then-read-back-large": prog(fuzzHSExtended).
		valid(wire.CmdWriteZeroes, 0, 399, 66, 0).op(fuzzOpSync).
		valid(wire.CmdWrite, 0, 300, 64, 0).valid(wire.CmdWrite, fuzzFlUnaligned, 400, 64, 7).
		op(fuzzOpSync).valid(wire.CmdRead, 0, 300, 64, 0).
		valid(wire.CmdRead, fuzzFlUnaligned, 399, 64, 1).op(fuzzOpSync),
	"write-zeroes-flags": prog(fuzzHSStructured|fuzzHSExtended).
		valid(wire.CmdWriteZeroes, fuzzFlExtra, 50, 2, 0).
		valid(wire.CmdWriteZeroes, fuzzFlFastZero, 52, 2, 0).
		valid(wire.CmdWriteZeroes, fuzzFlExtra|fuzzFlFastZero|fuzzFlFUA, 54, 2, 0).
		valid(wire.CmdWriteZeroes, fuzzFlBig|fuzzFlFUA, 0, 40, 0).
		valid(wire.CmdTrim, fuzzFlBig|fuzzFlFUA, 0, 40, 0).
		valid(wire.CmdCache, fuzzFlBig, 0, 64, 0).op(fuzzOpSync),
	"burst-past-inflight-max": prog(0).
		burst(160, wire.CmdRead, 0, 0, 4, 0).burst(160, wire.CmdWrite, 0, 64, 4, 0).
		op(fuzzOpSync),
	"pipeline-written-in-pieces": prog(fuzzHSStructured).
		valid(wire.CmdWrite, 0, 70, 16, 0).op(fuzzOpFlushOut).
		valid(wire.CmdRead, 0, 70, 16, 0).op(fuzzOpFlushOut).
		valid(wire.CmdWrite, fuzzFlUnaligned, 70, 16, 9).op(fuzzOpFlushOut).
		valid(wire.CmdRead, fuzzFlUnaligned, 70, 16, 9),
	"raw-ill-formed-compact": prog(0).
		raw(0xffff, 0, 0, 4096, false).raw(uint16(wire.CmdResize), 0, 0, 4096, false).
		raw(uint16(wire.CmdRead), 0, 1<<64-512, 4096, false).
		raw(uint16(wire.CmdRead), 0, 0, 0, false).
		raw(uint16(wire.CmdRead), 0xffff, 0, 4096, false).
		raw(uint16(wire.CmdTrim), 0, 1<<64-4096, 8192, false).
		raw(uint16(wire.CmdRead), 0, 0, wire.PayloadMax+1, false).
		raw(uint16(wire.CmdWrite), 0, fuzzExportSize, 4096, false).
		raw(uint16(wire.CmdRead), uint16(wire.CmdFlagDF), 0, 4096, false).
		raw(uint16(wire.CmdBlockStatus), 0, 0, 4096, false).op(fuzzOpSync),
	"raw-ill-formed-extended": prog(fuzzHSExtended).
		raw(uint16(wire.CmdWrite), 0, 0, 4096, true).
		raw(uint16(wire.CmdRead), uint16(wire.CmdFlagPayloadLen), 0, 4096, true).
		raw(uint16(wire.CmdWrite), uint16(wire.CmdFlagPayloadLen), fuzzExportSize-512, 4096,
			true).
		raw(uint16(wire.CmdBlockStatus), 0, 0, 4096, true).
		raw(uint16(wire.CmdRead), 0, 0, 1<<40, true).
		raw(uint16(wire.CmdTrim), 0, 0, 1<<40, true).op(fuzzOpSync),
	"raw-payload-over-32mib": prog(0).valid(wire.CmdRead, 0, 0, 1, 0).
		raw(uint16(wire.CmdWrite), 0, 0, wire.PayloadMax+1, false),
	"raw-payload-over-32mib-extended": prog(fuzzHSExtended).
		raw(uint16(wire.CmdRead), uint16(wire.CmdFlagPayloadLen), 0, 1<<33, true),
	"raw-disc-bad-flags": prog(fuzzHSStructured).valid(wire.CmdRead, 0, 0, 1, 0).
		raw(uint16(wire.CmdDisc), 0x8000, 0, 0, false),
	"raw-disc-in-flight": prog(0).burst(30, wire.CmdWrite, 0, 100, 2, 0).
		raw(uint16(wire.CmdDisc), 0, 0, 0, false),
	"disc-with-requests-in-flight": prog(fuzzHSStructured).
		burst(64, wire.CmdWrite, fuzzFlUnaligned, 110, 1, 1).
		burst(64, wire.CmdRead, 0, 110, 4, 0).op(fuzzOpDisc, 0),
	"disc-fua-extended": prog(fuzzHSExtended).valid(wire.CmdRead, 0, 0, 8, 0).
		op(fuzzOpDisc, byte(wire.CmdFlagFUA)),
	"bad-magic-after-requests": prog(0).burst(50, wire.CmdRead, 0, 0, 4, 0).
		op(fuzzOpBadMagic, 0, 0, 0, 0),
	"bad-magic-compact-on-extended": prog(fuzzHSExtended).valid(wire.CmdRead, 0, 0, 1, 0).
		op(fuzzOpBadMagic, 0x25, 0x60, 0x95, 0x13),
	"close-with-requests-in-flight": prog(fuzzHSStructured).
		burst(100, wire.CmdRead, 0, 0, 4, 0).burst(50, wire.CmdWrite, 0, 120, 4, 0).
		op(fuzzOpClose, 1),
	"close-dropping-queued-mid-header": prog(0).valid(wire.CmdWrite, 0, 130, 4, 0).
		op(fuzzOpFlushOut).valid(wire.CmdRead, 0, 130, 4, 0).op(fuzzOpClose, 2|13<<2),
	"short-write-payload-then-close": prog(fuzzHSStructured).valid(wire.CmdRead, 0, 0, 1, 0).
		op(fuzzOpShortWrite, 63, 0x4e, 0x20),
	"short-write-header-only-extended": prog(fuzzHSExtended).op(fuzzOpShortWrite, 0, 0, 0),
	"half-close-with-requests-in-flight": prog(0).burst(80, wire.CmdRead, 0, 0, 4, 0).
		op(fuzzOpHalfClose),
	"handshake-unknown-export":          prog(fuzzHSUnknownName | fuzzHSStructured),
	"handshake-unknown-export-name-opt": prog(fuzzHSUnknownName | fuzzHSExportName),
	"handshake-export-name": prog(fuzzHSExportName|fuzzHSStructured|fuzzHSBlockSize).
		valid(wire.CmdRead, fuzzFlUnaligned, 0, 1, 3).
		valid(wire.CmdBlockStatus, 0, 0, 1, 0).op(fuzzOpSync),
	"handshake-export-name-after-extended": prog(fuzzHSExportName | fuzzHSExtended),
	"handshake-meta-without-structured":    prog(fuzzHSBaseAlloc),
	"read-32mib-simple": prog(0).raw(uint16(wire.CmdRead), 0, 0, wire.PayloadMax, false).
		op(fuzzOpSync),
	"read-32mib-unaligned-structured": prog(fuzzHSStructured).
		raw(uint16(wire.CmdRead), 0, 1, wire.PayloadMax, false).op(fuzzOpSync),
	"write-32mib-unaligned-min-arena": prog(0).
		raw(uint16(wire.CmdWrite), 0, 1, wire.PayloadMax, false).op(fuzzOpSync),
	"write-32mib-aligned": prog(0).raw(uint16(wire.CmdWrite), 0, 0, wire.PayloadMax, false).
		op(fuzzOpSync),
	// Found by the fuzzer: a READ planned while a TRIM punched its range
	// between SEEK_DATA and SEEK_HOLE got an empty OFFSET_DATA chunk
	// (TestPlanReadPunchedBetweenSeeks makes that race happen every time).
	"found-read-racing-trim-empty-chunk": []byte("\x0e\x00\x01\x02\x00\x1020\x008b#119Z" +
		"\x02B1711Zc72AY\x00\x00\x04z\x002c\"\x00\x05811*\x00\x00\xfdX\x81\x1b\xf9I" +
		"\xb7\f\x06\x00\x00\x00?\x00!\x06\x14\x00\x007\x00\x04"),
}

var updateFuzzSeeds = flag.Bool("update-fuzz-seeds", false,
	"rewrite testdata/fuzz/FuzzShard from shardSeeds")

// TestFuzzShardSeeds keeps the corpus files equal to shardSeeds, so the
// programs stay readable here. Other files there (inputs the fuzzer found)
// are left alone.
func TestFuzzShardSeeds(t *testing.T) {
	dir := filepath.Join("testdata", "fuzz", "FuzzShard")
	for name, in := range shardSeeds {
		want := fmt.Sprintf("go test fuzz v1\n[]byte(%q)\n", in)
		path := filepath.Join(dir, name)
		if *updateFuzzSeeds {
			if err := os.MkdirAll(dir, 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(path, []byte(want), 0o644); err != nil {
				t.Fatal(err)
			}
			continue
		}
		if got, err := os.ReadFile(path); err != nil || string(got) != want {
			t.Errorf("%s differs from shardSeeds[%q] (%v); rewrite it: go test "+
				"-ldflags=-checklinkname=0 ./engine/ -run TestFuzzShardSeeds "+
				"-update-fuzz-seeds", path, name, err)
		}
	}
}

// seedProg builds a FuzzShard input; see the op constants for layouts.
type seedProg []byte

func prog(hs byte) seedProg { return seedProg{hs} }

func (p seedProg) op(op byte, args ...byte) seedProg {
	return append(append(p, op), args...)
}

// valid: a fuzzOpValid of blocks 4 KiB blocks (1 to 64) at block.
func (p seedProg) valid(c wire.Cmd, fl byte, block uint16, blocks, skew byte) seedProg {
	return p.op(fuzzOpValid, validArgs(c, fl, block, blocks, skew)...)
}

// burst: count (1 to 160) copies of a valid request of 1 to 4 blocks.
func (p seedProg) burst(count byte, c wire.Cmd, fl byte, block uint16, blocks,
	skew byte) seedProg {
	return p.op(fuzzOpBurst, append([]byte{count - 1},
		validArgs(c, fl, block, blocks, skew)...)...)
}

func validArgs(c wire.Cmd, fl byte, block uint16, blocks, skew byte) []byte {
	for i, x := range fuzzCmds {
		if x == c {
			return []byte{byte(i), fl, byte(block >> 8), byte(block), blocks - 1, skew}
		}
	}
	panic(fmt.Sprintf("%v is not in fuzzCmds", c))
}

func (p seedProg) raw(typ, flags uint16, off, length uint64, extended bool) seedProg {
	p = p.op(fuzzOpRaw, byte(typ>>8), byte(typ), byte(flags>>8), byte(flags))
	for i := 56; i >= 0; i -= 8 {
		p = append(p, byte(off>>i))
	}
	n := 32
	if extended {
		n = 64
	}
	for i := n - 8; i >= 0; i -= 8 {
		p = append(p, byte(length>>i))
	}
	return p
}
