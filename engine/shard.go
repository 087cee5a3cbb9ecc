package engine

import (
	"fmt"
	"log/slog"
	"runtime"
	"sync/atomic"

	"github.com/nbdring/nbdring/ring"
	"github.com/nbdring/nbdring/wire"
	"golang.org/x/sys/unix"
)

// shard is one CPU's share of the server: a pinned goroutine that owns an
// io_uring, a buffer arena, a slot table and its connections. Nothing in it
// is touched by another goroutine except inbox, wake and the counters.
type shard struct {
	id    int
	cpu   int
	srv   *Server
	ring  *ring.Ring
	arena *arena
	mem   *shardMem

	slots slotTable // requests, their buffers and budgets (slot.go)
	rx    rx        // receive pool, read cursors, starved receives (rx.go)
	tx    sender    // reply queues, send batches, zero-copy (sender.go)
	dev   deviceIO  // device phases, range-lock waiters (devio.go)
	conns connTable // connections, free and waiting lists (conntable.go)

	timerOn  bool
	tickOn   bool // the -io-timeout tick is armed (stall.go)
	efd      int
	inbox    chan handoff
	assigned atomic.Int64 // connections handed to this shard and not yet released
	stopping bool         // draining: new requests get ESHUTDOWN, idle connections close
	cutting  bool         // the grace is over: every connection is closed now

	stats  ShardStats
	m      shardMetrics // per-request counters and timing (metrics.go)
	led    ledger       // kernel operations: generations, holds (ledger.go)
	qos    qosShard     // per-export limits: connections waiting for tokens (qos.go)
	regGen uint64       // the registry generation checkRetired last saw (reload.go)
	turn   turn         // sends submitted since the last wait (poll.go)
}

// ShardStats are one shard's counters (per request ones: shardMetrics),
// read by Snapshot.
type ShardStats struct {
	Inflight     atomic.Int64  // slots in use, also those the kernel still holds
	ArenaBytes   atomic.Int64  // arena bytes held by requests
	OpsInflight  atomic.Int64  // kernel operations in flight (the ledger)
	Stale        atomic.Uint64 // completions dropped for a stale generation: a defect
	SendsZC      atomic.Uint64 // zero-copy sends issued
	ZCCopied     atomic.Uint64 // their notifications that said the kernel copied
	ZCRefused    atomic.Uint64 // connections whose socket refused zero-copy
	ZCBytes      atomic.Uint64 // bytes the kernel took from zero-copy sends
	ZCDisabled   atomic.Uint64 // connections that stopped zero-copy: it kept copying
	InlineOps    atomic.Uint64 // device operations the shard did itself (Export.inline)
	Sends        atomic.Uint64 // reply batches sent (plaintext; a TLS reply is records)
	SentReplies  atomic.Uint64 // replies in them
	Recvs        atomic.Uint64 // receives into the pool that brought data
	RecvBufs     atomic.Uint64 // pool buffers they filled (more than Recvs: bundles)
	RecvNoBufs   atomic.Uint64 // receives that found the pool empty (ENOBUFS)
	RecvBufsFree atomic.Int64  // pool buffers the kernel may fill now
	// Punts counts device operations the ring runs on an io-wq thread, by
	// reason (puntEAGAIN...).
	Punts [puntReasons]atomic.Uint64
	// IOTimeouts counts connections cut by -io-timeout (stall.go).
	IOTimeouts atomic.Uint64
}

type handoff struct {
	fd   int
	exp  *Export
	neg  wire.Negotiated
	peer string    // the client's address, for logs
	tcp  bool      // a TCP socket (zero-copy sends are possible)
	tls  *tlsState // nil: plaintext
}

