package bench

import (
	"context"
	"io"
	"os"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

// TestSplitCores: each count N puts the servers on the first N CPUs this
// process may use and the client on the rest (or on -client-cpus); a count
// the machine cannot give, or one that leaves the client nothing, is
// refused.
func TestSplitCores(t *testing.T) {
	sixteen := make([]int, 16)
	for i := range sixteen {
		sixteen[i] = i
	}
	got, err := splitCores(sixteen, []int{1, 4, 8}, "")
	want := []CoreSplit{{1, "0", "1-15"}, {4, "0-3", "4-15"}, {8, "0-7", "8-15"}}
	if err != nil || !slices.Equal(got, want) {
		t.Errorf("16 CPUs, cores 1,4,8: %v %v, want %v", got, err, want)
	}
	got, err = splitCores([]int{0, 1}, []int{1}, "")
	if err != nil || !slices.Equal(got, []CoreSplit{{1, "0", "1"}}) {
		t.Errorf("2 CPUs, cores 1: %v %v, want servers on 0, client on 1", got, err)
	}
	got, err = splitCores([]int{2, 3, 5, 6, 7}, []int{2, 4}, "")
	if err != nil || !slices.Equal(got, []CoreSplit{{2, "2-3", "5-7"}, {4, "2-3,5-6", "7"}}) {
		t.Errorf("CPUs 2,3,5-7 (taskset), cores 2,4: %v %v", got, err)
	}
	got, err = splitCores([]int{0, 1}, []int{2}, "1")
	if err != nil || !slices.Equal(got, []CoreSplit{{2, "0-1", "1"}}) {
		t.Errorf("2 CPUs, cores 2, client on 1: %v %v", got, err)
	}
	for _, bad := range [][]int{{2}, {3}, {1, 4}} {
		if got, err := splitCores([]int{0, 1}, bad, ""); err == nil {
			t.Errorf("2 CPUs, cores %v: accepted as %v", bad, got)
		}
	}
	for _, bad := range []string{"", "0", "1,x", "-1", "1,,2"} {
		if got, err := ParseCores(bad); err == nil {
			t.Errorf("ParseCores(%q) = %v, want an error", bad, got)
		}
	}
	if got, err := ParseCores("1,4,8"); err != nil || !slices.Equal(got, []int{1, 4, 8}) {
		t.Errorf("ParseCores(1,4,8) = %v %v", got, err)
	}
}

// TestCompareCoresPins runs compare -cores 1 with nbdring and the floor:
// each server runs on the first CPU only (nbdring with one shard), the
// client on the others while the server runs, and every row says so.
func TestCompareCoresPins(t *testing.T) {
	if runtime.NumCPU() < 2 {
		skipMissing(t, "cpus", "needs 2 CPUs")
	}
	before := allowedCPUs(t, "/proc/self/status")
	t.Cleanup(func() {
		if err := PinProcess(before); err != nil {
			t.Error(err)
		}
	})
	splits, err := SplitCores([]int{1}, "")
	if err != nil {
		t.Fatal(err)
	}
	file, _ := randomFile(t, 8<<20)
	wls, err := ParseWorkloads("read:1M:4:1", 200*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	started := map[string]bool{}
	rows, err := CompareCores(context.Background(), CompareConfig{File: file,
		Servers: []string{"nbdring", "floor"}, Workloads: wls, Rounds: 1,
		Client: "nbdbench", NbdRing: nbdringBin(t), NbdBench: nbdbenchBin(t), Log: io.Discard,
		OnStart: func(name string, pid int) {
			started[name] = true
			status := "/proc/" + strconv.Itoa(pid) + "/status"
			if got := allowedCPUs(t, status); got != splits[0].ServerCPUs {
				t.Errorf("%s may run on CPUs %s, want %s", name, got, splits[0].ServerCPUs)
			}
			if got := allowedCPUs(t, "/proc/self/status"); got != splits[0].ClientCPUs {
				t.Errorf("client may run on CPUs %s, want %s", got, splits[0].ClientCPUs)
			}
			cmdline, _ := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/cmdline")
			args := strings.Split(string(cmdline), "\x00")
			if i := slices.Index(args, "-shards"); name == "nbdring" &&
				(i < 0 || i+1 >= len(args) || args[i+1] != "1") {
				t.Errorf("nbdring runs as %q, want -shards 1", args)
			}
		}}, []int{1})
	if err != nil {
		t.Fatal(err)
	}
	if !started["nbdring"] || !started["floor"] {
		t.Fatalf("servers started: %v, want nbdring and floor", started)
	}
	checkRows(t, rows, []string{"nbdring", "floor"}, wls)
	for _, r := range rows {
		if r.Cores != 1 || r.ServerCPUs != splits[0].ServerCPUs ||
			r.ClientCPUs != splits[0].ClientCPUs {
			t.Errorf("row %+v: want cores 1 on %+v", r, splits[0])
		}
	}
	var b strings.Builder
	WriteTable(&b, rows)
	if !strings.Contains(b.String(), "x floor MB/s") {
		t.Errorf("table without the floor fraction:\n%s", b.String())
	}
	if _, err := CompareCores(context.Background(), CompareConfig{ServerCPUs: "0"},
		[]int{1}); err == nil {
		t.Error("-cores with -server-cpus accepted")
	}
}
