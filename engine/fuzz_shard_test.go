package engine

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nbdring/nbdring/wire"
	"golang.org/x/sys/unix"
)

// FuzzShard drives a real shard over a socket pair with a program decoded
// from the input: a handshake choice, then requests well-formed and not,
// pipelined, ending in a clean finish, a DISC, a bad magic, a half-close,
// a short WRITE payload or a close with requests in flight. It checks the
// protocol from the client's side (every reply answers a request sent and
// not yet answered, once; chunks are well-formed and a READ's cover its
// range exactly; valid requests succeed; a READ returns what was written,
// see fuzzModel) and, after the client is gone, that the shard holds no
// connection, slot or arena byte and that no file descriptor is left open.
// With the invariants tag (make test, make fuzz) the engine's own
// assertions panic too.
//
// Input layout (fuzzIn reads zero past the end):
//
//	byte 0: handshake bits (fuzzHS*)
//	then ops: one byte (% fuzzOpCount) and its arguments, see fuzzSession.step
//
// Corpus: testdata/fuzz/FuzzShard, one file per scenario, kept equal to
// shardSeeds by TestFuzzShardSeeds.
func FuzzShard(f *testing.F) {
	h := newShardFuzz(f)
	h.run(f, shardSeeds["read-write-simple"]) // warm up the netpoller's descriptors
	f.Fuzz(func(t *testing.T, in []byte) { h.run(t, in) })
}

// Handshake bits of the input's first byte.
const (
	fuzzHSStructured = 1 << iota
	fuzzHSExtended
	fuzzHSBlockSize
	fuzzHSBaseAlloc
	fuzzHSExportName
	fuzzHSUnknownName // ask for an export that does not exist
)

// Ops of the program.
const (
	fuzzOpValid      = iota // one well-formed request: validArgs
	fuzzOpRaw               // header fields from the input: type, flags, offset, length
	fuzzOpBurst             // count, then validArgs: that many small copies at once
	fuzzOpFlushOut          // write the requests buffered so far
	fuzzOpSync              // wait for every reply
	fuzzOpBadMagic          // magic (4): a header with a wrong magic; server must close
	fuzzOpDisc              // flags: NBD_CMD_DISC; every reply, then the server closes
	fuzzOpClose             // drop: close with requests in flight (buffered ones sent or not)
	fuzzOpShortWrite        // blocks, cut (2): a WRITE with part of its payload, then close
	fuzzOpHalfClose         // shut our write side; the server must close
	fuzzOpCount
)

const (
	// fuzzReplyWait bounds every wait for replies or for the server to
	// close: far above what a 64 MiB export needs, so a timeout is a hang.
	fuzzReplyWait = 5 * time.Second
	// fuzzReleaseWait bounds the wait for the shard to free everything
	// once the client is gone.
	fuzzReleaseWait = 2 * time.Second
	fuzzReleasePoll = time.Millisecond
	// fuzzExportSize and the arena: small, and the arena the smallest that
	// serves 32 MiB requests (the model's largest).
	fuzzExportSize = 64 << 20
	fuzzArenaSize  = arenaSizeDefault
	// fuzzOutMax: buffered requests are written once they reach this.
	fuzzOutMax = 1 << 20
)

// shardFuzz is set up once per process: one server with one shard.
type shardFuzz struct {
	srv     *Server
	exp     *Export
	logs    lockedBuffer
	pattern []byte // WRITE payload source
	scratch []byte // the reader's
	model   *fuzzModel
	path    string // the export's file
}

func newShardFuzz(f *testing.F) *shardFuzz {
	h := &shardFuzz{path: filepath.Join(f.TempDir(), "img"), pattern: make([]byte, 1<<20),
		scratch: make([]byte, fuzzScratchSize), model: newFuzzModel(fuzzExportSize)}
	if err := os.WriteFile(h.path, nil, 0o644); err != nil {
		f.Fatal(err)
	}
	if err := os.Truncate(h.path, fuzzExportSize); err != nil {
		f.Fatal(err)
	}
	for i := range h.pattern {
		h.pattern[i] = byte(i*7 + i>>12)
	}
	// The engine logs every bad request; keep it for a failing input only.
	prev := log.Writer()
	log.SetOutput(&h.logs)
	f.Cleanup(func() { log.SetOutput(prev) })
	if err := h.start(); err != nil {
		skipMissing(f, "io_uring", "engine unavailable here: %v", err)
	}
	f.Cleanup(func() {
		if err := h.srv.Stop(); err != nil {
			f.Errorf("stop: %v", err)
		}
	})
	return h
}

