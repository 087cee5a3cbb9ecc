package main

// Crash consistency: a load of self-describing blocks (crashLoad) records
// what it issued and what the server acknowledged; after the server dies,
// crashModel.check reads every block back and holds it to the durability
// the protocol promises: a FUA write, or a write acknowledged before an
// acknowledged FLUSH (on any connection, the export being MULTI_CONN),
// survives; anything later may or may not.

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"math/rand/v2"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nbdring/nbdring/bench"
	"github.com/nbdring/nbdring/wire"
)

const (
	// crashMagic opens every block the load writes.
	crashMagic = 0x4e4244_43524153 // "NBDCRAS"
	// crashHeaderSize: magic, offset, write id (8 bytes each), CRC-32C.
	crashHeaderSize = 28
	// crashBatch is how many requests a connection has in flight at once:
	// enough that a kill lands with requests in flight, few enough that a
	// batch's blocks are rarely drawn twice.
	crashBatch = 8
	// crashReplyTimeout bounds the wait for a batch's replies; a server
	// that stops answering fails the load instead of hanging the test.
	crashReplyTimeout = 10 * time.Second
	// crashProblemsMax bounds the problems check reports one by one.
	crashProblemsMax = 20
	// Request mix in percent: FLUSH barriers, FUA writes, the rest plain
	// writes (or, with loadOptions.readPct, reads).
	crashFlushPct = 8
	crashFUAPct   = 25
)

var crashCRC = crc32.MakeTable(crc32.Castagnoli)

// crashWrite is one WRITE the load issued. ackSeq orders its
// acknowledgement against FLUSH requests on the model's event clock.
type crashWrite struct {
	id     uint64
	conn   int32
	fua    bool
	acked  bool
	ackSeq uint64
}

// crashModel is what a load issued and what was acknowledged. Each
// connection owns the blocks b with b%conns == its index and never has two
// writes to one block in flight, so a block's writes are totally ordered:
// every write but the last was acknowledged before the next was issued.
type crashModel struct {
	size      int64
	bs        int
	conns     int
	multiConn bool // the export is MULTI_CONN: a FLUSH covers every connection
	lastOnly  bool // keep only each block's last write (long soak runs)

	blocks [][]crashWrite // per block, in issue order
	// flushed[c] is the largest event-clock value at which connection c
	// sent a FLUSH that was acknowledged: every write acknowledged before
	// it is durable.
	flushed []uint64
	clock   atomic.Uint64
	nextID  atomic.Uint64
	ops     atomic.Uint64 // replies received, for progress

	stats []crashStats // per connection
	// verify records read-back mismatches of a load with reads (soak).
	verifyMu   sync.Mutex
	verifyErrs []string
	verifyN    int
}

// crashStats counts one connection's requests.
type crashStats struct {
	writes, fua, flushes, reads uint64 // acknowledged with no error
	replyErrs                   uint64 // error replies
	firstErr                    string
	end                         error // why the connection's loop ended (nil: stop)
}

// loadOptions extend crashLoad for the soak test.
type loadOptions struct {
	readPct  int  // share of reads, in percent, that verify the last write
	lastOnly bool // see crashModel.lastOnly
	seed     uint64
}

// crashLoad drives the export at uri (nbd:// or nbd+unix://) over conns connections
// with self-describing bs-byte blocks in [0,size): a mix of plain writes, FUA
// writes and FLUSH barriers, until stop is closed or a connection fails; it returns
// what was issued and acknowledged.
func crashLoad(uri string, size int64, bs, conns int, stop <-chan struct{}) *crashModel {
	return runLoadInto(newCrashModel(size, bs, conns), uri, stop, loadOptions{seed: 1})
}

