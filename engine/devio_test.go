package engine

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/nbdring/nbdring/wire"
	"golang.org/x/sys/unix"
)

// testDev is a deviceIO alone, with no shard: the leaves it uses (ledger,
// slot table of 4 slots, sender, counters) and a ring it issues into but
// never submits (the test plays the kernel), over a 64 KiB file of which
// the first 4 KiB are data and the rest a hole.
type testDev struct {
	d   deviceIO
	led ledger
	tab slotTable
	tx  sender
	m   shardMetrics
	st  ShardStats
	exp *Export
}

func newTestDev(t *testing.T) *testDev {
	t.Helper()
	rg := testRing(t, 64)
	ar, err := newArena(64 << 10)
	if err != nil {
		skipMissing(t, "memory", "cannot map an arena here: %v", err)
	}
	t.Cleanup(ar.close)
	mem, err := newShardMem(4, 2)
	if err != nil {
		skipMissing(t, "memory", "cannot map shard memory here: %v", err)
	}
	t.Cleanup(mem.close)
	path := filepath.Join(t.TempDir(), "disk.img")
	data := make([]byte, 4096)
	for i := range data {
		data[i] = byte(i + 1)
	}
	if err := os.WriteFile(path, data, 0o644); err != nil {
		t.Fatal(err)
	}
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	if err := f.Truncate(64 << 10); err != nil {
		t.Fatal(err)
	}
	td := &testDev{exp: &Export{Name: "t", Path: path, fd: int(f.Fd()), size: 64 << 10,
		align: 512}}
	td.exp.sparse.Store(true)
	td.m.init(1)
	td.led.init(0, 4, 2, &td.st)
	td.tab.init(&sizing{conns: 2, slots: 4, slotsShared: 4, connBuf: 32 << 10,
		shared: 64 << 10, resvReq: 32 << 10}, ar, &td.st, mem.hdrs)
	td.tx.init(2, td.tab.rows, mem.conns, &td.m, &td.st)
	td.tx.reset(0, wire.StyleStructured, false)
	td.d.init(0, 2, 4, 32<<10, &td.led, &td.tab, &td.tx, &td.m, &td.st)
	td.d.ring = rg
	td.d.attach(0, wire.StyleStructured, "test")
	return td
}

// read starts a READ of [off, off+n) on connection 0 as dispatch does.
func (td *testDev) read(t *testing.T, off, n uint64) int32 {
	t.Helper()
	si := td.tab.alloc(0, td.exp)
	sl := &td.tab.rows[si]
	sl.req = wire.Request{Type: wire.CmdRead, Offset: off, Length: n}
	td.d.setSpan(sl, off, n)
	if !td.d.startRead(si) {
		t.Fatal("no buffer for a READ")
	}
	return si
}

// TestDeviceIOSparseRead: a READ over data and a hole plans two chunks,
// reads the span once, and on its completion queues one reply of the data
// chunk (header and bytes) and the hole chunk (header only). A READ all
// inside the hole is answered at once, with no device operation.
func TestDeviceIOSparseRead(t *testing.T) {
	td := newTestDev(t)
	si := td.read(t, 0, 16<<10)
	sl := &td.tab.rows[si]
	if sl.nsegs != 2 || sl.segs[0].hole || sl.segs[0].len != 4096 || !sl.segs[1].hole {
		t.Fatalf("planned %d chunks %+v, want data 4096 then a hole", sl.nsegs,
			sl.segs[:sl.nsegs])
	}
	if td.led.slotOps[si] != 1 || sl.phase != phRead {
		t.Fatalf("the span read was not issued: %d operations, phase %d",
			td.led.slotOps[si], sl.phase)
	}
	n, _ := unix.Pread(td.exp.fd, sl.data[:sl.spanLen], 0) // the kernel's part
	if !td.d.onIO(si, int32(n), false) {
		t.Fatal("onIO asked to end a request of a live connection")
	}
	if td.tx.front(0) != si || sl.nout != 3 || sl.outLen <= 4096 {
		t.Fatalf("reply: queue head %d, %d iovecs of %d bytes; want slot %d, 3 iovecs",
			td.tx.front(0), sl.nout, sl.outLen, si)
	}
	td.tx.pop(0)
	hole := td.read(t, 8192, 4096)
	if td.led.slotOps[hole] != 0 || td.tx.front(0) != hole {
		t.Fatalf("an all-hole READ: %d operations, queue head %d; want none, slot %d",
			td.led.slotOps[hole], td.tx.front(0), hole)
	}
}

// TestDeviceIOBlocking: a read that would block (EAGAIN on RWF_NOWAIT) is
// issued again without the flag and counted as a punt, once; a second
// EAGAIN is a device error the client gets as EAGAIN's NBD code. A
// completion on a closing connection is handed back to the shard.
func TestDeviceIOBlocking(t *testing.T) {
	td := newTestDev(t)
	td.exp.nowait = true
	si := td.read(t, 0, 4096)
	sl := &td.tab.rows[si]
	if !td.d.onIO(si, -int32(unix.EAGAIN), false) {
		t.Fatal("onIO asked to end the request")
	}
	if td.led.slotOps[si] != 2 || !sl.blocking || td.st.Punts[puntEAGAIN].Load() != 1 {
		t.Fatalf("after EAGAIN: %d operations, blocking %v, %d punts", td.led.slotOps[si],
			sl.blocking, td.st.Punts[puntEAGAIN].Load())
	}
	td.d.onIO(si, -int32(unix.EAGAIN), false)
	if td.led.slotOps[si] != 2 || td.tx.front(0) != si {
		t.Fatalf("a second EAGAIN: %d operations, queue head %d; want 2 and an error reply",
			td.led.slotOps[si], td.tx.front(0))
	}
	other := td.read(t, 0, 512)
	if td.d.onIO(other, 512, true) || td.tx.rows[si].next >= 0 {
		t.Fatal("a completion on a closing connection was applied")
	}
}
