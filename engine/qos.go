package engine

import (
	"sync/atomic"
	"time"
)

// Per-export QoS: max-iops and max-bandwidth, for the export across all
// its connections and shards.
//
// Each limit is a token bucket kept as one atomic word: the theoretical
// arrival time (tat) of the next request, in nanoseconds of the bucket's
// clock (GCRA, the generic cell rate algorithm). A request of cost c
// nanoseconds (1/iops per request, bytes/bandwidth for data) moves tat on
// by c; it may start while tat stays within burst of now. An idle bucket
// (tat behind now) admits any request at once, even one costing more
// than the burst: that debt delays the requests after it instead, so a
// request larger than a burst is never refused for ever. Taking a token
// is a load and a compare-and-swap: no lock, no allocation, and shards
// sharing the bucket never wait for one another.
//
// A request that finds no token is not failed: its connection waits on
// its shard's waiting list, and the shard's timer (rangeLockRetry) brings
// it back to try again (qosShard.admit).

// bucket is one token bucket (see above). The zero bucket has no limit.
type bucket struct {
	tat  atomic.Int64 // ns on the bucket's clock when the bucket is next empty
	rate uint64       // tokens per second; 0: no limit
	// burstNs: how far ahead of now tat may run (qosBurst, or one token
	// where that is less).
	burstNs int64
	_       [40]byte // its own cache line: every shard writes tat
}

func (b *bucket) init(rate uint64) {
	b.rate = rate
	b.burstNs = int64(qosBurst)
	if rate > 0 {
		b.burstNs = max(b.burstNs, int64(time.Second)/int64(rate))
	}
}

// cost is how far n tokens move tat, in ns.
func (b *bucket) cost(n uint64) int64 {
	if n >= 1<<33 { // n*1e9 would overflow: no request is this large
		n = 1 << 33
	}
	return int64(n * uint64(time.Second) / b.rate)
}

// take takes n tokens at now (ns); false: none now, try again later.
func (b *bucket) take(now int64, n uint64) bool {
	if b.rate == 0 {
		return true
	}
	c := b.cost(n)
	for {
		tat := b.tat.Load()
		next := max(tat, now) + c
		if tat > now && next-now > b.burstNs {
			return false
		}
		if b.tat.CompareAndSwap(tat, next) {
			return true
		}
	}
}

// qosLimits are an export's limits (ExportConfig.MaxIOPS, MaxBandwidth)
// and its buckets; nil on an export with neither.
type qosLimits struct {
	iops  bucket
	bytes bucket
	epoch time.Time // the buckets' clock starts here
}

func newQoS(iops, bandwidth uint64) *qosLimits {
	if iops == 0 && bandwidth == 0 {
		return nil
	}
	q := &qosLimits{epoch: time.Now()}
	q.iops.init(iops)
	q.bytes.init(bandwidth)
	return q
}

// Request stages of a connection's held request (qosConn.got): a request
// takes its IOPS token, then its bandwidth tokens, each once however
// often it is retried.
const (
	qosGotIOPS uint8 = 1 << iota
	qosGotBytes
)

// admit takes what request needs of q at now: one IOPS token and, for a
// request that carries data (dataBytes > 0), bandwidth tokens; *got
// keeps the stages already taken. True: it may start.
func (q *qosLimits) admit(now int64, dataBytes uint64, got *uint8) bool {
	if *got&qosGotIOPS == 0 {
		if !q.iops.take(now, 1) {
			return false
		}
		*got |= qosGotIOPS
	}
	if *got&qosGotBytes == 0 && dataBytes > 0 {
		if !q.bytes.take(now, dataBytes) {
			return false
		}
	}
	*got |= qosGotBytes
	return true
}

// qosConn is a shard's QoS state of each connection's held request:
// which request it is (the connection's generation and request number),
// what it has taken, and since when it has waited. Only the shard
// touches it; it is sized when the shard starts.
type qosConn struct {
	gen    uint32
	served uint64
	got    uint8
	since  int64 // ns on the bucket's clock when it was first refused; 0: not waiting
}

// qosShard is a shard's QoS component: its connections' states and how
// many of them are waiting for a token now.
type qosShard struct {
	conn    []qosConn
	waiting int
}

func (q *qosShard) init(conns int) { q.conn = make([]qosConn, conns) }

// now is the time on q's buckets' clock, in ns.
func (q *qosLimits) now() int64 { return int64(time.Since(q.epoch)) }

// admit decides whether connection ci's held request (its generation
// gen, request number served, dataBytes of data) may start at now under
// limits lim; false: it waits (the caller parks the connection and the
// shard's timer brings it back). Time spent waiting is added to
// throttled once the request is let through. parked: the request began
// waiting just now.
func (q *qosShard) admit(ci int32, gen uint32, served uint64, lim *qosLimits,
	dataBytes uint64, now int64, throttled *atomic.Uint64) (ok, parked bool) {
	st := &q.conn[ci]
	if st.gen != gen || st.served != served {
		*st = qosConn{gen: gen, served: served}
	}
	if lim.admit(now, dataBytes, &st.got) {
		if st.since != 0 {
			throttled.Add(uint64(now - st.since))
			st.since = 0
			q.waiting--
		}
		return true, false
	}
	if st.since != 0 {
		return false, false
	}
	st.since = max(now, 1)
	q.waiting++
	return false, true
}

// forget drops connection ci's wait, if it was waiting, when it closes.
func (q *qosShard) forget(ci int32) {
	if st := &q.conn[ci]; st.since != 0 {
		st.since = 0
		q.waiting--
	}
}
