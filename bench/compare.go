package bench

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/nbdring/nbdring/wire"
	"golang.org/x/sys/unix"
)

// CompareConfig is a side-by-side run: the same workloads against each
// server in turn (A B C A B C ...), on the same backing file or device.
type CompareConfig struct {
	File      string
	Servers   []string // nbdring, qemu-nbd, nbdkit, nbd-server, floor
	Workloads []Config // URI is filled in per server
	Rounds    int
	Client    string // "nbdbench" or "fio"
	NbdRing   string // path of the nbdring binary
	// NbdBench is the nbdbench binary that serves the floor (its floor
	// command): the bare pread/write loop the other servers are
	// measured against (see ServeFloor).
	NbdBench string
	// DropCaches empties the page cache before each server starts, so a
	// server that reads through it does not inherit another's warm cache.
	DropCaches bool
	// TLSCerts, when set, is a certificate directory in qemu's and
	// nbdkit's layout (see checkTLSDir): every server requires TLS with
	// it, and the client connects with nbds+unix:// and its client files.
	TLSCerts string
	Log      io.Writer // notes: skipped servers, progress
	// ServerCPUs and ClientCPUs pin the servers and the client (taskset's
	// CPU lists, e.g. "0" and "1"), so every server runs on the same CPUs
	// and none shares one with the client; "" leaves them to the scheduler.
	ServerCPUs, ClientCPUs string
	// Cores, when set, is how many CPUs ServerCPUs names: nbdring runs
	// with that many shards, and each row records it (CompareCores).
	Cores int
	// OnStart, when set, is called with each server's name and pid once
	// it serves, before any load (tests look at its pinning).
	OnStart func(name string, pid int)
}

// Row is one server's median result for one workload. Each row carries
// the whole setup, so rows from several runs can be pooled and filtered.
type Row struct {
	Server      string `json:"server"`
	Workload    string `json:"workload"` // rw:bs:qd:conns
	RW          string `json:"rw"`
	BlockSize   int    `json:"block_size"` // bytes
	QueueDepth  int    `json:"queue_depth"`
	Connections int    `json:"connections"`
	BackingPath string `json:"backing_path"` // absolute
	// BackingKind is "file", "block device" or "tmpfs file" (a file in
	// the page cache: no disk under it).
	BackingKind      string    `json:"backing_kind"`
	Client           string    `json:"client"`          // nbdbench or fio
	ServerCPUs       string    `json:"server_cpus"`     // taskset list, "" unpinned
	Cores            int       `json:"cores,omitempty"` // compare -cores: CPUs in ServerCPUs
	ClientCPUs       string    `json:"client_cpus"`
	TLS              bool      `json:"tls"`       // every connection over TLS
	Timestamp        string    `json:"timestamp"` // RFC 3339, UTC: when the compare started
	Rounds           int       `json:"rounds"`
	DurationSeconds  float64   `json:"duration_s"` // of each round
	IOPS             float64   `json:"iops"`
	BytesPerSec      float64   `json:"bytes_per_sec"`
	ServerCPUUsPerOp float64   `json:"server_cpu_us_per_op"`
	LatencyP99Us     float64   `json:"latency_p99_us,omitempty"`
	Errors           uint64    `json:"errors"`
	RoundsIOPS       []float64 `json:"rounds_iops"`
}

// ParseWorkloads reads "rw:bs:qd:conns,..." (e.g. randread:4k:32:1).
func ParseWorkloads(s string, d time.Duration) ([]Config, error) {
	var out []Config
	for _, w := range strings.Split(s, ",") {
		f := strings.Split(w, ":")
		if len(f) != 4 {
			return nil, fmt.Errorf("workload %q: use rw:bs:qd:conns, e.g. randread:4k:32:1", w)
		}
		bs, err := ParseSize(f[1])
		qd, err2 := strconv.Atoi(f[2])
		conns, err3 := strconv.Atoi(f[3])
		if err != nil || err2 != nil || err3 != nil {
			return nil, fmt.Errorf("workload %q: use rw:bs:qd:conns, e.g. randread:4k:32:1", w)
		}
		c := Config{RW: f[0], Mix: 70, BS: bs, QD: qd, Conns: conns, Duration: d}
		if err := c.check(); err != nil {
			return nil, fmt.Errorf("workload %q: %w", w, err)
		}
		out = append(out, c)
	}
	return out, nil
}