// start opens the export and starts a server with one shard on it.
func (h *shardFuzz) start() error {
	exp, err := OpenExport(ExportConfig{Path: h.path})
	if err != nil {
		return err
	}
	if exp.Size() != fuzzExportSize {
		return fmt.Errorf("export of %d bytes; the model has %d", exp.Size(), fuzzExportSize)
	}
	h.exp = exp
	h.srv, err = New(Config{Shards: 1, ArenaSize: fuzzArenaSize}, []*Export{exp})
	return err
}

// restart replaces a server that kept something of an input: later inputs
// (the fuzzer's minimization of this one among them) then start clean.
func (h *shardFuzz) restart(t testing.TB) {
	if err := h.srv.Stop(); err != nil {
		t.Logf("restart: stop: %v", err)
	}
	if err := h.start(); err != nil {
		t.Fatalf("restart: %v", err)
	}
}

// run plays one input on a fresh connection and checks that everything
// it held is released.
func (h *shardFuzz) run(t testing.TB, in []byte) {
	h.logs.Reset()
	before := h.held(t)
	if before.conns != 0 || before.slots != 0 || before.arena != 0 {
		t.Errorf("before the input the shard holds %d connections, %d slots, %d arena "+
			"bytes", before.conns, before.slots, before.arena)
		h.restart(t)
		before = h.held(t)
	}
	cli, srvEnd := socketPair(t)
	hsDone := make(chan struct{})
	ip, why := h.srv.gate.enter(srvEnd.RemoteAddr()) // handshake gives the place back
	if why != "" {
		t.Fatal(why)
	}
	go func() {
		defer close(hsDone)
		h.srv.handshake(srvEnd, ip)
	}()
	s := &fuzzSession{t: t, h: h, c: cli, in: fuzzIn{b: in},
		pending: map[uint64]*fuzzReq{}, answered: make(chan struct{}, 1),
		readerDone: make(chan struct{})}
	s.play()
	cli.Close()
	if s.reading {
		<-s.readerDone // the close ends its read at once
	}
	s.forgetUnanswered()
	if s.failure != "" {
		t.Errorf("client saw: %s", s.failure)
	}
	select {
	case <-hsDone:
	case <-time.After(fuzzReplyWait):
		t.Errorf("handshake still running %v after the client closed", fuzzReplyWait)
	}
	if !h.checkReleased(t, before) {
		h.restart(t)
	}
	if t.Failed() {
		t.Logf("input %q\nserver log:\n%s", in, h.logs.String())
	}
}

// shardHeld is what the shard and the process hold: fds lists the open
// descriptors with what each refers to, so a descriptor closed and another
// opened do not cancel out.
type shardHeld struct {
	conns, slots, arena int64
	fds                 string
}

// held takes a snapshot that the shard did not change while the
// descriptors were listed: a connection attached and closed meanwhile
// would otherwise read as counted before its attach and listed after its
// close, a state that never was.
func (h *shardFuzz) held(t testing.TB) shardHeld {
	sh := h.srv.shards[0]
	st := &sh.stats
	for {
		c := shardHeld{conns: sh.m.connCount(), slots: st.Inflight.Load(),
			arena: st.ArenaBytes.Load()}
		c.fds = openFDs(t)
		if c.conns == sh.m.connCount() && c.slots == st.Inflight.Load() &&
			c.arena == st.ArenaBytes.Load() {
			return c
		}
	}
}

