package bench

import (
	"math/rand/v2"
	"slices"
	"testing"
	"time"
)

func TestHistIndexLow(t *testing.T) {
	prev := -1
	for _, v := range []int64{0, 1, 63, 64, 65, 127, 128, 1000, 1 << 20, 1<<40 + 12345, 1<<62 + 1} {
		i := histIndex(v)
		if i < prev {
			t.Fatalf("index not monotonic at %d", v)
		}
		prev = i
		lo := histLow(i)
		if lo > v || (i+1 < histBuckets && histLow(i+1) <= v) {
			t.Fatalf("value %d in bucket %d [%d, %d)", v, i, lo, histLow(i+1))
		}
	}
}

// TestPercentiles compares with exact percentiles of sorted samples: the
// error must stay within one bucket (1/64 relative).
func TestPercentiles(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	var h Histogram
	var vals []int64
	for i := 0; i < 100000; i++ {
		// Log-normal-ish latencies from 10 us to ~100 ms.
		v := int64(10_000 * (1 + rng.ExpFloat64()*rng.ExpFloat64()*50))
		vals = append(vals, v)
		h.Record(time.Duration(v))
	}
	slices.Sort(vals)
	for _, q := range []float64{0.5, 0.9, 0.99, 0.999, 1} {
		exact := vals[int(q*float64(len(vals)))-1]
		got := int64(h.Percentile(q))
		if diff := got - exact; diff > exact/64+1 || -diff > exact/64+1 {
			t.Errorf("p%v = %d, exact %d", q*100, got, exact)
		}
	}
	if h.Max() != time.Duration(vals[len(vals)-1]) || h.Count() != uint64(len(vals)) {
		t.Fatalf("max %v count %d", h.Max(), h.Count())
	}
	var m Histogram
	m.Merge(&h)
	m.Merge(&h)
	if m.Count() != 2*h.Count() || m.Percentile(0.5) != h.Percentile(0.5) {
		t.Fatal("merging a histogram with itself changed its median")
	}
	var empty Histogram
	if empty.Percentile(0.99) != 0 {
		t.Fatal("empty histogram has a p99")
	}
}

func TestRecordDoesNotAllocate(t *testing.T) {
	var h Histogram
	if n := testing.AllocsPerRun(1000, func() { h.Record(1234567) }); n != 0 {
		t.Fatalf("Record allocates %v times", n)
	}
}

func TestPatternChecks(t *testing.T) {
	b := make([]byte, 4096)
	fillPattern(b, 8192, 3)
	if e := checkPattern(b, 8192, 3); e != nil {
		t.Fatal(e)
	}
	if e := checkPattern(b, 8192, 0); e != nil {
		t.Fatalf("unknown generation must accept any: %v", e)
	}
	if e := checkPattern(b, 8192, 4); e == nil || e.Offset != 8192 {
		t.Fatalf("stale generation not caught: %v", e)
	}
	if e := checkPattern(b, 4096, 3); e == nil || e.Offset != 4096 {
		t.Fatalf("misplaced block not caught: %v", e)
	}
	b[1024+100] ^= 1
	if e := checkPattern(b, 8192, 3); e == nil || e.Offset != 8192+1024 {
		t.Fatalf("flipped bit not caught at its sector: %v", e)
	}
	if e := checkPattern(make([]byte, 512), 0, 0); e != nil {
		t.Fatalf("zeros of a never-written block rejected: %v", e)
	}
	if e := checkPattern(make([]byte, 512), 0, 1); e == nil {
		t.Fatal("zeros accepted where a write completed")
	}
}

func TestParseURI(t *testing.T) {
	dir := t.TempDir()
	for _, c := range []struct {
		in         string
		want       Target // without TLS
		serverName string // "": plaintext
		bad        bool
	}{
		{"nbd://localhost/", Target{"tcp", "localhost:10809", "", nil}, "", false},
		{"nbd://10.0.0.1:1234/disk", Target{"tcp", "10.0.0.1:1234", "disk", nil}, "", false},
		{"nbd+unix:///x?socket=/tmp/s", Target{"unix", "/tmp/s", "x", nil}, "", false},
		{"nbd+unix:///x", Target{}, "", true},
		{"nbds://h/", Target{"tcp", "h:10809", "", nil}, "h", false},
		{"nbds+unix:///x?socket=/tmp/s", Target{"unix", "/tmp/s", "x", nil}, "localhost", false},
		{"nbds+unix:///?socket=/s&tls-hostname=srv", Target{"unix", "/s", "", nil}, "srv", false},
		{"nbds://h/?tls-certificates=" + dir, Target{}, "", true}, // no ca-cert.pem
		{"nbds://h/?tls-verify-peer=maybe", Target{}, "", true},
		{"https://h/", Target{}, "", true},
	} {
		got, err := ParseURI(c.in)
		tlsName := ""
		if got.TLS != nil {
			tlsName = got.TLS.ServerName
		}
		got.TLS = nil
		if (err != nil) != c.bad || got != c.want || tlsName != c.serverName {
			t.Errorf("ParseURI(%q) = %+v (TLS server name %q), %v", c.in, got, tlsName, err)
		}
	}
}

func TestParseSize(t *testing.T) {
	for in, want := range map[string]int{"512": 512, "4k": 4096, "64K": 65536, "1M": 1 << 20,
		"2G": 2 << 30} {
		if got, err := ParseSize(in); err != nil || got != want {
			t.Errorf("ParseSize(%q) = %d, %v", in, got, err)
		}
		if FormatSize(want) != in && in != "64K" && in != "2G" {
			t.Errorf("FormatSize(%d) = %q", want, FormatSize(want))
		}
	}
	if _, err := ParseSize("4x"); err == nil {
		t.Error("ParseSize accepted 4x")
	}
}