// Compare runs every workload against every server, round after round,
// and returns the median of each (server, workload) over the rounds.
func Compare(ctx context.Context, cc CompareConfig) ([]Row, error) {
	started := time.Now().UTC().Format(time.RFC3339)
	file, kind, err := checkBacking(cc.File)
	if err != nil {
		return nil, err
	}
	if cc.TLSCerts != "" {
		if cc.TLSCerts, err = checkTLSDir(cc.TLSCerts); err != nil {
			return nil, err
		}
	}
	for _, w := range cc.Workloads {
		if err := w.check(); err != nil {
			return nil, fmt.Errorf("workload %s: %w", w.Workload(), err)
		}
	}
	var servers []string
	for _, s := range cc.Servers {
		if why := serverMissing(s, &cc); why != "" {
			fmt.Fprintf(cc.Log, "skipping %s: %s\n", s, why)
			continue
		}
		servers = append(servers, s)
	}
	if len(servers) == 0 {
		return nil, errors.New("no server to run: install one or fix -servers")
	}
	if cc.ClientCPUs != "" && cc.Client != "fio" {
		if err := pinSelf(cc.ClientCPUs); err != nil {
			return nil, err
		}
	}
	runs := map[[2]int][]Result{}
	for round := 1; round <= cc.Rounds; round++ {
		for si, name := range servers {
			if ctx.Err() != nil {
				return nil, errors.New("interrupted")
			}
			if cc.DropCaches {
				dropCaches()
			}
			srv, err := startServer(name, file, &cc)
			if err != nil {
				return nil, err
			}
			if cc.OnStart != nil {
				cc.OnStart(name, srv.pid)
			}
			for wi, w := range cc.Workloads {
				w.URI, w.ServerPID = srv.uri, srv.pid
				if round == 1 && si == 0 && wi == 0 {
					checkHoles(ctx, cc, srv)
				}
				fmt.Fprintf(cc.Log, "round %d/%d  %-10s %s\n", round, cc.Rounds, name,
					w.Workload())
				var res Result
				if cc.Client == "fio" {
					res, err = runFio(ctx, w, srv, cc.ClientCPUs)
				} else {
					res, err = Run(ctx, w)
				}
				if ctx.Err() != nil {
					err = errors.New("interrupted")
				}
				if err != nil {
					srv.stop()
					return nil, fmt.Errorf("%s, %s: %w", name, w.Workload(), err)
				}
				runs[[2]int{si, wi}] = append(runs[[2]int{si, wi}], res)
				// The next workload's CPU baseline must not catch this one's
				// children half-reaped.
				awaitReaped(srv.pid)
			}
			srv.stop()
		}
	}
	var rows []Row
	for wi, w := range cc.Workloads {
		for si, name := range servers {
			r := Row{Server: name, Workload: w.Workload(), RW: w.RW, BlockSize: w.BS,
				QueueDepth: w.QD, Connections: w.Conns, BackingPath: file,
				BackingKind: kind, Client: cc.Client, Timestamp: started,
				ServerCPUs: cc.ServerCPUs, ClientCPUs: cc.ClientCPUs, TLS: cc.TLSCerts != "",
				Cores:  cc.Cores,
				Rounds: cc.Rounds, DurationSeconds: w.Duration.Seconds()}
			rows = append(rows, median(r, runs[[2]int{si, wi}]))
		}
	}
	return rows, nil
}

