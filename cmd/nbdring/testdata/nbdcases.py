"""Protocol cases for the nbdring end-to-end tests.

Usage: /usr/bin/python3 nbdcases.py CASE SOCKET BACKING_FILE [EXPORT_NAME]

Each case talks to the server on the unix SOCKET (default export), checks
what it gets back against the spec and against BACKING_FILE (the file the
export serves), prints "PASS CASE" and exits 0. A failed check raises and
exits non-zero with the reason; a case that does not apply prints
"SKIP reason" and exits 3.

libnbd (1.14) is used where it can be told to send the request
(set_strict_mode(0) turns off its client-side checks, so every error seen
here came from the server); nbdraw.Conn speaks the protocol by hand where
libnbd cannot.
"""

import errno
import os
import random
import socket
import struct
import sys
import time

import nbd

import nbdraw

MiB = 1 << 20
PAYLOAD_MAX = 32 * MiB  # proto.md "Size constraints": 2^25


class Skip(Exception):
    pass


EXPORT = ""  # export name the cases use; argv[4] if given


def raw(sock, **kw):
    return nbdraw.Conn(sock, name=EXPORT, **kw)


def connect(sock, strict=False, request_block_size=True, name=None):
    h = nbd.NBD()
    if not request_block_size:
        h.set_request_block_size(False)
    if not strict:
        h.set_strict_mode(0)
    h.set_export_name(EXPORT if name is None else name)
    h.connect_unix(sock)
    return h


def expect_err(what, want, fn, *args, **kw):
    """Calls fn and asserts it fails with errno want (the server's error)."""
    try:
        fn(*args, **kw)
    except nbd.Error as e:
        if e.errnum != want:
            raise AssertionError("%s: got errno %s (%s), want %s" % (
                what, errno.errorcode.get(e.errnum, e.errnum), e.string,
                errno.errorcode[want]))
        return
    raise AssertionError("%s: succeeded, want %s" % (what, errno.errorcode[want]))


def file_read(path, offset, length):
    with open(path, "rb") as f:
        f.seek(offset)
        return f.read(length)


def check_eq(what, got, want):
    if got != want:
        first = next((i for i in range(min(len(got), len(want))) if got[i] != want[i]),
                     min(len(got), len(want)))
        raise AssertionError("%s: data differs (len got %d want %d, first diff at %d)" % (
            what, len(got), len(want), first))


def raw_err_name(e):
    names = {0: "OK", nbdraw.EPERM: "EPERM", nbdraw.EIO: "EIO", nbdraw.EINVAL: "EINVAL",
             nbdraw.ENOSPC: "ENOSPC", nbdraw.ENOMEM: "ENOMEM",
             nbdraw.EOVERFLOW: "EOVERFLOW", nbdraw.ENOTSUP: "ENOTSUP",
             nbdraw.ESHUTDOWN: "ESHUTDOWN"}
    return names.get(e, str(e))


def raw_expect(what, got, want):
    if got != want:
        raise AssertionError("%s: got %s, want %s" % (what, raw_err_name(got), raw_err_name(want)))


def still_works(sock, backing, what):
    """A fresh connection can write, flush and read back."""
    h = connect(sock, strict=True)
    data = os.urandom(4096)
    off = h.get_size() - 8192
    h.pwrite(data, off)
    h.flush()
    check_eq("%s: fresh connection read-back" % what, h.pread(4096, off), data)
    check_eq("%s: backing file after flush" % what, file_read(backing, off, 4096), data)
    h.shutdown()


# --- handshake --------------------------------------------------------

