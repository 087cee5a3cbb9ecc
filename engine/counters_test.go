package engine

import (
	"testing"

	"github.com/nbdring/nbdring/wire"
)

// TestCountersPerExport: the counters component alone, with no shard:
// requests, errors and bytes land on the export of the connection that
// made them, and the connection count follows attach and release.
func TestCountersPerExport(t *testing.T) {
	var m shardMetrics
	m.init(2)
	m.connAttached(3, 1)
	m.connAttached(4, 0)
	m.countRequest(3, wire.CmdWrite)
	m.countBytes(3, wire.CmdWrite, 4096)
	m.countRequest(4, wire.CmdRead)
	m.countError(4, wire.CmdRead)
	m.countRequest(4, wire.Cmd(200)) // a command the protocol does not name
	if n := m.connCount(); n != 2 {
		t.Fatalf("%d connections counted, want 2", n)
	}
	e0, e1 := &m.exp[0], &m.exp[1]
	if e1.requests[wire.CmdWrite].Load() != 1 || e1.bytes[wire.CmdWrite].Load() != 4096 {
		t.Fatalf("export 1: %d writes of %d bytes, want 1 of 4096",
			e1.requests[wire.CmdWrite].Load(), e1.bytes[wire.CmdWrite].Load())
	}
	if e0.errors[wire.CmdRead].Load() != 1 || e0.requests[cmdUnknown].Load() != 1 {
		t.Fatalf("export 0: %d read errors, %d unknown commands, want 1 and 1",
			e0.errors[wire.CmdRead].Load(), e0.requests[cmdUnknown].Load())
	}
	if e1.errors[wire.CmdRead].Load() != 0 || e0.bytes[wire.CmdWrite].Load() != 0 {
		t.Fatal("a count landed on the other export")
	}
	m.connReleased(3)
	if n := m.connCount(); n != 1 {
		t.Fatalf("%d connections after a release, want 1", n)
	}
}

// TestCountersLatency: a reply is timed from its request's decode (the
// connection's clock, handed to the slot) to the time the sender passes.
func TestCountersLatency(t *testing.T) {
	var m shardMetrics
	m.init(1)
	m.connAttached(0, 0)
	m.countRequest(0, wire.CmdRead)
	m.slotTimed(7, 0)
	start := m.slotStart[7]
	m.observeSent(7, wire.CmdRead, start+int64(30e3)) // 30 µs: the 50 µs bucket
	h := &m.latency[wire.CmdRead]
	if h.counts[2].Load() != 1 || h.sumNs.Load() != 30e3 {
		t.Fatalf("30 µs reply: bucket counts %d/%d/%d, sum %d ns",
			h.counts[0].Load(), h.counts[1].Load(), h.counts[2].Load(), h.sumNs.Load())
	}
}

// TestCountersReleaseTwice: releasing a connection's count twice would
// let the gauge go negative; the invariants build refuses it.
func TestCountersReleaseTwice(t *testing.T) {
	needInvariants(t)
	var m shardMetrics
	m.init(1)
	m.connAttached(0, 0)
	m.connReleased(0)
	defer func() {
		if recover() == nil {
			t.Fatal("a second release of one connection was not refused")
		}
	}()
	m.connReleased(0)
}
