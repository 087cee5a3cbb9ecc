package ring

import (
	"bytes"
	"testing"
	"unsafe"

	"golang.org/x/sys/unix"
)

// TestBufRingReceive: a receive with buffer select takes its buffers from
// the ring in the order they were added: with a bundle, as many as the
// data needs (the first named in the CQE, the rest the positions after
// it); without, one. Buffers added back are used again.
func TestBufRingReceive(t *testing.T) {
	feat, err := ProbeFeatures()
	if err != nil {
		skipMissing(t, "io_uring", "io_uring unavailable here: %v", err)
	}
	for _, bundle := range []bool{false, true} {
		if bundle && !feat.Bundles {
			t.Log("no recv bundles in this kernel (Linux 6.10); bundle case skipped")
			continue
		}
		r := newTestRing(t)
		const bufs, size = 8, 1024
		br, err := r.NewBufRing(bufs, 3)
		if err != nil {
			t.Fatal(err)
		}
		defer br.Unmap()
		mem := make([]byte, bufs*size) // pinned by the test's reference
		// Added in reverse, so ring order is not buffer-id order.
		for i := bufs - 1; i >= 0; i-- {
			br.Add(unsafe.Pointer(&mem[i*size]), size, uint16(i))
		}
		br.Publish()
		fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM, 0)
		if err != nil {
			t.Fatal(err)
		}
		defer unix.Close(fds[0])
		defer unix.Close(fds[1])
		msg := make([]byte, 3*size+100)
		for i := range msg {
			msg[i] = byte(i*13 + 1)
		}
		if _, err := unix.Write(fds[1], msg); err != nil {
			t.Fatal(err)
		}
		e := r.SQE()
		PrepRecvSelect(e, fds[0], uint32(len(msg)), 3, bundle)
		e.UserData = 1
		res := waitCQE(t, r, 1)
		// Without a bundle one buffer; with one, several (this kernel
		// stops at whole buffers and leaves the rest for the next receive).
		if res.Flags&CQEBuffer == 0 || !bundle && res.Res != size ||
			bundle && (res.Res <= size || int(res.Res) > len(msg)) {
			t.Fatalf("bundle %v: received %d bytes, flags %#x", bundle, res.Res, res.Flags)
		}
		want := int(res.Res)
		if first := CQEBufferID(res.Flags); first != bufs-1 {
			t.Fatalf("bundle %v: first buffer %d, want %d (the first added)", bundle, first,
				bufs-1)
		}
		// Buffers bufs-1, bufs-2, ... hold the message in order.
		var got []byte
		for i, left := 0, int(res.Res); left > 0; i++ {
			b := mem[(bufs-1-i)*size:][:min(left, size)]
			got = append(got, b...)
			left -= len(b)
		}
		if !bytes.Equal(got, msg[:want]) {
			t.Fatalf("bundle %v: the buffers do not hold the message in ring order", bundle)
		}
		// The next receive starts at the next position in the ring.
		e = r.SQE()
		PrepRecvSelect(e, fds[0], uint32(len(msg)-want), 3, bundle)
		e.UserData = 2
		res = waitCQE(t, r, 2)
		used := (want + size - 1) / size
		if res.Res <= 0 || CQEBufferID(res.Flags) != uint16(bufs-1-used) {
			t.Fatalf("bundle %v: second receive: %d bytes from buffer %d, want buffer %d",
				bundle, res.Res, CQEBufferID(res.Flags), bufs-1-used)
		}
		if b := mem[(bufs-1-used)*size:][:min(int(res.Res), size)]; !bytes.Equal(b,
			msg[want:want+len(b)]) {
			t.Fatalf("bundle %v: second receive holds the wrong bytes", bundle)
		}
	}
}
