package engine

import (
	"fmt"
	"github.com/nbdring/nbdring/ring"
	"io"
	"os"
	"strings"
	"time"

	"github.com/nbdring/nbdring/wire"
)

// Snapshot is one reading of every counter of the server: the one source
// both the -pprof page /counters and the -metrics page /metrics render.
// Values are read without stopping the shards, so one may be a moment
// older than the next; each counter on its own only grows.
type Snapshot struct {
	Exports    []ExportState
	Shards     []ShardSnapshot
	Handshakes [hsResults]uint64 // by result: ok, refused, timed_out, aborted, tls_failed
	// IOWorkers is how many io-wq worker threads (iou-wrk-*) the process
	// has now: the kernel starts them for operations it punts.
	IOWorkers int
}

// ExportState is an export's server-wide state.
type ExportState struct {
	Name         string
	Size         uint64
	FlushFailing bool // an fdatasync failed: every later FLUSH fails
	// Throttled is the time its requests waited for QoS tokens (max-iops,
	// max-bandwidth), summed over requests: nbdring_export_throttled_seconds_total.
	Throttled time.Duration
}

// ShardSnapshot is one shard's counters.
type ShardSnapshot struct {
	ID, CPU           int
	Exports           []ExportCounts      // by export index, as Snapshot.Exports
	Inflight          int64               // slots in use, also those the kernel still holds
	ArenaBytes        int64               // arena bytes held by requests
	OpsInflight       int64               // kernel operations in flight (the ledger)
	Stale             uint64              // completions dropped for a stale generation
	SendsZC           uint64              // zero-copy sends issued
	ZCCopied          uint64              // zero-copy sends the kernel copied after all
	ZCRefused         uint64              // connections whose socket refused zero-copy
	ZCBytes           uint64              // bytes the kernel took from zero-copy sends
	ZCDisabled        uint64              // connections whose zero-copy kept copying: off
	InlineOps         uint64              // device operations the shard did itself
	Punts             [puntReasons]uint64 // device operations run on io-wq, by reason
	Sends             uint64              // reply batches sent (plaintext)
	SentReplies       uint64              // replies in them
	Recvs             uint64              // receives into the pool that brought data
	RecvBufs          uint64              // pool buffers they filled
	RecvNoBufs        uint64              // receives that found the pool empty
	IOTimeouts        uint64              // connections cut by -io-timeout
	RecvBufsFree      int64               // pool buffers free now
	BackpressureWaits uint64              // requests that waited for a slot or a buffer
	RingEnters        uint64
	RingSubmissions   uint64
	RingCompletions   uint64
	RingHoldTimeouts  uint64               // waits that outlasted waitHold
	Latency           [cmdLabels]Histogram // by command
	// Stages: the latency cut into stages (stages.go), by stage and command.
	Stages [stageCount][cmdLabels]Histogram
}

// ExportCounts are one shard's counters for one export, by command
// (index: the wire.Cmd; the last entry counts unknown commands).
type ExportCounts struct {
	Conns    int64
	Requests [cmdLabels]uint64
	Errors   [cmdLabels]uint64
	Bytes    [cmdLabels]uint64 // data of successful READs and WRITEs
}

// Histogram is a latency histogram: Counts per bucket (not cumulative),
// the last past every bound, so Count is their sum.
type Histogram struct {
	Counts [latencyBuckets + 1]uint64
	Count  uint64
	Sum    time.Duration
}

// Snapshot reads every counter. It allocates; it is for the control plane.
func (s *Server) Snapshot() *Snapshot {
	sn := &Snapshot{}
	exps := s.reg.exportsNow()
	idx := make([]int, len(exps))
	for i, e := range exps {
		sn.Exports = append(sn.Exports, ExportState{Name: e.Name, Size: e.size,
			FlushFailing: e.syncFailed.Load(),
			Throttled:    time.Duration(e.reg.throttledNs.Load())})
		idx[i] = e.reg.idx
	}
	for i := range sn.Handshakes {
		sn.Handshakes[i] = s.hsCount[i].Load()
	}
	for _, sh := range s.shards {
		sn.Shards = append(sn.Shards, sh.m.snapshotOf(&sh.stats, sh.ring, sh.id, sh.cpu, idx))
	}
	sn.IOWorkers = ioWorkers()
	return sn
}

