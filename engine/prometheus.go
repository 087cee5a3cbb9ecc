package engine

import (
	"strconv"
	"strings"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/nbdring/nbdring/wire"
)

// The nbdring_* families of /metrics (README, Metrics, lists them): a
// prometheus.Collector that takes one Snapshot per scrape and turns it into
// constant metrics. Nothing is registered with or observed by the library on
// a request: the shards keep counting into their own atomics (metrics.go)
// and the library sees them only when a scraper asks.
//
// Why here and not in cmd or a package of its own: the collector reads only
// the exported Snapshot, but the label values and bucket bounds it needs
// (cmdLabel, puntLabel, hsLabel, latencyBounds) are engine's, and this
// keeps them unexported and in one place; cmd stays wiring (a registry, a
// handler). The dependency is engine's, but only this file imports it and
// no request path calls into it.

// Collector is a prometheus.Collector of a server's nbdring_* families.
type Collector struct {
	snapshot func() *Snapshot
}

var _ prometheus.Collector = (*Collector)(nil)

// NewCollector collects what snapshot returns, called once per scrape
// (Server.Snapshot, or a fixed snapshot in a test).
func NewCollector(snapshot func() *Snapshot) *Collector {
	return &Collector{snapshot: snapshot}
}

func promDesc(name, help string, labels ...string) *prometheus.Desc {
	return prometheus.NewDesc(name, help, labels, nil)
}

// exportFamily is a per-command counter summed over shards, by export.
type exportFamily struct {
	desc *prometheus.Desc
	pick func(*ExportCounts) *[cmdLabels]uint64
	data bool // READ and WRITE only
}

var exportFamilies = [...]exportFamily{
	{promDesc("nbdring_requests_total", "Requests decoded, by command and export.",
		"command", "export"), requestsOf, false},
	{promDesc("nbdring_request_errors_total", "Requests answered with an error.",
		"command", "export"), errorsOf, false},
	{promDesc("nbdring_request_bytes_total", "Data bytes of successful READs and WRITEs.",
		"command", "export"), bytesOf, true},
}

var (
	descConnections = promDesc("nbdring_connections",
		"Connections in transmission, by export and shard.", "export", "shard")
	descLatency = promDesc("nbdring_request_duration_seconds", "Time from a request's "+
		"header decoded to its reply handed to the socket, by command.", "command")
	// descStages: the latency cut into stages (stages.go defines them).
	descStages = [stageCount]*prometheus.Desc{
		promDesc("nbdring_request_receive_seconds", "Stage of a request's latency from its "+
			"header decoded to its payload received and a slot held, by command.", "command"),
		promDesc("nbdring_request_queue_seconds", "Stage of a request's latency from "+
			"ready to its first device operation issued (range lock waits), by command.",
			"command"),
		promDesc("nbdring_request_device_seconds", "Stage of a request's latency from its "+
			"first device operation issued to its reply queued, by command.", "command"),
		promDesc("nbdring_request_send_seconds", "Stage of a request's latency from its "+
			"reply queued to its send done, by command.", "command"),
	}
	descPunts = promDesc("nbdring_iowq_punts_total", "Device operations run on an io-wq "+
		"thread, by reason: eagain (RWF_NOWAIT would have blocked), no_nowait (the "+
		"export refuses RWF_NOWAIT), always (fdatasync, fallocate, fadvise).",
		"reason", "shard")
	descShardInfo = promDesc("nbdring_shard_info",
		"1 per shard, with the CPU it is pinned to.", "shard", "cpu")
	descIOWorkers = promDesc("nbdring_iowq_workers",
		"io-wq worker threads (iou-wrk) the process has now.")
	descHandshakes = promDesc("nbdring_handshakes_total", "Handshakes by how they ended.",
		"result")
	descFlushFailing = promDesc("nbdring_export_flush_failing",
		"1 once an fdatasync of the export failed: every later FLUSH fails.", "export")
	descExportSize = promDesc("nbdring_export_size_bytes",
		"The export's size as advertised.", "export")
	descThrottled = promDesc("nbdring_export_throttled_seconds_total",
		"Time the export's requests waited for max-iops or max-bandwidth tokens.",
		"export")
)

// latencyBoundsSeconds are latencyBounds as the library takes them.
var latencyBoundsSeconds = func() (s [latencyBuckets]float64) {
	for i, b := range latencyBounds {
		s[i] = b.Seconds()
	}
	return s
}()

// shardFamily is one value per shard.
type shardFamily struct {
	desc *prometheus.Desc
	typ  prometheus.ValueType
	get  func(*ShardSnapshot) float64
}

func shardGauge(name, help string, get func(*ShardSnapshot) float64) shardFamily {
	return shardFamily{promDesc(name, help, "shard"), prometheus.GaugeValue, get}
}