// checkHoles warns, once per compare, when a workload reads and the
// backing is all holes (an image made with truncate and never written).
func checkHoles(ctx context.Context, cc CompareConfig, srv *server) {
	if !slices.ContainsFunc(cc.Workloads, func(w Config) bool { return w.reads() }) {
		return
	}
	tgt, err := ParseURI(srv.uri)
	if err != nil || cc.Log == nil {
		return
	}
	if holes, known := allHoles(ctx, tgt, 0, uint64(srv.size)); known && holes {
		fmt.Fprintf(cc.Log, "nbdbench: warning: %s is all holes (base:allocation), so "+
			"reads return zeros without touching a disk and measure nothing; fill it "+
			"first: fio --name=fill --filename=%s --rw=write --bs=1M --direct=1 "+
			"--refill_buffers --size=%d\n", cc.File, cc.File, srv.size)
	}
}

// checkBacking returns the absolute path of the backing (daemons change
// directory: nbd-server to /) and its kind, and refuses an empty one.
func checkBacking(path string) (file, kind string, err error) {
	if file, err = filepath.Abs(path); err != nil {
		return "", "", fmt.Errorf("-file: %w", err)
	}
	if kind, err = BackingKind(file); err != nil {
		return "", "", fmt.Errorf("-file: %w", err)
	}
	if size, err := backingSize(file); err != nil {
		return "", "", fmt.Errorf("-file: %w", err)
	} else if size == 0 {
		return "", "", fmt.Errorf("-file %s is empty: give it data first (a zram device "+
			"needs its disksize set: README, Performance)", file)
	}
	return file, kind, nil
}

// BackingKind says what path is: "block device", "tmpfs file" or "file".
func BackingKind(path string) (string, error) {
	st, err := os.Stat(path)
	if err != nil {
		return "", fmt.Errorf("%w (give an existing file or block device)", err)
	}
	switch m := st.Mode(); {
	case m&os.ModeDevice != 0 && m&os.ModeCharDevice == 0:
		return "block device", nil
	case !m.IsRegular():
		return "", fmt.Errorf("%s is neither a regular file nor a block device", path)
	}
	var fs syscall.Statfs_t
	if err := syscall.Statfs(path, &fs); err == nil && fs.Type == tmpfsMagic {
		return "tmpfs file", nil
	}
	return "file", nil
}

// tmpfsMagic is TMPFS_MAGIC from linux/magic.h, statfs(2)'s f_type for tmpfs.
const tmpfsMagic = 0x01021994

// backingSize is the size of a file or block device (stat gives 0 for a
// device; seeking to its end gives its size).
func backingSize(path string) (int64, error) {
	f, err := os.Open(path)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	return f.Seek(0, io.SeekEnd)
}

// median fills r's figures with the medians of rs.
func median(r Row, rs []Result) Row {
	pick := func(f func(Result) float64) float64 {
		v := make([]float64, len(rs))
		for i, x := range rs {
			v[i] = f(x)
		}
		slices.Sort(v)
		if len(v)%2 == 1 {
			return v[len(v)/2]
		}
		return (v[len(v)/2-1] + v[len(v)/2]) / 2
	}
	r.IOPS = pick(func(x Result) float64 { return x.IOPS })
	r.BytesPerSec = pick(func(x Result) float64 { return x.BytesPerSec })
	r.ServerCPUUsPerOp = pick(func(x Result) float64 { return x.ServerCPUUsPerOp })
	r.LatencyP99Us = pick(func(x Result) float64 { return x.Latency.P99 })
	for _, x := range rs {
		r.Errors += x.Errors + x.VerifyErrors
		r.RoundsIOPS = append(r.RoundsIOPS, x.IOPS)
	}
	return r
}

// server is one started server process.
type server struct {
	name string
	how  string    // its command line or config, for errors
	log  *tail     // the end of its stderr (nil for nbd-server: syslog)
	cmd  *exec.Cmd // nil for a server that daemonizes (nbd-server)
	pid  int       // the process whose CPU is counted, with its children
	uri  string    // for nbdbench: nbds+unix with tls-certificates= under TLS
	// fioURI is the URI without tls-certificates= (libnbd refuses local
	// file names from fio's URIs; runFio puts the certificates where
	// libnbd looks by default).
	fioURI string
	tlsDir string // "" for plaintext
	dir    string
	size   int64
}

// stopWait bounds how long a server may take to exit on SIGTERM before it
// is killed: long enough to flush a page-cache server's dirty data.
const stopWait = 10 * time.Second

