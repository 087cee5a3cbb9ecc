package main

// Start-up checks: flag values and listen addresses are checked before
// any export is opened or shard started, so a typo costs nothing and the
// error says what to type instead.

import (
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/nbdring/nbdring/engine"
)

const (
	// arenaMiBMax bounds -arena-mib: 1 TiB per shard is beyond any machine
	// nbdring runs on, so a larger value is a typo; it also keeps
	// MiB << 20 far from overflowing an int.
	arenaMiBMax = 1 << 20
	// unixPathMax is sun_path's 108 bytes less the terminating NUL.
	unixPathMax = 107
	// capNetBindService is CAP_NET_BIND_SERVICE's bit in CapEff.
	capNetBindService = 10
	// nbdPort is the NBD port (IANA), suggested in hints.
	nbdPort = 10809
)

// checkShards refuses more shards than CPUs the process may run on: two
// shards pinned to one CPU would take turns, each stalling the other's
// connections for a scheduler slice.
func checkShards(n int, usable []int) error {
	switch {
	case n < 0:
		return fmt.Errorf("-shards %d: want 0 (one per core) or a count of shards", n)
	case n > len(usable):
		return fmt.Errorf("-shards %d: this process may run on %d CPUs (%v: its affinity "+
			"mask or cgroup cpuset), so at most -shards %d; or 0 for one per core",
			n, len(usable), usable, len(usable))
	}
	return nil
}

// checkArenaMiB checks -arena-mib, which is in MiB; 0 leaves the arena
// to -memory-mib.
func checkArenaMiB(n int) error {
	min := engine.ArenaSizeMin >> 20
	switch {
	case n == 0:
		return nil
	case n < min:
		return fmt.Errorf("-arena-mib %d: below the minimum of %d MiB per shard (a "+
			"quarter of the arena is the largest request served); or 0 for a share "+
			"of -memory-mib", n, min)
	case n > arenaMiBMax:
		return fmt.Errorf("-arena-mib %d: above %d MiB per shard; the value is in MiB "+
			"(128 is 128 MiB)", n, arenaMiBMax)
	case n&(n-1) != 0:
		lo := 1
		for lo*2 <= n {
			lo *= 2
		}
		return fmt.Errorf("-arena-mib %d: not a power of two (the arena is split in "+
			"halves); use %d or %d (MiB)", n, lo, lo*2)
	}
	return nil
}

// checkMemoryMiB checks -memory-mib, which is in MiB: at least one
// smallest arena, and not so large that it is surely a typo.
func checkMemoryMiB(n int) error {
	min := engine.ArenaSizeMin >> 20
	switch {
	case n < min:
		return fmt.Errorf("-memory-mib %d: below the minimum of %d MiB (one shard's "+
			"smallest arena)", n, min)
	case n > arenaMiBMax:
		return fmt.Errorf("-memory-mib %d: above %d MiB; the value is in MiB "+
			"(1024 is 1 GiB)", n, arenaMiBMax)
	}
	return nil
}

// checkListen checks a -listen value (or a config listen entry) for the
// mistakes that have a better answer than the kernel's errno.
func checkListen(addr string) error {
	if path, ok := strings.CutPrefix(addr, "unix:"); ok {
		return checkUnixPath(addr, path)
	}
	if strings.Contains(addr, "://") {
		return fmt.Errorf("%q is a URI; -listen takes host:port (localhost:%d, :%d) or "+
			"unix:/path", addr, nbdPort, nbdPort)
	}
	if strings.HasPrefix(addr, "/") {
		return fmt.Errorf("%q: a Unix socket is written unix:%s", addr, addr)
	}
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		if strings.Contains(err.Error(), "missing port") {
			return fmt.Errorf("%q has no port; add one: %s:%d (the NBD port), or :0 for "+
				"any free port", addr, strings.Trim(addr, "[]"), nbdPort)
		}
		return fmt.Errorf("%q is not host:port (%v); an IPv6 address is written "+
			"[::1]:%d", addr, err, nbdPort)
	}
	p, err := strconv.Atoi(port)
	if err != nil || p < 0 || p > 65535 {
		return fmt.Errorf("%q: port %q is not a number from 0 to 65535", addr, port)
	}
	if h, _, _ := strings.Cut(host, "%"); h != "" && net.ParseIP(h) == nil &&
		strings.ContainsAny(h, ":") {
		return fmt.Errorf("%q: host %q is not an IP address; IPv6 is written [::1]:%d",
			addr, host, nbdPort)
	}
	if p > 0 && p < privilegedPortEnd() && !canBindPrivileged() {
		return fmt.Errorf("%q: port %d is privileged (below %d) and this process "+
			"lacks CAP_NET_BIND_SERVICE (root has it); choose a port above %d (NBD's is %d), "+
			"or grant the capability (AmbientCapabilities= in the unit)", addr, p,
			privilegedPortEnd(), privilegedPortEnd()-1, nbdPort)
	}
	return nil
}

// checkUnixPath checks a unix:PATH listen address.
func checkUnixPath(addr, path string) error {
	if path == "" {
		return fmt.Errorf("%q has no path; write unix:/run/nbdring/nbd.sock", addr)
	}
	if len(path) > unixPathMax {
		return fmt.Errorf("%q: the path is %d bytes; a Unix socket path has at most %d "+
			"(sun_path); choose a shorter one", addr, len(path), unixPathMax)
	}
	dir := filepath.Dir(path)
	if fi, err := os.Stat(dir); err != nil || !fi.IsDir() {
		return fmt.Errorf("%q: directory %s does not exist; create it first (mkdir -p %s)",
			addr, dir, dir)
	}
	return nil
}

// privilegedPortEnd is the first port any process may bind
// (net.ipv4.ip_unprivileged_port_start, 1024 unless changed).
func privilegedPortEnd() int {
	b, err := os.ReadFile("/proc/sys/net/ipv4/ip_unprivileged_port_start")
	if err != nil {
		return 1024
	}
	n, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		return 1024
	}
	return n
}

// canBindPrivileged: CAP_NET_BIND_SERVICE in the effective set (root has
// it, unless a container took it away).
func canBindPrivileged() bool {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return true // unknown: let bind decide
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "CapEff:"); ok {
			caps, err := strconv.ParseUint(strings.TrimSpace(v), 16, 64)
			return err != nil || caps&(1<<capNetBindService) != 0
		}
	}
	return true
}