// checkReleased waits for the shard to drop the connection, its slots and
// its buffers, and for the process's descriptors to be back to before.
// The bound counts polls, not wall time, so that a stalled machine (the
// whole VM descheduled between two reads) does not look like a leak.
func (h *shardFuzz) checkReleased(t testing.TB, before shardHeld) bool {
	polls := int(fuzzReleaseWait / fuzzReleasePoll)
	for i := 0; ; i++ {
		now := h.held(t)
		if now == before {
			return true
		}
		if i == polls {
			t.Errorf("%v after the client closed, the shard holds %d connections, %d slots, "+
				"%d arena bytes (before the input: %d, %d, %d); descriptors %s",
				fuzzReleaseWait, now.conns, now.slots, now.arena, before.conns,
				before.slots, before.arena, fdsDiff(before.fds, now.fds))
			return false
		}
		time.Sleep(fuzzReleasePoll)
	}
}

// openFDs lists the process's descriptors, "fd>target" a line.
func openFDs(t testing.TB) string {
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatalf("list open descriptors: %v", err)
	}
	var b strings.Builder
	for _, e := range ents {
		target, err := os.Readlink("/proc/self/fd/" + e.Name())
		if err != nil {
			continue // the directory's own descriptor, closed by now
		}
		fmt.Fprintf(&b, "%s>%s\n", e.Name(), target)
	}
	return b.String()
}

// fdsDiff names the descriptors opened and closed between two openFDs.
func fdsDiff(before, now string) string {
	was := map[string]bool{}
	for _, l := range strings.Fields(before) {
		was[l] = true
	}
	var opened, closed []string
	for _, l := range strings.Fields(now) {
		if !was[l] {
			opened = append(opened, l)
		}
		delete(was, l)
	}
	for l := range was {
		closed = append(closed, l)
	}
	sort.Strings(closed)
	return fmt.Sprintf("opened %v, closed %v", opened, closed)
}

// socketPair returns both ends of a Unix stream pair as net.Conns.
func socketPair(t testing.TB) (a, b net.Conn) {
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatalf("socketpair: %v", err)
	}
	conns := [2]net.Conn{}
	for i, fd := range fds {
		f := os.NewFile(uintptr(fd), fmt.Sprintf("socketpair-%d", i))
		conns[i], err = net.FileConn(f) // a dup: the original is closed below
		f.Close()
		if err != nil {
			t.Fatalf("socket pair as net.Conn: %v", err)
		}
	}
	return conns[0], conns[1]
}

// lockedBuffer collects log output from the engine's goroutines.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.b.Len() > 64<<10 {
		return len(p), nil // enough to tell what happened
	}
	return l.b.Write(p)
}

