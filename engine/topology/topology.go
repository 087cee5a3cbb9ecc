// Package topology is the machine as nbdring's shards and nbdbench see it:
// the CPUs this process may use, grouped into physical cores, and the CPU
// model and caches. It imports no project package, so nbdbench can print the
// machine line without linking the engine.
package topology

import (
	"fmt"
	"os"
	"strconv"
	"strings"

	"github.com/klauspost/cpuid/v2"
	"golang.org/x/sys/unix"
)

// Topology is the machine as the shards see it: the CPUs this process may
// use, grouped into physical cores by the kernel's topology lists, and the
// CPU model and caches from cpuid. Every benchmark figure carries it.
type Topology struct {
	CPUs       []int   // usable logical CPUs
	Cores      [][]int // usable CPUs grouped by physical core (SMT siblings)
	Model      string
	Threads    int // logical CPUs in the machine (cpuid)
	Physical   int // physical cores in the machine (cpuid)
	L1D, L2    int // per-core data caches, bytes
	L3         int // last-level cache, bytes
	Hypervisor bool
}

// Read combines sched_getaffinity, /sys/devices/system/cpu and cpuid.
func Read() (Topology, error) {
	cpus, err := UsableCPUs()
	if err != nil {
		return Topology{}, err
	}
	t := Topology{CPUs: cpus, Model: cpuid.CPU.BrandName,
		Threads: cpuid.CPU.LogicalCores, Physical: cpuid.CPU.PhysicalCores,
		L1D: cpuid.CPU.Cache.L1D, L2: cpuid.CPU.Cache.L2, L3: cpuid.CPU.Cache.L3,
		Hypervisor: cpuid.CPU.Supports(cpuid.HYPERVISOR)}
	index := map[string]int{}
	for _, c := range cpus {
		key := coreKey(c)
		i, ok := index[key]
		if !ok {
			i = len(t.Cores)
			index[key] = i
			t.Cores = append(t.Cores, nil)
		}
		t.Cores[i] = append(t.Cores[i], c)
	}
	return t, nil
}

// coreKey names CPU c's physical core (package and core ID); a CPU whose
// topology the kernel does not show is a core of its own.
func coreKey(c int) string {
	dir := fmt.Sprintf("/sys/devices/system/cpu/cpu%d/topology/", c)
	pkg, err1 := os.ReadFile(dir + "physical_package_id")
	core, err2 := os.ReadFile(dir + "core_id")
	if err1 != nil || err2 != nil {
		return "cpu" + strconv.Itoa(c)
	}
	return strings.TrimSpace(string(pkg)) + "/" + strings.TrimSpace(string(core))
}

// ShardCPUs picks the CPU for each of n shards: by default (n <= 0) one
// shard per usable physical core, on its first usable thread, so two
// shards never share a core's execution units; more shards than cores take
// the remaining SMT threads, then wrap.
func (t Topology) ShardCPUs(n int) []int {
	if n <= 0 {
		n = len(t.Cores)
	}
	var order []int
	for thread := 0; len(order) < len(t.CPUs); thread++ {
		for _, core := range t.Cores {
			if thread < len(core) {
				order = append(order, core[thread])
			}
		}
	}
	cpus := make([]int, n)
	for i := range cpus {
		cpus[i] = order[i%len(order)]
	}
	return cpus
}

// String is the machine line printed with every result.
func (t Topology) String() string {
	vm := ""
	if t.Hypervisor {
		vm = ", virtual machine"
	}
	return fmt.Sprintf("%s; %d usable CPUs on %d cores (machine: %d threads, %d cores); "+
		"L1d %d KiB, L2 %d KiB, L3 %d MiB%s", t.Model, len(t.CPUs), len(t.Cores), t.Threads,
		t.Physical, t.L1D>>10, t.L2>>10, t.L3>>20, vm)
}

// UsableCPUs lists the CPUs this process may run on.
func UsableCPUs() ([]int, error) {
	var set unix.CPUSet
	if err := unix.SchedGetaffinity(0, &set); err != nil {
		return nil, fmt.Errorf("sched_getaffinity: %w", err)
	}
	var cpus []int
	for i := 0; i < len(set)*64; i++ {
		if set.IsSet(i) {
			cpus = append(cpus, i)
		}
	}
	return cpus, nil
}
