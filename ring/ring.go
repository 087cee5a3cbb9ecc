// Package ring is a thin, concrete layer over giouring for one shard: ring
// setup with explicit flags, a feature probe with actionable errors, the
// user_data encoding, batch submit and reap, and the one place that decides
// what EINTR, EAGAIN, EBUSY and a full submission queue mean. It knows
// nothing of NBD.
//
// A Ring is owned by one goroutine that has locked its OS thread: the ring
// is created with IORING_SETUP_SINGLE_ISSUER and DEFER_TASKRUN, which tie
// it to the creating thread.
package ring

import (
	"errors"
	"fmt"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"

	"github.com/pawelgaczynski/giouring"
	"golang.org/x/sys/unix"
)

// SQE and CQE are giouring's submission and completion entries.
type (
	SQE = giouring.SubmissionQueueEntry
	CQE = giouring.CompletionQueueEvent
)

// Stats counts ring activity for the shard's counters page; atomics
// because the page reads them from another goroutine.
type Stats struct {
	Enters      atomic.Uint64 // io_uring_enter calls
	Submitted   atomic.Uint64 // SQEs handed to the kernel
	Completions atomic.Uint64 // CQEs reaped
	// HoldTimeouts: waits that outlasted the hold and went on as ordinary
	// system calls (an idle shard, or a gap between requests that long).
	HoldTimeouts atomic.Uint64
	// Spins: waits that spun on the completion queue first (SetSpin);
	// SpinHits: those that found their completions without sleeping.
	Spins    atomic.Uint64
	SpinHits atomic.Uint64
}

// Ring is one io_uring with a preallocated completion batch.
type Ring struct {
	r     *giouring.Ring
	batch []*CQE
	Stats Stats
	// SendZC: the kernel has IORING_OP_SENDMSG_ZC (Linux 6.1), probed at
	// start; callers fall back to SENDMSG without it.
	SendZC bool
	arg    getEventsArg // SubmitAndWaitMin's, kept here so a wait allocates nothing
	// hold bounds a wait done as a raw system call (enterOnce); holdTS and
	// holdArg are its timeout, kept here so a wait allocates nothing.
	hold    time.Duration
	holdTS  unix.Timespec
	holdArg getEventsArg
	// spin is how long a wait may spin before it sleeps (SetSpin; 0:
	// never); hot says whether the next wait spins (spin.go); epoch is
	// the spin's clock's zero.
	spin  time.Duration
	hot   bool
	epoch time.Time
}

// required lists the opcodes every shard uses; the probe checks them once
// at start so a missing one is an error at start, not a failed request.
var required = []struct {
	op   uint8
	name string
}{
	{giouring.OpRecv, "RECV"}, {giouring.OpSendmsg, "SENDMSG"},
	{giouring.OpRead, "READ"}, {giouring.OpWrite, "WRITE"},
	{giouring.OpFsync, "FSYNC"}, {giouring.OpFallocate, "FALLOCATE"},
	{giouring.OpReadFixed, "READ_FIXED"}, {giouring.OpWriteFixed, "WRITE_FIXED"},
	{giouring.OpTimeout, "TIMEOUT"},
}

// setupFlags: one thread submits (SINGLE_ISSUER) and completions are run
// only when that thread asks for them (DEFER_TASKRUN), so the kernel never
// interrupts the shard to post completions. Both need Linux 6.1.
// TASKRUN_FLAG makes the kernel flag deferred completions in the SQ
// flags, which is what a spinning wait looks at (spin.go; Linux 5.19).
const setupFlags = giouring.SetupSingleIssuer | giouring.SetupDeferTaskrun |
	giouring.SetupTaskrunFlag

// New creates a ring with entries submission slots (the completion queue
// gets twice as many) and checks that the kernel has what the shard needs.
// batch is how many completions one Reap returns at most; hold is how
// long a wait may keep the thread's P (enterOnce; 0: never).
func New(entries uint32, batch int, hold time.Duration) (*Ring, error) {
	r := giouring.NewRing()
	if err := r.QueueInit(entries, setupFlags); err != nil {
		switch {
		case errors.Is(err, syscall.ENOSYS):
			return nil, errors.New("io_uring is not available in this kernel " +
				"(needs Linux >= 6.1 built with CONFIG_IO_URING)")
		case errors.Is(err, syscall.EPERM):
			return nil, errors.New("io_uring is disabled for this process: " +
				"set sysctl kernel.io_uring_disabled=0, or run outside a seccomp " +
				"profile that blocks it")
		case errors.Is(err, syscall.EINVAL):
			return nil, errors.New("io_uring lacks SINGLE_ISSUER/DEFER_TASKRUN: " +
				"nbdring needs Linux >= 6.1")
		case errors.Is(err, syscall.ENOMEM):
			return nil, errors.New("io_uring setup: out of locked memory: raise " +
				"RLIMIT_MEMLOCK (ulimit -l) or lower -shards")
		}
		return nil, fmt.Errorf("io_uring setup: %w", err)
	}
	ring := &Ring{r: r, batch: make([]*CQE, batch), hold: hold, epoch: time.Now(),
		holdTS: unix.NsecToTimespec(hold.Nanoseconds())}
	if err := ring.probe(); err != nil {
		r.QueueExit()
		return nil, err
	}
	return ring, nil
}

