package bench

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// nbdbenchBin builds nbdbench (whose floor command compare starts) into
// the test's directory, or takes $NBDBENCH_BIN.
func nbdbenchBin(t *testing.T) string {
	t.Helper()
	if bin := os.Getenv("NBDBENCH_BIN"); bin != "" {
		return bin
	}
	bin := filepath.Join(t.TempDir(), "nbdbench")
	out, err := exec.Command("go", "build", "-ldflags=-checklinkname=0", "-o", bin,
		"../cmd/nbdbench").CombinedOutput()
	if err != nil {
		t.Fatalf("build nbdbench: %v\n%s", err, out)
	}
	return bin
}

// startFloor runs nbdbench floor on file over TCP on a port the kernel
// picks, and returns the address it serves on and its pid.
func startFloor(t *testing.T, file string) (addr string, pid int) {
	t.Helper()
	cmd := exec.Command(nbdbenchBin(t), "floor", "-listen", "127.0.0.1:0", file)
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	line, err := bufio.NewReader(stderr).ReadString('\n')
	// "nbdbench floor: serving FILE on ADDR, pid N ..."
	_, rest, ok := strings.Cut(line, " on ")
	addr, _, ok2 := strings.Cut(rest, ",")
	if err != nil || !ok || !ok2 {
		t.Fatalf("floor said %q (%v), want its address", line, err)
	}
	go io.Copy(io.Discard, stderr)
	return addr, cmd.Process.Pid
}

// randomFile makes a file of size random bytes and returns its path and
// contents.
func randomFile(t *testing.T, size int) (string, []byte) {
	t.Helper()
	data := make([]byte, size)
	rand.Read(data)
	path := filepath.Join(t.TempDir(), "img")
	if err := os.WriteFile(path, data, 0o644); err != nil {
		t.Fatal(err)
	}
	return path, data
}

