package engine

import (
	"time"

	"github.com/nbdring/nbdring/wire"
)

// Every bound of the engine lives here, with the reason for its value.
const (
	// blockSizePreferred is advertised as NBD_INFO_BLOCK_SIZE's preferred
	// size: the page size, below which clients pay read-modify-write.
	blockSizePreferred = 4096
	// directIOAlignMax: alignments above a page are refused at start; no
	// real device needs more and the arena's smallest buffer is a page.
	directIOAlignMax = 4096

	// arenaBlockSize is the arena's smallest buffer: a page, so every
	// buffer is aligned for O_DIRECT and for registration.
	arenaBlockSize = 4096
	// arenaSizeDefault is the largest arena a shard gets from the memory
	// budget (more only through -arena-mib): enough for 32 MiB requests and
	// for 4k QD32 on hundreds of connections.
	arenaSizeDefault = 128 << 20
	// arenaPerBlockMax: a shard serves requests up to a quarter of its
	// arena. One unaligned WRITE of n bytes needs its span (n and a block,
	// which the buddy allocator rounds to 2n) and its payload (n) at once:
	// 3n, and the arena is a power of two. A smaller share could never
	// serve it and the request would wait forever (FuzzShard found that
	// with 32 MiB requests in a 64 MiB arena).
	arenaPerBlockMax = 4
	// arenaSizeMin: requests up to 1 MiB, which every client splits its
	// I/O into when told (qemu and libnbd honour the advertised maximum).
	arenaSizeMin = 4 << 20
	// memoryDefault is the buffer memory all shards share unless -memory-mib
	// says otherwise: 128 MiB a shard on up to 8 shards, and a share of the
	// same 1 GiB beyond that, so a 64-core host pins 1 GiB, not 8.
	memoryDefault = 1 << 30
	// maxConnsDefault bounds connections in all unless -max-connections
	// says otherwise; each shard's metadata is sized for its share.
	maxConnsDefault = 256
	// recvBufSize is the most one receive takes: many request headers and
	// small WRITE payloads per recv (larger payloads are received straight
	// into their data buffer); also a TLS connection's plaintext staging.
	recvBufSize = 64 << 10
	// recvPoolBufSize is a receive pool buffer (recvpool.go): a page, so a
	// receive of a few headers takes one and a bundle of 64 KiB sixteen.
	recvPoolBufSize = 4096
	// recvPoolPerConn: pool buffers per connection of the shard. Buffers
	// are held only between a receive and its parse, so a quarter of what
	// a 64 KiB staging buffer each would take serves them all at once.
	recvPoolPerConn = 4
	// recvPoolMin is the smallest pool: one whole 64 KiB receive.
	recvPoolMin = recvBufSize / recvPoolBufSize
	// recvPoolMax bounds a pool at 16 MiB (the ring holds up to 32768).
	recvPoolMax = 4096
	// recvPoolGroup is the pool's buffer group id in its shard's ring.
	recvPoolGroup = 0
	// carryMax is a connection's carry: a request header split across
	// pool buffers, or left incomplete, is gathered there.
	carryMax = wire.ExtRequestSize
	// recvDirectMin: a WRITE payload with at least this much still to come
	// is received straight into its data buffer rather than copied through
	// the receive pool.
	recvDirectMin = 16 << 10

	// connBufShare: one connection's requests may hold at most this share
	// of its shard's arena (sizing.connBuf), so a client that stops reading
	// replies holds a quarter at most. A single request may exceed it when
	// it is the connection's only one (an unaligned write of the largest
	// size needs three quarters of the arena).
	connBufShare = 4
	// arenaReserveShare sets the tenants' rule (sizing.go, slot.go): the
	// arena is split, in bytes counted, into a shared part (all but
	// 1/arenaReserveShare) and a reserve. Every request is served from the
	// shared part while it has room, within its connection's connBuf. A
	// request that finds the shared part full is served from the reserve
	// only when it is the only one its connection holds, and only up to
	// reserve/connections bytes (sizing.resvReq). Each connection so holds
	// at most one reserve request of at most its share, and the reserve
	// can never be overdrawn: whatever the other connections hold and do
	// not let go of (replies nobody reads, payloads nobody sends), a
	// connection with nothing in flight (a new one, or a QD1 client
	// between requests) always gets its next request of up to resvReq
	// bytes. Larger ones wait for the shared part, which -io-timeout
	// frees of stalled connections. A quarter keeps the shared part above
	// what one connection at QD8 1 MiB or QD32 4 KiB needs by far (8 MiB
	// of 96 at the default arena), and three quarters is exactly the
	// largest request (arenaPerBlockMax). The count is in bytes: the
	// buddy allocator can still refuse a reserve request larger than a
	// page to fragmentation; it then waits for the next free.
	arenaReserveShare = 4

	// slotsPerShardMax bounds the shared slots of one shard (requests in
	// flight need a slot each); with 128 per connection that is 8 busy
	// connections at full depth, more at usual depths. A shard with fewer
	// connections gets 128 shared slots for each. Each connection has one
	// more slot in reserve (sizing.slots), taken only by a request that
	// is its connection's only one: as with the arena's reserve, a
	// connection with nothing in flight always finds a slot.
	slotsPerShardMax = 1024
	// slotsMax is the most slots a shard has: shared and reserved.
	slotsMax = slotsPerShardMax + connsPerShardMax
	// inflightPerConnMax bounds one connection's requests in flight so it
	// cannot take every slot of its shard; clients rarely exceed 64.
	inflightPerConnMax = 128
	// connsPerShardMax bounds connections per shard (-max-connections is
	// spread over the shards); each holds a 64 KiB receive buffer and a
	// send vector.
	connsPerShardMax = 256
	// iovecsPerSendMax bounds one sendmsg's vector: up to 63 replies
	// (header + data each) gathered into one syscall; far below IOV_MAX.
	iovecsPerSendMax = 128
	// sendZCMin: a batch of replies with at least this many bytes goes out
	// zero-copy (SENDMSG_ZC) on TCP. Below it, pinning the pages and the
	// extra notification cost more than the copy saves (the kernel's
	// MSG_ZEROCOPY notes put the break-even near 10 KiB); 64 KiB keeps
	// 4 KiB traffic on the copying path. Not measured here: on loopback the
	// kernel always copies.
	sendZCMin = 64 << 10
	// zcCopiedRunMax: after this many consecutive zero-copy sends whose
	// notification says the kernel copied anyway (IORING_NOTIF_USAGE_ZC_COPIED),
	// a connection sends copied from then on. The kernel copies when the
	// route's device cannot send from user pages (loopback, and NICs without
	// scatter-gather or checksum offload): a property of the route, not of
	// one send, so a run means every later send would copy too, after
	// pinning pages and costing a notification each. One copied send among
	// zero-copy ones happens on real NICs (a retransmit clones the skb); 8
	// in a row tolerates that and wastes at most 8 notifications per
	// connection where zero-copy cannot work.
	zcCopiedRunMax = 8
	// replyHeaderSize is each slot's reply header space: a sparse READ's
	// chunk headers (readSegmentsMax of at most 44 bytes) or an ERROR chunk
	// with its message (wire.ReplyHeaderMax).
	replyHeaderSize = 256
	// readSegmentsMax bounds the chunks of one sparse READ reply; the
	// segment where it is reached runs to the end as data. Four covers a
	// hole between data (or data between holes) with room to spare.
	readSegmentsMax = 4
	// replyIovecsMax: a sparse READ's header and data per segment.
	replyIovecsMax = 2 * readSegmentsMax
	// blockStatusExtentsMax bounds the descriptors of one BLOCK_STATUS
	// reply (proto.md: SHOULD NOT exceed 2^20); 4096 extended descriptors
	// are a 64 KiB buffer, and clients ask again for the rest.
	blockStatusExtentsMax = 4096

	// batchWaitMax bounds -batch-wait-us: a wait for a batch of completions
	// longer than a millisecond would be latency no batch repays.
	batchWaitMax = 1000
	// batchWaitNr: with -batch-wait-us, a wait returns once this many
	// completions are there (or fewer, once the time is up); 8 took
	// completions per enter from 3.4 to 8 at 4k QD32 here.
	batchWaitNr = 8
	// pollUsMax bounds -poll-us: a spin pays off when the next completion
	// comes sooner than a sleep and wake-up would return (a client at queue
	// depth 1 answers in tens of microseconds; a wake-up costs a few);
	// spinning for longer than a millisecond, the ring's hold, only burns
	// the core while waiting for what a sleep catches as well.
	pollUsMax = 1000
	// controlProcs: Ps beyond one per shard for the rest of the process
	// (procs.go): accept and handshakes, and the garbage collector's
	// worker, which takes a quarter of the Ps while it marks.
	controlProcs = 2
	// reapBatch is how many completions one loop iteration handles at most.
	reapBatch = 256

	// zeroWriteMax is the largest write of zeros one operation issues, for
	// WRITE_ZEROES on a filesystem that cannot zero with fallocate; a
	// request loops over it. Its buffer is mapped read-only per shard.
	zeroWriteMax = 1 << 20

	// rangeLocksMax bounds the spans held in an export's range-lock table
	// (rangeLocks): read-modify-writes, and, while one is active or
	// waiting, the other write-class requests. A request that finds the
	// table full waits like one that conflicts; 64 spans keep a shard's
	// scan of the table under a microsecond, and writes hold them for one
	// device operation.
	rangeLocksMax = 64
	// rangeLockStripes: counters of aligned write-class requests in flight
	// per export (rangeLocks.fast), one cache line each, shard i using
	// stripe i mod 64: shards share a line only beyond 64 of them.
	rangeLockStripes = 64
	// inlineSlotsMax: an inline export's I/O is done by the shard only while
	// the shard has at most this many requests in flight; deeper, io-wq's
	// threads do it in parallel (4k random reads from zram at QD32 measured
	// 52-59k IOPS inline against 69-108k through io-wq on this machine).
	inlineSlotsMax = 2
	// inlineProbeReads: reads timed at start to decide Export.inline.
	inlineProbeReads = 16
	// handshakesMax bounds unfinished handshakes in all (one goroutine
	// each, on the control plane, before a connection joins a shard); a
	// connection past it is closed at once.
	handshakesMax = 64
	// handshakesPerAddrMax bounds one TCP source address's unfinished
	// handshakes, so a host holding half-open connections uses at most
	// an eighth of handshakesMax and cannot keep another host out. Real
	// clients open at most a few at once (nbdcopy and qemu: 4 to 8).
	handshakesPerAddrMax = 8
)