// runLoadInto runs the load into a model made by newCrashModel, which
// callers may watch (ops) while it runs.
func runLoadInto(m *crashModel, uri string, stop <-chan struct{}, o loadOptions) *crashModel {
	m.lastOnly = o.lastOnly
	var wg sync.WaitGroup
	flagsKnown := false
	for c := 0; c < m.conns; c++ {
		nc, ex, err := crashDial(uri)
		if err != nil {
			m.stats[c].end = err
			continue
		}
		if !flagsKnown {
			m.multiConn, flagsKnown = ex.Flags&wire.TxCanMultiConn != 0, true
		}
		wg.Add(1)
		go func(c int) {
			defer wg.Done()
			defer nc.Close()
			l := &crashConn{m: m, c: nc, conn: int32(c), o: o,
				rng: rand.New(rand.NewPCG(o.seed, uint64(c)))}
			m.stats[c].end = l.run(stop)
		}(c)
	}
	wg.Wait()
	return m
}

func newCrashModel(size int64, bs, conns int) *crashModel {
	return &crashModel{size: size, bs: bs, conns: conns, multiConn: true,
		blocks:  make([][]crashWrite, size/int64(bs)),
		flushed: make([]uint64, conns), stats: make([]crashStats, conns)}
}

// crashDial connects to uri and negotiates block sizes (so the server
// holds the client to aligned requests).
func crashDial(uri string) (net.Conn, wire.ClientExport, error) {
	tgt, err := bench.ParseURI(uri)
	if err != nil {
		return nil, wire.ClientExport{}, err
	}
	c, err := net.DialTimeout(tgt.Network, tgt.Addr, 5*time.Second)
	if err != nil {
		return nil, wire.ClientExport{}, fmt.Errorf("connect to %s: %w", uri, err)
	}
	_ = c.SetDeadline(time.Now().Add(crashReplyTimeout))
	ex, err := wire.ClientHandshake(c, wire.ClientOptions{Name: tgt.Export, BlockSize: true})
	if err != nil {
		c.Close()
		return nil, ex, fmt.Errorf("handshake with %s: %w", uri, err)
	}
	_ = c.SetDeadline(time.Time{})
	return c, ex, nil
}

// issue records a new write to block b by connection conn and returns its
// id; it must be recorded before it is sent, since it may land unacked.
func (m *crashModel) issue(b int64, conn int32, fua bool) uint64 {
	id := m.nextID.Add(1)
	w := crashWrite{id: id, conn: conn, fua: fua}
	if m.lastOnly {
		m.blocks[b] = append(m.blocks[b][:0], w)
	} else {
		m.blocks[b] = append(m.blocks[b], w)
	}
	return id
}

// ack marks block b's last write acknowledged.
func (m *crashModel) ack(b int64) {
	h := m.blocks[b]
	h[len(h)-1].acked, h[len(h)-1].ackSeq = true, m.clock.Add(1)
}

// flushSent returns the event-clock value a FLUSH about to be sent covers.
func (m *crashModel) flushSent() uint64 { return m.clock.Add(1) }

// flushAcked records that conn's FLUSH sent at seq was acknowledged.
func (m *crashModel) flushAcked(conn int32, seq uint64) {
	m.flushed[conn] = max(m.flushed[conn], seq)
}

// crashBlock encodes write id's content for offset off into p.
func crashBlock(p []byte, off int64, id uint64) {
	binary.BigEndian.PutUint64(p[0:], crashMagic)
	binary.BigEndian.PutUint64(p[8:], uint64(off))
	binary.BigEndian.PutUint64(p[16:], id)
	x := id*0x9e3779b97f4a7c15 ^ uint64(off)
	for i := crashHeaderSize; i < len(p); i += 8 {
		x ^= x << 13
		x ^= x >> 7
		x ^= x << 17
		var w [8]byte
		binary.LittleEndian.PutUint64(w[:], x)
		copy(p[i:], w[:])
	}
	binary.BigEndian.PutUint32(p[24:], crashSum(p))
}

