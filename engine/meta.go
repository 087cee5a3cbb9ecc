package engine

import (
	"fmt"
	"unsafe"

	"golang.org/x/sys/unix"
)

// shardMem is a shard's metadata: one anonymous mapping made at start,
// outside the Go heap (so the kernel may hold its addresses across a
// completion), laid out as typed regions rather than by offsets:
//
//	hdrs   [slots]replyHeader   reply headers, one per slot
//	conns  [conns]connMem       send vector
//	words  shardWords           the eventfd word and the timer's timespec
type shardMem struct {
	raw   []byte
	hdrs  []replyHeader
	conns []connMem
	words *shardWords
}

// replyHeader is a slot's space for the reply's headers.
type replyHeader [replyHeaderSize]byte

// connMem is one connection's memory the kernel reads (what it receives
// into is the shard's pool, recvpool.go).
type connMem struct {
	msg unix.Msghdr                  // the connection's one sendmsg
	iov [iovecsPerSendMax]unix.Iovec // its vector
}

// shardWords are the shard's own kernel-visible words.
type shardWords struct {
	wake    [8]byte       // the eventfd counter, read on every wake-up
	timeout unix.Timespec // the range-lock retry timer
	tick    unix.Timespec // the -io-timeout tick (stall.go)
}

// shardMemSize is the bytes one shard maps for slots slots and conns
// connections (logged at start, with the arena, as the pinned total).
func shardMemSize(slots, conns int) int {
	return slots*int(unsafe.Sizeof(replyHeader{})) + conns*int(unsafe.Sizeof(connMem{})) +
		int(unsafe.Sizeof(shardWords{}))
}

func newShardMem(slots, conns int) (*shardMem, error) {
	raw, err := unix.Mmap(-1, 0, shardMemSize(slots, conns), unix.PROT_READ|unix.PROT_WRITE,
		unix.MAP_PRIVATE|unix.MAP_ANONYMOUS|unix.MAP_POPULATE)
	if err != nil {
		return nil, fmt.Errorf("map %d KiB of shard metadata: %w (lower -shards)",
			shardMemSize(slots, conns)>>10, err)
	}
	hdrBytes := slots * int(unsafe.Sizeof(replyHeader{}))
	connBytes := conns * int(unsafe.Sizeof(connMem{}))
	m := &shardMem{raw: raw}
	m.hdrs = unsafe.Slice((*replyHeader)(unsafe.Pointer(&raw[0])), slots)
	m.conns = unsafe.Slice((*connMem)(unsafe.Pointer(&raw[hdrBytes])), conns)
	m.words = (*shardWords)(unsafe.Pointer(&raw[hdrBytes+connBytes]))
	return m, nil
}

func (m *shardMem) close() {
	if m != nil {
		_ = unix.Munmap(m.raw)
	}
}

// Every region starts where its fields' alignment allows (the mapping
// itself is page-aligned).
var (
	_ [0]struct{} = [unsafe.Sizeof(replyHeader{}) % unsafe.Alignof(connMem{})]struct{}{}
	_ [0]struct{} = [unsafe.Sizeof(connMem{}) % unsafe.Alignof(shardWords{})]struct{}{}
)
