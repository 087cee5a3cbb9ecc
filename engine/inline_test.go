package engine

import (
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"
)

// TestInlineProbe: an export whose kernel path cannot start I/O without
// blocking (tmpfs: RWF_NOWAIT is refused) and that answers in
// microseconds is done inline; one that can (ext4) stays on the ring; the
// modes on and off override the probe.
func TestInlineProbe(t *testing.T) {
	for _, c := range []struct {
		dir   string
		magic int64
		want  bool
	}{{"/dev/shm", unix.TMPFS_MAGIC, true}, {"/work", unix.EXT4_SUPER_MAGIC, false}} {
		var fs unix.Statfs_t
		if err := unix.Statfs(c.dir, &fs); err != nil || fs.Type != c.magic {
			t.Logf("%s: not the filesystem this case needs; skipped", c.dir)
			continue
		}
		dir, err := os.MkdirTemp(c.dir, "nbdring-inline")
		if err != nil {
			t.Fatal(err)
		}
		defer os.RemoveAll(dir)
		path := filepath.Join(dir, "img")
		if err := os.WriteFile(path, make([]byte, 1<<20), 0o644); err != nil {
			t.Fatal(err)
		}
		for _, m := range []struct {
			mode InlineMode
			want bool
		}{{InlineAuto, c.want}, {InlineOn, true}, {InlineOff, false}} {
			exp, err := OpenExport(ExportConfig{Path: path, Inline: m.mode})
			if err != nil {
				t.Fatal(err)
			}
			if exp.Inline() != m.want {
				t.Errorf("%s, mode %d: inline %v, want %v", c.dir, m.mode, exp.Inline(), m.want)
			}
			exp.Close()
		}
	}
}
