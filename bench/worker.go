package bench

import (
	"context"
	"encoding/binary"
	"fmt"
	"math/rand/v2"
	"net"
	"sync/atomic"
	"time"

	"github.com/nbdring/nbdring/wire"
)

// worker drives one connection from one goroutine: it keeps QD requests
// in flight, reads up to Batch replies per read, and answers them with new
// requests, all written with one write. Nothing on this path allocates.
//
// Taking every waiting reply per read makes a closed loop send its
// requests in convoys, and taking one per read costs two system calls per
// request; Batch chooses between the two. Measured on this project's
// 2-core VM, 4k randread QD32 against one nbdring shard, clients taking
// turns in alternating order (bench/crosscheck.sh), medians of the
// per-round ratios to fio's nbd engine:
//   - on tmpfs (the CPUs are the limit), 8 rounds: -batch 8 1.32, -batch 1
//     0.90 (another run: 1.21 and 0.94);
//   - on the virtio disk (the disk is the limit), 10 rounds: -batch 8 0.96,
//     -batch 1 1.03 (another run: 0.96 and 0.99); bursts raise the disk's
//     own latency (667 against 553 us in the first round).
//
// The client is what a load generator must keep out of the way, so the
// default is 8; -batch 1 sends one request per reply as libnbd does.
type worker struct {
	c    net.Conn
	cfg  *Config
	ex   wire.ClientExport
	stop *atomic.Bool

	lo     uint64   // first byte of this connection's range
	blocks uint64   // blocks of cfg.BS in it
	gens   []uint32 // verify: last generation written per block
	seq    uint64   // sequential position, in blocks
	rng    *rand.PCG
	limit  int64 // operations to issue (0: until stopped)
	issued int64

	ops      []op
	inflight int
	rbuf     []byte
	rlo, rhi int
	readMax  int // bytes per read: Batch read replies (16-byte write replies fit many more)
	wbuf     []byte
	pay      []byte // write payload without verify (random, shared read-only)
	start    time.Time

	hist       Histogram
	done       uint64
	errs       uint64
	verifyErrs uint64
	firstErr   string
	count      atomic.Uint64 // completions, for the progress line
}

type op struct {
	cmd   wire.Cmd
	block uint64
	gen   uint32
	sent  time.Duration // since w.start
	busy  bool
}

func dialWorker(ctx context.Context, tgt Target, cfg *Config, id int) (*worker, error) {
	var d net.Dialer
	c, err := d.DialContext(ctx, tgt.Network, tgt.Addr)
	if err != nil {
		return nil, fmt.Errorf("connect to %s %s: %w (is the server running?)", tgt.Network,
			tgt.Addr, err)
	}
	_ = c.SetDeadline(time.Now().Add(30 * time.Second))
	c, ex, err := tgt.Handshake(c, wire.ClientOptions{Name: tgt.Export, BlockSize: true})
	if err != nil {
		c.Close()
		return nil, fmt.Errorf("handshake with %s: %w", cfg.URI, err)
	}
	_ = c.SetDeadline(time.Time{})
	if ex.BlockMin > 0 && cfg.BS%int(ex.BlockMin) != 0 {
		c.Close()
		return nil, fmt.Errorf("-bs %d is not a multiple of the server's minimum block "+
			"size %d", cfg.BS, ex.BlockMin)
	}
	if ex.BlockMax > 0 && cfg.BS > int(ex.BlockMax) {
		c.Close()
		return nil, fmt.Errorf("-bs %d exceeds the server's maximum block size %d",
			cfg.BS, ex.BlockMax)
	}
	if cfg.writes() && ex.Flags&wire.TxReadOnly != 0 {
		c.Close()
		return nil, fmt.Errorf("%s is read-only; use -rw read or randread", cfg.URI)
	}
	w := newWorker(c, cfg, id)
	w.ex = ex
	return w, nil
}

// newWorker sizes a worker's buffers for cfg on connection c.
func newWorker(c net.Conn, cfg *Config, id int) *worker {
	reply := wire.SimpleReplySize + cfg.BS
	batch := cfg.Batch
	if batch == 0 {
		batch = DefaultBatch
	}
	batch = min(batch, cfg.QD)
	w := &worker{c: c, cfg: cfg, rng: rand.NewPCG(uint64(id)+1, 0x6e6264),
		ops: make([]op, cfg.QD), readMax: batch * reply,
		rbuf: make([]byte, max((batch+1)*reply, 256<<10)),
		wbuf: make([]byte, 0, cfg.QD*(wire.RequestSize+cfg.BS))}
	if cfg.writes() && !cfg.Verify {
		w.pay = make([]byte, cfg.BS)
		fill := rand.New(rand.NewPCG(7, uint64(id)))
		for i := 0; i+8 <= len(w.pay); i += 8 {
			binary.LittleEndian.PutUint64(w.pay[i:], fill.Uint64())
		}
	}
	return w
}

func (w *worker) run() {
	w.start = time.Now()
	for i := range w.ops {
		if !w.issue(i) {
			break
		}
	}
	for w.inflight > 0 {
		if !w.flush() || !w.fill() {
			return
		}
		w.reap()
	}
	w.flush()
}

// close ends the connection the way the protocol asks: NBD_CMD_DISC, then
// close.
func (w *worker) close() {
	var hdr [wire.RequestSize]byte
	wire.EncodeRequest(hdr[:], &wire.Request{Type: wire.CmdDisc})
	// A server blocked sending to a client that stopped reading (a lost
	// stream) must not hold the close up.
	_ = w.c.SetWriteDeadline(time.Now().Add(time.Second))
	_, _ = w.c.Write(hdr[:])
	w.c.Close()
}

