package engine

import (
	"bufio"
	"fmt"
	"io"
	"math"
	"strconv"
	"strings"

	"github.com/nbdring/nbdring/wire"
)

// MetricsContentType is the Prometheus text exposition format's type.
const MetricsContentType = "text/plain; version=0.0.4; charset=utf-8"

// promWriter writes the text exposition format: a family's HELP and TYPE
// lines, then its samples.
type promWriter struct{ w *bufio.Writer }

func (p promWriter) family(name, typ, help string) {
	fmt.Fprintf(p.w, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, typ)
}

// sample writes name{labels} v; labels alternate name and value.
func (p promWriter) sample(name string, v float64, labels ...string) {
	p.w.WriteString(name)
	if len(labels) > 0 {
		p.w.WriteByte('{')
		for i := 0; i+1 < len(labels); i += 2 {
			if i > 0 {
				p.w.WriteByte(',')
			}
			p.w.WriteString(labels[i])
			p.w.WriteString(`="`)
			p.w.WriteString(labelEscaper.Replace(strings.ToValidUTF8(labels[i+1], "\uFFFD")))
			p.w.WriteByte('"')
		}
		p.w.WriteByte('}')
	}
	p.w.WriteByte(' ')
	if v == math.Trunc(v) && math.Abs(v) < 1<<53 {
		p.w.WriteString(strconv.FormatInt(int64(v), 10)) // counts stay exact
	} else {
		p.w.WriteString(strconv.FormatFloat(v, 'g', -1, 64))
	}
	p.w.WriteByte('\n')
}

