package profile

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"sort"
	"strings"
	"time"

	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

// StageNames are nbdring's request stages, in a request's order: the
// histograms nbdring_request_<name>_seconds on /metrics (docs/metrics.md
// defines each).
var StageNames = []string{"receive", "queue", "device", "send"}

// StageHist is one stage's histogram summed over commands: cumulative
// counts by upper bound (seconds), the count and the sum (seconds).
type StageHist struct {
	Bounds []float64
	Cum    []uint64
	Count  uint64
	Sum    float64
}

// Stages is one reading of the stage histograms, by stage name.
type Stages map[string]*StageHist

// ParseStages reads the stage histograms from a /metrics page; a page
// without them gives an empty Stages (an nbdring older than them).
func ParseStages(r io.Reader) (Stages, error) {
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(r)
	if err != nil {
		return nil, fmt.Errorf("/metrics: %w", err)
	}
	st := Stages{}
	for _, name := range StageNames {
		f := fams["nbdring_request_"+name+"_seconds"]
		if f == nil {
			continue
		}
		h := &StageHist{}
		for _, m := range f.GetMetric() {
			hm := m.GetHistogram()
			if hm == nil {
				continue
			}
			h.Count += hm.GetSampleCount()
			h.Sum += hm.GetSampleSum()
			for i, b := range hm.GetBucket() {
				if i == len(h.Bounds) {
					h.Bounds = append(h.Bounds, b.GetUpperBound())
					h.Cum = append(h.Cum, 0)
				}
				h.Cum[i] += b.GetCumulativeCount()
			}
		}
		st[name] = h
	}
	return st, nil
}

// FetchStages reads base/metrics and parses its stage histograms; a server
// without /metrics gives an empty Stages.
func FetchStages(ctx context.Context, base string) (Stages, error) {
	data, err := get(ctx, base, "/metrics", 10*time.Second)
	if errors.Is(err, errNotFound) {
		return Stages{}, nil
	}
	if err != nil {
		return nil, err
	}
	return ParseStages(strings.NewReader(string(data)))
}

// delta is after less before: the observations made between the readings.
func (a *StageHist) delta(before *StageHist) *StageHist {
	d := &StageHist{Bounds: a.Bounds, Cum: make([]uint64, len(a.Cum)), Count: a.Count,
		Sum: a.Sum}
	copy(d.Cum, a.Cum)
	if before != nil && len(before.Cum) == len(a.Cum) {
		for i := range d.Cum {
			d.Cum[i] -= before.Cum[i]
		}
		d.Count -= before.Count
		d.Sum -= before.Sum
	}
	return d
}

// Quantile estimates the q quantile as Prometheus's histogram_quantile
// does: linearly within the bucket that holds it (the lowest bucket from
// 0; past the last finite bound, that bound). NaN without observations.
func (h *StageHist) Quantile(q float64) float64 {
	if h.Count == 0 {
		return math.NaN()
	}
	rank := q * float64(h.Count)
	i := sort.Search(len(h.Cum), func(i int) bool { return float64(h.Cum[i]) >= rank })
	if i == len(h.Cum) || math.IsInf(h.Bounds[i], 1) && i > 0 {
		return h.Bounds[max(i-1, 0)]
	}
	lo, below := 0.0, uint64(0)
	if i > 0 {
		lo, below = h.Bounds[i-1], h.Cum[i-1]
	}
	in := h.Cum[i] - below
	if in == 0 {
		return h.Bounds[i]
	}
	return lo + (h.Bounds[i]-lo)*(rank-float64(below))/float64(in)
}

// WriteStageDelta prints, per stage, the requests timed between the two
// readings, their mean and p50/p99 estimates.
func WriteStageDelta(w io.Writer, before, after Stages) {
	if len(after) == 0 {
		fmt.Fprintln(w, "(no per-stage histograms on /metrics: an nbdring older than them)")
		return
	}
	fmt.Fprintln(w, "request stages over the capture (all commands; p50/p99 estimated "+
		"from the buckets):")
	fmt.Fprintf(w, "  %-8s %10s %10s %10s %10s\n", "stage", "requests", "mean", "p50", "p99")
	for _, name := range StageNames {
		a := after[name]
		if a == nil {
			continue
		}
		d := a.delta(before[name])
		if d.Count == 0 {
			fmt.Fprintf(w, "  %-8s %10d\n", name, 0)
			continue
		}
		fmt.Fprintf(w, "  %-8s %10d %10s %10s %10s\n", name, d.Count,
			fmtSeconds(d.Sum/float64(d.Count)), fmtSeconds(d.Quantile(0.5)),
			fmtSeconds(d.Quantile(0.99)))
	}
}

// fmtSeconds prints s seconds in microseconds, the scale of a request.
func fmtSeconds(s float64) string { return fmt.Sprintf("%.1fus", s*1e6) }
