package engine

import (
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"unsafe"

	"golang.org/x/sys/unix"
)

// TestListenUnixMode: a unix: socket appears at its path with its final
// mode and is never chmod-ed there (a chmod after bind leaves a window in
// which a client can connect through the umask's wider mode). inotify on
// the directory sees every event on the name: the first puts the socket
// there (created or renamed in) with the final mode, and no attribute
// change follows. The private directory it was bound in is gone, the
// listener names the final path, and Close removes the socket.
func TestListenUnixMode(t *testing.T) {
	old := syscall.Umask(0) // the widest the umask allows: 0777 sockets
	defer syscall.Umask(old)
	for _, mode := range []os.FileMode{0o600, 0o660} {
		dir := t.TempDir()
		path := filepath.Join(dir, "nbd.sock")
		fd, err := unix.InotifyInit1(unix.IN_CLOEXEC | unix.IN_NONBLOCK)
		if err != nil {
			t.Fatalf("inotify: %v", err)
		}
		defer unix.Close(fd)
		if _, err := unix.InotifyAddWatch(fd, dir, unix.IN_CREATE|unix.IN_MOVED_TO|
			unix.IN_ATTRIB); err != nil {
			t.Fatal(err)
		}
		ln, err := ListenWith("unix:"+path, ListenOptions{SocketMode: mode})
		if err != nil {
			t.Fatal(err)
		}
		events := inotifyEvents(t, fd, "nbd.sock")
		if len(events) == 0 || events[0]&(unix.IN_CREATE|unix.IN_MOVED_TO) == 0 {
			t.Errorf("mode %o: events on the socket's name %x, want it created or "+
				"moved in first", mode, events)
		}
		for _, ev := range events {
			if ev&unix.IN_ATTRIB != 0 {
				t.Errorf("mode %o: the socket's attributes changed at its path (a chmod "+
					"after bind): events %x", mode, events)
			}
		}
		fi, err := os.Lstat(path)
		if err != nil || fi.Mode()&os.ModeSocket == 0 || fi.Mode().Perm() != mode {
			t.Errorf("mode %o: %s is %v (%v), want a socket of mode %v", mode, path,
				fi.Mode(), err, mode)
		}
		if ents, _ := os.ReadDir(dir); len(ents) != 1 {
			t.Errorf("mode %o: %d entries next to the socket, want only the socket "+
				"(the private directory removed)", mode, len(ents))
		}
		if got := ln.Addr().String(); got != path {
			t.Errorf("mode %o: listener address %q, want %q", mode, got, path)
		}
		c, err := net.Dial("unix", path)
		if err != nil {
			t.Fatalf("mode %o: dial the renamed socket: %v", mode, err)
		}
		c.Close()
		ln.Close()
		if _, err := os.Lstat(path); !os.IsNotExist(err) {
			t.Errorf("mode %o: socket left after Close: %v", mode, err)
		}
		ln.Close() // twice is harmless
	}
}

// inotifyEvents returns the masks of the queued events that name name.
func inotifyEvents(t *testing.T, fd int, name string) []uint32 {
	t.Helper()
	var masks []uint32
	buf := make([]byte, 64<<10)
	n, err := unix.Read(fd, buf)
	if err != nil {
		t.Fatalf("read inotify: %v", err)
	}
	for off := 0; off+unix.SizeofInotifyEvent <= n; {
		ev := (*unix.InotifyEvent)(unsafe.Pointer(&buf[off]))
		raw := buf[off+unix.SizeofInotifyEvent : off+unix.SizeofInotifyEvent+int(ev.Len)]
		if strings.TrimRight(string(raw), "\x00") == name {
			masks = append(masks, ev.Mask)
		}
		off += unix.SizeofInotifyEvent + int(ev.Len)
	}
	return masks
}

// TestListenUnixPathTooLong: a path that fits sun_path but whose private
// bind name (DIR/.nbdNNNNNNNNNN/s) would not is refused with the reason and
// what to do, and nothing is left behind.
func TestListenUnixPathTooLong(t *testing.T) {
	base := t.TempDir()
	dir := filepath.Join(base, strings.Repeat("d", sockaddrUnixPathMax-len(base)-12))
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "s")
	_, err := Listen("unix:" + path)
	if err == nil || !strings.Contains(err.Error(), "choose a shorter path") {
		t.Fatalf("Listen with a %d-byte path: %v, want a shorter path asked for",
			len(path), err)
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 0 {
		t.Errorf("%d entries left behind, want none", len(ents))
	}
}
