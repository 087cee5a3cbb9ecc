package engine

import (
	"bytes"
	"math/rand"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nbdring/nbdring/wire"
)

// zcServer serves a file of random bytes (no holes: every READ is data)
// on listeners made by ListenWith, the server's own, as cmd/nbdring makes
// them: "tcp" (plain TCP on loopback: the kernel takes zero-copy sends,
// then says it copied), "mptcp" (-mptcp: accepted sockets refuse them)
// and "unix" (refused). It returns the addresses by network.
func zcServer(t *testing.T, size int) (*Server, map[string]string, []byte) {
	t.Helper()
	dir := t.TempDir()
	path := filepath.Join(dir, "img")
	data := make([]byte, size)
	rand.New(rand.NewSource(1)).Read(data)
	if err := os.WriteFile(path, data, 0o644); err != nil {
		t.Fatal(err)
	}
	exp, err := OpenExport(ExportConfig{Path: path})
	if err != nil {
		skipMissing(t, "direct-io", "cannot serve a file here: %v", err)
	}
	srv, err := New(Config{Shards: 1, ArenaSize: 128 << 20}, []*Export{exp})
	if err != nil {
		skipMissing(t, "io_uring", "engine unavailable here: %v", err)
	}
	if !srv.shards[0].ring.SendZC {
		srv.Stop()
		skipMissing(t, "kernel", "this kernel has no IORING_OP_SENDMSG_ZC")
	}
	addrs := map[string]string{}
	errc := make(chan error, 3)
	for network, o := range map[string]struct {
		addr string
		opt  ListenOptions
	}{
		"tcp":   {"127.0.0.1:0", ListenOptions{}},
		"mptcp": {"127.0.0.1:0", ListenOptions{MPTCP: true}},
		"unix":  {"unix:" + filepath.Join(dir, "sock"), ListenOptions{}},
	} {
		ln, err := ListenWith(o.addr, o.opt)
		if err != nil {
			t.Fatal(err)
		}
		addrs[network] = ln.Addr().String()
		go func() { errc <- srv.Serve(ln) }()
	}
	t.Cleanup(func() {
		if err := srv.Stop(); err != nil {
			t.Errorf("stop: %v", err)
		}
		for range addrs {
			<-errc
		}
	})
	return srv, addrs, data
}

// kernelMPTCP reports whether net.mptcp.enabled is 1: only then is an
// MPTCP listener really one (else the kernel makes it plain TCP).
func kernelMPTCP() bool {
	b, err := os.ReadFile("/proc/sys/net/mptcp/enabled")
	return err == nil && strings.TrimSpace(string(b)) == "1"
}

// zcDial connects to the server's listener for network and shakes hands.
func zcDial(t *testing.T, network, addr string) *testClient {
	t.Helper()
	dialNet := "tcp"
	if network == "unix" {
		dialNet = "unix"
	}
	c, err := net.Dial(dialNet, addr)
	if err != nil {
		t.Fatal(err)
	}
	_ = c.SetDeadline(time.Now().Add(20 * time.Second))
	if _, err := wire.ClientHandshake(c, wire.ClientOptions{BlockSize: true}); err != nil {
		t.Fatal(err)
	}
	return &testClient{t: t, c: c}
}

// zcReadRounds reads rounds x 8 reads of n bytes, 8 in flight, and checks
// every byte.
func zcReadRounds(t *testing.T, tc *testClient, data []byte, n, rounds int) {
	t.Helper()
	buf := make([]byte, n)
	for round := 0; round < rounds; round++ {
		for k := 0; k < 8; k++ {
			off := uint64((round*8+k)%(len(data)/n)) * uint64(n)
			tc.send(wire.CmdRead, 0, off, off, uint32(n), nil)
		}
		for k := 0; k < 8; k++ {
			off, errno := tc.simple(buf)
			if errno != 0 || !bytes.Equal(buf, data[off:off+uint64(n)]) {
				t.Fatalf("read at %d: %v, or wrong bytes", off, errno)
			}
		}
	}
}

// zcCounts are a shard's zero-copy counters.
type zcCounts struct{ sends, bytes, copied, refused, disabled uint64 }

