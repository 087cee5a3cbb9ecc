package profile

import (
	"math"
	"os"
	"strings"
	"testing"
)

// TestStagesFromRealPage: the stage histograms parse from the page the
// server's collector writes (engine's golden page, which its own test
// checks against the collector), summed over commands.
func TestStagesFromRealPage(t *testing.T) {
	page, err := os.ReadFile("../../engine/testdata/prometheus.golden")
	if err != nil {
		t.Fatal(err)
	}
	st, err := ParseStages(strings.NewReader(string(page)))
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range StageNames {
		h := st[name]
		if h == nil || h.Count == 0 || h.Sum <= 0 || len(h.Bounds) != 19 {
			t.Fatalf("stage %s: %+v", name, h)
		}
		if h.Cum[len(h.Cum)-1] > h.Count {
			t.Fatalf("stage %s: %d in the buckets, %d in all", name, h.Cum[len(h.Cum)-1],
				h.Count)
		}
	}
	var out strings.Builder
	WriteStageDelta(&out, Stages{}, st)
	for _, name := range StageNames {
		if !strings.Contains(out.String(), "\n  "+name+" ") {
			t.Fatalf("no %s row in:\n%s", name, out.String())
		}
	}
	out.Reset()
	WriteStageDelta(&out, st, st) // nothing between the readings
	if !strings.Contains(out.String(), "device            0\n") {
		t.Fatalf("an empty window shows requests:\n%s", out.String())
	}
}

// TestStageQuantile: estimates interpolate within the bucket that holds
// the rank, as histogram_quantile does.
func TestStageQuantile(t *testing.T) {
	h := &StageHist{Bounds: []float64{10e-6, 20e-6, 50e-6, math.Inf(1)},
		Cum: []uint64{0, 80, 100, 110}, Count: 110}
	for _, c := range []struct{ q, want float64 }{{0.5, 16.875e-6}, {0.8, 32e-6},
		{0.99, 50e-6}} {
		if got := h.Quantile(c.q); math.Abs(got-c.want) > 1e-12 {
			t.Errorf("q%v = %v, want %v", c.q, got, c.want)
		}
	}
	if got := (&StageHist{}).Quantile(0.5); !math.IsNaN(got) {
		t.Errorf("empty histogram's median %v, want NaN", got)
	}
}