// newShard builds shard id, for CPU cpu, as srv.sz says.
func newShard(srv *Server, id, cpu int) (*shard, error) {
	sz := srv.sz
	s := &shard{id: id, cpu: cpu, srv: srv, inbox: make(chan handoff, sz.conns)}
	s.m.init(exportsMax)
	s.led.init(id, sz.slots, sz.conns, &s.stats)
	s.qos.init(sz.conns)
	var err error
	if s.arena, err = newArena(sz.arena); err != nil {
		return nil, err
	}
	if s.mem, err = newShardMem(sz.slots, sz.conns); err != nil {
		s.close()
		return nil, err
	}
	s.dev.zeros, err = unix.Mmap(-1, 0, zeroWriteMax, unix.PROT_READ,
		unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		s.close()
		return nil, fmt.Errorf("map %d KiB of zeros: %w", zeroWriteMax>>10, err)
	}
	s.efd, err = unix.Eventfd(0, unix.EFD_CLOEXEC)
	if err != nil {
		s.close()
		return nil, fmt.Errorf("eventfd: %w", err)
	}
	s.slots.init(&srv.sz, s.arena, &s.stats, s.mem.hdrs)
	s.rx.init(sz.conns, &s.stats)
	s.tx.init(sz.conns, s.slots.rows, s.mem.conns, &s.m, &s.stats)
	s.dev.init(id, sz.conns, sz.slots, sz.blockMax, &s.led, &s.slots, &s.tx, &s.m, &s.stats)
	s.conns.init(sz.conns, id)
	s.mem.words.timeout = unix.NsecToTimespec(rangeLockRetry.Nanoseconds())
	s.mem.words.tick = unix.NsecToTimespec(srv.ioTick.Nanoseconds())
	return s, nil
}

func (s *shard) close() {
	if s.efd > 0 {
		unix.Close(s.efd)
	}
	if s.dev.zeros != nil {
		unix.Munmap(s.dev.zeros)
	}
	s.mem.close()
	s.arena.close()
}

// wake asks the shard's loop to look at its inbox and the server's state.
func (s *shard) wake() {
	var one = [8]byte{1}
	_, _ = unix.Write(s.efd, one[:])
}

// run is the shard's goroutine: pin, create the ring, then loop until
// stopped and every connection is gone. ready receives the setup result.
func (s *shard) run(ready chan<- error) {
	runtime.LockOSThread() // never unlocked: the ring belongs to this thread
	var set unix.CPUSet
	set.Set(s.cpu)
	if err := unix.SchedSetaffinity(0, &set); err != nil {
		ready <- fmt.Errorf("shard %d: pin to CPU %d: %w", s.id, s.cpu, err)
		return
	}
	r, err := ring.New(s.srv.sz.ring, reapBatch, waitHold)
	if err != nil {
		ready <- fmt.Errorf("shard %d: %w", s.id, err)
		return
	}
	s.ring, s.dev.ring = r, r
	r.SetSpin(s.srv.poll)
	if s.rx.pool, err = newRecvPool(r, s.srv.sz.recvBufs, s.srv.bundles); err != nil {
		r.Close()
		ready <- fmt.Errorf("shard %d: %w", s.id, err)
		return
	}
	// The arena as fixed buffer 0: O_DIRECT I/O then skips pinning its
	// pages per request. Without it (RLIMIT_MEMLOCK too low for a non-root
	// user) the plain opcodes work the same, only slower.
	if err := r.RegisterBuffers(s.arena.mem); err != nil {
		slog.Warn(fmt.Sprintf("shard %d: %v; using unregistered buffers (raise ulimit -l "+
			"to %d MiB or more for faster I/O)", s.id, err, len(s.arena.mem)>>20),
			"shard", s.id)
	} else {
		s.dev.fixedBufs = true
	}
	s.armWake()
	ready <- nil
	err = s.loop()
	s.ring.Close()
	s.rx.pool.close()
	s.close()
	s.srv.shardDone(s, err)
}

// loop: queue work, submit and wait once, reap a batch, advance once. It
// ends once the server stops and no connection or device operation is
// left (the wake-up read is cancelled with the ring).
func (s *shard) loop() error {
	for !s.stopping || s.conns.live > 0 || s.led.ioOps > 0 {
		s.retryWaiting()
		s.retryStarved()
		s.flushDirty()
		if (s.dev.lockWaiting() || s.qos.waiting > 0) && !s.timerOn {
			ring.PrepTimeout(s.issue(opTimer, 0), &s.mem.words.timeout)
			s.timerOn = true
		}
		s.armTick()
		wait := s.turn.waitNr()
		if len(s.led.local) > 0 {
			wait = 0 // inline completions are waiting already
		}
		s.rx.publish()
		if err := s.submitAndWait(wait); err != nil {
			return err
		}
		s.m.newBatch(wait)
		cqes := s.ring.Reap()
		for _, cqe := range cqes {
			s.complete(cqe)
		}
		s.ring.Advance(len(cqes))
		s.completeLocal()
	}
	return nil
}