// ioWorkers counts this process's io-wq worker threads: the kernel names
// them iou-wrk-<tid> (0 when /proc cannot say).
func ioWorkers() int {
	tasks, err := os.ReadDir("/proc/self/task")
	if err != nil {
		return 0
	}
	n := 0
	for _, t := range tasks {
		comm, err := os.ReadFile("/proc/self/task/" + t.Name() + "/comm")
		if err == nil && strings.HasPrefix(string(comm), "iou-wrk-") {
			n++
		}
	}
	return n
}

// snapshotOf reads a shard's counters (its ShardStats st, and ring r's
// when the shard runs); idx: the counter indices of Snapshot.Exports, in
// order. The counters component reads them for the control plane; nothing
// here runs on the shard.
func (m *shardMetrics) snapshotOf(st *ShardStats, r *ring.Ring, id, cpu int,
	idx []int) ShardSnapshot {
	ss := ShardSnapshot{ID: id, CPU: cpu,
		Inflight: st.Inflight.Load(), ArenaBytes: st.ArenaBytes.Load(),
		OpsInflight: st.OpsInflight.Load(), Stale: st.Stale.Load(),
		SendsZC: st.SendsZC.Load(), ZCCopied: st.ZCCopied.Load(),
		ZCRefused: st.ZCRefused.Load(), InlineOps: st.InlineOps.Load(),
		ZCBytes: st.ZCBytes.Load(), ZCDisabled: st.ZCDisabled.Load(),
		BackpressureWaits: m.backpressure.Load(), Recvs: st.Recvs.Load(),
		Sends: st.Sends.Load(), SentReplies: st.SentReplies.Load(),
		RecvBufs: st.RecvBufs.Load(), RecvNoBufs: st.RecvNoBufs.Load(),
		IOTimeouts:   st.IOTimeouts.Load(),
		RecvBufsFree: st.RecvBufsFree.Load()}
	for i := range ss.Punts {
		ss.Punts[i] = st.Punts[i].Load()
	}
	if r != nil {
		ss.RingEnters, ss.RingSubmissions = r.Stats.Enters.Load(), r.Stats.Submitted.Load()
		ss.RingCompletions = r.Stats.Completions.Load()
		ss.RingHoldTimeouts = r.Stats.HoldTimeouts.Load()
	}
	ss.Exports = make([]ExportCounts, len(idx))
	for i, x := range idx {
		e, out := &m.exp[x], &ss.Exports[i]
		out.Conns = e.conns.Load()
		for c := range cmdLabels {
			out.Requests[c], out.Errors[c] = e.requests[c].Load(), e.errors[c].Load()
			out.Bytes[c] = e.bytes[c].Load()
		}
	}
	for c := range cmdLabels {
		h, out := &m.latency[c], &ss.Latency[c]
		for b := range h.counts {
			out.Counts[b] = h.counts[b].Load()
			out.Count += out.Counts[b]
		}
		out.Sum = time.Duration(h.sumNs.Load())
	}
	m.snapStages(&ss.Stages)
	return ss
}

// Conns is the shard's connections over all exports.
func (ss ShardSnapshot) Conns() int64 {
	var n int64
	for i := range ss.Exports {
		n += ss.Exports[i].Conns
	}
	return n
}

// sum adds one per-command table over the shard's exports.
func (ss *ShardSnapshot) sum(pick func(*ExportCounts) *[cmdLabels]uint64) [cmdLabels]uint64 {
	var t [cmdLabels]uint64
	for i := range ss.Exports {
		for c, v := range pick(&ss.Exports[i]) {
			t[c] += v
		}
	}
	return t
}

