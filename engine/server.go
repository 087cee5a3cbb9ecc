// Package engine is nbdring's server: shards (a pinned goroutine with its
// io_uring, slot table and buffer arena), the per-connection state machine,
// exports and their O_DIRECT alignment, accept and hand-off, and counters.
//
// Request life cycle on a shard:
//
//	recv (receive pool buffers) -> decode + validate -> slot + arena buffer
//	  -> [WRITE: payload recv, straight into the buffer when large]
//	  -> O_DIRECT read / write / fdatasync / fallocate on the ring
//	  -> reply header built -> queued -> one sendmsg (header + data iovecs,
//	     several replies gathered) -> slot and buffer freed
//
// The handshake runs before a connection joins a shard, on a bounded set of
// control-plane goroutines with a deadline; from then on every byte of the
// connection goes through its shard's ring.
package engine

import (
	"cmp"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/nbdring/nbdring/engine/topology"
	"github.com/nbdring/nbdring/ring"
	"github.com/nbdring/nbdring/wire"
	"golang.org/x/sys/unix"
)

// Config is the server's configuration.
type Config struct {
	Shards    int // 0: one per CPU this process may run on
	ArenaSize int // bytes of buffer arena per shard; 0: Memory's share
	Memory    int // bytes of buffer arena in all shards; 0: memoryDefault
	MaxConns  int // connections at once in all; 0: maxConnsDefault
	// BatchWait (microseconds, 0: off): with more than one request in
	// flight a shard waits for batchWaitNr completions, or this long for
	// fewer (io_uring min-wait, Linux 6.12; ignored, with a warning, where
	// the kernel lacks it).
	BatchWait uint32
	// PollUs (microseconds, 0: off, at most pollUsMax): a shard that has
	// just had work spins on its completion queue this long before its
	// wait sleeps in the kernel (ring/spin.go says when it spins).
	PollUs uint32
	// NoRecvBundles: each receive fills one pool buffer, even where the
	// kernel can fill several (IORING_RECVSEND_BUNDLE, Linux 6.10).
	NoRecvBundles bool
	NoZeroCopy    bool // never send zero-copy (SENDMSG_ZC), even where the kernel can
	// IOTimeout (0: off) cuts a connection that makes no progress this
	// long while the server waits on it (stall.go); cmd's -io-timeout
	// defaults to IOTimeoutDefault.
	IOTimeout time.Duration
	// TLSMode is the TLS policy; TLS (from LoadTLS) is needed unless it
	// is wire.TLSOff. Exports with ExportConfig.TLSOnly need TLSOn.
	TLSMode wire.TLSMode
	TLS     *tls.Config
	Allow   *Access // nil: every client may connect
}

// Server owns the exports, the shards and the listener.
type Server struct {
	reg      registry // the exports served, and those retired (reload.go)
	shards   []*shard
	stopping atomic.Bool // draining: accept nothing, finish what was sent
	cutting  atomic.Bool // grace over: close every connection now
	tlsMode  wire.TLSMode
	tlsCfg   *tls.Config
	allow    *Access
	gate     gate    // unfinished handshakes, in all and per address
	refusals rateLog // refused connections, logged at most once a second
	done     sync.WaitGroup
	mu       sync.Mutex
	lns      []net.Listener        // every listener Serve was given; Shutdown closes them
	hs       map[net.Conn]struct{} // connections in their handshake
	noZC     bool
	sz       sizing // every shard's sizing (sizing.go)
	maxConns int    // -max-connections: at most this many open at once
	// batchWait: Config.BatchWait where the kernel has min-wait, else 0.
	batchWait uint32
	poll      time.Duration // Config.PollUs
	// bundles: receives fill several pool buffers (the kernel has bundles,
	// and Config.NoRecvBundles is off).
	bundles bool
	// ioTimeout is Config.IOTimeout; each shard looks for stalled
	// connections every ioTick.
	ioTimeout time.Duration
	ioTick    time.Duration
	err       error
	hsCount   [hsResults]atomic.Uint64 // handshakes by result (metrics.go)
}

