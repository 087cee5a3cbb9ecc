package engine

import (
	"encoding/binary"
	"io"
	"testing"
	"time"

	"github.com/nbdring/nbdring/wire"
)

// TestShutdownAnswersESHUTDOWN: requests a client pipelined before the
// server began stopping, but which the server had not yet started, are
// answered with NBD_ESHUTDOWN (proto.md); every request gets one reply,
// then the connection closes, and Stop returns well within the grace.
func TestShutdownAnswersESHUTDOWN(t *testing.T) {
	ds := serveFile(t, sparseFile(t, 64<<20), 1)
	tc := dial(t, ds.sock, wire.ClientOptions{BlockSize: true})
	const reads, n = 400, 64 << 10
	if _, err := tc.c.Write(pipelinedReads(reads, n)); err != nil {
		t.Fatal(err)
	}
	// The shard takes 128 at most (inflightPerConnMax) while nobody reads
	// the replies; stop it then.
	deadline := time.Now().Add(5 * time.Second)
	for ds.srv.shards[0].stats.Inflight.Load() < inflightPerConnMax {
		if time.Now().After(deadline) {
			t.Fatal("the server never filled the connection's queue")
		}
		time.Sleep(5 * time.Millisecond)
	}
	stopped := make(chan time.Duration, 1)
	go func() {
		took, err := ds.stop()
		if err != nil {
			t.Errorf("stop: %v", err)
		}
		stopped <- took
	}()
	time.Sleep(100 * time.Millisecond) // the shard has seen the stop
	seen := make([]bool, reads)
	var ok, shut int
	buf := make([]byte, n)
	for {
		var hdr [wire.SimpleReplySize]byte
		if _, err := io.ReadFull(tc.c, hdr[:]); err != nil {
			if err != io.EOF {
				t.Fatalf("after %d replies: %v", ok+shut, err)
			}
			break
		}
		errno := wire.Errno(binary.BigEndian.Uint32(hdr[4:]))
		cookie := binary.BigEndian.Uint64(hdr[8:])
		if cookie >= reads || seen[cookie] {
			t.Fatalf("reply for cookie %d: not sent or answered twice", cookie)
		}
		seen[cookie] = true
		switch errno {
		case wire.EOK:
			if _, err := io.ReadFull(tc.c, buf); err != nil {
				t.Fatal(err)
			}
			ok++
		case wire.ESHUTDOWN:
			shut++
		default:
			t.Fatalf("cookie %d: %v", cookie, errno)
		}
	}
	t.Logf("%d OK, %d ESHUTDOWN, then EOF", ok, shut)
	if ok+shut != reads || shut == 0 || ok < inflightPerConnMax {
		t.Fatalf("%d OK and %d ESHUTDOWN replies to %d requests: want the %d started "+
			"answered and the rest ESHUTDOWN", ok, shut, reads, inflightPerConnMax)
	}
	if took := <-stopped; took >= stopGrace {
		t.Fatalf("Stop took %v: the connection was cut, not drained", took)
	}
}
