package main

// End-to-end tests of the protocol features beyond plain READ/WRITE:
// metadata contexts and NBD_CMD_BLOCK_STATUS, sparse structured reads,
// WRITE_ZEROES and its flags, TRIM, CACHE, read-only refusals, bad input,
// and extended headers (proto-extended-headers.md), which neither libnbd
// 1.14 nor QEMU 7.2 speak.
//
// The cases live in testdata/protocases.py: libnbd where it can send the
// request, and a raw client built on testdata/nbdraw.py (structured
// replies, extended headers, option misuse) where it cannot. Real clients
// (nbdinfo --map, qemu-img map, qemu-io) are checked against the backing
// file's layout as lseek(SEEK_DATA/SEEK_HOLE) reports it.
//
// Run: go test -ldflags=-checklinkname=0 -run E2EProto -count=1 -v ./cmd/nbdring

import (
	"math/rand/v2"
	"os"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

const (
	e2eProtoMiB = 1 << 20
	e2eProtoGiB = 1 << 30
	// e2eProtoBigSize is the export of the extended-header cases: lengths
	// above 4 GiB need more than 4 GiB of export.
	e2eProtoBigSize = 8 * e2eProtoGiB
	// e2eProtoFSSlack allows for filesystem metadata in allocation counts:
	// punching a hole can split an extent and cost ext4 an index block.
	e2eProtoFSSlack = 64 << 10
)

// e2eProtoCase runs one case of testdata/protocases.py; args are the
// export name and any arguments the case takes. Exit status 3 skips.
func e2eProtoCase(t *testing.T, s *e2eServer, name, backing string, args ...string) {
	t.Helper()
	e2eScriptCase(t, "testdata/protocases.py", s, name, backing, args...)
}

// e2eProtoSparseFile makes a sparse file of size bytes with a MiB of
// random data at each offset in data (all multiples of 1 MiB), so its
// layout is known: data there, holes elsewhere.
func e2eProtoSparseFile(t *testing.T, dir, name string, size int64, data ...int64) string {
	t.Helper()
	path := e2eMakeFile(t, dir, name, size, 0)
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	buf := make([]byte, e2eProtoMiB)
	rng := rand.NewChaCha8([32]byte{byte(size >> 20), byte(len(data))})
	for _, off := range data {
		rng.Read(buf)
		if _, err := f.WriteAt(buf, off); err != nil {
			t.Fatal(err)
		}
	}
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}
	return path
}

// e2eProtoRun runs one case per subtest against one server.
func e2eProtoRun(t *testing.T, s *e2eServer, backing string, cases ...string) {
	t.Helper()
	for _, c := range cases {
		t.Run(c, func(t *testing.T) { e2eProtoCase(t, s, c, backing) })
	}
}

// TestE2EProtoMetaContext: LIST/SET_META_CONTEXT answers, option misuse
// through the raw client, and which SET_META_CONTEXT BLOCK_STATUS obeys.
func TestE2EProtoMetaContext(t *testing.T) {
	dir := t.TempDir()
	path := e2eProtoSparseFile(t, dir, "disk.img", 16*e2eProtoMiB, 2*e2eProtoMiB)
	other := e2eProtoSparseFile(t, dir, "other.img", 4*e2eProtoMiB, 0)
	s := e2eStart(t, path, "other="+other)
	e2eProtoRun(t, s, path, "meta-list", "meta-set", "meta-needs-structured",
		"meta-unknown-export", "meta-nul-name", "opt-repeat")
	// The last SET_META_CONTEXT counts, even a failed or empty one, and
	// only for the export it named.
	t.Run("meta-stale", func(t *testing.T) { e2eProtoCase(t, s, "meta-stale", path, "", "other") })
}

// TestE2EProtoBlockStatus: base:allocation on a sparse file (libnbd,
// nbdinfo --map, qemu-img map, the raw client) and on a loop device.
func TestE2EProtoBlockStatus(t *testing.T) {
	t.Run("file", func(t *testing.T) {
		e2eNeedTool(t, "nbdinfo", "qemu-img")
		const m = e2eProtoMiB
		path := e2eProtoSparseFile(t, t.TempDir(), "disk.img", 64*m,
			m, 4*m, 5*m, 6*m, 20*m, 63*m)
		s := e2eStart(t, path)
		e2eProtoRun(t, s, path, "bs-file", "bs-tools", "bs-no-context")
	})
	t.Run("device", func(t *testing.T) {
		e2eNeedTool(t, "nbdinfo")
		backing := e2eProtoSparseFile(t, t.TempDir(), "backing.img", 16*e2eProtoMiB,
			4*e2eProtoMiB)
		dev := e2eLoopDevice(t, backing, 512)
		s := e2eStart(t, dev)
		e2eProtoCase(t, s, "bs-device", dev)
	})
}