func (rg *Ring) probe() error {
	p, err := rg.r.GetProbeRing()
	if err != nil {
		return fmt.Errorf("io_uring probe: %w (needs Linux >= 6.1)", err)
	}
	for _, op := range required {
		if !p.IsSupported(op.op) {
			return fmt.Errorf("io_uring lacks IORING_OP_%s: nbdring needs Linux >= 6.1",
				op.name)
		}
	}
	rg.SendZC = p.IsSupported(giouring.OpSendMsgZC)
	return nil
}

// Close releases the ring. Operations still in flight are cancelled by the
// kernel; their buffers must stay mapped until then, so callers unmap
// their arena only after Close.
func (rg *Ring) Close() { rg.r.QueueExit() }

// SQE returns a zeroed submission entry. When the submission queue is full
// it first submits what is queued (without waiting), which is always
// possible because the completion queue is twice the size and completions
// are reaped every loop.
func (rg *Ring) SQE() *SQE {
	for {
		if sqe := rg.r.GetSQE(); sqe != nil {
			*sqe = SQE{}
			return sqe
		}
		if _, err := rg.submit(0); err != nil {
			// A full CQ (EBUSY): nothing more can be queued until the
			// shard reaps; that cannot happen with the sizes chosen here.
			panic(fmt.Sprintf("ring: submission queue full and submit failed: %v", err))
		}
	}
}

// SubmitAndWait submits queued entries and waits for at least wait
// completions. EINTR (the Go runtime's preemption signal) is retried;
// EAGAIN and EBUSY mean the kernel wants completions reaped first, which
// the caller's next Reap does, so they are not errors.
func (rg *Ring) SubmitAndWait(wait uint32) error {
	_, err := rg.submit(wait)
	return err
}

func (rg *Ring) submit(wait uint32) (uint, error) {
	for {
		n, err := rg.enterOnce(wait)
		switch {
		case err == nil:
			rg.Stats.Submitted.Add(uint64(n))
			return n, nil
		case errors.Is(err, syscall.EINTR):
			continue
		case errors.Is(err, syscall.EAGAIN), errors.Is(err, syscall.EBUSY):
			return 0, nil
		}
		return 0, fmt.Errorf("io_uring_enter: %w", err)
	}
}

// enterOnce submits what is queued and, with wait, waits: spinning first
// where the ring has a spin time and is hot (spin.go), else in the kernel
// (waitKernel).
func (rg *Ring) enterOnce(wait uint32) (uint, error) {
	submit := flushSQ(rg.r)
	if wait == 0 {
		return rg.enter(unix.RawSyscall6, submit, 0, 0, nil, 0)
	}
	if rg.spin > 0 {
		return rg.waitSpun(submit, wait)
	}
	return rg.waitKernel(submit, wait)
}

// waitKernel submits and waits for wait completions in two steps. First
// as a raw system call bounded by the ring's hold time: the Go runtime is
// not told the thread is in a system call, so it does not hand the
// shard's P to another thread while the shard sleeps, nor make the shard
// win one back when it wakes (that hand-off was a quarter of a request's
// CPU at queue depth 1 here). Then, if nothing came within the hold, as
// an ordinary system call, so an idle shard gives its P back and nothing
// else waits on it for longer than the hold. A wait for more than one
// completion settles for those already there once the hold has passed
// (with no hold: for one), so a completion never waits for company
// longer than the hold.
func (rg *Ring) waitKernel(submit, wait uint32) (uint, error) {
	if rg.hold <= 0 {
		return rg.enter(unix.Syscall6, submit, 1, giouring.EnterGetEvents, nil, 0)
	}
	rg.holdArg = getEventsArg{sigmaskSz: 8, ts: uint64(uintptr(unsafe.Pointer(&rg.holdTS)))}
	n, err := rg.enter(unix.RawSyscall6, submit, wait,
		giouring.EnterGetEvents|giouring.EnterExtArg, unsafe.Pointer(&rg.holdArg),
		int(unsafe.Sizeof(rg.holdArg)))
	// A wait that timed out says ETIME, or, when the enter submitted
	// something, the count: then only an empty queue tells.
	ready := rg.r.CQReady()
	timedOut := errors.Is(err, syscall.ETIME) || err == nil && ready < wait
	if !timedOut {
		return n, err
	}
	rg.Stats.HoldTimeouts.Add(1)
	if ready > 0 {
		return n, nil
	}
	m, err := rg.enter(unix.Syscall6, flushSQ(rg.r), 1, giouring.EnterGetEvents, nil, 0)
	return n + m, err
}

