package engine

import (
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"sync"

	"golang.org/x/sys/unix"
)

// ListenOptions says how ListenWith opens a socket.
type ListenOptions struct {
	// MPTCP makes a TCP listener Multipath TCP where the kernel has it (Go
	// does so for net.Listen since 1.24). A socket accepted from an MPTCP
	// listener lacks SOCK_SUPPORT_ZC, so SENDMSG_ZC fails with EOPNOTSUPP
	// and every reply is copied: MPTCP turns zero-copy off. Default: plain
	// TCP.
	MPTCP bool
	// SocketMode is a unix: socket's file mode, the only access control a
	// Unix client meets; 0 means 0600. The socket appears at its path with
	// this mode, never with a wider one.
	SocketMode os.FileMode
}

func (o ListenOptions) socketMode() os.FileMode {
	if o.SocketMode == 0 {
		return 0o600
	}
	return o.SocketMode
}

// sockaddrUnixPathMax is sun_path's size in struct sockaddr_un (Linux:
// 108 bytes, the last one the terminating NUL).
const sockaddrUnixPathMax = 108

// listenUnix creates the Unix socket path with its final mode: it binds in
// a new private directory (0700, so nobody else can reach the socket while
// its mode is the umask's), chmods it there, then renames it into place
// and removes the directory. A socket of an earlier run is replaced; a
// live one, or any other file, is not.
func listenUnix(addr, path string, mode os.FileMode) (net.Listener, error) {
	if err := removeStaleSocket(addr, path); err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp(filepath.Dir(path), ".nbd")
	if err != nil {
		return nil, fmt.Errorf("listen %s: private directory for the new socket: %w "+
			"(the socket's directory must be writable)", addr, err)
	}
	defer os.RemoveAll(dir) // empty once the socket is renamed out of it
	tmp := filepath.Join(dir, "s")
	if len(tmp) >= sockaddrUnixPathMax {
		return nil, fmt.Errorf("listen %s: the socket is bound first as %s, %d bytes, "+
			"and a Unix socket path has at most %d: choose a shorter path", addr, tmp,
			len(tmp), sockaddrUnixPathMax-1)
	}
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: tmp, Net: "unix"})
	if err != nil {
		return nil, fmt.Errorf("listen %s: %w", addr, err)
	}
	ln.SetUnlinkOnClose(false) // the bound name moves; unixListener.Close removes it
	if err := os.Chmod(tmp, mode); err != nil {
		ln.Close()
		return nil, fmt.Errorf("listen %s: chmod %o: %w", addr, mode, err)
	}
	err = unix.Renameat2(unix.AT_FDCWD, tmp, unix.AT_FDCWD, path, unix.RENAME_NOREPLACE)
	if errors.Is(err, unix.EINVAL) { // a file system without RENAME_NOREPLACE
		err = os.Rename(tmp, path)
	}
	var st unix.Stat_t
	if err == nil {
		err = unix.Lstat(path, &st)
	}
	if err != nil {
		ln.Close()
		if errors.Is(err, unix.EEXIST) {
			return nil, fmt.Errorf("listen %s: another server created %s meanwhile "+
				"(choose another path)", addr, path)
		}
		return nil, fmt.Errorf("listen %s: move the socket into place: %w", addr, err)
	}
	return &unixListener{UnixListener: ln, addr: &net.UnixAddr{Name: path, Net: "unix"},
		dev: st.Dev, ino: st.Ino}, nil
}

// removeStaleSocket removes a socket file at path that nobody listens on.
func removeStaleSocket(addr, path string) error {
	fi, err := os.Lstat(path)
	if err != nil {
		return nil // nothing there (or unreadable: the rename will say)
	}
	if fi.Mode()&os.ModeSocket == 0 {
		return fmt.Errorf("listen %s: %s exists and is not a socket; "+
			"refusing to replace it (choose another path)", addr, path)
	}
	if c, err := net.Dial("unix", path); err == nil {
		c.Close()
		return fmt.Errorf("listen %s: another server is listening there", addr)
	}
	os.Remove(path) // stale socket of an earlier run
	return nil
}

// unixListener is a Unix listener whose socket was renamed after bind: its
// Addr is the final path (the kernel keeps the bound one), and Close
// removes the socket file if it is still this listener's.
type unixListener struct {
	*net.UnixListener
	addr     *net.UnixAddr
	dev, ino uint64
	once     sync.Once
}

var _ net.Listener = (*unixListener)(nil)

func (l *unixListener) Addr() net.Addr { return l.addr }

// Close closes the socket, then removes its file unless another server
// has put its own there since; a second Close is harmless.
func (l *unixListener) Close() error {
	err := l.UnixListener.Close()
	l.once.Do(func() {
		var st unix.Stat_t
		if unix.Lstat(l.addr.Name, &st) == nil && st.Dev == l.dev && st.Ino == l.ino {
			os.Remove(l.addr.Name)
		}
	})
	return err
}