// New starts the shards (pinned, each with its ring) for exports.
func New(cfg Config, exports []*Export) (*Server, error) {
	if len(exports) == 0 {
		return nil, errors.New("no exports: name at least one file or block device")
	}
	topo, err := topology.Read()
	if err != nil {
		return nil, err
	}
	cpus := topo.ShardCPUs(cfg.Shards)
	n := len(cpus)
	sz, err := sizeShards(cfg, n)
	if err != nil {
		return nil, err
	}
	feat, err := ring.ProbeFeatures()
	if err != nil {
		return nil, err
	}
	batchWait, err := batchWaitFor(cfg.BatchWait, feat)
	if err != nil {
		return nil, err
	}
	poll, err := pollFor(cfg.PollUs)
	if err != nil {
		return nil, err
	}
	if err := checkSecurity(cfg, exports); err != nil {
		return nil, err
	}
	s := &Server{poll: poll, tlsMode: cfg.TLSMode, tlsCfg: cfg.TLS, allow: cfg.Allow,
		gate: gate{byAddr: map[netip.Addr]int{}}, hs: map[net.Conn]struct{}{},
		noZC: cfg.NoZeroCopy, sz: sz, batchWait: batchWait,
		bundles: feat.Bundles && !cfg.NoRecvBundles, maxConns: cmp.Or(cfg.MaxConns, maxConnsDefault),
		ioTimeout: max(cfg.IOTimeout, 0),
		ioTick:    min(max(cfg.IOTimeout/4, ioTickMin), ioTickMax)}
	if err := s.reg.init(exports, sz.blockMax); err != nil {
		return nil, err
	}
	shardsStarting(n)
	for i := 0; i < n; i++ {
		sh, err := newShard(s, i, cpus[i])
		if err != nil {
			for range n - i {
				shardStopped() // this one and those not started
			}
			s.abort()
			return nil, err
		}
		ready := make(chan error, 1)
		s.done.Add(1)
		go sh.run(ready)
		if err := <-ready; err != nil {
			s.done.Done()
			sh.close()
			for range n - i {
				shardStopped() // this one and those not started
			}
			s.abort()
			return nil, err
		}
		s.shards = append(s.shards, sh)
	}
	slog.Info(fmt.Sprintf("machine: %v", topo))
	slog.Info(fmt.Sprintf("io_uring: min-wait %s, recv bundles %s; batch wait %s, "+
		"receives fill %s", yesNo(feat.MinWait), yesNo(feat.Bundles),
		batchWaitString(batchWait), bufsPerRecv(s.bundles)))
	slog.Info(fmt.Sprintf("%d shards on CPUs %v, for %d connections; memory: %d MiB in "+
		"all, per shard %v", n, cpus, n*sz.conns, n*(sz.arena+sz.metaSize())>>20, sz),
		"shards", n, "pinned_bytes", n*(sz.arena+sz.metaSize()))
	return s, nil
}

// batchWaitFor is the batch wait the shards use for -batch-wait-us us on a
// kernel with feat: us, or 0 (plain waits) where the kernel cannot.
func batchWaitFor(us uint32, feat ring.Features) (uint32, error) {
	switch {
	case us > batchWaitMax:
		return 0, fmt.Errorf("-batch-wait-us %d: at most %d (a millisecond); 0 turns it "+
			"off", us, batchWaitMax)
	case us > 0 && !feat.MinWait:
		slog.Warn(fmt.Sprintf("-batch-wait-us %d: this kernel's io_uring has no min-wait "+
			"(IORING_FEAT_MIN_TIMEOUT, Linux 6.12); waiting for each completion instead", us))
		return 0, nil
	}
	return us, nil
}

func batchWaitString(us uint32) string {
	if us == 0 {
		return "off"
	}
	return fmt.Sprintf("%d us for up to %d completions", us, batchWaitNr)
}

func bufsPerRecv(bundles bool) string {
	if bundles {
		return "several pool buffers (bundles)"
	}
	return "one pool buffer"
}

func yesNo(b bool) string {
	if b {
		return "yes"
	}
	return "no"
}

// checkSecurity refuses TLS and access settings that cannot work together.
func checkSecurity(cfg Config, exports []*Export) error {
	if cfg.TLSMode != wire.TLSOff && cfg.TLS == nil {
		return fmt.Errorf("-tls %v needs -tls-certificates DIR", cfg.TLSMode)
	}
	for _, e := range exports {
		if e.tlsOnly && cfg.TLSMode == wire.TLSOff {
			return fmt.Errorf("export %q requires TLS but TLS is off: add -tls on", e.Name)
		}
	}
	if cfg.Allow != nil && len(cfg.Allow.Subjects) > 0 {
		if cfg.TLSMode != wire.TLSRequire || !tlsVerifiesPeer(cfg.TLS) {
			return errors.New("-allow subject:... needs -tls require and -tls-verify-peer " +
				"(a plaintext client has no certificate to check)")
		}
	}
	return nil
}

func (s *Server) abort() {
	s.stopping.Store(true)
	s.wakeAll()
	s.done.Wait()
}

// Listen opens ADDR with the default ListenOptions: plain TCP, and a
// unix: socket of mode 0600.
func Listen(addr string) (net.Listener, error) {
	return ListenWith(addr, ListenOptions{})
}

