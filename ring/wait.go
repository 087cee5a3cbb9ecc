package ring

import (
	"errors"
	"fmt"
	"syscall"
	"unsafe"

	"github.com/pawelgaczynski/giouring"
	"golang.org/x/sys/unix"
)

// flushSQ publishes the queued SQEs to the kernel's tail without entering
// and returns how many are pending: giouring's own step of every submit,
// reached here (giouring keeps it private; its version is pinned) because
// the ring enters io_uring itself: as a raw system call (enterOnce), and
// with a min_wait that giouring's getevents argument has no field for.
//
//go:linkname flushSQ github.com/pawelgaczynski/giouring.(*Ring).internalFlushSQ
func flushSQ(r *giouring.Ring) uint32

// getEventsArg is struct io_uring_getevents_arg; Linux 6.12 named its pad
// min_wait_usec (older kernels refuse a non-zero pad with EINVAL).
type getEventsArg struct {
	sigmask     uint64
	sigmaskSz   uint32
	minWaitUsec uint32
	ts          uint64
}

// Feature bits of io_uring_params.features (linux/io_uring.h).
const (
	featRecvSendBundle = 1 << 14 // IORING_FEAT_RECVSEND_BUNDLE, Linux 6.10
	featMinTimeout     = 1 << 15 // IORING_FEAT_MIN_TIMEOUT, Linux 6.12
)

// params is struct io_uring_params, for the feature probe only.
type params struct {
	sqEntries, cqEntries, flags, sqThreadCPU, sqThreadIdle, features, wqFd uint32
	resv                                                                   [3]uint32
	offsets                                                                [20]uint32
}

// Features is what the kernel's io_uring offers beyond what New requires.
type Features struct {
	MinWait bool // IORING_FEAT_MIN_TIMEOUT: a batch wait with a minimum timeout
	Bundles bool // IORING_FEAT_RECVSEND_BUNDLE: one recv fills several buffers
}

// ProbeFeatures reads the feature bits from a throw-away one-entry ring, so
// a shard's own setup (giouring's, which keeps them private) is not needed.
func ProbeFeatures() (Features, error) {
	var p params
	fd, _, errno := unix.Syscall(unix.SYS_IO_URING_SETUP, 1, uintptr(unsafe.Pointer(&p)), 0)
	if errno != 0 {
		return Features{}, fmt.Errorf("io_uring feature probe: %w", errno)
	}
	unix.Close(int(fd))
	return Features{MinWait: p.features&featMinTimeout != 0,
		Bundles: p.features&featRecvSendBundle != 0}, nil
}

// SubmitAndWaitMin is SubmitAndWait for a batch: it returns once wait
// completions are there, or once minWaitUsec has passed and at least one
// is (IORING_FEAT_MIN_TIMEOUT; the caller checks Features.MinWait).
// Errors are handled as SubmitAndWait's.
func (rg *Ring) SubmitAndWaitMin(wait, minWaitUsec uint32) error {
	rg.arg = getEventsArg{sigmaskSz: 8, minWaitUsec: minWaitUsec}
	for {
		submit := flushSQ(rg.r)
		n, err := rg.enter(unix.Syscall6, submit, wait,
			giouring.EnterGetEvents|giouring.EnterExtArg, unsafe.Pointer(&rg.arg),
			int(unsafe.Sizeof(rg.arg)))
		switch {
		case err == nil:
			rg.Stats.Submitted.Add(uint64(n))
			return nil
		case errors.Is(err, syscall.EINTR):
			continue
		case errors.Is(err, syscall.EAGAIN), errors.Is(err, syscall.EBUSY),
			errors.Is(err, syscall.ETIME):
			return nil
		}
		return fmt.Errorf("io_uring_enter (min wait): %w", err)
	}
}
