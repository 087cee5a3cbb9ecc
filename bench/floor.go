package bench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"runtime"
	"strings"
	"sync"
	"syscall"

	"github.com/nbdring/nbdring/wire"
	"golang.org/x/sys/unix"
)

// The floor is the yardstick under every server: a bare loop per
// connection that does nothing but what serving a block must do. A READ
// is one pread with O_DIRECT into one aligned buffer, then header and data
// written to the socket with one writev; a WRITE is the payload received,
// then one pwrite with O_DIRECT. No queue, no ring, no second thread: on
// loopback a server can at best match it, so a server's throughput and CPU
// per MiB as fractions of the floor's say how much of the cost is the
// server's own and how much the kernel's.
//
// It speaks just enough NBD for nbdbench run, fio's nbd engine and libnbd:
// the newstyle handshake through wire's state machine (NBD_OPT_GO and
// NBD_OPT_EXPORT_NAME), then READ, WRITE, FLUSH and DISC in whatever reply
// style the client negotiated, encoded by wire (and BLOCK_STATUS, as all
// data, for libnbd's copies). Requests must be aligned
// to floorBlockMin (O_DIRECT needs it); anything else gets EINVAL.

// Floor bounds.
const (
	// floorBlockMin is the alignment O_DIRECT needs on any device this
	// runs on (4 KiB logical sectors are the largest in use), advertised
	// as NBD_INFO_BLOCK_SIZE's minimum.
	floorBlockMin = 4096
	// floorBufSize is each connection's one data buffer: the largest
	// request the protocol allows (wire.PayloadMax), so any WRITE payload
	// can be drained. It is mapped lazily: a 1 MiB workload touches 1 MiB.
	floorBufSize = wire.PayloadMax
	// floorRecvSize is the request receive buffer: a burst of QD request
	// headers (28 or 32 bytes) is taken in one read.
	floorRecvSize = 4096
)

// FloorConfig is what nbdbench floor serves.
type FloorConfig struct {
	File string    // backing file or block device, opened with O_DIRECT
	Name string    // export name ("" is the default export)
	Log  io.Writer // one line per connection that ends on an error; nil: none
}

// ListenFloor listens on addr: "unix:PATH" for a Unix socket, else a TCP
// host:port, plain TCP (never multipath), as nbdring listens.
func ListenFloor(ctx context.Context, addr string) (net.Listener, error) {
	if path, ok := strings.CutPrefix(addr, "unix:"); ok {
		return (&net.ListenConfig{}).Listen(ctx, "unix", path)
	}
	lc := net.ListenConfig{}
	lc.SetMultipathTCP(false)
	return lc.Listen(ctx, "tcp", addr)
}

// ServeFloor serves cfg.File on ln until ctx ends, one goroutine per
// connection, each locked to its thread and pinned to one of the CPUs
// this process may use, in turn (taskset or -cpus chose them).
func ServeFloor(ctx context.Context, ln net.Listener, cfg FloorConfig) error {
	f, err := os.OpenFile(cfg.File, os.O_RDWR|syscall.O_DIRECT, 0)
	if err != nil {
		return fmt.Errorf("open %s with O_DIRECT: %w (the floor reads past the page "+
			"cache: give a file on a filesystem that supports O_DIRECT, or a block device)",
			cfg.File, err)
	}
	defer f.Close()
	size, err := f.Seek(0, io.SeekEnd)
	if err != nil {
		return fmt.Errorf("size of %s: %w", cfg.File, err)
	}
	var allowed unix.CPUSet
	if err := unix.SchedGetaffinity(0, &allowed); err != nil {
		return fmt.Errorf("read this process's CPUs: %w", err)
	}
	cpus := cpuList(&allowed)
	stop := context.AfterFunc(ctx, func() { ln.Close() })
	defer stop()
	exp := wire.Export{Name: cfg.Name, Size: uint64(size),
		Flags:    wire.TxHasFlags | wire.TxSendFlush | wire.TxCanMultiConn,
		BlockMin: floorBlockMin, BlockPreferred: floorBlockMin, BlockMax: floorBufSize}
	var wg sync.WaitGroup
	defer wg.Wait()
	for i := 0; ; i++ {
		c, err := ln.Accept()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("accept: %w", err)
		}
		wg.Add(1)
		go func(cpu int) {
			defer wg.Done()
			err := serveFloorConn(c, int(f.Fd()), exp, cpu)
			if err != nil && cfg.Log != nil {
				fmt.Fprintf(cfg.Log, "nbdbench floor: connection from %s: %v\n",
					c.RemoteAddr(), err)
			}
		}(cpus[i%len(cpus)])
	}
}

// cpuList lists the CPUs in set, lowest first.
func cpuList(set *unix.CPUSet) []int {
	var out []int
	for c := 0; c < len(set)*64; c++ {
		if set.IsSet(c) {
			out = append(out, c)
		}
	}
	return out
}