// ListenWith opens ADDR: host:port for TCP, unix:/path for a Unix socket
// (listen.go). A socket file left by an earlier run is replaced; any other
// file is not.
func ListenWith(addr string, opt ListenOptions) (net.Listener, error) {
	if path, ok := strings.CutPrefix(addr, "unix:"); ok {
		return listenUnix(addr, path, opt.socketMode())
	}
	lc := net.ListenConfig{}
	lc.SetMultipathTCP(opt.MPTCP)
	ln, err := lc.Listen(context.Background(), "tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("listen %s: %w%s", addr, err, listenHint(err))
	}
	return ln, nil
}

// listenHint is what to do about a failed TCP bind, by its cause.
func listenHint(err error) string {
	switch {
	case errors.Is(err, syscall.EADDRINUSE):
		return " (is another NBD server on that port? choose another with -listen)"
	case errors.Is(err, syscall.EACCES):
		return " (ports below 1024 need root or CAP_NET_BIND_SERVICE; choose a port " +
			"above 1023, such as the NBD port 10809)"
	case errors.Is(err, syscall.EADDRNOTAVAIL):
		return " (no interface of this machine has that address; use localhost, " +
			"0.0.0.0 or [::] for every interface, or one of this machine's addresses)"
	}
	var dns *net.DNSError
	if errors.As(err, &dns) {
		return " (the host name does not resolve; give an IP address or a name in " +
			"/etc/hosts)"
	}
	return ""
}

