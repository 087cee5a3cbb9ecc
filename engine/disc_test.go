package engine

import (
	"encoding/binary"
	"errors"
	"io"
	"os"
	"testing"
	"time"

	"github.com/nbdring/nbdring/wire"
)

// TestDiscBadFlagsDisconnects: proto.md, NBD_CMD_DISC: "There is no reply
// to an NBD_CMD_DISC", and the server "MUST handle all outstanding
// requests, shut down the TLS session (if one is running), and close the
// TCP session". A DISC with flags it should not carry (or an offset and
// length, which "MUST be zero") is still a DISC: the FLUSH sent before it
// is answered, nothing else is, and the server closes the connection.
func TestDiscBadFlagsDisconnects(t *testing.T) {
	_, sock, _ := testServer(t, 1<<20, 1)
	for _, c := range []struct {
		name       string
		structured bool
		flags      uint16
		off        uint64
		length     uint32
	}{
		{"undefined flag 0x8000", false, 0x8000, 0, 0},
		{"NO_HOLE", false, uint16(wire.CmdFlagNoHole), 0, 0},
		{"every flag, structured", true, 0xffff, 0, 0},
		{"DF, structured", true, uint16(wire.CmdFlagDF), 0, 0},
		{"offset and length", false, 0, 4096, 512},
	} {
		t.Run(c.name, func(t *testing.T) {
			tc := dial(t, sock, wire.ClientOptions{Structured: c.structured})
			tc.send(wire.CmdFlush, 0, 1, 0, 0, nil)
			// The DISC's bytes as proto.md lays them out, not via wire.
			var disc [28]byte
			binary.BigEndian.PutUint32(disc[0:], 0x25609513) // NBD_REQUEST_MAGIC
			binary.BigEndian.PutUint16(disc[4:], c.flags)
			binary.BigEndian.PutUint16(disc[6:], 2) // NBD_CMD_DISC
			binary.BigEndian.PutUint64(disc[8:], 2) // cookie
			binary.BigEndian.PutUint64(disc[16:], c.off)
			binary.BigEndian.PutUint32(disc[24:], c.length)
			if _, err := tc.c.Write(disc[:]); err != nil {
				t.Fatal(err)
			}
			_ = tc.c.SetReadDeadline(time.Now().Add(5 * time.Second))
			got, err := io.ReadAll(tc.c)
			if errors.Is(err, os.ErrDeadlineExceeded) {
				t.Fatalf("connection still open 5s after a DISC with flags %#x "+
					"(received %d bytes: % x)", c.flags, len(got), got)
			}
			// The FLUSH's reply, cookie 1: a simple reply, also on structured
			// connections (proto.md allows it for commands without data).
			want := wire.SimpleReplySize
			if len(got) != want {
				t.Fatalf("after FLUSH and a DISC with flags %#x: %d bytes (% x), want the "+
					"FLUSH's reply alone (%d bytes, then the close)", c.flags, len(got), got,
					want)
			}
			if cookie := binary.BigEndian.Uint64(got[8:]); cookie != 1 {
				t.Errorf("the one reply has cookie %d, want the FLUSH's (1)", cookie)
			}
		})
	}
}
