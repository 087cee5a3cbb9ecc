"""Protocol feature cases for the nbdring end-to-end tests (e2e_proto_test.go).

Usage: /usr/bin/python3 protocases.py CASE SOCKET BACKING [EXPORT_NAME [ARG...]]

Like nbdcases.py: each case talks to the server on the unix SOCKET, checks
what comes back against the spec (/work/shared/spec/proto.md and
proto-extended-headers.md) and against BACKING (the file or device the
export serves), prints "PASS CASE" and exits 0. A failed check raises; a
case that does not apply prints "SKIP reason" and exits 3.

libnbd (1.14) drives what it can; it knows neither extended headers nor
how to send option misuse, so Conn below (built on nbdraw.Conn) speaks
structured replies and extended headers by hand, and every error it sees
came from the server.
"""

import errno
import json
import os
import socket
import struct
import subprocess
import sys

import nbd

import nbdraw
from nbdcases import check_eq, file_read  # shared with the core cases

KiB = 1 << 10
MiB = 1 << 20
GiB = 1 << 30

# Options (proto.md "Option types").
OPT_INFO = 6
OPT_STRUCTURED_REPLY = 8
OPT_LIST_META_CONTEXT = 9
OPT_SET_META_CONTEXT = 10
OPT_EXTENDED_HEADERS = 11

REP_META_CONTEXT = 4

# Requests (proto.md "Request types") and command flags.
CMD_CACHE = 5
CMD_BLOCK_STATUS = 7
FLAG_FUA = 1 << 0  # NBD_CMD_FLAG_FUA
FLAG_NO_HOLE = 1 << 1  # NBD_CMD_FLAG_NO_HOLE
FLAG_DF = 1 << 2  # NBD_CMD_FLAG_DF
FLAG_REQ_ONE = 1 << 3  # NBD_CMD_FLAG_REQ_ONE
FLAG_FAST_ZERO = 1 << 4  # NBD_CMD_FLAG_FAST_ZERO
FLAG_PAYLOAD_LEN = 1 << 5  # NBD_CMD_FLAG_PAYLOAD_LEN

TX_SEND_DF = 1 << 7  # NBD_FLAG_SEND_DF
TX_SEND_CACHE = 1 << 10  # NBD_FLAG_SEND_CACHE
TX_SEND_FAST_ZERO = 1 << 11  # NBD_FLAG_SEND_FAST_ZERO

# Replies (proto-extended-headers.md "Transmission").
STRUCTURED_REPLY_MAGIC = 0x668E33EF
EXTENDED_REQUEST_MAGIC = 0x21E41C71
EXTENDED_REPLY_MAGIC = 0x6E8A278C
REPLY_FLAG_DONE = 1 << 0
TYPE_NONE = 0
TYPE_OFFSET_DATA = 1
TYPE_OFFSET_HOLE = 2
TYPE_BLOCK_STATUS = 5
TYPE_BLOCK_STATUS_EXT = 6
TYPE_ERROR = (1 << 15) + 1
TYPE_ERROR_OFFSET = (1 << 15) + 2

STATE_HOLE = 1  # NBD_STATE_HOLE
STATE_ZERO = 2  # NBD_STATE_ZERO

EXPORT = ""  # export name; argv[4] if given
ARGS = []  # further arguments a case takes (argv[5:])
TOOL_TIMEOUT = 30  # seconds for nbdinfo / qemu-img run from a case
# FS_SLACK allows for filesystem metadata in allocation counts (st_blocks):
# punching a hole can split an extent and cost ext4 an index block.
FS_SLACK = 64 * KiB


class Skip(Exception):
    pass


def fail(fmt, *args):
    raise AssertionError(fmt % args if args else fmt)


def rep_name(r):
    names = {nbdraw.REP_ACK: "ACK", nbdraw.REP_INFO: "INFO", REP_META_CONTEXT: "META_CONTEXT",
             nbdraw.REP_ERR_UNSUP: "ERR_UNSUP", nbdraw.REP_ERR_INVALID: "ERR_INVALID",
             nbdraw.REP_ERR_UNKNOWN: "ERR_UNKNOWN", nbdraw.REP_ERR_POLICY: "ERR_POLICY"}
    return names.get(r, "%#x" % r)


def err_name(e):
    return "OK" if e == 0 else errno.errorcode.get(e, str(e))


# --- a raw client with structured replies and extended headers ----------

class Reply:
    """One reply, reassembled: err (0 or the server's errno), the chunks
    as (type, flags, payload); for a READ, data and covered (offset
    within the request, length, is_hole) per content chunk; for
    BLOCK_STATUS, status (context id, [(length, flags)])."""

    def __init__(self):
        self.err = 0
        self.chunks = []
        self.simple = False


