package profile

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// replySlack is how much longer than the profile itself the HTTP request may take:
// the server stops profiling after the requested seconds, then has to encode and
// send the profile, which takes well under a second for a few megabytes.
const replySlack = 30 * time.Second

// ErrNoCounters says the HTTP server has no /counters page (it is not nbdring, or an
// nbdring older than the page). Capture goes on without counters.
var ErrNoCounters = errors.New("no /counters page")

// BaseURL turns what a user gives to -url ("localhost:6061", "http://host:6061/")
// into "http://host:port" with no trailing slash.
func BaseURL(s string) (string, error) {
	if !strings.Contains(s, "://") {
		s = "http://" + s
	}
	u, err := url.Parse(s)
	if err != nil || u.Host == "" || (u.Scheme != "http" && u.Scheme != "https") {
		return "", fmt.Errorf("-url %q is not an address like http://localhost:6061 "+
			"(the HOST:PORT given to the server's -pprof flag)", s)
	}
	return u.Scheme + "://" + u.Host, nil
}

// get fetches base+path and turns the failures a user can meet into what to do.
func get(ctx context.Context, base, path string, timeout time.Duration) ([]byte, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, base+path, nil)
	if err != nil {
		return nil, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		if errors.Is(ctx.Err(), context.Canceled) {
			return nil, fmt.Errorf("GET %s%s: interrupted", base, path)
		}
		if errors.Is(ctx.Err(), context.DeadlineExceeded) {
			return nil, fmt.Errorf("GET %s%s: no reply within %v: is the server stuck, or "+
				"is something else listening there?", base, path, timeout)
		}
		return nil, fmt.Errorf("GET %s%s: %w: is the server running with -pprof %s? "+
			"start it so, or point -url at its -pprof address", base, path, err,
			strings.TrimPrefix(strings.TrimPrefix(base, "http://"), "https://"))
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, fmt.Errorf("GET %s%s: reading the reply: %w", base, path, err)
	}
	if resp.StatusCode == http.StatusNotFound {
		return nil, fmt.Errorf("GET %s%s: %w", base, path, errNotFound)
	}
	if resp.StatusCode != http.StatusOK {
		msg := strings.TrimSpace(string(body[:min(len(body), 300)]))
		if strings.Contains(msg, "already in use") {
			return nil, fmt.Errorf("GET %s%s: %s: another CPU profile of this server is "+
				"being taken; wait for it to finish and try again", base, path, msg)
		}
		return nil, fmt.Errorf("GET %s%s: %s: %s", base, path, resp.Status, msg)
	}
	return body, nil
}

var errNotFound = errors.New("404 not found")

// FetchProfile takes a CPU profile of the given length from a net/http/pprof server
// and returns its bytes (a gzipped profile.proto) after checking that they parse.
func FetchProfile(ctx context.Context, base string, seconds int) ([]byte, error) {
	if seconds < 1 {
		return nil, fmt.Errorf("-seconds %d: a CPU profile needs at least 1 second", seconds)
	}
	path := fmt.Sprintf("/debug/pprof/profile?seconds=%d", seconds)
	data, err := get(ctx, base, path, time.Duration(seconds)*time.Second+replySlack)
	if errors.Is(err, errNotFound) {
		return nil, fmt.Errorf("%w: that HTTP server does not serve net/http/pprof; "+
			"nbdring serves it only when started with -pprof HOST:PORT", err)
	}
	if err != nil {
		return nil, err
	}
	if _, err := Parse(data); err != nil {
		return nil, fmt.Errorf("GET %s%s: reply is %w", base, path, err)
	}
	return data, nil
}

// Counters is one reading of nbdring's /counters page.
type Counters struct {
	Shards []ShardCounters
	Names  []string // counter names in the order the page first shows them
}

// ShardCounters is one shard's integer counters. Lines whose value is not an
// integer (the page's per-enter ratios) are left out: a ratio over the capture
// window is computed from the deltas instead.
type ShardCounters struct {
	Title  string // "shard 0 (cpu 2)"
	Values map[string]int64
}

