package engine

import (
	"encoding/binary"
	"fmt"
	"io"
	"math/rand"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/nbdring/nbdring/wire"
)

// The partial-block stress test: connections on both shards send random
// aligned and unaligned WRITE, WRITE_ZEROES and TRIM, pipelined, on bytes
// that share blocks with other connections' bytes, and READs; a model of
// every byte checks what the export holds after each round.
//
// Requests in flight together have no order, so a round is built to have
// one outcome: its pieces (byte ranges) partition the region, adjacent
// pieces belong to different connections (so most blocks are shared by
// two or three writers: the partial-block neighbours of issue 16), and
// each piece gets at most one request. A READ's piece is written by no
// one in its round, so its bytes are known even while a neighbour's
// read-modify-write rewrites their block.

// stressConns connections, spread over the two shards, each send their
// share of every round at once.
const (
	stressConns  = 4
	stressBlocks = 128 // blocks in the region the test writes
	stressRounds = 120
)

// stressOp is one request of a round.
type stressOp struct {
	typ   wire.Cmd
	flags wire.CmdFlags
	off   uint64
	n     uint64
	data  []byte // WRITE payload
	// echo: an unaligned request inside another connection's whole-block
	// WRITE, WRITE_ZEROES or (where TRIM zeroes) TRIM of the same round
	// that puts the same bytes there; every order of the two leaves the
	// blocks as the model says, but an RMW that read them before the
	// whole-block request and wrote them back after it does not.
	echo bool
}

// stressModel is what every byte of the region should hold: val, or, where
// maybeZero (bytes a device may or may not have discarded), val or zero.
type stressModel struct {
	val       []byte
	maybeZero []bool
	align     uint64
	// trimZeroes: a TRIM leaves zeroes (a file's punched hole); on a
	// device a TRIM may leave the old bytes or zeroes.
	trimZeroes bool
	// last says which request of the round wrote each byte, for the report.
	last []string
}

func (m *stressModel) ok(i int, b byte) bool {
	return b == m.val[i] || m.maybeZero[i] && b == 0
}

// apply records a round's completed request in the model.
func (m *stressModel) apply(op *stressOp, conn int) {
	if op.echo {
		return // it agrees with the request it echoes
	}
	what := fmt.Sprintf("conn %d %v flags %#x %d+%d", conn, op.typ, op.flags, op.off, op.n)
	for i := op.off; i < op.off+op.n; i++ {
		switch op.typ {
		case wire.CmdWrite:
			m.val[i], m.maybeZero[i] = op.data[i-op.off], false
		case wire.CmdWriteZeroes:
			m.val[i], m.maybeZero[i] = 0, false
		case wire.CmdTrim:
			if m.trimZeroes {
				m.val[i], m.maybeZero[i] = 0, false
			} else {
				m.maybeZero[i] = true
			}
		default:
			continue
		}
		m.last[i] = what
	}
}

// stressRound cuts the region into pieces and gives each a request: ops[c]
// are connection c's.
func stressRound(rng *rand.Rand, m *stressModel, round int) [stressConns][]stressOp {
	var ops [stressConns][]stressOp
	region, align := uint64(len(m.val)), m.align
	for p, k := uint64(0), 0; p < region; k++ {
		n := 1 + uint64(rng.Int63n(int64(align+align/2)))
		switch {
		case p%align == 0 && rng.Intn(3) == 0:
			n = align * uint64(1+rng.Intn(3)) // whole blocks: the aligned fast path
		case p%align != 0 && rng.Intn(3) == 0:
			n = align - p%align // up to the block's end, so whole blocks follow
		}
		n = min(n, region-p)
		op := stressOp{off: p, n: n}
		switch x := rng.Intn(100); {
		case x < 30:
			op.typ, op.data = wire.CmdWrite, make([]byte, n)
			rng.Read(op.data)
		case x < 55:
			op.typ = wire.CmdWriteZeroes
			op.flags = [...]wire.CmdFlags{0, wire.CmdFlagNoHole, wire.CmdFlagFUA,
				wire.CmdFlagNoHole | wire.CmdFlagFUA}[rng.Intn(4)]
		case x < 70:
			op.typ = wire.CmdTrim
			if rng.Intn(4) == 0 {
				op.flags = wire.CmdFlagFUA
			}
		case x < 90:
			op.typ = wire.CmdRead
		default:
			p += n
			continue // this piece is left alone
		}
		c := (k + round) % stressConns // neighbours differ: k and k+1
		ops[c] = append(ops[c], op)
		if e, ok := stressEcho(rng, m, &op); ok {
			c = (c + 1 + rng.Intn(stressConns-1)) % stressConns
			ops[c] = append(ops[c], e)
		}
		p += n
	}
	return ops
}