class Conn(nbdraw.Conn):
    """nbdraw.Conn that can negotiate NBD_OPT_STRUCTURED_REPLY or
    NBD_OPT_EXTENDED_HEADERS and metadata contexts before NBD_OPT_GO, and
    then reads structured or extended replies. It checks the framing of
    every reply: the magic the negotiation calls for, the cookie (and with
    extended headers the offset) of the request, DONE on the last chunk."""

    def __init__(self, sock, name=None, structured=True, extended=False, meta=None,
                 block_size=True, go=True):
        super().__init__(sock, go=False)
        self.name = EXPORT if name is None else name
        self.structured = False
        self.extended = False
        self.meta_id = None
        if extended:
            self.opt_expect(OPT_EXTENDED_HEADERS, b"", nbdraw.REP_ACK)
            self.extended = True
        elif structured:
            self.opt_expect(OPT_STRUCTURED_REPLY, b"", nbdraw.REP_ACK)
            self.structured = True
        if meta is not None:
            (rt, ctxs) = self.meta(OPT_SET_META_CONTEXT, self.name, meta)
            if rt != nbdraw.REP_ACK:
                fail("SET_META_CONTEXT %r: %s", meta, rep_name(rt))
            for (cid, cname) in ctxs:
                if cname == "base:allocation":
                    self.meta_id = cid
        if go:
            self.go(self.name, block_size)

    # --- options ----------------------------------------------------------

    def opt(self, opt, data=b""):
        """Sends an option; returns its replies [(type, payload)] up to and
        including the final ACK or error."""
        self.send(struct.pack(">QII", nbdraw.IHAVEOPT, opt, len(data)) + data)
        out = []
        while True:
            (magic, ropt, rtype, rlen) = struct.unpack(">QIII", self.recv_exact(20))
            if magic != nbdraw.OPT_REPLY_MAGIC or ropt != opt:
                fail("option %d: reply magic %#x for option %d", opt, magic, ropt)
            out.append((rtype, self.recv_exact(rlen)))
            if rtype == nbdraw.REP_ACK or rtype & nbdraw.REP_FLAG_ERROR:
                return out

    def opt_expect(self, opt, data, want):
        reps = self.opt(opt, data)
        if reps[-1][0] != want:
            fail("option %d: final reply %s %r, want %s", opt, rep_name(reps[-1][0]),
                 reps[-1][1], rep_name(want))
        return reps

    def meta(self, opt, name, queries):
        """LIST or SET_META_CONTEXT; returns (final reply type, [(id, name)])."""
        if isinstance(name, str):
            name = name.encode()
        data = struct.pack(">I", len(name)) + name + struct.pack(">I", len(queries))
        for q in queries:
            qb = q.encode() if isinstance(q, str) else q
            data += struct.pack(">I", len(qb)) + qb
        reps = self.opt(opt, data)
        ctxs = []
        for (rtype, payload) in reps[:-1]:
            if rtype != REP_META_CONTEXT:
                fail("option %d: unexpected reply %s before the final one", opt, rep_name(rtype))
            (cid,) = struct.unpack(">I", payload[:4])
            ctxs.append((cid, payload[4:].decode()))
        return (reps[-1][0], ctxs)

    # --- transmission -----------------------------------------------------

    def request(self, cmd, offset=0, length=0, flags=0, payload=b""):
        """Sends one request (compact or extended header); returns its cookie."""
        cookie = self.next_handle
        self.next_handle += 1
        if self.extended:
            hdr = struct.pack(">IHHQQQ", EXTENDED_REQUEST_MAGIC, flags, cmd, cookie, offset,
                              length)
        else:
            hdr = struct.pack(">IHHQQI", nbdraw.REQUEST_MAGIC, flags, cmd, cookie, offset,
                              length)
        self.send(hdr + payload)
        return cookie

    def reply(self, cookie, cmd, offset, length):
        """Reads the reply to one request (the only one in flight)."""
        rep = Reply()
        if cmd == nbdraw.CMD_READ:
            rep.data = bytearray(length)
            rep.covered = []  # (offset, length, is_hole) per content chunk
        while True:
            (magic,) = struct.unpack(">I", self.recv_exact(4))
            if magic == nbdraw.SIMPLE_REPLY_MAGIC:
                self._simple(rep, cookie, cmd, length)
                return rep
            chunk = self._chunk_header(magic, cookie, offset)
            (flags, rtype, plen) = chunk
            payload = self.recv_exact(plen)
            rep.chunks.append((rtype, flags, payload))
            self._chunk(rep, rtype, payload, cmd, offset, length)
            if flags & REPLY_FLAG_DONE:
                break
        if cmd == nbdraw.CMD_READ and rep.err == 0:
            check_cover(rep.covered, offset, length)
        return rep

    def _simple(self, rep, cookie, cmd, length):
        (err, rcookie) = struct.unpack(">IQ", self.recv_exact(12))
        if self.extended:
            fail("simple reply (error %s) with extended headers negotiated",
                 err_name(err))
        if rcookie != cookie:
            fail("simple reply cookie %d, want %d", rcookie, cookie)
        if self.structured and cmd == nbdraw.CMD_READ:
            fail("simple reply (error %s) to READ with structured replies: proto.md "
                 "says MUST NOT", err_name(err))
        rep.simple = True
        rep.err = err
        if cmd == nbdraw.CMD_READ and err == 0:
            rep.data = bytearray(self.recv_exact(length))
            rep.covered = [(0, length, False)]

    def _chunk_header(self, magic, cookie, offset):
        if self.extended:
            if magic != EXTENDED_REPLY_MAGIC:
                fail("reply magic %#x with extended headers, want %#x", magic,
                     EXTENDED_REPLY_MAGIC)
            (flags, rtype, rcookie, roff, plen) = struct.unpack(">HHQQQ",
                                                                self.recv_exact(28))
            if roff != offset:
                fail("extended reply (type %d) offset %d, want the request's %d", rtype,
                     roff, offset)
        elif self.structured:
            if magic != STRUCTURED_REPLY_MAGIC:
                fail("reply magic %#x, want structured %#x", magic, STRUCTURED_REPLY_MAGIC)
            (flags, rtype, rcookie, plen) = struct.unpack(">HHQI", self.recv_exact(16))
        else:
            fail("reply magic %#x without structured replies", magic)
        if rcookie != cookie:
            fail("reply (type %d) cookie %d, want %d", rtype, rcookie, cookie)
        if plen > 64 * MiB:
            fail("reply (type %d) payload length %d", rtype, plen)
        return (flags, rtype, plen)

    def _chunk(self, rep, rtype, payload, cmd, offset, length):
        if rtype & (1 << 15):
            (err, mlen) = struct.unpack(">IH", payload[:6])
            if err == 0 or 6 + mlen > len(payload):
                fail("bad error chunk: error %d, message length %d, payload %d", err, mlen,
                     len(payload))
            rep.err = rep.err or err
            rep.message = payload[6:6 + mlen].decode(errors="replace")
        elif rtype == TYPE_NONE:
            if payload:
                fail("NBD_REPLY_TYPE_NONE with %d bytes of payload", len(payload))
        elif rtype in (TYPE_OFFSET_DATA, TYPE_OFFSET_HOLE):
            if cmd != nbdraw.CMD_READ:
                fail("content chunk type %d in reply to command %d", rtype, cmd)
            (coff,) = struct.unpack(">Q", payload[:8])
            if rtype == TYPE_OFFSET_DATA:
                data = payload[8:]
                n = len(data)
            else:
                if len(payload) != 12:
                    fail("OFFSET_HOLE chunk of %d bytes, want 12", len(payload))
                (n,) = struct.unpack(">I", payload[8:])
                data = bytes(n)
            if n == 0 or coff < offset or coff + n > offset + length:
                fail("content chunk [%d, +%d) outside the request [%d, +%d)", coff, n,
                     offset, length)
            rep.data[coff - offset:coff - offset + n] = data
            rep.covered.append((coff - offset, n, rtype == TYPE_OFFSET_HOLE))
        elif rtype in (TYPE_BLOCK_STATUS, TYPE_BLOCK_STATUS_EXT):
            if cmd != CMD_BLOCK_STATUS:
                fail("status chunk in reply to command %d", cmd)
            want = TYPE_BLOCK_STATUS_EXT if self.extended else TYPE_BLOCK_STATUS
            if rtype != want:
                fail("status chunk type %d, want %d", rtype, want)
            rep.status = parse_status(rtype, payload)
        else:
            fail("unexpected reply chunk type %d", rtype)

    def disc(self):
        self.request(nbdraw.CMD_DISC)

    def call(self, cmd, offset=0, length=0, flags=0, payload=b""):
        cookie = self.request(cmd, offset, length, flags, payload)
        return self.reply(cookie, cmd, offset, length)

    def expect(self, what, want, cmd, offset=0, length=0, flags=0, payload=b""):
        rep = self.call(cmd, offset, length, flags, payload)
        if rep.err != want:
            fail("%s: got %s, want %s", what, err_name(rep.err), err_name(want))
        return rep

    def read(self, offset, length, flags=0):
        return bytes(self.expect("READ(%d, %d)" % (offset, length), 0, nbdraw.CMD_READ,
                                 offset, length, flags).data)

    def write(self, offset, data, flags=0):
        if self.extended:
            flags |= FLAG_PAYLOAD_LEN
        self.expect("WRITE(%d, %d)" % (offset, len(data)), 0, nbdraw.CMD_WRITE, offset,
                    len(data), flags, data)

    def block_status(self, offset, length, flags=0):
        """Returns (context id, [(length, flags)])."""
        rep = self.expect("BLOCK_STATUS(%d, %d, flags %#x)" % (offset, length, flags), 0,
                          CMD_BLOCK_STATUS, offset, length, flags)
        n = sum(1 for c in rep.chunks if c[0] in (TYPE_BLOCK_STATUS, TYPE_BLOCK_STATUS_EXT))
        if n != 1:
            fail("BLOCK_STATUS: %d status chunks, want one (one context selected)", n)
        return rep.status


def parse_status(rtype, payload):
    """Decodes a BLOCK_STATUS or BLOCK_STATUS_EXT payload."""
    if rtype == TYPE_BLOCK_STATUS:
        if len(payload) < 12 or (len(payload) - 4) % 8:
            fail("BLOCK_STATUS payload of %d bytes, want 4 + 8n, n > 0", len(payload))
        (cid,) = struct.unpack(">I", payload[:4])
        ext = [struct.unpack(">II", payload[i:i + 8]) for i in range(4, len(payload), 8)]
    else:
        if len(payload) < 24 or (len(payload) - 8) % 16:
            fail("BLOCK_STATUS_EXT payload of %d bytes, want 8 + 16n, n > 0", len(payload))
        (cid, count) = struct.unpack(">II", payload[:8])
        ext = [struct.unpack(">QQ", payload[i:i + 16]) for i in range(8, len(payload), 16)]
        if count != len(ext):
            fail("BLOCK_STATUS_EXT descriptor count %d, payload holds %d", count, len(ext))
        for (_, fl) in ext:
            if fl >> 32:
                fail("base:allocation status %#x has upper 32 bits set", fl)
    for (n, _) in ext:
        if n == 0:
            fail("zero-length extent in %r", ext)
    return (cid, ext)


def check_cover(covered, offset, length):
    """Content chunks must tile the request exactly, without overlap."""
    spans = sorted(covered)
    at = 0
    for (o, n, _) in spans:
        if o != at:
            fail("READ(%d, %d): content chunks %s leave a gap or overlap at +%d", offset,
                 length, spans, at)
        at = o + n
    if at != length:
        fail("READ(%d, %d): content chunks cover %d bytes", offset, length, at)


# --- the backing file -----------------------------------------------------

def layout(path, start=0, end=None):
    """The file's real layout from SEEK_DATA/SEEK_HOLE: [(offset, length,
    is_hole)], adjacent runs merged."""
    fd = os.open(path, os.O_RDONLY)
    try:
        size = os.fstat(fd).st_size if end is None else end
        out = []
        pos = start
        while pos < size:
            try:
                d = os.lseek(fd, pos, os.SEEK_DATA)
            except OSError as e:
                if e.errno != errno.ENXIO:
                    raise
                d = size
            if d > pos:
                out.append((pos, min(d, size) - pos, True))
                pos = min(d, size)
                continue
            h = min(os.lseek(fd, pos, os.SEEK_HOLE), size)
            out.append((pos, h - pos, False))
            pos = h
        return merge(out)
    finally:
        os.close(fd)


def merge(runs):
    out = []
    for (o, n, hole) in runs:
        if out and out[-1][2] == hole and out[-1][0] + out[-1][1] == o:
            out[-1] = (out[-1][0], out[-1][1] + n, hole)
        else:
            out.append((o, n, hole))
    return out


def is_hole_at(path, off):
    fd = os.open(path, os.O_RDONLY)
    try:
        return os.lseek(fd, off, os.SEEK_HOLE) == off
    finally:
        os.close(fd)


def is_data_at(path, off):
    fd = os.open(path, os.O_RDONLY)
    try:
        return os.lseek(fd, off, os.SEEK_DATA) == off
    except OSError:
        return False
    finally:
        os.close(fd)


def allocated(path):
    return os.stat(path).st_blocks * 512