// submitAndWait submits what the loop queued and waits for wait
// completions (0 or 1); with a batch wait and more than one request in
// flight it waits for a batch instead (Server.batchWait).
func (s *shard) submitAndWait(wait uint32) error {
	if n := s.stats.Inflight.Load(); wait > 0 && s.srv.batchWait > 0 && n > 1 {
		return s.ring.SubmitAndWaitMin(uint32(min(n, batchWaitNr)), s.srv.batchWait)
	}
	return s.ring.SubmitAndWait(wait)
}

func (s *shard) armWake() {
	w := &s.mem.words.wake
	ring.PrepRead(s.issue(opWake, 0), s.efd, bytesAt(w[:]), uint32(len(w)), 0)
}

func (s *shard) onWake() {
	for {
		select {
		case h := <-s.inbox:
			s.attach(h)
			continue
		default:
		}
		break
	}
	if s.srv.stopping.Load() && !s.stopping {
		s.stopping = true
		for i := range s.conns.rows {
			// In flight requests finish and their replies go out, new
			// ones get ESHUTDOWN (proto.md), then it closes.
			ci := int32(i)
			if !s.conns.active(ci) {
				continue
			}
			if s.conns.drain(ci) {
				s.cutConn(ci) // halfway through a payload: connTable.drain
			} else {
				s.maybeFinish(ci)
			}
		}
	}
	if s.srv.cutting.Load() && !s.cutting {
		s.cutting = true
		for i := range s.conns.rows {
			if s.conns.active(int32(i)) {
				s.cutConn(int32(i))
			}
		}
	}
	s.checkRetired()
	s.armWake()
}

// attach makes a handed-off connection this shard's and starts receiving.
func (s *shard) attach(h handoff) {
	if s.stopping || s.conns.full() {
		if s.stopping {
			slog.Info("closing connection: the server is shutting down",
				"client", h.peer, "shard", s.id)
		} else {
			slog.Warn(fmt.Sprintf("refusing connection: %d connections already "+
				"(this shard's share of -max-connections); raise -max-connections",
				s.srv.sz.conns),
				"client", h.peer, "shard", s.id)
		}
		unix.Close(h.fd)
		if h.tls != nil {
			h.tls.pipe.release()
		}
		s.assigned.Add(-1)
		h.exp.reg.leave()
		return
	}
	ci := s.conns.open(h, s.srv.sz.blockMax)
	var stage []byte
	if h.tls != nil {
		stage = h.tls.pipe.stage
	}
	s.rx.reset(ci, stage)
	s.led.renewConn(ci)
	s.tx.reset(ci, s.conns.rows[ci].style, s.ring.SendZC && !s.srv.noZC)
	s.dev.attach(ci, s.conns.rows[ci].style, h.peer)
	s.m.connAttached(ci, h.exp.reg.idx)
	s.conns.logConnect(ci)
	s.armRecv(ci)
}

// retryWaiting gives connections that ran out of slots or buffers another
// go, and requests waiting for a range lock another try.
func (s *shard) retryWaiting() {
	s.dev.retryLocked()
	for _, ci := range s.conns.takeWaiting() {
		c := &s.conns.rows[ci]
		// A TLS connection may be here for plaintext crypto/tls still
		// holds (tlsState.more): decrypt it first.
		if c.fd >= 0 && !c.closing && (c.tls == nil || s.tlsPump(ci)) {
			s.parse(ci)
		}
	}
}

// retryStarved arms again the receives that found the pool empty, once
// buffers are back.
func (s *shard) retryStarved() {
	for _, ci := range s.rx.takeStarved() {
		if c := &s.conns.rows[ci]; c.fd >= 0 && !c.closing {
			s.armRecv(ci)
		}
	}
}
