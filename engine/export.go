package engine

import (
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	"github.com/nbdring/nbdring/wire"
	"golang.org/x/sys/unix"
)

// ExportConfig describes one export (from the command line or -config).
type ExportConfig struct {
	Name     string // "" is the default export
	Path     string // regular file or block device
	ReadOnly bool
	Inline   InlineMode
	// Description is sent as NBD_INFO_DESCRIPTION and in NBD_OPT_LIST;
	// empty unless the operator sets one (never the path: it would tell
	// any client the server's file layout).
	Description string
	TLSOnly     bool // served only over TLS (needs -tls on)
	// Allow, when set, names the networks this export is served to: a TCP
	// client from elsewhere does not see it (the server-wide -allow still
	// decides who may connect at all). Unix clients: the socket's mode.
	Allow []netip.Prefix
	// TrimIgnore answers TRIM with success and leaves the data in place,
	// as qemu-nbd --discard=ignore does: TRIM stays advertised (it is
	// only a hint, and clients such as qemu-img then still send it), but
	// nothing is punched or discarded.
	TrimIgnore bool
	// MaxIOPS and MaxBandwidth (bytes per second) limit the export's
	// requests and data over all its connections (qos.go); 0: no limit.
	MaxIOPS      uint64
	MaxBandwidth uint64
}

// InlineMode says whether the shards do an export's reads, writes and
// syncs with plain system calls instead of on the ring (see Export.inline).
type InlineMode uint8

const (
	InlineAuto InlineMode = iota // where the kernel cannot start I/O without blocking and the export answers fast
	InlineOff                    // always on the ring
	InlineOn                     // always inline (tests; RAM-backed exports)
)

// Export is an open export shared by all shards: one O_DIRECT descriptor
// (so a FLUSH on any shard covers writes completed on every shard: that is
// what makes MULTI_CONN true), its size and its direct-I/O alignment.
type Export struct {
	Name     string
	Path     string
	fd       int
	size     uint64
	align    uint32 // O_DIRECT offset and length alignment
	isDevice bool
	readOnly bool
	desc     string
	tlsOnly  bool
	allow    []netip.Prefix // ExportConfig.Allow
	// trimIgnore: TRIM succeeds without touching the data (ExportConfig).
	trimIgnore bool
	flags      wire.TxFlags
	locks      rangeLocks
	// inline: the shards read, write and sync this export with plain system
	// calls. On an export without RWF_NOWAIT support (zram, tmpfs) the
	// kernel hands every ring operation to an io-wq thread, a thread switch
	// per request that costs more than the I/O itself when that is a copy
	// from RAM; so where a read answers in microseconds (inlineLatencyMax)
	// the shard does it itself.
	inline bool
	// nowait: reads and writes accept RWF_NOWAIT (block devices with a
	// queue, ext4 and xfs with O_DIRECT), so the ring issues them with it
	// and a would-block is seen and counted (rwFlags); probed at open.
	nowait bool
	// sparse: the file may have holes (it had some when opened, or a TRIM
	// or WRITE_ZEROES punched one since); only then are holes looked for.
	sparse atomic.Bool
	// syncFailed poisons FLUSH after a failed fdatasync: acknowledged
	// writes may be lost, so no later FLUSH may claim durability (the
	// lesson of fsyncgate). A failed O_DIRECT write does not: it was
	// reported to its client and leaves nothing unflushed behind.
	syncFailed atomic.Bool
	reg        exportReg // reload.go: registry index, QoS, retirement
}

// OpenExport opens and probes an export. The errors say what to do.
func OpenExport(c ExportConfig) (*Export, error) {
	if len(c.Name) > wire.StringMax {
		return nil, fmt.Errorf("export name is %d bytes; at most %d", len(c.Name), wire.StringMax)
	}
	mode := unix.O_RDWR
	if c.ReadOnly {
		mode = unix.O_RDONLY
	}
	fd, err := unix.Open(c.Path, mode|unix.O_DIRECT|unix.O_CLOEXEC, 0)
	if errors.Is(err, unix.EINVAL) {
		return nil, fmt.Errorf("open %s: the filesystem refuses O_DIRECT; put the image "+
			"on ext4, xfs or tmpfs, or serve a block device", c.Path)
	}
	if errors.Is(err, unix.EROFS) || errors.Is(err, unix.EACCES) && !c.ReadOnly {
		return nil, fmt.Errorf("open %s for writing: %w (serve it with -readonly)", c.Path, err)
	}
	if err != nil {
		return nil, fmt.Errorf("open export %q: %w", c.Path, err)
	}
	e := &Export{Name: c.Name, Path: c.Path, fd: fd, readOnly: c.ReadOnly,
		desc: c.Description, tlsOnly: c.TLSOnly, trimIgnore: c.TrimIgnore, allow: c.Allow}
	if err := e.probe(); err != nil {
		unix.Close(fd)
		return nil, err
	}
	if format, err := e.imageFormat(); err != nil {
		unix.Close(fd)
		return nil, err
	} else if format != "" {
		slog.Warn(fmt.Sprintf("%s starts with a %s header: nbdring serves raw images, so "+
			"clients will see the %s container, not the disk inside it; convert it "+
			"first (qemu-img convert -O raw %s disk.raw) or serve it with qemu-nbd",
			c.Path, format, format, c.Path), "export", c.Name, "path", c.Path)
	}
	if err = e.probeIO(c.Inline); err != nil {
		unix.Close(fd)
		return nil, err
	}
	e.flags = exportFlags(c.ReadOnly)
	e.reg.opened(c)
	return e, nil
}

