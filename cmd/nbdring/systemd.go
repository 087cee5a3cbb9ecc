package main

// The two halves of the service manager protocol nbdring speaks, written by
// hand (environment variables, inherited descriptors, one datagram) so the
// server needs no systemd library:
//
//   - socket activation (sd_listen_fds(3)): the manager, libnbd's
//     `nbdinfo -- [ nbdring ... ]` or systemd-socket-activate opens the
//     listening sockets and passes them as fds 3, 4, ... with LISTEN_PID,
//     LISTEN_FDS and, optionally, LISTEN_FDNAMES;
//   - readiness (sd_notify(3)): READY=1 and STOPPING=1 as datagrams to the
//     Unix socket NOTIFY_SOCKET names (a path, or "@name" for an abstract
//     socket).

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"strconv"
	"strings"

	"github.com/nbdring/nbdring/engine"
	"golang.org/x/sys/unix"
)

const (
	// activationFDFirst is SD_LISTEN_FDS_START, where inherited sockets
	// begin (after stdin, stdout and stderr).
	activationFDFirst = 3
	// activationFDsMax bounds LISTEN_FDS. A unit has one ListenStream= per
	// address it serves; a count beyond this is a garbled variable, not a
	// configuration, and is refused before any descriptor is touched.
	activationFDsMax = 64
)

// activatedSocket is one inherited descriptor and its LISTEN_FDNAMES name.
type activatedSocket struct {
	fd   int
	name string // "" when LISTEN_FDNAMES was not given
}

// parseActivation reads LISTEN_PID, LISTEN_FDS and LISTEN_FDNAMES for the
// process pid, whose first inherited descriptor is fdFirst. It returns nil
// when the variables are absent or name another process (then -listen
// applies), and an error saying what is wrong when they are malformed.
func parseActivation(getenv func(string) string, pid, fdFirst int) ([]activatedSocket,
	error) {
	pidVar, fdsVar, namesVar := getenv("LISTEN_PID"), getenv("LISTEN_FDS"),
		getenv("LISTEN_FDNAMES")
	if pidVar == "" {
		if fdsVar != "" {
			return nil, fmt.Errorf("socket activation: LISTEN_FDS=%q is set without "+
				"LISTEN_PID; the launcher must set both (sd_listen_fds(3)), or unset "+
				"LISTEN_FDS to serve on -listen", fdsVar)
		}
		return nil, nil
	}
	p, err := strconv.Atoi(pidVar)
	if err != nil || p <= 0 {
		return nil, fmt.Errorf("socket activation: LISTEN_PID=%q is not a process ID",
			pidVar)
	}
	if p != pid {
		return nil, nil // meant for another process that left it in the environment
	}
	if fdsVar == "" {
		return nil, errors.New("socket activation: LISTEN_PID names this process but " +
			"LISTEN_FDS is not set; the launcher must set both (sd_listen_fds(3))")
	}
	n, err := strconv.Atoi(fdsVar)
	if err != nil || n < 1 || n > activationFDsMax {
		return nil, fmt.Errorf("socket activation: LISTEN_FDS=%q is not a count of "+
			"sockets between 1 and %d", fdsVar, activationFDsMax)
	}
	names := make([]string, n)
	if namesVar != "" {
		names = strings.Split(namesVar, ":")
		if len(names) != n {
			return nil, fmt.Errorf("socket activation: LISTEN_FDNAMES=%q names %d "+
				"sockets, LISTEN_FDS=%d passes %d", namesVar, len(names), n, n)
		}
	}
	socks := make([]activatedSocket, n)
	for i := range socks {
		socks[i] = activatedSocket{fd: fdFirst + i, name: names[i]}
	}
	return socks, nil
}

// checkListenFD says why fd cannot be served: it must be an open,
// listening stream socket of a family nbdring serves (TCP or Unix).
func checkListenFD(fd int) error {
	typ, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_TYPE)
	switch {
	case errors.Is(err, unix.EBADF):
		return errors.New("is not an open descriptor")
	case errors.Is(err, unix.ENOTSOCK):
		return errors.New("is not a socket")
	case err != nil:
		return fmt.Errorf("getsockopt(SO_TYPE): %w", err)
	case typ != unix.SOCK_STREAM:
		return fmt.Errorf("is a socket of type %d, not a stream socket "+
			"(use ListenStream=, not ListenDatagram= or ListenSequentialPacket=)", typ)
	}
	dom, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_DOMAIN)
	if err != nil {
		return fmt.Errorf("getsockopt(SO_DOMAIN): %w", err)
	}
	if dom != unix.AF_INET && dom != unix.AF_INET6 && dom != unix.AF_UNIX {
		return fmt.Errorf("is a socket of address family %d; nbdring serves TCP "+
			"(IPv4, IPv6) and Unix sockets", dom)
	}
	acc, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_ACCEPTCONN)
	if err != nil {
		return fmt.Errorf("getsockopt(SO_ACCEPTCONN): %w", err)
	}
	if acc == 0 {
		return errors.New("is a stream socket that is not listening (a connection? " +
			"nbdring needs the listener: Accept=no in the .socket unit)")
	}
	return nil
}

// listener is one socket nbdring serves.
type listener struct {
	ln     net.Listener
	listen string // the -listen value it came from; "" when socket-activated
	label  string // where it listens, for the log
}