func zcLoad(st *ShardStats) zcCounts {
	return zcCounts{st.SendsZC.Load(), st.ZCBytes.Load(), st.ZCCopied.Load(),
		st.ZCRefused.Load(), st.ZCDisabled.Load()}
}

func (a zcCounts) minus(b zcCounts) zcCounts {
	return zcCounts{a.sends - b.sends, a.bytes - b.bytes, a.copied - b.copied,
		a.refused - b.refused, a.disabled - b.disabled}
}

// TestZeroCopyReads: 1 MiB READ replies go out zero-copy on a socket the
// server's own listener accepted (the kernel holds the buffers until the
// notification); on loopback every notification says the kernel copied,
// so after zcCopiedRunMax of them the connection sends copied and says so
// once. Where the socket refuses (Unix, -mptcp) the same batch is sent
// again copied, counted once per connection. Byte for byte right every
// way. A client that vanishes with sends in flight leaves nothing behind.
func TestZeroCopyReads(t *testing.T) {
	const size, n = 16 << 20, 1 << 20
	srv, addrs, data := zcServer(t, size)
	st := &srv.shards[0].stats
	for _, network := range []string{"tcp", "mptcp", "unix"} {
		if network == "mptcp" && !kernelMPTCP() {
			t.Logf("mptcp: skipped, net.mptcp.enabled is not 1 here")
			continue
		}
		before := zcLoad(st)
		tc := zcDial(t, network, addrs[network])
		zcReadRounds(t, tc, data, n, 4)
		d := zcLoad(st).minus(before)
		t.Logf("%s: zero-copy sends %d (%d bytes), copied %d, refused %d, disabled %d",
			network, d.sends, d.bytes, d.copied, d.refused, d.disabled)
		switch network {
		case "tcp":
			if d.sends < zcCopiedRunMax || d.bytes < zcCopiedRunMax*n || d.refused != 0 {
				t.Errorf("tcp: want at least %d zero-copy sends of 1 MiB and no refusal",
					zcCopiedRunMax)
			}
			if d.copied < zcCopiedRunMax || d.disabled != 1 {
				t.Errorf("tcp: loopback copies: want >= %d copied notifications and "+
					"zero-copy turned off once", zcCopiedRunMax)
			}
			// Turned off: no zero-copy send from now on.
			sends := st.SendsZC.Load()
			zcReadRounds(t, tc, data, n, 2)
			if got := st.SendsZC.Load() - sends; got != 0 {
				t.Errorf("tcp: %d zero-copy sends after zero-copy turned itself off", got)
			}
		case "mptcp", "unix":
			if d.refused != 1 || d.bytes != 0 || d.disabled != 0 {
				t.Errorf("%s: refusal counted %d times, want once, and no zero-copy bytes",
					network, d.refused)
			}
		}
		// Vanish with sixteen 1 MiB reads asked for and nothing read.
		for k := uint64(0); k < 16; k++ {
			tc.send(wire.CmdRead, 0, k, k<<20, 1<<20, nil)
		}
		tc.c.Close()
	}
	zcNoLeak(t, srv)
}

// zcNoLeak waits for the shard to hold nothing: connections, slots, arena
// bytes, kernel operations (but its own receive), stale completions.
func zcNoLeak(t *testing.T, srv *Server) {
	t.Helper()
	st := &srv.shards[0].stats
	deadline := time.Now().Add(10 * time.Second)
	for srv.shards[0].snapshot().Conns() != 0 || st.Inflight.Load() != 0 ||
		st.ArenaBytes.Load() != 0 || st.OpsInflight.Load() != 1 {
		if time.Now().After(deadline) {
			t.Fatalf("leak after vanishing: %d connections, %d slots, %d arena bytes, "+
				"%d kernel ops", srv.shards[0].snapshot().Conns(), st.Inflight.Load(),
				st.ArenaBytes.Load(), st.OpsInflight.Load()-1)
		}
		time.Sleep(10 * time.Millisecond)
	}
	if st.Stale.Load() != 0 {
		t.Fatalf("%d stale completions", st.Stale.Load())
	}
}
