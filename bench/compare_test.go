package bench

import (
	"context"
	"encoding/json"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestCompareShort runs compare against nbdring and qemu-nbd for real: a
// row per server with traffic, no errors, and CPU per operation read from
// each server's /proc entry.
func TestCompareShort(t *testing.T) {
	if _, err := exec.LookPath("qemu-nbd"); err != nil {
		skipMissing(t, "client", "qemu-nbd not installed (make test installs qemu-utils)")
	}
	bin := nbdringBin(t)
	file := filepath.Join(t.TempDir(), "img")
	if err := os.WriteFile(file, make([]byte, 16<<20), 0o644); err != nil {
		t.Fatal(err)
	}
	wls, err := ParseWorkloads("randread:4k:8:1,randwrite:4k:8:2", 700*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	rows, err := Compare(context.Background(), CompareConfig{File: file,
		Servers: []string{"nbdring", "qemu-nbd"}, Workloads: wls, Rounds: 1,
		Client: "nbdbench", NbdRing: bin, Log: io.Discard})
	if err != nil {
		t.Fatal(err)
	}
	checkRows(t, rows, []string{"nbdring", "qemu-nbd"}, wls)
	for _, r := range rows {
		if r.BackingPath != file || r.BackingKind != "file" {
			t.Errorf("row %+v: want backing %s, a file", r, file)
		}
	}
}

// TestCompareForkingServer runs nbd-server, which daemonizes and forks a
// child per connection, with both clients: its CPU per operation must
// include the children's time (without it the row reads 0).
func TestCompareForkingServer(t *testing.T) {
	for _, bin := range []string{"nbd-server", "fio"} {
		if _, err := exec.LookPath(bin); err != nil {
			skipMissing(t, "client", "%s not installed (make test installs it)", bin)
		}
	}
	// A path relative to the working directory, as make compare passes
	// (var/bench.img): the daemon runs in /, where it means nothing.
	dir, err := os.MkdirTemp(".", "testimg-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	file := filepath.Join(dir, "img")
	if err := os.WriteFile(file, make([]byte, 16<<20), 0o644); err != nil {
		t.Fatal(err)
	}
	wls, err := ParseWorkloads("randread:4k:8:1,randwrite:4k:8:2", 700*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	for _, client := range []string{"nbdbench", "fio"} {
		t.Run(client, func(t *testing.T) {
			rows, err := Compare(context.Background(), CompareConfig{File: file,
				Servers: []string{"nbd-server"}, Workloads: wls, Rounds: 1,
				Client: client, Log: io.Discard})
			if err != nil {
				t.Fatal(err)
			}
			checkRows(t, rows, []string{"nbd-server"}, wls)
		})
	}
}

// checkRows wants one row per server and workload, in the order given,
// each with traffic, no errors, the server's CPU per operation, and the
// setup as separate JSON fields.
func checkRows(t *testing.T, rows []Row, servers []string, wls []Config) {
	t.Helper()
	if len(rows) != len(servers)*len(wls) {
		t.Fatalf("%d rows, want %d servers x %d workloads: %+v", len(rows), len(servers),
			len(wls), rows)
	}
	for i, r := range rows {
		if r.Server != servers[i%len(servers)] {
			t.Errorf("row %d is %s, want %s", i, r.Server, servers[i%len(servers)])
		}
		if r.IOPS <= 0 || r.Errors != 0 || r.ServerCPUUsPerOp <= 0 {
			t.Errorf("row %+v: want traffic, no errors and server CPU per op", r)
		}
		b, err := json.Marshal(r)
		if err != nil {
			t.Fatal(err)
		}
		var m map[string]any
		if err := json.Unmarshal(b, &m); err != nil {
			t.Fatal(err)
		}
		w := wls[i/len(servers)]
		for k, want := range map[string]any{"rw": w.RW, "block_size": float64(w.BS),
			"queue_depth": float64(w.QD), "connections": float64(w.Conns),
			"workload": w.Workload(), "rounds": 1.0, "duration_s": w.Duration.Seconds()} {
			if m[k] != want {
				t.Errorf("row %d: JSON %q is %v, want %v: %s", i, k, m[k], want, b)
			}
		}
		for _, k := range []string{"backing_path", "backing_kind", "client"} {
			if s, _ := m[k].(string); s == "" {
				t.Errorf("row %d: JSON lacks %q: %s", i, k, b)
			}
		}
		ts, _ := m["timestamp"].(string)
		if at, err := time.Parse(time.RFC3339, ts); err != nil ||
			time.Since(at) > time.Minute || time.Since(at) < 0 {
			t.Errorf("row %d: timestamp %q is not a recent RFC 3339 time: %v", i, ts, err)
		}
	}
}

// TestCompareBlockDevice serves a zram device (a real block device with
// 4 KiB sectors) with both clients: compare must take its size from the
// device (stat says 0) and say it is a block device.
func TestCompareBlockDevice(t *testing.T) {
	if _, err := exec.LookPath("fio"); err != nil {
		skipMissing(t, "client", "fio not installed (make test installs it)")
	}
	dev := zramDevice(t, 32<<20)
	bin := os.Getenv("NBDRING_BIN")
	if bin == "" {
		bin = "../bin/nbdring"
	}
	wls, err := ParseWorkloads("randread:4k:8:1,write:1M:4:1", 400*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	for _, client := range []string{"nbdbench", "fio"} {
		t.Run(client, func(t *testing.T) {
			rows, err := Compare(context.Background(), CompareConfig{File: dev,
				Servers: []string{"nbdring"}, Workloads: wls, Rounds: 1, Client: client,
				NbdRing: bin, Log: io.Discard})
			if err != nil {
				t.Fatal(err)
			}
			checkRows(t, rows, []string{"nbdring"}, wls)
			for _, r := range rows {
				if r.BackingPath != dev || r.BackingKind != "block device" || r.Client != client {
					t.Errorf("row %+v: want %s, a block device, client %s", r, dev, client)
				}
			}
		})
	}
}

// zramDevice makes a zram device of size bytes for the test and removes it
// after; it skips where zram or root is missing.
func zramDevice(t *testing.T, size int64) string {
	t.Helper()
	b, err := os.ReadFile("/sys/class/zram-control/hot_add")
	if err != nil {
		skipMissing(t, "zram", "no zram device to make (%v): needs root and the zram module", err)
	}
	id := strings.TrimSpace(string(b))
	t.Cleanup(func() {
		_ = os.WriteFile("/sys/class/zram-control/hot_remove", []byte(id), 0o200)
	})
	disk := "/sys/block/zram" + id + "/disksize"
	if err := os.WriteFile(disk, []byte(strconv.FormatInt(size, 10)), 0o200); err != nil {
		skipMissing(t, "zram", "set %s: %v", disk, err)
	}
	return "/dev/zram" + id
}

// TestBackingKind tells a file, a tmpfs file and a block device apart,
// and refuses what is neither file nor block device.
func TestBackingKind(t *testing.T) {
	file := filepath.Join(t.TempDir(), "img")
	if err := os.WriteFile(file, []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	var fs syscall.Statfs_t
	if err := syscall.Statfs(file, &fs); err != nil || fs.Type == tmpfsMagic {
		skipMissing(t, "fs", "the test's temporary directory is on tmpfs (or unknown: %v)", err)
	}
	shm, err := os.CreateTemp("/dev/shm", "nbdbench-")
	if err != nil {
		skipMissing(t, "fs", "no /dev/shm: %v", err)
	}
	shm.Close()
	t.Cleanup(func() { os.Remove(shm.Name()) })
	cases := map[string]string{file: "file", shm.Name(): "tmpfs file"}
	cases[zramDevice(t, 1<<20)] = "block device"
	for path, want := range cases {
		if got, err := BackingKind(path); got != want || err != nil {
			t.Errorf("BackingKind(%s) = %q, %v; want %q", path, got, err, want)
		}
	}
	empty := filepath.Join(t.TempDir(), "empty")
	if err := os.WriteFile(empty, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, _, err := checkBacking(empty); err == nil || !strings.Contains(err.Error(), "empty") {
		t.Errorf("an empty backing: %v, want it refused", err)
	}
	if f, kind, err := checkBacking("img"); err == nil || f != "" || kind != "" {
		t.Errorf("missing relative backing: %q %q %v", f, kind, err)
	}
	for _, bad := range []string{"/dev/null", filepath.Join(t.TempDir(), "missing")} {
		if _, err := BackingKind(bad); err == nil {
			t.Errorf("BackingKind(%s) accepted it", bad)
		}
	}
}

// TestCompareWarnsOfHoles: compare on a sparse file warns once (not per
// server) when a workload reads, and not when all write.
func TestCompareWarnsOfHoles(t *testing.T) {
	bin := os.Getenv("NBDRING_BIN")
	if bin == "" {
		bin = "../bin/nbdring"
	}
	for _, tc := range []struct {
		workloads string
		servers   []string
		warnings  int
	}{{"randread:4k:8:1", []string{"nbdring", "nbdring"}, 1},
		{"randwrite:4k:8:1,randread:4k:8:1", []string{"nbdring"}, 1},
		{"randwrite:4k:8:1", []string{"nbdring"}, 0}} {
		file := filepath.Join(t.TempDir(), "img")
		if err := os.WriteFile(file, nil, 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.Truncate(file, 64<<20); err != nil {
			t.Fatal(err)
		}
		wls, err := ParseWorkloads(tc.workloads, 100*time.Millisecond)
		if err != nil {
			t.Fatal(err)
		}
		var log strings.Builder
		_, err = Compare(context.Background(), CompareConfig{File: file,
			Servers: tc.servers, Workloads: wls, Rounds: 1,
			Client: "nbdbench", NbdRing: bin, Log: &log})
		if err != nil {
			t.Fatal(err)
		}
		if n := strings.Count(log.String(), "all holes"); n != tc.warnings {
			t.Errorf("%s: %d warnings, want %d:\n%s", tc.workloads, n, tc.warnings,
				log.String())
		}
	}
}
