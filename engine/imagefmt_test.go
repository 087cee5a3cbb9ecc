package engine

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

// TestImageFormatWarning: a qcow2 image (made by qemu-img) and the other
// container headers are named; raw images, zeros and random data are not.
func TestImageFormatWarning(t *testing.T) {
	dir := t.TempDir()
	cases := map[string][]byte{
		"raw-zeros": make([]byte, 1<<20),
		"raw-data":  bytes.Repeat([]byte("nbdring raw data "), 1<<16),
		"vhdx":      append([]byte("vhdxfile"), make([]byte, 1<<20)...),
		"luks":      append([]byte("LUKS\xba\xbe"), make([]byte, 1<<20)...),
		"vdi-like":  append([]byte("<<< not a disk image >>>"), make([]byte, 1<<20)...),
	}
	want := map[string]string{"vhdx": "VHDX"} // luks: served raw on purpose
	if _, err := exec.LookPath("qemu-img"); err == nil {
		p := filepath.Join(dir, "qcow2")
		if out, err := exec.Command("qemu-img", "create", "-f", "qcow2", p, "1M").
			CombinedOutput(); err != nil {
			t.Fatalf("qemu-img create: %v: %s", err, out)
		}
		want["qcow2"] = "qcow2 (or qcow)"
	} else {
		t.Log("qemu-img not installed: the qcow2 case is skipped")
	}
	for name, data := range cases {
		if err := os.WriteFile(filepath.Join(dir, name), data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	ents, _ := os.ReadDir(dir)
	for _, ent := range ents {
		exp, err := OpenExport(ExportConfig{Path: filepath.Join(dir, ent.Name())})
		if err != nil {
			t.Fatalf("%s: %v", ent.Name(), err)
		}
		got, err := exp.imageFormat()
		exp.Close()
		if err != nil || got != want[ent.Name()] {
			t.Errorf("%s: format %q (%v), want %q", ent.Name(), got, err, want[ent.Name()])
		}
	}
}
