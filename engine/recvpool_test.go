package engine

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"testing"
	"time"

	"github.com/nbdring/nbdring/ring"
	"github.com/nbdring/nbdring/wire"
)

// recvModes are the two ways receives fill the pool: bundles (several
// buffers a receive, where the kernel has them) and one buffer each.
var recvModes = []struct {
	name      string
	noBundles bool
}{{"bundles", false}, {"one-buffer", true}}

// TestRecvPoolSplits: requests and payloads split across pool buffers and
// across receives in every way still parse: a burst of unaligned writes
// whose headers and payloads straddle buffers, and requests written a
// byte at a time (a header gathered in the carry). Every buffer is back
// in the pool once the connections close.
func TestRecvPoolSplits(t *testing.T) {
	feat, err := ring.ProbeFeatures()
	if err != nil {
		skipMissing(t, "io_uring", "io_uring unavailable here: %v", err)
	}
	for _, m := range recvModes {
		t.Run(m.name, func(t *testing.T) {
			if !m.noBundles && !feat.Bundles {
				skipMissing(t, "kernel", "no recv bundles in this kernel (Linux 6.10)")
			}
			srv, sock, _ := testServerConfig(t, 8<<20, InlineOff,
				Config{Shards: 1, ArenaSize: arenaSizeMin, NoRecvBundles: m.noBundles})
			tc := dial(t, sock, wire.ClientOptions{})
			const writes, size = 300, 1000 // 1028 bytes a request: never page-aligned
			var burst []byte
			data := make([]byte, writes*size)
			for i := range data {
				data[i] = byte(i*31 + i>>10)
			}
			for i := range writes {
				var h [wire.RequestSize]byte
				wire.EncodeRequest(h[:], &wire.Request{Type: wire.CmdWrite, Cookie: uint64(i),
					Offset: uint64(i) * size, Length: size})
				burst = append(append(burst, h[:]...), data[i*size:(i+1)*size]...)
			}
			if _, err := tc.c.Write(burst); err != nil {
				t.Fatal(err)
			}
			for range writes {
				if cookie, e := tc.simple(nil); e != wire.EOK {
					t.Fatalf("WRITE %d: %v", cookie, e)
				}
			}
			// Byte at a time: a WRITE of 10 bytes, then a READ of them back.
			var one []byte
			var h [wire.RequestSize]byte
			wire.EncodeRequest(h[:], &wire.Request{Type: wire.CmdWrite, Cookie: 1,
				Offset: 7, Length: 10})
			one = append(append(one, h[:]...), "0123456789"...)
			wire.EncodeRequest(h[:], &wire.Request{Type: wire.CmdRead, Cookie: 2,
				Offset: 0, Length: writes * size})
			one = append(one, h[:]...)
			for i := range one {
				if _, err := tc.c.Write(one[i : i+1]); err != nil {
					t.Fatal(err)
				}
				time.Sleep(200 * time.Microsecond) // most bytes then arrive alone
			}
			if cookie, e := tc.simple(nil); cookie != 1 || e != wire.EOK {
				t.Fatalf("byte-at-a-time WRITE: cookie %d, %v", cookie, e)
			}
			got := make([]byte, writes*size)
			if cookie, e := tc.simple(got); cookie != 2 || e != wire.EOK {
				t.Fatalf("byte-at-a-time READ: cookie %d, %v", cookie, e)
			}
			copy(data[7:], "0123456789")
			if !bytes.Equal(got, data) {
				t.Fatal("the data read back differs from what was written")
			}
			sn := srv.Snapshot().Shards[0]
			t.Logf("%d receives filled %d buffers", sn.Recvs, sn.RecvBufs)
			if m.noBundles && sn.RecvBufs != sn.Recvs || !m.noBundles && sn.RecvBufs <= sn.Recvs {
				t.Errorf("%d receives filled %d buffers", sn.Recvs, sn.RecvBufs)
			}
			tc.c.Close()
			waitPoolFull(t, srv)
		})
	}
}

// waitPoolFull waits for every pool buffer to be free: none leaked.
func waitPoolFull(t *testing.T, srv *Server) {
	t.Helper()
	want := int64(srv.sz.recvBufs)
	deadline := time.Now().Add(5 * time.Second)
	for {
		free := srv.Snapshot().Shards[0].RecvBufsFree
		if free == want {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d of %d receive buffers free after every connection closed", free,
				want)
		}
		srv.shards[0].wake() // one more loop turn publishes the count
		time.Sleep(time.Millisecond)
	}
}

// TestRecvPoolStarved: a connection that holds every pool buffer while it
// waits (its client reads no replies) leaves another's receive without
// buffers (ENOBUFS); that one is served once buffers come back.
func TestRecvPoolStarved(t *testing.T) {
	feat, err := ring.ProbeFeatures()
	if err != nil || !feat.Bundles {
		skipMissing(t, "kernel", "needs recv bundles (Linux 6.10), so one receive can "+
			"take the whole pool")
	}
	for attempt := 1; ; attempt++ {
		if starve(t) {
			return
		}
		if attempt == 5 {
			t.Fatal("the first connection never held the whole pool in 5 attempts")
		}
	}
}

