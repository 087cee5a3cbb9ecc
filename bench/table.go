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

func esc(s string) string {
	return strings.NewReplacer("&", "&amp;", "<", "&lt;", ">", "&gt;").Replace(s)
}
