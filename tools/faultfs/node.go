package main

import (
	"context"
	"log"
	"sync/atomic"
	"syscall"

	"github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
)

// Names in the mount.
const (
	diskName    = "disk.img"
	controlName = ".control"
)

// root is the mount's directory: disk.img and .control.
type root struct {
	fs.Inode
	d *disk
}

var _ fs.NodeOnAdder = (*root)(nil)

func (r *root) OnAdd(ctx context.Context) {
	r.AddChild(diskName, r.NewPersistentInode(ctx, &diskNode{d: r.d},
		fs.StableAttr{Mode: syscall.S_IFREG, Ino: 2}), false)
	r.AddChild(controlName, r.NewPersistentInode(ctx, &controlNode{d: r.d},
		fs.StableAttr{Mode: syscall.S_IFREG, Ino: 3}), false)
}

// diskNode serves the disk. It is opened FOPEN_DIRECT_IO: the kernel
// keeps no page cache for it, so every read and write reaches the overlay
// and a power cut cannot be hidden by pages the kernel still holds.
type diskNode struct {
	fs.Inode
	d *disk
}

var (
	_ fs.NodeOpener    = (*diskNode)(nil)
	_ fs.NodeGetattrer = (*diskNode)(nil)
	_ fs.NodeSetattrer = (*diskNode)(nil)
	_ fs.NodeReader    = (*diskNode)(nil)
	_ fs.NodeWriter    = (*diskNode)(nil)
	_ fs.NodeFsyncer   = (*diskNode)(nil)
	_ fs.NodeAllocater = (*diskNode)(nil)
)

func (n *diskNode) Open(ctx context.Context, flags uint32) (fs.FileHandle, uint32,
	syscall.Errno) {
	return nil, fuse.FOPEN_DIRECT_IO | fuse.FOPEN_PARALLEL_DIRECT_WRITES, 0
}

func (n *diskNode) Getattr(ctx context.Context, f fs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	n.d.mu.Lock()
	defer n.d.mu.Unlock()
	out.Mode = syscall.S_IFREG | 0o644
	out.Size = uint64(n.d.size)
	out.Blocks = uint64(n.d.allocatedBytes() / 512)
	out.Blksize = pageSize
	return 0
}

// Setattr allows what does not change the content: the size is fixed.
func (n *diskNode) Setattr(ctx context.Context, f fs.FileHandle, in *fuse.SetAttrIn,
	out *fuse.AttrOut) syscall.Errno {
	if sz, ok := in.GetSize(); ok && int64(sz) != n.d.size {
		return syscall.EPERM
	}
	return n.Getattr(ctx, f, out)
}

func (n *diskNode) Read(ctx context.Context, f fs.FileHandle, dest []byte,
	off int64) (fuse.ReadResult, syscall.Errno) {
	got, errno := n.d.readAt(dest, off)
	if errno != 0 {
		return nil, errno
	}
	return fuse.ReadResultData(dest[:got]), 0
}

func (n *diskNode) Write(ctx context.Context, f fs.FileHandle, data []byte,
	off int64) (uint32, syscall.Errno) {
	w, errno := n.d.writeAt(data, off)
	return uint32(w), errno
}

// Fsync is fsync and fdatasync alike: the overlay is all data.
func (n *diskNode) Fsync(ctx context.Context, f fs.FileHandle, flags uint32) syscall.Errno {
	return n.d.sync(0, n.d.size, true)
}

func (n *diskNode) Allocate(ctx context.Context, f fs.FileHandle, off, size uint64,
	mode uint32) syscall.Errno {
	return n.d.fallocate(int64(off), int64(size), mode)
}

// controlNode is .control: writes are commands, reads the status.
type controlNode struct {
	fs.Inode
	d *disk
}

var (
	_ fs.NodeOpener    = (*controlNode)(nil)
	_ fs.NodeGetattrer = (*controlNode)(nil)
	_ fs.NodeSetattrer = (*controlNode)(nil)
	_ fs.NodeReader    = (*controlNode)(nil)
	_ fs.NodeWriter    = (*controlNode)(nil)
)

func (n *controlNode) Open(ctx context.Context, flags uint32) (fs.FileHandle, uint32,
	syscall.Errno) {
	return nil, fuse.FOPEN_DIRECT_IO, 0
}

func (n *controlNode) Getattr(ctx context.Context, f fs.FileHandle,
	out *fuse.AttrOut) syscall.Errno {
	out.Mode = syscall.S_IFREG | 0o600
	return 0
}

// Setattr lets the O_TRUNC of a shell's `>` through.
func (n *controlNode) Setattr(ctx context.Context, f fs.FileHandle, in *fuse.SetAttrIn,
	out *fuse.AttrOut) syscall.Errno {
	return n.Getattr(ctx, f, out)
}

func (n *controlNode) Read(ctx context.Context, f fs.FileHandle, dest []byte,
	off int64) (fuse.ReadResult, syscall.Errno) {
	s := n.d.status()
	if off >= int64(len(s)) {
		return fuse.ReadResultData(nil), 0
	}
	return fuse.ReadResultData([]byte(s[off:])), 0
}

// Write runs the commands; a bad one fails the write with EINVAL and the
// reason goes to faultfs's log.
func (n *controlNode) Write(ctx context.Context, f fs.FileHandle, data []byte,
	off int64) (uint32, syscall.Errno) {
	if err := n.d.control(string(data)); err != nil {
		log.Print(err)
		return 0, syscall.EINVAL
	}
	return uint32(len(data)), 0
}

// dsyncFS sees what the node API hides: a WRITE's open flags. The kernel
// sets O_DSYNC (or O_SYNC) there for a write with RWF_DSYNC, which is
// how nbdring makes a FUA write durable; in FOPEN_DIRECT_IO mode no
// FSYNC follows, so that write's range is committed here once written.
type dsyncFS struct {
	fuse.RawFileSystem
	d      *disk
	diskID atomic.Uint64 // the FUSE node ID of disk.img, learnt at lookup
}

func (r *dsyncFS) Lookup(cancel <-chan struct{}, h *fuse.InHeader, name string,
	out *fuse.EntryOut) fuse.Status {
	st := r.RawFileSystem.Lookup(cancel, h, name, out)
	if st == fuse.OK && name == diskName {
		r.diskID.Store(out.NodeId)
	}
	return st
}

func (r *dsyncFS) Write(cancel <-chan struct{}, in *fuse.WriteIn, data []byte) (uint32,
	fuse.Status) {
	n, st := r.RawFileSystem.Write(cancel, in, data)
	return n, r.afterWrite(in, n, st)
}

func (r *dsyncFS) Writev(cancel <-chan struct{}, in *fuse.WriteIn, data [][]byte) (uint32,
	fuse.Status) {
	n, st := r.RawFileSystem.Writev(cancel, in, data)
	return n, r.afterWrite(in, n, st)
}

func (r *dsyncFS) afterWrite(in *fuse.WriteIn, n uint32, st fuse.Status) fuse.Status {
	if st != fuse.OK || in.NodeId != r.diskID.Load() ||
		in.Flags&(syscall.O_DSYNC|syscall.O_SYNC) == 0 {
		return st
	}
	errno := r.d.sync(int64(in.Offset), int64(in.Offset)+int64(n), false)
	return fuse.ToStatus(errno)
}
