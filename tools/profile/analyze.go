// Package profile captures CPU profiles from a running nbdring (its -pprof page) and
// analyses them with github.com/google/pprof/profile: top functions by flat and
// cumulative time, the share of time in system calls versus Go code versus the Go
// runtime, and the per-function change between two profiles. It also drives a whole
// profiling session (server, load generator, capture) for `make profile`.
//
// Nothing in the server imports this package; it talks to the server only over HTTP
// and by starting and stopping its process.
package profile

import (
	"bytes"
	"fmt"
	"os"
	"sort"
	"time"

	"github.com/google/pprof/profile"
)

// Func is one function's time in a profile, in the profile's value unit.
type Func struct {
	Name string
	Flat int64 // samples whose leaf is this function
	Cum  int64 // samples with this function anywhere on the stack (counted once)
}

// Caller is time spent in system calls made from one place.
type Caller struct {
	Entry  string // outermost syscall entry function, e.g. syscall.Syscall6
	Caller string // first frame above it outside the syscall wrappers; "" if none
	Value  int64
}

// Shares splits a profile's total by Class. GC is part of the total (any class)
// whose stack holds a garbage-collector function.
type Shares struct {
	Syscall, Runtime, Go, GC int64
}

// Report is the analysis of one profile.
type Report struct {
	Type, Unit string        // the sample value used, e.g. "cpu", "nanoseconds"
	Total      int64         // sum of that value over all samples
	Samples    int64         // number of samples taken
	Duration   time.Duration // wall time the profile covers (0 if unknown)
	Funcs      []Func        // by Flat, largest first; ties by Cum, then by name
	Shares     Shares
	Callers    []Caller // system call time by caller, largest first
}

// Load reads a profile file (gzipped or not, as /debug/pprof/profile serves it).
func Load(path string) (*profile.Profile, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read profile: %w", err)
	}
	p, err := Parse(data)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return p, nil
}

// Parse decodes a profile and says what to do when the bytes are not one.
func Parse(data []byte) (*profile.Profile, error) {
	p, err := profile.ParseData(data)
	if err != nil {
		head := data[:min(len(data), 40)]
		return nil, fmt.Errorf("not a pprof profile (%v; it starts with %q): "+
			"give a file written by `nbdprof capture` or /debug/pprof/profile", err,
			bytes.TrimSpace(head))
	}
	return p, nil
}

// valueIndex picks the sample value to analyse: CPU time if the profile has it (a Go
// CPU profile has [samples/count, cpu/nanoseconds]), else the last value, which is
// pprof's own default.
func valueIndex(p *profile.Profile) int {
	for i, st := range p.SampleType {
		if st.Type == "cpu" {
			return i
		}
	}
	return len(p.SampleType) - 1
}

// stackOf returns the function names of one sample, leaf first. A location with
// inlined calls holds several lines, innermost first, so they are taken in order.
func stackOf(s *profile.Sample, buf []string) []string {
	buf = buf[:0]
	for _, loc := range s.Location {
		if len(loc.Line) == 0 {
			buf = append(buf, fmt.Sprintf("0x%x", loc.Address)) // not symbolized
			continue
		}
		for _, ln := range loc.Line {
			name := "?"
			if ln.Function != nil {
				name = ln.Function.Name
			}
			buf = append(buf, name)
		}
	}
	return buf
}

// Analyze computes the top functions, the syscall/runtime/Go shares and the system
// call callers of p.
func Analyze(p *profile.Profile) (*Report, error) {
	if len(p.SampleType) == 0 {
		return nil, fmt.Errorf("the profile has no sample types; is it a CPU profile?")
	}
	vi := valueIndex(p)
	r := &Report{Type: p.SampleType[vi].Type, Unit: p.SampleType[vi].Unit,
		Duration: time.Duration(p.DurationNanos)}
	funcs := map[string]*Func{}
	callers := map[[2]string]int64{}
	seen := map[string]bool{}
	var stack []string
	for _, s := range p.Sample {
		v := s.Value[vi]
		r.Total += v
		r.Samples += sampleCount(p, s)
		stack = stackOf(s, stack)
		clear(seen)
		for i, name := range stack {
			f := funcs[name]
			if f == nil {
				f = &Func{Name: name}
				funcs[name] = f
			}
			if i == 0 {
				f.Flat += v
			}
			if !seen[name] {
				seen[name] = true
				f.Cum += v
			}
		}
		c, gc, entry, caller := classify(stack)
		r.Shares.add(c, v)
		if gc {
			r.Shares.GC += v
		}
		if c == ClassSyscall {
			callers[[2]string{entry, caller}] += v
		}
	}
	if r.Total == 0 {
		return nil, fmt.Errorf("the profile has no samples: the server was idle while it " +
			"was taken; start the load first, or capture for longer")
	}
	for _, f := range funcs {
		r.Funcs = append(r.Funcs, *f)
	}
	sort.Slice(r.Funcs, func(i, j int) bool {
		a, b := r.Funcs[i], r.Funcs[j]
		if a.Flat != b.Flat {
			return a.Flat > b.Flat
		}
		if a.Cum != b.Cum {
			return a.Cum > b.Cum
		}
		return a.Name < b.Name
	})
	for k, v := range callers {
		r.Callers = append(r.Callers, Caller{Entry: k[0], Caller: k[1], Value: v})
	}
	sort.Slice(r.Callers, func(i, j int) bool {
		a, b := r.Callers[i], r.Callers[j]
		if a.Value != b.Value {
			return a.Value > b.Value
		}
		return a.Entry+a.Caller < b.Entry+b.Caller
	})
	return r, nil
}

// sampleCount is how many profiler ticks a sample stands for: its "samples" value
// when the profile has one (Go CPU profiles do), else 1.
func sampleCount(p *profile.Profile, s *profile.Sample) int64 {
	for i, st := range p.SampleType {
		if st.Type == "samples" {
			return s.Value[i]
		}
	}
	return 1
}

func (s *Shares) add(c Class, v int64) {
	switch c {
	case ClassSyscall:
		s.Syscall += v
	case ClassRuntime:
		s.Runtime += v
	default:
		s.Go += v
	}
}

// Percent returns v as a percentage of the report's total.
func (r *Report) Percent(v int64) float64 {
	if r.Total == 0 {
		return 0
	}
	return 100 * float64(v) / float64(r.Total)
}

// Share returns the percentage of the total spent in class c.
func (r *Report) Share(c Class) float64 {
	switch c {
	case ClassSyscall:
		return r.Percent(r.Shares.Syscall)
	case ClassRuntime:
		return r.Percent(r.Shares.Runtime)
	}
	return r.Percent(r.Shares.Go)
}

// Flat returns the flat percentage of each function, by name.
func (r *Report) Flat() map[string]float64 {
	m := make(map[string]float64, len(r.Funcs))
	for _, f := range r.Funcs {
		if f.Flat != 0 {
			m[f.Name] = r.Percent(f.Flat)
		}
	}
	return m
}
