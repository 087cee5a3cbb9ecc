package bench

import (
	"fmt"
	"io"
	"strings"
)

// WriteTable prints rows side by side: one line per workload, one column
// per server, each with its ratio to the first server (nbdring when run).
func WriteTable(w io.Writer, rows []Row) {
	servers, workloads := axes(rows)
	at := index(rows)
	fmt.Fprintf(w, "%-22s", "workload")
	for _, s := range servers {
		fmt.Fprintf(w, " | %-32s", s)
	}
	fmt.Fprintln(w)
	fmt.Fprintf(w, "%-22s", "")
	for range servers {
		fmt.Fprintf(w, " | %10s %6s %6s %7s", "IOPS", "ratio", "MB/s", "cpu/op")
	}
	fmt.Fprintln(w)
	for _, wl := range workloads {
		fmt.Fprintf(w, "%-22s", wl)
		base := at[[2]string{servers[0], wl}]
		for _, s := range servers {
			r := at[[2]string{s, wl}]
			ratio := 0.0
			if base.IOPS > 0 {
				ratio = r.IOPS / base.IOPS
			}
			fmt.Fprintf(w, " | %10.0f %6.2f %6.0f %5.1fus", r.IOPS, ratio, r.BytesPerSec/1e6,
				r.ServerCPUUsPerOp)
		}
		fmt.Fprintln(w)
	}
}

func axes(rows []Row) (servers, workloads []string) {
	seen := map[string]bool{}
	for _, r := range rows {
		if !seen["s"+r.Server] {
			seen["s"+r.Server] = true
			servers = append(servers, r.Server)
		}
		if !seen["w"+r.Workload] {
			seen["w"+r.Workload] = true
			workloads = append(workloads, r.Workload)
		}
	}
	return servers, workloads
}

func index(rows []Row) map[[2]string]Row {
	m := map[[2]string]Row{}
	for _, r := range rows {
		m[[2]string{r.Server, r.Workload}] = r
	}
	return m
}

// WriteSVG draws the table as grouped bars: per workload one bar per
// server, its height the IOPS ratio to the first server, labelled with the
// ratio and the server's CPU per operation.
func WriteSVG(w io.Writer, rows []Row, title string) {
	servers, workloads := axes(rows)
	at := index(rows)
	const barW, gap, plotH, top, left = 28, 24, 260, 110, 50
	groupW := len(servers)*barW + gap
	width := max(left+len(workloads)*groupW+160, 760)
	height := top + plotH + 90
	maxRatio := 1.0
	for _, r := range rows {
		if b := at[[2]string{servers[0], r.Workload}]; b.IOPS > 0 {
			maxRatio = max(maxRatio, r.IOPS/b.IOPS)
		}
	}
	colors := []string{"#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd"}
	var b strings.Builder
	fmt.Fprintf(&b, `<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" `+
		`font-family="sans-serif" font-size="11">`+"\n", width, height)
	fmt.Fprintf(&b, `<text x="%d" y="20" font-size="14">nbdbench compare: IOPS relative `+
		`to %s (higher is better)</text>`+"\n", left, esc(servers[0]))
	fmt.Fprintf(&b, `<text x="%d" y="38">%s</text>`+"\n", left, esc(title))
	fmt.Fprintf(&b, `<text x="%d" y="54">bar label: ratio / server CPU us per op</text>`+
		"\n", left)
	y1 := top + plotH - int(plotH/maxRatio)
	fmt.Fprintf(&b, `<line x1="%d" y1="%d" x2="%d" y2="%d" stroke="#999" `+
		`stroke-dasharray="4"/>`+"\n", left, y1, left+len(workloads)*groupW, y1)
	for wi, wl := range workloads {
		base := at[[2]string{servers[0], wl}]
		x0 := left + wi*groupW
		for si, s := range servers {
			r := at[[2]string{s, wl}]
			ratio := 0.0
			if base.IOPS > 0 {
				ratio = r.IOPS / base.IOPS
			}
			h := int(ratio / maxRatio * plotH)
			x := x0 + si*barW
			fmt.Fprintf(&b, `<rect x="%d" y="%d" width="%d" height="%d" fill="%s"/>`+"\n",
				x, top+plotH-h, barW-4, h, colors[si%len(colors)])
			fmt.Fprintf(&b, `<text x="%d" y="%d" transform="rotate(-90 %d %d)">%.2f / %.0f`+
				`</text>`+"\n", x+barW/2+2, top+plotH-h-4, x+barW/2+2, top+plotH-h-4, ratio,
				r.ServerCPUUsPerOp)
		}
		fmt.Fprintf(&b, `<text x="%d" y="%d">%s</text>`+"\n", x0, top+plotH+16, esc(wl))
	}
	for si, s := range servers {
		y := top + 10 + si*16
		lx := left + len(workloads)*groupW + 10
		fmt.Fprintf(&b, `<rect x="%d" y="%d" width="10" height="10" fill="%s"/>`+
			`<text x="%d" y="%d">%s</text>`+"\n", lx, y, colors[si%len(colors)], lx+14, y+9,
			esc(s))
	}
	b.WriteString("</svg>\n")
	io.WriteString(w, b.String())
}

func esc(s string) string {
	return strings.NewReplacer("&", "&amp;", "<", "&lt;", ">", "&gt;").Replace(s)
}