// syscall6 is unix.Syscall6 or unix.RawSyscall6.
type syscall6 func(trap, a1, a2, a3, a4, a5, a6 uintptr) (r1, r2 uintptr, err unix.Errno)

// enter is io_uring_enter through call.
func (rg *Ring) enter(call syscall6, submit, wait, flags uint32, arg unsafe.Pointer,
	argSize int) (uint, error) {
	rg.Stats.Enters.Add(1)
	n, _, errno := call(unix.SYS_IO_URING_ENTER, uintptr(rg.r.RingFd()), uintptr(submit),
		uintptr(wait), uintptr(flags), uintptr(arg), uintptr(argSize))
	if errno != 0 {
		return 0, errno
	}
	return uint(n), nil
}

// Reap returns up to a batch of completions without waiting. The caller
// handles them and then calls Advance(len).
func (rg *Ring) Reap() []*CQE {
	n := rg.r.PeekBatchCQE(rg.batch)
	rg.Stats.Completions.Add(uint64(n))
	return rg.batch[:n]
}

// Advance marks n reaped completions as consumed.
func (rg *Ring) Advance(n int) { rg.r.CQAdvance(uint32(n)) }

// UserData packs an operation kind (8 bits), a generation (24 bits) and an
// index (32 bits) into a completion's user_data. It is an index, never a
// pointer: a completion is matched to its owner by index and checked by
// generation.
func UserData(op uint8, gen uint32, index uint32) uint64 {
	return uint64(op)<<56 | uint64(gen&GenMask)<<32 | uint64(index)
}

// GenMask bounds generations to the 24 bits user_data has for them.
const GenMask = 1<<24 - 1

// CQE flags (linux/io_uring.h). CQEMore: more completions of the same
// operation follow (multishot, or a zero-copy send whose notification is
// still to come); the operation is in flight until a CQE without it.
// CQENotif marks a zero-copy send's notification.
const (
	CQEMore  = giouring.CQEFMore
	CQENotif = giouring.CQEFNotif
)

// SplitUserData undoes UserData.
func SplitUserData(ud uint64) (op uint8, gen uint32, index uint32) {
	return uint8(ud >> 56), uint32(ud>>32) & GenMask, uint32(ud)
}

// Prep helpers fill an SQE from the caller's ledger, which has zeroed it
// and stamped its user_data; they leave user_data alone. Addresses must
// stay valid (and outside the Go heap, or pinned) until the operation's
// last completion arrives.

// PrepRecv receives up to n bytes at p from socket fd.
func PrepRecv(e *SQE, fd int, p unsafe.Pointer, n uint32) {
	e.OpCode, e.Fd, e.Addr, e.Len = giouring.OpRecv, int32(fd), uint64(uintptr(p)), n
}

// PrepSendmsg sends msg on socket fd; MSG_NOSIGNAL so a vanished client is
// an EPIPE result, not a signal.
func PrepSendmsg(e *SQE, fd int, msg *unix.Msghdr) {
	e.OpCode, e.Fd, e.Addr, e.Len = giouring.OpSendmsg, int32(fd), uint64(uintptr(unsafe.Pointer(msg))), 1
	e.OpcodeFlags = unix.MSG_NOSIGNAL
}

// PrepSendmsgZC is PrepSendmsg without the copy into the socket: the
// kernel sends from msg's buffers and posts two CQEs, the result (with
// CQEMore) and, once the buffers may be reused, a notification (CQENotif)
// whose result has NotifCopied set when it copied after all (loopback
// always does). The buffers must stay untouched until the notification.
func PrepSendmsgZC(e *SQE, fd int, msg *unix.Msghdr) {
	PrepSendmsg(e, fd, msg)
	e.OpCode = giouring.OpSendMsgZC
	e.IoPrio = giouring.SendZCReportUsage
}

