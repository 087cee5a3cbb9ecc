package bench

import (
	"encoding/xml"
	"io"
	"math"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

var tableRows = []Row{
	row("nbdring", "randread", 4096, 32, 1, 40000, 164e6, 13, 39000, 41000),
	row("qemu-nbd", "randread", 4096, 32, 1, 20000, 82e6, 40, 20000),
	row("nbdring", "read", 1<<20, 8, 2, 500, 524e6, 90),
	row("qemu-nbd", "read", 1<<20, 8, 2, 750, 786e6, 120, 700, 800),
}

func row(server, rw string, bs, qd, conns int, iops, bps, cpu float64, rounds ...float64) Row {
	r := Row{Server: server, RW: rw, BlockSize: bs, QueueDepth: qd, Connections: conns,
		IOPS: iops, BytesPerSec: bps, ServerCPUUsPerOp: cpu, RoundsIOPS: rounds,
		BackingPath: "/var/b.img", BackingKind: "file", Client: "nbdbench", Rounds: 3,
		DurationSeconds: 5, Timestamp: "2026-12-01T08:00:00Z"}
	c := Config{RW: rw, BS: bs, QD: qd, Conns: conns}
	r.Workload = c.Workload()
	return r
}

func TestWriteTableRatios(t *testing.T) {
	var b strings.Builder
	WriteTable(&b, tableRows)
	lines := strings.Split(b.String(), "\n")
	if len(lines) < 4 || !strings.Contains(lines[0], "nbdring") ||
		!strings.Contains(lines[0], "qemu-nbd") {
		t.Fatalf("table:\n%s", b.String())
	}
	if !strings.Contains(lines[2], "0.50") || !strings.Contains(lines[3], "1.50") {
		t.Fatalf("ratios to nbdring missing:\n%s", b.String())
	}
}

// svgPanel is what one workload's panel of the chart holds.
type svgPanel struct {
	texts    []string             // every text, in order
	bars     map[string][]float64 // widths of the bars by class (tput, cpu), in server order
	whiskers int
}

// parseSVG reads the chart back, panel by panel, failing on XML that is
// not well formed.
func parseSVG(t *testing.T, doc string) map[string]*svgPanel {
	t.Helper()
	panels := map[string]*svgPanel{}
	var cur *svgPanel
	d := xml.NewDecoder(strings.NewReader(doc))
	for {
		tok, err := d.Token()
		if err == io.EOF {
			return panels
		}
		if err != nil {
			t.Fatalf("not well-formed XML: %v", err)
		}
		se, ok := tok.(xml.StartElement)
		if !ok {
			continue
		}
		attr := map[string]string{}
		for _, a := range se.Attr {
			attr[a.Name.Local] = a.Value
		}
		switch se.Name.Local {
		case "g":
			cur = &svgPanel{bars: map[string][]float64{}}
			panels[attr["data-workload"]] = cur
		case "rect":
			if cur != nil {
				w, _ := strconv.ParseFloat(attr["width"], 64)
				cur.bars[attr["class"]] = append(cur.bars[attr["class"]], w)
			}
		case "path":
			if cur != nil && attr["class"] == "whisker" {
				cur.whiskers++
			}
		case "text":
			var s string
			if err := d.DecodeElement(&s, &se); err != nil {
				t.Fatal(err)
			}
			if cur != nil {
				cur.texts = append(cur.texts, s)
			}
		}
	}
}

// TestWriteSVG checks the chart: a panel per workload whose title names
// the workload, block size, queue depth, connections, backing and client;
// throughput in IOPS for 4 KiB and GB/s for 1 MiB and server CPU per op
// in microseconds, each on an axis with tick labels; bars to scale; a
// whisker where rounds differ.
func TestWriteSVG(t *testing.T) {
	var b strings.Builder
	WriteSVG(&b, tableRows, "machine <x> & y")
	panels := parseSVG(t, b.String())
	if len(panels) != 2 {
		t.Fatalf("%d panels, want one per workload (2)", len(panels))
	}
	for wl, want := range map[string]struct {
		texts    []string
		tput     []float64 // bar lengths relative to the first
		cpu      []float64
		whiskers int
	}{
		"randread:4k:32:1": {[]string{"randread, 4 KiB blocks, queue depth 32, 1 connection",
			"operations per second", "0", "10k", "50k", "40.0k", "20.0k", "13.0", "40.0"},
			[]float64{1, 0.5}, []float64{1, 40.0 / 13}, 1},
		"read:1M:8:2": {[]string{"read, 1 MiB blocks, queue depth 8, 2 connections",
			"GB/s (10⁹ bytes per second)", "0.4", "1.0", "0.52", "0.79", "90.0", "120"},
			[]float64{1, 786.0 / 524}, []float64{1, 120.0 / 90}, 1},
	} {
		p := panels[wl]
		if p == nil {
			t.Fatalf("no panel for %s", wl)
		}
		all := strings.Join(p.texts, "\n")
		want.texts = append(want.texts, "nbdring", "qemu-nbd", "backing /var/b.img (file), "+
			"client nbdbench", "µs of CPU time per operation")
		for _, s := range want.texts {
			if !slices.Contains(p.texts, s) && !strings.Contains(all, s) {
				t.Errorf("%s: no text %q in %q", wl, s, p.texts)
			}
		}
		for class, ratios := range map[string][]float64{"tput": want.tput, "cpu": want.cpu} {
			bars := p.bars[class]
			if len(bars) != len(ratios) {
				t.Fatalf("%s: %d %s bars, want %d", wl, len(bars), class, len(ratios))
			}
			for i, r := range ratios {
				if got := bars[i] / bars[0]; math.Abs(got-r) > 0.01 {
					t.Errorf("%s: %s bar %d is %.3f of the first, want %.3f", wl, class, i,
						got, r)
				}
			}
		}
		if p.whiskers != want.whiskers {
			t.Errorf("%s: %d whiskers, want %d", wl, p.whiskers, want.whiskers)
		}
	}
	if strings.Contains(panels["randread:4k:32:1"].texts[0], "GB/s") ||
		slices.Contains(panels["read:1M:8:2"].texts, "operations per second") {
		t.Errorf("units crossed between panels")
	}
}

func TestTicks(t *testing.T) {
	for _, tc := range []struct {
		v, max, step float64
	}{{41000, 50000, 10000}, {0.79, 1, 0.2}, {0.839, 1.2, 0.2}, {120, 150, 50},
		{13, 20, 5}, {0, 1, 0.2}} {
		if m, step := axisMax(tc.v); math.Abs(m-tc.max) > 1e-9 || step != tc.step {
			t.Errorf("axis for %v: max %v step %v, want %v %v", tc.v, m, step, tc.max,
				tc.step)
		}
	}
	for v, want := range map[float64]string{6788: "6.79k", 41234: "41.2k", 123456: "123k",
		999: "999", 0.523: "0.52", 13: "13.0"} {
		if got := valueLabel(v, true); got != want {
			t.Errorf("valueLabel(%v) = %q, want %q", v, got, want)
		}
	}
	one := tableRows[0]
	one.Rounds = 1
	if s := panelSubtitle(one); !strings.HasSuffix(s, ", 1 round of 5s") {
		t.Errorf("one round: %q", s)
	}
	if got := tickLabel(20000, 10000, true); got != "20k" {
		t.Errorf("tick 20000 IOPS: %q", got)
	}
	if got := wrap("machine: a b, started t", 12); !slices.Equal(got,
		[]string{"machine: a", "b, started t"}) {
		t.Errorf("wrap: %q", got)
	}
	if got := tickLabel(0.4, 0.2, false); got != "0.4" {
		t.Errorf("tick 0.4 GB/s: %q", got)
	}
}

func TestMedianAndParseWorkloads(t *testing.T) {
	r := median(Row{Server: "s"}, []Result{{IOPS: 3}, {IOPS: 1}, {IOPS: 100}})
	if r.IOPS != 3 || len(r.RoundsIOPS) != 3 || r.Server != "s" {
		t.Fatalf("median %+v", r)
	}
	if r := median(Row{}, []Result{{IOPS: 2}, {IOPS: 4}}); r.IOPS != 3 {
		t.Fatalf("even median %v", r.IOPS)
	}
	ws, err := ParseWorkloads("randread:4k:32:1,read:1M:8:2", time.Second)
	if err != nil || len(ws) != 2 || ws[1].BS != 1<<20 || ws[1].Conns != 2 ||
		ws[0].Workload() != "randread:4k:32:1" {
		t.Fatalf("%v %+v", err, ws)
	}
	for _, bad := range []string{"randread:4k:32", "scan:4k:1:1", "read:4x:1:1"} {
		if _, err := ParseWorkloads(bad, time.Second); err == nil {
			t.Errorf("ParseWorkloads(%q) accepted", bad)
		}
	}
}

// TestWriteTableFloor: with the floor among the servers, each 1 MiB
// workload gets every other server's throughput and CPU per MiB as
// fractions of the floor's; 4 KiB workloads get none, nor does a table
// without the floor.
func TestWriteTableFloor(t *testing.T) {
	rows := append(slices.Clone(tableRows),
		row("floor", "randread", 4096, 32, 1, 80000, 328e6, 10),
		row("floor", "read", 1<<20, 8, 2, 1000, 1048e6, 100))
	var b strings.Builder
	WriteTable(&b, rows)
	out := b.String()
	for _, want := range []string{
		"read:1M:8:2            floor        1048 MB/s    100 us/MiB",
		"nbdring     0.50x floor MB/s,  0.90x floor CPU",
		"qemu-nbd    0.75x floor MB/s,  1.20x floor CPU"} {
		if !strings.Contains(out, want) {
			t.Errorf("table lacks %q:\n%s", want, out)
		}
	}
	if n := strings.Count(out, "x floor MB/s"); n != 2 {
		t.Errorf("%d floor fractions, want 2 (the 1 MiB workload's two servers):\n%s", n, out)
	}
	b.Reset()
	WriteTable(&b, tableRows)
	if strings.Contains(b.String(), "floor") {
		t.Errorf("a table without the floor mentions it:\n%s", b.String())
	}
}
