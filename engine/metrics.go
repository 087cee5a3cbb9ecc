package engine

import (
	"sync/atomic"
	"time"

	"github.com/nbdring/nbdring/wire"
)

// Per-request metrics. Each shard writes only its own counters (atomics,
// so the HTTP goroutine may read them while the shard runs); tables are
// arrays indexed by export and command, sized when the shard starts, so
// counting never allocates. Snapshot (snapshot.go) reads them all.

// cmdLabels is the per-command table size: every command the protocol
// names, and one more for those it does not (cmdUnknown).
const (
	cmdUnknown = int(wire.CmdCount)
	cmdLabels  = cmdUnknown + 1
)

// cmdLabel is each command's label value in /metrics (lower_snake).
var cmdLabel = [cmdLabels]string{"read", "write", "disc", "flush", "trim", "cache",
	"write_zeroes", "block_status", "resize", "unknown"}

func cmdIndex(t wire.Cmd) int {
	if t < wire.CmdCount {
		return int(t)
	}
	return cmdUnknown
}

// latencyBounds are the request latency histogram's upper bounds, from a
// request's header decoded to its reply handed to the socket. They span
// what this server sees, in 1-2.5-5 steps: 10 µs is below a 4 KiB read
// from NVMe or zram plus a loopback round (so the first bucket is
// nearly empty and the fast path shows up in the next two); 100 µs to
// 1 ms is NVMe under queueing and a LAN hop; 2.5 to 100 ms is a 32 MiB
// request, an fdatasync or a throttled device; 1 to 10 s is a stall worth
// an alert (the handshake and shutdown limits are seconds too).
var latencyBounds = [...]time.Duration{
	10 * time.Microsecond, 25 * time.Microsecond, 50 * time.Microsecond,
	100 * time.Microsecond, 250 * time.Microsecond, 500 * time.Microsecond,
	time.Millisecond, 2500 * time.Microsecond, 5 * time.Millisecond,
	10 * time.Millisecond, 25 * time.Millisecond, 50 * time.Millisecond,
	100 * time.Millisecond, 250 * time.Millisecond, 500 * time.Millisecond,
	time.Second, 2500 * time.Millisecond, 10 * time.Second,
}

const latencyBuckets = len(latencyBounds)

// histogram counts latencies per bucket (not cumulative: one add per
// observation; the last bucket is +Inf) and their sum in nanoseconds.
type histogram struct {
	counts [latencyBuckets + 1]atomic.Uint64
	sumNs  atomic.Uint64
}

func (h *histogram) observe(ns int64) {
	i := 0
	for i < latencyBuckets && ns > int64(latencyBounds[i]) {
		i++
	}
	h.counts[i].Add(1)
	h.sumNs.Add(uint64(max(ns, 0)))
}

// exportCounters are one shard's counters for one export.
type exportCounters struct {
	conns    atomic.Int64
	requests [cmdLabels]atomic.Uint64
	errors   [cmdLabels]atomic.Uint64
	bytes    [cmdLabels]atomic.Uint64 // READ and WRITE data bytes
}

// shardMetrics is the counters component: one shard's per-request
// metrics and the per-connection and per-slot state that times requests.
// It is a leaf: its methods take connection and slot indices and the
// request's command, read nothing else of the shard and call nothing.
// Only the shard writes the plain fields; the atomics may be read by any
// goroutine (Snapshot, connCount).
//
// Invariants: every connection index given to countRequest, countWait,
// countError and countBytes was given to connAttached first and not yet
// to connReleased; a connection's conns count is added once and removed
// once.
type shardMetrics struct {
	// epoch is the shard's start; clock reads the monotonic time since it
	// (BenchmarkClock: half the cost of time.Now, which reads wall time too).
	epoch        time.Time
	connExp      [connsPerShardMax]int32 // each connection's export index
	connStart    [connsPerShardMax]int64 // when its held request was decoded
	connWaited   [connsPerShardMax]bool  // its held request has waited already
	connLive     [connsPerShardMax]bool  // attached (invariants only read it)
	slotStart    [slotsMax]int64         // when the slot's request was decoded
	exp          []exportCounters        // by export index
	latency      [cmdLabels]histogram
	stage        [stageCount][cmdLabels]histogram // by stage (stages.go)
	st           stageClock                       // the stages' marks
	backpressure atomic.Uint64                    // requests that waited for a slot or a buffer
}

