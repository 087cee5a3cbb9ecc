package engine

import (
	"bytes"
	"fmt"

	"golang.org/x/sys/unix"
)

// nbdring serves raw images: the client sees the export's bytes as they
// are. An image in a container format (qcow2 and the like) would reach
// the client as that container, not as the disk inside it, which is
// almost never what the operator meant; imageFormat names the format
// from the export's first block so start-up can say so.

// imageMagics are headers at offset 0 of container formats (from each
// format's published specification).
var imageMagics = []struct {
	magic []byte
	name  string
}{
	{[]byte("QFI\xfb"), "qcow2 (or qcow)"},
	{[]byte("QED\x00"), "QED"},
	{[]byte("KDMV"), "VMDK (sparse extent)"},
	{[]byte("# Disk DescriptorFile"), "VMDK (descriptor)"},
	{[]byte("vhdxfile"), "VHDX"},
	{[]byte("conectix"), "VHD (dynamic)"},
	{[]byte("<<< "), "VDI"},
}

// imageFormat returns the container format the export's first block
// announces, or "" for anything else (raw data, a partition table, a
// filesystem, zeros, a LUKS volume: served raw, the client decrypts it).
func (e *Export) imageFormat() (string, error) {
	n := alignDown(min(uint64(directIOAlignMax), e.size), uint64(e.align))
	if n == 0 {
		return "", nil
	}
	buf, err := unix.Mmap(-1, 0, directIOAlignMax, unix.PROT_READ|unix.PROT_WRITE,
		unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		return "", fmt.Errorf("read the first block of %s: %w", e.Path, err)
	}
	defer unix.Munmap(buf)
	if _, err := unix.Pread(e.fd, buf[:n], 0); err != nil {
		return "", fmt.Errorf("read the first block of %s: %w", e.Path, err)
	}
	for _, m := range imageMagics {
		if bytes.HasPrefix(buf[:n], m.magic) {
			if m.name == "VDI" && !bytes.Contains(buf[:n], []byte("VirtualBox Disk Image")) {
				continue
			}
			return m.name, nil
		}
	}
	return "", nil
}