// fill reads what the socket has, up to readMax bytes past the first
// unconsumed one (reap has taken every whole reply before it, so what is
// left is less than one reply).
func (w *worker) fill() bool {
	if w.rlo == w.rhi {
		w.rlo, w.rhi = 0, 0
	} else if len(w.rbuf)-w.rlo < w.readMax {
		w.rhi = copy(w.rbuf, w.rbuf[w.rlo:w.rhi])
		w.rlo = 0
	}
	n, err := w.c.Read(w.rbuf[w.rhi : w.rlo+w.readMax])
	if err != nil {
		w.fail(fmt.Sprintf("connection lost with %d requests in flight: %v", w.inflight, err))
		return false
	}
	w.rhi += n
	return true
}

// reap completes every whole reply in the buffer and issues successors.
func (w *worker) reap() {
	for w.rhi-w.rlo >= wire.SimpleReplySize {
		b := w.rbuf[w.rlo:w.rhi]
		if binary.BigEndian.Uint32(b) != wire.MagicSimple {
			w.fail(fmt.Sprintf("reply magic %#x: the stream is lost", binary.BigEndian.Uint32(b)))
			w.inflight = 0
			return
		}
		errno := wire.Errno(binary.BigEndian.Uint32(b[4:]))
		i := binary.BigEndian.Uint64(b[8:])
		if i >= uint64(len(w.ops)) || !w.ops[i].busy {
			w.fail(fmt.Sprintf("reply for unknown cookie %d", i))
			w.inflight = 0
			return
		}
		o := &w.ops[i]
		need := wire.SimpleReplySize
		if o.cmd == wire.CmdRead && errno == wire.EOK {
			need += w.cfg.BS
		}
		if len(b) < need {
			return
		}
		w.complete(o, errno, b[wire.SimpleReplySize:need])
		w.rlo += need
		w.issue(int(i)) // a successor, unless the run is over
	}
}

func (w *worker) complete(o *op, errno wire.Errno, data []byte) {
	w.hist.Record(time.Since(w.start) - o.sent)
	w.done++
	w.count.Add(1)
	w.inflight--
	o.busy = false
	off := w.lo + o.block*uint64(w.cfg.BS)
	if errno != wire.EOK {
		w.errs++
		if w.firstErr == "" {
			w.firstErr = fmt.Sprintf("%v at offset %d: %v", o.cmd, off, errno)
		}
		return
	}
	if !w.cfg.Verify {
		return
	}
	if o.cmd == wire.CmdWrite {
		w.gens[o.block] = o.gen
		return
	}
	if e := checkPattern(data, off, uint64(w.gens[o.block])); e != nil {
		w.verifyErrs++
		if w.firstErr == "" {
			w.firstErr = e.Error()
		}
	}
}

func (w *worker) fail(msg string) {
	w.errs++
	if w.firstErr == "" {
		w.firstErr = msg
	}
}

// issue starts a new request in ops[i], unless the run is over.
func (w *worker) issue(i int) bool {
	if w.stop.Load() || w.limit > 0 && w.issued >= w.limit {
		return false
	}
	w.issued++
	o := &w.ops[i]
	o.cmd = wire.CmdRead
	switch w.cfg.RW {
	case "write", "randwrite":
		o.cmd = wire.CmdWrite
	case "randrw":
		if int(w.rng.Uint64()%100) >= w.cfg.Mix {
			o.cmd = wire.CmdWrite
		}
	}
	o.block = w.pick()
	o.busy, o.sent = true, time.Since(w.start)
	w.inflight++
	bs := uint64(w.cfg.BS)
	off := w.lo + o.block*bs
	r := wire.Request{Type: o.cmd, Cookie: uint64(i), Offset: off, Length: bs}
	n := len(w.wbuf)
	w.wbuf = w.wbuf[:n+wire.RequestSize]
	wire.EncodeRequest(w.wbuf[n:], &r)
	if o.cmd == wire.CmdWrite {
		n = len(w.wbuf)
		w.wbuf = w.wbuf[:n+w.cfg.BS]
		if w.cfg.Verify {
			o.gen = w.gens[o.block] + 1
			fillPattern(w.wbuf[n:], off, uint64(o.gen))
		} else {
			copy(w.wbuf[n:], w.pay)
		}
	}
	return true
}

// pick chooses the next block: sequential, or random but never one with a
// request already in flight when verifying (its expected content would be
// ambiguous).
func (w *worker) pick() uint64 {
	if w.cfg.RW == "read" || w.cfg.RW == "write" {
		b := w.seq
		w.seq = (w.seq + 1) % w.blocks
		return b
	}
	for {
		b := w.rng.Uint64() % w.blocks
		if !w.cfg.Verify || !w.blockBusy(b) {
			return b
		}
	}
}

func (w *worker) blockBusy(b uint64) bool {
	for i := range w.ops {
		if w.ops[i].busy && w.ops[i].block == b {
			return true
		}
	}
	return false
}

// flush writes every queued request in one write.
func (w *worker) flush() bool {
	if len(w.wbuf) == 0 {
		return true
	}
	_, err := w.c.Write(w.wbuf)
	w.wbuf = w.wbuf[:0]
	if err != nil {
		w.fail(fmt.Sprintf("write to server: %v", err))
		return false
	}
	return true
}
