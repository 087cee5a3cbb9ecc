package main

import (
	"testing"
)

// TestE2EPartialBlockRace is issue 16 with a real client: libnbd handles
// that never asked for block sizes write 24 bytes at offset 100 of each
// 4 KiB block and, at the same time on another connection, zero 50 bytes
// at offset 300 of the same blocks, 1024 blocks a round, pipelined. Every
// block must read back with both. Before the fix tens to hundreds of the
// 3072 blocks held the old bytes where zeroes had been acknowledged: the
// write's read-modify-write restored them over the fallocate. On a block
// device (512-byte sectors) the zeroes are a read-modify-write of their
// own, which the range lock already ordered; that case guards it.
func TestE2EPartialBlockRace(t *testing.T) {
	e2eNeedTool(t, e2ePython)
	const size = 16 << 20 // 3 rounds of 1024 blocks of 4 KiB, and spare
	t.Run("file", func(t *testing.T) {
		path := e2eMakeFile(t, t.TempDir(), "disk.img", size, 16)
		s := e2eStart(t, path)
		e2eScriptCase(t, "testdata/rmwrace.py", s, "issue16-file", path)
	})
	t.Run("loop", func(t *testing.T) {
		backing := e2eMakeFile(t, t.TempDir(), "backing.img", size, 17)
		dev := e2eLoopDevice(t, backing, 512)
		s := e2eStart(t, dev)
		e2eScriptCase(t, "testdata/rmwrace.py", s, "issue16-loop", dev)
	})
}
