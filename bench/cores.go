package bench

import (
	"context"
	"fmt"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// CoreSplit is one step of compare -cores: the servers on the first Cores
// CPUs this process may use, the client on the others.
type CoreSplit struct {
	Cores      int
	ServerCPUs string // taskset list
	ClientCPUs string
}

// ParseCores reads compare -cores: core counts, comma-separated ("1,4,8").
func ParseCores(s string) ([]int, error) {
	var out []int
	for _, f := range strings.Split(s, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || n < 1 {
			return nil, fmt.Errorf("-cores %q: want core counts such as 1,4,8", s)
		}
		out = append(out, n)
	}
	return out, nil
}

// SplitCores gives each core count its server and client CPUs among the
// CPUs this process may use (taskset or a cgroup may have narrowed them).
// clientCPUs, when set, is the client's CPU list for every step.
func SplitCores(cores []int, clientCPUs string) ([]CoreSplit, error) {
	var set unix.CPUSet
	if err := unix.SchedGetaffinity(0, &set); err != nil {
		return nil, fmt.Errorf("read this process's CPUs: %w", err)
	}
	return splitCores(cpuList(&set), cores, clientCPUs)
}

// splitCores puts the servers on allowed[:n] for each n in cores, and the
// client on allowed[n:] unless clientCPUs is given.
func splitCores(allowed, cores []int, clientCPUs string) ([]CoreSplit, error) {
	var out []CoreSplit
	for _, n := range cores {
		switch {
		case n > len(allowed):
			return nil, fmt.Errorf("-cores %d: this process may use only %d CPUs (%s)", n,
				len(allowed), formatCPUList(allowed))
		case n == len(allowed) && clientCPUs == "":
			return nil, fmt.Errorf("-cores %d leaves no CPU for the client (of %s): "+
				"give a smaller count, or -client-cpus to share one", n,
				formatCPUList(allowed))
		}
		s := CoreSplit{Cores: n, ServerCPUs: formatCPUList(allowed[:n]),
			ClientCPUs: clientCPUs}
		if s.ClientCPUs == "" {
			s.ClientCPUs = formatCPUList(allowed[n:])
		}
		out = append(out, s)
	}
	return out, nil
}

// formatCPUList writes CPUs (ascending) as a taskset list: "0-3,6".
func formatCPUList(cpus []int) string {
	var b strings.Builder
	for i := 0; i < len(cpus); {
		j := i
		for j+1 < len(cpus) && cpus[j+1] == cpus[j]+1 {
			j++
		}
		if b.Len() > 0 {
			b.WriteByte(',')
		}
		b.WriteString(strconv.Itoa(cpus[i]))
		if j > i {
			b.WriteString("-" + strconv.Itoa(cpus[j]))
		}
		i = j + 1
	}
	return b.String()
}

// CompareCores runs Compare once per core count: every server pinned to
// the first N CPUs (nbdring with N shards), the client on the rest (or
// on cc.ClientCPUs). Each row carries its Cores; rows come in the order
// of cores.
func CompareCores(ctx context.Context, cc CompareConfig, cores []int) ([]Row, error) {
	if cc.ServerCPUs != "" {
		return nil, fmt.Errorf("give -cores or -server-cpus, not both: -cores pins the " +
			"servers itself")
	}
	splits, err := SplitCores(cores, cc.ClientCPUs)
	if err != nil {
		return nil, err
	}
	var rows []Row
	for _, s := range splits {
		c := cc
		c.Cores, c.ServerCPUs, c.ClientCPUs = s.Cores, s.ServerCPUs, s.ClientCPUs
		fmt.Fprintf(cc.Log, "cores %d: servers on CPUs %s, client on CPUs %s\n", s.Cores,
			s.ServerCPUs, s.ClientCPUs)
		rs, err := Compare(ctx, c)
		if err != nil {
			return nil, fmt.Errorf("cores %d: %w", s.Cores, err)
		}
		rows = append(rows, rs...)
	}
	return rows, nil
}