// Serve accepts connections on ln until Stop. It returns nil after Stop.
// Several listeners (socket activation passes one per ListenStream=) are
// served by one Serve call each, concurrently; Shutdown closes them all.
func (s *Server) Serve(ln net.Listener) error {
	s.mu.Lock()
	if s.stopping.Load() { // Shutdown ran before this listener was registered
		s.mu.Unlock()
		ln.Close()
		return nil
	}
	s.lns = append(s.lns, ln)
	s.mu.Unlock()
	for {
		nc, err := ln.Accept()
		if err != nil {
			if s.stopping.Load() {
				return nil
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			if errors.Is(err, syscall.EMFILE) || errors.Is(err, syscall.ENFILE) {
				slog.Error(fmt.Sprintf("accept: %v: raise the open-files limit (ulimit -n)",
					err))
				time.Sleep(100 * time.Millisecond)
				continue
			}
			return fmt.Errorf("accept: %w", err)
		}
		if !s.allow.AllowAddr(nc.RemoteAddr()) {
			s.hsCount[hsRefused].Add(1)
			s.refusals.printf("refusing %v: address not allowed by -allow", nc.RemoteAddr())
			nc.Close()
			continue
		}
		if n := s.connections(); n >= s.maxConns {
			s.hsCount[hsRefused].Add(1)
			s.refusals.printf("refusing %v: %d connections already (-max-connections %d)",
				nc.RemoteAddr(), n, s.maxConns)
			nc.Close()
			continue
		}
		ip, why := s.gate.enter(nc.RemoteAddr())
		if why != "" {
			s.hsCount[hsRefused].Add(1)
			s.refusals.printf("refusing %v: %s", nc.RemoteAddr(), why)
			nc.Close()
			continue
		}
		keepAlive(nc)
		go s.handshake(nc, ip)
	}
}

// keepAlive turns on TCP keepalive (keepAliveIdle...) on an accepted
// socket, so a peer that vanished is found even while its connection is
// idle; the shard's socket is a dup of it and keeps the setting.
func keepAlive(nc net.Conn) {
	if tc, ok := nc.(*net.TCPConn); ok {
		_ = tc.SetKeepAliveConfig(net.KeepAliveConfig{Enable: true, Idle: keepAliveIdle,
			Interval: keepAliveInterval, Count: keepAliveCount})
	}
}

// Stop shuts down with the default grace (stopGrace).
func (s *Server) Stop() error { return s.Shutdown(stopGrace) }

// Shutdown stops accepting and ends every handshake under way; each
// connection finishes the requests it has sent (new ones get ESHUTDOWN),
// then closes. Connections still open after grace are cut, each named in
// the log. Once the shards have stopped, every writable export gets an
// fdatasync, so what was acknowledged is on stable storage.
func (s *Server) Shutdown(grace time.Duration) error {
	s.stopping.Store(true)
	s.mu.Lock()
	for _, ln := range s.lns {
		ln.Close()
	}
	for nc := range s.hs {
		nc.Close()
	}
	s.mu.Unlock()
	s.wakeAll()
	done := make(chan struct{})
	go func() { s.done.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(grace):
		s.cutting.Store(true)
		s.wakeAll()
		select {
		case <-done:
		case <-time.After(stopCutWait):
			return fmt.Errorf("shutdown: %d device operations still in flight %v after "+
				"cutting every connection; exiting without a final fdatasync",
				s.ioInflight(), stopCutWait)
		}
	}
	errs := s.reg.closeAll() // served and retired exports: fdatasync, close
	s.mu.Lock()
	defer s.mu.Unlock()
	return errors.Join(append([]error{s.err}, errs...)...)
}

func (s *Server) wakeAll() {
	for _, sh := range s.shards {
		sh.wake()
	}
}

func (s *Server) ioInflight() int64 {
	var n int64
	for _, sh := range s.shards {
		n += sh.stats.OpsInflight.Load() - 1 // less the wake-up read
	}
	return n
}

func (s *Server) shardDone(sh *shard, err error) {
	shardStopped()
	if err != nil {
		slog.Error(fmt.Sprintf("shard %d stopped: %v", sh.id, err), "shard", sh.id)
		s.mu.Lock()
		s.err = errors.Join(s.err, err)
		s.mu.Unlock()
	}
	s.done.Done()
}

// handshake runs the option phase on a control-plane goroutine, then hands
// the socket to a shard. Options are read exactly (no read-ahead), so the
// bytes after NBD_OPT_STARTTLS reach crypto/tls untouched.
func (s *Server) handshake(nc net.Conn, ip netip.Addr) {
	// The gate is left before the hand-off counts the connection on its
	// shard, so connections never counts one twice (and refuses a client
	// below -max-connections); the shard's own bound covers the moment
	// between.
	inGate := true
	leave := func() {
		if inGate {
			inGate = false
			s.gate.leave(ip)
		}
	}
	defer leave()
	if !s.track(nc, true) {
		s.hsCount[hsRefused].Add(1)
		nc.Close()
		return
	}
	handed, result := false, hsAborted // result: how it ended, unless handed (metrics)
	deadline := time.Now().Add(handshakeTimeout)
	defer func() {
		s.track(nc, false)
		if !handed {
			nc.Close()
		}
		s.hsCount[handshakeResult(handed, result, deadline)].Add(1)
	}()
	_ = nc.SetDeadline(deadline) // the TLS handshake too
	set := s.reg.set.Load()      // this handshake's exports, whatever a reload does meanwhile
	h := wire.NewServerHandshake(set.wire)
	h.SetTLS(s.tlsMode)
	for i, e := range set.exps {
		if !e.servedTo(ip) {
			h.Deny(i)
		}
	}
	if _, err := nc.Write(h.Greeting()); err != nil {
		return
	}
	var rw io.ReadWriter = nc
	var t *tlsState
	var b [wire.OptionHeaderSize]byte
	if _, err := io.ReadFull(rw, b[:4]); err != nil {
		return
	}
	if err := h.ClientFlags(b[:4]); err != nil {
		result = hsRefused
		slog.Warn(fmt.Sprintf("handshake: %v; closing", err), "client", peerName(nc))
		return
	}
	for {
		if _, err := io.ReadFull(rw, b[:]); err != nil {
			return
		}
		opt, n, err := h.OptionHeader(b[:])
		if err != nil {
			result = hsRefused
			slog.Warn(fmt.Sprintf("handshake: %v; closing", err), "client", peerName(nc))
			return
		}
		data := make([]byte, n)
		if _, err := io.ReadFull(rw, data); err != nil {
			return
		}
		reply, step := h.Option(opt, data)
		if len(reply) > 0 {
			if _, err := rw.Write(reply); err != nil {
				return
			}
		}
		switch step {
		case wire.StepClose:
			if r := h.CloseReason(); r != "" && opt != wire.OptAbort {
				result = hsRefused
				slog.Warn(fmt.Sprintf("handshake: %s; closing", r), "client", peerName(nc))
			}
			return
		case wire.StepStartTLS:
			if t, result = s.startTLS(nc); t == nil {
				return
			}
			rw = t.tc
		case wire.StepServe:
			leave()
			handed = s.handOff(nc, set.exps[h.Result.Export], h.Result, t)
			return
		}
	}
}

// startTLS runs the TLS handshake after NBD_OPT_STARTTLS's ACK and checks
// the client's certificate against -allow; nil: close, and the handshake
// result to count (tls_failed or refused).
func (s *Server) startTLS(nc net.Conn) (*tlsState, int) {
	pipe := newTLSPipe(nc)
	tc := tls.Server(pipe, s.tlsCfg)
	if err := tc.Handshake(); err != nil {
		s.refusals.printf("%v: TLS handshake failed: %v; closing", peerName(nc), err)
		return nil, hsTLSFailed
	}
	cs := tc.ConnectionState()
	var peer *x509.Certificate
	if len(cs.PeerCertificates) > 0 {
		peer = cs.PeerCertificates[0]
		slog.Info(fmt.Sprintf("%s, client certificate %q", tls.VersionName(cs.Version),
			peer.Subject), "client", peerName(nc))
	}
	if !s.allow.AllowSubject(peer) {
		subj := "none"
		if peer != nil {
			subj = peer.Subject.String()
		}
		s.refusals.printf("refusing %v: client certificate subject %q not allowed by "+
			"-allow; closing", peerName(nc), subj)
		return nil, hsRefused
	}
	return &tlsState{tc: tc, pipe: pipe, more: true}, hsAborted // more: it may have read ahead
}

// track adds nc to (or removes it from) the handshakes Shutdown ends;
// false: the server is stopping, so nc must not start one.
func (s *Server) track(nc net.Conn, add bool) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !add {
		delete(s.hs, nc)
		return true
	}
	if s.stopping.Load() {
		return false
	}
	s.hs[nc] = struct{}{}
	return true
}

