package bench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nbdring/nbdring/wire"
)

// DefaultBatch is the replies nbdbench takes per read unless told. Eight
// keeps the client's CPU per request at half of one reply per read, which
// is what matters where the CPU is the limit; see the measurements at
// worker.
const DefaultBatch = 8

// Config is one workload against one server.
type Config struct {
	URI string
	RW  string // read, write, randread, randwrite, randrw
	Mix int    // randrw: percentage of reads
	BS  int    // block size in bytes
	QD  int    // requests in flight per connection
	// Batch bounds each read of the socket to Batch read replies' worth
	// of bytes (0: DefaultBatch; never more than QD). The replies taken by
	// one read are answered with new requests in one write, so for reads
	// Batch is also the largest burst a connection sends after the first
	// QD; 16-byte write replies still arrive many per read. See worker.
	Batch    int
	Conns    int
	Duration time.Duration // run time (when Ops is 0)
	Ops      int64         // total operations (0: run for Duration)
	// RangeOff and RangeLen select the part of the export used (RangeLen
	// 0: to the end).
	RangeOff, RangeLen uint64
	Verify             bool
	ServerPID          int       // read the server's CPU time from /proc
	Progress           io.Writer // a live line every second, or nil
	// Log gets one-line notes before the load starts, such as a read
	// workload's range being all holes; nil: no notes, and no check.
	Log io.Writer
}

// Latency percentiles in microseconds.
type Latency struct {
	P50  float64 `json:"p50"`
	P90  float64 `json:"p90"`
	P99  float64 `json:"p99"`
	P999 float64 `json:"p999"`
	Max  float64 `json:"max"`
}

// Result is what a run measured.
type Result struct {
	Workload         string  `json:"workload"`
	Ops              uint64  `json:"ops"`
	Bytes            uint64  `json:"bytes"`
	Seconds          float64 `json:"duration_s"`
	IOPS             float64 `json:"iops"`
	BytesPerSec      float64 `json:"bytes_per_sec"`
	Latency          Latency `json:"latency_us"`
	Errors           uint64  `json:"errors"`
	VerifyErrors     uint64  `json:"verify_errors"`
	FirstError       string  `json:"first_error,omitempty"`
	ServerCPUSeconds float64 `json:"server_cpu_seconds,omitempty"`
	ServerCPUUsPerOp float64 `json:"server_cpu_us_per_op,omitempty"`
	Machine          string  `json:"machine,omitempty"`
}

// Workload names the configuration as rw:bs:qd:conns.
func (c *Config) Workload() string {
	return fmt.Sprintf("%s:%s:%d:%d", c.RW, FormatSize(c.BS), c.QD, c.Conns)
}

func (c *Config) check() error {
	switch c.RW {
	case "read", "write", "randread", "randwrite", "randrw":
	default:
		return fmt.Errorf("-rw %q: use read, write, randread, randwrite or randrw", c.RW)
	}
	switch {
	case c.BS < sectorSize || c.BS%sectorSize != 0 || c.BS > wire.PayloadMax:
		return fmt.Errorf("-bs %d: use a multiple of 512 up to 32 MiB", c.BS)
	case c.QD < 1 || c.QD > 1024:
		return fmt.Errorf("-qd %d: use 1 to 1024", c.QD)
	case c.Batch < 0 || c.Batch > 1024:
		return fmt.Errorf("-batch %d: use 1 to 1024 (more than -qd acts as -qd)", c.Batch)
	case c.Conns < 1 || c.Conns > 256:
		return fmt.Errorf("-conns %d: use 1 to 256", c.Conns)
	case c.Mix < 0 || c.Mix > 100:
		return fmt.Errorf("-mix %d: a percentage of reads, 0 to 100", c.Mix)
	case c.Ops <= 0 && c.Duration <= 0:
		return errors.New("give -duration or -ops")
	}
	return nil
}

func (c *Config) writes() bool { return c.RW != "read" && c.RW != "randread" }

func (c *Config) reads() bool { return c.RW != "write" && c.RW != "randwrite" }