// Time bounds.
const (
	// handshakeTimeout bounds a client's whole option phase, the TLS
	// handshake included: a client that stalls cannot hold a handshake
	// slot for longer. 10 s as qemu-nbd since CVE-2024-7409; a real
	// client needs milliseconds.
	handshakeTimeout = 10 * time.Second
	// refusalLogEvery: refused connections (address not allowed, too many
	// handshakes) are logged once per interval with a count of the rest,
	// so a flood cannot flood the log.
	refusalLogEvery = time.Second
	// stopGrace is how long a shutdown waits for connections to finish the
	// requests they have sent (new ones get ESHUTDOWN) before cutting
	// those still open: a client not reading its replies. Long enough for
	// a 32 MiB reply on a slow link. A connection halfway through a WRITE
	// payload is cut at once (that write was never acknowledged, so
	// nothing acknowledged is lost): waiting on a client that stopped
	// sending would hold the shutdown for the whole grace.
	stopGrace = 5 * time.Second
	// stopCutWait bounds the wait, after cutting, for device operations
	// already in flight (the kernel cannot cancel O_DIRECT I/O).
	stopCutWait = 10 * time.Second
	// deviceErrorLogEvery: a failing device fails every request; one log
	// line per request would bury the log, so a shard logs one a second
	// and counts the rest.
	deviceErrorLogEvery = time.Second
	// inlineLatencyMax: an export without RWF_NOWAIT whose median read
	// takes at most this long is read and written by the shards themselves
	// (Export.inline): RAM-backed devices (zram, tmpfs) answer a 4 KiB read
	// in a few microseconds, below the cost of handing it to an io-wq thread
	// and back; a device this slow or slower would stall its shard instead.
	inlineLatencyMax = 50 * time.Microsecond
	// waitHold bounds how long a shard waits for a completion as a raw
	// system call, keeping its P (ring.Ring.enterOnce), before it waits the
	// ordinary way: above the gap between requests of a client at queue
	// depth 1 on a LAN (tens of microseconds), so those waits never hand
	// the P over, and short enough that anything starved of a P (a process
	// with GOMAXPROCS lowered under the shards) waits a millisecond at most.
	waitHold = time.Millisecond
	// IOTimeoutDefault is -io-timeout's default: a connection the server
	// waits on (replies queued that it does not read, a WRITE payload or
	// request header it does not finish) and that makes no progress for
	// this long is cut. 30 s is far beyond any pause of a live client (a
	// TCP retransmission gives up on a dead path within seconds) and
	// short enough that a stalled tenant does not hold its buffers for
	// long. An idle connection with nothing queued is never cut.
	IOTimeoutDefault = 30 * time.Second
	// ioTickMax: a shard looks for stalled connections every quarter of
	// -io-timeout, at most this long apart, so a cut comes between one and
	// 1.25 timeouts after the last progress; one timer per shard, never a
	// cost per request.
	ioTickMax = time.Second
	// ioTickMin bounds how often the shard wakes for it when -io-timeout
	// is tiny (tests).
	ioTickMin = 10 * time.Millisecond
	// keepAliveIdle, keepAliveInterval and keepAliveCount: TCP keepalive on
	// every accepted socket, so a peer that vanished (host down, cable out)
	// is found within 30+3*10 = 60 s even when its connection is idle,
	// which -io-timeout never cuts. The interval and count are Linux's
	// and Go's usual ratio; the idle time is twice Go's default of 15 s,
	// since a probe of each of hundreds of idle connections costs little
	// but is still traffic.
	keepAliveIdle     = 30 * time.Second
	keepAliveInterval = 10 * time.Second
	keepAliveCount    = 3
	// rangeLockRetry: how soon a request waiting for another request's
	// read-modify-write span looks again; such waits last one device write.
	rangeLockRetry = 100 * time.Microsecond
)