func crashSum(p []byte) uint32 {
	return crc32.Update(crc32.Checksum(p[:24], crashCRC), crashCRC, p[crashHeaderSize:])
}

// crashDecode returns the write id a block at off holds (0: all zeroes),
// or what is wrong with it.
func crashDecode(p []byte, off int64) (uint64, error) {
	if binary.BigEndian.Uint64(p) != crashMagic {
		if bytes.Count(p, []byte{0}) == len(p) {
			return 0, nil
		}
		return 0, fmt.Errorf("garbage (no block header: starts %x)", p[:16])
	}
	if got := crashSum(p); got != binary.BigEndian.Uint32(p[24:]) {
		return 0, fmt.Errorf("torn or corrupt block (CRC %#x, header says %#x)", got,
			binary.BigEndian.Uint32(p[24:]))
	}
	if o := int64(binary.BigEndian.Uint64(p[8:])); o != off {
		return 0, fmt.Errorf("holds the block written for offset %d", o)
	}
	return binary.BigEndian.Uint64(p[16:]), nil
}

// crashConn is one connection of the load.
type crashConn struct {
	m    *crashModel
	c    net.Conn
	conn int32
	o    loadOptions
	rng  *rand.Rand
	wbuf []byte
	rbuf []byte
}

// crashReq is one request of a batch; cookie is its index.
type crashReq struct {
	cmd   wire.Cmd
	block int64
	fua   bool
	id    uint64 // writes: the id written; reads: the id expected (0: zeroes)
	seq   uint64 // FLUSH: its event-clock value
}

func (l *crashConn) run(stop <-chan struct{}) error {
	m := l.m
	owned := int64(len(m.blocks)-int(l.conn)+m.conns-1) / int64(m.conns)
	if owned == 0 {
		return errors.New("no blocks for this connection: size/bs < conns")
	}
	reqs := make([]crashReq, 0, crashBatch)
	l.rbuf = make([]byte, m.bs)
	for {
		select {
		case <-stop:
			l.disconnect()
			return nil
		default:
		}
		reqs = l.plan(reqs[:0], owned)
		if err := l.send(reqs); err != nil {
			return err
		}
		if err := l.receive(reqs); err != nil {
			return err
		}
	}
}

// plan draws a batch: distinct blocks of this connection's, FLUSH among
// them.
func (l *crashConn) plan(reqs []crashReq, owned int64) []crashReq {
	m := l.m
	// A few draws may hit a block already in the batch; bound the retries
	// so a tiny export cannot spin.
	for try := 0; len(reqs) < crashBatch && try < 4*crashBatch; try++ {
		r := l.rng.IntN(100)
		if r < crashFlushPct {
			reqs = append(reqs, crashReq{cmd: wire.CmdFlush})
			continue
		}
		b := l.rng.Int64N(owned)*int64(m.conns) + int64(l.conn)
		dup := false
		for _, q := range reqs {
			dup = dup || (q.cmd != wire.CmdFlush && q.block == b)
		}
		if dup {
			continue
		}
		switch {
		case r < crashFlushPct+l.o.readPct:
			reqs = append(reqs, crashReq{cmd: wire.CmdRead, block: b})
		case r < crashFlushPct+l.o.readPct+crashFUAPct:
			reqs = append(reqs, crashReq{cmd: wire.CmdWrite, block: b, fua: true})
		default:
			reqs = append(reqs, crashReq{cmd: wire.CmdWrite, block: b})
		}
	}
	return reqs
}

