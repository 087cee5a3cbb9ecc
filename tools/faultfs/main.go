// Command faultfs is a FUSE filesystem for tests: it serves one file,
// DIR/disk.img, whose durable content is a backing file, keeps every write
// in a memory overlay until an fsync, fdatasync or O_DSYNC write commits
// it, and forgets the rest when told to cut the power. A control file,
// DIR/.control, takes commands that inject faults (see controlUsage); a
// read of it returns the faults in force and counters.
//
//	faultfs -backing FILE -mount DIR [-overlay-mib 256] [-debug]
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
	mount := flag.String("mount", "", "mount point `DIR` (an existing empty directory)")
	overlayMiB := flag.Int64("overlay-mib", overlayMiBDefault,
		"memory for unsynced writes in MiB; past it they are written back")
	debug := flag.Bool("debug", false, "log every FUSE request")
	flag.Parse()
	log.SetFlags(log.Lmicroseconds)
	if *backing == "" || *mount == "" || flag.NArg() != 0 || *overlayMiB < 1 {
		fmt.Fprintln(os.Stderr, "usage: faultfs -backing FILE -mount DIR "+
			"[-overlay-mib N] [-debug]")
		os.Exit(2)
	}
	if err := run(*backing, *mount, *overlayMiB<<20, *debug); err != nil {
		log.Fatalf("faultfs: %v", err)
	}
}

func run(backing, mount string, overlayBytes int64, debug bool) error {
	if os.Geteuid() != 0 {
		return errors.New("must run as root: it mounts with mount(2), without fusermount")
	}
	d, err := openDisk(backing, overlayBytes)
	if err != nil {
		return err
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
	srv, err := fuse.NewServer(raw, mount, &opts.MountOptions)
	if err != nil {
		d.shutdown()
		return fmt.Errorf("mount on %s: %w (is /dev/fuse there and %s a directory?)",
			mount, err, mount)
	}
	go srv.Serve()
	if err := srv.WaitMount(); err != nil {
		d.shutdown()
		return fmt.Errorf("mount on %s: %w", mount, err)
	}
	fmt.Printf("faultfs: ready: %s (%d bytes) backed by %s\n",
		filepath.Join(mount, diskName), d.size, backing)
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
	<-sig
	unmount(srv, mount)
	if err := d.shutdown(); err != nil {
		return err
	}
	log.Printf("faultfs: unmounted %s", mount)
	return nil
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
