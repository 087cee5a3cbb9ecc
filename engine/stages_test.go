package engine

import (
	"bytes"
	"testing"
	"time"

	"github.com/nbdring/nbdring/wire"
)

// TestCountersStages: the counters component alone: marks at known times
// cut a request's latency into stages that sum to it; a request with no
// device operation has a device stage of 0.
func TestCountersStages(t *testing.T) {
	var m shardMetrics
	m.init(1)
	m.connAttached(0, 0)
	at := func(ns int64) { m.st.now, m.st.nowOK = ns, true }
	at(1000)
	m.countRequest(0, wire.CmdWrite)
	m.slotTimed(3, 0)
	at(6000)
	m.payloadIn(3) // receive: 5 µs
	at(8000)
	m.deviceIssued(3) // queue: 2 µs
	at(9000)
	m.deviceIssued(3) // a second operation: issued stays
	at(40000)
	m.replyQueued(3)                       // device: 32 µs
	m.observeSent(3, wire.CmdWrite, 41000) // send: 1 µs
	w := int(wire.CmdWrite)
	for g, want := range [stageCount]uint64{5000, 2000, 32000, 1000} {
		h := &m.stage[g][w]
		if n, sum := h.counts[0].Load()+h.counts[1].Load()+h.counts[2].Load(),
			h.sumNs.Load(); n != 1 || sum != want {
			t.Errorf("stage %s: %d observations summing to %d ns, want 1 of %d",
				stageName[g], n, sum, want)
		}
	}
	at(50000)
	m.countRequest(0, wire.CmdBlockStatus)
	m.slotTimed(4, 0)
	at(53000)
	m.replyQueued(4)
	m.observeSent(4, wire.CmdBlockStatus, 54000)
	b := int(wire.CmdBlockStatus)
	if q, d := m.stage[stageQueue][b].sumNs.Load(),
		m.stage[stageDevice][b].sumNs.Load(); q != 3000 || d != 0 {
		t.Errorf("no device operation: queue %d ns, device %d ns; want 3000, 0", q, d)
	}
}

// TestCountersSentAt: a send that completes in the batch right after the
// enter that submitted it is stamped at its submission, a later one at its
// batch's time.
func TestCountersSentAt(t *testing.T) {
	var m shardMetrics
	m.init(1)
	m.sendIssued(2)
	at := m.st.sendAt[2]
	m.newBatch(1)
	if got := m.sentAt(2); got != at {
		t.Fatalf("send done in its own enter stamped %d, want its submission %d", got, at)
	}
	m.newBatch(1)
	if got := m.sentAt(2); got == at {
		t.Fatal("send done two batches later stamped at its submission")
	}
}

// TestStagesPerRequest: on a running shard every replied request is
// counted once in every stage, the stages sum to its latency, and a WRITE
// whose payload the client holds back 30 ms shows it in the receive stage.
func TestStagesPerRequest(t *testing.T) {
	for _, m := range inlineModes {
		t.Run(m.name, func(t *testing.T) { testStagesPerRequest(t, m.mode) })
	}
}

func testStagesPerRequest(t *testing.T, mode InlineMode) {
	srv, sock, _ := testServerIO(t, 1<<20, 1, mode)
	tc := dial(t, sock, wire.ClientOptions{BlockSize: true})
	data, buf := bytes.Repeat([]byte{3}, 4096), make([]byte, 4096)
	for i := range 5 {
		tc.do(wire.CmdWrite, 0, uint64(i)*4096, 4096, data, nil)
		tc.do(wire.CmdRead, 0, uint64(i)*4096, 4096, nil, buf)
	}
	tc.do(wire.CmdFlush, 0, 0, 0, nil, nil)
	tc.do(wire.CmdRead, 0, 1<<40, 4096, nil, nil) // rejected
	const held = 30 * time.Millisecond
	tc.send(wire.CmdWrite, 0, 7, 0, 4096, nil)
	time.Sleep(held)
	if _, err := tc.c.Write(data); err != nil {
		t.Fatal(err)
	}
	tc.simple(nil)
	const replies = 13
	var sn *Snapshot
	deadline := time.Now().Add(5 * time.Second)
	for sn = srv.Snapshot(); latencyCount(sn) < replies; sn = srv.Snapshot() {
		if time.Now().After(deadline) {
			t.Fatalf("%d of %d latencies", latencyCount(sn), replies)
		}
		time.Sleep(10 * time.Millisecond)
	}
	ss := &sn.Shards[0]
	for c := range cmdLabels {
		lat := ss.Latency[c]
		var sum time.Duration
		for g := range stageCount {
			h := ss.Stages[g][c]
			if h.Count != lat.Count {
				t.Errorf("%s %s: %d observations, %d latencies", cmdLabel[c], stageName[g],
					h.Count, lat.Count)
			}
			sum += h.Sum
		}
		if sum != lat.Sum {
			t.Errorf("%s: stages sum to %v, latencies to %v", cmdLabel[c], sum, lat.Sum)
		}
	}
	w := int(wire.CmdWrite)
	if n := ss.Latency[w].Count; n != 6 {
		t.Fatalf("%d write latencies, want 6", n)
	}
	if got := ss.Stages[stageReceive][w].Sum; got < held {
		t.Errorf("writes' receive stage sums to %v, below the %v a payload was held", got, held)
	}
	if got := ss.Stages[stageDevice][w].Sum; got <= 0 {
		t.Errorf("writes' device stage sums to %v", got)
	}
}