// exportFlags are the transmission flags an export advertises. A
// read-only export advertises neither TRIM nor WRITE_ZEROES (nor
// FAST_ZERO, which qualifies WRITE_ZEROES), as nbdkit and qemu-nbd -r do:
// a client is not invited to send what can only fail with EPERM.
func exportFlags(readOnly bool) wire.TxFlags {
	f := wire.TxHasFlags | wire.TxSendFlush | wire.TxSendFUA | wire.TxCanMultiConn |
		wire.TxSendDF | wire.TxSendCache
	if readOnly {
		return f | wire.TxReadOnly
	}
	return f | wire.TxSendTrim | wire.TxSendWriteZeros | wire.TxSendFastZero
}

func (e *Export) probe() error {
	var st unix.Stat_t
	if err := unix.Fstat(e.fd, &st); err != nil {
		return fmt.Errorf("stat %s: %w", e.Path, err)
	}
	switch st.Mode & unix.S_IFMT {
	case unix.S_IFBLK:
		e.isDevice = true
		var size uint64
		_, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(e.fd), unix.BLKGETSIZE64,
			uintptr(unsafe.Pointer(&size)))
		if errno != 0 {
			err := error(errno)
			return fmt.Errorf("BLKGETSIZE64 %s: %w", e.Path, err)
		}
		ssz, err := unix.IoctlGetInt(e.fd, unix.BLKSSZGET)
		if err != nil {
			return fmt.Errorf("BLKSSZGET %s: %w", e.Path, err)
		}
		e.size, e.align = size, uint32(ssz)
	case unix.S_IFREG:
		align, err := fileDirectIOAlign(e.fd, e.Path)
		if err != nil {
			return err
		}
		e.size, e.align = uint64(st.Size), align
		e.sparse.Store(uint64(st.Blocks)*512 < uint64(st.Size))
	default:
		return fmt.Errorf("%s is neither a regular file nor a block device", e.Path)
	}
	if e.align == 0 || e.align&(e.align-1) != 0 || e.align > directIOAlignMax {
		return fmt.Errorf("%s: direct-I/O alignment %d is not a power of two up to %d",
			e.Path, e.align, directIOAlignMax)
	}
	e.warnSize()
	return nil
}

// warnSize serves a file whose size is not a multiple of its block as
// far as the last whole block, and an empty one as an empty export (as
// qemu-nbd and nbdkit serve it: a client sees size 0, not a refusal), and
// says so with the command that fixes it. qemu-nbd pads the tail instead;
// O_DIRECT cannot write a partial block, so nbdring hides it.
func (e *Export) warnSize() {
	if e.size == 0 {
		slog.Warn("export is empty (0 bytes): clients can connect but read or write "+
			"nothing; give it a size with truncate -s SIZE "+e.Path,
			"export", e.Name, "path", e.Path)
		return
	}
	rem := e.size % uint64(e.align)
	if rem == 0 {
		return
	}
	slog.Warn(fmt.Sprintf("export size %d is not a multiple of its %d-byte block: "+
		"serving the first %d bytes, the last %d are hidden; to reach them, grow the "+
		"file with truncate -s %d %s", e.size, e.align, e.size-rem, rem,
		e.size-rem+uint64(e.align), e.Path),
		"export", e.Name, "path", e.Path, "hidden_bytes", rem)
	e.size -= rem
}