// serveFloorConn takes the connection's socket as a blocking descriptor
// (no poller between the loop and the kernel), pins its thread to cpu,
// and serves the handshake and then the requests.
func serveFloorConn(c net.Conn, file int, exp wire.Export, cpu int) error {
	runtime.LockOSThread() // never unlocked: the thread ends with the goroutine
	var one unix.CPUSet
	one.Set(cpu)
	if err := unix.SchedSetaffinity(0, &one); err != nil {
		c.Close()
		return fmt.Errorf("pin to CPU %d: %w", cpu, err)
	}
	fc, ok := c.(interface{ File() (*os.File, error) })
	if !ok {
		c.Close()
		return fmt.Errorf("a %T has no descriptor to take", c)
	}
	sf, err := fc.File()
	c.Close()
	if err != nil {
		return fmt.Errorf("take the socket: %w", err)
	}
	defer sf.Close()
	fd := int(sf.Fd()) // Fd puts the descriptor in blocking mode
	buf, err := unix.Mmap(-1, 0, floorBufSize, unix.PROT_READ|unix.PROT_WRITE,
		unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		return fmt.Errorf("map a %d-byte buffer: %w", floorBufSize, err)
	}
	defer unix.Munmap(buf)
	fl := &floorConn{fd: fd, file: file, buf: buf, in: make([]byte, floorRecvSize)}
	neg, err := fl.handshake(exp)
	if err != nil || neg == nil {
		return err
	}
	fl.style = neg.Style()
	fl.sess = wire.Session{Size: exp.Size, Flags: neg.Flags, BlockMin: exp.BlockMin,
		BlockMax: exp.BlockMax, Strict: neg.BlockSizeAsked, Structured: neg.Structured,
		Extended: neg.Extended, BaseAllocation: neg.BaseAllocation}
	return fl.serve()
}

// floorConn is one connection's loop state; nothing in it is allocated
// after the handshake.
type floorConn struct {
	fd    int    // the socket, blocking
	file  int    // the backing, O_DIRECT, shared by every connection
	buf   []byte // the data buffer, page-aligned (mmap)
	in    []byte // received bytes not yet decoded: in[inLo:inHi]
	inLo  int
	inHi  int
	hdr   [wire.ReplyHeaderMax]byte
	vec   [2][]byte
	style wire.ReplyStyle
	sess  wire.Session
}

// handshake runs wire's server state machine over the blocking socket. It
// returns nil, nil when the client ended the handshake without an export.
func (c *floorConn) handshake(exp wire.Export) (*wire.Negotiated, error) {
	h := wire.NewServerHandshake([]wire.Export{exp})
	if err := c.send(h.Greeting(), nil); err != nil {
		return nil, err
	}
	var b [wire.OptionHeaderSize]byte
	if err := c.recv(b[:4]); err != nil {
		return nil, err
	}
	if err := h.ClientFlags(b[:4]); err != nil {
		return nil, err
	}
	for {
		if err := c.recv(b[:]); err != nil {
			return nil, err
		}
		opt, n, err := h.OptionHeader(b[:])
		if err != nil {
			return nil, err
		}
		data := make([]byte, n)
		if err := c.recv(data); err != nil {
			return nil, err
		}
		out, step := h.Option(opt, data)
		if err := c.send(out, nil); err != nil {
			return nil, err
		}
		switch step {
		case wire.StepServe:
			return &h.Result, nil
		case wire.StepClose:
			return nil, nil
		case wire.StepStartTLS: // TLS is off: the state machine refuses it
			return nil, errors.New("STARTTLS acknowledged with TLS off")
		}
	}
}

// serve is the loop: decode a request, do its one system call, reply.
func (c *floorConn) serve() error {
	hsize := wire.RequestSize
	if c.sess.Extended {
		hsize = wire.ExtRequestSize
	}
	var r wire.Request
	for {
		if err := c.fill(hsize); err != nil {
			if err == io.EOF {
				return nil // the client hung up between requests
			}
			return err
		}
		var err error
		if c.sess.Extended {
			err = wire.DecodeExtendedRequest(c.in[c.inLo:], &r)
		} else {
			err = wire.DecodeRequest(c.in[c.inLo:], &r)
		}
		c.inLo += hsize
		if err != nil {
			return err
		}
		if r.Type == wire.CmdDisc {
			return nil
		}
		if err := c.request(&r); err != nil {
			return err
		}
	}
}

// request serves one request other than DISC and sends its reply.
func (c *floorConn) request(r *wire.Request) error {
	pay, ok := wire.PayloadLen(r, c.sess.Extended)
	if !ok {
		return fmt.Errorf("a %d-byte payload is more than the protocol allows", pay)
	}
	if err := c.recv(c.buf[:pay]); err != nil { // a WRITE's data, or drained
		return err
	}
	errno := c.sess.Validate(r)
	if errno == wire.EOK && (r.Type == wire.CmdRead || r.Type == wire.CmdWrite) &&
		!c.sess.Aligned(r.Offset, r.Length) {
		errno = wire.EINVAL // O_DIRECT cannot serve it
	}
	if errno != wire.EOK {
		return c.reply(r, errno, 0)
	}
	switch r.Type {
	case wire.CmdRead:
		return c.reply(r, c.pread(r.Offset, c.buf[:r.Length]), int(r.Length))
	case wire.CmdWrite:
		return c.reply(r, c.pwrite(r.Offset, c.buf[:pay]), 0)
	case wire.CmdFlush:
		return c.reply(r, sysErrno(unix.Fdatasync(c.file)), 0)
	case wire.CmdBlockStatus:
		return c.blockStatus(r)
	}
	return c.reply(r, wire.EINVAL, 0) // not advertised: TRIM, CACHE, ...
}