func (s *server) stop() {
	defer os.RemoveAll(s.dir)
	if s.pid <= 0 { // never started: kill(0) would signal our own group
		return
	}
	_ = syscall.Kill(s.pid, syscall.SIGTERM)
	done := make(chan struct{})
	go func() {
		if s.cmd != nil {
			s.cmd.Wait()
		} else {
			waitGone(s.pid, stopWait+time.Second)
		}
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(stopWait):
		_ = syscall.Kill(s.pid, syscall.SIGKILL)
		<-done
	}
}

// waitGone waits until pid, which is not our child, has exited (a zombie
// that its parent has yet to reap counts as exited).
func waitGone(pid int, limit time.Duration) {
	for t0 := time.Now(); time.Since(t0) < limit; time.Sleep(10 * time.Millisecond) {
		f := procStat(strconv.Itoa(pid))
		if f == nil || f[0] == "Z" {
			return
		}
	}
}

// reapWait bounds the wait for a forking server to reap the children of
// closed connections (they exit within milliseconds here).
const reapWait = time.Second

// awaitReaped waits until pid has no child processes left, live or
// zombie, so its CPU count includes them all.
func awaitReaped(pid int) {
	for t0 := time.Now(); len(childPIDs(pid)) > 0 && time.Since(t0) < reapWait; {
		time.Sleep(10 * time.Millisecond)
	}
}

func serverMissing(name string, cc *CompareConfig) string {
	bin := map[string]string{"nbdring": cc.NbdRing, "qemu-nbd": "qemu-nbd",
		"nbdkit": "nbdkit", "nbd-server": "nbd-server", "floor": cc.NbdBench}[name]
	switch {
	case name == "floor" && cc.TLSCerts != "":
		return "the floor is a bare loop without TLS"
	case name == "floor" && bin == "":
		return "no nbdbench binary given to serve it"
	case bin == "":
		return "unknown server (use nbdring, qemu-nbd, nbdkit, nbd-server, floor)"
	}
	if _, err := exec.LookPath(bin); err != nil {
		return bin + " is not installed"
	}
	return ""
}

// maxSockPath is sizeof(sockaddr_un.sun_path) on Linux, with its NUL;
// nbd-server silently cuts longer paths.
const maxSockPath = 108

// readyWait bounds a server's start: nbd-server generates TLS parameters
// before it accepts (0.1-0.5 s here), the others listen at once.
const readyWait = 10 * time.Second