// send records and sends a batch in one write.
func (l *crashConn) send(reqs []crashReq) error {
	m := l.m
	l.wbuf = l.wbuf[:0]
	var hdr [wire.RequestSize]byte
	for i := range reqs {
		q := &reqs[i]
		r := wire.Request{Type: q.cmd, Cookie: uint64(i), Offset: uint64(q.block) *
			uint64(m.bs), Length: uint64(m.bs)}
		switch q.cmd {
		case wire.CmdFlush:
			r.Offset, r.Length = 0, 0
			q.seq = m.flushSent()
		case wire.CmdRead:
			if h := m.blocks[q.block]; len(h) > 0 && h[len(h)-1].acked {
				q.id = h[len(h)-1].id
			} else if len(h) > 0 {
				q.id = ^uint64(0) // its last write failed: content unknown
			}
		case wire.CmdWrite:
			if q.fua {
				r.Flags = wire.CmdFlagFUA
			}
			q.id = m.issue(q.block, l.conn, q.fua)
		}
		wire.EncodeRequest(hdr[:], &r)
		l.wbuf = append(l.wbuf, hdr[:]...)
		if q.cmd == wire.CmdWrite {
			n := len(l.wbuf)
			l.wbuf = append(l.wbuf, make([]byte, m.bs)...)
			crashBlock(l.wbuf[n:], q.block*int64(m.bs), q.id)
		}
	}
	_ = l.c.SetDeadline(time.Now().Add(crashReplyTimeout))
	if _, err := l.c.Write(l.wbuf); err != nil {
		return fmt.Errorf("send %d requests: %w", len(reqs), err)
	}
	return nil
}

// receive reads the batch's replies (in any order) and records them.
func (l *crashConn) receive(reqs []crashReq) error {
	m, st := l.m, &l.m.stats[l.conn]
	var h [wire.SimpleReplySize]byte
	for range reqs {
		if _, err := io.ReadFull(l.c, h[:]); err != nil {
			return fmt.Errorf("read reply: %w", err)
		}
		if binary.BigEndian.Uint32(h[:]) != wire.MagicSimple {
			return fmt.Errorf("reply magic %#x: the stream is lost", h[:4])
		}
		errno := wire.Errno(binary.BigEndian.Uint32(h[4:]))
		i := binary.BigEndian.Uint64(h[8:])
		if i >= uint64(len(reqs)) {
			return fmt.Errorf("reply for unknown cookie %d", i)
		}
		q := &reqs[i]
		m.ops.Add(1)
		if errno != wire.EOK {
			st.replyErrs++
			if st.firstErr == "" {
				st.firstErr = fmt.Sprintf("%v at block %d: %v", q.cmd, q.block, errno)
			}
			continue
		}
		switch q.cmd {
		case wire.CmdFlush:
			st.flushes++
			m.flushAcked(l.conn, q.seq)
		case wire.CmdWrite:
			st.writes++
			if q.fua {
				st.fua++
			}
			m.ack(q.block)
		case wire.CmdRead:
			if _, err := io.ReadFull(l.c, l.rbuf); err != nil {
				return fmt.Errorf("read data: %w", err)
			}
			st.reads++
			l.verify(q)
		}
	}
	return nil
}

// verify compares a read with the block's last acknowledged write.
func (l *crashConn) verify(q *crashReq) {
	if q.id == ^uint64(0) {
		return
	}
	off := q.block * int64(l.m.bs)
	id, err := crashDecode(l.rbuf, off)
	if err == nil && id != q.id {
		err = fmt.Errorf("holds write %d, want the last acknowledged write %d", id, q.id)
	}
	if err != nil {
		l.m.verifyMu.Lock()
		l.m.verifyN++
		if len(l.m.verifyErrs) < crashProblemsMax {
			l.m.verifyErrs = append(l.m.verifyErrs, fmt.Sprintf("read at %d: %v", off, err))
		}
		l.m.verifyMu.Unlock()
	}
}

func (l *crashConn) disconnect() {
	var hdr [wire.RequestSize]byte
	wire.EncodeRequest(hdr[:], &wire.Request{Type: wire.CmdDisc})
	_ = l.c.SetWriteDeadline(time.Now().Add(time.Second))
	_, _ = l.c.Write(hdr[:])
}