def extents_to_runs(offset, ext):
    """[(length, flags)] from BLOCK_STATUS -> [(offset, length, is_hole)],
    checking base:allocation's flags: holes are HOLE|ZERO, data 0."""
    runs = []
    for (n, fl) in ext:
        if fl not in (0, STATE_HOLE | STATE_ZERO):
            fail("extent at %d (+%d): flags %#x, want 0 (data) or 3 (hole|zero)", offset, n,
                 fl)
        runs.append((offset, n, fl != 0))
        offset += n
    return runs


def connect(sock, meta=True, strict=False, name=None):
    h = nbd.NBD()
    if not strict:
        h.set_strict_mode(0)
    if meta:
        h.add_meta_context(nbd.CONTEXT_BASE_ALLOCATION)
    h.set_export_name(EXPORT if name is None else name)
    h.connect_unix(sock)
    return h


def nbd_map(h, offset, length, flags=0):
    """libnbd BLOCK_STATUS over [offset, offset+length), asking again from
    where each reply ends; returns merged runs and the replies' extents."""
    runs = []
    replies = []
    pos, end = offset, offset + length
    while pos < end:
        got = []

        def cb(meta, off, entries, err):
            if meta != nbd.CONTEXT_BASE_ALLOCATION:
                fail("block status for context %r", meta)
            got.append(list(zip(entries[0::2], entries[1::2])))
            return 0
        h.block_status(end - pos, pos, cb, flags)
        if len(got) != 1:
            fail("BLOCK_STATUS(%d, %d): %d context callbacks, want 1", pos, end - pos, len(got))
        ext = got[0]
        if not ext:
            fail("BLOCK_STATUS(%d, %d): no extents", pos, end - pos)
        replies.append((pos, end - pos, ext))
        for r in extents_to_runs(pos, ext):
            n = min(r[1], end - r[0])
            runs.append((r[0], n, r[2]))
            if r[0] + r[1] >= end:
                break
        pos = runs[-1][0] + runs[-1][1]
    return (merge(runs), replies)


def uri(sock):
    return "nbd+unix:///%s?socket=%s" % (EXPORT, sock)


def run_tool(*args):
    p = subprocess.run(args, capture_output=True, text=True, timeout=TOOL_TIMEOUT)
    if p.returncode:
        fail("%s: exit %d\n%s%s", " ".join(args), p.returncode, p.stdout, p.stderr)
    return p.stdout


# --- metadata contexts ------------------------------------------------------

def expect_meta(c, opt, name, queries, want_rep, want_names):
    """One LIST/SET_META_CONTEXT: the final reply and the context names."""
    (rt, ctxs) = c.meta(opt, name, queries)
    what = "%s(%r, %r)" % ("LIST" if opt == OPT_LIST_META_CONTEXT else "SET", name, queries)
    if rt != want_rep:
        fail("%s: final reply %s, want %s", what, rep_name(rt), rep_name(want_rep))
    names = sorted(n for (_, n) in ctxs)
    if names != sorted(want_names):
        fail("%s: contexts %r, want %r", what, names, sorted(want_names))
    return ctxs


def case_meta_list(sock, backing):
    """LIST_META_CONTEXT: base:allocation by name, by the base: wildcard and
    for zero queries; unknown leaves and namespaces list nothing."""
    c = Conn(sock, go=False)
    base = ["base:allocation"]
    for (q, want) in ((["base:allocation"], base), (["base:"], base), ([], base),
                      (["base:nope"], []), (["x-nbdring-test:foo"], []),
                      (["qemu:dirty-bitmap:x", "base:allocation"], base)):
        ctxs = expect_meta(c, OPT_LIST_META_CONTEXT, EXPORT, q, nbdraw.REP_ACK, want)
        for (cid, _) in ctxs:
            if cid != 0:
                fail("LIST %r: context id %d; proto.md: reserved, SHOULD be zero", q, cid)
    # Listing selects nothing: BLOCK_STATUS after LIST alone is EINVAL.
    c.go(EXPORT)
    c.expect("BLOCK_STATUS after LIST only", nbdraw.EINVAL, CMD_BLOCK_STATUS, 0, 4096)
    check_eq("READ after refused BLOCK_STATUS", c.read(0, 4096), file_read(backing, 0, 4096))
    # libnbd's view: the contexts in opt mode and after connecting.
    h = nbd.NBD()
    h.set_opt_mode(True)
    h.set_export_name(EXPORT)
    h.connect_unix(sock)
    seen = []
    n = h.opt_list_meta_context(lambda name: seen.append(name) or 0)
    if n != 1 or seen != ["base:allocation"]:
        fail("libnbd opt_list_meta_context: %d contexts %r, want base:allocation", n, seen)
    h.add_meta_context(nbd.CONTEXT_BASE_ALLOCATION)
    h.opt_go()
    if not h.can_meta_context(nbd.CONTEXT_BASE_ALLOCATION):
        fail("libnbd: base:allocation not negotiated")
    h.shutdown()


def case_meta_set(sock, backing):
    """SET_META_CONTEXT selects base:allocation only when asked by name;
    the id it gets is the one BLOCK_STATUS replies carry."""
    c = Conn(sock, go=False)
    base = ["base:allocation"]
    for (q, want) in ((["base:"], []), ([], []), (["x-nbdring-test:foo"], []),
                      (["base:nope"], []), (["x-nbdring-test:foo", "base:allocation"], base),
                      (["base:allocation"], base)):
        ctxs = expect_meta(c, OPT_SET_META_CONTEXT, EXPORT, q, nbdraw.REP_ACK, want)
    cid = ctxs[0][0]
    c.go(EXPORT)
    (rid, ext) = c.block_status(0, 4096)
    if rid != cid:
        fail("BLOCK_STATUS chunk for context id %d, SET_META_CONTEXT gave %d", rid, cid)
    if sum(n for (n, _) in ext) != 4096:
        fail("BLOCK_STATUS(0, 4096): extents %r do not sum to 4096", ext)
    check_eq("READ after BLOCK_STATUS", c.read(0, 4096), file_read(backing, 0, 4096))


def case_meta_needs_structured(sock, backing):
    """LIST/SET before structured replies -> NBD_REP_ERR_INVALID; the
    connection goes on and works once structured replies are negotiated."""
    c = Conn(sock, structured=False, go=False)
    for opt in (OPT_LIST_META_CONTEXT, OPT_SET_META_CONTEXT):
        expect_meta(c, opt, EXPORT, ["base:allocation"], nbdraw.REP_ERR_INVALID, [])
    c.opt_expect(OPT_STRUCTURED_REPLY, b"", nbdraw.REP_ACK)
    c.structured = True
    ctxs = expect_meta(c, OPT_SET_META_CONTEXT, EXPORT, ["base:allocation"], nbdraw.REP_ACK,
                       ["base:allocation"])
    c.go(EXPORT)
    (rid, _) = c.block_status(0, 4096)
    if rid != ctxs[0][0]:
        fail("BLOCK_STATUS context id %d, want %d", rid, ctxs[0][0])


def case_meta_unknown_export(sock, backing):
    c = Conn(sock, go=False)
    for opt in (OPT_LIST_META_CONTEXT, OPT_SET_META_CONTEXT):
        expect_meta(c, opt, "no-such-export", ["base:allocation"], nbdraw.REP_ERR_UNKNOWN, [])
    expect_meta(c, OPT_LIST_META_CONTEXT, EXPORT, ["base:allocation"], nbdraw.REP_ACK,
                ["base:allocation"])


def case_meta_nul_name(sock, backing):
    """An export name with a NUL byte is not a valid string (proto.md
    "Conventions"): NBD_REP_ERR_INVALID, for meta contexts and for GO."""
    c = Conn(sock, go=False)
    bad = EXPORT.encode() + b"\0x"
    for opt in (OPT_LIST_META_CONTEXT, OPT_SET_META_CONTEXT):
        expect_meta(c, opt, bad, ["base:allocation"], nbdraw.REP_ERR_INVALID, [])
    data = struct.pack(">I", len(bad)) + bad + struct.pack(">H", 0)
    c.opt_expect(nbdraw.OPT_GO, data, nbdraw.REP_ERR_INVALID)
    c.go(EXPORT)
    check_eq("READ after refused names", c.read(0, 4096), file_read(backing, 0, 4096))


def case_opt_repeat(sock, backing):
    """STRUCTURED_REPLY twice, EXTENDED_HEADERS twice: the second is
    NBD_REP_ERR_INVALID; STRUCTURED_REPLY after EXTENDED_HEADERS is
    NBD_REP_ERR_EXT_HEADER_REQD (proto-extended-headers.md,
    NBD_OPT_STRUCTURED_REPLY); the first one's reply style holds."""
    ext_hdr_reqd = (1 << 31) | 10
    for (first, second, ext, want) in (
            (OPT_STRUCTURED_REPLY, OPT_STRUCTURED_REPLY, False, nbdraw.REP_ERR_INVALID),
            (OPT_EXTENDED_HEADERS, OPT_EXTENDED_HEADERS, True, nbdraw.REP_ERR_INVALID),
            (OPT_EXTENDED_HEADERS, OPT_STRUCTURED_REPLY, True, ext_hdr_reqd)):
        c = Conn(sock, structured=False, go=False)
        c.opt_expect(first, b"", nbdraw.REP_ACK)
        reps = c.opt(second, b"")
        if reps[-1][0] != want:
            fail("option %d after %d: %s, want %s", second, first,
                 rep_name(reps[-1][0]), rep_name(want))
        c.extended, c.structured = ext, not ext
        c.go(EXPORT)
        # Conn checks each reply's magic: extended or structured.
        check_eq("READ after option %d, %d" % (first, second), c.read(0, 8192),
                 file_read(backing, 0, 8192))
        c.expect("FLUSH", 0, nbdraw.CMD_FLUSH)
        c.close()
    # Data on either option is ERR_INVALID too.
    c = Conn(sock, structured=False, go=False)
    for opt in (OPT_STRUCTURED_REPLY, OPT_EXTENDED_HEADERS):
        reps = c.opt(opt, b"x")
        if reps[-1][0] != nbdraw.REP_ERR_INVALID:
            fail("option %d with data: %s, want ERR_INVALID", opt, rep_name(reps[-1][0]))


