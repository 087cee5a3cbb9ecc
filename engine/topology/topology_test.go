package topology

import (
	"slices"
	"testing"
)

func TestShardCPUs(t *testing.T) {
	// Two cores with two threads each: CPUs 0,2 and 1,3.
	topo := Topology{CPUs: []int{0, 1, 2, 3}, Cores: [][]int{{0, 2}, {1, 3}}}
	for _, c := range []struct {
		n    int
		want []int
	}{
		{0, []int{0, 1}},          // default: one per physical core
		{1, []int{0}},             // first core's first thread
		{3, []int{0, 1, 2}},       // then the SMT siblings
		{5, []int{0, 1, 2, 3, 0}}, // then wrap
	} {
		if got := topo.ShardCPUs(c.n); !slices.Equal(got, c.want) {
			t.Errorf("ShardCPUs(%d) = %v, want %v", c.n, got, c.want)
		}
	}
}

func TestReadTopologyCoversUsableCPUs(t *testing.T) {
	topo, err := Read()
	if err != nil {
		t.Fatal(err)
	}
	var grouped []int
	for _, core := range topo.Cores {
		grouped = append(grouped, core...)
	}
	slices.Sort(grouped)
	if !slices.Equal(grouped, topo.CPUs) || len(topo.Cores) == 0 {
		t.Fatalf("cores %v do not partition usable CPUs %v", topo.Cores, topo.CPUs)
	}
	t.Log(topo)
}