// totals sums the per-connection counters.
func (m *crashModel) totals() crashStats {
	var t crashStats
	for _, s := range m.stats {
		t.writes += s.writes
		t.fua += s.fua
		t.flushes += s.flushes
		t.reads += s.reads
		t.replyErrs += s.replyErrs
		if t.firstErr == "" {
			t.firstErr = s.firstErr
		}
	}
	return t
}

func (m *crashModel) String() string {
	t := m.totals()
	return fmt.Sprintf("%d writes issued, %d acked (%d FUA), %d FLUSH acked, %d reads, "+
		"%d error replies", m.nextID.Load(), t.writes, t.fua, t.flushes, t.reads, t.replyErrs)
}

// durableSince returns the index in h of the last write that must have
// survived (-1: none). With acked set, every acknowledged write must
// (a process crash loses nothing the kernel accepted).
func (m *crashModel) durableSince(h []crashWrite, acked bool) int {
	var all uint64
	for _, f := range m.flushed {
		all = max(all, f)
	}
	for k := len(h) - 1; k >= 0; k-- {
		w := h[k]
		cover := m.flushed[w.conn]
		if m.multiConn {
			cover = all
		}
		if w.acked && (acked || w.fua || w.ackSeq < cover) {
			return k
		}
	}
	return -1
}

// problems reads every block through read and lists what violates the
// durability rule (or, with acked, the rule that acked writes survive).
func (m *crashModel) problems(read func(off int64, p []byte) error, acked bool) []string {
	var out []string
	p := make([]byte, m.bs)
	for b, h := range m.blocks {
		off := int64(b) * int64(m.bs)
		if err := read(off, p); err != nil {
			out = append(out, fmt.Sprintf("block at %d: read: %v", off, err))
			continue
		}
		id, err := crashDecode(p, off)
		if err != nil {
			out = append(out, fmt.Sprintf("block at %d: %v", off, err))
			continue
		}
		if msg := m.judge(h, id, acked); msg != "" {
			out = append(out, fmt.Sprintf("block at %d: %s", off, msg))
		}
	}
	return out
}

// judge says what is wrong with a block holding write id, given its
// history h; "" means nothing.
func (m *crashModel) judge(h []crashWrite, id uint64, acked bool) string {
	if len(h) == 0 {
		if id != 0 {
			return fmt.Sprintf("never written, holds write %d", id)
		}
		return ""
	}
	d := m.durableSince(h, acked)
	if id == 0 {
		if d >= 0 {
			return fmt.Sprintf("zero, but write %d (FUA %v) was durable", h[d].id, h[d].fua)
		}
		return ""
	}
	for k := len(h) - 1; k >= 0; k-- {
		if h[k].id != id {
			continue
		}
		if k < d {
			return fmt.Sprintf("holds write %d (%d of %d to it), older than write %d "+
				"(FUA %v, acked), which must have survived", id, k+1, len(h), h[d].id, h[d].fua)
		}
		return ""
	}
	if m.lastOnly {
		return fmt.Sprintf("holds write %d, not the last write %d", id, h[len(h)-1].id)
	}
	return fmt.Sprintf("holds write %d, which was never issued to it", id)
}

// check reads every block through read and fails t for any block that holds
// neither its last durable content (FUA-acked, or acked before an acked FLUSH) nor
// a later write's content, or names another offset; unwritten blocks must be zero.
func (m *crashModel) check(t *testing.T, read func(off int64, p []byte) error) {
	t.Helper()
	m.report(t, m.problems(read, false), "durability")
}

// checkAcked is check's stricter sibling for a process crash: the kernel
// keeps every write it completed, so every acknowledged write survives.
func (m *crashModel) checkAcked(t *testing.T, read func(off int64, p []byte) error) {
	t.Helper()
	m.report(t, m.problems(read, true), "acknowledged writes survive")
}