def case_meta_stale(sock, backing):
    """BLOCK_STATUS needs a context selected by the last SET_META_CONTEXT,
    for the export then chosen (proto.md NBD_OPT_SET_META_CONTEXT: it
    "replaces all previously-set metadata contexts (including when this
    command fails)"). Servers SHOULD reply EINVAL otherwise."""
    other = ARGS[0] if ARGS else None
    steps = [("SET with zero queries", [(EXPORT, [], nbdraw.REP_ACK)]),
             ("failed SET (unknown export)", [("no-such-export", ["base:allocation"],
                                               nbdraw.REP_ERR_UNKNOWN)])]
    if other is not None:
        steps.append(("SET for another export", [(other, ["base:allocation"],
                                                  nbdraw.REP_ACK)]))
    errs = []
    for (what, sets) in steps:
        c = Conn(sock, go=False)
        expect_meta(c, OPT_SET_META_CONTEXT, EXPORT, ["base:allocation"], nbdraw.REP_ACK,
                    ["base:allocation"])
        for (name, q, want) in sets:
            (rt, _) = c.meta(OPT_SET_META_CONTEXT, name, q)
            if rt != want:
                fail("%s: %s, want %s", what, rep_name(rt), rep_name(want))
        c.go(EXPORT)
        rep = c.call(CMD_BLOCK_STATUS, 0, 4096)
        if rep.err != nbdraw.EINVAL:
            errs.append("SET base:allocation on %r, then %s, then GO %r: BLOCK_STATUS got %s "
                        "(%d chunks), want EINVAL: no context is selected" % (
                            EXPORT, what, EXPORT, err_name(rep.err), len(rep.chunks)))
        c.close()
    if errs:
        fail("\n".join(errs))


# --- block status -------------------------------------------------------------

def check_runs(what, got, want):
    if got != want:
        fail("%s:\n got  %s\n want %s (from SEEK_DATA/SEEK_HOLE on the backing file)", what,
             fmt_runs(got), fmt_runs(want))


def fmt_runs(runs):
    return " ".join("[%d,+%d %s]" % (o, n, "hole" if h else "data") for (o, n, h) in runs)