// startServer starts name on file, on a Unix socket, on cc.ServerCPUs.
// Each is run as its users run it for speed: qemu-nbd with O_DIRECT and
// io_uring; nbdkit's file plugin and nbd-server as they are (both read
// through the page cache: neither has an O_DIRECT switch); nbdring with
// cc.Cores shards when set. The floor is nbdbench floor. With a TLS
// directory (checked by checkTLSDir) each requires TLS with its
// certificates.
func startServer(name, file string, cc *CompareConfig) (*server, error) {
	cpus, tlsDir := cc.ServerCPUs, cc.TLSCerts
	dir, err := os.MkdirTemp("", "nbdbench-")
	if err != nil {
		return nil, err
	}
	size, err := backingSize(file)
	if err != nil {
		os.RemoveAll(dir)
		return nil, fmt.Errorf("size of %s: %w", file, err)
	}
	sock := filepath.Join(dir, "sock")
	if len(sock) >= maxSockPath {
		os.RemoveAll(dir)
		return nil, fmt.Errorf("socket path %s is longer than a Unix socket allows (%d "+
			"bytes): set TMPDIR to a shorter directory", sock, maxSockPath-1)
	}
	s := &server{name: name, dir: dir, tlsDir: tlsDir, size: size}
	s.setURI(sock, "")
	var args []string
	switch name {
	case "nbdring":
		args = []string{cc.NbdRing, "-listen", "unix:" + sock}
		if cc.Cores > 0 {
			args = append(args, "-shards", strconv.Itoa(cc.Cores))
		}
		if tlsDir != "" {
			args = append(args, "-tls", "require", "-tls-certificates", tlsDir)
		}
		args = append(args, file)
	case "qemu-nbd":
		args = []string{"qemu-nbd", "-f", "raw", "-k", sock, "--cache=none", "--aio=io_uring",
			"-e", "64", "-t"}
		if tlsDir != "" {
			// verify-peer is on by default: the client's certificate is
			// checked when the directory has one (checkTLSDir).
			args = append(args, "--object", "tls-creds-x509,id=tls0,endpoint=server,dir="+
				tlsDir+",verify-peer="+yesNo(hasClientCert(tlsDir)), "--tls-creds", "tls0")
		}
		args = append(args, file)
	case "nbdkit":
		args = []string{"nbdkit", "-f", "-U", sock}
		if tlsDir != "" {
			args = append(args, "--tls=require", "--tls-certificates="+tlsDir)
		}
		args = append(args, "file", "file="+file)
	case "floor":
		args = []string{cc.NbdBench, "floor", "-listen", "unix:" + sock, file}
	case "nbd-server":
		if err := startNBDServer(s, sock, file, cpus); err != nil {
			os.RemoveAll(dir)
			return nil, err
		}
	default:
		os.RemoveAll(dir)
		return nil, fmt.Errorf("unknown server %q", name)
	}
	if args != nil {
		args = pinned(cpus, args)
		s.cmd = exec.Command(args[0], args[1:]...)
		s.log = &tail{}
		s.cmd.Stdout, s.cmd.Stderr = io.Discard, s.log
		s.how = strings.Join(args, " ")
		if err := s.cmd.Start(); err != nil {
			os.RemoveAll(dir)
			return nil, fmt.Errorf("start %s: %w", name, err)
		}
		s.pid = s.cmd.Process.Pid
	}
	if err := awaitHandshake(s); err != nil {
		s.stop()
		return nil, err
	}
	return s, nil
}

// startNBDServer runs nbd-server as a daemon (its -d mode serves a single
// connection and exits) from a config file, and takes the daemon's pid
// from its pidfile. The export name is the config section's name.
func startNBDServer(s *server, sock, file, cpus string) error {
	conf := filepath.Join(s.dir, "conf")
	pidfile := filepath.Join(s.dir, "pid")
	text := fmt.Sprintf("[generic]\nunixsock=%s\nallowlist=true\n", sock)
	if d := s.tlsDir; d != "" {
		// FORCEDTLS; cacertfile makes it check client certificates.
		text += fmt.Sprintf("force_tls=true\ncertfile=%s\nkeyfile=%s\n",
			filepath.Join(d, "server-cert.pem"), filepath.Join(d, "server-key.pem"))
		if hasClientCert(d) {
			text += "cacertfile=" + filepath.Join(d, "ca-cert.pem") + "\n"
		}
	}
	text += fmt.Sprintf("[disk]\nexportname=%s\nflush=true\nfua=true\n", file)
	if err := os.WriteFile(conf, []byte(text), 0o644); err != nil {
		return err
	}
	s.setURI(sock, "disk")
	s.how = "nbd-server -C " + conf + ", config: " + strings.ReplaceAll(text, "\n", " ") +
		"(it logs to syslog)"
	args := pinned(cpus, []string{"nbd-server", "-C", conf, "-p", pidfile})
	out, err := exec.Command(args[0], args[1:]...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("start nbd-server: %v: %s", err, out)
	}
	for t0 := time.Now(); ; time.Sleep(20 * time.Millisecond) {
		b, err := os.ReadFile(pidfile)
		if err == nil {
			if s.pid, err = strconv.Atoi(strings.TrimSpace(string(b))); err == nil {
				return nil
			}
		}
		if time.Since(t0) > readyWait {
			return fmt.Errorf("nbd-server wrote no pidfile %s within %v: %s", pidfile,
				readyWait, out)
		}
	}
}