def case_handshake(sock, backing):
    """Greeting and OPT_GO replies, byte by byte."""
    c = raw(sock, block_size=True)
    want_h = nbdraw.FLAG_FIXED_NEWSTYLE | nbdraw.FLAG_NO_ZEROES
    if c.hflags != want_h:
        raise AssertionError("handshake flags %#x, want %#x" % (c.hflags, want_h))
    want_tx = (nbdraw.TX_HAS_FLAGS | nbdraw.TX_SEND_FLUSH | nbdraw.TX_SEND_FUA |
               nbdraw.TX_SEND_TRIM | nbdraw.TX_SEND_WRITE_ZEROES | nbdraw.TX_CAN_MULTI_CONN)
    if c.tx_flags & want_tx != want_tx or c.tx_flags & nbdraw.TX_READ_ONLY:
        raise AssertionError("transmission flags %#x, want %#x set and READ_ONLY clear"
                             % (c.tx_flags, want_tx))
    if c.size != os.path.getsize(backing) and not backing.startswith("/dev/"):
        raise AssertionError("size %d, backing file %d" % (c.size, os.path.getsize(backing)))
    if c.block is None:
        raise AssertionError("no NBD_INFO_BLOCK_SIZE in reply to OPT_GO that asked for it")
    (bmin, bpref, bmax) = c.block
    if bmin & (bmin - 1) or not 1 <= bmin <= 4096:
        raise AssertionError("minimum block %d: want a power of two in [1, 4096]" % bmin)
    if bpref & (bpref - 1) or bpref < 4096 or bpref < bmin:
        raise AssertionError("preferred block %d: want a power of two >= 4096" % bpref)
    if bmax != PAYLOAD_MAX:
        raise AssertionError("maximum payload %d, want %d" % (bmax, PAYLOAD_MAX))
    check_eq("READ after raw handshake", c.read(0, 4096), file_read(backing, 0, 4096))
    c.disc()
    c.wait_closed()
    # NBD_OPT_EXPORT_NAME: no info replies, size and flags straight away.
    c = raw(sock, export_name=True)
    if c.size is None or c.tx_flags & want_tx != want_tx:
        raise AssertionError("EXPORT_NAME: size %r flags %r" % (c.size, c.tx_flags))
    check_eq("READ after EXPORT_NAME", c.read(4096, 4096), file_read(backing, 4096, 4096))
    c.disc()
    c.wait_closed()


def case_unknown_export(sock, backing):
    """OPT_GO for a name the server does not have is refused with
    NBD_REP_ERR_UNKNOWN; the client may then pick a good name."""
    c = raw(sock, go=False)
    try:
        c.go("no-such-export")
    except nbdraw.OptError as e:
        if e.rtype != nbdraw.REP_ERR_UNKNOWN:
            raise AssertionError("unknown export: reply type %#x, want NBD_REP_ERR_UNKNOWN (%#x)"
                                 % (e.rtype, nbdraw.REP_ERR_UNKNOWN))
    else:
        raise AssertionError("OPT_GO for an unknown export was accepted")
    c.go(EXPORT)
    check_eq("READ after retrying OPT_GO", c.read(0, 4096), file_read(backing, 0, 4096))
    c.disc()
    c.wait_closed()
    # EXPORT_NAME has no error reply: the server must hang up.
    c = raw(sock, go=False)
    c.send(struct.pack(">QII", nbdraw.IHAVEOPT, nbdraw.OPT_EXPORT_NAME, 4) + b"nope")
    try:
        rest = c.wait_closed()
    except socket.timeout:
        raise AssertionError("EXPORT_NAME for an unknown export: server did not hang up")
    if rest:
        raise AssertionError("EXPORT_NAME for an unknown export: got %r, want a hang-up" % rest)


# --- out of range -------------------------------------------------------

def case_read_oob(sock, backing):
    h = connect(sock)
    size = h.get_size()
    expect_err("READ straddling the end", errno.EINVAL, h.pread, 8192, size - 4096)
    expect_err("READ at the end", errno.EINVAL, h.pread, 4096, size)
    expect_err("READ far past the end", errno.EINVAL, h.pread, 4096, size + (1 << 30))
    expect_err("READ offset 2^63", errno.EINVAL, h.pread, 4096, 1 << 63)
    check_eq("READ of the last block after errors", h.pread(4096, size - 4096),
             file_read(backing, size - 4096, 4096))


def case_trim_oob(sock, backing):
    h = connect(sock)
    size = h.get_size()
    expect_err("TRIM straddling the end", errno.EINVAL, h.trim, 8192, size - 4096)
    expect_err("TRIM at the end", errno.EINVAL, h.trim, 4096, size)
    expect_err("TRIM offset+length wrapping 2^64", errno.EINVAL, h.trim, 8192,
               (1 << 64) - 4096)
    h.trim(4096, size - 4096)  # in range: must work


def case_write_oob(sock, backing):
    h = connect(sock)
    size = h.get_size()
    before = h.pread(4096, size - 4096)
    expect_err("WRITE straddling the end", errno.ENOSPC, h.pwrite, b"\xee" * 8192, size - 4096)
    expect_err("WRITE at the end", errno.ENOSPC, h.pwrite, b"\xee" * 4096, size)
    check_eq("last block after refused WRITEs", h.pread(4096, size - 4096), before)
    data = os.urandom(4096)
    h.pwrite(data, size - 4096)
    check_eq("last block after in-range WRITE", h.pread(4096, size - 4096), data)


