package engine

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/nbdring/nbdring/wire"
	"golang.org/x/sys/unix"
)

// puntBlocks is how many 4 KiB blocks TestPunts writes and reads back.
const puntBlocks = 64

// TestPunts: device operations the ring hands to io-wq threads are
// counted by reason, and the data is right whichever way they went.
//   - ext4, writes into holes: RWF_NOWAIT meets EAGAIN (the blocks must be
//     allocated); each is counted and issued again, and lands.
//   - tmpfs refuses RWF_NOWAIT: every ring read and write is a punt.
//   - a loop device takes RWF_NOWAIT: nothing is punted at depth 1.
//   - FLUSH always runs on io-wq, and the process then has a worker.
func TestPunts(t *testing.T) {
	cases := []struct {
		name string
		path func(t *testing.T) string
		// want checks the punts of 64 writes, 64 reads and a FLUSH.
		want func(t *testing.T, exp *Export, p [puntReasons]uint64)
	}{
		{"ext4 holes", func(t *testing.T) string {
			return sparseOn(t, unix.EXT4_SUPER_MAGIC, os.TempDir(), "/var/tmp", ".")
		}, func(t *testing.T, exp *Export, p [puntReasons]uint64) {
			if !exp.nowait || p[puntEAGAIN] == 0 || p[puntNoNowait] != 0 {
				t.Errorf("nowait %v, punts %v: want writes into holes to meet EAGAIN",
					exp.nowait, p)
			}
		}},
		{"tmpfs", func(t *testing.T) string {
			return sparseOn(t, unix.TMPFS_MAGIC, "/dev/shm")
		}, func(t *testing.T, exp *Export, p [puntReasons]uint64) {
			if exp.nowait || p[puntNoNowait] != 2*puntBlocks || p[puntEAGAIN] != 0 {
				t.Errorf("nowait %v, punts %v: want every read and write punted",
					exp.nowait, p)
			}
		}},
		{"loop device", loopDevice, func(t *testing.T, exp *Export, p [puntReasons]uint64) {
			if !exp.nowait || p[puntEAGAIN] != 0 || p[puntNoNowait] != 0 {
				t.Errorf("nowait %v, punts %v: want no read or write punted", exp.nowait, p)
			}
		}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			path := c.path(t)
			exp, err := OpenExport(ExportConfig{Path: path, Inline: InlineOff})
			if err != nil {
				skipMissing(t, "direct-io", "cannot serve %s here: %v", path, err)
			}
			srv, sock := serveOn(t, t.TempDir(), Config{Shards: 1, ArenaSize: arenaSizeMin},
				[]*Export{exp})
			tc := dial(t, sock, wire.ClientOptions{BlockSize: true})
			block := make([]byte, 4096)
			got := make([]byte, 4096)
			for i := range puntBlocks {
				block[0], block[4095] = byte(i), byte(i+1)
				off := uint64(i) * 64 << 10
				if e := tc.do(wire.CmdWrite, 0, off, 4096, block, nil); e != wire.EOK {
					t.Fatalf("WRITE %d: %v", i, e)
				}
				if e := tc.do(wire.CmdRead, 0, off, 4096, nil, got); e != wire.EOK {
					t.Fatalf("READ %d: %v", i, e)
				}
				if !bytes.Equal(got, block) {
					t.Fatalf("block %d read back wrong", i)
				}
			}
			if e := tc.do(wire.CmdFlush, 0, 0, 0, nil, nil); e != wire.EOK {
				t.Fatalf("FLUSH: %v", e)
			}
			sn := srv.Snapshot()
			p := sn.Shards[0].Punts
			t.Logf("punts %v, io-wq workers %d", p, sn.IOWorkers)
			c.want(t, exp, p)
			if p[puntAlways] != 1 || sn.IOWorkers == 0 {
				t.Errorf("after a FLUSH: %d always-punted, %d io-wq workers; want 1 and "+
					"some", p[puntAlways], sn.IOWorkers)
			}
		})
	}
}

// sparseOn makes a sparse 8 MiB file in the first of dirs on the
// filesystem with the given magic, or skips.
func sparseOn(t *testing.T, magic int64, dirs ...string) string {
	t.Helper()
	for _, d := range dirs {
		var fs unix.Statfs_t
		if unix.Statfs(d, &fs) != nil || fs.Type != magic {
			continue
		}
		dir, err := os.MkdirTemp(d, "nbdring-punts")
		if err != nil {
			continue
		}
		t.Cleanup(func() { os.RemoveAll(dir) })
		path := filepath.Join(dir, "img")
		if err := os.WriteFile(path, nil, 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.Truncate(path, 8<<20); err != nil {
			t.Fatal(err)
		}
		return path
	}
	skipMissing(t, "fs", "no filesystem of type %#x among %v", magic, dirs)
	return ""
}

// loopDevice attaches a written (not sparse) 8 MiB file to a loop device
// with 4 KiB sectors, or skips.
func loopDevice(t *testing.T) string {
	t.Helper()
	if os.Geteuid() != 0 {
		skipMissing(t, "root", "loop devices need root")
	}
	path := filepath.Join(t.TempDir(), "backing")
	if err := os.WriteFile(path, make([]byte, 8<<20), 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command("losetup", "--find", "--show", "-b", "4096", path).Output()
	if err != nil {
		skipMissing(t, "loop", "no loop device here: %v", err)
	}
	dev := strings.TrimSpace(string(out))
	t.Cleanup(func() {
		if out, err := exec.Command("losetup", "-d", dev).CombinedOutput(); err != nil {
			t.Errorf("losetup -d %s: %v %s", dev, err, out)
		}
	})
	return dev
}
