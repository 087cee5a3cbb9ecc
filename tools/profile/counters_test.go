package profile

import (
	"bytes"
	"strings"
	"testing"
	"time"

	"github.com/nbdring/nbdring/engine"
	"github.com/nbdring/nbdring/wire"
)

// TestCountersFromEngine reads the /counters page as the engine renders
// it from its Snapshot (the one source /metrics renders too), so a change
// of names there that the profiler depends on fails here.
func TestCountersFromEngine(t *testing.T) {
	snap := func(reads uint64) *engine.Snapshot {
		sn := &engine.Snapshot{Exports: []engine.ExportState{{Name: ""}}}
		for id := range 2 {
			ss := engine.ShardSnapshot{ID: id, CPU: id + 2, Exports: make([]engine.ExportCounts, 1),
				RingEnters: reads / 4, RingSubmissions: reads / 2, RingCompletions: reads}
			ss.Exports[0].Requests[wire.CmdRead] = reads
			ss.Exports[0].Bytes[wire.CmdRead] = reads * 4096
			ss.Exports[0].Conns = 1
			sn.Shards = append(sn.Shards, ss)
		}
		return sn
	}
	parse := func(sn *engine.Snapshot) *Counters {
		var page bytes.Buffer
		sn.WriteCounters(&page)
		c, err := ParseCounters(&page)
		if err != nil {
			t.Fatalf("engine's /counters page does not parse: %v\n%s", err, page.String())
		}
		return c
	}
	before, after := parse(snap(1000)), parse(snap(3000))
	for name, want := range map[string]int64{"requests_READ": 6000, "bytes_read": 6000 * 4096,
		"ring_enters": 1500, "ring_completions": 6000, "connections": 2} {
		if got := after.Total(name); got != want {
			t.Errorf("%s: %d, want %d (names: %v)", name, got, want, after.Names)
		}
	}
	var out bytes.Buffer
	WriteCounterDelta(&out, before, after, time.Second)
	line := "  shard 1 (cpu 3): requests +2000, ring_enters +500, completions per enter 4.00"
	if !strings.Contains(out.String(), line+"\n") {
		t.Errorf("delta lacks %q:\n%s", line, out.String())
	}
}
