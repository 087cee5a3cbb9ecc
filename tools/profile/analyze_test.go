package profile

import (
	"bytes"
	"math"
	"strings"
	"testing"
	"time"

	"github.com/google/pprof/profile"
)

// stack is one synthetic sample: frames leaf first, n ticks of 10ms. A frame
// "inner;outer" is one location where inner was inlined into outer.
type stack struct {
	frames []string
	n      int64
}

const tick = 10 * time.Millisecond // 100 Hz, Go's CPU profile rate

// synth builds a Go-style CPU profile: values [samples/count, cpu/nanoseconds].
func synth(stacks []stack) *profile.Profile {
	p := &profile.Profile{
		SampleType: []*profile.ValueType{{Type: "samples", Unit: "count"},
			{Type: "cpu", Unit: "nanoseconds"}},
		PeriodType:    &profile.ValueType{Type: "cpu", Unit: "nanoseconds"},
		Period:        int64(tick),
		DurationNanos: int64(time.Second),
	}
	funcs := map[string]*profile.Function{}
	locs := map[string]*profile.Location{}
	fn := func(name string) *profile.Function {
		if f := funcs[name]; f != nil {
			return f
		}
		f := &profile.Function{ID: uint64(len(p.Function) + 1), Name: name, SystemName: name}
		funcs[name] = f
		p.Function = append(p.Function, f)
		return f
	}
	for _, st := range stacks {
		s := &profile.Sample{Value: []int64{st.n, st.n * int64(tick)}}
		for _, frame := range st.frames {
			loc := locs[frame]
			if loc == nil {
				loc = &profile.Location{ID: uint64(len(p.Location) + 1),
					Address: uint64(0x1000 * (len(p.Location) + 1))}
				for _, name := range strings.Split(frame, ";") {
					loc.Line = append(loc.Line, profile.Line{Function: fn(name), Line: 1})
				}
				locs[frame] = loc
				p.Location = append(p.Location, loc)
			}
			s.Location = append(s.Location, loc)
		}
		p.Sample = append(p.Sample, s)
	}
	return p
}

// serverLike is 100 ticks shaped like nbdring under load: Go code, a ring enter,
// an allocation, GC work and an idle thread's futex.
var serverLike = []stack{
	{[]string{"main.work", "main.main"}, 50},
	{[]string{"internal/runtime/syscall/linux.Syscall6", "syscall.RawSyscall6",
		"syscall.Syscall6", "github.com/pawelgaczynski/giouring.(*Ring).Enter",
		"github.com/nbdring/nbdring/ring.(*Ring).submit",
		"github.com/nbdring/nbdring/engine.(*shard).loop"}, 30},
	{[]string{"runtime.mallocgc", "github.com/nbdring/nbdring/engine.(*shard).loop"}, 10},
	{[]string{"runtime.scanobject", "runtime.gcDrain", "runtime.gcBgMarkWorker"}, 6},
	{[]string{"runtime.futex", "runtime.futexsleep", "runtime.stopm"}, 4},
}