// probeIO decides Export.nowait and Export.inline. A read with RWF_NOWAIT
// that the kernel refuses (EOPNOTSUPP) means every ring operation on the
// export would go to an io-wq thread; then, if the median of a few plain
// reads is within inlineLatencyMax, the shards do the I/O themselves.
func (e *Export) probeIO(mode InlineMode) error {
	n := alignDown(min(uint64(directIOAlignMax), e.size), uint64(e.align))
	if n == 0 {
		e.inline = mode == InlineOn
		return nil
	}
	buf, err := unix.Mmap(-1, 0, directIOAlignMax, unix.PROT_READ|unix.PROT_WRITE,
		unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		return fmt.Errorf("probe %s: %w", e.Path, err)
	}
	defer unix.Munmap(buf)
	iov := []unix.Iovec{{Base: &buf[0], Len: n}}
	_, _, errno := unix.Syscall6(unix.SYS_PREADV2, uintptr(e.fd), uintptr(unsafe.Pointer(&iov[0])),
		1, 0, 0, unix.RWF_NOWAIT)
	e.nowait = errno != unix.EOPNOTSUPP
	e.inline, err = e.probeInline(mode, buf[:n])
	return err
}

// probeInline decides Export.inline once probeIO has read with buf.
func (e *Export) probeInline(mode InlineMode, buf []byte) (bool, error) {
	switch {
	case mode == InlineOn:
		return true, nil
	case mode == InlineOff:
		return false, nil
	case e.nowait:
		return false, nil // the ring starts its I/O without a thread switch
	}
	var took [inlineProbeReads]time.Duration
	step := alignDown(e.size/inlineProbeReads, uint64(e.align))
	for i := range took {
		t0 := time.Now()
		if _, err := unix.Pread(e.fd, buf, int64(uint64(i)*step)); err != nil {
			return false, nil
		}
		took[i] = time.Since(t0)
	}
	slices.Sort(took[:])
	return took[len(took)/2] <= inlineLatencyMax, nil
}

// fileDirectIOAlign asks statx for the file's O_DIRECT alignment
// (STATX_DIOALIGN, Linux 6.1) and, where the filesystem does not say,
// finds it by trying an aligned direct read at each size.
func fileDirectIOAlign(fd int, path string) (uint32, error) {
	var sx unix.Statx_t
	err := unix.Statx(fd, "", unix.AT_EMPTY_PATH, unix.STATX_DIOALIGN, &sx)
	if err == nil && sx.Mask&unix.STATX_DIOALIGN != 0 {
		if sx.Dio_offset_align == 0 {
			return 0, fmt.Errorf("%s: the filesystem does not support O_DIRECT; put the "+
				"image on ext4, xfs or tmpfs, or serve a block device", path)
		}
		return sx.Dio_offset_align, nil
	}
	buf, err := unix.Mmap(-1, 0, directIOAlignMax, unix.PROT_READ|unix.PROT_WRITE,
		unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		return 0, fmt.Errorf("probe O_DIRECT alignment of %s: %w", path, err)
	}
	defer unix.Munmap(buf)
	for a := 512; a <= directIOAlignMax; a *= 2 {
		if _, err := unix.Pread(fd, buf[:a], 0); err == nil {
			return uint32(a), nil
		}
	}
	return 0, fmt.Errorf("%s: no direct read of up to %d bytes succeeded; the filesystem "+
		"does not support O_DIRECT", path, directIOAlignMax)
}

// Close releases the export's descriptor.
func (e *Export) Close() error { return unix.Close(e.fd) }

// Size is the export's size in bytes as advertised.
func (e *Export) Size() uint64 { return e.size }

// Inline reports whether the shards do this export's I/O themselves
// (see Export.inline) rather than on the ring.
func (e *Export) Inline() bool { return e.inline }

// Align is the advertised minimum block size: the O_DIRECT alignment.
func (e *Export) Align() uint32 { return e.align }

// Wire describes the export for the handshake, with blockMax the largest
// request the server's shards serve.
func (e *Export) Wire(blockMax uint32) wire.Export {
	return wire.Export{
		Name: e.Name, Description: e.desc, Size: e.size, Flags: e.flags, TLSOnly: e.tlsOnly,
		BlockMin: e.align, BlockPreferred: blockSizePreferred, BlockMax: blockMax,
	}
}

// ReadOnly reports whether the export refuses writes.
func (e *Export) ReadOnly() bool { return e.readOnly }