// reply sends the reply to r: a READ's header and n bytes of data in one
// writev when errno is EOK, else the header alone.
func (c *floorConn) reply(r *wire.Request, errno wire.Errno, n int) error {
	if errno != wire.EOK {
		h := wire.EncodeError(c.hdr[:], c.style, r.Cookie, r.Offset, errno, errno.String())
		return c.send(c.hdr[:h], nil)
	}
	if r.Type != wire.CmdRead {
		h := wire.EncodeDone(c.hdr[:], c.style, r.Cookie, r.Offset)
		return c.send(c.hdr[:h], nil)
	}
	h := wire.EncodeRead(c.hdr[:], c.style, r.Cookie, r.Offset, r.Offset, uint32(n), true)
	return c.send(c.hdr[:h], c.buf[:n])
}

// blockStatus answers that the range asked is data, in one extent:
// libnbd's copies ask once base:allocation is negotiated, and the floor
// looks for no holes.
func (c *floorConn) blockStatus(r *wire.Request) error {
	n := min(r.Length, c.sess.Size-r.Offset, uint64(^uint32(0))&^(floorBlockMin-1))
	h := wire.EncodeBlockStatus(c.hdr[:], c.style, r.Cookie, r.Offset,
		wire.MetaIDBaseAllocation, 1)
	h += wire.PutExtent(c.hdr[h:], c.style, n, 0)
	return c.send(c.hdr[:h], nil)
}

// pread fills b from the backing at off.
func (c *floorConn) pread(off uint64, b []byte) wire.Errno {
	for len(b) > 0 {
		n, err := unix.Pread(c.file, b, int64(off))
		switch {
		case err == unix.EINTR:
			continue
		case err != nil:
			return sysErrno(err)
		case n == 0:
			return wire.EIO // the backing shrank under us
		}
		b, off = b[n:], off+uint64(n)
	}
	return wire.EOK
}

// pwrite writes b to the backing at off.
func (c *floorConn) pwrite(off uint64, b []byte) wire.Errno {
	for len(b) > 0 {
		n, err := unix.Pwrite(c.file, b, int64(off))
		switch {
		case err == unix.EINTR:
			continue
		case err != nil:
			return sysErrno(err)
		}
		b, off = b[n:], off+uint64(n)
	}
	return wire.EOK
}

func sysErrno(err error) wire.Errno {
	if err == nil {
		return wire.EOK
	}
	var e syscall.Errno
	if errors.As(err, &e) {
		return wire.ErrnoFromSys(e)
	}
	return wire.EIO
}

// fill makes at least n received bytes wait in c.in, reading what the
// socket has (up to the buffer) so a burst of headers costs one read.
// io.EOF: the client closed before the first byte.
func (c *floorConn) fill(n int) error {
	if c.inHi-c.inLo >= n {
		return nil
	}
	if c.inLo > 0 {
		c.inHi = copy(c.in, c.in[c.inLo:c.inHi])
		c.inLo = 0
	}
	for c.inHi < n {
		k, err := unix.Read(c.fd, c.in[c.inHi:])
		switch {
		case err == unix.EINTR:
			continue
		case err != nil:
			return fmt.Errorf("receive: %w", err)
		case k == 0 && c.inHi == 0:
			return io.EOF
		case k == 0:
			return io.ErrUnexpectedEOF
		}
		c.inHi += k
	}
	return nil
}

// recv fills b: first from what fill read ahead, then from the socket
// straight into b.
func (c *floorConn) recv(b []byte) error {
	k := copy(b, c.in[c.inLo:c.inHi])
	c.inLo += k
	for b = b[k:]; len(b) > 0; {
		n, err := unix.Read(c.fd, b)
		switch {
		case err == unix.EINTR:
			continue
		case err != nil:
			return fmt.Errorf("receive: %w", err)
		case n == 0:
			return io.ErrUnexpectedEOF
		}
		b = b[n:]
	}
	return nil
}

// send writes hdr and data with writev, resuming after a partial write.
func (c *floorConn) send(hdr, data []byte) error {
	c.vec[0], c.vec[1] = hdr, data
	v := c.vec[:]
	for len(v) > 0 {
		n, err := unix.Writev(c.fd, v)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return fmt.Errorf("send: %w", err)
		}
		for len(v) > 0 && n >= len(v[0]) {
			n -= len(v[0])
			v = v[1:]
		}
		if len(v) > 0 {
			v[0] = v[0][n:]
		}
	}
	return nil
}
