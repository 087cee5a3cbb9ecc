package engine

import (
	"bytes"
	"io"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/nbdring/nbdring/wire"
)

// goldenSnapshot is a fixed snapshot with every family non-empty: two
// exports (one the default, "") on two shards, each counter a different
// value so a swapped field shows.
func goldenSnapshot() *Snapshot {
	sn := &Snapshot{
		Exports: []ExportState{{Name: "", Size: 1 << 30, FlushFailing: true},
			{Name: "b", Size: 4096, Throttled: 1500 * time.Millisecond}},
		Handshakes: [hsResults]uint64{7, 1, 2, 3, 4},
		IOWorkers:  5,
	}
	for si := range 2 {
		v := uint64(100 * (si + 1))
		ss := ShardSnapshot{ID: si, CPU: 2 + si, Inflight: int64(v + 1),
			ArenaBytes: int64(v + 2), OpsInflight: int64(v + 3), Stale: v + 4,
			SendsZC: v + 5, ZCCopied: v + 6, ZCRefused: v + 7, ZCBytes: v + 8,
			ZCDisabled: v + 9, InlineOps: v + 10, Punts: [puntReasons]uint64{v + 11,
				v + 12, v + 13}, Recvs: v + 14, RecvBufs: v + 15, RecvNoBufs: v + 16,
			IOTimeouts: v + 17, RecvBufsFree: int64(v + 18), BackpressureWaits: v + 19,
			RingEnters: v + 20, RingSubmissions: v + 21, RingCompletions: v + 22,
			Exports: make([]ExportCounts, 2)}
		for ei := range ss.Exports {
			e := &ss.Exports[ei]
			e.Conns = int64(si + ei)
			for c := range cmdLabels {
				n := v + uint64(10*ei+c)
				e.Requests[c], e.Errors[c], e.Bytes[c] = n, n/10, n*4096
			}
		}
		for c := range cmdLabels {
			h := &ss.Latency[c]
			for b := range h.Counts {
				h.Counts[b] = uint64((b + c + si) % 4)
				h.Count += h.Counts[b]
			}
			h.Sum = time.Duration(h.Count) * 1500 * time.Microsecond
		}
		for g := range ss.Stages {
			for c := range cmdLabels {
				h := &ss.Stages[g][c]
				for b := range h.Counts {
					h.Counts[b] = uint64((b + c + si + g) % 5)
					h.Count += h.Counts[b]
				}
				h.Sum = time.Duration(h.Count) * time.Duration(g+1) * 100 * time.Microsecond
			}
		}
		sn.Shards = append(sn.Shards, ss)
	}
	return sn
}

// TestCollectorGolden: the collector renders goldenSnapshot as the
// hand-written writer it replaced did (testdata/prometheus.golden is that
// writer's output): the same families, types, HELP, labels, buckets and
// values, so dashboards and alerts keep working. Both sides are parsed
// and normalized, so only the order of lines and float spelling may differ.
func TestCollectorGolden(t *testing.T) {
	c := NewCollector(func() *Snapshot { return goldenSnapshot() })
	if err := testutil.CollectAndCompare(c, goldenSorted(t)); err != nil {
		t.Fatalf("/metrics differs from testdata/prometheus.golden:\n%v", err)
	}
	// Prometheus' own naming rules (promtool check metrics).
	problems, err := testutil.CollectAndLint(c)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range problems {
		t.Errorf("lint: %s: %s", p.Metric, p.Text)
	}
}

// goldenSorted is testdata/prometheus.golden with each sample's labels in
// name order: the library sorts them, the old writer did not, and a parser
// does not care (testutil's comparison does).
func goldenSorted(t *testing.T) io.Reader {
	t.Helper()
	f, err := os.Open("testdata/prometheus.golden")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(f)
	if err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	enc := expfmt.NewEncoder(&out, expfmt.NewFormat(expfmt.TypeTextPlain))
	for _, fam := range fams {
		for _, m := range fam.GetMetric() {
			slices.SortFunc(m.Label, func(a, b *dto.LabelPair) int {
				return strings.Compare(a.GetName(), b.GetName())
			})
		}
		if err := enc.Encode(fam); err != nil {
			t.Fatal(err)
		}
	}
	return &out
}

// TestCollectorLabels: label values are escaped as the text format asks
// and made valid UTF-8 (the library refuses one that is not; an export's
// name need not be).
func TestCollectorLabels(t *testing.T) {
	sn := &Snapshot{Exports: []ExportState{{Name: "a\"b\\c\nd\xff", Size: 1 << 40}}}
	c := NewCollector(func() *Snapshot { return sn })
	want := `# HELP nbdring_export_size_bytes The export's size as advertised.
# TYPE nbdring_export_size_bytes gauge
nbdring_export_size_bytes{export="a\"b\\c\nd` + "\uFFFD" + `"} 1099511627776
`
	err := testutil.CollectAndCompare(c, strings.NewReader(want), "nbdring_export_size_bytes")
	if err != nil {
		t.Fatal(err)
	}
}

// gatherSum adds the samples of family name (a counter or gauge) whose
// labels include want's, from one scrape of g.
func gatherSum(t *testing.T, g prometheus.Gatherer, name string, want ...string) float64 {
	t.Helper()
	fams, err := g.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var v float64
	for _, f := range fams {
		if f.GetName() != name {
			continue
		}
	next:
		for _, m := range f.GetMetric() {
			have := map[string]string{}
			for _, l := range m.GetLabel() {
				have[l.GetName()] = l.GetValue()
			}
			for i := 0; i+1 < len(want); i += 2 {
				if have[want[i]] != want[i+1] {
					continue next
				}
			}
			v += m.GetCounter().GetValue() + m.GetGauge().GetValue()
		}
	}
	return v
}

// TestCollectorScrapeOnly: with the collector registered and scraped
// between rounds of requests, the request path still allocates nothing
// (the library is not on it), and each scrape reads the shards' live
// counters: requests_total grows by exactly the requests sent.
func TestCollectorScrapeOnly(t *testing.T) {
	srv, sock, _ := testServer(t, 16<<20, 1)
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(NewCollector(srv.Snapshot))
	tc := dial(t, sock, wire.ClientOptions{BlockSize: true})
	buf := make([]byte, 4096)
	read := func() { tc.do(wire.CmdRead, 0, 8192, 4096, nil, buf) }
	read()           // warm up
	const runs = 200 // AllocsPerRun calls read once more to warm up
	for round := range 3 {
		before := gatherSum(t, reg, "nbdring_requests_total", "command", "read")
		if allocs := testing.AllocsPerRun(runs, read); allocs != 0 {
			t.Errorf("round %d: %v allocations per request with the collector "+
				"registered", round, allocs)
		}
		got := gatherSum(t, reg, "nbdring_requests_total", "command", "read") - before
		if got != runs+1 {
			t.Errorf("round %d: scrape counted %v READs, want %d", round, got, runs+1)
		}
	}
	if n := gatherSum(t, reg, "nbdring_request_bytes_total", "command", "read"); n !=
		4096*(1+3*(runs+1)) {
		t.Errorf("nbdring_request_bytes_total{command=read} = %v", n)
	}
}
