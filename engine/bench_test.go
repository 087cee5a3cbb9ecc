package engine

import (
	"fmt"
	"testing"

	"github.com/nbdring/nbdring/wire"
)

// BenchmarkRequest measures one request's round trip through a real shard
// (client in the same process, one request in flight): the server's
// per-request cost plus the Unix socket, with allocations.
func BenchmarkRequest(b *testing.B) {
	_, sock, _ := testServer(b, 64<<20, 1)
	tc := dial(b, sock, wire.ClientOptions{BlockSize: true})
	benchRoundTrips(b, tc)
}

// benchRoundTrips times one READ or WRITE at a time through tc, per size.
func benchRoundTrips(b *testing.B, tc *testClient) {
	for _, size := range []int{4 << 10, 64 << 10, 1 << 20} {
		data := make([]byte, size)
		buf := make([]byte, size)
		for _, op := range []string{"read", "write"} {
			b.Run(fmt.Sprintf("%s/size=%d", op, size), func(b *testing.B) {
				b.ReportAllocs()
				b.SetBytes(int64(size))
				for i := 0; i < b.N; i++ {
					off := uint64(i%16) * uint64(size)
					var errno wire.Errno
					if op == "read" {
						errno = tc.do(wire.CmdRead, 0, off, uint32(size), nil, buf)
					} else {
						errno = tc.do(wire.CmdWrite, 0, off, uint32(size), data, nil)
					}
					if errno != 0 {
						b.Fatal(errno)
					}
				}
			})
		}
	}
}