// setURI sets the server's URIs for export name on sock: nbd+unix, or
// nbds+unix under TLS, with tls-certificates= for nbdbench.
func (s *server) setURI(sock, export string) {
	// Unescaped, as libnbd and ParseURI both take it: temporary socket
	// paths hold no '&', and a certificate directory with one is refused
	// by checkTLSDir.
	if s.tlsDir == "" {
		s.uri = "nbd+unix:///" + export + "?socket=" + sock
		s.fioURI = s.uri
		return
	}
	s.fioURI = "nbds+unix:///" + export + "?socket=" + sock
	s.uri = s.fioURI + "&tls-certificates=" + s.tlsDir
}

// said is the tail of the server's stderr, for an error message.
func (s *server) said() string {
	if s.log == nil {
		return ""
	}
	if t := strings.TrimSpace(s.log.String()); t != "" {
		return "; it said: " + t
	}
	return ""
}

// tail keeps the last tailBytes written to it: enough for a server's
// start-up error, bounded however long it logs.
type tail struct {
	mu  sync.Mutex
	buf []byte
}

const tailBytes = 2048

func (t *tail) Write(p []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.buf = append(t.buf, p...)
	if len(t.buf) > tailBytes {
		t.buf = append(t.buf[:0], t.buf[len(t.buf)-tailBytes:]...)
	}
	return len(p), nil
}

func (t *tail) String() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return string(t.buf)
}

// awaitHandshake polls until the server completes a real handshake for
// its export: a listening socket alone does not mean it serves.
func awaitHandshake(s *server) error {
	tgt, err := ParseURI(s.uri)
	if err != nil {
		return err
	}
	last := errors.New("no attempt")
	for t0 := time.Now(); time.Since(t0) < readyWait; time.Sleep(50 * time.Millisecond) {
		if f := procStat(strconv.Itoa(s.pid)); f == nil || f[0] == "Z" {
			return fmt.Errorf("%s exited while starting: %s%s", s.name, s.how, s.said())
		}
		c, err := net.DialTimeout(tgt.Network, tgt.Addr, time.Second)
		if err != nil {
			last = err
			continue
		}
		_ = c.SetDeadline(time.Now().Add(2 * time.Second))
		_, _, err = tgt.Handshake(c, wire.ClientOptions{Name: tgt.Export})
		c.Close()
		if err == nil {
			return nil
		}
		var refused *wire.OptionError
		if errors.As(err, &refused) {
			// It is up and said no: waiting will not change its answer.
			return fmt.Errorf("%s refused the export at %s: %w", s.name, s.uri, err)
		}
		last = err
	}
	return fmt.Errorf("%s did not complete a handshake within %v at %s: %v (%s)%s", s.name,
		readyWait, s.uri, last, s.how, s.said())
}

func dropCaches() {
	syscall.Sync()
	_ = os.WriteFile("/proc/sys/vm/drop_caches", []byte("3"), 0o200)
}