func (m *crashModel) report(t testing.TB, probs []string, rule string) {
	t.Helper()
	for i, p := range probs {
		if i == crashProblemsMax {
			t.Errorf("... and %d more blocks", len(probs)-i)
			break
		}
		t.Errorf("%s: %s", rule, p)
	}
}

// crashReader reads blocks through a new connection to uri; the returned
// function fails t on a lost connection.
func crashReader(t *testing.T, uri string) func(off int64, p []byte) error {
	t.Helper()
	c, _, err := crashDial(uri)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	var req [wire.RequestSize]byte
	var rep [wire.SimpleReplySize]byte
	return func(off int64, p []byte) error {
		_ = c.SetDeadline(time.Now().Add(crashReplyTimeout))
		wire.EncodeRequest(req[:], &wire.Request{Type: wire.CmdRead, Offset: uint64(off),
			Length: uint64(len(p))})
		if _, err := c.Write(req[:]); err != nil {
			return err
		}
		if _, err := io.ReadFull(c, rep[:]); err != nil {
			return err
		}
		if e := wire.Errno(binary.BigEndian.Uint32(rep[4:])); e != wire.EOK {
			return fmt.Errorf("NBD error %v", e)
		}
		_, err := io.ReadFull(c, p)
		return err
	}
}

// kill ends the server with SIGKILL, as a crash would, and waits for it.
func (s *e2eServer) kill(t *testing.T) {
	t.Helper()
	s.stopped = true // the cleanup's clean-exit check does not apply
	if err := s.cmd.Process.Kill(); err != nil {
		t.Fatalf("kill -9 nbdring: %v", err)
	}
	select {
	case <-s.done:
	case <-time.After(e2eStopTimeout):
		t.Fatalf("nbdring still running %v after SIGKILL", e2eStopTimeout)
	}
}

const (
	crashExportSize = 16 << 20
	crashBS         = 4096
	crashConns      = 4
	// crashLoadTime is how long the load runs before the kill.
	crashLoadTime = 2 * time.Second
)

// TestE2ECrash: kill -9 nbdring in the middle of a load of plain writes,
// FUA writes and FLUSHes over four connections on two shards, restart it
// on the same file or device, and read every block back through it.
func TestE2ECrash(t *testing.T) {
	t.Run("file", func(t *testing.T) {
		path := e2eMakeFile(t, t.TempDir(), "disk.img", crashExportSize, 0)
		crashRun(t, path)
	})
	t.Run("loop", func(t *testing.T) {
		backing := e2eMakeFile(t, t.TempDir(), "backing.img", crashExportSize, 0)
		crashRun(t, e2eLoopDevice(t, backing, 4096))
	})
}

func crashRun(t *testing.T, path string) {
	s := e2eStart(t, "-shards", "2", path)
	stop := make(chan struct{})
	defer close(stop)
	res := make(chan *crashModel, 1)
	go func() { res <- crashLoad(s.uri(""), crashExportSize, crashBS, crashConns, stop) }()
	time.Sleep(crashLoadTime)
	s.kill(t)
	var m *crashModel
	select {
	case m = <-res:
	case <-time.After(2 * crashReplyTimeout):
		t.Fatal("the load did not end after the server was killed")
	}
	t.Logf("load: %v", m)
	st := m.totals()
	if st.writes == 0 || st.fua == 0 || st.flushes == 0 {
		t.Fatalf("the load proves nothing: %v", m)
	}
	if st.replyErrs != 0 {
		t.Errorf("%d error replies before the kill; first: %s", st.replyErrs, st.firstErr)
	}
	for c, cs := range m.stats {
		if cs.end == nil {
			t.Errorf("connection %d ended before the kill", c)
		}
	}
	s2 := e2eStart(t, path)
	m.check(t, crashReader(t, s2.uri("")))
	// A process crash loses nothing the kernel completed, so here even
	// writes never flushed must have survived.
	m.checkAcked(t, crashReader(t, s2.uri("")))
}