// activationListeners returns the sockets passed by socket activation
// (nil when there are none), and unsets LISTEN_PID, LISTEN_FDS and
// LISTEN_FDNAMES in every case, as sd_listen_fds(1) does.
func activationListeners(fdFirst int) ([]listener, error) {
	socks, err := parseActivation(os.Getenv, os.Getpid(), fdFirst)
	if pid := os.Getenv("LISTEN_PID"); err == nil && socks == nil && pid != "" {
		slog.Info(fmt.Sprintf("LISTEN_PID=%s is not this process (%d): not socket-activated, "+
			"using -listen", pid, os.Getpid()))
	}
	for _, v := range []string{"LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"} {
		os.Unsetenv(v)
	}
	if err != nil {
		return nil, err
	}
	var lns []listener
	for _, s := range socks {
		ln, err := listenerFromFD(s, len(socks))
		if err != nil {
			closeListeners(lns)
			return nil, err
		}
		label := fmt.Sprintf("%s (socket-activated fd %d", ln.Addr(), s.fd)
		if s.name != "" {
			label += fmt.Sprintf(", %q", s.name)
		}
		lns = append(lns, listener{ln: ln, label: label + ")"})
	}
	return lns, nil
}

// listenerFromFD checks s and wraps it in a net.Listener; the listener
// holds its own duplicate and s.fd is closed.
func listenerFromFD(s activatedSocket, n int) (net.Listener, error) {
	what := fmt.Sprintf("socket activation: LISTEN_FDS=%d: fd %d", n, s.fd)
	if s.name != "" {
		what += fmt.Sprintf(" (LISTEN_FDNAMES %q)", s.name)
	}
	if err := checkListenFD(s.fd); err != nil {
		return nil, fmt.Errorf("%s %w; the launcher must pass LISTEN_FDS listening "+
			"sockets, from fd %d on", what, err, activationFDFirst)
	}
	unix.CloseOnExec(s.fd)
	f := os.NewFile(uintptr(s.fd), s.name)
	defer f.Close()
	ln, err := net.FileListener(f)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", what, err)
	}
	return ln, nil
}

// listenOn opens the sockets -listen (or -config's listen) names, when not
// socket-activated: TCP is plain unless -mptcp, and a Unix socket appears
// with opt.SocketMode (-socket-mode), which decides who may connect.
func listenOn(addrs []string, opt engine.ListenOptions) ([]listener, error) {
	var lns []listener
	for _, listen := range addrs {
		ln, err := engine.ListenWith(listen, opt)
		if err != nil {
			closeListeners(lns)
			return nil, err
		}
		label := listen
		if _, port, _ := net.SplitHostPort(listen); port == "0" {
			label = ln.Addr().String() // the port the kernel chose
		}
		lns = append(lns, listener{ln: ln, listen: listen, label: label})
	}
	return lns, nil
}

// closeListeners closes every listener; closing one twice is harmless.
func closeListeners(lns []listener) {
	for _, l := range lns {
		l.ln.Close()
	}
}

// notifier sends sd_notify(3) states to the service manager; a nil
// notifier (NOTIFY_SOCKET unset) sends nothing.
type notifier struct {
	addr string // a path, or "@name": Go's net maps '@' to the abstract namespace
}

// newNotifier reads NOTIFY_SOCKET.
func newNotifier(getenv func(string) string) (*notifier, error) {
	addr := getenv("NOTIFY_SOCKET")
	switch {
	case addr == "":
		return nil, nil
	case addr[0] == '/' || (addr[0] == '@' && len(addr) > 1):
		return &notifier{addr: addr}, nil
	}
	return nil, fmt.Errorf("NOTIFY_SOCKET=%q is neither an absolute path nor an "+
		"@abstract socket name (other forms, such as vsock:, are not supported); "+
		"unset it when not running under a service manager", addr)
}

// send delivers one datagram of newline-separated VAR=value assignments.
func (n *notifier) send(state string) error {
	if n == nil {
		return nil
	}
	c, err := net.DialUnix("unixgram", nil, &net.UnixAddr{Name: n.addr, Net: "unixgram"})
	if err != nil {
		return fmt.Errorf("NOTIFY_SOCKET=%s: %w", n.addr, err)
	}
	defer c.Close()
	if _, err := c.Write([]byte(state)); err != nil {
		return fmt.Errorf("NOTIFY_SOCKET=%s: send %q: %w", n.addr, state, err)
	}
	return nil
}

// ready tells the manager that exports are open, shards run and the
// listeners accept; status is shown by `systemctl status`.
func (n *notifier) ready(status string) {
	if err := n.send("READY=1\nSTATUS=" + status); err != nil {
		slog.Warn(fmt.Sprintf("%v: the service manager will not see nbdring as started "+
			"(Type=notify)", err))
	}
}

// stopping tells the manager that shutdown has begun; the signal handler
// calls it.
func (n *notifier) stopping() {
	if err := n.send("STOPPING=1"); err != nil {
		slog.Warn(err.Error())
	}
}

// reloading tells the manager a reload has begun (sd_notify(3)): with
// MONOTONIC_USEC, CLOCK_MONOTONIC in microseconds, which Type=notify-reload
// needs to match the message to the reload it asked for; READY=1 (ready)
// ends the reload, whether it was applied or refused.
func (n *notifier) reloading() {
	var ts unix.Timespec
	_ = unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts)
	usec := uint64(ts.Sec)*1e6 + uint64(ts.Nsec)/1e3
	if err := n.send(fmt.Sprintf("RELOADING=1\nSTATUS=reloading -config\nMONOTONIC_USEC=%d",
		usec)); err != nil {
		slog.Warn(err.Error())
	}
}
