package bench

import (
	"fmt"
	"io"
	"math"
	"slices"
	"strconv"
	"strings"
)

// chartBytesFrom is the block size from which a chart shows GB/s instead
// of IOPS: below it a request's fixed cost dominates and operations are
// what a server sustains; from 64 KiB on, the bytes are.
const chartBytesFrom = 64 << 10

// Chart geometry, in SVG pixels.
const (
	chartWidth   = 980
	chartTop     = 58  // below the document's heading, with one line of note
	noteLine     = 16  // each further line of note
	noteChars    = 140 // a note line's length: 12-pixel DejaVu Sans fits ~145 in 956
	labelRight   = 96  // right edge of the server names
	tputLeft     = 104
	tputWidth    = 470
	cpuLeft      = 650
	cpuWidth     = 290
	barHeight    = 18
	barPitch     = 26
	panelHead    = 62 // panel title, subtitle and chart headings
	panelFoot    = 52 // tick labels, axis titles and the gap to the next panel
	chartTickMax = 6  // at most this many intervals on an axis
)

var chartColors = []string{"#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd",
	"#8c564b"}

// WriteSVG draws one panel per workload, stacked in one SVG: on the left
// each server's throughput (IOPS, or GB/s from chartBytesFrom on; higher
// is better) with the range over rounds as a whisker, on the right its
// CPU time per operation in microseconds (lower is better). note (the
// machine, rounds and duration) heads the document.
func WriteSVG(w io.Writer, rows []Row, note string) {
	servers, workloads := axes(rows)
	at := index(rows)
	if rows[0].Timestamp != "" {
		note += ", started " + rows[0].Timestamp
	}
	lines := wrap(note, noteChars)
	top := chartTop + (len(lines)-1)*noteLine
	panelH := panelHead + len(servers)*barPitch + panelFoot
	height := top + len(workloads)*panelH
	var b strings.Builder
	fmt.Fprintf(&b, `<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" `+
		`viewBox="0 0 %d %d" font-family="DejaVu Sans, sans-serif" font-size="12">`+"\n",
		chartWidth, height, chartWidth, height)
	fmt.Fprintf(&b, `<rect width="%d" height="%d" fill="white"/>`+"\n", chartWidth, height)
	fmt.Fprintf(&b, `<text x="12" y="22" font-size="16" font-weight="bold">nbdbench `+
		`compare: %s</text>`+"\n", esc(strings.Join(servers, ", ")))
	for i, l := range lines {
		fmt.Fprintf(&b, `<text x="12" y="%d" fill="#444">%s</text>`+"\n", 42+i*noteLine,
			esc(l))
	}
	for wi, wl := range workloads {
		var prs []Row
		for _, s := range servers {
			prs = append(prs, at[[2]string{s, wl}])
		}
		writePanel(&b, prs, top+wi*panelH)
	}
	b.WriteString("</svg>\n")
	io.WriteString(w, b.String())
}

// wrap breaks s at spaces into lines of at most n bytes (a longer word
// stays whole).
func wrap(s string, n int) []string {
	var lines []string
	line := ""
	for _, w := range strings.Fields(s) {
		if line != "" && len(line)+1+len(w) > n {
			lines, line = append(lines, line), ""
		}
		if line != "" {
			line += " "
		}
		line += w
	}
	return append(lines, line)
}