// ParseCounters reads the /counters page: a "shard N (cpu C)" line, then indented
// "name value" lines, per shard.
func ParseCounters(r io.Reader) (*Counters, error) {
	c := &Counters{}
	known := map[string]bool{}
	sc := bufio.NewScanner(r)
	for n := 1; sc.Scan(); n++ {
		line := sc.Text()
		if strings.TrimSpace(line) == "" {
			continue
		}
		if !strings.HasPrefix(line, " ") {
			c.Shards = append(c.Shards, ShardCounters{Title: line, Values: map[string]int64{}})
			continue
		}
		f := strings.Fields(line)
		if len(f) != 2 || len(c.Shards) == 0 {
			return nil, fmt.Errorf("/counters line %d %q: want \"name value\" under a "+
				"\"shard N\" line", n, line)
		}
		v, err := strconv.ParseInt(f[1], 10, 64)
		if err != nil {
			continue // a ratio
		}
		c.Shards[len(c.Shards)-1].Values[f[0]] = v
		if !known[f[0]] {
			known[f[0]] = true
			c.Names = append(c.Names, f[0])
		}
	}
	return c, sc.Err()
}

// FetchCounters reads base/counters. It returns ErrNoCounters on a 404.
func FetchCounters(ctx context.Context, base string) (*Counters, error) {
	data, err := get(ctx, base, "/counters", 10*time.Second)
	if errors.Is(err, errNotFound) {
		return nil, ErrNoCounters
	}
	if err != nil {
		return nil, err
	}
	return ParseCounters(strings.NewReader(string(data)))
}

// Total sums a counter over all shards.
func (c *Counters) Total(name string) int64 {
	var t int64
	for _, s := range c.Shards {
		t += s.Values[name]
	}
	return t
}

// WriteCounterDelta writes every counter summed over shards before and after, the
// change and the rate over elapsed; then per shard the requests, ring enters and
// completions per enter over the window.
func WriteCounterDelta(w io.Writer, before, after *Counters, elapsed time.Duration) {
	fmt.Fprintf(w, "counters over %s, summed over %d shards:\n",
		elapsed.Round(time.Millisecond), len(after.Shards))
	fmt.Fprintf(w, "  %-22s %14s %14s %14s %12s\n", "counter", "before", "after", "delta",
		"per second")
	for _, name := range after.Names {
		b, a := before.Total(name), after.Total(name)
		fmt.Fprintf(w, "  %-22s %14d %14d %14d %12.0f\n", name, b, a, a-b,
			float64(a-b)/elapsed.Seconds())
	}
	for i, s := range after.Shards {
		var d ShardCounters
		if i < len(before.Shards) {
			d = before.Shards[i]
		}
		var reqs int64
		for name, v := range s.Values {
			if strings.HasPrefix(name, "requests_") {
				reqs += v - d.Values[name]
			}
		}
		enters := s.Values["ring_enters"] - d.Values["ring_enters"]
		comps := s.Values["ring_completions"] - d.Values["ring_completions"]
		fmt.Fprintf(w, "  %s: requests +%d, ring_enters +%d", s.Title, reqs, enters)
		if enters > 0 {
			fmt.Fprintf(w, ", completions per enter %.2f", float64(comps)/float64(enters))
		}
		fmt.Fprintln(w)
	}
}

// Capture reads the counters, takes a CPU profile of the given length, reads the
// counters again, writes the profile to out and the counter deltas to w, and returns
// the analysis. A server without /counters gets a note, not an error.
func Capture(ctx context.Context, base string, seconds int, out string,
	w io.Writer) (*Report, error) {
	before, err := FetchCounters(ctx, base)
	if err != nil && !errors.Is(err, ErrNoCounters) {
		return nil, err
	}
	var stBefore Stages
	if before != nil {
		if stBefore, err = FetchStages(ctx, base); err != nil {
			return nil, err
		}
	}
	start := time.Now()
	fmt.Fprintf(w, "capturing a %ds CPU profile from %s\n", seconds, base)
	data, err := FetchProfile(ctx, base, seconds)
	if err != nil {
		return nil, err
	}
	elapsed := time.Since(start)
	if before != nil {
		after, err := FetchCounters(ctx, base)
		if err != nil {
			return nil, err
		}
		WriteCounterDelta(w, before, after, elapsed)
		stAfter, err := FetchStages(ctx, base)
		if err != nil {
			return nil, err
		}
		WriteStageDelta(w, stBefore, stAfter)
	} else {
		fmt.Fprintf(w, "(%s has no /counters page: not nbdring, so no counters)\n", base)
	}
	if dir := filepath.Dir(out); dir != "." {
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return nil, fmt.Errorf("save profile: %w", err)
		}
	}
	if err := os.WriteFile(out, data, 0o644); err != nil {
		return nil, fmt.Errorf("save profile: %w", err)
	}
	p, err := Parse(data)
	if err != nil {
		return nil, err
	}
	fmt.Fprintf(w, "saved %s (%d bytes); read it with: nbdprof top %s\n", out, len(data), out)
	return Analyze(p)
}
