package main

// Durability on real block devices: what the server acknowledges as
// flushed must have reached the device as a cache flush, which the block
// layer counts per device in /sys/block/DEV/stat. And a device that
// fails writes (zram over its memory limit) must fail them to the client.

import (
	"encoding/binary"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nbdring/nbdring/wire"
)

const (
	// durableStatFlushField is the 0-based index of "flush I/Os" in
	// /sys/block/DEV/stat (Documentation/block/stat.rst: field 16 of 17,
	// since Linux 5.5; field 17 is flush ticks).
	durableStatFlushField = 15
	durableStatFields     = 17
	// durableRequests is how many requests each case sends, one at a
	// time, so the block layer cannot merge their flushes.
	durableRequests = 20
	// durableFlushSlack is how many flushes a case without FUA may see.
	// Nothing but the server writes to the test's own loop device, so
	// there is no background flusher; measured: 0 in every run of
	// every control case on this kernel (6.18). One extra is allowed
	// for an unexpected writeback, far below durableRequests.
	durableFlushSlack = 1
)

// durableConn is a raw client connection sending one request at a time.
type durableConn struct {
	t  *testing.T
	c  net.Conn
	ex wire.ClientExport
}

func durableDial(t *testing.T, uri string) *durableConn {
	t.Helper()
	c, ex, err := crashDial(uri)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return &durableConn{t: t, c: c, ex: ex}
}

// do sends one request (payload for WRITE) and returns the reply's error;
// a READ's data goes to buf.
func (d *durableConn) do(cmd wire.Cmd, flags wire.CmdFlags, off uint64, n int,
	payload, buf []byte) wire.Errno {
	d.t.Helper()
	_ = d.c.SetDeadline(time.Now().Add(crashReplyTimeout))
	var req [wire.RequestSize]byte
	wire.EncodeRequest(req[:], &wire.Request{Type: cmd, Flags: flags, Cookie: 9, Offset: off,
		Length: uint64(n)})
	if _, err := d.c.Write(append(req[:], payload...)); err != nil {
		d.t.Fatalf("send %v: %v", cmd, err)
	}
	var rep [wire.SimpleReplySize]byte
	if _, err := io.ReadFull(d.c, rep[:]); err != nil {
		d.t.Fatalf("reply to %v: %v", cmd, err)
	}
	if binary.BigEndian.Uint32(rep[:]) != wire.MagicSimple ||
		binary.BigEndian.Uint64(rep[8:]) != 9 {
		d.t.Fatalf("reply to %v: not a simple reply with cookie 9: %x", cmd, rep)
	}
	errno := wire.Errno(binary.BigEndian.Uint32(rep[4:]))
	if errno == wire.EOK && buf != nil {
		if _, err := io.ReadFull(d.c, buf); err != nil {
			d.t.Fatalf("data of %v: %v", cmd, err)
		}
	}
	return errno
}

// durableFlushes is the device's count of completed flush requests.
func durableFlushes(t *testing.T, dev string) uint64 {
	t.Helper()
	path := "/sys/block/" + filepath.Base(dev) + "/stat"
	f := strings.Fields(string(e2eReadFile(t, path)))
	if len(f) < durableStatFields {
		skipMissing(t, "kernel", "%s has %d fields, want %d (flush counts need "+
			"Linux >= 5.5)", path, len(f), durableStatFields)
	}
	n, err := strconv.ParseUint(f[durableStatFlushField], 10, 64)
	if err != nil {
		t.Fatalf("%s field %d: %v", path, durableStatFlushField+1, err)
	}
	return n
}

func durableSysfs(t *testing.T, dev, attr string) string {
	t.Helper()
	return strings.TrimSpace(string(e2eReadFile(t, "/sys/block/"+filepath.Base(dev)+"/"+attr)))
}

// TestE2EDurableLoop: on a loop device (a volatile write cache, no FUA:
// the block layer turns a FUA write into write + flush), FLUSH and every
// request with FUA reach the device as flushes; plain requests do not.
func TestE2EDurableLoop(t *testing.T) {
	backing := e2eMakeFile(t, t.TempDir(), "backing.img", e2eExportSize, 0)
	dev := e2eLoopDevice(t, backing, 4096)
	// Without a write-back cache the kernel drops flushes as no-ops and
	// the counts prove nothing.
	if wc := durableSysfs(t, dev, "queue/write_cache"); wc != "write back" {
		t.Fatalf("%s: queue/write_cache %q, want \"write back\"", dev, wc)
	}
	t.Logf("%s: queue/fua %s (0: FUA is emulated with a flush)", dev,
		durableSysfs(t, dev, "queue/fua"))
	s := e2eStart(t, dev)
	d := durableDial(t, s.uri(""))
	rng := rand.New(rand.NewPCG(1, 2))
	block := make([]byte, 4096)
	const n = durableRequests
	for _, c := range []struct {
		name  string
		cmd   wire.Cmd
		flags wire.CmdFlags
		flush bool // each request must produce a flush
	}{
		{"FLUSH", wire.CmdFlush, 0, true},
		{"WRITE+FUA", wire.CmdWrite, wire.CmdFlagFUA, true},
		{"WRITE", wire.CmdWrite, 0, false},
		{"WRITE_ZEROES+FUA", wire.CmdWriteZeroes, wire.CmdFlagFUA, true},
		{"WRITE_ZEROES", wire.CmdWriteZeroes, 0, false},
		{"TRIM+FUA", wire.CmdTrim, wire.CmdFlagFUA, true},
		{"TRIM", wire.CmdTrim, 0, false},
	} {
		before := durableFlushes(t, dev)
		for i := 0; i < n; i++ {
			off, length := uint64(rng.IntN(e2eExportSize/4096))*4096, 4096
			var payload []byte
			switch c.cmd {
			case wire.CmdFlush:
				off, length = 0, 0
			case wire.CmdWrite:
				for j := 0; j < len(block); j += 8 {
					binary.LittleEndian.PutUint64(block[j:], rng.Uint64())
				}
				payload = block
			}
			if e := d.do(c.cmd, c.flags, off, length, payload, nil); e != wire.EOK {
				t.Fatalf("%s %d at %d: %v", c.name, i, off, e)
			}
		}
		after := durableFlushes(t, dev)
		t.Logf("%-16s x%d: device flushes %d -> %d (+%d)", c.name, n, before, after,
			after-before)
		switch {
		case c.flush && after-before < n:
			t.Errorf("%s x%d raised %s's flush count by %d, want at least %d: the "+
				"acknowledged data did not reach stable storage", c.name, n, dev,
				after-before, n)
		case !c.flush && after-before > durableFlushSlack:
			t.Errorf("%s x%d (no FUA) raised %s's flush count by %d, want at most %d",
				c.name, n, dev, after-before, durableFlushSlack)
		}
	}
}