// TestE2EProtoSparseRead: structured READs send holes as OFFSET_HOLE, with
// DF one chunk; a fully allocated file gets holes once a TRIM made one.
func TestE2EProtoSparseRead(t *testing.T) {
	t.Run("sparse", func(t *testing.T) {
		const m = e2eProtoMiB
		path := e2eProtoSparseFile(t, t.TempDir(), "disk.img", 48*m, m, 3*m, 4*m, 10*m, 47*m)
		s := e2eStart(t, path)
		e2eProtoCase(t, s, "sparse-read", path)
	})
	t.Run("allocated", func(t *testing.T) {
		path := e2eMakeFile(t, t.TempDir(), "disk.img", 8*e2eProtoMiB, 21)
		s := e2eStart(t, path)
		e2eProtoCase(t, s, "sparse-after-trim", path)
	})
}

// e2eProtoAllocated is the number of bytes the file occupies on disk.
func e2eProtoAllocated(t *testing.T, path string) int64 {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		t.Fatal(err)
	}
	return st.Blocks * 512
}

// e2eProtoHoleAt reports whether lseek(SEEK_HOLE) finds a hole at off.
func e2eProtoHoleAt(t *testing.T, path string, off int64) bool {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h, err := unix.Seek(int(f.Fd()), off, unix.SEEK_HOLE)
	if err != nil {
		t.Fatalf("SEEK_HOLE %s at %d: %v", path, off, err)
	}
	return h == off
}

// e2eProtoQemuIO runs qemu-io commands and fails on any error it reports.
func e2eProtoQemuIO(t *testing.T, uri string, cmds ...string) string {
	t.Helper()
	args := []string{"-f", "raw"}
	for _, c := range cmds {
		args = append(args, "-c", c)
	}
	out := e2eRun(t, "qemu-io", append(args, uri)...)
	for _, bad := range []string{"Pattern verification failed", "error", "failed"} {
		if strings.Contains(out, bad) {
			t.Fatalf("qemu-io %v: %q in output:\n%s", cmds, bad, out)
		}
	}
	return out
}

// TestE2EProtoWriteZeroes: qemu-io zeroing (NO_HOLE unless -u), discard
// and reads; the flags nbdinfo sees; NO_HOLE, plain and FAST_ZERO zeroing
// checked against the file's allocation.
func TestE2EProtoWriteZeroes(t *testing.T) {
	e2eNeedTool(t, "qemu-io", "nbdinfo")
	const m = e2eProtoMiB
	dir := t.TempDir()
	path := e2eMakeFile(t, dir, "disk.img", 16*m, 22)
	want := e2eReadFile(t, path)
	s := e2eStart(t, path)

	info := e2eNbdinfo(t, s.uri(""))
	out := e2eRun(t, "nbdinfo", "--json", s.uri(""))
	for _, k := range []string{`"can_fast_zero": true`, `"can_df": true`, `"can_cache": true`,
		`"can_zero": true`, `"can_trim": true`, `"base:allocation"`} {
		if !strings.Contains(out, k) {
			t.Errorf("nbdinfo --json lacks %s:\n%s", k, out)
		}
	}
	if len(info.Exports) != 1 || !info.Exports[0].CanZero {
		t.Fatalf("nbdinfo: %+v", info)
	}

	e2eProtoQemuIO(t, s.uri(""), "write -P 0x5a 0 4M", "flush")
	copy(want, strings.Repeat("\x5a", 4*m))
	// qemu sends NBD_CMD_FLAG_NO_HOLE for write -z without -u: the range
	// stays allocated (st_blocks; ext4 shows unwritten extents to
	// SEEK_DATA as holes, so lseek cannot tell).
	before := e2eProtoAllocated(t, path)
	e2eProtoQemuIO(t, s.uri(""), "write -z 1M 1M", "read -P 0 1M 1M", "flush")
	clear(want[1*m : 2*m])
	if got := e2eProtoAllocated(t, path); got < before {
		t.Errorf("write -z (NO_HOLE): file allocation %d -> %d bytes, want unchanged",
			before, got)
	}
	// write -z -u (no NO_HOLE) and discard (TRIM) punch holes.
	out = e2eProtoQemuIO(t, s.uri(""), "write -z -u 2M 1M", "discard 3M 512k",
		"read -P 0 1M 2560k", "read -P 0x5a 0 1M", "read -P 0x5a 3584k 512k",
		"read -v 3M 16", "read -v 2M 16", "flush")
	clear(want[2*m : 3*m+m/2])
	for _, dump := range []string{"00300000:  00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00",
		"00200000:  00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00"} {
		if !strings.Contains(out, dump) {
			t.Errorf("qemu-io read -v: no %q in output:\n%s", dump, out)
		}
	}
	for _, off := range []int64{2 * m, 3 * m} {
		if !e2eProtoHoleAt(t, path, off) {
			t.Errorf("backing file: no hole at %d after write -z -u / discard", off)
		}
	}
	if got := e2eProtoAllocated(t, path); before-got < m+m/2-e2eProtoFSSlack {
		t.Errorf("write -z -u 1M + discard 512k freed %d bytes, want about %d", before-got,
			m+m/2)
	}
	e2eSameBytes(t, "backing file after qemu-io", e2eReadFile(t, path), want)

	fresh := e2eMakeFile(t, dir, "fresh.img", 16*m, 23)
	s2 := e2eStart(t, fresh)
	e2eProtoRun(t, s2, fresh, "zero-flags", "fast-zero")
}