func shardCounter(name, help string, get func(*ShardSnapshot) uint64) shardFamily {
	return shardFamily{promDesc(name, help, "shard"), prometheus.CounterValue,
		func(s *ShardSnapshot) float64 { return float64(get(s)) }}
}

var shardFamilies = [...]shardFamily{
	shardGauge("nbdring_requests_in_flight", "Request slots in use.",
		func(s *ShardSnapshot) float64 { return float64(s.Inflight) }),
	shardGauge("nbdring_arena_bytes_in_use", "Buffer arena bytes held by requests.",
		func(s *ShardSnapshot) float64 { return float64(s.ArenaBytes) }),
	shardGauge("nbdring_kernel_ops_in_flight", "io_uring operations the kernel holds.",
		func(s *ShardSnapshot) float64 { return float64(s.OpsInflight) }),
	shardCounter("nbdring_stale_completions_total",
		"Completions dropped for a stale generation (a defect if it grows).",
		func(s *ShardSnapshot) uint64 { return s.Stale }),
	shardCounter("nbdring_backpressure_waits_total",
		"Requests that had to wait for a slot or a buffer.",
		func(s *ShardSnapshot) uint64 { return s.BackpressureWaits }),
	shardCounter("nbdring_zerocopy_sends_total", "Zero-copy sends issued.",
		func(s *ShardSnapshot) uint64 { return s.SendsZC }),
	shardCounter("nbdring_zerocopy_copied_total",
		"Zero-copy sends the kernel copied after all.",
		func(s *ShardSnapshot) uint64 { return s.ZCCopied }),
	shardCounter("nbdring_zerocopy_refused_total",
		"Connections whose socket refused zero-copy.",
		func(s *ShardSnapshot) uint64 { return s.ZCRefused }),
	shardCounter("nbdring_zerocopy_bytes_total",
		"Bytes the kernel took from zero-copy sends.",
		func(s *ShardSnapshot) uint64 { return s.ZCBytes }),
	shardCounter("nbdring_zerocopy_disabled_total",
		"Connections that stopped zero-copy because the kernel kept copying.",
		func(s *ShardSnapshot) uint64 { return s.ZCDisabled }),
	shardCounter("nbdring_inline_ops_total",
		"Device operations the shard did itself, not on the ring (-inline-io).",
		func(s *ShardSnapshot) uint64 { return s.InlineOps }),
	shardCounter("nbdring_recvs_total", "Receives into the receive pool that brought data.",
		func(s *ShardSnapshot) uint64 { return s.Recvs }),
	shardCounter("nbdring_recv_buffers_total",
		"Receive pool buffers they filled (more than receives: bundles).",
		func(s *ShardSnapshot) uint64 { return s.RecvBufs }),
	shardCounter("nbdring_recv_no_buffers_total",
		"Receives that found the receive pool empty and waited for buffers.",
		func(s *ShardSnapshot) uint64 { return s.RecvNoBufs }),
	shardCounter("nbdring_io_timeouts_total",
		"Connections cut by -io-timeout: no progress while the server waited on them.",
		func(s *ShardSnapshot) uint64 { return s.IOTimeouts }),
	shardGauge("nbdring_recv_buffers_free", "Receive pool buffers free now.",
		func(s *ShardSnapshot) float64 { return float64(s.RecvBufsFree) }),
	shardCounter("nbdring_ring_enters_total", "io_uring_enter calls.",
		func(s *ShardSnapshot) uint64 { return s.RingEnters }),
	shardCounter("nbdring_ring_submissions_total", "Submission queue entries submitted.",
		func(s *ShardSnapshot) uint64 { return s.RingSubmissions }),
	shardCounter("nbdring_ring_completions_total", "Completion queue entries reaped.",
		func(s *ShardSnapshot) uint64 { return s.RingCompletions }),
}

// Describe sends every family's Desc: the collector is checked (names,
// labels, no family twice) when it is registered.
func (c *Collector) Describe(ch chan<- *prometheus.Desc) {
	for i := range exportFamilies {
		ch <- exportFamilies[i].desc
	}
	for i := range shardFamilies {
		ch <- shardFamilies[i].desc
	}
	for _, d := range []*prometheus.Desc{descConnections, descLatency, descPunts,
		descShardInfo, descIOWorkers, descHandshakes, descFlushFailing, descExportSize,
		descThrottled} {
		ch <- d
	}
	for _, d := range descStages {
		ch <- d
	}
}

