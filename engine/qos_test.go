package engine

import (
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// TestBucketRate: over a simulated ten seconds of a client that always
// wants more, a bucket admits its rate per second (plus one burst).
func TestBucketRate(t *testing.T) {
	for _, tc := range []struct {
		name       string
		rate, cost uint64 // tokens per second, tokens per request
	}{
		{"iops=500", 500, 1},
		{"bandwidth=20MiB,4KiB", 20 << 20, 4 << 10},
		{"bandwidth=20MiB,1MiB", 20 << 20, 1 << 20},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var b bucket
			b.init(tc.rate)
			var took uint64
			step := int64(50 * time.Microsecond)
			for now := int64(1); now < int64(10*time.Second); now += step {
				// Bounded: a bucket that never refuses must fail, not hang.
				for i := 0; i < 1000 && b.take(now, tc.cost); i++ {
					took += tc.cost
				}
			}
			want := 10 * tc.rate
			burst := tc.rate/10 + tc.cost
			if took < want-tc.cost || took > want+burst {
				t.Errorf("took %d tokens in 10 s; want %d to %d", took, want-tc.cost,
					want+burst)
			}
		})
	}
}

// TestBucketBigRequest: a request larger than the burst still goes
// through on an idle bucket, and the requests after it pay its debt.
func TestBucketBigRequest(t *testing.T) {
	var b bucket
	b.init(1 << 20) // 1 MiB/s: a burst is 100 KiB
	if !b.take(1, 4<<20) {
		t.Fatal("an idle bucket refused a 4 MiB request")
	}
	if b.take(int64(3*time.Second), 4096) {
		t.Error("a request 3 s after 4 MiB at 1 MiB/s went through; want it held to 4 s")
	}
	if !b.take(int64(3950*time.Millisecond), 4096) {
		t.Error("a request within the burst of the debt's end was refused")
	}
}

// TestBucketNoLimit: rate 0 admits everything.
func TestBucketNoLimit(t *testing.T) {
	var b bucket
	b.init(0)
	for i := range 1000 {
		if !b.take(1, 1<<30) {
			t.Fatalf("request %d refused without a limit", i)
		}
	}
	if newQoS(0, 0) != nil {
		t.Error("an export without limits got buckets")
	}
}

// TestBucketShared: shards taking from one bucket at once share its rate:
// no token is handed out twice.
func TestBucketShared(t *testing.T) {
	var b bucket
	b.init(1000)
	const shards = 8
	var wg sync.WaitGroup
	counts := make([]int, shards)
	now := int64(time.Second) // one simulated instant: only the burst is there
	for i := range shards {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for counts[i] < 1000 && b.take(now, 1) {
				counts[i]++
			}
		}()
	}
	wg.Wait()
	sum := 0
	for _, n := range counts {
		sum += n
	}
	// An idle bucket admits the burst's worth (100 ms: 100 requests) and one more.
	if sum < 100 || sum > 101 {
		t.Errorf("%d shards took %d tokens in one instant; want 100 or 101", shards, sum)
	}
}

// TestQoSAdmitStages: a request that got its IOPS token but waits for
// bandwidth does not take the IOPS token again when retried.
func TestQoSAdmitStages(t *testing.T) {
	q := newQoS(1000, 1<<20)
	var got uint8
	now := int64(1)
	if !q.admit(now, 8<<20, &got) { // idle: admitted, 8 s of bandwidth debt
		t.Fatal("first request refused")
	}
	got = 0
	if q.admit(now, 4096, &got) {
		t.Fatal("second request admitted during the bandwidth debt")
	}
	tat := q.iops.tat.Load()
	for range 5 {
		if q.admit(now, 4096, &got) {
			t.Fatal("retry admitted during the debt")
		}
	}
	if q.iops.tat.Load() != tat || got != qosGotIOPS {
		t.Errorf("retries moved the IOPS bucket (%d -> %d) or lost the stage (%b)", tat,
			q.iops.tat.Load(), got)
	}
}

// TestQoSAdmitNoAlloc: taking tokens allocates nothing.
func TestQoSAdmitNoAlloc(t *testing.T) {
	q := newQoS(1e9, 1e15)
	var got uint8
	n := testing.AllocsPerRun(1000, func() {
		got = 0
		q.admit(int64(time.Second), 4096, &got)
	})
	if n != 0 {
		t.Errorf("admit allocates %v times per request", n)
	}
	var qs qosShard
	qs.init(1)
	var throttled atomic.Uint64
	served := uint64(0)
	n = testing.AllocsPerRun(1000, func() {
		served++
		qs.admit(0, 1, served, q, 4096, int64(time.Second), &throttled)
	})
	if n != 0 {
		t.Errorf("qosShard.admit allocates %v times per request", n)
	}
}

// TestQoSShardAdmit: a refused request is counted as waiting once however
// often it is retried, its wait is added to the export's throttled time
// when it is let through, and a new request (or connection) starts with
// no stages taken.
func TestQoSShardAdmit(t *testing.T) {
	lim := newQoS(10, 0) // 100 ms per request, burst 100 ms
	var q qosShard
	q.init(2)
	var throttled atomic.Uint64
	now := int64(time.Second)
	if ok, parked := q.admit(1, 7, 1, lim, 0, now, &throttled); !ok || parked {
		t.Fatalf("idle bucket: ok %v parked %v; want admitted", ok, parked)
	}
	ok, parked := q.admit(1, 7, 3, lim, 0, now, &throttled)
	if ok || !parked || q.waiting != 1 {
		t.Fatalf("second request: ok %v parked %v waiting %d; want refused, parked, 1",
			ok, parked, q.waiting)
	}
	if ok, parked := q.admit(1, 7, 3, lim, 0, now+1, &throttled); ok || parked ||
		q.waiting != 1 {
		t.Fatalf("retry: ok %v parked %v waiting %d; want refused, not parked again, 1",
			ok, parked, q.waiting)
	}
	later := now + int64(200*time.Millisecond)
	if ok, _ := q.admit(1, 7, 3, lim, 0, later, &throttled); !ok {
		t.Fatal("retry refused once the bucket refilled")
	}
	if q.waiting != 0 || throttled.Load() != uint64(later-now) {
		t.Errorf("after admission: waiting %d throttled %d; want 0, %d", q.waiting,
			throttled.Load(), later-now)
	}
	// A request refused, then its connection closed: a new connection in
	// the same row (a new generation) starts afresh, not waiting.
	q.admit(1, 7, 4, lim, 0, later, &throttled)
	q.forget(1)
	if q.waiting != 0 || q.conn[1].since != 0 {
		t.Fatalf("forget left it waiting: %d, %+v", q.waiting, q.conn[1])
	}
	q.conn[1].got = qosGotIOPS // as if the old request had its token
	ok, parked = q.admit(1, 8, 1, lim, 0, later, &throttled)
	if st := q.conn[1]; ok || !parked || st.gen != 8 || st.served != 1 || st.got != 0 {
		t.Errorf("new generation: ok %v parked %v %+v; want refused (it takes its own "+
			"token in the debt), parked, gen 8, request 1, no stages", ok, parked, st)
	}
}