// TestFloorServesClients: nbdbench floor, over plain TCP, serves libnbd
// (nbdinfo, and nbdsh's Python for bytes read and written) and nbdbench
// run (verified random reads and writes, sequential 1 MiB reads with the
// floor's CPU per operation read from its pid).
func TestFloorServesClients(t *testing.T) {
	for _, c := range []string{"nbdinfo", "nbdcopy", "/usr/bin/python3"} {
		if _, err := exec.LookPath(c); err != nil {
			skipMissing(t, "client", "%s not installed (make deps)", c)
		}
	}
	if exec.Command("/usr/bin/python3", "-c", "import nbd").Run() != nil {
		skipMissing(t, "client", "python3-libnbd not installed (make deps)")
	}
	file, data := randomFile(t, 16<<20)
	addr, pid := startFloor(t, file)
	uri := "nbd://" + addr + "/"
	out, err := exec.Command("nbdinfo", "--json", uri).CombinedOutput()
	if err != nil {
		t.Fatalf("nbdinfo: %v\n%s", err, out)
	}
	var info struct {
		Exports []struct {
			Size     int64 `json:"export-size"`
			BlockMin int   `json:"block_size_minimum"`
		} `json:"exports"`
	}
	if err := json.Unmarshal(out, &info); err != nil || len(info.Exports) != 1 ||
		info.Exports[0].Size != int64(len(data)) || info.Exports[0].BlockMin != 4096 {
		t.Fatalf("nbdinfo: %v, want one export of %d bytes, 4 KiB blocks:\n%s", err,
			len(data), out)
	}
	// libnbd reads 1 MiB at 1 MiB and writes 64 KiB at 3 MiB, then flushes.
	script := `import nbd, sys
h = nbd.NBD(); h.connect_uri(sys.argv[1])
sys.stdout.buffer.write(h.pread(1 << 20, 1 << 20))
h.pwrite(bytes(range(256)) * 256, 3 << 20); h.flush(); h.shutdown()`
	got, err := exec.Command("/usr/bin/python3", "-c", script, uri).Output()
	if err != nil || !bytes.Equal(got, data[1<<20:2<<20]) {
		t.Fatalf("libnbd read 1 MiB at 1 MiB: %v; equal to the file: %v", err,
			bytes.Equal(got, data[1<<20:2<<20]))
	}
	now, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	want := bytes.Repeat([]byte(func() string {
		var b [256]byte
		for i := range b {
			b[i] = byte(i)
		}
		return string(b[:])
	}()), 256)
	if !bytes.Equal(now[3<<20:3<<20+64<<10], want) || !bytes.Equal(now[:3<<20], data[:3<<20]) {
		t.Fatal("libnbd's 64 KiB write at 3 MiB is not in the file, or spilled over")
	}
	// nbdcopy asks for base:allocation and copies by its extents.
	copied := filepath.Join(t.TempDir(), "copy")
	if out, err := exec.Command("nbdcopy", uri, copied).CombinedOutput(); err != nil {
		t.Fatalf("nbdcopy out of the floor: %v\n%s", err, out)
	}
	if got, err := os.ReadFile(copied); err != nil || !bytes.Equal(got, now) {
		t.Fatalf("nbdcopy's copy differs from the file (%v)", err)
	}
	// Verify needs a backing of zeros or its own pattern: a second floor.
	zeros := filepath.Join(t.TempDir(), "zeros")
	if err := os.WriteFile(zeros, make([]byte, 16<<20), 0o644); err != nil {
		t.Fatal(err)
	}
	zaddr, _ := startFloor(t, zeros)
	ctx := context.Background()
	res, err := Run(ctx, Config{URI: "nbd://" + zaddr + "/", RW: "randrw", Mix: 50,
		BS: 64 << 10, QD: 8, Conns: 2, Ops: 2000, Verify: true})
	if err != nil || res.Errors != 0 || res.VerifyErrors != 0 || res.Ops != 2000 {
		t.Fatalf("verified randrw: %v, %+v", err, res)
	}
	res, err = Run(ctx, Config{URI: uri, RW: "read", BS: 1 << 20, QD: 8, Conns: 1,
		Duration: 300 * time.Millisecond, ServerPID: pid})
	if err != nil || res.Errors != 0 || res.Ops == 0 || res.ServerCPUUsPerOp <= 0 {
		t.Fatalf("1 MiB reads: %v, %+v: want traffic and the floor's CPU per op", err, res)
	}
}

// TestFloorRefusesUnaligned: O_DIRECT cannot serve a request off the 4 KiB
// grid, so the floor answers EINVAL to it and goes on serving. libnbd,
// with its own alignment checks off and without asking for block sizes
// (so wire's validator, which holds only a client that asked, lets the
// request through), sends one.
func TestFloorRefusesUnaligned(t *testing.T) {
	if exec.Command("/usr/bin/python3", "-c", "import nbd").Run() != nil {
		skipMissing(t, "client", "python3-libnbd not installed (make deps)")
	}
	file, data := randomFile(t, 1<<20)
	addr, _ := startFloor(t, file)
	script := `import nbd, sys
h = nbd.NBD(); h.set_strict_mode(0); h.set_request_block_size(False)
h.connect_uri(sys.argv[1])
try:
    h.pread(512, 512); print("served")
except nbd.Error as e:
    print("refused", e.errno)
sys.stdout.flush(); sys.stdout.buffer.write(h.pread(4096, 8192))`
	out, err := exec.Command("/usr/bin/python3", "-c", script, "nbd://"+addr+"/").Output()
	first, rest, _ := bytes.Cut(out, []byte("\n"))
	if err != nil || string(first) != "refused EINVAL" || !bytes.Equal(rest, data[8192:12288]) {
		t.Fatalf("unaligned read: %v, said %q; the aligned read after it matches: %v",
			err, first, bytes.Equal(rest, data[8192:12288]))
	}
}