// Collect takes one snapshot and sends every sample of it.
func (c *Collector) Collect(ch chan<- prometheus.Metric) {
	sn := c.snapshot()
	// A label value must be UTF-8 (the library refuses one that is not);
	// an export's name need not be.
	names := make([]string, len(sn.Exports))
	for i, e := range sn.Exports {
		names[i] = strings.ToValidUTF8(e.Name, "\uFFFD")
	}
	ids := make([]string, len(sn.Shards))
	for i := range sn.Shards {
		ids[i] = strconv.Itoa(sn.Shards[i].ID)
	}
	sn.collectRequests(ch, names, ids)
	sn.collectLatency(ch)
	sn.collectStages(ch)
	sn.collectShards(ch, ids)
	ch <- prometheus.MustNewConstMetric(descIOWorkers, prometheus.GaugeValue,
		float64(sn.IOWorkers))
	for r, n := range sn.Handshakes {
		ch <- prometheus.MustNewConstMetric(descHandshakes, prometheus.CounterValue,
			float64(n), hsLabel[r])
	}
	for i, e := range sn.Exports {
		ch <- prometheus.MustNewConstMetric(descFlushFailing, prometheus.GaugeValue,
			b2f(e.FlushFailing), names[i])
		ch <- prometheus.MustNewConstMetric(descExportSize, prometheus.GaugeValue,
			float64(e.Size), names[i])
	}
	for i, e := range sn.Exports {
		ch <- prometheus.MustNewConstMetric(descThrottled, prometheus.CounterValue,
			e.Throttled.Seconds(), names[i])
	}
}

func b2f(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

// collectRequests: requests, errors and bytes by command and export, summed
// over shards; connections by export and shard.
func (sn *Snapshot) collectRequests(ch chan<- prometheus.Metric, names, ids []string) {
	for fi := range exportFamilies {
		f := &exportFamilies[fi]
		for ei := range sn.Exports {
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
				ch <- prometheus.MustNewConstMetric(f.desc, prometheus.CounterValue,
					float64(v), cmdLabel[c], names[ei])
			}
		}
	}
	for si := range sn.Shards {
		for ei := range sn.Exports {
			ch <- prometheus.MustNewConstMetric(descConnections, prometheus.GaugeValue,
				float64(sn.Shards[si].Exports[ei].Conns), names[ei], ids[si])
		}
	}
}

// collectLatency: the latency histogram by command, summed over shards.
func (sn *Snapshot) collectLatency(ch chan<- prometheus.Metric) {
	sn.collectHistograms(ch, descLatency, func(ss *ShardSnapshot) *[cmdLabels]Histogram {
		return &ss.Latency
	})
}

// collectStages: each stage's histogram by command, summed over shards.
func (sn *Snapshot) collectStages(ch chan<- prometheus.Metric) {
	for g := range descStages {
		sn.collectHistograms(ch, descStages[g], func(ss *ShardSnapshot) *[cmdLabels]Histogram {
			return &ss.Stages[g]
		})
	}
}

// collectHistograms sends desc's histogram by command, summed over shards,
// from the table pick gives of each. DISC has no reply, so no latency.
func (sn *Snapshot) collectHistograms(ch chan<- prometheus.Metric, desc *prometheus.Desc,
	pick func(*ShardSnapshot) *[cmdLabels]Histogram) {
	for c := range cmdLabels {
		if c == int(wire.CmdDisc) { // NBD_CMD_DISC
			continue
		}
		var h Histogram
		for si := range sn.Shards {
			sh := &pick(&sn.Shards[si])[c]
			for b, n := range sh.Counts {
				h.Counts[b] += n
			}
			h.Count += sh.Count
			h.Sum += sh.Sum
		}
		// The library takes cumulative counts by upper bound; +Inf is the
		// count, so the last (overflow) bucket needs no entry.
		buckets := make(map[float64]uint64, latencyBuckets)
		var cum uint64
		for b, bound := range latencyBoundsSeconds {
			cum += h.Counts[b]
			buckets[bound] = cum
		}
		ch <- prometheus.MustNewConstHistogram(desc, h.Count, h.Sum.Seconds(),
			buckets, cmdLabel[c])
	}
}

// collectShards: the per-shard engine and ring counters.
func (sn *Snapshot) collectShards(ch chan<- prometheus.Metric, ids []string) {
	for si := range sn.Shards {
		ss := &sn.Shards[si]
		for r, n := range ss.Punts {
			ch <- prometheus.MustNewConstMetric(descPunts, prometheus.CounterValue,
				float64(n), puntLabel[r], ids[si])
		}
		ch <- prometheus.MustNewConstMetric(descShardInfo, prometheus.GaugeValue, 1,
			ids[si], strconv.Itoa(ss.CPU))
		for fi := range shardFamilies {
			f := &shardFamilies[fi]
			ch <- prometheus.MustNewConstMetric(f.desc, f.typ, f.get(ss), ids[si])
		}
	}
}
