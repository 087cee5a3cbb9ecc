package engine

import (
	"fmt"
	"log/slog"
	"time"

	"github.com/nbdring/nbdring/ring"
)

// -io-timeout: a connection the server waits on (replies queued that it
// does not read, a WRITE payload or a request header it does not finish)
// and that makes no progress for Server.ioTimeout is cut, so a stalled
// client gives its slots and buffers back. A connection idle between
// requests with nothing queued is never cut: NBD clients idle for hours.
//
// Nothing is timed per request: receives and sends only bump conn.prog,
// and one timer per shard (opTick, every ioTick) compares each
// connection's count with what the previous tick saw.

// armTick arms the shard's tick while it has connections and -io-timeout
// is on; the loop calls it every turn.
func (s *shard) armTick() {
	if s.tickOn || s.srv.ioTimeout <= 0 || s.conns.live == 0 {
		return
	}
	ring.PrepTimeout(s.issue(opTick, 0), &s.mem.words.tick)
	s.tickOn = true
}

// onTick cuts the connections that have made no progress for -io-timeout
// while the server waited on them.
func (s *shard) onTick() {
	s.tickOn = false
	now := time.Now()
	for i := range s.conns.rows {
		ci := int32(i)
		if !s.conns.active(ci) {
			continue
		}
		k := s.conns.stalledOn(ci, s.tx.pending(ci), s.rx.avail(ci))
		if s.conns.stalled(ci, k != stallNone, now, s.srv.ioTimeout) {
			s.cutStalled(ci, k)
		}
	}
}

// cutStalled closes a connection -io-timeout found stalled on k, logging
// once who it was and what was stuck.
func (s *shard) cutStalled(ci int32, k stallKind) {
	c := &s.conns.rows[ci]
	var what string
	switch k {
	case stallReplies:
		what = fmt.Sprintf("%d bytes of replies unsent (it does not read them)",
			s.tx.unsent(ci, c.tls == nil))
	case stallPayload:
		missing := c.drain
		if c.pslot >= 0 {
			missing = uint64(len(s.slots.payload(c.pslot))) - uint64(c.pgot)
		}
		what = fmt.Sprintf("%d bytes of a WRITE payload missing", missing)
	default:
		what = fmt.Sprintf("%d of %d bytes of a request header received", s.rx.avail(ci),
			c.reqSize)
	}
	s.stats.IOTimeouts.Add(1)
	slog.Warn(fmt.Sprintf("io-timeout: cutting connection from %s (export %q): no progress "+
		"for %v with %s; -io-timeout sets the limit", c.peer, c.exp.Name, s.srv.ioTimeout,
		what), "client", c.peer, "export", c.exp.Name, "shard", s.id)
	s.beginClose(ci, closeTimeout)
}
