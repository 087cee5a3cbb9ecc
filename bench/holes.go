package bench

import (
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"time"

	"github.com/nbdring/nbdring/wire"
)

// Bounds of the all-holes check that run makes before a read workload.
const (
	// holesWait bounds the whole check (dial, handshake, requests): it
	// must not hold a run up noticeably, and a server that is slow to
	// answer it is not worth waiting for.
	holesWait = 5 * time.Second
	// holesRequestsMax bounds the BLOCK_STATUS requests: the check stops
	// at the first data extent, and a range still all holes after this
	// many replies (nbdring's each cover up to 4096 extents) is one of
	// many small holes: not the empty image the warning is for.
	holesRequestsMax = 64
	// holesRequestLenMax is the length asked per request: the largest
	// 4 KiB multiple a compact request's 32-bit length holds.
	holesRequestLenMax = 1<<32 - 4096
	// holesReplyMax bounds one chunk's payload: 4096 descriptors of 8
	// bytes plus the context ID is what nbdring sends; 1 MiB leaves other
	// servers room and still bounds what a broken one makes us read.
	holesReplyMax = 1 << 20
)

// allHoles asks the server at tgt, on a connection of its own, whether
// [off, off+n) is all holes (NBD_STATE_HOLE in the base:allocation
// context). known is false when it cannot tell: the server has no
// structured replies or no base:allocation, refused or garbled a reply, or
// took too long. A run then says nothing: the check is advice.
func allHoles(ctx context.Context, tgt Target, off, n uint64) (holes, known bool) {
	ctx, cancel := context.WithTimeout(ctx, holesWait)
	defer cancel()
	var d net.Dialer
	c, err := d.DialContext(ctx, tgt.Network, tgt.Addr)
	if err != nil {
		return false, false
	}
	defer c.Close()
	dl, _ := ctx.Deadline()
	_ = c.SetDeadline(dl)
	// Through TLS for an nbds target: a server that requires it refuses
	// every plaintext option.
	c, ex, err := tgt.Handshake(c, wire.ClientOptions{Name: tgt.Export,
		Structured: true, BaseAllocation: true})
	if err != nil || !ex.Structured || ex.MetaID == 0 {
		return false, false
	}
	defer disconnect(c)
	buf := make([]byte, wire.ExtReplySize)
	pos, end := off, off+n
	for i := 0; i < holesRequestsMax && pos < end; i++ {
		r := wire.Request{Type: wire.CmdBlockStatus, Cookie: uint64(i), Offset: pos,
			Length: min(end-pos, holesRequestLenMax)}
		wire.EncodeRequest(buf, &r)
		if _, err := c.Write(buf[:wire.RequestSize]); err != nil {
			return false, false
		}
		next, data, ok := readExtents(c, buf, ex.MetaID, pos)
		if !ok || next <= pos {
			return false, false
		}
		if data {
			return false, true
		}
		pos = next
	}
	return pos >= end, pos >= end
}

// readExtents reads the chunks of one BLOCK_STATUS reply for a request at
// pos. It returns where the described extents end and whether any is not
// a hole; ok is false for an error reply or one it cannot parse.
func readExtents(r io.Reader, buf []byte, metaID uint32, pos uint64) (next uint64, data,
	ok bool) {
	next = pos
	var rep wire.Reply
	for {
		if err := wire.ReadReplyHeader(r, buf, &rep); err != nil ||
			!rep.Structured || rep.Type.IsErr() || rep.Length > holesReplyMax {
			return 0, false, false
		}
		p := make([]byte, rep.Length)
		if _, err := io.ReadFull(r, p); err != nil {
			return 0, false, false
		}
		if rep.Type == wire.ReplyBlockStatus {
			if len(p) < 4 || (len(p)-4)%8 != 0 || binary.BigEndian.Uint32(p) != metaID {
				return 0, false, false
			}
			for d := p[4:]; len(d) > 0; d = d[8:] {
				next += uint64(binary.BigEndian.Uint32(d))
				if binary.BigEndian.Uint32(d[4:])&wire.StateHole == 0 {
					data = true
				}
			}
		}
		if rep.Flags&wire.ReplyFlagDone != 0 {
			return next, data, true
		}
	}
}

// disconnect sends NBD_CMD_DISC, as a client leaving cleanly must.
func disconnect(c net.Conn) {
	var hdr [wire.RequestSize]byte
	wire.EncodeRequest(hdr[:], &wire.Request{Type: wire.CmdDisc})
	_, _ = c.Write(hdr[:])
}

// warnHoles writes the one-line warning for a read workload whose range
// is all holes, with a command that fills it.
func warnHoles(w io.Writer, cfg *Config, off, n uint64) {
	const fillBS = 1 << 20
	fmt.Fprintf(w, "nbdbench: warning: bytes %d to %d of the export are all holes "+
		"(base:allocation), so reads return zeros without touching a disk and measure "+
		"nothing; write them first: nbdbench run -uri '%s' -rw write -bs 1M -qd 8 "+
		"-range %d:%d -ops %d\n", off, off+n, cfg.URI, off, n, (n+fillBS-1)/fillBS)
}
