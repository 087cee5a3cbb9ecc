package engine

import (
	"fmt"
	"log"
	"runtime"
	"sync/atomic"
	"unsafe"

	"github.com/nbdring/nbdring/ring"
	"github.com/nbdring/nbdring/wire"
	"golang.org/x/sys/unix"
)

// Operation kinds in user_data.
const (
	opWake  uint8 = iota + 1 // eventfd read: new connections or stop
	opRecv                   // a connection's socket receive
	opSend                   // a connection's reply sendmsg
	opIO                     // a slot's device operation
	opTimer                  // wake-up while requests wait for a range lock
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
	meta  []byte // reply headers, send vectors, eventfd and timer words

	slots    []slot
	slotFree []int32
	conns    []conn
	connFree []int32

	waiting []int32 // connections waiting for a slot or a buffer
	rmwWait []int32 // slots waiting for a range lock
	// spares swap with waiting and rmwWait while those are retried, so a
	// retry that waits again appends to a list nobody is iterating.
	waitingSpare []int32
	rmwSpare     []int32
	dirty        []int32 // connections with replies queued but not yet sent
	timerOn      bool
	// fixedBufs: the arena is registered as fixed buffer 0.
	fixedBufs bool
	timeout   *unix.Timespec
	wakeBuf   unsafe.Pointer
	efd       int
	inbox     chan handoff
	stopping  bool
	live      int // connections attached

	stats ShardStats
}

// ShardStats are one shard's counters, read by the counters page.
type ShardStats struct {
	Conns        atomic.Int64
	Requests     [wire.CmdCount]atomic.Uint64
	BytesRead    atomic.Uint64
	BytesWritten atomic.Uint64
	Errors       atomic.Uint64
	Inflight     atomic.Int64 // slots in use
	ArenaBytes   atomic.Int64 // arena bytes held by requests
}

type handoff struct {
	fd  int
	exp *Export
	neg wire.Negotiated
}

// metaLayout: per slot a reply header, per connection a msghdr and an
// iovec array, then the eventfd word and the timer's timespec.
const (
	msghdrSize = int(unsafe.Sizeof(unix.Msghdr{}))
	iovecSize  = int(unsafe.Sizeof(unix.Iovec{}))
	connMeta   = recvBufSize + msghdrSize + iovecsPerSendMax*iovecSize
	metaSize   = slotsPerShardMax*replyHeaderSize + connsPerShardMax*connMeta + 64
)

func newShard(srv *Server, id, cpu, arenaSize int) (*shard, error) {
	s := &shard{id: id, cpu: cpu, srv: srv, inbox: make(chan handoff, connsPerShardMax)}
	var err error
	if s.arena, err = newArena(arenaSize); err != nil {
		return nil, err
	}
	s.meta, err = unix.Mmap(-1, 0, metaSize, unix.PROT_READ|unix.PROT_WRITE,
		unix.MAP_PRIVATE|unix.MAP_ANONYMOUS|unix.MAP_POPULATE)
	if err != nil {
		s.arena.close()
		return nil, fmt.Errorf("map shard metadata: %w", err)
	}
	s.efd, err = unix.Eventfd(0, unix.EFD_CLOEXEC)
	if err != nil {
		s.close()
		return nil, fmt.Errorf("eventfd: %w", err)
	}
	s.slots = make([]slot, slotsPerShardMax)
	s.slotFree = make([]int32, 0, slotsPerShardMax)
	for i := slotsPerShardMax - 1; i >= 0; i-- {
		sl := &s.slots[i]
		sl.hdr = s.meta[i*replyHeaderSize : (i+1)*replyHeaderSize]
		sl.buf, sl.pbuf = -1, -1
		s.slotFree = append(s.slotFree, int32(i))
	}
	s.conns = make([]conn, connsPerShardMax)
	s.connFree = make([]int32, 0, connsPerShardMax)
	off := slotsPerShardMax * replyHeaderSize
	for i := connsPerShardMax - 1; i >= 0; i-- {
		c := &s.conns[i]
		base := off + i*connMeta
		c.rbuf = s.meta[base : base+recvBufSize : base+recvBufSize]
		base += recvBufSize
		c.msg = (*unix.Msghdr)(unsafe.Pointer(&s.meta[base]))
		c.iov = unsafe.Slice((*unix.Iovec)(unsafe.Pointer(&s.meta[base+msghdrSize])),
			iovecsPerSendMax)
		c.fd = -1
		s.connFree = append(s.connFree, int32(i))
	}
	tail := metaSize - 64
	s.wakeBuf = unsafe.Pointer(&s.meta[tail])
	s.timeout = (*unix.Timespec)(unsafe.Pointer(&s.meta[tail+16]))
	*s.timeout = unix.NsecToTimespec(rangeLockRetryNs)
	s.waiting = make([]int32, 0, connsPerShardMax)
	s.waitingSpare = make([]int32, 0, connsPerShardMax)
	s.rmwWait = make([]int32, 0, slotsPerShardMax)
	s.rmwSpare = make([]int32, 0, slotsPerShardMax)
	s.dirty = make([]int32, 0, connsPerShardMax)
	return s, nil
}

// rangeLockRetryNs: how soon a request waiting for another request's
// read-modify-write span looks again; such waits last one device write.
const rangeLockRetryNs = 100_000

func (s *shard) close() {
	if s.efd > 0 {
		unix.Close(s.efd)
	}
	if s.meta != nil {
		unix.Munmap(s.meta)
	}
	s.arena.close()
}