// rangeLocks orders every request that changes part of a block against
// every other request that changes the same blocks, on all shards.
//
// Why: a read-modify-write (RMW: an unaligned WRITE, or an unaligned
// WRITE_ZEROES on a device) reads whole blocks, merges its bytes and
// writes the blocks back. Any write-class request (WRITE, WRITE_ZEROES,
// TRIM, aligned or not) that lands on those blocks between the read and
// the write-back is undone by it: the write-back restores the bytes it
// read (issue 16: a fallocate's zeroes came back as the old data).
//
// The rule, over each request's aligned span (its bytes rounded out to
// whole blocks):
//   - an RMW holds its span alone, from before its read until its
//     write-back completes;
//   - every other write-class request holds its span while its device
//     operation is in flight (until the fallocate, discard or write
//     completes, not across a FUA fdatasync), so no RMW reads under it,
//     and it waits while an RMW holds any of its blocks.
//
// Reads take nothing: a read racing a write may see either.
//
// Holding is cheap while no RMW is about. A plain request counts itself in
// its shard's stripe and then checks rmw; an RMW counts itself in rmw and
// then waits until every stripe is empty before it takes its span. Each
// side writes its counter before it reads the other's (Go's atomics are
// sequentially consistent), so at least one sees the other: the plain
// request goes to the span table, or the RMW waits for it. While an RMW
// is active or waiting, plain requests take table spans instead, so the
// stripes drain within one device operation and the RMW cannot starve.
//
// A shard never blocks here: a request that cannot hold its span now
// waits in its shard's rmwWait and tries again (rangeLockRetry); none
// fails, and a full table is waited for like a conflict. A slot's hold
// is its lock field: lockNone, lockFast, lockRMWWait or a table index.
type rangeLocks struct {
	// fast: plain requests in flight outside the table, striped by shard
	// so the aligned fast path bounces no cache line between shards.
	fast [rangeLockStripes]struct {
		n atomic.Int32
		_ [60]byte
	}
	// rmw: RMWs holding a span or waiting for one.
	rmw atomic.Int32
	_   [60]byte
	mu  sync.Mutex
	// span is the table; rmw marks an RMW's span, which releases rmw.
	span [rangeLocksMax]struct {
		start, end uint64
		used, rmw  bool
	}
}

// A slot's hold besides a table index (slot.lock).
const (
	lockNone    = -1 // holds nothing
	lockFast    = -2 // counted in its shard's stripe of rangeLocks.fast
	lockRMWWait = -3 // an RMW counted in rangeLocks.rmw, waiting for its span
)

// lockPlain takes, for a write-class request on shard that is not an RMW,
// the hold of span [start, end) into *held; false: call again later.
func (l *rangeLocks) lockPlain(shard int, start, end uint64, held *int) bool {
	stripe := &l.fast[shard%rangeLockStripes].n
	stripe.Add(1)
	if l.rmw.Load() == 0 {
		*held = lockFast
		return true
	}
	stripe.Add(-1)
	i, ok := l.take(start, end, false)
	if ok {
		*held = i
	}
	return ok
}

// lockRMW takes span [start, end) alone for a read-modify-write into
// *held; false: call again later (the RMW stays counted, so plain
// requests keep off the fast path until it has run).
func (l *rangeLocks) lockRMW(start, end uint64, held *int) bool {
	if *held != lockRMWWait {
		l.rmw.Add(1)
		*held = lockRMWWait
	}
	for i := range l.fast {
		if l.fast[i].n.Load() != 0 {
			return false
		}
	}
	i, ok := l.take(start, end, true)
	if ok {
		*held = i
	}
	return ok
}

// release gives up *held, taken on shard, and sets it to lockNone.
func (l *rangeLocks) release(shard int, held *int) {
	switch h := *held; {
	case h == lockFast:
		l.fast[shard%rangeLockStripes].n.Add(-1)
	case h == lockRMWWait:
		l.rmw.Add(-1)
	case h >= 0:
		if l.unlock(h) {
			l.rmw.Add(-1)
		}
	}
	*held = lockNone
}

// tryLock takes [start, end) in the table, for the table's own tests.
func (l *rangeLocks) tryLock(start, end uint64) (int, bool) {
	return l.take(start, end, false)
}

// take puts [start, end) in the table unless it overlaps a span there or
// the table is full.
func (l *rangeLocks) take(start, end uint64, rmw bool) (int, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	freeIdx := -1
	for i := range l.span {
		s := &l.span[i]
		if !s.used {
			if freeIdx < 0 {
				freeIdx = i
			}
			continue
		}
		if start < s.end && s.start < end {
			return -1, false
		}
	}
	if freeIdx < 0 {
		return -1, false
	}
	s := &l.span[freeIdx]
	s.start, s.end, s.used, s.rmw = start, end, true, rmw
	return freeIdx, true
}

// unlock frees table entry i and reports whether it was an RMW's.
func (l *rangeLocks) unlock(i int) bool {
	l.mu.Lock()
	s := &l.span[i]
	assert(s.used, "unlocked a free range lock")
	rmw := s.rmw
	s.used, s.rmw = false, false
	l.mu.Unlock()
	return rmw
}

// servedTo reports whether a client at ip may see this export (its Allow
// rules); an invalid ip (a Unix socket client) may.
func (e *Export) servedTo(ip netip.Addr) bool {
	if len(e.allow) == 0 || !ip.IsValid() {
		return true
	}
	for _, p := range e.allow {
		if p.Contains(ip.Unmap()) {
			return true
		}
	}
	return false
}

// TLSOnly reports whether the export is served only over TLS.
func (e *Export) TLSOnly() bool { return e.tlsOnly }
