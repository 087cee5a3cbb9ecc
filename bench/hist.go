// Package bench is nbdbench's load generator and comparison harness: a
// black-box client of any NBD server, built on the wire package's client
// side. One goroutine drives each connection with many requests in flight,
// writing a batch of requests and reading a batch of replies per syscall.
package bench

import (
	"math"
	"math/bits"
	"time"
)

// Histogram records latencies in log-linear buckets: values below
// 2^histSubBits ns are exact, and above that every power of two is split
// into 2^histSubBits linear buckets, so any percentile is within 1/64
// (1.6%) of the truth. It never allocates after New.
type Histogram struct {
	counts [histBuckets]uint64
	n      uint64
	max    int64
}

const (
	histSubBits = 6
	histSub     = 1 << histSubBits
	// 64-bit values: buckets for the exact range plus one group per
	// further power of two.
	histBuckets = histSub + (64-histSubBits)*histSub
)

func histIndex(v int64) int {
	if v < histSub {
		if v < 0 {
			return 0
		}
		return int(v)
	}
	top := bits.Len64(uint64(v)) - 1 // position of the leading one
	shift := top - histSubBits
	sub := int(uint64(v)>>shift) & (histSub - 1)
	return histSub + (top-histSubBits)*histSub + sub
}

// histLow is the smallest value that falls in bucket i.
func histLow(i int) int64 {
	if i < histSub {
		return int64(i)
	}
	g, sub := (i-histSub)/histSub, (i-histSub)%histSub
	top := g + histSubBits
	return int64(1)<<top | int64(sub)<<(top-histSubBits)
}

// Record adds one latency.
func (h *Histogram) Record(d time.Duration) {
	v := int64(d)
	h.counts[histIndex(v)]++
	h.n++
	if v > h.max {
		h.max = v
	}
}

// Merge adds o's samples to h.
func (h *Histogram) Merge(o *Histogram) {
	for i, c := range o.counts {
		h.counts[i] += c
	}
	h.n += o.n
	h.max = max(h.max, o.max)
}

// Count is the number of samples.
func (h *Histogram) Count() uint64 { return h.n }

// Max is the largest sample.
func (h *Histogram) Max() time.Duration { return time.Duration(h.max) }

// Percentile returns the value at quantile q (0 < q <= 1): the midpoint of
// the bucket holding the ceil(q*n)-th sample, capped at the maximum.
func (h *Histogram) Percentile(q float64) time.Duration {
	if h.n == 0 {
		return 0
	}
	rank := uint64(math.Ceil(q * float64(h.n)))
	rank = max(rank, 1)
	var seen uint64
	for i, c := range h.counts {
		seen += c
		if seen >= rank {
			lo := histLow(i)
			hi := lo
			if i+1 < histBuckets {
				hi = histLow(i+1) - 1
			}
			return time.Duration(min(lo+(hi-lo)/2, h.max))
		}
	}
	return time.Duration(h.max)
}