# --- read-only ----------------------------------------------------------

def case_readonly(sock, backing):
    h = connect(sock)
    if not h.is_read_only():
        raise AssertionError("export not advertised READ_ONLY")
    size = h.get_size()
    want = file_read(backing, 0, MiB)
    check_eq("READ on read-only export", h.pread(MiB, 0), want)
    expect_err("WRITE on read-only", errno.EPERM, h.pwrite, b"\x55" * 4096, 0)
    expect_err("WRITE+FUA on read-only", errno.EPERM, h.pwrite, b"\x55" * 4096, 4096,
               nbd.CMD_FLAG_FUA)
    expect_err("TRIM on read-only", errno.EPERM, h.trim, 65536, 0)
    expect_err("WRITE_ZEROES on read-only", errno.EPERM, h.zero, 65536, 0)
    check_eq("READ after refused writes", h.pread(MiB, 0), want)
    check_eq("backing file after refused writes", file_read(backing, 0, MiB), want)
    check_eq("READ of the last MiB", h.pread(MiB, size - MiB),
             file_read(backing, size - MiB, MiB))
    # The raw path too: a refused WRITE's payload is drained.
    c = raw(sock)
    (err, _) = c.call(nbdraw.CMD_WRITE, 0, 4096, 0, b"\x55" * 4096)
    raw_expect("raw WRITE on read-only", err, nbdraw.EPERM)
    check_eq("raw READ after refused WRITE", c.read(0, 4096), want[:4096])


# --- unknown commands and flags -----------------------------------------

def case_unknown_cmd(sock, backing):
    c = raw(sock)
    for cmd in (99, 0xFFFF):
        (err, _) = c.call(cmd, 0, 4096)
        raw_expect("unknown command %d" % cmd, err, nbdraw.EINVAL)
    check_eq("READ after unknown commands", c.read(0, 4096), file_read(backing, 0, 4096))
    c.disc()
    c.wait_closed()