// stressEcho makes, for half the whole-block requests that leave known
// bytes, an unaligned request on part of them that puts the same bytes
// there (stressOp.echo).
func stressEcho(rng *rand.Rand, m *stressModel, op *stressOp) (stressOp, bool) {
	zeroes := op.typ == wire.CmdWriteZeroes || op.typ == wire.CmdTrim && m.trimZeroes
	if op.typ != wire.CmdWrite && !zeroes || op.off%m.align != 0 || op.n%m.align != 0 ||
		rng.Intn(2) == 0 {
		return stressOp{}, false
	}
	a := uint64(rng.Int63n(int64(op.n - 1)))
	b := a + 1 + uint64(rng.Int63n(int64(op.n-a-1)))
	e := stressOp{typ: wire.CmdWrite, off: op.off + a, n: b - a, echo: true}
	switch {
	case !zeroes:
		e.data = op.data[a:b]
	case rng.Intn(2) == 0:
		e.typ = wire.CmdWriteZeroes
	default:
		e.data = make([]byte, b-a)
	}
	return e, true
}

// stressSend sends a connection's requests of a round in one stream and
// reads their replies, checking each READ against the model as it was
// when the round began (no one writes a READ's piece in its round).
func stressSend(c net.Conn, ops []stressOp, m *stressModel) error {
	var stream []byte
	var hdr [wire.RequestSize]byte
	for i := range ops {
		op := &ops[i]
		wire.EncodeRequest(hdr[:], &wire.Request{Type: op.typ, Flags: op.flags,
			Cookie: uint64(i), Offset: op.off, Length: op.n})
		stream = append(append(stream, hdr[:]...), op.data...)
	}
	errc := make(chan error, 1)
	go func() {
		_, err := c.Write(stream)
		errc <- err
	}()
	var rep [wire.SimpleReplySize]byte
	buf := make([]byte, 0, 4*m.align)
	var bad error
	for range ops {
		if _, err := io.ReadFull(c, rep[:]); err != nil {
			return fmt.Errorf("read reply: %w", err)
		}
		errno, cookie := binary.BigEndian.Uint32(rep[4:]), binary.BigEndian.Uint64(rep[8:])
		if cookie >= uint64(len(ops)) {
			return fmt.Errorf("reply for unknown cookie %d", cookie)
		}
		op := &ops[cookie]
		if errno != 0 {
			return fmt.Errorf("%v %d+%d flags %#x: %v", op.typ, op.off, op.n, op.flags,
				wire.Errno(errno))
		}
		if op.typ != wire.CmdRead {
			continue
		}
		buf = buf[:op.n]
		if _, err := io.ReadFull(c, buf); err != nil {
			return fmt.Errorf("read data: %w", err)
		}
		for i, b := range buf {
			if j := int(op.off) + i; !m.ok(j, b) && bad == nil {
				bad = fmt.Errorf("READ %d+%d in its round: byte %d is %#x, want %#x",
					op.off, op.n, j, b, m.val[j])
			}
		}
	}
	if err := <-errc; err != nil {
		return fmt.Errorf("send requests: %w", err)
	}
	return bad
}

// stressCheck reads the region back after a round and compares it with the
// model. Wrong bytes are counted, reported, and taken into the model, so
// each later round is judged on its own.
func stressCheck(t *testing.T, tc *testClient, m *stressModel, round int) (bytes, blocks int) {
	t.Helper()
	got := make([]byte, len(m.val))
	if errno := tc.do(wire.CmdRead, 0, 0, uint32(len(got)), nil, got); errno != 0 {
		t.Fatalf("round %d: read back the region: %v", round, errno)
	}
	lastBlock := -1
	for i, b := range got {
		if !m.ok(i, b) {
			bytes++
			if blk := i / int(m.align); blk != lastBlock {
				blocks, lastBlock = blocks+1, blk
				if blocks <= 3 {
					t.Errorf("round %d: byte %d (block %d) holds %#x, want %#x; last "+
						"written by %s", round, i, blk, b, m.val[i], m.last[i])
				}
			}
		}
		m.val[i], m.maybeZero[i] = b, false
	}
	return bytes, blocks
}

