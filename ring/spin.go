package ring

import (
	"time"
	_ "unsafe" // for go:linkname

	"github.com/pawelgaczynski/giouring"
	"golang.org/x/sys/unix"
)

// Adaptive busy-poll. With DEFER_TASKRUN a completion that arrives while
// the shard is awake (a socket's data, a timer) is not posted to the
// completion queue: the kernel queues it as task work and sets
// IORING_SQ_TASKRUN in the SQ flags (IORING_SETUP_TASKRUN_FLAG, set at
// setup), and the next io_uring_enter with GETEVENTS runs it. Spinning is
// then: read the CQ tail and that flag, and enter only once there is
// something to collect, an enter that does not sleep. A shard that is not
// spinning sleeps in the kernel and is woken by the scheduler, which costs
// a wake-up and its latency.
//
// The rule: a wait spins only while the ring is hot, that is when the
// previous wait ended (by a completion) within the spin time of its start.
// A spin that runs out makes the ring cold and the wait goes on in the
// kernel; a kernel wait that ends within the spin time makes it hot
// again. An idle shard therefore spins at most once per idle period, and
// a shard at queue depth 1 whose client answers within the spin time
// keeps spinning.

//go:linkname cqNeedsFlush github.com/pawelgaczynski/giouring.(*Ring).cqRingNeedsFlush
func cqNeedsFlush(r *giouring.Ring) bool

// SetSpin makes waits spin up to d before they sleep (0: never spin).
func (rg *Ring) SetSpin(d time.Duration) { rg.spin = max(d, 0) }

// since is the ring's own monotonic clock in nanoseconds, for the spin.
func (rg *Ring) since() int64 { return int64(time.Since(rg.epoch)) }

// spinWait submits what is queued without waiting, then spins until wait
// completions are in the queue or the spin time has passed; true if they
// came. Only called with a spin time and a hot ring.
func (rg *Ring) spinWait(submit, wait uint32) (uint, bool, error) {
	rg.Stats.Spins.Add(1)
	var n uint
	if submit > 0 {
		var err error
		if n, err = rg.enter(unix.RawSyscall6, submit, 0, 0, nil, 0); err != nil {
			return n, false, err
		}
	}
	end := rg.since() + int64(rg.spin)
	for {
		if rg.r.CQReady() >= wait {
			rg.Stats.SpinHits.Add(1)
			return n, true, nil
		}
		if cqNeedsFlush(rg.r) {
			// Task work is queued: run it without sleeping.
			if _, err := rg.enter(unix.RawSyscall6, 0, 0, giouring.EnterGetEvents, nil,
				0); err != nil && err != unix.EINTR {
				return n, false, err
			}
			continue
		}
		if rg.since() >= end {
			return n, false, nil
		}
	}
}

// waitSpun is enterOnce for a ring with a spin time: spin first when hot,
// then wait in the kernel (waitKernel), and decide whether the next wait
// spins by how long this one took.
func (rg *Ring) waitSpun(submit, wait uint32) (uint, error) {
	start := rg.since()
	if rg.hot {
		n, ok, err := rg.spinWait(submit, wait)
		if ok || err != nil {
			return n, err
		}
		rg.hot = false
		m, err := rg.waitKernel(0, wait)
		return n + m, err
	}
	n, err := rg.waitKernel(submit, wait)
	rg.hot = rg.since()-start <= int64(rg.spin)
	return n, err
}