// ArenaSizeMin is the smallest arena per shard New accepts (arenaSizeMin,
// exported): cmd checks -arena-mib against it before any shard starts.
const ArenaSizeMin = arenaSizeMin

// Compile-time checks of relations the code relies on.
var (
	_ [arenaPerBlockMax - 3]struct{}
	// The smallest reserve share is a page (sizing.resvReq).
	_ [arenaSizeMin/arenaReserveShare/connsPerShardMax - arenaBlockSize]struct{}
	_ [recvBufSize - recvDirectMin]struct{}
	_ [carryMax - wire.RequestSize]struct{}
	_ [1<<16 - recvPoolMax]struct{}     // buffer ids are 16 bits
	_ [1<<16 - recvPoolBufSize]struct{} // so are a seg's offsets
	_ [replyHeaderSize - wire.ReplyHeaderMax]struct{}
	_ [replyHeaderSize - readSegmentsMax*(wire.ExtReplySize+12)]struct{}
	_ [iovecsPerSendMax - replyIovecsMax]struct{}
	_ [0]struct{} = [zeroWriteMax % directIOAlignMax]struct{}{}
)

// TLS buffers, mapped per TLS connection at hand-off (engine/tls.go).
const (
	// tlsRecordPlainMax is TLS's largest record plaintext (RFC 8446 5.1,
	// RFC 5246 6.2.1): replies are gathered into records this full.
	tlsRecordPlainMax = 16 << 10
	// tlsRecordCipherMax bounds one sealed record of tlsRecordPlainMax
	// bytes: 5 bytes of header, and 256 of expansion at most in TLS 1.3
	// (RFC 8446 5.2) and far less with the AEADs of TLS 1.2.
	tlsRecordCipherMax = tlsRecordPlainMax + 5 + 256
	// tlsInBufSize is a TLS connection's ciphertext receive buffer: four
	// full records per recv.
	tlsInBufSize = 64 << 10
	// tlsOutBufSize is the ciphertext one send carries at most: 15 full
	// records, so a large READ reply goes out in 256 KiB sends and a
	// slot's bytes are copied out of it in one pass of the queue.
	tlsOutBufSize = 256 << 10
	// tlsOutReserve is room for what crypto/tls writes by itself while
	// the shard reads (an alert, a KeyUpdate answer: tens of bytes).
	tlsOutReserve = 4 << 10
)

// Reload and QoS (reload.go, qos.go).
const (
	// exportsMax bounds the export names open at once (served, or removed
	// and still draining): each shard sizes its per-export counters for
	// this many at start (248 bytes each, 62 KiB per shard), so a reload
	// never allocates on a shard. nbd-server and qemu-nbd serve one to a
	// few dozen; 256 is room for a host's worth of VM disks.
	exportsMax = 256
	// qosBurst: how far ahead of its rate an idle export may run (a tenth
	// of a second of its max-iops or max-bandwidth, at least one request),
	// so a client that pauses is not penalised and one that does not is
	// held to the rate within 10% over any second.
	qosBurst = 100 * time.Millisecond
	// removeGrace: how long connections of an export a reload removed may
	// take to finish what they sent before they are cut (as stopGrace for
	// the whole server).
	removeGrace = stopGrace
	// retirePoll: how often a retired export checks whether its last
	// connection has gone, so it can be synced and closed.
	retirePoll = 50 * time.Millisecond
)