// labelEscaper escapes a label value as the text format asks (which also
// wants UTF-8: an export name need not be).
var labelEscaper = strings.NewReplacer(`\`, `\\`, `"`, `\"`, "\n", `\n`)

// WritePrometheus renders the snapshot in the Prometheus text exposition
// format (README, Metrics, lists every family).
func (sn *Snapshot) WritePrometheus(w io.Writer) error {
	p := promWriter{bufio.NewWriter(w)}
	sn.promRequests(p)
	sn.promLatency(p)
	sn.promShards(p)
	p.family("nbdring_iowq_workers", "gauge",
		"io-wq worker threads (iou-wrk) the process has now.")
	p.sample("nbdring_iowq_workers", float64(sn.IOWorkers))
	p.family("nbdring_handshakes_total", "counter", "Handshakes by how they ended.")
	for r, n := range sn.Handshakes {
		p.sample("nbdring_handshakes_total", float64(n), "result", hsLabel[r])
	}
	p.family("nbdring_export_flush_failing", "gauge",
		"1 once an fdatasync of the export failed: every later FLUSH fails.")
	for _, e := range sn.Exports {
		p.sample("nbdring_export_flush_failing", b2f(e.FlushFailing), "export", e.Name)
	}
	p.family("nbdring_export_size_bytes", "gauge", "The export's size as advertised.")
	for _, e := range sn.Exports {
		p.sample("nbdring_export_size_bytes", float64(e.Size), "export", e.Name)
	}
	p.family("nbdring_export_throttled_seconds_total", "counter",
		"Time the export's requests waited for max-iops or max-bandwidth tokens.")
	for _, e := range sn.Exports {
		p.sample("nbdring_export_throttled_seconds_total", e.Throttled.Seconds(),
			"export", e.Name)
	}
	return p.w.Flush()
}

func b2f(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

// promRequests: requests, errors and bytes by command and export, summed
// over shards; connections by export and shard.
func (sn *Snapshot) promRequests(p promWriter) {
	for _, f := range []struct {
		name, help string
		pick       func(*ExportCounts) *[cmdLabels]uint64
		data       bool // READ and WRITE only
	}{
		{"nbdring_requests_total", "Requests decoded, by command and export.",
			requestsOf, false},
		{"nbdring_request_errors_total", "Requests answered with an error.", errorsOf, false},
		{"nbdring_request_bytes_total", "Data bytes of successful READs and WRITEs.",
			bytesOf, true},
	} {
		p.family(f.name, "counter", f.help)
		for ei, e := range sn.Exports {
			var t [cmdLabels]uint64
			for si := range sn.Shards {
				for c, v := range f.pick(&sn.Shards[si].Exports[ei]) {
					t[c] += v
				}
			}
			for c, v := range t {
				if f.data && c != int(wire.CmdRead) && c != int(wire.CmdWrite) {
					continue
				}
				p.sample(f.name, float64(v), "command", cmdLabel[c], "export", e.Name)
			}
		}
	}
	p.family("nbdring_connections", "gauge", "Connections in transmission, by export and shard.")
	for si := range sn.Shards {
		ss := &sn.Shards[si]
		for ei, e := range sn.Exports {
			p.sample("nbdring_connections", float64(ss.Exports[ei].Conns), "export", e.Name,
				"shard", strconv.Itoa(ss.ID))
		}
	}
}

// promLatency: the latency histogram by command, summed over shards.
// DISC has no reply, so no latency.
func (sn *Snapshot) promLatency(p promWriter) {
	const name = "nbdring_request_duration_seconds"
	p.family(name, "histogram", "Time from a request's header decoded to its reply "+
		"handed to the socket, by command.")
	for c := range cmdLabels {
		if c == int(wire.CmdDisc) { // NBD_CMD_DISC
			continue
		}
		var h Histogram
		for si := range sn.Shards {
			sh := &sn.Shards[si].Latency[c]
			for b, n := range sh.Counts {
				h.Counts[b] += n
			}
			h.Count += sh.Count
			h.Sum += sh.Sum
		}
		var cum uint64
		for b, bound := range latencyBounds {
			cum += h.Counts[b]
			p.sample(name+"_bucket", float64(cum), "command", cmdLabel[c],
				"le", strconv.FormatFloat(bound.Seconds(), 'g', -1, 64))
		}
		p.sample(name+"_bucket", float64(h.Count), "command", cmdLabel[c], "le", "+Inf")
		p.sample(name+"_sum", h.Sum.Seconds(), "command", cmdLabel[c])
		p.sample(name+"_count", float64(h.Count), "command", cmdLabel[c])
	}
}

// promShards: the per-shard engine and ring counters.
func (sn *Snapshot) promShards(p promWriter) {
	p.family("nbdring_iowq_punts_total", "counter", "Device operations run on an io-wq "+
		"thread, by reason: eagain (RWF_NOWAIT would have blocked), no_nowait (the "+
		"export refuses RWF_NOWAIT), always (fdatasync, fallocate, fadvise).")
	for _, ss := range sn.Shards {
		for r, n := range ss.Punts {
			p.sample("nbdring_iowq_punts_total", float64(n), "reason", puntLabel[r],
				"shard", strconv.Itoa(ss.ID))
		}
	}
	p.family("nbdring_shard_info", "gauge", "1 per shard, with the CPU it is pinned to.")
	for _, ss := range sn.Shards {
		p.sample("nbdring_shard_info", 1, "shard", strconv.Itoa(ss.ID),
			"cpu", strconv.Itoa(ss.CPU))
	}
	for _, f := range []struct {
		name, typ, help string
		get             func(*ShardSnapshot) float64
	}{
		{"nbdring_requests_in_flight", "gauge", "Request slots in use.",
			func(s *ShardSnapshot) float64 { return float64(s.Inflight) }},
		{"nbdring_arena_bytes_in_use", "gauge", "Buffer arena bytes held by requests.",
			func(s *ShardSnapshot) float64 { return float64(s.ArenaBytes) }},
		{"nbdring_kernel_ops_in_flight", "gauge", "io_uring operations the kernel holds.",
			func(s *ShardSnapshot) float64 { return float64(s.OpsInflight) }},
		{"nbdring_stale_completions_total", "counter",
			"Completions dropped for a stale generation (a defect if it grows).",
			func(s *ShardSnapshot) float64 { return float64(s.Stale) }},
		{"nbdring_backpressure_waits_total", "counter",
			"Requests that had to wait for a slot or a buffer.",
			func(s *ShardSnapshot) float64 { return float64(s.BackpressureWaits) }},
		{"nbdring_zerocopy_sends_total", "counter", "Zero-copy sends issued.",
			func(s *ShardSnapshot) float64 { return float64(s.SendsZC) }},
		{"nbdring_zerocopy_copied_total", "counter",
			"Zero-copy sends the kernel copied after all.",
			func(s *ShardSnapshot) float64 { return float64(s.ZCCopied) }},
		{"nbdring_zerocopy_refused_total", "counter",
			"Connections whose socket refused zero-copy.",
			func(s *ShardSnapshot) float64 { return float64(s.ZCRefused) }},
		{"nbdring_zerocopy_bytes_total", "counter",
			"Bytes the kernel took from zero-copy sends.",
			func(s *ShardSnapshot) float64 { return float64(s.ZCBytes) }},
		{"nbdring_zerocopy_disabled_total", "counter",
			"Connections that stopped zero-copy because the kernel kept copying.",
			func(s *ShardSnapshot) float64 { return float64(s.ZCDisabled) }},
		{"nbdring_inline_ops_total", "counter",
			"Device operations the shard did itself, not on the ring (-inline-io).",
			func(s *ShardSnapshot) float64 { return float64(s.InlineOps) }},
		{"nbdring_recvs_total", "counter", "Receives into the receive pool that brought data.",
			func(s *ShardSnapshot) float64 { return float64(s.Recvs) }},
		{"nbdring_recv_buffers_total", "counter",
			"Receive pool buffers they filled (more than receives: bundles).",
			func(s *ShardSnapshot) float64 { return float64(s.RecvBufs) }},
		{"nbdring_recv_no_buffers_total", "counter",
			"Receives that found the receive pool empty and waited for buffers.",
			func(s *ShardSnapshot) float64 { return float64(s.RecvNoBufs) }},
		{"nbdring_io_timeouts_total", "counter",
			"Connections cut by -io-timeout: no progress while the server waited on them.",
			func(s *ShardSnapshot) float64 { return float64(s.IOTimeouts) }},
		{"nbdring_recv_buffers_free", "gauge", "Receive pool buffers free now.",
			func(s *ShardSnapshot) float64 { return float64(s.RecvBufsFree) }},
		{"nbdring_ring_enters_total", "counter", "io_uring_enter calls.",
			func(s *ShardSnapshot) float64 { return float64(s.RingEnters) }},
		{"nbdring_ring_submissions_total", "counter", "Submission queue entries submitted.",
			func(s *ShardSnapshot) float64 { return float64(s.RingSubmissions) }},
		{"nbdring_ring_completions_total", "counter", "Completion queue entries reaped.",
			func(s *ShardSnapshot) float64 { return float64(s.RingCompletions) }},
	} {
		p.family(f.name, f.typ, f.help)
		for si := range sn.Shards {
			ss := &sn.Shards[si]
			p.sample(f.name, f.get(ss), "shard", strconv.Itoa(ss.ID))
		}
	}
}