// starve runs TestRecvPoolStarved once; false: no receive found the pool
// empty (the first connection's bytes came in pieces), try again.
func starve(t *testing.T) bool {
	srv, sock, _ := testServerConfig(t, 64<<20, InlineOff,
		Config{Shards: 1, ArenaSize: arenaSizeDefault, MaxConns: 2})
	if srv.sz.recvBufs != recvPoolMin {
		t.Fatalf("pool of %d buffers, want the smallest, %d", srv.sz.recvBufs, recvPoolMin)
	}
	a := dial(t, sock, wire.ClientOptions{})
	// 64 KiB READs whose replies the client does not read: the shard
	// stops at 128 in flight and waits, holding what it received: the rest
	// of these headers, well past the pool's 64 KiB.
	const reads, size = 4000, 64 << 10
	if _, err := a.c.Write(pipelinedReads(reads, size)); err != nil {
		t.Fatal(err)
	}
	time.Sleep(50 * time.Millisecond)
	b := dial(t, sock, wire.ClientOptions{})
	b.send(wire.CmdRead, 0, 77, 0, 4096, nil)
	deadline := time.Now().Add(5 * time.Second)
	for srv.Snapshot().Shards[0].RecvNoBufs == 0 {
		if time.Now().After(deadline) {
			a.c.Close()
			b.c.Close()
			return false
		}
		time.Sleep(time.Millisecond)
	}
	// Now read a's replies: its requests finish, its buffers come back,
	// and b's receive is armed again.
	done := make(chan error, 1)
	go func() { done <- drainReplies(a.c, reads, size) }()
	buf := make([]byte, 4096)
	if cookie, e := b.simple(buf); cookie != 77 || e != wire.EOK {
		t.Fatalf("the starved connection's READ: cookie %d, %v", cookie, e)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	return true
}

// drainReplies reads n simple replies with n bytes of data each.
func drainReplies(c net.Conn, n, size int) error {
	hdr := make([]byte, wire.SimpleReplySize)
	data := make([]byte, size)
	for range n {
		if _, err := io.ReadFull(c, hdr); err != nil {
			return err
		}
		if e := binary.BigEndian.Uint32(hdr[4:]); e != 0 {
			return fmt.Errorf("READ failed: %v", wire.Errno(e))
		}
		if _, err := io.ReadFull(c, data); err != nil {
			return err
		}
	}
	return nil
}

// TestRecvPoolOrder: buffers come back to the ring in another order than
// they left it (one connection holds some while another cycles the
// rest), so a bundle's buffers are found by ring position, not by id:
// data received after that still lands where it was written.
func TestRecvPoolOrder(t *testing.T) {
	_, sock, _ := testServerConfig(t, 64<<20, InlineOff,
		Config{Shards: 1, ArenaSize: arenaSizeDefault, MaxConns: 2})
	a := dial(t, sock, wire.ClientOptions{})
	const reads, size = 600, 64 << 10 // 128 in flight, the rest held while a waits
	if _, err := a.c.Write(pipelinedReads(reads, size)); err != nil {
		t.Fatal(err)
	}
	time.Sleep(20 * time.Millisecond)
	b := dial(t, sock, wire.ClientOptions{})
	// Bursts of 12 unaligned writes of 3001 bytes (36 KiB: most of what a
	// leaves of the pool), request k's bytes all k+1, one after another.
	const burst, wsize, base = 12, 3001, 40 << 20
	var want []byte
	writeBurst := func() {
		var out []byte
		for i := range burst {
			p := bytes.Repeat([]byte{byte(len(want)/wsize + 1)}, wsize)
			var h [wire.RequestSize]byte
			wire.EncodeRequest(h[:], &wire.Request{Type: wire.CmdWrite, Cookie: uint64(i),
				Offset: base + uint64(len(want)), Length: wsize})
			out = append(append(out, h[:]...), p...)
			want = append(want, p...)
		}
		if _, err := b.c.Write(out); err != nil {
			t.Fatal(err)
		}
		for range burst {
			if cookie, e := b.simple(nil); e != wire.EOK {
				t.Fatalf("WRITE %d: %v", cookie, e)
			}
		}
	}
	for range 6 {
		writeBurst()
	}
	if err := drainReplies(a.c, reads, size); err != nil {
		t.Fatal(err)
	}
	for range 6 {
		writeBurst()
	}
	got := make([]byte, len(want))
	if e := b.do(wire.CmdRead, 0, base, uint32(len(want)), nil, got); e != wire.EOK {
		t.Fatalf("READ back: %v", e)
	}
	if !bytes.Equal(got, want) {
		t.Fatal("data written after buffers came back out of order differs")
	}
}

// TestRecvPoolAfterDisc: bytes a client sends after NBD_CMD_DISC, in the
// same receive, are dropped with the connection, and their buffers
// come back.
func TestRecvPoolAfterDisc(t *testing.T) {
	srv, sock, _ := testServerConfig(t, 1<<20, InlineOff,
		Config{Shards: 1, ArenaSize: arenaSizeMin})
	tc := dial(t, sock, wire.ClientOptions{})
	var h [wire.RequestSize]byte
	wire.EncodeRequest(h[:], &wire.Request{Type: wire.CmdDisc, Cookie: 1})
	// Requests in flight when DISC arrives keep the connection open.
	out := append(pipelinedReads(10, 4096), h[:]...)
	out = append(out, pipelinedReads(300, 4096)...)
	if _, err := tc.c.Write(out); err != nil {
		t.Fatal(err)
	}
	if err := drainReplies(tc.c, 10, 4096); err != nil {
		t.Fatal(err)
	}
	if n, err := tc.c.Read(make([]byte, 16)); err != io.EOF {
		t.Fatalf("after DISC and more requests: read %d bytes, %v; want EOF", n, err)
	}
	waitPoolFull(t, srv)
}