func requestsOf(e *ExportCounts) *[cmdLabels]uint64 { return &e.Requests }
func errorsOf(e *ExportCounts) *[cmdLabels]uint64   { return &e.Errors }
func bytesOf(e *ExportCounts) *[cmdLabels]uint64    { return &e.Bytes }

// WriteCounters renders the snapshot as the -pprof page /counters: one
// block per shard, "name value" lines (tools/profile parses them).
func (sn *Snapshot) WriteCounters(w io.Writer) {
	for i := range sn.Shards {
		ss := &sn.Shards[i]
		reqs, bytes := ss.sum(requestsOf), ss.sum(bytesOf)
		fmt.Fprintf(w, "shard %d (cpu %d)\n", ss.ID, ss.CPU)
		line := func(name string, v any) { fmt.Fprintf(w, "  %-21s %v\n", name, v) }
		// ratio prints num per den, once there is a den.
		ratio := func(name string, num, den uint64) {
			if den > 0 {
				line(name, fmt.Sprintf("%.2f", float64(num)/float64(den)))
			}
		}
		line("connections", ss.Conns())
		line("in_flight", ss.Inflight)
		line("arena_bytes_in_use", ss.ArenaBytes)
		line("kernel_ops_in_flight", ss.OpsInflight)
		line("stale_completions", ss.Stale)
		line("sends_zerocopy", ss.SendsZC)
		line("zerocopy_copied", ss.ZCCopied)
		line("zerocopy_refused", ss.ZCRefused)
		line("zerocopy_bytes", ss.ZCBytes)
		line("zerocopy_disabled", ss.ZCDisabled)
		line("inline_ops", ss.InlineOps)
		for r, n := range ss.Punts {
			line("iowq_punts_"+puntLabel[r], n)
		}
		line("backpressure_waits", ss.BackpressureWaits)
		line("recvs", ss.Recvs)
		line("recv_buffers", ss.RecvBufs)
		line("recv_no_buffers", ss.RecvNoBufs)
		line("io_timeouts", ss.IOTimeouts)
		line("recv_buffers_free", ss.RecvBufsFree)
		for c, n := range reqs {
			if n > 0 {
				line("requests_"+strings.ToUpper(cmdLabel[c]), n)
			}
		}
		line("bytes_read", bytes[wire.CmdRead])
		line("bytes_written", bytes[wire.CmdWrite])
		line("errors", total(ss.sum(errorsOf)))
		line("ring_enters", ss.RingEnters)
		line("ring_submissions", ss.RingSubmissions)
		line("ring_completions", ss.RingCompletions)
		line("ring_hold_timeouts", ss.RingHoldTimeouts)
		line("sends", ss.Sends)
		line("sent_replies", ss.SentReplies)
		ratio("replies_per_send", ss.SentReplies, ss.Sends)
		ratio("requests_per_recv", total(reqs), ss.Recvs)
		ratio("submissions_per_enter", ss.RingSubmissions, ss.RingEnters)
		ratio("completions_per_enter", ss.RingCompletions, ss.RingEnters)
	}
	// Throttled time is the export's, over all shards (qos.go).
	for _, e := range sn.Exports {
		if e.Throttled > 0 {
			fmt.Fprintf(w, "export %q\n  %-21s %.3f\n", e.Name, "throttled_seconds",
				e.Throttled.Seconds())
		}
	}
}

// total adds a per-command table.
func total(t [cmdLabels]uint64) uint64 {
	var n uint64
	for _, v := range t {
		n += v
	}
	return n
}

// Requests is the shard's count of cmd requests over all exports.
func (ss ShardSnapshot) Requests(cmd wire.Cmd) uint64 { return ss.sum(requestsOf)[cmdIndex(cmd)] }