func (m *shardMetrics) init(exports int) {
	m.epoch = time.Now()
	m.exp = make([]exportCounters, exports)
}

// clock is the shard's monotonic time in nanoseconds.
func (m *shardMetrics) clock() int64 { return int64(time.Since(m.epoch)) }

// connAttached counts connection ci, of export index exp.
func (m *shardMetrics) connAttached(ci int32, exp int) {
	assert(!m.connLive[ci], "connection counted attached twice")
	m.connLive[ci] = true
	m.connExp[ci] = int32(exp)
	m.exp[exp].conns.Add(1)
}

func (m *shardMetrics) connReleased(ci int32) {
	assert(m.connLive[ci], "connection counted released twice")
	m.connLive[ci] = false
	m.exp[m.connExp[ci]].conns.Add(-1)
}

// connCount is the shard's connections over all exports; it may be read
// from any goroutine.
func (m *shardMetrics) connCount() int64 {
	var n int64
	for i := range m.exp {
		n += m.exp[i].conns.Load()
	}
	return n
}

// countRequest counts the request of command t just decoded on ci and
// starts its clock (the batch's: stages.go).
func (m *shardMetrics) countRequest(ci int32, t wire.Cmd) {
	m.connStart[ci], m.connWaited[ci] = m.batchClock(), false
	m.exp[m.connExp[ci]].requests[cmdIndex(t)].Add(1)
}

// countWait counts a request that has to wait for a slot or a buffer,
// once however often it is retried.
func (m *shardMetrics) countWait(ci int32) {
	if !m.connWaited[ci] {
		m.connWaited[ci] = true
		m.backpressure.Add(1)
	}
}

// slotTimed gives slot si its connection's request start time.
func (m *shardMetrics) slotTimed(si, ci int32) {
	m.slotStart[si] = m.connStart[ci]
	m.markTimed(si, ci)
}

// countError counts a request of command t on ci that failed.
func (m *shardMetrics) countError(ci int32, t wire.Cmd) {
	m.exp[m.connExp[ci]].errors[cmdIndex(t)].Add(1)
}

// countBytes counts a READ's or WRITE's n data bytes, once it has succeeded.
func (m *shardMetrics) countBytes(ci int32, t wire.Cmd, n uint64) {
	m.exp[m.connExp[ci]].bytes[cmdIndex(t)].Add(n)
}

// observeSent times slot si's reply to a command t, handed to the socket
// at now (sentAt: one clock read per send).
func (m *shardMetrics) observeSent(si int32, t wire.Cmd, now int64) {
	c := cmdIndex(t)
	m.latency[c].observe(now - m.slotStart[si])
	m.observeStages(si, c, now)
}

// Handshake results, the label of nbdring_handshakes_total.
const (
	hsOK        = iota // handed to a shard
	hsRefused          // the server ended it: a limit, a protocol error, shutting down
	hsTimedOut         // not done within handshakeTimeout
	hsAborted          // the client ended it: NBD_OPT_ABORT, or it hung up
	hsTLSFailed        // the TLS handshake failed (before the deadline)
	hsResults
)

var hsLabel = [hsResults]string{"ok", "refused", "timed_out", "aborted", "tls_failed"}

// handshakeResult is how a handshake ended: ok if handed to a shard;
// refused if the server said so; timed out if the deadline has passed (every
// read and write fails from then on, a TLS handshake's too); else what the
// handshake said: TLS failed, or aborted by the client.
func handshakeResult(handed bool, result int, deadline time.Time) int {
	switch {
	case handed:
		return hsOK
	case result != hsRefused && !time.Now().Before(deadline):
		return hsTimedOut
	}
	return result
}
