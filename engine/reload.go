package engine

import (
	"errors"
	"fmt"
	"log/slog"
	"reflect"
	"slices"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	"github.com/nbdring/nbdring/wire"
	"golang.org/x/sys/unix"
)

// The export registry: which exports the server serves, changed at run
// time by Server.Reload.
//
// Handshakes read an immutable exportSet through one atomic pointer, so a
// reload never stops them; a reload builds the next set and swaps it in.
// An export whose settings changed, or whose file grew, is opened anew
// (the new object carries the new settings and size, for new
// connections) and the old object is retired: its connections keep what
// they negotiated, and it is synced and closed once the last of them is
// gone. A removed export is retired and removed: its connections finish
// what is in flight, then new requests get ESHUTDOWN and they close
// (after removeGrace they are cut). Both objects of a changed export share
// one set of range locks, so an RMW on one never interleaves with a write
// on the other.
//
// Counters are kept per export name, in an index (exportReg.idx) that
// stays while any object of that name is open; a name removed and fully
// closed frees its index, and the counters are zeroed when it is reused.

// exportReg is an Export's registry state.
type exportReg struct {
	cfg   ExportConfig // as opened: a reload compares against it
	idx   int          // counter index, by name (registry.names)
	qos   *qosLimits   // nil: no limits
	locks *rangeLocks  // the range locks of the export this one replaced; nil: its own
	// refs counts connections handed to a shard and not yet released;
	// closing is set while the closer checks refs (enter/tryClose).
	refs    atomic.Int64
	closing atomic.Bool
	removed atomic.Bool // not served any more: its connections drain
	cut     atomic.Bool // removeGrace is over: its connections are cut
	closed  bool        // under registry.mu
	// throttledNs: time its requests waited for QoS tokens (per name).
	throttledNs *atomic.Uint64
}

// opened records the configuration an export was opened with.
func (r *exportReg) opened(c ExportConfig) {
	r.cfg = c
	r.qos = newQoS(c.MaxIOPS, c.MaxBandwidth)
}

// enter counts a connection about to be handed to a shard; false: the
// export is removed or being closed, so refuse it. (refs is raised before
// closing is read, and the closer sets closing before it reads refs, so
// one of them sees the other.)
func (r *exportReg) enter() bool {
	r.refs.Add(1)
	if r.removed.Load() || r.closing.Load() {
		r.refs.Add(-1)
		return false
	}
	return true
}

func (r *exportReg) leave() { r.refs.Add(-1) }

// spanLocks are the range locks requests on e take: shared with the
// export e replaced, if any.
func (e *Export) spanLocks() *rangeLocks {
	if e.reg.locks != nil {
		return e.reg.locks
	}
	return &e.locks
}

// exportSet is what handshakes offer: exps[i] is described by wire[i].
type exportSet struct {
	exps []*Export
	wire []wire.Export
}

// registry owns every open export (served or retired) and the set.
type registry struct {
	mu        sync.Mutex
	set       atomic.Pointer[exportSet]
	open      []*Export
	names     [exportsMax]string
	used      [exportsMax]bool
	throttled [exportsMax]atomic.Uint64
	gen       atomic.Uint64 // bumped by each reload: shards look at their connections
	blockMax  uint32
}

// init registers the exports New starts with.
func (g *registry) init(exports []*Export, blockMax uint32) error {
	g.blockMax = blockMax
	seen := map[string]bool{}
	for _, e := range exports {
		if seen[e.Name] {
			return fmt.Errorf("export name %q given twice", e.Name)
		}
		seen[e.Name] = true
		if _, err := g.assign(e, nil); err != nil {
			return err
		}
	}
	g.open = slices.Clone(exports)
	g.set.Store(g.makeSet(exports))
	return nil
}

func (g *registry) makeSet(exps []*Export) *exportSet {
	set := &exportSet{exps: exps}
	for _, e := range exps {
		set.wire = append(set.wire, e.Wire(g.blockMax))
	}
	return set
}

// assign gives e the counter index of its name (that of old when it
// replaces one); a fresh index is zeroed, in the shards too (reset).
func (g *registry) assign(e *Export, reset func(int)) (int, error) {
	for i := range g.names {
		if g.used[i] && g.names[i] == e.Name {
			e.reg.idx, e.reg.throttledNs = i, &g.throttled[i]
			return i, nil
		}
	}
	for i := range g.names {
		if !g.used[i] {
			g.used[i], g.names[i] = true, e.Name
			g.throttled[i].Store(0)
			if reset != nil {
				reset(i)
			}
			e.reg.idx, e.reg.throttledNs = i, &g.throttled[i]
			return i, nil
		}
	}
	return 0, fmt.Errorf("export %q: %d export names are open already (exportsMax); "+
		"remove some, or restart to serve more", e.Name, exportsMax)
}