func (l *lockedBuffer) Reset() {
	l.mu.Lock()
	l.b.Reset()
	l.mu.Unlock()
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// fuzzIn reads the input; past its end every read is zero.
type fuzzIn struct{ b []byte }

func (in *fuzzIn) empty() bool { return len(in.b) == 0 }

func (in *fuzzIn) u8() byte {
	if len(in.b) == 0 {
		return 0
	}
	v := in.b[0]
	in.b = in.b[1:]
	return v
}

func (in *fuzzIn) u16() uint16 { return uint16(in.u8())<<8 | uint16(in.u8()) }
func (in *fuzzIn) u32() uint32 { return uint32(in.u16())<<16 | uint32(in.u16()) }
func (in *fuzzIn) u64() uint64 { return uint64(in.u32())<<32 | uint64(in.u32()) }

// fuzzWant is what a request's reply must say.
type fuzzWant uint8

const (
	wantAny        fuzzWant = iota // ill-formed on purpose: any well-formed reply
	wantOK                         // valid: must succeed
	wantOKOrNotsup                 // FAST_ZERO: may be refused as not fast
	wantEINVAL                     // unaligned after promising alignment, or no context
)

// fuzzReq is a request awaiting its reply. The reader goroutine alone
// touches the fields after conflict.
type fuzzReq struct {
	seq         uint64
	typ         wire.Cmd
	flags       wire.CmdFlags
	off, length uint64
	want        fuzzWant

	start    uint64 // WRITE: its payload is pattern[start:], wrapping
	conflict bool   // s.mu: overlapped a request in flight (see markConflicts)

	chunks  int
	errno   wire.Errno
	covered [][2]uint64 // READ: [start, end) of each data and hole chunk
	total   uint64
}

func (r *fuzzReq) String() string {
	return fmt.Sprintf("%v flags %#x at %d+%d", r.typ, uint16(r.flags), r.off, r.length)
}

// fuzzSession is one input's connection.
type fuzzSession struct {
	t      testing.TB
	h      *shardFuzz
	c      net.Conn
	in     fuzzIn
	ex     wire.ClientExport
	style  wire.ReplyStyle
	strict bool // the client promised aligned requests
	meta   bool // base:allocation is selected: BLOCK_STATUS allowed
	out    []byte
	hdr    [wire.ExtRequestSize]byte
	seq    uint64
	broken bool // a write failed or a check failed: play no further

	reading    bool // readReplies runs
	mu         sync.Mutex
	pending    map[uint64]*fuzzReq
	answered   chan struct{} // poked after each complete reply
	readerDone chan struct{}
	// Set by the reader before readerDone closes.
	failure string // a protocol violation it saw
	readErr error  // why it stopped reading
}

// play runs the handshake, then the ops until one ends the connection.
func (s *fuzzSession) play() {
	if !s.handshake() {
		return
	}
	s.reading = true
	go s.readReplies()
	for !s.in.empty() && s.alive() {
		if !s.step() {
			return
		}
	}
	if s.alive() && s.flush() {
		s.awaitAll("at the end of the input")
	}
}

// handshake negotiates as the first byte says. It must succeed exactly
// when the choice is one the server accepts.
func (s *fuzzSession) handshake() bool {
	hs := s.in.u8()
	o := wire.ClientOptions{Structured: hs&fuzzHSStructured != 0,
		Extended: hs&fuzzHSExtended != 0, BlockSize: hs&fuzzHSBlockSize != 0,
		BaseAllocation: hs&fuzzHSBaseAlloc != 0, ExportName: hs&fuzzHSExportName != 0}
	if hs&fuzzHSUnknownName != 0 {
		o.Name = "no-such-export"
	}
	acceptable := o.Name == "" && !(o.ExportName && o.Extended) &&
		!(o.BaseAllocation && !o.Structured && !o.Extended)
	_ = s.c.SetDeadline(time.Now().Add(fuzzReplyWait))
	ex, err := wire.ClientHandshake(s.c, o)
	_ = s.c.SetDeadline(time.Time{})
	switch {
	case err != nil && acceptable:
		s.t.Errorf("handshake %+v: %v", o, err)
		return false
	case err != nil:
		return false
	case !acceptable:
		s.t.Errorf("handshake %+v succeeded; the server must refuse it", o)
		return false
	case ex.Size != s.h.exp.Size():
		s.t.Errorf("handshake: export size %d, want %d", ex.Size, s.h.exp.Size())
		return false
	}
	s.ex, s.style = ex, ex.Style()
	// NBD_OPT_EXPORT_NAME gives no block sizes and selects no context.
	s.strict = o.BlockSize && !o.ExportName
	s.meta = ex.MetaID != 0 && !o.ExportName
	return true
}

// step plays one op; false when the connection is over.
func (s *fuzzSession) step() bool {
	switch s.in.u8() % fuzzOpCount {
	case fuzzOpValid:
		r, want, payload := s.validReq(64)
		s.send(r, want, payload)
	case fuzzOpRaw:
		return s.raw()
	case fuzzOpBurst:
		n := int(s.in.u8())%160 + 1 // past inflightPerConnMax
		r, want, payload := s.validReq(4)
		for i := 0; i < n && !s.broken; i++ {
			s.send(r, want, payload)
		}
	case fuzzOpFlushOut:
		s.flush()
	case fuzzOpSync:
		if s.flush() {
			s.awaitAll("at a sync point")
		}
	case fuzzOpBadMagic:
		s.badMagic()
		return false
	case fuzzOpDisc:
		s.disc()
		return false
	case fuzzOpClose:
		s.closeAbruptly()
		return false
	case fuzzOpShortWrite:
		s.shortWrite()
		return false
	case fuzzOpHalfClose:
		if s.flush() {
			_ = s.c.(*net.UnixConn).CloseWrite()
			s.expectServerClose("the client shut its write side")
		}
		return false
	}
	return !s.broken
}

// alive reports whether the connection is still usable; the server
// closing it while the program still runs is a failure.
func (s *fuzzSession) alive() bool {
	select {
	case <-s.readerDone:
		if s.failure == "" && !s.broken {
			s.t.Errorf("the server closed the connection (%v) though nothing asked it to",
				s.readErr)
		}
		s.broken = true
	default:
	}
	return !s.broken
}

// Bits of validReq's flag byte.
const (
	fuzzFlUnaligned = 1 << iota
	fuzzFlFUA
	fuzzFlExtra    // DF on READ, NO_HOLE on WRITE_ZEROES, REQ_ONE on BLOCK_STATUS
	fuzzFlFastZero // FAST_ZERO on WRITE_ZEROES
	fuzzFlBig      // MiB instead of 4 KiB units, for commands without a payload limit
)

var fuzzCmds = [...]wire.Cmd{wire.CmdRead, wire.CmdWrite, wire.CmdFlush, wire.CmdTrim,
	wire.CmdWriteZeroes, wire.CmdCache, wire.CmdBlockStatus}

// validReq builds a well-formed request from: command, flags (fuzzFl*),
// 4 KiB block (2 bytes), length in blocks (up to blocksMax), skew. It
// returns what its reply must say and its payload length.
func (s *fuzzSession) validReq(blocksMax uint64) (wire.Request, fuzzWant, uint64) {
	cmd := fuzzCmds[int(s.in.u8())%len(fuzzCmds)]
	fl := s.in.u8()
	block := uint64(s.in.u16())
	length := (uint64(s.in.u8())%blocksMax + 1) * 4096
	skew := uint64(s.in.u8())
	size, align := s.h.exp.Size(), uint64(s.h.exp.Align())
	if fl&fuzzFlBig != 0 && cmd != wire.CmdRead && cmd != wire.CmdWrite {
		length <<= 8 // 1 MiB units: past 32 MiB is allowed here
	}
	length = min(length, size)
	off := block * 4096 % size
	if fl&fuzzFlUnaligned != 0 && align > 1 {
		off += 1 + skew%(align-1)
		length -= min(skew, length-1)
	}
	if off+length > size {
		off = size - length
	}
	r := wire.Request{Type: cmd, Offset: off, Length: length}
	if fl&fuzzFlFUA != 0 {
		r.Flags |= wire.CmdFlagFUA
	}
	switch {
	case fl&fuzzFlExtra == 0:
	case cmd == wire.CmdRead && s.style != wire.StyleSimple:
		r.Flags |= wire.CmdFlagDF
	case cmd == wire.CmdWriteZeroes:
		r.Flags |= wire.CmdFlagNoHole
	case cmd == wire.CmdBlockStatus:
		r.Flags |= wire.CmdFlagReqOne
	}
	if fl&fuzzFlFastZero != 0 && cmd == wire.CmdWriteZeroes {
		r.Flags |= wire.CmdFlagFastZero
	}
	var payload uint64
	switch cmd {
	case wire.CmdFlush:
		r.Offset, r.Length = 0, 0
	case wire.CmdWrite:
		payload = length
		if s.style == wire.StyleExtended {
			r.Flags |= wire.CmdFlagPayloadLen
		}
	}
	aligned := r.Offset%align == 0 && r.Length%align == 0
	want := wantOK
	switch {
	case cmd == wire.CmdBlockStatus && !s.meta:
		want = wantEINVAL
	case s.strict && !aligned && cmd != wire.CmdFlush && cmd != wire.CmdBlockStatus:
		want = wantEINVAL
	case r.Flags&wire.CmdFlagFastZero != 0:
		want = wantOKOrNotsup
	}
	return r, want, payload
}

// raw sends a header with fields from the input: type (2), flags (2),
// offset (8), length (8 with extended headers, else 4).
func (s *fuzzSession) raw() bool {
	r := wire.Request{Type: wire.Cmd(s.in.u16()), Flags: wire.CmdFlags(s.in.u16()),
		Offset: s.in.u64()}
	ext := s.style == wire.StyleExtended
	if ext {
		r.Length = s.in.u64()
	} else {
		r.Length = uint64(s.in.u32())
	}
	n, ok := wire.PayloadLen(&r, ext)
	switch {
	case !ok:
		s.header(&r)
		s.expectServerClose(fmt.Sprintf("a %v announcing a %d-byte payload", r.Type, n))
		return false
	case r.Type == wire.CmdDisc:
		// Whatever its flags, offset or length: no reply to it (proto.md;
		// its cookie is not registered, so one is a failure), the rest
		// answered, then the server closes.
		s.header(&r)
		if !s.flush() {
			return false
		}
		if !s.waitClosed() {
			s.t.Errorf("%v after a %v with flags %#x the server has not closed; "+
				"unanswered: %s", fuzzReplyWait, r.Type, uint16(r.Flags), s.pendingList())
			return false
		}
		s.checkClosedCleanly("after NBD_CMD_DISC")
		return false
	}
	s.send(r, wantAny, n)
	return !s.broken
}

// send queues a request (registered before any byte of it is written) and
// its payload, and returns its cookie.
func (s *fuzzSession) send(r wire.Request, want fuzzWant, payload uint64) uint64 {
	s.seq++
	// Odd multiplier: distinct per request, spread over all 64 bits.
	r.Cookie = s.seq * 0x9e3779b97f4a7c15
	// Each WRITE's bytes differ from the last one's at the same place.
	start := s.seq * 4099 % uint64(len(s.h.pattern))
	q := &fuzzReq{seq: s.seq, typ: r.Type, flags: r.Flags, off: r.Offset, length: r.Length,
		want: want, start: start}
	s.mu.Lock()
	s.markConflicts(q)
	s.pending[r.Cookie] = q
	s.mu.Unlock()
	s.header(&r)
	s.appendPayload(payload, start)
	return r.Cookie
}

// header queues r in the negotiated header form.
func (s *fuzzSession) header(r *wire.Request) {
	s.out = append(s.out, s.encode(r)...)
	if len(s.out) >= fuzzOutMax {
		s.flush()
	}
}

// encode returns r in the negotiated header form, in s.hdr.
func (s *fuzzSession) encode(r *wire.Request) []byte {
	if s.style == wire.StyleExtended {
		wire.EncodeExtendedRequest(s.hdr[:], r)
		return s.hdr[:wire.ExtRequestSize]
	}
	wire.EncodeRequest(s.hdr[:], r)
	return s.hdr[:wire.RequestSize]
}

// appendPayload queues n payload bytes: the pattern from start, wrapping.
func (s *fuzzSession) appendPayload(n, start uint64) {
	for n > 0 && !s.broken {
		at := start % uint64(len(s.h.pattern))
		k := min(n, uint64(len(s.h.pattern))-at)
		s.out = append(s.out, s.h.pattern[at:at+k]...)
		n, start = n-k, start+k
		if len(s.out) >= fuzzOutMax {
			s.flush()
		}
	}
}

// flush writes the queued requests; false when the write failed.
func (s *fuzzSession) flush() bool {
	if s.broken || len(s.out) == 0 {
		return !s.broken
	}
	_ = s.c.SetWriteDeadline(time.Now().Add(fuzzReplyWait))
	_, err := s.c.Write(s.out)
	s.out = s.out[:0]
	if err != nil {
		if s.alive() {
			s.t.Errorf("write requests: %v (the server stopped reading); unanswered: %s",
				err, s.pendingList())
		}
		s.broken = true
	}
	return !s.broken
}

// badMagic sends a header whose magic (from the input) is not the
// negotiated one: the stream is lost, the server must hang up.
func (s *fuzzSession) badMagic() {
	magic := s.in.u32()
	want := uint32(wire.MagicRequest)
	if s.style == wire.StyleExtended {
		want = wire.MagicExtRequest
	}
	if magic == want {
		magic ^= 1
	}
	b := s.encode(&wire.Request{Type: wire.CmdRead, Length: 4096})
	binary.BigEndian.PutUint32(b, magic)
	s.out = append(s.out, b...)
	s.expectServerClose(fmt.Sprintf("a request with magic %#x", magic))
}

// disc sends NBD_CMD_DISC: every request before it is answered, then the
// server closes.
func (s *fuzzSession) disc() {
	s.header(&wire.Request{Type: wire.CmdDisc, Flags: wire.CmdFlags(s.in.u8()) &
		wire.CmdFlagFUA})
	if !s.flush() {
		return
	}
	if !s.waitClosed() {
		s.t.Errorf("%v after NBD_CMD_DISC the server has not closed; unanswered: %s",
			fuzzReplyWait, s.pendingList())
		return
	}
	s.checkClosedCleanly("after NBD_CMD_DISC")
}

// checkClosedCleanly: after a graceful close (the reader has stopped)
// every request is answered and no reply was cut short.
func (s *fuzzSession) checkClosedCleanly(when string) {
	if s.failure != "" {
		return
	}
	if s.npending() > 0 {
		s.t.Errorf("%s the server closed with requests unanswered: %s", when, s.pendingList())
	}
	if !errors.Is(s.readErr, io.EOF) {
		s.t.Errorf("%s the connection ended with %v, not a clean close", when, s.readErr)
	}
}

// closeAbruptly: the caller closes with requests in flight; the first
// argument says whether queued requests go out first and whether a
// partial header (of the length in its upper bits) follows them.
func (s *fuzzSession) closeAbruptly() {
	how := s.in.u8()
	if how&1 == 0 {
		s.out = s.out[:0]
	}
	if how&2 != 0 {
		b := s.encode(&wire.Request{Type: wire.CmdRead, Length: 4096})
		s.out = append(s.out, b[:int(how>>2)%len(b)]...)
	}
	s.flush()
}

// shortWrite sends a valid WRITE with only part of its payload and
// closes. Its cookie is not registered: a reply to it is a failure.
func (s *fuzzSession) shortWrite() {
	n := (uint64(s.in.u8())%64 + 1) * 4096
	cut := uint64(s.in.u16()) % n
	r := wire.Request{Type: wire.CmdWrite, Length: n, Cookie: 1}
	if s.style == wire.StyleExtended {
		r.Flags = wire.CmdFlagPayloadLen
	}
	s.header(&r)
	s.appendPayload(cut, 0)
	s.flush()
}

// expectServerClose writes what is queued and waits for the server to
// hang up; replies before that may be cut short.
func (s *fuzzSession) expectServerClose(after string) {
	if s.flush() && !s.waitClosed() {
		s.t.Errorf("%v after %s the server still has the connection open", fuzzReplyWait,
			after)
	}
}

// awaitAll waits for every reply.
func (s *fuzzSession) awaitAll(when string) {
	if !s.waitReplies() {
		s.t.Errorf("%s: %v later still unanswered: %s", when, fuzzReplyWait, s.pendingList())
		s.broken = true
		return
	}
	if s.npending() > 0 && s.failure == "" {
		s.t.Errorf("%s: the server closed the connection (%v) with requests unanswered: %s",
			when, s.readErr, s.pendingList())
		s.broken = true
	}
}

// waitReplies waits until no request awaits a reply or the reader has
// stopped; false on timeout.
func (s *fuzzSession) waitReplies() bool {
	timer := time.NewTimer(fuzzReplyWait)
	defer timer.Stop()
	for s.npending() > 0 {
		select {
		case <-s.answered:
		case <-s.readerDone:
			return true
		case <-timer.C:
			return false
		}
	}
	return true
}

// waitClosed waits for the reader to stop: the server hung up.
func (s *fuzzSession) waitClosed() bool {
	timer := time.NewTimer(fuzzReplyWait)
	defer timer.Stop()
	select {
	case <-s.readerDone:
		return true
	case <-timer.C:
		return false
	}
}

func (s *fuzzSession) npending() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.pending)
}

// pendingList names the first requests still awaiting a reply.
func (s *fuzzSession) pendingList() string {
	s.mu.Lock()
	reqs := make([]*fuzzReq, 0, len(s.pending))
	for _, r := range s.pending {
		reqs = append(reqs, r)
	}
	s.mu.Unlock()
	sort.Slice(reqs, func(i, j int) bool { return reqs[i].seq < reqs[j].seq })
	var b bytes.Buffer
	fmt.Fprintf(&b, "%d requests", len(reqs))
	for i, r := range reqs {
		if i == 4 {
			b.WriteString(", ...")
			break
		}
		fmt.Fprintf(&b, "; #%d %v", r.seq, r)
	}
	return b.String()
}