// runFio runs the workload with fio's nbd engine (numjobs = conns, each
// job its own connection) so figures can be checked with a client nobody
// here wrote.
func runFio(ctx context.Context, w Config, s *server, cpus string) (Result, error) {
	args := []string{"--name=w", "--ioengine=nbd", "--uri=" + s.fioURI, "--rw=" + w.RW,
		"--bs=" + strconv.Itoa(w.BS), "--iodepth=" + strconv.Itoa(w.QD),
		"--numjobs=" + strconv.Itoa(w.Conns), "--group_reporting", "--time_based",
		"--runtime=" + strconv.FormatInt(w.Duration.Milliseconds(), 10) + "ms",
		"--size=" + strconv.FormatInt(s.size, 10), "--output-format=json"}
	if w.RW == "randrw" {
		args = append(args, "--rwmixread="+strconv.Itoa(w.Mix))
	}
	outDir := s.dir
	if s.tlsDir != "" {
		var err error
		if outDir, err = fioTLSHome(s); err != nil {
			return Result{}, fmt.Errorf("fio over TLS: %w", err)
		}
	}
	out := filepath.Join(outDir, "fio.json")
	args = pinned(cpus, append([]string{"fio"}, append(args, "--output="+out)...))
	cmd := exec.CommandContext(ctx, args[0], args[1:]...)
	if s.tlsDir != "" {
		fioTLSCmd(cmd, outDir)
	}
	cpu0 := cpuTicks(w.ServerPID)
	start := time.Now()
	if msg, err := cmd.CombinedOutput(); err != nil {
		return Result{}, fmt.Errorf("fio: %v: %s", err, msg)
	}
	var j struct {
		Jobs []struct {
			Error int `json:"error"`
			Read  struct {
				IOPS     float64 `json:"iops"`
				BW       float64 `json:"bw_bytes"`
				TotalIOs uint64  `json:"total_ios"`
			} `json:"read"`
			Write struct {
				IOPS     float64 `json:"iops"`
				BW       float64 `json:"bw_bytes"`
				TotalIOs uint64  `json:"total_ios"`
			} `json:"write"`
		} `json:"jobs"`
	}
	b, err := os.ReadFile(out)
	if err != nil {
		return Result{}, err
	}
	// fio writes its warnings into the output file ahead of the JSON.
	if i := bytes.IndexByte(b, '{'); i > 0 {
		b = b[i:]
	}
	if err := json.Unmarshal(b, &j); err != nil || len(j.Jobs) == 0 {
		return Result{}, fmt.Errorf("fio output: %v: %.200s", err, b)
	}
	jb := j.Jobs[0]
	r := Result{Workload: w.Workload(), Seconds: time.Since(start).Seconds(),
		IOPS: jb.Read.IOPS + jb.Write.IOPS, BytesPerSec: jb.Read.BW + jb.Write.BW,
		Ops: jb.Read.TotalIOs + jb.Write.TotalIOs, Errors: uint64(jb.Error)}
	// fio has disconnected: a forking server's children are exiting, and
	// their time reaches the parent's count only once it has reaped them.
	awaitReaped(w.ServerPID)
	if cpu1 := cpuTicks(w.ServerPID); cpu0 >= 0 && cpu1 >= cpu0 && r.Ops > 0 {
		r.ServerCPUSeconds = float64(cpu1-cpu0) / clockTicks
		r.ServerCPUUsPerOp = r.ServerCPUSeconds * 1e6 / float64(r.Ops)
	}
	return r, nil
}

// pinned prefixes a command with taskset when cpus names a CPU list.
func pinned(cpus string, args []string) []string {
	if cpus == "" {
		return args
	}
	return append([]string{"taskset", "-c", cpus}, args...)
}

// pinSelf pins every thread of this process (nbdbench as the client) to
// the CPU list cpus ("1", "0,2", "2-3"); threads started later inherit it.
func pinSelf(cpus string) error {
	if err := PinProcess(cpus); err != nil {
		return fmt.Errorf("-client-cpus: %w", err)
	}
	return nil
}

// PinProcess pins every thread of this process to the CPU list cpus
// (taskset's form: "1", "0,2", "2-3"); threads started later inherit it.
func PinProcess(cpus string) error {
	set, err := parseCPUList(cpus)
	if err != nil {
		return err
	}
	tids, err := os.ReadDir("/proc/self/task")
	if err != nil {
		return fmt.Errorf("pin to CPUs %s: %w", cpus, err)
	}
	for _, t := range tids {
		tid, _ := strconv.Atoi(t.Name())
		if err := unix.SchedSetaffinity(tid, &set); err != nil {
			return fmt.Errorf("pin to CPUs %s: %w", cpus, err)
		}
	}
	return nil
}

// parseCPUList reads a taskset CPU list ("1", "0,2", "2-3").
func parseCPUList(cpus string) (unix.CPUSet, error) {
	var set unix.CPUSet
	for _, part := range strings.Split(cpus, ",") {
		lo, hi, isRange := strings.Cut(part, "-")
		a, err1 := strconv.Atoi(lo)
		b, err2 := a, error(nil)
		if isRange {
			b, err2 = strconv.Atoi(hi)
		}
		if err1 != nil || err2 != nil || a < 0 || b < a || b >= len(set)*64 {
			return set, fmt.Errorf("CPU list %q: want one such as 1 or 0,2-3", cpus)
		}
		for c := a; c <= b; c++ {
			set.Set(c)
		}
	}
	return set, nil
}