// durableZram makes a zram device of disksize bytes that stores at most
// memLimit bytes, and removes it when the test ends (register this before
// starting a server on it: cleanups run last first).
func durableZram(t *testing.T, disksize, memLimit string) string {
	t.Helper()
	if os.Geteuid() != 0 {
		skipMissing(t, "root", "zram devices need root")
	}
	const ctl = "/sys/class/zram-control/"
	raw, err := os.ReadFile(ctl + "hot_add")
	if err != nil {
		skipMissing(t, "zram", "no zram here (%v): modprobe zram", err)
	}
	id := strings.TrimSpace(string(raw))
	name := "zram" + id
	t.Cleanup(func() {
		if err := os.WriteFile(ctl+"hot_remove", []byte(id), 0); err != nil {
			t.Errorf("remove /dev/%s: %v", name, err)
		}
	})
	for _, kv := range [][2]string{{"disksize", disksize}, {"mem_limit", memLimit}} {
		if err := os.WriteFile("/sys/block/"+name+"/"+kv[0], []byte(kv[1]), 0); err != nil {
			t.Fatalf("set /sys/block/%s/%s to %s: %v", name, kv[0], kv[1], err)
		}
	}
	dev := "/dev/" + name
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		if _, err := os.Stat(dev); err == nil {
			return dev
		} else if time.Now().After(deadline) {
			t.Fatalf("%s did not appear: %v", dev, err)
		}
	}
}

// TestE2EZramEIO: writes of incompressible data to a zram device past its
// memory limit fail in the kernel; the client must get NBD_EIO for them,
// never OK, and the server must go on serving.
func TestE2EZramEIO(t *testing.T) {
	const (
		disksize = 64 << 20
		memLimit = 1 << 20
		// writeMax: far past the limit, so the test ends even if zram
		// stored everything.
		writeMax = 16 << 20
	)
	dev := durableZram(t, strconv.Itoa(disksize), strconv.Itoa(memLimit))
	s := e2eStart(t, dev)
	d := durableDial(t, s.uri(""))
	rng := rand.New(rand.NewPCG(3, 4))
	block := make([]byte, 4096)
	var ok, eio int
	var other []string
	for off := 0; off < writeMax; off += len(block) {
		for j := 0; j < len(block); j += 8 {
			binary.LittleEndian.PutUint64(block[j:], rng.Uint64())
		}
		switch e := d.do(wire.CmdWrite, 0, uint64(off), len(block), block, nil); e {
		case wire.EOK:
			if eio > 0 {
				other = append(other, fmt.Sprintf("OK at %d after EIO", off))
			}
			ok++
		case wire.EIO:
			eio++
		default:
			other = append(other, fmt.Sprintf("%v at %d", e, off))
		}
	}
	t.Logf("%s (mem_limit %d): %d writes OK (%d KiB), %d EIO, others %q", dev, memLimit, ok,
		ok*4, eio, other)
	if eio == 0 {
		t.Fatalf("no write failed: %d KiB of random data stored under a %d KiB mem_limit",
			ok*4, memLimit>>10)
	}
	if len(other) > 0 {
		t.Errorf("replies other than OK then EIO: %q", other)
	}
	// zram charges each stored page to mem_limit, and random data does
	// not compress, so at most about memLimit bytes fit (measured: exactly
	// 1024 KiB); twice that means writes past the limit were acknowledged.
	if ok*4096 > 2*memLimit {
		t.Errorf("%d KiB acknowledged under a %d KiB limit", ok*4, memLimit>>10)
	}
	// Still serving: a read on this connection and a new connection.
	if e := d.do(wire.CmdRead, 0, 0, len(block), nil, block); e != wire.EOK {
		t.Errorf("read after the failed writes: %v", e)
	}
	d2 := durableDial(t, s.uri(""))
	if e := d2.do(wire.CmdRead, 0, 4096, len(block), nil, block); e != wire.EOK {
		t.Errorf("read on a new connection after the failed writes: %v", e)
	}
	t.Logf("FLUSH after the failed writes: %v", d2.do(wire.CmdFlush, 0, 0, 0, nil, nil))
	logged := 0
	for _, line := range strings.Split(s.stderr.String(), "\n") {
		if strings.Contains(line, dev+" write") {
			if logged == 0 {
				t.Logf("server log: %s", line)
			}
			logged++
		}
	}
	t.Logf("%d log lines for %d failed writes", logged, eio)
	if logged == 0 {
		t.Errorf("the server logged nothing about the failed writes:\n%s", s.stderr)
	}
	select {
	case <-s.done:
		t.Fatalf("nbdring exited: %v", s.err)
	default:
	}
}
