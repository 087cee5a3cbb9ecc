// Command faultfs is a FUSE filesystem for tests: it serves one file,
// DIR/disk.img, whose durable content is a backing file, keeps every write
// in a memory overlay until it is synced, and forgets the rest when told
// to cut the power.
//
//	faultfs -backing FILE -mount DIR [-overlay-mib 256] [-debug]
//
// What syncs: fsync and fdatasync (FUSE_FSYNC) commit the whole overlay.
// An O_DIRECT write with RWF_DSYNC (nbdring's FUA) reaches FUSE as a WRITE
// whose flags carry O_DSYNC, with no FSYNC after it, because disk.img is
// opened FOPEN_DIRECT_IO (measured on Linux 6.18; without direct_io the
// kernel sends that WRITE and then a FUSE_FSYNC): the write's own range is
// committed. Overlay pages are 4 KiB; at most -overlay-mib of them are
// held, and a write that needs more writes the overlay back first, as a
// full disk cache does (an unsynced write may survive a cut; a synced one
// is never lost).
//
// DIR/.control takes commands, one a line (a bad one fails the write with
// EINVAL and the reason is logged); a read returns the faults in force and
// counters:
//
//	cut                  power cut: drop every unsynced write; every later
//	                     disk operation fails with EIO until restart
//	eio-read OFF LEN     reads that touch the range fail with EIO
//	eio-write OFF LEN    writes that touch the range fail with EIO
//	enospc-after BYTES   writes and allocations that take more than BYTES of
//	                     new (unallocated) pages fail with ENOSPC
//	enospc-off           no more ENOSPC
//	fsync-fail N         the next N syncs fail with EIO, and what they were
//	                     to commit is lost (Linux marks such pages clean)
//	delay-us N           every read and write sleeps N us: a slow device
//	no-fallocate on|off  every fallocate answers EOPNOTSUPP
//	no-punch on|off      PUNCH_HOLE and ZERO_RANGE answer EOPNOTSUPP; plain
//	                     allocation works (vfat's behaviour)
//	clear                every fault off (a cut stays)
//
// It mounts with mount(2) directly (go-fuse's DirectMountStrict), so it
// runs as root and needs no fusermount. It prints a ready line once
// mounted, and on SIGTERM or SIGINT unmounts and writes the overlay back
// (an orderly power-off flushes a disk's cache) unless the power was cut.
// Only tests use it; nothing in the server imports it.
package main

import (
	"errors"
	"flag"
	"fmt"
	"log"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	"github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
)

const (
	// overlayMiBDefault bounds the memory unsynced writes may hold; past
	// it the overlay is written back (see disk.makeRoom). 256 MiB covers
	// every export the tests write, so their cuts lose what they should.
	overlayMiBDefault = 256
	// requestBytesMax is the largest READ or WRITE asked of the kernel:
	// 1 MiB, FUSE's largest (256 pages of max_pages).
	requestBytesMax = 1 << 20
	// unmountTimeout bounds the wait for the kernel to let go of the
	// mount (a killed client's io_uring may hold the file a moment).
	unmountTimeout = 5 * time.Second
)

func main() {
	backing := flag.String("backing", "", "backing `FILE`: the disk's durable content")
	dir := flag.String("mount", "", "mount point `DIR` (an existing empty directory)")
	overlayMiB := flag.Int64("overlay-mib", overlayMiBDefault,
		"memory for unsynced writes in MiB; past it they are written back")
	debug := flag.Bool("debug", false, "log every FUSE request")
	flag.Parse()
	log.SetFlags(log.Lmicroseconds)
	if *backing == "" || *dir == "" || flag.NArg() != 0 || *overlayMiB < 1 {
		fmt.Fprintln(os.Stderr, "usage: faultfs -backing FILE -mount DIR "+
			"[-overlay-mib N] [-debug]")
		os.Exit(2)
	}
	if err := run(*backing, *dir, *overlayMiB<<20, *debug); err != nil {
		log.Fatalf("faultfs: %v", err)
	}
}

func run(backing, dir string, overlayBytes int64, debug bool) error {
	if os.Geteuid() != 0 {
		return errors.New("must run as root: it mounts with mount(2), without fusermount")
	}
	d, srv, err := mount(backing, dir, overlayBytes, debug)
	if err != nil {
		return err
	}
	fmt.Printf("faultfs: ready: %s (%d bytes) backed by %s\n",
		filepath.Join(dir, diskName), d.size, backing)
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
	<-sig
	unmount(srv, dir)
	if err := d.shutdown(); err != nil {
		return err
	}
	log.Printf("faultfs: unmounted %s", dir)
	return nil
}

// mount serves backing's disk on dir and returns once it is mounted.
func mount(backing, dir string, overlayBytes int64, debug bool) (*disk, *fuse.Server, error) {
	d, err := openDisk(backing, overlayBytes)
	if err != nil {
		return nil, nil, err
	}
	opts := &fs.Options{MountOptions: fuse.MountOptions{
		DirectMountStrict: true, FsName: "faultfs:" + filepath.Base(backing),
		Name: "faultfs", MaxWrite: requestBytesMax, Debug: debug,
		// Reads come from memory: splicing them buys nothing, and a
		// 1 MiB reply does not fit the default 1 MiB pipe with its header.
		DisableSplice: true,
		// disk.img is shared by every client of the test: root's nbdring
		// and, if wanted, other users' tools.
		AllowOther: true,
	}}
	raw := &dsyncFS{RawFileSystem: fs.NewNodeFS(&root{d: d}, opts), d: d}
	srv, err := fuse.NewServer(raw, dir, &opts.MountOptions)
	if err != nil {
		d.shutdown()
		return nil, nil, fmt.Errorf("mount on %s: %w (is /dev/fuse there, %s a directory, "+
			"and mount(2) allowed here?)", dir, err, dir)
	}
	go srv.Serve()
	if err := srv.WaitMount(); err != nil {
		srv.Unmount()
		d.shutdown()
		return nil, nil, fmt.Errorf("mount on %s: %w", dir, err)
	}
	return d, srv, nil
}

// unmount waits for the mount to be let go, then detaches it lazily: the
// kernel ends the connection when this process closes /dev/fuse, and any
// late request fails with ENOTCONN.
func unmount(srv *fuse.Server, mount string) {
	deadline := time.Now().Add(unmountTimeout)
	for {
		err := srv.Unmount()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			log.Printf("faultfs: unmount %s: %v after %v; detaching it", mount, err,
				unmountTimeout)
			if err := syscall.Unmount(mount, syscall.MNT_DETACH); err != nil {
				log.Printf("faultfs: detach %s: %v", mount, err)
			}
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
}
