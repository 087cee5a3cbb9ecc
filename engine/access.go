package engine

import (
	"crypto/x509"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"sync"
	"time"
)

// Access is the -allow list. A TCP client must come from one of Nets (when
// any are given): others are closed before the server sends a byte. A TLS
// client must present a verified certificate whose subject matches one of
// Subjects (when any are given). Unix-socket clients are not filtered by
// address: the socket file's mode decides who may connect.
type Access struct {
	Nets     []netip.Prefix
	Subjects []subjectRule
}

// subjectRule is "subject:K=V[,K=V...]": each attribute must be one of
// the certificate subject's (CN, O, OU, C, L, ST; case as written).
type subjectRule struct {
	text  string
	attrs [][2]string
}

// ParseAllow parses -allow's comma-separated rules: CIDR (192.0.2.0/24,
// ::1/128), a bare address (a /32 or /128), or subject:K=V with K=V pairs
// joined by "+" (subject:CN=host1+O=lab).
func ParseAllow(s string) (*Access, error) {
	a := &Access{}
	for _, r := range strings.Split(s, ",") {
		r = strings.TrimSpace(r)
		if r == "" {
			continue
		}
		if subj, ok := strings.CutPrefix(r, "subject:"); ok {
			rule := subjectRule{text: subj}
			for _, kv := range strings.Split(subj, "+") {
				k, v, ok := strings.Cut(kv, "=")
				if !ok || !knownAttr(k) || v == "" {
					return nil, fmt.Errorf("-allow %q: want subject:K=V[+K=V...] with K one "+
						"of CN, O, OU, C, L, ST", r)
				}
				rule.attrs = append(rule.attrs, [2]string{k, v})
			}
			a.Subjects = append(a.Subjects, rule)
			continue
		}
		p, err := netip.ParsePrefix(r)
		if err != nil {
			ip, ierr := netip.ParseAddr(r)
			if ierr != nil {
				return nil, fmt.Errorf("-allow %q: not a CIDR (10.0.0.0/8), an address or "+
					"subject:CN=NAME", r)
			}
			p = netip.PrefixFrom(ip, ip.BitLen())
		}
		a.Nets = append(a.Nets, p.Masked())
	}
	if len(a.Nets) == 0 && len(a.Subjects) == 0 {
		return nil, fmt.Errorf("-allow %q names no rule", s)
	}
	return a, nil
}

func knownAttr(k string) bool {
	switch k {
	case "CN", "O", "OU", "C", "L", "ST":
		return true
	}
	return false
}

// AllowAddr reports whether a client from addr may start a handshake.
func (a *Access) AllowAddr(addr net.Addr) bool {
	if a == nil || len(a.Nets) == 0 {
		return true
	}
	ta, ok := addr.(*net.TCPAddr)
	if !ok {
		return true // Unix socket: its file mode is the control
	}
	ip, ok := netip.AddrFromSlice(ta.IP)
	if !ok {
		return false
	}
	ip = ip.Unmap()
	for _, p := range a.Nets {
		if p.Contains(ip) {
			return true
		}
	}
	return false
}

// AllowSubject reports whether a verified client certificate may proceed.
func (a *Access) AllowSubject(c *x509.Certificate) bool {
	if a == nil || len(a.Subjects) == 0 {
		return true
	}
	if c == nil {
		return false
	}
	for _, r := range a.Subjects {
		if r.matches(c) {
			return true
		}
	}
	return false
}

func (r *subjectRule) matches(c *x509.Certificate) bool {
	for _, kv := range r.attrs {
		var have []string
		switch kv[0] {
		case "CN":
			have = []string{c.Subject.CommonName}
		case "O":
			have = c.Subject.Organization
		case "OU":
			have = c.Subject.OrganizationalUnit
		case "C":
			have = c.Subject.Country
		case "L":
			have = c.Subject.Locality
		case "ST":
			have = c.Subject.Province
		}
		found := false
		for _, h := range have {
			found = found || h == kv[1]
		}
		if !found {
			return false
		}
	}
	return true
}

// gate bounds unfinished handshakes: handshakesMax in all and
// handshakesPerAddrMax per source address, so one host's half-open
// connections cannot keep another host out.
type gate struct {
	mu     sync.Mutex
	total  int
	byAddr map[netip.Addr]int
	log    rateLog
}

// enter admits a handshake from addr, or says why not.
func (g *gate) enter(addr net.Addr) (netip.Addr, string) {
	var ip netip.Addr
	if ta, ok := addr.(*net.TCPAddr); ok {
		ip, _ = netip.AddrFromSlice(ta.IP)
		ip = ip.Unmap()
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.total >= handshakesMax {
		return ip, fmt.Sprintf("%d handshakes already under way", handshakesMax)
	}
	if ip.IsValid() && g.byAddr[ip] >= handshakesPerAddrMax {
		return ip, fmt.Sprintf("%d handshakes from %v already under way", handshakesPerAddrMax,
			ip)
	}
	g.total++
	if ip.IsValid() {
		g.byAddr[ip]++
	}
	return ip, ""
}

// count is how many handshakes are under way.
func (g *gate) count() int {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.total
}

func (g *gate) leave(ip netip.Addr) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.total--
	if ip.IsValid() {
		if g.byAddr[ip]--; g.byAddr[ip] <= 0 {
			delete(g.byAddr, ip)
		}
	}
}

// rateLog logs refusals at most once per refusalLogEvery, with a count of
// those left out, so a flood cannot fill the disk with log lines.
type rateLog struct {
	mu    sync.Mutex
	next  time.Time
	quiet int
}

func (r *rateLog) printf(format string, args ...any) {
	r.mu.Lock()
	now := time.Now()
	if now.Before(r.next) {
		r.quiet++
		r.mu.Unlock()
		return
	}
	quiet := r.quiet
	r.next, r.quiet = now.Add(refusalLogEvery), 0
	r.mu.Unlock()
	msg := fmt.Sprintf(format, args...)
	if quiet > 0 {
		msg += fmt.Sprintf(" (and %d refusals not logged in the last %v)", quiet,
			refusalLogEvery)
	}
	slog.Warn(msg)
}
