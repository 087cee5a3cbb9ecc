package main

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nbdring/nbdring/wire"
)

// e2eZCReads is how many 1 MiB READs e2eZCRead asks for: more than the
// engine's zcCopiedRunMax (8), so on loopback zero-copy turns itself off.
const e2eZCReads = 32

// e2eZCRead connects to addr over TCP and reads e2eZCReads MiB of want (a
// file of random bytes: no holes) in 1 MiB READs, two in flight, checking
// every byte.
func e2eZCRead(t *testing.T, addr string, want []byte) {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(30 * time.Second))
	if _, err := wire.ClientHandshake(c, wire.ClientOptions{}); err != nil {
		t.Fatalf("handshake with %s: %v", addr, err)
	}
	const n = 1 << 20
	var req [wire.RequestSize]byte
	hdr, buf := make([]byte, wire.SimpleReplySize), make([]byte, n)
	ask := func(i int) {
		off := uint64(i%(len(want)/n)) * n
		wire.EncodeRequest(req[:], &wire.Request{Type: wire.CmdRead, Cookie: off,
			Offset: off, Length: n})
		if _, err := c.Write(req[:]); err != nil {
			t.Fatal(err)
		}
	}
	ask(0)
	for i := 0; i < e2eZCReads; i++ {
		if i+1 < e2eZCReads {
			ask(i + 1)
		}
		if _, err := io.ReadFull(c, hdr); err != nil {
			t.Fatalf("read reply %d: %v", i, err)
		}
		off := binary.BigEndian.Uint64(hdr[8:])
		if errno := binary.BigEndian.Uint32(hdr[4:]); errno != 0 {
			t.Fatalf("READ at %d: error %d", off, errno)
		}
		if _, err := io.ReadFull(c, buf); err != nil {
			t.Fatalf("read data %d: %v", i, err)
		}
		if !bytes.Equal(buf, want[off:off+n]) {
			t.Fatalf("READ at %d: wrong bytes", off)
		}
	}
}

// e2eZCCounts are the nbdring_zerocopy_* counters of /metrics, summed over
// shards.
type e2eZCCounts struct{ sends, bytes, copied, refused, disabled float64 }

func (z e2eZCCounts) String() string {
	return fmt.Sprintf("sends %.0f, bytes %.0f, copied %.0f, refused %.0f, disabled %.0f",
		z.sends, z.bytes, z.copied, z.refused, z.disabled)
}

// e2eZCMetrics reads the zero-copy counters from url (plain text parsing:
// no Prometheus library needed), waiting up to 5 s for done to hold (the
// counters move on notifications, which may trail the last reply).
func e2eZCMetrics(t *testing.T, url string, done func(e2eZCCounts) bool) e2eZCCounts {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		_, page := e2eGetStatus(t, url)
		var z e2eZCCounts
		for name, v := range map[string]*float64{"sends": &z.sends, "bytes": &z.bytes,
			"copied": &z.copied, "refused": &z.refused, "disabled": &z.disabled} {
			*v = e2eMetricSum(page, "nbdring_zerocopy_"+name+"_total")
		}
		if done(z) || time.Now().After(deadline) {
			return z
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// e2eMetricSum adds the values of every sample of family name in page.
func e2eMetricSum(page, name string) float64 {
	var v float64
	for _, line := range strings.Split(page, "\n") {
		if !strings.HasPrefix(line, name+"{") && !strings.HasPrefix(line, name+" ") {
			continue
		}
		f, err := strconv.ParseFloat(line[strings.LastIndexByte(line, ' ')+1:], 64)
		if err == nil {
			v += f
		}
	}
	return v
}

// e2eZCEngaged checks that zero-copy sends went out and were not refused;
// on loopback the kernel copies them, so the connection turned it off.
func e2eZCEngaged(t *testing.T, what string, z e2eZCCounts) {
	t.Helper()
	t.Logf("%s: %v", what, z)
	if z.sends < 1 || z.bytes < 1<<20 || z.refused != 0 {
		t.Errorf("%s: zero-copy not engaged (%v): want sends of 1 MiB and no refusal",
			what, z)
	}
	if z.copied < 1 || z.disabled != 1 {
		t.Errorf("%s: loopback copies every zero-copy send: want copied notifications "+
			"and zero-copy turned off once (%v)", what, z)
	}
	if z.sends >= e2eZCReads/2 {
		t.Errorf("%s: %.0f zero-copy sends for %d READs: zero-copy did not stop after "+
			"turning off", what, z.sends, e2eZCReads)
	}
}

// TestE2EZeroCopyTCP: 1 MiB READs over a TCP socket nbdring's own -listen
// accepted go out zero-copy (counted by /metrics); with -mptcp the socket
// refuses zero-copy, once, and every reply is copied.
func TestE2EZeroCopyTCP(t *testing.T) {
	img := e2eMakeFile(t, t.TempDir(), "disk.img", 16<<20, 21)
	want := e2eReadFile(t, img)
	for _, mptcp := range []bool{false, true} {
		args := append([]string{"-metrics", "127.0.0.1:0"}, e2eSvcLight...)
		what := "-listen 127.0.0.1:PORT"
		if mptcp {
			if b, err := os.ReadFile("/proc/sys/net/mptcp/enabled"); err != nil ||
				strings.TrimSpace(string(b)) != "1" {
				t.Logf("-mptcp: skipped, net.mptcp.enabled is not 1 here")
				continue
			}
			args, what = append(args, "-mptcp"), what+" -mptcp"
		}
		s, addr := e2eStartTCP(t, append(args, img)...)
		e2eZCRead(t, addr, want)
		url := "http://" + e2eLogAddr(t, s, "metrics") + "/metrics"
		if !mptcp {
			e2eZCEngaged(t, what, e2eZCMetrics(t, url,
				func(z e2eZCCounts) bool { return z.disabled > 0 }))
			continue
		}
		z := e2eZCMetrics(t, url, func(z e2eZCCounts) bool { return z.refused > 0 })
		t.Logf("%s: %v", what, z)
		if z.refused != 1 || z.bytes != 0 {
			t.Errorf("%s: want zero-copy refused once and no zero-copy bytes (%v)", what, z)
		}
	}
}

// TestE2EZeroCopySocketActivated: the same through a TCP socket that
// systemd-socket-activate made and passed (a plain TCP socket, as systemd's
// ListenStream=): zero-copy engaged, no refusal.
func TestE2EZeroCopySocketActivated(t *testing.T) {
	e2eNeedTool(t, "systemd-socket-activate")
	img := e2eMakeFile(t, t.TempDir(), "disk.img", 16<<20, 22)
	want := e2eReadFile(t, img)
	addr := fmt.Sprintf("127.0.0.1:%d", e2eSvcFreePort(t))
	args := append([]string{"-l", addr, e2eBin(t), "-metrics", "127.0.0.1:0"},
		e2eSvcLight...)
	p := e2eSvcStart(t, exec.Command("systemd-socket-activate", append(args, img)...))
	p.waitOutput(t, p.stderr, regexp.MustCompile(`^Listening on .* as 3\.$`), 1)
	e2eZCRead(t, addr, want) // this connection starts nbdring
	m := p.waitOutput(t, p.stderr, regexp.MustCompile(`metrics on http://[^/ ]+/metrics`), 1)
	url := regexp.MustCompile(`http://[^/ ]+/metrics`).FindString(m[0])
	e2eZCEngaged(t, "socket-activated", e2eZCMetrics(t, url,
		func(z e2eZCCounts) bool { return z.disabled > 0 }))
	p.stop(t)
}