// TestCrashCheck: the checker finds a stale block, another offset's
// block, garbage and a lost durable write, and accepts every outcome the
// rules allow.
func TestCrashCheck(t *testing.T) {
	const bs = 512
	m := newCrashModel(8*bs, bs, 2)
	disk := make([][]byte, 8)
	put := func(b int64, id uint64) {
		disk[b] = make([]byte, bs)
		if id != 0 {
			crashBlock(disk[b], b*bs, id)
		}
	}
	// Block 0: FUA write acked, then (at the end) a plain write acked,
	// which no FLUSH covers: either may hold.
	w1 := m.issue(0, 0, true)
	m.ack(0)
	// Block 1: plain write acked, then a FLUSH on the other connection
	// (MULTI_CONN), then a write still in flight.
	w3 := m.issue(1, 0, false)
	m.ack(1)
	m.flushAcked(1, m.flushSent())
	w4 := m.issue(1, 0, false)
	// Block 2: a FLUSH sent before the write's ack covers nothing of it.
	seq := m.flushSent()
	w5 := m.issue(2, 1, false)
	m.ack(2)
	m.flushAcked(1, seq)
	// Block 3: written by FUA; block 4 never written.
	w6 := m.issue(3, 1, true)
	m.ack(3)
	w2 := m.issue(0, 0, false)
	m.ack(0)

	good := map[string][]uint64{"0": {w1, w2}, "1": {w3, w4}, "2": {0, w5}, "3": {w6}}
	base := func() {
		put(0, w2)
		put(1, w4)
		put(2, 0)
		put(3, w6)
		for b := 4; b < 8; b++ {
			put(int64(b), 0)
		}
	}
	read := func(off int64, p []byte) error {
		copy(p, disk[off/bs])
		return nil
	}
	for b, ids := range good {
		for _, id := range ids {
			base()
			put(int64(b[0]-'0'), id)
			if probs := m.problems(read, false); len(probs) != 0 {
				t.Errorf("block %s holding write %d (allowed): %q", b, id, probs)
			}
		}
	}
	for _, c := range []struct {
		name  string
		block int64
		bad   func(p []byte)
		acked bool
		want  string
	}{
		{"stale after FUA", 0, func(p []byte) { clear(p) }, false,
			"zero, but write"},
		{"stale after flush", 1, func(p []byte) { clear(p) }, false, "zero, but write"},
		{"older write", 3, func(p []byte) { crashBlock(p, 3*bs, w5) }, false,
			"never issued to it"},
		{"other offset", 4, func(p []byte) { crashBlock(p, 3*bs, w6) }, false,
			"written for offset 1536"},
		{"garbage", 5, func(p []byte) { p[100] = 1 }, false, "garbage"},
		{"torn", 3, func(p []byte) { p[300] ^= 1 }, false, "torn or corrupt"},
		{"acked but lost", 2, func(p []byte) { clear(p) }, true, "zero, but write"},
		{"read error", -1, nil, false, "read: boom"},
	} {
		base()
		r := read
		if c.block >= 0 {
			c.bad(disk[c.block])
		} else {
			r = func(off int64, p []byte) error {
				if off == 6*bs {
					return errors.New("boom")
				}
				return read(off, p)
			}
		}
		probs := m.problems(r, c.acked)
		if len(probs) != 1 || !bytes.Contains([]byte(probs[0]), []byte(c.want)) {
			t.Errorf("%s: problems %q, want one saying %q", c.name, probs, c.want)
		}
	}
	// A stale version: block 0 back at w1 is allowed (FUA), but once a
	// later FUA write is acked it is not.
	w7 := m.issue(0, 0, true)
	m.ack(0)
	base()
	put(0, w1)
	probs := m.problems(read, false)
	if len(probs) != 1 || !bytes.Contains([]byte(probs[0]), []byte("older than write")) {
		t.Errorf("stale block 0 (write %d after FUA write %d): problems %q", w1, w7, probs)
	}
}
