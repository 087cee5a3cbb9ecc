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
	writeFloor(w, rows)
}

// floorServer is the pseudo-server compare runs as the yardstick: the
// bare pread/write loop of nbdbench floor.
const floorServer = "floor"

// writeFloor prints, for each 1 MiB workload that the floor ran, every
// other server's throughput and CPU per MiB as fractions of the floor's:
// how close a server comes to the bare loop on the same file, cores and
// client.
func writeFloor(w io.Writer, rows []Row) {
	servers, workloads := axes(rows)
	at := index(rows)
	header := false
	for _, wl := range workloads {
		f, ok := at[[2]string{floorServer, wl}]
		if !ok || f.BlockSize != 1<<20 || f.BytesPerSec <= 0 || f.ServerCPUUsPerOp <= 0 {
			continue
		}
		if !header {
			fmt.Fprintf(w, "\nagainst the floor (bare pread+write loop), 1 MiB workloads: "+
				"throughput and server CPU per MiB as fractions of the floor's\n")
			header = true
		}
		fmt.Fprintf(w, "%-22s %-10s %6.0f MB/s  %5.0f us/MiB\n", wl, floorServer,
			f.BytesPerSec/1e6, f.ServerCPUUsPerOp)
		for _, s := range servers {
			r, ok := at[[2]string{s, wl}]
			if s == floorServer || !ok {
				continue
			}
			fmt.Fprintf(w, "%-22s %-10s %5.2fx floor MB/s, %5.2fx floor CPU\n", "", s,
				r.BytesPerSec/f.BytesPerSec, r.ServerCPUUsPerOp/f.ServerCPUUsPerOp)
		}
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