func analyze(t *testing.T, stacks []stack) *Report {
	t.Helper()
	r, err := Analyze(synth(stacks))
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func near(a, b float64) bool { return math.Abs(a-b) < 1e-9 }

func TestAnalyzeTopOrderAndPercent(t *testing.T) {
	r := analyze(t, serverLike)
	if r.Total != 100*int64(tick) || r.Samples != 100 || r.Type != "cpu" {
		t.Fatalf("total %d samples %d type %q, want 1s, 100, cpu", r.Total, r.Samples, r.Type)
	}
	want := []struct {
		name      string
		flat, cum float64
	}{
		{"main.work", 50, 50},
		{"internal/runtime/syscall/linux.Syscall6", 30, 30},
		{"runtime.mallocgc", 10, 10},
		{"runtime.scanobject", 6, 6},
		{"runtime.futex", 4, 4},
		// flat 0: by cum, then name
		{"main.main", 0, 50},
		{"github.com/nbdring/nbdring/engine.(*shard).loop", 0, 40},
	}
	for i, w := range want {
		f := r.Funcs[i]
		if f.Name != w.name || !near(r.Percent(f.Flat), w.flat) || !near(r.Percent(f.Cum), w.cum) {
			t.Errorf("top[%d] = %s flat %.1f%% cum %.1f%%, want %s flat %.1f%% cum %.1f%%",
				i, f.Name, r.Percent(f.Flat), r.Percent(f.Cum), w.name, w.flat, w.cum)
		}
	}
	var out bytes.Buffer
	WriteTop(&out, r, 3)
	for _, line := range []string{
		"     0.50s  50.0%  50.0%      0.50s  50.0%  main.work",
		"     0.30s  30.0%  80.0%      0.30s  30.0%  internal/runtime/syscall/linux.Syscall6",
		"     0.10s  10.0%  90.0%      0.10s  10.0%  runtime.mallocgc",
	} {
		if !strings.Contains(out.String(), line+"\n") {
			t.Errorf("top output lacks %q:\n%s", line, out.String())
		}
	}
}

func TestAnalyzeShares(t *testing.T) {
	r := analyze(t, serverLike)
	for _, c := range []struct {
		class Class
		want  float64
	}{{ClassSyscall, 34}, {ClassGo, 50}, {ClassRuntime, 16}} {
		if got := r.Share(c.class); !near(got, c.want) {
			t.Errorf("%v share %.1f%%, want %.1f%%", c.class, got, c.want)
		}
	}
	if got := r.Percent(r.Shares.GC); !near(got, 6) {
		t.Errorf("GC %.1f%%, want 6%%", got)
	}
	want := []Caller{
		{"syscall.Syscall6", "github.com/pawelgaczynski/giouring.(*Ring).Enter", 30 * int64(tick)},
		{"runtime.futex", "runtime.futexsleep", 4 * int64(tick)},
	}
	if len(r.Callers) != len(want) {
		t.Fatalf("callers %+v, want %+v", r.Callers, want)
	}
	for i := range want {
		if r.Callers[i] != want[i] {
			t.Errorf("caller[%d] %+v, want %+v", i, r.Callers[i], want[i])
		}
	}
	var out bytes.Buffer
	WriteSummary(&out, r)
	if !strings.Contains(out.String(),
		"share: syscall 34.0% | go code 50.0% | runtime 16.0% (GC, any class: 6.0%)") {
		t.Errorf("summary:\n%s", out.String())
	}
}

// A stack that enters the kernel through x/sys/unix from os-level wrappers names its
// real caller; kernel time under runtime.exitsyscall stays a syscall.
func TestClassify(t *testing.T) {
	for _, c := range []struct {
		stack         []string
		class         Class
		entry, caller string
	}{
		{[]string{"runtime.exitsyscall", "syscall.Syscall", "golang.org/x/sys/unix.Syscall",
			"golang.org/x/sys/unix.write", "golang.org/x/sys/unix.Write",
			"github.com/nbdring/nbdring/engine.(*shard).wake"}, ClassSyscall,
			"golang.org/x/sys/unix.Syscall", "github.com/nbdring/nbdring/engine.(*shard).wake"},
		{[]string{"runtime.usleep", "runtime.runqgrab"}, ClassSyscall, "runtime.usleep",
			"runtime.runqgrab"},
		{[]string{"runtime.nanotime1", "runtime.nanotime", "time.Now"}, ClassRuntime, "", ""},
		{[]string{"runtime.memmove", "github.com/nbdring/nbdring/wire.Encode"},
			ClassRuntime, "", ""},
		{[]string{"internal/runtime/atomic.Load", "main.f"}, ClassRuntime, "", ""},
		{[]string{"runtime._System"}, ClassRuntime, "", ""},
		{nil, ClassRuntime, "", ""},
		{[]string{"bytes.IndexByte", "main.f"}, ClassGo, "", ""},
		{[]string{"runtime/pprof.(*profMap).lookup"}, ClassGo, "", ""},
	} {
		class, _, entry, caller := classify(c.stack)
		if class != c.class || entry != c.entry || caller != c.caller {
			t.Errorf("classify(%v) = %v %q %q, want %v %q %q", c.stack, class, entry, caller,
				c.class, c.entry, c.caller)
		}
	}
}

func TestPackageOf(t *testing.T) {
	for name, want := range map[string]string{
		"runtime.(*mheap).alloc":                  "runtime",
		"github.com/a/b.(*T).M":                   "github.com/a/b",
		"github.com/a/b.F.func1":                  "github.com/a/b",
		"internal/runtime/syscall/linux.Syscall6": "internal/runtime/syscall/linux",
		"main.main":                               "main",
		"0x4f00":                                  "0x4f00",
	} {
		if got := PackageOf(name); got != want {
			t.Errorf("PackageOf(%q) = %q, want %q", name, got, want)
		}
	}
}

// Inlined frames: flat goes to the innermost function; recursion counts once in cum.
func TestAnalyzeInlinedAndRecursive(t *testing.T) {
	r := analyze(t, []stack{
		{[]string{"main.inner;main.outer", "main.rec", "main.rec", "main.main"}, 3},
		{[]string{"main.rec", "main.main"}, 1},
	})
	flat := map[string]int64{}
	cum := map[string]int64{}
	for _, f := range r.Funcs {
		flat[f.Name], cum[f.Name] = f.Flat/int64(tick), f.Cum/int64(tick)
	}
	if flat["main.inner"] != 3 || flat["main.outer"] != 0 || cum["main.outer"] != 3 {
		t.Errorf("inlined: flat inner %d outer %d, cum outer %d; want 3 0 3",
			flat["main.inner"], flat["main.outer"], cum["main.outer"])
	}
	if flat["main.rec"] != 1 || cum["main.rec"] != 4 || cum["main.main"] != 4 {
		t.Errorf("recursive: rec flat %d cum %d, main cum %d; want 1 4 4",
			flat["main.rec"], cum["main.rec"], cum["main.main"])
	}
}

// Profiles of different lengths compare by share: base 100 ticks, new 200.
func TestDiffNormalizes(t *testing.T) {
	base := analyze(t, []stack{{[]string{"a"}, 50}, {[]string{"b"}, 50}})
	cur := analyze(t, []stack{{[]string{"a"}, 40}, {[]string{"b"}, 120},
		{[]string{"c", "syscall.Syscall"}, 40}})
	want := []Change{
		{"a", 50, 20, -30},
		{"c", 0, 20, 20},
		{"b", 50, 60, 10},
	}
	got := Diff(base, cur)
	if len(got) != len(want) {
		t.Fatalf("diff %+v, want %+v", got, want)
	}
	for i := range want {
		g, w := got[i], want[i]
		if g.Name != w.Name || !near(g.Base, w.Base) || !near(g.New, w.New) ||
			!near(g.Delta, w.Delta) {
			t.Errorf("diff[%d] = %+v, want %+v", i, g, w)
		}
	}
	var out bytes.Buffer
	WriteDiff(&out, base, cur, 10)
	for _, line := range []string{
		"syscall       0.0%   20.0%   +20.0",
		"go code     100.0%   80.0%   -20.0",
		"  50.0%   20.0%   -30.00  a",
	} {
		if !strings.Contains(out.String(), line+"\n") {
			t.Errorf("diff output lacks %q:\n%s", line, out.String())
		}
	}
}

func TestParseRoundTripAndErrors(t *testing.T) {
	var buf bytes.Buffer
	if err := synth(serverLike).Write(&buf); err != nil {
		t.Fatal(err)
	}
	p, err := Parse(buf.Bytes())
	if err != nil {
		t.Fatal(err)
	}
	r, err := Analyze(p)
	if err != nil {
		t.Fatal(err)
	}
	if r.Funcs[0].Name != "main.work" || !near(r.Share(ClassSyscall), 34) {
		t.Errorf("after a round trip: top %s, syscall %.1f%%", r.Funcs[0].Name,
			r.Share(ClassSyscall))
	}
	if _, err := Parse([]byte("<html>404 page not found</html>")); err == nil ||
		!strings.Contains(err.Error(), "not a pprof profile") {
		t.Errorf("Parse(html) error %v, want \"not a pprof profile\"", err)
	}
	if _, err := Analyze(synth(nil)); err == nil || !strings.Contains(err.Error(), "idle") {
		t.Errorf("Analyze(empty) error %v, want one saying the server was idle", err)
	}
}