// dialSpread dials n connections one at a time, each after the last has
// been placed, so placement by load spreads them over the shards.
func dialSpread(t *testing.T, srv *Server, sock string, n int) []*testClient {
	t.Helper()
	var cs []*testClient
	for i := 0; i < n; i++ {
		cs = append(cs, dial(t, sock, wire.ClientOptions{}))
		deadline := time.Now().Add(5 * time.Second)
		for {
			var conns int64
			for _, sh := range srv.shards {
				conns += sh.snapshot().Conns()
			}
			if conns == int64(i+1) {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("%d connections placed, want %d", conns, i+1)
			}
			time.Sleep(time.Millisecond)
		}
	}
	return cs
}

// stressRun plays the rounds against the served export and fails the test
// with the count of wrong bytes and blocks.
func stressRun(t *testing.T, srv *Server, sock string, exp *Export, trimZeroes bool) {
	cs := dialSpread(t, srv, sock, stressConns)
	align := uint64(exp.Align())
	region := min(stressBlocks*align, exp.Size())
	m := &stressModel{val: make([]byte, region), maybeZero: make([]bool, region),
		align: align, trimZeroes: trimZeroes, last: make([]string, region)}
	for i := range m.last {
		m.last[i] = "no request (the initial contents)"
	}
	rng := rand.New(rand.NewSource(16))
	var wrongBytes, wrongBlocks, reqs, echoes int
	stressCheck(t, cs[0], m, -1) // the initial contents
	for r := 0; r < stressRounds; r++ {
		ops := stressRound(rng, m, r)
		var wg sync.WaitGroup
		errs := make([]error, stressConns)
		for c := range cs {
			reqs += len(ops[c])
			for i := range ops[c] {
				if ops[c][i].echo {
					echoes++
				}
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				errs[c] = stressSend(cs[c].c, ops[c], m)
			}()
		}
		wg.Wait()
		for c, err := range errs {
			if err != nil {
				t.Fatalf("round %d, connection %d: %v", r, c, err)
			}
		}
		for c := range ops {
			for i := range ops[c] {
				m.apply(&ops[c][i], c)
			}
		}
		by, bl := stressCheck(t, cs[0], m, r)
		wrongBytes, wrongBlocks = wrongBytes+by, wrongBlocks+bl
	}
	t.Logf("%d rounds, %d requests (%d echoes) on %d connections over %d shards, "+
		"%d-byte blocks: %d wrong bytes in %d wrong blocks", stressRounds, reqs, echoes,
		stressConns, len(srv.shards), align, wrongBytes, wrongBlocks)
	if wrongBlocks > 0 {
		t.Errorf("%d bytes in %d blocks lost an acknowledged write, zero or trim "+
			"(blocks checked: %d a round, %d rounds)", wrongBytes, wrongBlocks,
			region/align, stressRounds)
	}
}

// TestStressPartialBlocks: every byte of a region that four connections on
// two shards write, zero and trim in partial blocks at once holds what the
// last round put there: read-modify-write never restores stale bytes over
// another request's write, zeroes or hole.
func TestStressPartialBlocks(t *testing.T) {
	for _, m := range inlineModes {
		t.Run("file/"+m.name, func(t *testing.T) {
			srv, sock, _ := testServerIO(t, 1<<20, 2, m.mode)
			stressRun(t, srv, sock, srv.reg.set.Load().exps[0], true)
		})
	}
	t.Run("loop", func(t *testing.T) {
		dev := loopDevice(t)
		exp, err := OpenExport(ExportConfig{Path: dev})
		if err != nil {
			t.Fatalf("serve loop device %s: %v", dev, err)
		}
		srv, sock := serveOn(t, t.TempDir(), Config{Shards: 2, ArenaSize: 128 << 20},
			[]*Export{exp})
		stressRun(t, srv, sock, exp, false)
	})
}