// Run drives the server at cfg.URI and reports what it measured. Errors
// are for runs that could not happen (no server, bad flags, no MULTI_CONN);
// request errors and verify failures are counted in the Result.
func Run(ctx context.Context, cfg Config) (Result, error) {
	if err := cfg.check(); err != nil {
		return Result{}, err
	}
	tgt, err := ParseURI(cfg.URI)
	if err != nil {
		return Result{}, err
	}
	ws := make([]*worker, 0, cfg.Conns)
	// The connections stay open until the server's CPU has been read: a
	// server that forks per connection (nbd-server) may not count a child's
	// time once the child has exited.
	defer func() {
		for _, w := range ws {
			w.close()
		}
	}()
	for i := range cfg.Conns {
		w, err := dialWorker(ctx, tgt, &cfg, i)
		if err != nil {
			return Result{}, err
		}
		ws = append(ws, w)
	}
	ex := ws[0].ex
	if cfg.Conns > 1 && cfg.writes() && ex.Flags&wire.TxCanMultiConn == 0 {
		return Result{}, errors.New("the server does not advertise MULTI_CONN, so writes " +
			"on several connections may not be consistent: use -conns 1")
	}
	if err := layout(ws, &cfg, ex.Size); err != nil {
		return Result{}, err
	}
	if cfg.Log != nil && cfg.reads() {
		lo, n, _ := span(&cfg, ex.Size)
		if holes, known := allHoles(ctx, tgt, lo, n); known && holes {
			warnHoles(cfg.Log, &cfg, lo, n)
		}
	}
	var stop atomic.Bool
	cpu0 := cpuTicks(cfg.ServerPID)
	start := time.Now()
	if cfg.Ops <= 0 {
		t := time.AfterFunc(cfg.Duration, func() { stop.Store(true) })
		defer t.Stop()
	}
	go func() { <-ctx.Done(); stop.Store(true) }()
	done := make(chan struct{})
	if cfg.Progress != nil {
		go progress(cfg.Progress, ws, &cfg, start, done)
	}
	var wg sync.WaitGroup
	for _, w := range ws {
		w.stop = &stop
		wg.Add(1)
		go func() { defer wg.Done(); w.run() }()
	}
	wg.Wait()
	close(done)
	elapsed := time.Since(start).Seconds()
	return summarize(ws, &cfg, elapsed, cpu0), nil
}

// layout gives each connection its part of the range: the whole range for
// random workloads without verify, else disjoint slices (sequential streams
// and verify's bookkeeping must not overlap).
func layout(ws []*worker, cfg *Config, size uint64) error {
	lo, n, err := span(cfg, size)
	if err != nil {
		return err
	}
	bs := uint64(cfg.BS)
	split := cfg.Verify || !strings.HasPrefix(cfg.RW, "rand")
	part := n
	if split {
		part = n / uint64(len(ws))
	}
	part -= part % bs
	if part < bs*uint64(cfg.QD) && cfg.Verify {
		return fmt.Errorf("range of %d bytes per connection is too small for %d blocks "+
			"of %d in flight; widen -range or lower -qd", part, cfg.QD, bs)
	}
	if part < bs {
		return fmt.Errorf("range of %d bytes per connection holds no %d-byte block", part, bs)
	}
	for i, w := range ws {
		w.lo = lo
		if split {
			w.lo = lo + uint64(i)*part
		}
		w.blocks = part / bs
		if cfg.Verify {
			w.gens = make([]uint32, w.blocks)
		}
		if cfg.Ops > 0 {
			w.limit = cfg.Ops / int64(len(ws))
			if i == 0 {
				w.limit += cfg.Ops % int64(len(ws))
			}
		}
	}
	return nil
}

// span is the part of an export of size bytes that cfg uses.
func span(cfg *Config, size uint64) (lo, n uint64, err error) {
	lo, n = cfg.RangeOff, cfg.RangeLen
	if n == 0 && lo < size {
		n = size - lo
	}
	if lo > size || n > size-lo {
		return 0, 0, fmt.Errorf("-range %d+%d is beyond the export's %d bytes", lo, n, size)
	}
	return lo, n, nil
}

func summarize(ws []*worker, cfg *Config, secs float64, cpu0 int64) Result {
	r := Result{Workload: cfg.Workload(), Seconds: secs}
	var h Histogram
	for _, w := range ws {
		h.Merge(&w.hist)
		r.Ops += w.done
		r.Bytes += w.done * uint64(cfg.BS)
		r.Errors += w.errs
		r.VerifyErrors += w.verifyErrs
		if r.FirstError == "" {
			r.FirstError = w.firstErr
		}
	}
	if secs > 0 {
		r.IOPS, r.BytesPerSec = float64(r.Ops)/secs, float64(r.Bytes)/secs
	}
	us := func(d time.Duration) float64 { return float64(d) / 1e3 }
	r.Latency = Latency{P50: us(h.Percentile(0.5)), P90: us(h.Percentile(0.9)),
		P99: us(h.Percentile(0.99)), P999: us(h.Percentile(0.999)), Max: us(h.Max())}
	if cpu0 >= 0 {
		if cpu1 := cpuTicks(cfg.ServerPID); cpu1 >= cpu0 {
			r.ServerCPUSeconds = float64(cpu1-cpu0) / clockTicks
			if r.Ops > 0 {
				r.ServerCPUUsPerOp = r.ServerCPUSeconds * 1e6 / float64(r.Ops)
			}
		}
	}
	return r
}