def case_bs_file(sock, backing):
    """BLOCK_STATUS on a sparse file: holes HOLE|ZERO, data 0, as lseek
    sees them; REQ_ONE gives one extent within the request; extents never
    run past the request; at least one extent."""
    want = layout(backing)
    if not any(h for (_, _, h) in want) or all(h for (_, _, h) in want):
        raise Skip("backing file has no mix of holes and data: %s" % fmt_runs(want))
    h = connect(sock, strict=True)
    size = h.get_size()
    (runs, replies) = nbd_map(h, 0, size)
    check_runs("libnbd BLOCK_STATUS over the export", runs, want)
    for (off, n, ext) in replies:
        total = sum(e[0] for e in ext)
        if total > n:
            fail("BLOCK_STATUS(%d, %d): extents sum to %d, past the request", off, n, total)
    # REQ_ONE from the start of every run and from inside it.
    for (o, n, hole) in want:
        for (qo, qn) in ((o, size - o), (o + n // 2 // 4096 * 4096, 4096), (o, n)):
            ext = nbd_map_one(h, qo, qn, nbd.CMD_FLAG_REQ_ONE)
            if len(ext) != 1:
                fail("REQ_ONE BLOCK_STATUS(%d, %d): %d extents %r, want exactly one", qo, qn,
                     len(ext), ext)
            (en, fl) = ext[0]
            if en > qn or en == 0:
                fail("REQ_ONE BLOCK_STATUS(%d, %d): extent length %d", qo, qn, en)
            if en != min(qn, o + n - qo):
                fail("REQ_ONE BLOCK_STATUS(%d, %d) in %s run [%d,+%d): extent %d, want %d", qo,
                     qn, "hole" if hole else "data", o, n, en, min(qn, o + n - qo))
            if fl != (STATE_HOLE | STATE_ZERO if hole else 0):
                fail("REQ_ONE BLOCK_STATUS(%d, %d): flags %d in a %s", qo, qn, fl,
                     "hole" if hole else "data run")
    # Short requests straddling a boundary: clamped to the request.
    for (o, n, hole) in want[1:]:
        ext = nbd_map_one(h, o - 4096, 8192, 0)
        if sum(e for (e, _) in ext) != 8192 or len(ext) != 2:
            fail("BLOCK_STATUS(%d, 8192) across a boundary: extents %r, want 2 of 4096", o - 4096,
                 ext)
    h.shutdown()
    # The raw path: the chunk carries the SET id; past the end is EINVAL.
    c = Conn(sock, meta=["base:allocation"])
    (cid, ext) = c.block_status(0, size)
    if cid != c.meta_id:
        fail("BLOCK_STATUS context id %d, SET_META_CONTEXT gave %d", cid, c.meta_id)
    c.expect("BLOCK_STATUS past the end", nbdraw.EINVAL, CMD_BLOCK_STATUS, size - 4096, 8192)
    c.expect("BLOCK_STATUS at the end", nbdraw.EINVAL, CMD_BLOCK_STATUS, size, 4096)
    check_eq("READ after refused BLOCK_STATUS", c.read(0, 4096), file_read(backing, 0, 4096))


def nbd_map_one(h, offset, length, flags):
    """One libnbd BLOCK_STATUS; returns its extents [(length, flags)]."""
    got = []

    def cb(meta, off, entries, err):
        got.append(list(zip(entries[0::2], entries[1::2])))
        return 0
    h.block_status(length, offset, cb, flags)
    if len(got) != 1 or not got[0]:
        fail("BLOCK_STATUS(%d, %d, %#x): callbacks %r", offset, length, flags, got)
    return got[0]


def case_bs_tools(sock, backing):
    """nbdinfo --map and qemu-img map agree with the file's real layout."""
    want = layout(backing)
    if len(want) < 3:
        raise Skip("backing file layout too simple: %s" % fmt_runs(want))
    out = run_tool("nbdinfo", "--map", "--json", uri(sock))
    runs = []
    for e in json.loads(out):
        if e["type"] not in (0, 3):
            fail("nbdinfo --map: type %d at %d (%s), want 0 or 3", e["type"], e["offset"],
                 e["description"])
        runs.append((e["offset"], e["length"], e["type"] == 3))
    check_runs("nbdinfo --map", merge(runs), want)
    out = run_tool("nbdinfo", "--map", uri(sock))
    runs = []
    for line in out.splitlines():
        (off, n, typ) = line.split()[:3]
        runs.append((int(off), int(n), typ == "3"))
    check_runs("nbdinfo --map (text)", merge(runs), want)
    out = run_tool("qemu-img", "map", "--output=json", "-f", "raw", uri(sock))
    runs = []
    for e in json.loads(out):
        if e["data"] == e["zero"]:
            fail("qemu-img map: extent %r is neither plain data nor a zero hole", e)
        runs.append((e["start"], e["length"], e["zero"]))
    check_runs("qemu-img map", merge(runs), want)


def case_bs_device(sock, backing):
    """A block device's extents are all data, whatever its backing file's
    holes: the engine does not look for holes on devices."""
    h = connect(sock, strict=True)
    size = h.get_size()
    (runs, _) = nbd_map(h, 0, size)
    check_runs("BLOCK_STATUS of a device", runs, [(0, size, False)])
    ext = nbd_map_one(h, 4096, size - 8192, nbd.CMD_FLAG_REQ_ONE)
    if ext != [(size - 8192, 0)]:
        fail("REQ_ONE BLOCK_STATUS on a device: %r, want one data extent of %d", ext, size - 8192)
    ext = nbd_map_one(h, 0, 4096, 0)
    if ext != [(4096, 0)]:
        fail("BLOCK_STATUS(0, 4096) on a device: %r, want [(4096, 0)]", ext)
    h.shutdown()
    out = run_tool("nbdinfo", "--map", "--json", uri(sock))
    runs = merge([(e["offset"], e["length"], e["type"] != 0) for e in json.loads(out)])
    check_runs("nbdinfo --map of a device", runs, [(0, size, False)])


def case_bs_no_context(sock, backing):
    """BLOCK_STATUS without a negotiated context -> EINVAL, and the
    connection stays usable."""
    for (structured, extended) in ((True, False), (False, True)):
        c = Conn(sock, structured=structured, extended=extended)
        c.expect("BLOCK_STATUS without a context", nbdraw.EINVAL, CMD_BLOCK_STATUS, 0, 4096)
        check_eq("READ after BLOCK_STATUS without a context", c.read(0, 4096),
                 file_read(backing, 0, 4096))
        c.expect("FLUSH after BLOCK_STATUS without a context", 0, nbdraw.CMD_FLUSH)
        c.close()
    # Without structured replies at all (simple replies).
    c = Conn(sock, structured=False)
    c.expect("BLOCK_STATUS with simple replies", nbdraw.EINVAL, CMD_BLOCK_STATUS, 0, 4096)
    check_eq("READ after it", c.read(0, 4096), file_read(backing, 0, 4096))


# --- sparse reads -----------------------------------------------------------

def pread_chunks(h, offset, length, flags=0):
    """libnbd structured READ: the data and its chunks [(offset, length,
    status)] in arrival order."""
    chunks = []

    def cb(subbuf, off, status, err):
        chunks.append((off, len(subbuf), status))
        return 0
    data = h.pread_structured(length, offset, cb, flags)
    return (data, chunks)


def status_name(s):
    return {nbd.READ_DATA: "data", nbd.READ_HOLE: "hole", nbd.READ_ERROR: "error"}.get(s, s)


def check_read_chunks(what, chunks, want):
    """chunks must tile want's runs: a hole run only by hole chunks, a data
    run only by data chunks."""
    got = merge([(o, n, s == nbd.READ_HOLE) for (o, n, s) in sorted(chunks)])
    if got != want:
        fail("%s: chunks %s, want %s", what,
             " ".join("[%d,+%d %s]" % (o, n, status_name(s)) for (o, n, s) in chunks),
             fmt_runs(want))


def case_sparse_read(sock, backing):
    """READ of a range with holes: OFFSET_HOLE chunks for the holes,
    OFFSET_DATA for the data, separate; with DF one data chunk; the bytes
    always equal the file."""
    runs = layout(backing)
    if len(runs) < 3:
        raise Skip("backing file layout too simple: %s" % fmt_runs(runs))
    h = connect(sock, strict=True)
    if not h.can_df():
        fail("NBD_FLAG_SEND_DF not advertised with structured replies")
    # Windows: each run boundary +- 1 MiB, and the first three runs whole.
    windows = [(max(0, o - MiB), 2 * MiB) for (o, _, _) in runs[1:]]
    windows.append((0, runs[2][0] + runs[2][1]))
    for (off, n) in windows:
        n = min(n, h.get_size() - off, 32 * MiB)
        want = layout(backing, off, off + n)
        (data, chunks) = pread_chunks(h, off, n)
        check_eq("READ(%d, %d)" % (off, n), data, file_read(backing, off, n))
        check_read_chunks("READ(%d, %d)" % (off, n), chunks, want)
        if len(want) > 1 and len(chunks) < len(want):
            fail("READ(%d, %d): %d chunks for %d runs", off, n, len(chunks), len(want))
        (data, chunks) = pread_chunks(h, off, n, nbd.CMD_FLAG_DF)
        check_eq("DF READ(%d, %d)" % (off, n), data, file_read(backing, off, n))
        if len(chunks) != 1 or chunks[0][:2] != (off, n):
            fail("DF READ(%d, %d): chunks %r, want one covering the request", off, n, chunks)
        if len(want) > 1 and chunks[0][2] != nbd.READ_DATA:
            fail("DF READ(%d, %d) over data and holes: chunk is %s; proto.md: MUST use "
                 "OFFSET_DATA", off, n, status_name(chunks[0][2]))
    # All-hole and all-data ranges.
    for (o, n, hole) in runs:
        n = min(n, 4 * MiB)
        (data, chunks) = pread_chunks(h, o, n)
        check_eq("READ(%d, %d)" % (o, n), data, file_read(backing, o, n))
        check_read_chunks("READ(%d, %d) of one run" % (o, n), chunks, [(o, n, hole)])
    h.shutdown()


def case_sparse_after_trim(sock, backing):
    """A fully allocated file is read as data only; once a TRIM punched a
    hole, READ reports it as OFFSET_HOLE."""
    if layout(backing) != [(0, os.path.getsize(backing), False)]:
        raise Skip("backing file is not fully allocated")
    h = connect(sock, strict=True)
    (data, chunks) = pread_chunks(h, 0, 4 * MiB)
    check_eq("READ before TRIM", data, file_read(backing, 0, 4 * MiB))
    check_read_chunks("READ before TRIM", chunks, [(0, 4 * MiB, False)])
    h.trim(MiB, 2 * MiB)
    if not is_hole_at(backing, 2 * MiB):
        fail("TRIM(2 MiB, 1 MiB) left no hole at 2 MiB in the backing file")
    want = [(0, 2 * MiB, False), (2 * MiB, MiB, True), (3 * MiB, MiB, False)]
    (data, chunks) = pread_chunks(h, 0, 4 * MiB)
    check_eq("READ after TRIM", data, file_read(backing, 0, 4 * MiB))
    check_eq("READ of the trimmed MiB", data[2 * MiB:3 * MiB], bytes(MiB))
    check_read_chunks("READ after TRIM", chunks, want)
    h.shutdown()


# --- WRITE_ZEROES, TRIM, CACHE ----------------------------------------------

def case_zero_flags(sock, backing):
    """WRITE_ZEROES on a fully allocated file: NO_HOLE keeps the range
    allocated, no flag punches a hole, FAST_ZERO succeeds."""
    if layout(backing) != [(0, os.path.getsize(backing), False)]:
        raise Skip("backing file is not fully allocated")
    h = connect(sock, strict=True)
    for (name, ok) in (("can_zero", h.can_zero()), ("can_fast_zero", h.can_fast_zero()),
                       ("can_trim", h.can_trim()), ("can_df", h.can_df()),
                       ("can_cache", h.can_cache())):
        if not ok:
            fail("libnbd %s() is false", name)
    before = allocated(backing)
    # NO_HOLE over data: zeros, still allocated.
    h.zero(MiB, 4 * MiB, nbd.CMD_FLAG_NO_HOLE)
    h.flush()
    check_eq("file after NO_HOLE zero", file_read(backing, 4 * MiB, MiB), bytes(MiB))
    check_eq("READ after NO_HOLE zero", h.pread(MiB, 4 * MiB), bytes(MiB))
    if allocated(backing) < before:
        fail("NO_HOLE WRITE_ZEROES freed %d bytes of the file", before - allocated(backing))
    # Without NO_HOLE: a hole.
    h.zero(MiB, 8 * MiB)
    check_eq("file after WRITE_ZEROES", file_read(backing, 8 * MiB, MiB), bytes(MiB))
    check_eq("READ after WRITE_ZEROES", h.pread(MiB, 8 * MiB), bytes(MiB))
    if not is_hole_at(backing, 8 * MiB) or is_data_at(backing, 8 * MiB + MiB // 2):
        fail("WRITE_ZEROES without NO_HOLE: no hole at 8 MiB in the backing file (%s)",
             fmt_runs(layout(backing, 7 * MiB, 10 * MiB)))
    if before - allocated(backing) < MiB - FS_SLACK:
        fail("WRITE_ZEROES without NO_HOLE freed %d bytes, want about 1 MiB",
             before - allocated(backing))
    # NO_HOLE over that hole: allocated again (st_blocks; ext4 reports
    # unwritten extents as holes to SEEK_DATA, so that cannot tell).
    mid = allocated(backing)
    h.zero(MiB, 8 * MiB, nbd.CMD_FLAG_NO_HOLE)
    if allocated(backing) - mid < MiB - FS_SLACK:
        fail("NO_HOLE WRITE_ZEROES over a hole allocated %d bytes, want 1 MiB",
             allocated(backing) - mid)
    check_eq("READ after NO_HOLE over a hole", h.pread(MiB, 8 * MiB), bytes(MiB))
    # FAST_ZERO on a file succeeds.
    h.zero(MiB, 12 * MiB, nbd.CMD_FLAG_FAST_ZERO)
    h.zero(64 * KiB, 14 * MiB, nbd.CMD_FLAG_FAST_ZERO | nbd.CMD_FLAG_FUA)
    check_eq("file after FAST_ZERO", file_read(backing, 12 * MiB, MiB), bytes(MiB))
    check_eq("file after FAST_ZERO|FUA", file_read(backing, 14 * MiB, 64 * KiB),
             bytes(64 * KiB))
    check_eq("data around the zeroed ranges", file_read(backing, 13 * MiB, MiB),
             h.pread(MiB, 13 * MiB))
    h.shutdown()


def case_trim(sock, backing):
    """TRIM punches a hole in the file and reads back zeros; neighbours
    keep their data."""
    if layout(backing) != [(0, os.path.getsize(backing), False)]:
        raise Skip("backing file is not fully allocated")
    h = connect(sock, strict=True)
    edge = file_read(backing, 2 * MiB - 4096, 4096) + file_read(backing, 4 * MiB, 4096)
    before = allocated(backing)
    h.trim(2 * MiB, 2 * MiB)
    h.trim(64 * KiB, 6 * MiB, nbd.CMD_FLAG_FUA)
    if not is_hole_at(backing, 2 * MiB) or is_data_at(backing, 3 * MiB):
        fail("TRIM(2 MiB at 2 MiB): backing file layout %s",
             fmt_runs(layout(backing, MiB, 5 * MiB)))
    if not is_hole_at(backing, 6 * MiB):
        fail("TRIM with FUA left no hole at 6 MiB")
    if before - allocated(backing) < 2 * MiB + 64 * KiB - FS_SLACK:
        fail("TRIM freed %d bytes, want >= %d", before - allocated(backing),
             2 * MiB + 64 * KiB)
    check_eq("READ of trimmed range", h.pread(2 * MiB, 2 * MiB), bytes(2 * MiB))
    check_eq("READ of neighbours", h.pread(4096, 2 * MiB - 4096) + h.pread(4096, 4 * MiB), edge)
    check_eq("file neighbours", file_read(backing, 2 * MiB - 4096, 4096) +
             file_read(backing, 4 * MiB, 4096), edge)
    h.shutdown()


def case_cache(sock, backing):
    """CACHE succeeds and changes nothing."""
    h = connect(sock, strict=True)
    if not h.can_cache():
        fail("NBD_FLAG_SEND_CACHE not advertised")
    size = h.get_size()
    before = file_read(backing, 0, size)
    runs = layout(backing)
    for (off, n) in ((0, size), (MiB, 4096), (size - 4096, 4096)):
        h.cache(n, off)
    check_eq("file after CACHE", file_read(backing, 0, size), before)
    if layout(backing) != runs:
        fail("CACHE changed the file's layout: %s -> %s", fmt_runs(runs),
             fmt_runs(layout(backing)))
    check_eq("READ after CACHE", h.pread(MiB, MiB), before[MiB:2 * MiB])
    h.shutdown()
    c = Conn(sock)
    c.expect("raw CACHE", 0, CMD_CACHE, 0, 65536)
    c.expect("raw CACHE with FUA", 0, CMD_CACHE, 0, 65536, FLAG_FUA)


def case_readonly(sock, backing):
    """-readonly: WRITE, TRIM, WRITE_ZEROES (with and without FAST_ZERO)
    -> EPERM, nothing changes; READ, BLOCK_STATUS and CACHE work."""
    before = file_read(backing, 0, os.path.getsize(backing))
    runs = layout(backing)
    for (structured, extended) in ((False, False), (True, False), (False, True)):
        c = Conn(sock, structured=structured, extended=extended,
                 meta=["base:allocation"] if structured or extended else None)
        if not c.tx_flags & nbdraw.TX_READ_ONLY:
            fail("NBD_FLAG_READ_ONLY not set")
        wflag = FLAG_PAYLOAD_LEN if extended else 0
        c.expect("WRITE", nbdraw.EPERM, nbdraw.CMD_WRITE, 0, 4096, wflag, b"\xee" * 4096)
        c.expect("TRIM", nbdraw.EPERM, nbdraw.CMD_TRIM, 0, 4096)
        c.expect("WRITE_ZEROES", nbdraw.EPERM, nbdraw.CMD_WRITE_ZEROES, 0, 4096)
        c.expect("WRITE_ZEROES|NO_HOLE", nbdraw.EPERM, nbdraw.CMD_WRITE_ZEROES, 0, 4096,
                 FLAG_NO_HOLE)
        # As nbdkit and qemu-nbd -r: nothing a read-only export can only
        # refuse is advertised. A raw TRIM or WRITE_ZEROES is still EPERM;
        # FAST_ZERO, not advertised, is a flag the client may not send.
        for (bit, what) in ((nbdraw.TX_SEND_TRIM, "TRIM"),
                            (nbdraw.TX_SEND_WRITE_ZEROES, "WRITE_ZEROES"),
                            (TX_SEND_FAST_ZERO, "FAST_ZERO")):
            if c.tx_flags & bit:
                fail("read-only export advertises NBD_FLAG_SEND_%s (flags %#x)", what,
                     c.tx_flags)
        c.expect("WRITE_ZEROES|FAST_ZERO", nbdraw.EINVAL, nbdraw.CMD_WRITE_ZEROES, 0, 4096,
                 FLAG_FAST_ZERO)
        c.expect("CACHE", 0, CMD_CACHE, 0, 65536)
        check_eq("READ (payload of the refused WRITE drained)", c.read(0, 8192),
                 before[:8192])
        if structured or extended:
            (_, ext) = c.block_status(0, len(before))
            end = sum(n for (n, _) in ext)
            check_runs("BLOCK_STATUS on a read-only export", merge(extents_to_runs(0, ext)),
                       layout(backing, 0, end))
        c.close()
    h = connect(sock, strict=True)
    if not h.is_read_only():
        fail("libnbd: is_read_only() false")
    (runs_nbd, _) = nbd_map(h, 0, h.get_size())
    check_runs("libnbd BLOCK_STATUS on a read-only export", runs_nbd, runs)
    h.cache(MiB, 0)
    h.shutdown()
    check_eq("file after refused writes", file_read(backing, 0, len(before)), before)


# --- bad input ----------------------------------------------------------------

def bogus_payload(n):
    """A WRITE payload that parses as READ requests, so a server that
    fails to drain it answers something the client never asked."""
    req = struct.pack(">IHHQQI", nbdraw.REQUEST_MAGIC, 0, nbdraw.CMD_READ, 0xDEADBEEF, 0, 4096)
    return (req * (n // len(req) + 1))[:n]


def still_serving(c, backing, what):
    check_eq("READ after %s" % what, c.read(0, 8192), file_read(backing, 0, 8192))
    c.expect("FLUSH after %s" % what, 0, nbdraw.CMD_FLUSH)


def bad_flag_cases():
    """(what, command, flags, has payload): flags the command does not take."""
    return [
        ("REQ_ONE on READ", nbdraw.CMD_READ, FLAG_REQ_ONE, False),
        ("NO_HOLE on READ", nbdraw.CMD_READ, FLAG_NO_HOLE, False),
        ("FAST_ZERO on READ", nbdraw.CMD_READ, FLAG_FAST_ZERO, False),
        ("NO_HOLE on WRITE", nbdraw.CMD_WRITE, FLAG_NO_HOLE, True),
        ("DF on WRITE", nbdraw.CMD_WRITE, FLAG_DF, True),
        ("FAST_ZERO on WRITE", nbdraw.CMD_WRITE, FLAG_FAST_ZERO, True),
        ("REQ_ONE on WRITE", nbdraw.CMD_WRITE, FLAG_REQ_ONE, True),
        ("DF on WRITE_ZEROES", nbdraw.CMD_WRITE_ZEROES, FLAG_DF, False),
        ("REQ_ONE on WRITE_ZEROES", nbdraw.CMD_WRITE_ZEROES, FLAG_REQ_ONE, False),
        ("FAST_ZERO on TRIM", nbdraw.CMD_TRIM, FLAG_FAST_ZERO, False),
        ("NO_HOLE on TRIM", nbdraw.CMD_TRIM, FLAG_NO_HOLE, False),
        ("DF on TRIM", nbdraw.CMD_TRIM, FLAG_DF, False),
        ("DF on BLOCK_STATUS", CMD_BLOCK_STATUS, FLAG_DF, False),
        ("NO_HOLE on BLOCK_STATUS", CMD_BLOCK_STATUS, FLAG_NO_HOLE, False),
        ("FAST_ZERO on CACHE", CMD_CACHE, FLAG_FAST_ZERO, False),
        ("REQ_ONE on CACHE", CMD_CACHE, FLAG_REQ_ONE, False),
        ("DF on CACHE", CMD_CACHE, FLAG_DF, False),
        ("PAYLOAD_LEN without extended headers, READ", nbdraw.CMD_READ, FLAG_PAYLOAD_LEN,
         False),
        ("unknown flag 1<<6 on WRITE_ZEROES", nbdraw.CMD_WRITE_ZEROES, 1 << 6, False),
    ]


def case_bad_flags(sock, backing):
    """Each flag a command does not take -> EINVAL; a refused WRITE's
    payload is drained and not written; nothing changes."""
    before = file_read(backing, 0, os.path.getsize(backing))
    c = Conn(sock, meta=["base:allocation"])
    for (what, cmd, flags, payload) in bad_flag_cases():
        data = bogus_payload(4096) if payload else b""
        c.expect(what, nbdraw.EINVAL, cmd, 4096, 4096, flags, data)
        still_serving(c, backing, what)
    check_eq("file after refused requests", file_read(backing, 0, len(before)), before)


def case_bad_df_simple(sock, backing):
    """Without structured replies NBD_FLAG_SEND_DF is clear (proto.md
    "Transmission flags": MUST) and a READ with DF is EINVAL."""
    c = Conn(sock, structured=False)
    if c.tx_flags & TX_SEND_DF:
        fail("NBD_FLAG_SEND_DF set without structured replies (flags %#x)", c.tx_flags)
    c.expect("READ with DF, simple replies", nbdraw.EINVAL, nbdraw.CMD_READ, 0, 4096, FLAG_DF)
    still_serving(c, backing, "DF with simple replies")
    s = Conn(sock)
    if not s.tx_flags & TX_SEND_DF:
        fail("NBD_FLAG_SEND_DF clear with structured replies (flags %#x)", s.tx_flags)
    rep = s.expect("READ with DF, structured", 0, nbdraw.CMD_READ, 0, 65536, FLAG_DF)
    content = [ch for ch in rep.chunks if ch[0] in (TYPE_OFFSET_DATA, TYPE_OFFSET_HOLE)]
    if len(content) != 1:
        fail("READ with DF: %d content chunks, want 1", len(content))


def case_fast_zero(sock, backing):
    """FAST_ZERO alone and with NO_HOLE and FUA on WRITE_ZEROES: allowed
    (NBD_FLAG_SEND_FAST_ZERO is advertised); on a file, done."""
    c = Conn(sock)
    if not c.tx_flags & TX_SEND_FAST_ZERO:
        fail("NBD_FLAG_SEND_FAST_ZERO not advertised (flags %#x)", c.tx_flags)
    for flags in (FLAG_FAST_ZERO, FLAG_FAST_ZERO | FLAG_FUA):
        c.expect("WRITE_ZEROES flags %#x" % flags, 0, nbdraw.CMD_WRITE_ZEROES, MiB, 65536, flags)
        check_eq("READ after fast zero", c.read(MiB, 65536), bytes(65536))
    rep = c.call(nbdraw.CMD_WRITE_ZEROES, 2 * MiB, 65536, FLAG_FAST_ZERO | FLAG_NO_HOLE)
    if rep.err not in (0, nbdraw.ENOTSUP):
        fail("WRITE_ZEROES FAST_ZERO|NO_HOLE: %s, want OK or ENOTSUP", err_name(rep.err))
    if rep.err == 0:
        check_eq("READ after FAST_ZERO|NO_HOLE", c.read(2 * MiB, 65536), bytes(65536))
    still_serving(c, backing, "fast zeroes")


def case_zero_length(sock, backing):
    """Zero-length READ, WRITE, TRIM, WRITE_ZEROES, BLOCK_STATUS, CACHE ->
    EINVAL (nbdring's documented choice; proto.md leaves it unspecified but
    SHOULD NOT disconnect)."""
    for (structured, extended) in ((False, False), (True, False), (False, True)):
        c = Conn(sock, structured=structured, extended=extended,
                 meta=None if not (structured or extended) else ["base:allocation"])
        cmds = [("READ", nbdraw.CMD_READ, 0), ("WRITE", nbdraw.CMD_WRITE,
                                                FLAG_PAYLOAD_LEN if extended else 0),
                ("TRIM", nbdraw.CMD_TRIM, 0), ("WRITE_ZEROES", nbdraw.CMD_WRITE_ZEROES, 0),
                ("CACHE", CMD_CACHE, 0)]
        if structured or extended:
            cmds.append(("BLOCK_STATUS", CMD_BLOCK_STATUS, 0))
        for (what, cmd, flags) in cmds:
            what = "zero-length %s (%s)" % (what, "extended" if extended else
                                            "structured" if structured else "simple")
            c.expect(what, nbdraw.EINVAL, cmd, 4096, 0, flags)
            still_serving(c, backing, what)
        c.close()


def case_write_drained(sock, backing):
    """Refused WRITEs of several sizes (bad flag, past the end) have their
    payload drained: the next request is answered, nothing is written."""
    before = file_read(backing, 0, os.path.getsize(backing))
    size = len(before)
    c = Conn(sock, meta=["base:allocation"])
    for n in (1, 4096, 65536 + 512, 4 * MiB):
        c.expect("WRITE %d with NO_HOLE" % n, nbdraw.EINVAL, nbdraw.CMD_WRITE, 0, n,
                 FLAG_NO_HOLE, bogus_payload(n))
        still_serving(c, backing, "refused WRITE of %d bytes" % n)
        c.expect("WRITE %d past the end" % n, nbdraw.ENOSPC, nbdraw.CMD_WRITE, size, n, 0,
                 bogus_payload(n))
        still_serving(c, backing, "WRITE of %d bytes past the end" % n)
    check_eq("file after refused WRITEs", file_read(backing, 0, size), before)


def case_out_of_range(sock, backing):
    """CACHE and BLOCK_STATUS out of range -> EINVAL."""
    c = Conn(sock, meta=["base:allocation"])
    size = os.path.getsize(backing)
    for (cmd, name) in ((CMD_CACHE, "CACHE"), (CMD_BLOCK_STATUS, "BLOCK_STATUS")):
        for (off, n) in ((size, 4096), (size - 4096, 8192), (size + GiB, 4096),
                         ((1 << 64) - 4096, 8192)):
            c.expect("%s(%d, %d) of a %d-byte export" % (name, off, n, size), nbdraw.EINVAL,
                     cmd, off, n)
        still_serving(c, backing, name + " out of range")
    c.expect("CACHE of the last block", 0, CMD_CACHE, size - 4096, 4096)


# --- extended headers -----------------------------------------------------------

def ext_conn(sock, meta=True):
    c = Conn(sock, extended=True, meta=["base:allocation"] if meta else None)
    if meta and c.meta_id is None:
        fail("SET_META_CONTEXT after EXTENDED_HEADERS selected no base:allocation")
    # Cookies that need all 64 bits.
    c.next_handle = 0xFEDCBA9876540000
    return c


def need_big(backing):
    if os.path.getsize(backing) <= 4 * GiB + 2 * MiB:
        raise Skip("export of %d bytes: extended-header cases need more than 4 GiB" %
                   os.path.getsize(backing))


def case_ext_basic(sock, backing):
    """Every reply is a 32-byte extended reply echoing cookie and offset;
    WRITE with PAYLOAD_LEN; READ via OFFSET_DATA and OFFSET_HOLE chunks."""
    need_big(backing)
    c = ext_conn(sock)
    if c.tx_flags & (1 << 12):
        fail("NBD_FLAG_BLOCK_STATUS_PAYLOAD advertised (flags %#x) but not implemented",
             c.tx_flags)
    base = 6 * GiB
    if not is_hole_at(backing, base - MiB) or not is_hole_at(backing, base + MiB):
        raise Skip("want holes around 6 GiB in the backing file")
    data = os.urandom(64 * KiB)
    c.write(base, data)
    c.write(base + 64 * KiB, data, FLAG_FUA)
    c.expect("FLUSH", 0, nbdraw.CMD_FLUSH)
    check_eq("file after extended WRITEs", file_read(backing, base, 128 * KiB), data + data)
    check_eq("READ back", c.read(base, 128 * KiB), data + data)
    # A range that is hole, data, hole.
    (off, n) = (base - 64 * KiB, 256 * KiB)
    rep = c.expect("READ over hole, data, hole", 0, nbdraw.CMD_READ, off, n)
    check_eq("READ over hole, data, hole", bytes(rep.data), file_read(backing, off, n))
    kinds = [t for (t, _, _) in rep.chunks if t in (TYPE_OFFSET_DATA, TYPE_OFFSET_HOLE)]
    if TYPE_OFFSET_HOLE not in kinds or TYPE_OFFSET_DATA not in kinds:
        fail("READ over hole, data, hole: chunk types %r, want OFFSET_HOLE and OFFSET_DATA",
             [t for (t, _, _) in rep.chunks])
    got = merge([(off + o, k, h) for (o, k, h) in rep.covered])
    check_runs("READ chunks", got, layout(backing, off, off + n))
    # DF: one content chunk, data.
    rep = c.expect("READ with DF", 0, nbdraw.CMD_READ, off, n, FLAG_DF)
    content = [ch for ch in rep.chunks if ch[0] in (TYPE_OFFSET_DATA, TYPE_OFFSET_HOLE)]
    if len(content) != 1 or content[0][0] != TYPE_OFFSET_DATA:
        fail("READ with DF: chunks %r, want one OFFSET_DATA", [t for (t, _, _) in rep.chunks])
    check_eq("READ with DF", bytes(rep.data), file_read(backing, off, n))
    # A hole past 4 GiB: OFFSET_HOLE only.
    rep = c.expect("READ of a hole", 0, nbdraw.CMD_READ, 5 * GiB, MiB)
    if [t for (t, _, _) in rep.chunks if t != TYPE_NONE] != [TYPE_OFFSET_HOLE]:
        fail("READ of a hole at 5 GiB: chunk types %r, want one OFFSET_HOLE",
             [t for (t, _, _) in rep.chunks])
    c.expect("CACHE", 0, CMD_CACHE, 0, 5 * GiB)
    c.disc()
    if c.wait_closed():
        fail("bytes after NBD_CMD_DISC")


def case_ext_block_status(sock, backing):
    """BLOCK_STATUS_EXT over an 8 GiB sparse export: 64-bit effect length,
    descriptors longer than 4 GiB, matching the file's layout; REQ_ONE."""
    need_big(backing)
    size = os.path.getsize(backing)
    want = layout(backing)
    if not any(h and n > 4 * GiB for (_, n, h) in want):
        raise Skip("no hole longer than 4 GiB: %s" % fmt_runs(want))
    c = ext_conn(sock)
    runs = []
    pos = 0
    while pos < size:
        (cid, ext) = c.block_status(pos, size - pos)
        if cid != c.meta_id:
            fail("BLOCK_STATUS_EXT context id %d, SET gave %d", cid, c.meta_id)
        for r in extents_to_runs(pos, ext):
            runs.append((r[0], min(r[1], size - r[0]), r[2]))
        pos = runs[-1][0] + runs[-1][1]
        if pos == 0 or sum(n for (n, _) in ext) > size:
            fail("BLOCK_STATUS_EXT(%d, ...): extents %r", pos, ext)
    check_runs("BLOCK_STATUS_EXT over 8 GiB", merge(runs), want)
    for (o, n, hole) in want:
        if not hole or n <= 4 * GiB:
            continue
        (_, ext) = c.block_status(o, n)
        if ext != [(n, STATE_HOLE | STATE_ZERO)]:
            fail("BLOCK_STATUS_EXT(%d, %d) of one hole: %r, want one descriptor", o, n, ext)
        (_, ext) = c.block_status(o, size - o, FLAG_REQ_ONE)
        if ext != [(n, STATE_HOLE | STATE_ZERO)]:
            fail("REQ_ONE BLOCK_STATUS_EXT(%d, %d): %r, want [(%d, 3)]", o, size - o, ext, n)
        (_, ext) = c.block_status(o, 4 * GiB + 4096, FLAG_REQ_ONE)
        if ext != [(4 * GiB + 4096, STATE_HOLE | STATE_ZERO)]:
            fail("REQ_ONE BLOCK_STATUS_EXT(%d, 4 GiB + 4096): %r, want one extent of exactly "
                 "the request", o, ext)
    c.expect("BLOCK_STATUS_EXT past the end", nbdraw.EINVAL, CMD_BLOCK_STATUS, 4096, size)


def big_fill(c, backing, offs):
    data = os.urandom(MiB)
    for o in offs:
        c.write(o, data)
    c.expect("FLUSH", 0, nbdraw.CMD_FLUSH)
    for o in offs:
        if not is_data_at(backing, o):
            fail("no data at %d after WRITE", o)


def case_ext_big_zero(sock, backing):
    """WRITE_ZEROES with a 64-bit length of 5 GiB punches one hole."""
    need_big(backing)
    c = ext_conn(sock)
    big_fill(c, backing, (GiB, 2 * GiB + 12345 * 4096, 5 * GiB + 4 * MiB))
    keep = file_read(backing, 6 * GiB, MiB)
    c.expect("WRITE_ZEROES of 5 GiB", 0, nbdraw.CMD_WRITE_ZEROES, GiB, 5 * GiB)
    check_runs("file after WRITE_ZEROES of 5 GiB", layout(backing, GiB, 6 * GiB),
               [(GiB, 5 * GiB, True)])
    for o in (GiB, 2 * GiB + 12345 * 4096, 5 * GiB + 4 * MiB):
        check_eq("READ at %d after big WRITE_ZEROES" % o, c.read(o, MiB), bytes(MiB))
    (_, ext) = c.block_status(GiB, 5 * GiB)
    if ext != [(5 * GiB, STATE_HOLE | STATE_ZERO)]:
        fail("BLOCK_STATUS_EXT after big WRITE_ZEROES: %r", ext)
    check_eq("data after the zeroed range", file_read(backing, 6 * GiB, MiB), keep)


def case_ext_big_trim(sock, backing):
    """TRIM with a 64-bit length of 4.5 GiB."""
    need_big(backing)
    c = ext_conn(sock)
    n = 4 * GiB + 512 * MiB
    big_fill(c, backing, (GiB, 3 * GiB, GiB + n - MiB, GiB + n))
    c.expect("TRIM of 4.5 GiB", 0, nbdraw.CMD_TRIM, GiB, n)
    check_runs("file after TRIM of 4.5 GiB", layout(backing, GiB, GiB + n + MiB),
               [(GiB, n, True), (GiB + n, MiB, False)])
    check_eq("READ after big TRIM", c.read(3 * GiB, MiB), bytes(MiB))
    (_, ext) = c.block_status(GiB, n, FLAG_REQ_ONE)
    if ext != [(n, STATE_HOLE | STATE_ZERO)]:
        fail("REQ_ONE BLOCK_STATUS_EXT after big TRIM: %r", ext)


def case_ext_write_no_payload_len(sock, backing):
    """With extended headers WRITE MUST carry NBD_CMD_FLAG_PAYLOAD_LEN;
    without it there is no payload, and the server answers EINVAL with an
    error chunk; the connection goes on."""
    c = ext_conn(sock)
    before = file_read(backing, 0, 65536)
    rep = c.call(nbdraw.CMD_WRITE, 0, 4096)
    errs = [(t, f) for (t, f, _) in rep.chunks if t & (1 << 15)]
    if rep.err != nbdraw.EINVAL or not errs:
        fail("WRITE without PAYLOAD_LEN: %s, chunks %r; want an error chunk with EINVAL",
             err_name(rep.err), [(t, f) for (t, f, _) in rep.chunks])
    if errs[0][0] not in (TYPE_ERROR, TYPE_ERROR_OFFSET):
        fail("error chunk type %#x", errs[0][0])
    still_serving(c, backing, "WRITE without PAYLOAD_LEN")
    # Other commands with PAYLOAD_LEN: EINVAL, payload drained.
    for (what, cmd) in (("READ", nbdraw.CMD_READ), ("TRIM", nbdraw.CMD_TRIM),
                        ("BLOCK_STATUS", CMD_BLOCK_STATUS), ("CACHE", CMD_CACHE),
                        ("WRITE_ZEROES", nbdraw.CMD_WRITE_ZEROES)):
        payload = bogus_payload(512)
        c.expect("%s with PAYLOAD_LEN" % what, nbdraw.EINVAL, cmd, 0, len(payload),
                 FLAG_PAYLOAD_LEN, payload)
        still_serving(c, backing, "%s with PAYLOAD_LEN" % what)
    check_eq("file after refused requests", file_read(backing, 0, 65536), before)


def case_ext_export_name(sock, backing):
    """NBD_OPT_EXPORT_NAME after EXTENDED_HEADERS: the client broke a MUST,
    the server closes without answering."""
    c = Conn(sock, extended=True, go=False)
    name = EXPORT.encode()
    c.send(struct.pack(">QII", nbdraw.IHAVEOPT, nbdraw.OPT_EXPORT_NAME, len(name)) + name)
    try:
        rest = c.wait_closed()
    except socket.timeout:
        fail("EXPORT_NAME after EXTENDED_HEADERS: server kept the connection open")
    if rest:
        fail("EXPORT_NAME after EXTENDED_HEADERS: got %d bytes %r, want a hang-up", len(rest),
             rest[:32])
    # Others are served.
    d = ext_conn(sock, meta=False)
    check_eq("READ on a new connection", d.read(0, 4096), file_read(backing, 0, 4096))


CASES = {
    "meta-list": case_meta_list,
    "meta-set": case_meta_set,
    "meta-needs-structured": case_meta_needs_structured,
    "meta-unknown-export": case_meta_unknown_export,
    "meta-nul-name": case_meta_nul_name,
    "opt-repeat": case_opt_repeat,
    "meta-stale": case_meta_stale,
    "bs-file": case_bs_file,
    "bs-tools": case_bs_tools,
    "bs-device": case_bs_device,
    "bs-no-context": case_bs_no_context,
    "sparse-read": case_sparse_read,
    "sparse-after-trim": case_sparse_after_trim,
    "zero-flags": case_zero_flags,
    "trim": case_trim,
    "cache": case_cache,
    "readonly": case_readonly,
    "bad-flags": case_bad_flags,
    "bad-df-simple": case_bad_df_simple,
    "fast-zero": case_fast_zero,
    "zero-length": case_zero_length,
    "write-drained": case_write_drained,
    "out-of-range": case_out_of_range,
    "ext-basic": case_ext_basic,
    "ext-block-status": case_ext_block_status,
    "ext-big-zero": case_ext_big_zero,
    "ext-big-trim": case_ext_big_trim,
    "ext-write-no-payload-len": case_ext_write_no_payload_len,
    "ext-export-name": case_ext_export_name,
}


def main():
    global EXPORT, ARGS
    if len(sys.argv) < 4 or sys.argv[1] not in CASES:
        sys.exit("usage: protocases.py {%s} SOCKET BACKING [EXPORT_NAME [ARG...]]"
                 % "|".join(CASES))
    (name, sock, backing) = sys.argv[1:4]
    if len(sys.argv) > 4:
        EXPORT = sys.argv[4]
    ARGS = sys.argv[5:]
    try:
        CASES[name](sock, backing)
    except Skip as e:
        print("SKIP %s" % e)
        sys.exit(3)
    print("PASS %s" % name)


if __name__ == "__main__":
    main()