// wake asks the shard's loop to look at its inbox and stop flag.
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
	r, err := ring.New(ringEntries, reapBatch)
	if err != nil {
		ready <- fmt.Errorf("shard %d: %w", s.id, err)
		return
	}
	s.ring = r
	// The arena as fixed buffer 0: O_DIRECT I/O then skips pinning its
	// pages per request. Without it (RLIMIT_MEMLOCK too low for a non-root
	// user) the plain opcodes work the same, only slower.
	if err := r.RegisterBuffers(s.arena.mem); err != nil {
		log.Printf("shard %d: %v; using unregistered buffers (raise ulimit -l "+
			"to %d MiB or more for faster I/O)", s.id, err, len(s.arena.mem)>>20)
	} else {
		s.fixedBufs = true
	}
	s.armWake()
	ready <- nil
	err = s.loop()
	s.ring.Close()
	s.close()
	s.srv.shardDone(s, err)
}

// loop: queue work, submit and wait once, reap a batch, advance once.
func (s *shard) loop() error {
	for !s.stopping || s.live > 0 {
		s.retryWaiting()
		s.flushDirty()
		if len(s.rmwWait) > 0 && !s.timerOn {
			ring.PrepTimeout(s.ring.SQE(), s.timeout, ring.UserData(opTimer, 0, 0))
			s.timerOn = true
		}
		if err := s.ring.SubmitAndWait(1); err != nil {
			return err
		}
		cqes := s.ring.Reap()
		for _, cqe := range cqes {
			s.complete(cqe.UserData, cqe.Res)
		}
		s.ring.Advance(len(cqes))
	}
	return nil
}

func (s *shard) complete(ud uint64, res int32) {
	op, gen, idx := ring.SplitUserData(ud)
	switch op {
	case opWake:
		s.onWake()
	case opTimer:
		s.timerOn = false
	case opRecv:
		c := &s.conns[idx]
		assert(c.gen&ring.GenMask == gen, "recv completion for a recycled connection")
		s.onRecv(int32(idx), res)
	case opSend:
		c := &s.conns[idx]
		assert(c.gen&ring.GenMask == gen, "send completion for a recycled connection")
		s.onSend(int32(idx), res)
	case opIO:
		sl := &s.slots[idx]
		assert(sl.gen&ring.GenMask == gen, "I/O completion for a recycled slot")
		s.onIO(int32(idx), res)
	default:
		panic(fmt.Sprintf("shard %d: completion with unknown op %d", s.id, op))
	}
}

func (s *shard) armWake() {
	ring.PrepRead(s.ring.SQE(), s.efd, s.wakeBuf, 8, 0, ring.UserData(opWake, 0, 0))
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
		for i := range s.conns {
			if s.conns[i].fd >= 0 && !s.conns[i].closing {
				s.disconnectGracefully(int32(i))
			}
		}
	}
	if !s.stopping {
		s.armWake()
	}
}

// attach makes a handed-off connection this shard's and starts receiving.
func (s *shard) attach(h handoff) {
	if len(s.connFree) == 0 || s.stopping {
		log.Printf("shard %d: refusing connection: %d connections already (the most a "+
			"shard takes); add -shards", s.id, connsPerShardMax)
		unix.Close(h.fd)
		return
	}
	ci := s.connFree[len(s.connFree)-1]
	s.connFree = s.connFree[:len(s.connFree)-1]
	c := &s.conns[ci]
	c.reset(h)
	s.live++
	s.stats.Conns.Add(1)
	s.armRecv(ci)
}

// allocSlot takes a free slot for connection ci, or -1.
func (s *shard) allocSlot(ci int32) int32 {
	if len(s.slotFree) == 0 {
		return -1
	}
	i := s.slotFree[len(s.slotFree)-1]
	s.slotFree = s.slotFree[:len(s.slotFree)-1]
	sl := &s.slots[i]
	sl.gen++
	sl.conn, sl.next, sl.lock = ci, -1, -1
	sl.done, sl.phase, sl.nout, sl.nsegs = 0, 0, 0, 0
	s.conns[ci].inflight++
	s.stats.Inflight.Add(1)
	return i
}

// freeSlot releases a slot and its buffers and wakes waiters.
func (s *shard) freeSlot(i int32) {
	sl := &s.slots[i]
	c := &s.conns[sl.conn]
	s.freeBufs(sl, c)
	if sl.lock >= 0 {
		c.exp.locks.unlock(sl.lock)
		sl.lock = -1
	}
	sl.gen++
	c.inflight--
	s.stats.Inflight.Add(-1)
	s.slotFree = append(s.slotFree, i)
}

func (s *shard) freeBufs(sl *slot, c *conn) {
	if sl.buf >= 0 {
		c.bufBytes -= cap(sl.data)
		s.stats.ArenaBytes.Add(-int64(cap(sl.data)))
		s.arena.free(sl.buf)
		sl.buf, sl.data = -1, nil
	}
	s.freePayload(sl, c)
}

func (s *shard) freePayload(sl *slot, c *conn) {
	if sl.pbuf >= 0 {
		c.bufBytes -= cap(sl.payload)
		s.stats.ArenaBytes.Add(-int64(cap(sl.payload)))
		s.arena.free(sl.pbuf)
		sl.pbuf, sl.payload = -1, nil
	}
}

// retryWaiting gives connections that ran out of slots or buffers another
// go, and requests waiting for a range lock another try.
func (s *shard) retryWaiting() {
	if len(s.rmwWait) > 0 {
		w := s.rmwWait
		s.rmwWait, s.rmwSpare = s.rmwSpare[:0], w
		for _, si := range w {
			s.startRMW(si)
		}
	}
	if len(s.waiting) == 0 {
		return
	}
	w := s.waiting
	s.waiting, s.waitingSpare = s.waitingSpare[:0], w
	for _, ci := range w {
		c := &s.conns[ci]
		c.waiting = false
		if c.fd >= 0 && !c.closing {
			s.parse(ci)
		}
	}
}
