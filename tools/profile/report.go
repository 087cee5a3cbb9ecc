package profile

import (
	"fmt"
	"io"
	"math"
	"sort"
	"time"
)

// callersShown is how many system call sites the summary lists: enough to name the
// ring's submit-and-wait, the eventfd wake-up and the scheduler's futexes.
const callersShown = 6

// FormatValue renders v in unit: seconds for nanoseconds, a plain number otherwise.
func FormatValue(unit string, v int64) string {
	if unit == "nanoseconds" {
		return fmt.Sprintf("%.2fs", float64(v)/1e9)
	}
	return fmt.Sprintf("%d", v)
}

// WriteSummary writes what the profile covers, the share line and the system calls
// by caller.
func WriteSummary(w io.Writer, r *Report) {
	fmt.Fprintf(w, "%s %s in %d samples", r.Type, FormatValue(r.Unit, r.Total), r.Samples)
	if r.Duration > 0 && r.Unit == "nanoseconds" {
		fmt.Fprintf(w, " over %s wall (%.2f CPUs busy)", r.Duration.Round(time.Millisecond),
			float64(r.Total)/float64(r.Duration))
	}
	fmt.Fprintln(w)
	fmt.Fprintf(w, "share: syscall %.1f%% | go code %.1f%% | runtime %.1f%% "+
		"(GC, any class: %.1f%%)\n", r.Share(ClassSyscall), r.Share(ClassGo),
		r.Share(ClassRuntime), r.Percent(r.Shares.GC))
	if len(r.Callers) == 0 {
		return
	}
	fmt.Fprintln(w, "system calls by caller:")
	for i, c := range r.Callers {
		if i == callersShown {
			fmt.Fprintf(w, "  (%d more)\n", len(r.Callers)-i)
			break
		}
		caller := c.Caller
		if caller == "" {
			caller = "?"
		}
		fmt.Fprintf(w, "  %5.1f%%  %s <- %s\n", r.Percent(c.Value), c.Entry, caller)
	}
}

// WriteTop writes the n functions with the most flat time, with pprof's columns:
// flat, flat%, sum% (running total of flat%), cum, cum%. Then the n functions with
// the most cumulative time, which shows where the time is spent from.
func WriteTop(w io.Writer, r *Report, n int) {
	fmt.Fprintf(w, "top %d by flat (time in the function itself):\n", n)
	fmt.Fprintf(w, "%10s %6s %6s %10s %6s  %s\n", "flat", "flat%", "sum%", "cum", "cum%",
		"function")
	var sum float64
	for i, f := range r.Funcs {
		if i == n {
			break
		}
		sum += r.Percent(f.Flat)
		fmt.Fprintf(w, "%10s %5.1f%% %5.1f%% %10s %5.1f%%  %s\n", FormatValue(r.Unit, f.Flat),
			r.Percent(f.Flat), sum, FormatValue(r.Unit, f.Cum), r.Percent(f.Cum), f.Name)
	}
	byCum := append([]Func(nil), r.Funcs...)
	sort.SliceStable(byCum, func(i, j int) bool { return byCum[i].Cum > byCum[j].Cum })
	fmt.Fprintf(w, "top %d by cum (time in the function and what it calls):\n", n)
	fmt.Fprintf(w, "%10s %6s %10s %6s  %s\n", "cum", "cum%", "flat", "flat%", "function")
	for i, f := range byCum {
		if i == n {
			break
		}
		fmt.Fprintf(w, "%10s %5.1f%% %10s %5.1f%%  %s\n", FormatValue(r.Unit, f.Cum),
			r.Percent(f.Cum), FormatValue(r.Unit, f.Flat), r.Percent(f.Flat), f.Name)
	}
}

// Change is one function's flat share (percent of its profile's total) in a base and
// a new profile. Shares, not times, so profiles of different lengths compare.
type Change struct {
	Name      string
	Base, New float64 // percent
	Delta     float64 // New - Base, in percentage points
}

// Diff returns the flat-share change of every function in either profile, largest
// change (either sign) first; ties by name.
func Diff(base, cur *Report) []Change {
	b, c := base.Flat(), cur.Flat()
	var out []Change
	for name, bv := range b {
		out = append(out, Change{Name: name, Base: bv, New: c[name], Delta: c[name] - bv})
	}
	for name, cv := range c {
		if _, ok := b[name]; !ok {
			out = append(out, Change{Name: name, New: cv, Delta: cv})
		}
	}
	sort.Slice(out, func(i, j int) bool {
		di, dj := math.Abs(out[i].Delta), math.Abs(out[j].Delta)
		if di != dj {
			return di > dj
		}
		return out[i].Name < out[j].Name
	})
	return out
}

// WriteDiff writes the class shares of both profiles and the n largest per-function
// changes.
func WriteDiff(w io.Writer, base, cur *Report, n int) {
	fmt.Fprintf(w, "base: %s %s in %d samples; new: %s in %d samples "+
		"(compared as shares of each total)\n", base.Type, FormatValue(base.Unit, base.Total),
		base.Samples, FormatValue(cur.Unit, cur.Total), cur.Samples)
	fmt.Fprintf(w, "%-10s %7s %7s %8s\n", "share", "base", "new", "change")
	for _, c := range []Class{ClassSyscall, ClassGo, ClassRuntime} {
		bs, cs := base.Share(c), cur.Share(c)
		fmt.Fprintf(w, "%-10s %6.1f%% %6.1f%% %+7.1f\n", c, bs, cs, cs-bs)
	}
	bg, cg := base.Percent(base.Shares.GC), cur.Percent(cur.Shares.GC)
	fmt.Fprintf(w, "%-10s %6.1f%% %6.1f%% %+7.1f\n", "(GC)", bg, cg, cg-bg)
	fmt.Fprintf(w, "flat share by function, largest change first (top %d):\n", n)
	fmt.Fprintf(w, "%7s %7s %8s  %s\n", "base", "new", "change", "function")
	for i, c := range Diff(base, cur) {
		if i == n {
			break
		}
		fmt.Fprintf(w, "%6.1f%% %6.1f%% %+8.2f  %s\n", c.Base, c.New, c.Delta, c.Name)
	}
}