// writePanel draws one workload's rows (one per server) from y0 down.
func writePanel(b *strings.Builder, rows []Row, y0 int) {
	r0 := rows[0]
	fmt.Fprintf(b, `<g class="panel" data-workload="%s">`+"\n", esc(r0.Workload))
	fmt.Fprintf(b, `<line x1="12" y1="%d" x2="%d" y2="%d" stroke="#bbb"/>`+"\n", y0,
		chartWidth-12, y0)
	fmt.Fprintf(b, `<text x="12" y="%d" font-size="14" font-weight="bold">%s</text>`+"\n",
		y0+20, esc(panelTitle(r0)))
	fmt.Fprintf(b, `<text x="12" y="%d" fill="#444">%s</text>`+"\n", y0+37,
		esc(panelSubtitle(r0)))
	bytes := r0.BlockSize >= chartBytesFrom
	tput := func(r Row) (v, lo, hi float64) {
		v, lo, hi = r.IOPS, r.IOPS, r.IOPS
		for _, x := range r.RoundsIOPS {
			lo, hi = min(lo, x), max(hi, x)
		}
		if bytes {
			// Rounds are kept as IOPS; a round's bytes are its IOPS times
			// the block size.
			bs := float64(r.BlockSize) / 1e9
			v, lo, hi = r.BytesPerSec/1e9, lo*bs, hi*bs
		}
		return v, lo, hi
	}
	head, axis := "IOPS, higher is better", "operations per second"
	if bytes {
		head, axis = "throughput, higher is better", "GB/s (10⁹ bytes per second)"
	}
	barsTop := y0 + panelHead
	var vals, his, cpus []float64
	for _, r := range rows {
		v, _, hi := tput(r)
		vals, his, cpus = append(vals, v), append(his, hi), append(cpus, r.ServerCPUUsPerOp)
	}
	tmax, tstep := axisMax(slices.Max(his))
	cmax, cstep := axisMax(slices.Max(cpus))
	writeAxis(b, tputLeft, tputWidth, barsTop, len(rows), tmax, tstep, head, axis, !bytes)
	writeAxis(b, cpuLeft, cpuWidth, barsTop, len(rows), cmax, cstep,
		"server CPU per operation, lower is better", "µs of CPU time per operation", false)
	for i, r := range rows {
		y := barsTop + i*barPitch + (barPitch-barHeight)/2
		color := chartColors[i%len(chartColors)]
		fmt.Fprintf(b, `<text x="%d" y="%d" text-anchor="end">%s</text>`+"\n", labelRight,
			y+barHeight-4, esc(r.Server))
		v, lo, hi := tput(r)
		label := valueLabel(v, !bytes)
		if r.Errors > 0 {
			label += fmt.Sprintf(" (%d errors)", r.Errors)
		}
		end := writeBar(b, "tput", tputLeft, tputWidth, y, v, tmax, color)
		if len(r.RoundsIOPS) > 1 && hi > lo {
			x1, x2 := scale(lo, tmax, tputLeft, tputWidth), scale(hi, tmax, tputLeft, tputWidth)
			ym := y + barHeight/2
			fmt.Fprintf(b, `<path class="whisker" d="M%.1f %d H%.1f M%.1f %d V%d M%.1f %d V%d" `+
				`stroke="#222" stroke-width="1.2" fill="none"/>`+"\n", x1, ym, x2, x1, ym-4,
				ym+4, x2, ym-4, ym+4)
			end = max(end, x2)
		}
		writeLabel(b, end, y, label)
		end = writeBar(b, "cpu", cpuLeft, cpuWidth, y, r.ServerCPUUsPerOp, cmax, color)
		writeLabel(b, end, y, valueLabel(r.ServerCPUUsPerOp, false))
	}
	b.WriteString("</g>\n")
}

// panelTitle names the workload: "randread, 4 KiB blocks, queue depth
// 32, 1 connection".
func panelTitle(r Row) string {
	conns := "1 connection"
	if r.Connections != 1 {
		conns = strconv.Itoa(r.Connections) + " connections"
	}
	return fmt.Sprintf("%s, %s blocks, queue depth %d, %s", r.RW, sizeLabel(r.BlockSize),
		r.QueueDepth, conns)
}

// panelSubtitle says what served it and what drove it.
func panelSubtitle(r Row) string {
	s := fmt.Sprintf("backing %s (%s), client %s", r.BackingPath, r.BackingKind, r.Client)
	if r.TLS {
		s += " over TLS"
	}
	switch {
	case r.Rounds == 1:
		s += fmt.Sprintf(", 1 round of %gs", r.DurationSeconds)
	case r.Rounds > 1:
		s += fmt.Sprintf(", median of %d rounds of %gs; whisker: range over rounds",
			r.Rounds, r.DurationSeconds)
	}
	return s
}