// NotifCopied in a zero-copy notification's result: the data was copied.
const NotifCopied = giouring.NotifUsageZCCopied

// PrepRead reads n bytes at off of fd into p.
func PrepRead(e *SQE, fd int, p unsafe.Pointer, n uint32, off uint64) {
	e.OpCode, e.Fd, e.Addr, e.Len, e.Off = giouring.OpRead, int32(fd), uint64(uintptr(p)), n, off
}

// RegisterBuffers registers memory regions as fixed buffers (index = their
// position) so reads and writes into them skip per-request page pinning.
func (rg *Ring) RegisterBuffers(bufs ...[]byte) error {
	iov := make([]syscall.Iovec, len(bufs))
	for i, b := range bufs {
		iov[i] = syscall.Iovec{Base: unsafe.SliceData(b), Len: uint64(len(b))}
	}
	if _, err := rg.r.RegisterBuffers(iov); err != nil {
		return fmt.Errorf("register %d fixed buffers: %w", len(bufs), err)
	}
	return nil
}

// PrepReadFixed is PrepRead into registered buffer buf.
func PrepReadFixed(e *SQE, fd int, p unsafe.Pointer, n uint32, off uint64, buf uint16) {
	PrepRead(e, fd, p, n, off)
	e.OpCode, e.BufIG = giouring.OpReadFixed, buf
}

// PrepWriteFixed is PrepWrite from registered buffer buf.
func PrepWriteFixed(e *SQE, fd int, p unsafe.Pointer, n uint32, off uint64, rwf uint32,
	buf uint16) {
	PrepWrite(e, fd, p, n, off, rwf)
	e.OpCode, e.BufIG = giouring.OpWriteFixed, buf
}

// PrepWrite writes n bytes at off of fd from p with RWF_* flags rwf
// (RWF_DSYNC for FUA).
func PrepWrite(e *SQE, fd int, p unsafe.Pointer, n uint32, off uint64, rwf uint32) {
	e.OpCode, e.Fd, e.Addr, e.Len, e.Off = giouring.OpWrite, int32(fd), uint64(uintptr(p)), n, off
	e.OpcodeFlags = rwf
}

// PrepFdatasync flushes fd's data and the metadata needed to read it back.
func PrepFdatasync(e *SQE, fd int) {
	e.OpCode, e.Fd, e.OpcodeFlags = giouring.OpFsync, int32(fd), giouring.FsyncDatasync
}

// PrepFallocate runs fallocate(fd, mode, off, n).
func PrepFallocate(e *SQE, fd int, mode uint32, off, n uint64) {
	// io_uring's fallocate takes the length in addr and the mode in len.
	e.OpCode, e.Fd, e.Off, e.Addr, e.Len = giouring.OpFallocate, int32(fd), off, n, mode
}

// PrepFadvise runs posix_fadvise(fd, off, n, advice). The 64-bit length
// goes in addr (Linux >= 6.7); older kernels read len, where 0 means "to
// the end of the file", which is harmless for advice.
func PrepFadvise(e *SQE, fd int, off, n uint64, advice uint32) {
	e.OpCode, e.Fd, e.Off, e.Addr = giouring.OpFadvise, int32(fd), off, n
	e.OpcodeFlags = advice
}

// blockURingCmdDiscard is BLOCK_URING_CMD_DISCARD, _IO(0x12, 0) from
// linux/blkdev.h (type 0x12 in bits 8-15, number 0): the block layer's
// io_uring command (Linux >= 6.12).
const blockURingCmdDiscard = 0x1200

// PrepDiscard discards n bytes at off of block device fd: an
// IORING_OP_URING_CMD whose cmd_op (the low half of off) is the discard
// command, with the range in addr and addr3.
func PrepDiscard(e *SQE, fd int, off, n uint64) {
	e.OpCode, e.Fd, e.Off, e.Addr, e.Addr3 = giouring.OpUringCmd, int32(fd),
		blockURingCmdDiscard, off, n
}

// PrepTimeout completes (with -ETIME) once ts has passed, whatever else
// completes meanwhile; ts must stay valid until then.
func PrepTimeout(e *SQE, ts *unix.Timespec) {
	e.OpCode, e.Addr, e.Len = giouring.OpTimeout, uint64(uintptr(unsafe.Pointer(ts))), 1
}