// Reload makes cfgs the server's exports: new ones are served at once,
// removed ones drain, changed ones (settings, or a file that grew) serve
// new connections with the new settings. Any error refuses the whole
// reload and leaves everything as it was.
func (s *Server) Reload(cfgs []ExportConfig) error {
	g := &s.reg
	g.mu.Lock()
	defer g.mu.Unlock()
	if s.stopping.Load() {
		return errors.New("reload: the server is shutting down")
	}
	old := g.set.Load()
	plan, err := s.planReload(old, cfgs)
	if err != nil {
		return err
	}
	for _, e := range plan.opened {
		if _, err := g.assign(e, s.resetCounters); err != nil {
			plan.abandon()
			g.releaseNames(old, plan)
			return err
		}
	}
	g.open = append(g.open, plan.opened...)
	g.set.Store(g.makeSet(plan.next))
	for _, e := range plan.gone {
		if !slices.Contains(plan.next, e) {
			e.reg.removed.Store(!plan.renamed(e.Name))
			s.retire(e)
		}
	}
	g.gen.Add(1)
	s.wakeAll()
	slog.Info(fmt.Sprintf("reload: %d exports served: %d added, %d changed, %d removed, "+
		"%d unchanged", len(plan.next), plan.added, plan.changed, plan.removed,
		len(plan.next)-plan.added-plan.changed), "exports", len(plan.next))
	return nil
}

// ExportError is a reload's error in one export: cfgs[Index].
type ExportError struct {
	Index int
	Name  string
	Err   error
}

func (e *ExportError) Error() string {
	return fmt.Sprintf("reload: export %q: %v", e.Name, e.Err)
}

func (e *ExportError) Unwrap() error { return e.Err }

// reloadPlan is what a reload will do, every export opened already.
type reloadPlan struct {
	next   []*Export // the set to serve
	opened []*Export // exports opened for it (new, or replacing a changed one)
	gone   []*Export // served exports it replaces or removes
	// counts for the log line
	added, changed, removed int
}

// renamed reports whether name is still served (a changed export).
func (p *reloadPlan) renamed(name string) bool {
	for _, e := range p.next {
		if e.Name == name {
			return true
		}
	}
	return false
}

// abandon closes what the plan opened.
func (p *reloadPlan) abandon() {
	for _, e := range p.opened {
		e.Close()
	}
}

// releaseNames undoes assign for names the failed plan took.
func (g *registry) releaseNames(old *exportSet, p *reloadPlan) {
	for _, e := range p.opened {
		if !slices.ContainsFunc(g.open, func(o *Export) bool { return o.Name == e.Name }) {
			g.used[e.reg.idx] = false
		}
	}
}

// planReload opens what cfgs add or change; on an error it closes them.
func (s *Server) planReload(old *exportSet, cfgs []ExportConfig) (*reloadPlan, error) {
	p := &reloadPlan{}
	seen := map[string]bool{}
	for _, c := range cfgs {
		if seen[c.Name] {
			p.abandon()
			return nil, fmt.Errorf("reload: export name %q given twice", c.Name)
		}
		seen[c.Name] = true
		e, err := s.planExport(old, c, p)
		if err != nil {
			p.abandon()
			return nil, &ExportError{Index: len(p.next), Name: c.Name, Err: err}
		}
		p.next = append(p.next, e)
	}
	if len(p.next) == 0 {
		return nil, errors.New("reload: no exports: the server keeps serving what it has")
	}
	for _, e := range old.exps {
		if !seen[e.Name] {
			p.gone = append(p.gone, e)
			p.removed++
		}
	}
	return p, nil
}

// planExport is the export to serve for c: the one served now if
// nothing changed, else a freshly opened one.
func (s *Server) planExport(old *exportSet, c ExportConfig, p *reloadPlan) (*Export, error) {
	i := slices.IndexFunc(old.exps, func(e *Export) bool { return e.Name == c.Name })
	var cur *Export
	if i >= 0 {
		cur = old.exps[i]
		if reflect.DeepEqual(cur.reg.cfg, c) && !cur.grown() {
			return cur, nil
		}
	}
	if c.TLSOnly && s.tlsMode == wire.TLSOff {
		return nil, errors.New("requires TLS but TLS is off: start the server with -tls on")
	}
	e, err := OpenExport(c)
	if err != nil {
		return nil, err
	}
	p.opened = append(p.opened, e)
	if cur == nil {
		p.added++
		return e, nil
	}
	e.reg.locks = cur.spanLocks()
	if cur.syncFailed.Load() {
		e.syncFailed.Store(true) // the failure is the file's, not the descriptor's
	}
	p.gone = append(p.gone, cur)
	p.changed++
	return e, nil
}

// grown reports whether e's file or device is now larger than served
// (new connections should see the new size).
func (e *Export) grown() bool {
	var size uint64
	if e.isDevice {
		_, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(e.fd), unix.BLKGETSIZE64,
			uintptr(unsafe.Pointer(&size)))
		if errno != 0 {
			return false
		}
	} else {
		var st unix.Stat_t
		if unix.Fstat(e.fd, &st) != nil {
			return false
		}
		size = uint64(st.Size)
	}
	return alignDown(size, uint64(e.align)) != e.size
}