// TestE2EProtoTrim: TRIM punches holes that read back as zeros.
func TestE2EProtoTrim(t *testing.T) {
	path := e2eMakeFile(t, t.TempDir(), "disk.img", 8*e2eProtoMiB, 24)
	s := e2eStart(t, path)
	e2eProtoCase(t, s, "trim", path)
}

// TestE2EProtoCache: NBD_CMD_CACHE succeeds and changes nothing.
func TestE2EProtoCache(t *testing.T) {
	path := e2eProtoSparseFile(t, t.TempDir(), "disk.img", 8*e2eProtoMiB, e2eProtoMiB)
	s := e2eStart(t, path)
	e2eProtoCase(t, s, "cache", path)
}

// TestE2EProtoReadOnly: with -readonly every kind of write is EPERM over
// simple, structured and extended replies; READ, BLOCK_STATUS and CACHE
// work.
func TestE2EProtoReadOnly(t *testing.T) {
	path := e2eProtoSparseFile(t, t.TempDir(), "disk.img", 8*e2eProtoMiB, e2eProtoMiB)
	s := e2eStart(t, "-readonly", path)
	e2eProtoCase(t, s, "readonly", path)
}

// TestE2EProtoBadInput: flags a command does not take, zero lengths,
// refused WRITE payloads, out-of-range CACHE and BLOCK_STATUS: EINVAL (or
// ENOSPC) and the connection goes on.
func TestE2EProtoBadInput(t *testing.T) {
	path := e2eMakeFile(t, t.TempDir(), "disk.img", 16*e2eProtoMiB, 25)
	s := e2eStart(t, path)
	e2eProtoRun(t, s, path, "bad-flags", "bad-df-simple", "zero-length", "write-drained",
		"out-of-range", "fast-zero")
}

// TestE2EProtoExtended: NBD_OPT_EXTENDED_HEADERS with the raw client on an
// 8 GiB sparse export (data in its first and its last GiB): 32-byte
// requests and replies, 64-bit WRITE_ZEROES, TRIM and BLOCK_STATUS
// lengths, READ chunks, and misuse.
func TestE2EProtoExtended(t *testing.T) {
	for _, c := range []string{"ext-basic", "ext-block-status", "ext-big-zero", "ext-big-trim",
		"ext-write-no-payload-len", "ext-export-name"} {
		t.Run(c, func(t *testing.T) {
			path := e2eProtoSparseFile(t, t.TempDir(), "big.img", e2eProtoBigSize,
				0, 7*e2eProtoGiB)
			s := e2eStart(t, path)
			e2eProtoCase(t, s, c, path)
		})
	}
}