// writeAxis draws one chart's heading, vertical grid lines with tick
// labels below the bars, and the axis title.
func writeAxis(b *strings.Builder, x0, width, top, n int, vmax, step float64,
	head, title string, count bool) {
	bottom := top + n*barPitch
	fmt.Fprintf(b, `<text x="%d" y="%d" font-weight="bold">%s</text>`+"\n", x0, top-8,
		esc(head))
	for i := 0; float64(i)*step <= vmax*(1+1e-9); i++ {
		v := float64(i) * step
		x := scale(v, vmax, x0, width)
		fmt.Fprintf(b, `<line x1="%.1f" y1="%d" x2="%.1f" y2="%d" stroke="#ddd"/>`+"\n", x,
			top, x, bottom)
		fmt.Fprintf(b, `<text class="tick" x="%.1f" y="%d" text-anchor="middle" `+
			`fill="#333">%s</text>`+"\n", x, bottom+15, tickLabel(v, step, count))
	}
	fmt.Fprintf(b, `<line x1="%d" y1="%d" x2="%d" y2="%d" stroke="#333"/>`+"\n", x0, top,
		x0, bottom)
	fmt.Fprintf(b, `<line x1="%d" y1="%d" x2="%d" y2="%d" stroke="#333"/>`+"\n", x0, bottom,
		x0+width, bottom)
	fmt.Fprintf(b, `<text class="axis" x="%d" y="%d" text-anchor="middle" fill="#333">%s`+
		`</text>`+"\n", x0+width/2, bottom+32, esc(title))
}

// writeBar draws a bar of v on an axis ending at vmax and returns where
// it ends.
func writeBar(b *strings.Builder, class string, x0, width, y int, v, vmax float64,
	color string) float64 {
	x := scale(v, vmax, x0, width)
	fmt.Fprintf(b, `<rect class="%s" x="%d" y="%d" width="%.1f" height="%d" fill="%s"/>`+
		"\n", class, x0, y, x-float64(x0), barHeight, color)
	return x
}

// writeLabel writes a bar's value just past x, the end of what the bar
// drew.
func writeLabel(b *strings.Builder, x float64, y int, label string) {
	fmt.Fprintf(b, `<text class="value" x="%.1f" y="%d">%s</text>`+"\n", x+6,
		y+barHeight-4, esc(label))
}

func scale(v, vmax float64, x0, width int) float64 {
	return float64(x0) + v/vmax*float64(width)
}

// axisMax is the axis's end, a tick at or above v with room for the
// value label drawn past the longest bar, and the step between ticks.
func axisMax(v float64) (vmax, step float64) {
	if v <= 0 {
		return 1, tickStep(1)
	}
	want := v * 1.2
	step = tickStep(want)
	return math.Ceil(want/step-1e-9) * step, step
}

// tickStep is 1, 2 or 5 times a power of ten, giving at most chartTickMax
// intervals up to vmax.
func tickStep(vmax float64) float64 {
	raw := vmax / chartTickMax
	mag := math.Pow(10, math.Floor(math.Log10(raw)))
	for _, f := range []float64{1, 2, 5, 10} {
		if f*mag >= raw {
			return f * mag
		}
	}
	return 10 * mag
}

// tickLabel writes v with as many decimals as step needs; counts
// (IOPS) in thousands as "20k" once the step is.
func tickLabel(v, step float64, count bool) string {
	if v == 0 {
		return "0"
	}
	if count && step >= 1000 {
		return strconv.FormatFloat(v/1000, 'f', decimals(step/1000), 64) + "k"
	}
	return strconv.FormatFloat(v, 'f', decimals(step), 64)
}

func decimals(step float64) int {
	return max(0, int(-math.Floor(math.Log10(step)+1e-9)))
}

// valueLabel writes a bar's value to three significant digits, counts
// from 1000 on in thousands ("6.79k", "41.2k").
func valueLabel(v float64, count bool) string {
	if count && v >= 1000 {
		return valueLabel(v/1000, false) + "k"
	}
	switch {
	case v >= 100:
		return strconv.FormatFloat(v, 'f', 0, 64)
	case v >= 10:
		return strconv.FormatFloat(v, 'f', 1, 64)
	}
	return strconv.FormatFloat(v, 'f', 2, 64)
}

// sizeLabel writes 4096 as "4 KiB" and 1048576 as "1 MiB".
func sizeLabel(n int) string {
	switch {
	case n >= 1<<20 && n%(1<<20) == 0:
		return strconv.Itoa(n>>20) + " MiB"
	case n >= 1<<10 && n%(1<<10) == 0:
		return strconv.Itoa(n>>10) + " KiB"
	}
	return strconv.Itoa(n) + " B"
}