// clockTicks is USER_HZ, the unit of /proc/PID/stat times: 100 on every
// Linux architecture (it is part of the kernel's user ABI).
const clockTicks = 100

// cpuTicks returns the CPU time, in clock ticks, of process pid and all
// its descendants: its own user and system time, that of children it has
// reaped (cutime, cstime), and, recursively, that of children still alive
// (servers such as nbd-server fork one per connection). -1 if pid is gone.
func cpuTicks(pid int) int64 {
	if pid <= 0 {
		return -1
	}
	// utime, stime, cutime, cstime are fields 14 to 17 of /proc/PID/stat.
	f := procStat(strconv.Itoa(pid))
	if len(f) < 15 {
		return -1
	}
	var sum int64
	for _, v := range f[11:15] {
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil {
			return -1
		}
		sum += n
	}
	for _, child := range childPIDs(pid) {
		if t := cpuTicks(child); t > 0 {
			sum += t
		}
	}
	return sum
}

// procStat returns the fields of /proc/PID/stat after the command name
// (which is in parentheses and may hold spaces), so field N of proc(5) is
// at index N-3; nil if the process is gone.
func procStat(pid string) []string {
	b, err := os.ReadFile("/proc/" + pid + "/stat")
	if err != nil {
		return nil
	}
	s := string(b)
	return strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
}

// childPIDs lists the live children of pid, from every process's parent
// field (field 4; the kernels here lack /proc/PID/task/TID/children).
func childPIDs(pid int) []int {
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return nil
	}
	parent := strconv.Itoa(pid)
	var out []int
	for _, e := range ents {
		n, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if f := procStat(e.Name()); len(f) > 1 && f[1] == parent {
			out = append(out, n)
		}
	}
	return out
}

// progressEvery is the progress line's period.
const progressEvery = time.Second

func progress(w io.Writer, ws []*worker, cfg *Config, start time.Time, done <-chan struct{}) {
	t := time.NewTicker(progressEvery)
	defer t.Stop()
	var last uint64
	lastAt := start
	for {
		select {
		case <-done:
			fmt.Fprint(w, "\r\033[K")
			return
		case now := <-t.C:
			var n uint64
			for _, wk := range ws {
				n += wk.count.Load()
			}
			io.WriteString(w, progressLine(cfg, now.Sub(start), n, n-last, now.Sub(lastAt)))
			last, lastAt = n, now
		}
	}
}

// progressLine is the live line: elapsed and total time (or operations,
// for a run of -ops), and the rate over the last interval of dt, in which
// delta operations completed, of n so far.
func progressLine(cfg *Config, elapsed time.Duration, n, delta uint64,
	dt time.Duration) string {
	var iops float64
	if dt > 0 {
		iops = float64(delta) / dt.Seconds()
	}
	mbps := iops * float64(cfg.BS) / 1e6
	head := fmt.Sprintf("%6.1fs / %.1fs", elapsed.Seconds(), cfg.Duration.Seconds())
	ops := fmt.Sprintf("%d ops", n)
	if cfg.Ops > 0 {
		head = fmt.Sprintf("%6.1fs", elapsed.Seconds())
		ops = fmt.Sprintf("%d / %d ops", n, cfg.Ops)
	}
	return fmt.Sprintf("\r\033[K%s  %10.0f IOPS  %9.1f MB/s  (last %.1fs)  %s", head, iops,
		mbps, dt.Seconds(), ops)
}

// FormatSize writes 4096 as 4k and 1048576 as 1M.
func FormatSize(n int) string {
	switch {
	case n >= 1<<20 && n%(1<<20) == 0:
		return strconv.Itoa(n>>20) + "M"
	case n >= 1<<10 && n%(1<<10) == 0:
		return strconv.Itoa(n>>10) + "k"
	}
	return strconv.Itoa(n)
}

// ParseSize reads 512, 4k, 64K, 1M, 1G.
func ParseSize(s string) (int, error) {
	mult := 1
	switch {
	case strings.HasSuffix(s, "k"), strings.HasSuffix(s, "K"):
		mult = 1 << 10
	case strings.HasSuffix(s, "m"), strings.HasSuffix(s, "M"):
		mult = 1 << 20
	case strings.HasSuffix(s, "g"), strings.HasSuffix(s, "G"):
		mult = 1 << 30
	}
	if mult > 1 {
		s = s[:len(s)-1]
	}
	n, err := strconv.Atoi(s)
	if err != nil || n < 0 {
		return 0, fmt.Errorf("size %q: use a number with an optional k, M or G", s)
	}
	return n * mult, nil
}