def case_unknown_flag(sock, backing):
    h = connect(sock)
    expect_err("READ with flag 1<<12", errno.EINVAL, h.pread, 4096, 0, 1 << 12)
    check_eq("libnbd READ after bad flag", h.pread(4096, 0), file_read(backing, 0, 4096))
    c = raw(sock)
    before = c.read(0, 8192)
    (err, _) = c.call(nbdraw.CMD_READ, 0, 4096, 1 << 10)
    raw_expect("READ with flag 1<<10", err, nbdraw.EINVAL)
    # A refused WRITE's payload is drained: make the payload look like a
    # READ request so a server that parses it as a header answers it.
    bogus = struct.pack(">IHHQQI", nbdraw.REQUEST_MAGIC, 0, nbdraw.CMD_READ,
                        0xDEADBEEF, 0, 4096)
    payload = (bogus * (4096 // len(bogus) + 1))[:4096]
    (err, _) = c.call(nbdraw.CMD_WRITE, 4096, 4096, 1 << 9, payload)
    raw_expect("WRITE with flag 1<<9", err, nbdraw.EINVAL)
    check_eq("READ after refused WRITE (payload drained, not written)",
             c.read(0, 8192), before)
    c.disc()
    c.wait_closed()


# --- unaligned requests -------------------------------------------------

def case_unaligned_strict(sock, backing):
    """The client asked for block sizes, so unaligned requests are EINVAL."""
    h = connect(sock)  # libnbd requests NBD_INFO_BLOCK_SIZE by default
    bmin = h.get_block_size(nbd.SIZE_MINIMUM)
    if bmin <= 1:
        raise Skip("server advertised minimum block %d: nothing is unaligned" % bmin)
    half = bmin // 2
    before = h.pread(4 * bmin, 0)
    expect_err("READ at unaligned offset", errno.EINVAL, h.pread, bmin, half)
    expect_err("READ of unaligned length", errno.EINVAL, h.pread, bmin + 1, 0)
    expect_err("WRITE at unaligned offset", errno.EINVAL, h.pwrite, b"\xab" * bmin, half)
    expect_err("WRITE of unaligned length", errno.EINVAL, h.pwrite, b"\xab" * (bmin - 1), 0)
    expect_err("TRIM unaligned", errno.EINVAL, h.trim, bmin, half)
    expect_err("WRITE_ZEROES unaligned", errno.EINVAL, h.zero, bmin, half)
    check_eq("data after refused unaligned requests", h.pread(4 * bmin, 0), before)

    c = raw(sock, block_size=True)
    if c.block is None or c.block[0] != bmin:
        raise AssertionError("raw OPT_GO with INFO_BLOCK_SIZE: block sizes %r, libnbd saw min %d"
                             % (c.block, bmin))
    bogus = struct.pack(">IHHQQI", nbdraw.REQUEST_MAGIC, 0, nbdraw.CMD_READ,
                        0xDEADBEEF, 0, 4096)
    payload = (bogus * (bmin // len(bogus) + 1))[:bmin]
    (err, _) = c.call(nbdraw.CMD_WRITE, half, bmin, 0, payload)
    raw_expect("raw unaligned WRITE", err, nbdraw.EINVAL)
    (err, _) = c.call(nbdraw.CMD_WRITE, bmin, bmin + 3, 0, payload + b"xyz")
    raw_expect("raw WRITE of unaligned length", err, nbdraw.EINVAL)
    check_eq("raw READ after refused WRITEs (payload drained)", c.read(0, 4 * bmin), before)
    c.disc()
    c.wait_closed()


class Model:
    """The export's expected bytes, kept alongside a client's writes."""

    def __init__(self, backing):
        with open(backing, "rb") as f:
            self.data = bytearray(f.read())

    def write(self, off, buf):
        self.data[off:off + len(buf)] = buf

    def zero(self, off, n):
        self.data[off:off + n] = bytes(n)


def unaligned_ops(size, seed):
    """Fixed edge cases first, then random unaligned spans."""
    ops = [(1000, 3000), (511, 1), (512, 1), (4095, 513), (1, 8190), (0, 1),
           (size - 3, 3), (size - 4097, 4097), (65536 + 17, 3 * 4096)]
    rng = random.Random(seed)
    for _ in range(150):
        n = rng.choice([1, 2, 7, 511, 513, 1000, 4097, rng.randrange(1, 200000)])
        ops.append((rng.randrange(0, size - n), n))
    return ops


def case_unaligned_loose(sock, backing):
    """A client that never asked for block sizes gets byte-exact results."""
    model = Model(backing)
    h = connect(sock, request_block_size=False)
    size = h.get_size()
    if size != len(model.data):
        raise AssertionError("size %d, backing file %d" % (size, len(model.data)))
    rng = random.Random(7)
    for (i, (off, n)) in enumerate(unaligned_ops(size, 1)):
        if i % 5 == 4:
            h.zero(n, off)
            model.zero(off, n)
        else:
            buf = rng.randbytes(n)
            h.pwrite(buf, off)
            model.write(off, buf)
        lo = max(0, off - rng.randrange(0, 700))
        hi = min(size, off + n + rng.randrange(0, 700))
        check_eq("op %d (off %d len %d): READ [%d,%d)" % (i, off, n, lo, hi),
                 h.pread(hi - lo, lo), bytes(model.data[lo:hi]))
    h.flush()
    check_eq("whole export read back", h.pread(size, 0) if size <= PAYLOAD_MAX
             else b"".join(h.pread(MiB, o) for o in range(0, size, MiB)), bytes(model.data))
    check_eq("backing file after flush", file_read(backing, 0, size), bytes(model.data))
    h.shutdown()

    # The same through NBD_OPT_EXPORT_NAME, which cannot ask for sizes.
    c = raw(sock, export_name=True)
    for (i, (off, n)) in enumerate(unaligned_ops(size, 2)[:60]):
        buf = rng.randbytes(n)
        c.write(off, buf)
        model.write(off, buf)
        check_eq("EXPORT_NAME op %d (off %d len %d)" % (i, off, n),
                 c.read(off, n), bytes(model.data[off:off + n]))
    c.call(nbdraw.CMD_FLUSH)
    c.disc()
    c.wait_closed()
    check_eq("backing file after EXPORT_NAME client", file_read(backing, 0, size),
             bytes(model.data))


def case_unaligned_concurrent(sock, backing):
    """Clients that never asked for block sizes write disjoint byte ranges
    of the same blocks at the same time: read-modify-write on the server
    must not lose any of them."""
    model = Model(backing)
    hs = [connect(sock, request_block_size=False) for _ in range(4)]
    base = MiB + 100
    stripe = 24  # bytes per write; not a divisor of 512
    window = 256  # stripes per round, shared by all connections
    rounds = 12
    rng = random.Random(11)
    for r in range(rounds):
        cookies = [[] for _ in hs]
        for (i, h) in enumerate(hs):
            for k in range(r * window + i, (r + 1) * window, len(hs)):
                off = base + k * stripe
                buf = rng.randbytes(stripe)
                model.write(off, buf)
                cookies[i].append(h.aio_pwrite(buf, off))
        deadline = time.monotonic() + 20
        for (i, h) in enumerate(hs):
            while h.aio_in_flight() > 0:
                if time.monotonic() > deadline:
                    raise AssertionError("round %d: writes did not complete" % r)
                h.poll(1000)
            for c in cookies[i]:
                if not h.aio_command_completed(c):  # raises the write's error
                    raise AssertionError("round %d: write %d not completed" % (r, c))
    hs[0].flush()
    lo = base - 1000
    hi = base + rounds * window * stripe + 1000
    for (i, h) in enumerate(hs):
        check_eq("region read on connection %d" % i, h.pread(hi - lo, lo),
                 bytes(model.data[lo:hi]))
    check_eq("backing file region after FLUSH", file_read(backing, lo, hi - lo),
             bytes(model.data[lo:hi]))
    for h in hs:
        h.shutdown()


# --- clients that break the protocol -------------------------------------

def case_bad_magic(sock, backing):
    a = connect(sock, strict=True)
    data = os.urandom(65536)
    a.pwrite(data, 0)
    b = raw(sock)
    b.read(0, 4096)
    b.send_request(nbdraw.CMD_READ, 0, 4096, magic=0x12345678)
    try:
        b.wait_closed()
    except socket.timeout:
        raise AssertionError("server kept a client that sent a bad request magic")
    check_eq("other client after bad magic", a.pread(65536, 0), data)
    a.shutdown()
    still_works(sock, backing, "after bad magic")


def case_huge_write(sock, backing):
    a = connect(sock, strict=True)
    # A payload of exactly 32 MiB is allowed.
    size = a.get_size()
    if size >= PAYLOAD_MAX:
        data = os.urandom(PAYLOAD_MAX)
        a.pwrite(data, 0)
        check_eq("32 MiB WRITE read back", a.pread(PAYLOAD_MAX, 0), data)
    for length in (PAYLOAD_MAX + 4096, 0xFFFFFFFF):
        b = raw(sock)
        try:
            # The header and a little of the payload; the server may hang
            # up before it has read it all.
            b.send(struct.pack(">IHHQQI", nbdraw.REQUEST_MAGIC, 0, nbdraw.CMD_WRITE, 1, 0,
                               length) + b"\0" * 4096)
        except (BrokenPipeError, ConnectionResetError):
            pass
        try:
            b.wait_closed()
        except socket.timeout:
            raise AssertionError("server kept a client that sent a %d-byte WRITE" % length)
        b.close()
    check_eq("other client after huge WRITE", a.pread(4096, 0), file_read(backing, 0, 4096))
    a.shutdown()
    still_works(sock, backing, "after huge WRITE")


def case_vanish(sock, backing):
    """Clients hang up with requests in flight; the server keeps serving."""
    a = connect(sock, strict=True)
    for variant in range(3):
        b = raw(sock)
        # The server may stop reading while its replies go unread: a send
        # that cannot finish is just cut short.
        b.sock.settimeout(1)
        chunk = os.urandom(MiB)
        try:
            for i in range(16):
                b.send_request(nbdraw.CMD_READ, i * MiB, MiB)
                b.send_request(nbdraw.CMD_WRITE, (16 + i) * MiB, MiB, payload=chunk)
            if variant == 1:
                # Half a WRITE payload, then gone.
                b.send_request(nbdraw.CMD_WRITE, 0, MiB)
                b.send(chunk[:MiB // 2])
        except socket.timeout:
            pass
        if variant == 2:
            # Reset rather than FIN.
            b.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        b.close()
        check_eq("other client after vanish %d" % variant, a.pread(4096, 40 * MiB),
                 file_read(backing, 40 * MiB, 4096))
    a.shutdown()
    still_works(sock, backing, "after vanishing clients")


def case_disc_inflight(sock, backing):
    """NBD_CMD_DISC: all requests already sent are answered, then close."""
    c = raw(sock)
    writes = {}
    handles = {}
    for i in range(16):
        off = i * 256 * 1024
        buf = os.urandom(256 * 1024)
        writes[off] = buf
        handles[c.send_request(nbdraw.CMD_WRITE, off, len(buf), payload=buf)] = 0
    rh = c.send_request(nbdraw.CMD_READ, 8 * MiB, MiB)
    handles[rh] = MiB
    handles[c.send_request(nbdraw.CMD_FLUSH)] = 0
    c.disc()
    seen = set()
    for _ in range(len(handles)):
        (h, err, data) = c.recv_reply(read_length=0)
        if h not in handles or h in seen:
            raise AssertionError("unexpected reply handle %d" % h)
        if handles[h]:
            data = c.recv_exact(handles[h]) if err == 0 else b""
            check_eq("READ before DISC", data, file_read(backing, 8 * MiB, MiB))
        raw_expect("request %d before DISC" % h, err, 0)
        seen.add(h)
    try:
        rest = c.wait_closed()
    except socket.timeout:
        raise AssertionError("server did not close after NBD_CMD_DISC")
    if rest:
        raise AssertionError("%d unexpected bytes after the last reply" % len(rest))
    h = connect(sock, strict=True)
    for (off, buf) in writes.items():
        check_eq("WRITE at %d sent before DISC" % off, h.pread(len(buf), off), buf)


# --- MULTI_CONN ---------------------------------------------------------

def case_multi_conn(sock, backing):
    a, b, c = (connect(sock, strict=True) for _ in range(3))
    for (n, h) in (("A", a), ("B", b), ("C", c)):
        if not h.can_multi_conn():
            raise AssertionError("connection %s: CAN_MULTI_CONN not advertised" % n)
        if not h.can_flush() or not h.can_fua():
            raise AssertionError("connection %s: FLUSH/FUA not advertised" % n)
    for round_ in range(4):
        off = round_ * 3 * MiB + 4096
        data = os.urandom(2 * MiB)
        a.pwrite(data, off)
        b.flush()
        check_eq("round %d: written on A, flushed on B, read on C" % round_,
                 c.pread(len(data), off), data)
        check_eq("round %d: backing file after B's FLUSH" % round_,
                 file_read(backing, off, len(data)), data)
        fua = os.urandom(65536)
        c.pwrite(fua, off + 8192, nbd.CMD_FLAG_FUA)
        check_eq("round %d: FUA write on C read on A" % round_, a.pread(65536, off + 8192), fua)
        check_eq("round %d: backing file after FUA write" % round_,
                 file_read(backing, off + 8192, 65536), fua)
    # Many writes in flight on A, then one FLUSH on B covers all of them.
    bufs = [(i * 131072, os.urandom(131072)) for i in range(32)]
    cmds = [a.aio_pwrite(buf, 32 * MiB + off) for (off, buf) in bufs]
    deadline = time.monotonic() + 20
    while a.aio_in_flight() > 0:
        if time.monotonic() > deadline:
            raise AssertionError("aio writes did not complete")
        a.poll(1000)
    for x in cmds:
        if not a.aio_command_completed(x):  # raises the command's error
            raise AssertionError("aio write %d not completed" % x)
    b.flush()
    for (off, buf) in bufs:
        check_eq("aio write at %d read on C" % off, c.pread(len(buf), 32 * MiB + off), buf)
    for h in (a, b, c):
        h.shutdown()


CASES = {
    "handshake": case_handshake,
    "unknown-export": case_unknown_export,
    "read-oob": case_read_oob,
    "trim-oob": case_trim_oob,
    "write-oob": case_write_oob,
    "readonly": case_readonly,
    "unknown-cmd": case_unknown_cmd,
    "unknown-flag": case_unknown_flag,
    "unaligned-strict": case_unaligned_strict,
    "unaligned-loose": case_unaligned_loose,
    "unaligned-concurrent": case_unaligned_concurrent,
    "bad-magic": case_bad_magic,
    "huge-write": case_huge_write,
    "vanish": case_vanish,
    "disc-inflight": case_disc_inflight,
    "multi-conn": case_multi_conn,
}


def main():
    global EXPORT
    if len(sys.argv) not in (4, 5) or sys.argv[1] not in CASES:
        sys.exit("usage: nbdcases.py {%s} SOCKET BACKING_FILE [EXPORT_NAME]" % "|".join(CASES))
    (name, sock, backing) = sys.argv[1:4]
    if len(sys.argv) == 5:
        EXPORT = sys.argv[4]
    try:
        CASES[name](sock, backing)
    except Skip as e:
        print("SKIP %s" % e)
        sys.exit(3)
    print("PASS %s" % name)


if __name__ == "__main__":
    main()