// handOff moves the socket (and a TLS connection's state) to a shard.
func (s *Server) handOff(nc net.Conn, exp *Export, neg wire.Negotiated, t *tlsState) bool {
	sc, ok := nc.(syscall.Conn)
	if !ok {
		return false
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return false
	}
	peer := peerName(nc)
	if t != nil {
		if err := t.pipe.handOff(); err != nil {
			slog.Warn(fmt.Sprintf("handshake: %v; closing", err), "client", peer)
			return false
		}
	}
	fd := -1
	_ = rc.Control(func(f uintptr) { fd, err = unix.Dup(int(f)) })
	if err != nil {
		slog.Error("dup socket: "+err.Error(), "client", peer)
		if t != nil {
			t.pipe.release()
		}
		return false
	}
	nc.Close()
	// The ring waits for readiness itself; a blocking socket keeps the
	// kernel's recv and send semantics plain.
	_ = unix.SetNonblock(fd, false)
	unix.CloseOnExec(fd)
	if !exp.reg.enter() { // removed by a reload meanwhile (reload.go)
		slog.Info(fmt.Sprintf("closing connection: export %q was removed", exp.Name),
			"client", peer)
		unix.Close(fd)
		if t != nil {
			t.pipe.release()
		}
		return true
	}
	sh := s.leastLoaded()
	sh.assigned.Add(1)
	_, tcp := nc.(*net.TCPConn)
	select {
	case sh.inbox <- handoff{fd: fd, exp: exp, neg: neg, peer: peer, tcp: tcp, tls: t}:
		sh.wake()
	default:
		exp.reg.leave()
		sh.assigned.Add(-1)
		slog.Warn(fmt.Sprintf("shard %d: inbox full; refusing connection from %s", sh.id,
			peer), "client", peer, "shard", sh.id)
		unix.Close(fd)
		if t != nil {
			t.pipe.release()
		}
	}
	return true
}

// peerName is the client's address for logs. A Unix socket client has
// none, so it is named by its process and user (SO_PEERCRED): that tells
// two local clients apart, and says whose they are.
func peerName(nc net.Conn) string {
	peer := nc.RemoteAddr().String()
	if peer != "" && peer != "@" {
		return peer
	}
	peer = "a Unix socket client"
	sc, ok := nc.(syscall.Conn)
	if !ok {
		return peer
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return peer
	}
	_ = rc.Control(func(fd uintptr) {
		cred, err := unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
		if err == nil {
			peer = fmt.Sprintf("unix:pid=%d,uid=%d", cred.Pid, cred.Uid)
		}
	})
	return peer
}

// connections counts the connections open now: those in their handshake
// and those on a shard.
func (s *Server) connections() int {
	n := s.gate.count()
	for _, sh := range s.shards {
		n += int(sh.assigned.Load())
	}
	return n
}

// leastLoaded is the shard a new connection goes to: the one with the
// fewest connections (counting those handed off but not yet attached),
// then the fewest requests in flight. Round robin could put both of a
// client's two connections on one shard while another idles.
func (s *Server) leastLoaded() *shard {
	best := s.shards[0]
	for _, sh := range s.shards[1:] {
		a, b := sh.assigned.Load(), best.assigned.Load()
		if a < b || a == b && sh.stats.Inflight.Load() < best.stats.Inflight.Load() {
			best = sh
		}
	}
	return best
}
