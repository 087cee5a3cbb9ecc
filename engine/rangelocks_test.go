package engine

import (
	"sync/atomic"
	"testing"
)

// TestRangeLocksRule walks the rule of rangeLocks: plain write-class
// requests count themselves while no RMW is about; an RMW waits for them
// and, once it is counted, sends new plain requests to the table, where
// they and the RMW exclude each other on shared blocks.
func TestRangeLocksRule(t *testing.T) {
	var l rangeLocks
	a, b, c, d := lockNone, lockNone, lockNone, lockNone
	if !l.lockPlain(0, 0, 4096, &a) || a != lockFast {
		t.Fatalf("plain request with no RMW about: hold %d, want lockFast", a)
	}
	if l.lockRMW(8192, 12288, &b) || b != lockRMWWait {
		t.Fatalf("RMW while a plain request is in flight: hold %d, want to wait "+
			"(lockRMWWait)", b)
	}
	if !l.lockPlain(1, 8192, 12288, &c) || c < 0 {
		t.Fatalf("plain request while an RMW waits: hold %d, want a table span", c)
	}
	l.release(0, &a)
	if l.lockRMW(8192, 12288, &b) {
		t.Fatal("RMW took blocks a plain request holds in the table")
	}
	if !l.lockRMW(4096, 8192, &d) || d < 0 {
		t.Fatalf("RMW on blocks no one holds: hold %d, want a table span", d)
	}
	l.release(1, &c)
	if !l.lockRMW(8192, 12288, &b) || b < 0 {
		t.Fatalf("RMW after the plain request left: hold %d, want a table span", b)
	}
	if l.lockPlain(0, 10000, 16384, &a) || a != lockNone {
		t.Fatalf("plain request on an RMW's blocks: hold %d, want to wait", a)
	}
	if l.rmw.Load() != 2 {
		t.Fatalf("rmw = %d with two RMWs holding spans, want 2", l.rmw.Load())
	}
	l.release(0, &b)
	l.release(0, &d)
	if l.rmw.Load() != 0 || b != lockNone || d != lockNone {
		t.Fatalf("after releasing both RMWs: rmw = %d, holds %d %d", l.rmw.Load(), b, d)
	}
	if !l.lockPlain(0, 10000, 16384, &a) || a != lockFast {
		t.Fatalf("plain request once no RMW is about: hold %d, want lockFast", a)
	}
	l.release(0, &a)
	for i := range l.fast {
		if n := l.fast[i].n.Load(); n != 0 {
			t.Fatalf("stripe %d counts %d requests after all left", i, n)
		}
	}
}

// TestRangeLocksRMWWaitReleased: an RMW that gives up while waiting (its
// connection closed) stops keeping plain requests off the fast path.
func TestRangeLocksRMWWaitReleased(t *testing.T) {
	var l rangeLocks
	a, b := lockNone, lockNone
	l.lockPlain(3, 0, 512, &a)
	if l.lockRMW(0, 512, &b) {
		t.Fatal("RMW took blocks while a plain request is in flight")
	}
	l.release(0, &b)
	l.release(3, &a)
	if !l.lockPlain(3, 0, 512, &a) || a != lockFast {
		t.Fatalf("plain request after the waiting RMW left: hold %d, want lockFast", a)
	}
}

// BenchmarkRangeLock: what a write-class request pays for its hold. The
// fast path (no RMW about) is two atomics on its shard's own line; the
// table (an RMW about) a mutex and a scan. parallel: one goroutine per P,
// each its own shard, as the shards run.
func BenchmarkRangeLock(b *testing.B) {
	var l rangeLocks
	b.Run("fast", func(b *testing.B) {
		b.ReportAllocs()
		h := lockNone
		for i := 0; i < b.N; i++ {
			l.lockPlain(0, 0, 4096, &h)
			l.release(0, &h)
		}
	})
	b.Run("fast/parallel", func(b *testing.B) {
		b.ReportAllocs()
		var next atomic.Int32
		b.RunParallel(func(pb *testing.PB) {
			shard, h := int(next.Add(1)), lockNone
			for pb.Next() {
				l.lockPlain(shard, 0, 4096, &h)
				l.release(shard, &h)
			}
		})
	})
	b.Run("table", func(b *testing.B) {
		b.ReportAllocs()
		for i := 0; i < b.N; i++ {
			k, _ := l.tryLock(0, 4096)
			l.unlock(k)
		}
	})
}
