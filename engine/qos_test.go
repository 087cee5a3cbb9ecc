package engine

import (
	"sync"
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
}