// retire waits, on its own goroutine, until no connection uses e, then
// syncs and closes it. A removed export's connections are cut once
// removeGrace has passed.
func (s *Server) retire(e *Export) {
	go func() {
		deadline := time.Now().Add(removeGrace)
		for !s.tryClose(e) {
			if s.stopping.Load() {
				return // Shutdown closes it
			}
			if e.reg.removed.Load() && !e.reg.cut.Load() && time.Now().After(deadline) {
				slog.Warn(fmt.Sprintf("export %q removed: cutting its %d connections still "+
					"open after %v", e.Name, e.reg.refs.Load(), removeGrace), "export", e.Name)
				e.reg.cut.Store(true)
				s.reg.gen.Add(1)
				s.wakeAll()
			}
			time.Sleep(retirePoll)
		}
	}()
}

// tryClose syncs and closes e if no connection uses it; false: some do.
func (s *Server) tryClose(e *Export) bool {
	e.reg.closing.Store(true)
	if e.reg.refs.Load() > 0 {
		e.reg.closing.Store(false)
		return false
	}
	if err := s.reg.closeExport(e); err != nil {
		slog.Error(err.Error()+": acknowledged writes may be lost; check the device",
			"export", e.Name)
	} else {
		slog.Info(fmt.Sprintf("export %q (%s): synced and closed, no connection uses it",
			e.Name, e.Path), "export", e.Name)
	}
	return true
}

// closeExport syncs (if writable) and closes e, once, and frees its
// name's counter index when no object of that name is left.
func (g *registry) closeExport(e *Export) error {
	g.mu.Lock()
	defer g.mu.Unlock()
	if e.reg.closed {
		return nil
	}
	e.reg.closed = true
	var err error
	if !e.readOnly {
		if err = unix.Fdatasync(e.fd); err != nil {
			err = fmt.Errorf("final fdatasync of %s: %w", e.Path, err)
		}
	}
	e.Close()
	g.open = slices.DeleteFunc(g.open, func(o *Export) bool { return o == e })
	if !slices.ContainsFunc(g.open, func(o *Export) bool { return o.Name == e.Name }) {
		g.used[e.reg.idx] = false
	}
	return err
}

// closeAll syncs and closes every open export (Shutdown, shards stopped).
func (g *registry) closeAll() []error {
	g.mu.Lock()
	open := slices.Clone(g.open)
	g.mu.Unlock()
	var errs []error
	for _, e := range open {
		if err := g.closeExport(e); err != nil {
			errs = append(errs, err)
		}
	}
	return errs
}

// resetCounters zeroes every shard's counters of index i before a new
// name takes it (no connection counts in it: its last export is closed).
func (s *Server) resetCounters(i int) {
	for _, sh := range s.shards {
		c := &sh.m.exp[i]
		c.conns.Store(0)
		for k := range cmdLabels {
			c.requests[k].Store(0)
			c.errors[k].Store(0)
			c.bytes[k].Store(0)
		}
	}
}

// exportsNow are the exports to report, by counter index: the one
// served for each name, else an open retired one.
func (g *registry) exportsNow() []*Export {
	g.mu.Lock()
	defer g.mu.Unlock()
	byIdx := map[int]*Export{}
	for _, e := range g.open {
		byIdx[e.reg.idx] = e
	}
	for _, e := range g.set.Load().exps {
		byIdx[e.reg.idx] = e
	}
	var out []*Export
	for i := range g.names {
		if e, ok := byIdx[i]; ok {
			out = append(out, e)
		}
	}
	return out
}

// changed: the registry was reloaded since generation *seen, which is
// brought up to date.
func (g *registry) changed(seen *uint64) bool {
	gen := g.gen.Load()
	if gen == *seen {
		return false
	}
	*seen = gen
	return true
}

// retireStep is what a shard does, after a reload, with a connection of
// an export.
type retireStep uint8

const (
	retireKeep  retireStep = iota // served still, or draining already
	retireDrain                   // removed: finish what is in flight, then close
	retireCut                     // removed and its grace is over: close now
)

// retireStep decides it for a connection of r that is draining, or not.
func (r *exportReg) retireStep(draining bool) retireStep {
	switch {
	case !r.removed.Load():
		return retireKeep
	case r.cut.Load():
		return retireCut
	case draining:
		return retireKeep
	}
	return retireDrain
}

// checkRetired is the shard's look at its connections after a reload:
// those of a removed export drain (in-flight requests finish, new ones get
// ESHUTDOWN, then they close), and are cut once the export's grace is
// over.
func (s *shard) checkRetired() {
	if !s.srv.reg.changed(&s.regGen) {
		return
	}
	for i := range s.conns.rows {
		c := &s.conns.rows[i]
		if c.fd < 0 || c.closing {
			continue
		}
		switch c.exp.reg.retireStep(c.draining) {
		case retireCut:
			slog.Warn(fmt.Sprintf("export %q removed: cutting connection, %d requests "+
				"unanswered", c.exp.Name, c.inflight), "client", c.peer, "shard", s.id)
			s.beginClose(int32(i), closeCut)
		case retireDrain:
			c.draining = true
			if !c.waiting { // a held request is answered (ESHUTDOWN) first
				s.maybeFinish(int32(i))
			}
		}
	}
}
