package engine

import (
	"testing"

	"github.com/nbdring/nbdring/ring"
	"github.com/nbdring/nbdring/wire"
	"golang.org/x/sys/unix"
)

// ledgerShard is a shard that is never run: its tables and memory are
// real, its completions are delivered by hand, so a test can replay an
// order of events the kernel could produce.
func ledgerShard(t *testing.T) (*shard, int32) {
	t.Helper()
	sz, err := sizeShards(Config{}, 1)
	if err != nil {
		t.Fatal(err)
	}
	s, err := newShard(&Server{sz: sz}, 0, 0)
	if err != nil {
		skipMissing(t, "memory", "cannot map shard memory here: %v", err)
	}
	t.Cleanup(s.close)
	exp := &Export{Name: "t", fd: -1, size: 1 << 20, align: 512}
	// An attached row has a descriptor (connTable's invariant); nothing
	// here reads or writes it.
	fd, err := unix.Eventfd(0, unix.EFD_CLOEXEC)
	if err != nil {
		t.Fatal(err)
	}
	ci := s.conns.open(handoff{fd: fd, exp: exp, peer: "test"}, wire.PayloadMax)
	t.Cleanup(func() {
		if s.conns.rows[ci].fd == fd { // a close closes it itself
			unix.Close(fd)
		}
	})
	s.rx.reset(ci, nil)
	s.tx.reset(ci, s.conns.rows[ci].style, false)
	return s, ci
}

// TestStaleCompletionDropped: a completion carrying an older generation
// of its slot (the slot was recycled meanwhile) must be dropped and
// counted, never applied to the request that holds the slot now.
func TestStaleCompletionDropped(t *testing.T) {
	s, ci := ledgerShard(t)
	si := s.allocSlot(ci)
	old := s.led.slotGen[si]
	s.releaseSlot(si) // done: freed, generation moves on
	if got := s.allocSlot(ci); got != si {
		t.Fatalf("slot table gave %d, want the recycled %d", got, si)
	}
	sl := &s.slots.rows[si]
	sl.req = wire.Request{Type: wire.CmdFlush, Cookie: 5}
	sl.phase = phFlush
	s.led.holdSlot(si) // its own fdatasync is in flight
	s.led.stamp(opIO, si)
	s.complete(&ring.CQE{UserData: ring.UserData(opIO, old, uint32(si)),
		Res: -int32(unix.EIO)})
	if n := s.stats.Stale.Load(); n != 1 {
		t.Fatalf("stale completions counted: %d, want 1", n)
	}
	if s.led.slotOps[si] != 1 || s.led.ioOps != 1 || sl.state != slotLive {
		t.Fatalf("stale completion settled the new request: ops %d, shard ops %d, state %d",
			s.led.slotOps[si], s.led.ioOps, sl.state)
	}
	if s.tx.q[ci].head >= 0 || sl.exp.syncFailed.Load() {
		t.Fatal("stale completion was applied: a reply was queued or FLUSH poisoned")
	}
	// The real completion still finds its request.
	s.complete(&ring.CQE{UserData: ring.UserData(opIO, s.led.slotGen[si], uint32(si))})
	if s.tx.q[ci].head != si || s.led.slotOps[si] != 0 {
		t.Fatalf("current completion not applied: queue head %d, ops %d",
			s.tx.q[ci].head, s.led.slotOps[si])
	}
}

// TestReleaseWaitsForKernel: a request ended while the kernel still holds
// its slot (the client vanished with a read in flight) keeps its buffer
// until that operation completes; the ledger frees it then.
func TestReleaseWaitsForKernel(t *testing.T) {
	s, ci := ledgerShard(t)
	si := s.allocSlot(ci)
	sl := &s.slots.rows[si]
	sl.req = wire.Request{Type: wire.CmdRead, Length: 4096}
	if !s.dev.allocData(si, 4096) {
		t.Fatal("no buffer")
	}
	sl.phase = phRead
	s.led.holdSlot(si) // the read is in flight
	gen := s.led.slotGen[si]
	s.led.stamp(opIO, si)
	s.releaseSlot(si)
	if sl.state != slotReleased || sl.buf < 0 || s.slots.ar.inUse == 0 {
		t.Fatalf("buffer freed while the kernel holds it: state %d, handle %d, in use %d",
			sl.state, sl.buf, s.slots.ar.inUse)
	}
	for _, f := range s.slots.free {
		if f == si {
			t.Fatal("held slot is on the free list")
		}
	}
	s.complete(&ring.CQE{UserData: ring.UserData(opIO, gen, uint32(si)), Res: 4096})
	if sl.state != slotFree || s.slots.ar.inUse != 0 || s.stats.ArenaBytes.Load() != 0 {
		t.Fatalf("not freed on its completion: state %d, arena in use %d", sl.state,
			s.slots.ar.inUse)
	}
	if s.stats.Stale.Load() != 0 || s.tx.q[ci].head >= 0 {
		t.Fatal("completion of a released request was applied")
	}
}
