"""A raw-socket NBD client for the end-to-end tests.

libnbd refuses to put some malformed messages on the wire (a bad request
magic, a WRITE header without its payload, an unknown command), so the
cases that need them speak the protocol by hand. Layouts follow
/work/shared/spec/proto.md; all integers are big-endian.

Only simple replies are used: the client never sends
NBD_OPT_STRUCTURED_REPLY.
"""

import socket
import struct

NBDMAGIC = b"NBDMAGIC"
IHAVEOPT = 0x49484156454F5054
OPT_REPLY_MAGIC = 0x3E889045565A9
REQUEST_MAGIC = 0x25609513
SIMPLE_REPLY_MAGIC = 0x67446698

FLAG_FIXED_NEWSTYLE = 1 << 0  # NBD_FLAG_FIXED_NEWSTYLE / NBD_FLAG_C_FIXED_NEWSTYLE
FLAG_NO_ZEROES = 1 << 1  # NBD_FLAG_NO_ZEROES / NBD_FLAG_C_NO_ZEROES

OPT_EXPORT_NAME = 1
OPT_ABORT = 2
OPT_GO = 7

REP_ACK = 1
REP_INFO = 3
REP_FLAG_ERROR = 1 << 31

INFO_EXPORT = 0
INFO_BLOCK_SIZE = 3

CMD_READ = 0
CMD_WRITE = 1
CMD_DISC = 2
CMD_FLUSH = 3
CMD_TRIM = 4
CMD_WRITE_ZEROES = 6

CMD_FLAG_FUA = 1 << 0

TX_HAS_FLAGS = 1 << 0  # NBD_FLAG_HAS_FLAGS
TX_READ_ONLY = 1 << 1  # NBD_FLAG_READ_ONLY
TX_SEND_FLUSH = 1 << 2  # NBD_FLAG_SEND_FLUSH
TX_SEND_FUA = 1 << 3  # NBD_FLAG_SEND_FUA
TX_SEND_TRIM = 1 << 5  # NBD_FLAG_SEND_TRIM
TX_SEND_WRITE_ZEROES = 1 << 6  # NBD_FLAG_SEND_WRITE_ZEROES
TX_CAN_MULTI_CONN = 1 << 8  # NBD_FLAG_CAN_MULTI_CONN

EPERM = 1
EIO = 5
ENOMEM = 12
EINVAL = 22
ENOSPC = 28
EOVERFLOW = 75
ENOTSUP = 95
ESHUTDOWN = 108


class ProtocolError(Exception):
    pass


class OptError(ProtocolError):
    """The server answered an option with an error reply."""

    def __init__(self, opt, rtype, payload):
        super().__init__("option %d refused: reply type %#x %r" % (opt, rtype, payload))
        self.opt = opt
        self.rtype = rtype


REP_ERR_UNSUP = REP_FLAG_ERROR | 1
REP_ERR_POLICY = REP_FLAG_ERROR | 2
REP_ERR_INVALID = REP_FLAG_ERROR | 3
REP_ERR_UNKNOWN = REP_FLAG_ERROR | 6


class Conn:
    """One NBD connection: the greeting on construction, then (unless
    go=False) NBD_OPT_GO or NBD_OPT_EXPORT_NAME into transmission."""

    def __init__(self, sock_path, name="", block_size=True, export_name=False,
                 timeout=10.0, go=True):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self.sock.connect(sock_path)
        self.hflags = None
        self.size = None
        self.tx_flags = None
        self.block = None  # (minimum, preferred, maximum) if the server sent it
        self.next_handle = 1
        self._greet()
        if go and export_name:
            self.export_name(name)
        elif go:
            self.go(name, block_size)

    # --- plumbing -------------------------------------------------------

    def recv_exact(self, n):
        buf = bytearray()
        while len(buf) < n:
            chunk = self.sock.recv(n - len(buf))
            if not chunk:
                raise EOFError("server closed after %d of %d bytes" % (len(buf), n))
            buf += chunk
        return bytes(buf)

    def send(self, data):
        self.sock.sendall(data)

    def close(self):
        self.sock.close()

    # --- handshake ------------------------------------------------------

    def _greet(self):
        hello = self.recv_exact(18)
        if hello[:8] != NBDMAGIC:
            raise ProtocolError("bad init magic %r" % hello[:8])
        (opt_magic, self.hflags) = struct.unpack(">QH", hello[8:])
        if opt_magic != IHAVEOPT:
            raise ProtocolError("not newstyle: %#x" % opt_magic)
        if not self.hflags & FLAG_FIXED_NEWSTYLE:
            raise ProtocolError("server lacks FIXED_NEWSTYLE: %#x" % self.hflags)
        cflags = FLAG_FIXED_NEWSTYLE
        self.no_zeroes = bool(self.hflags & FLAG_NO_ZEROES)
        if self.no_zeroes:
            cflags |= FLAG_NO_ZEROES
        self.send(struct.pack(">I", cflags))

    def export_name(self, name):
        nameb = name.encode()
        self.send(struct.pack(">QII", IHAVEOPT, OPT_EXPORT_NAME, len(nameb)) + nameb)
        (self.size, self.tx_flags) = struct.unpack(">QH", self.recv_exact(10))
        if not self.no_zeroes:
            self.recv_exact(124)

    def go(self, name, block_size=True):
        nameb = name.encode()
        infos = [INFO_BLOCK_SIZE] if block_size else []
        data = struct.pack(">I", len(nameb)) + nameb + struct.pack(">H", len(infos))
        data += b"".join(struct.pack(">H", i) for i in infos)
        self.send(struct.pack(">QII", IHAVEOPT, OPT_GO, len(data)) + data)
        while True:
            (magic, opt, rtype, rlen) = struct.unpack(">QIII", self.recv_exact(20))
            if magic != OPT_REPLY_MAGIC or opt != OPT_GO:
                raise ProtocolError("bad option reply magic=%#x opt=%d" % (magic, opt))
            payload = self.recv_exact(rlen)
            if rtype & REP_FLAG_ERROR:
                raise OptError(opt, rtype, payload)
            if rtype == REP_ACK:
                break
            if rtype != REP_INFO:
                continue
            (itype,) = struct.unpack(">H", payload[:2])
            if itype == INFO_EXPORT:
                (self.size, self.tx_flags) = struct.unpack(">QH", payload[2:12])
            elif itype == INFO_BLOCK_SIZE:
                self.block = struct.unpack(">III", payload[2:14])
        if self.size is None:
            raise ProtocolError("OPT_GO acked without NBD_INFO_EXPORT")

    # --- transmission ---------------------------------------------------

    def send_request(self, cmd, offset=0, length=0, flags=0, payload=b"",
                     magic=REQUEST_MAGIC, handle=None):
        if handle is None:
            handle = self.next_handle
            self.next_handle += 1
        hdr = struct.pack(">IHHQQI", magic, flags, cmd, handle, offset, length)
        self.send(hdr + payload)
        return handle

    def recv_reply(self, read_length=0):
        """Reads one simple reply; read_length is the data to expect on
        success (the caller knows it from the request)."""
        (magic, err, handle) = struct.unpack(">IIQ", self.recv_exact(16))
        if magic != SIMPLE_REPLY_MAGIC:
            raise ProtocolError("bad reply magic %#x" % magic)
        data = b""
        if err == 0 and read_length:
            data = self.recv_exact(read_length)
        return (handle, err, data)

    def call(self, cmd, offset=0, length=0, flags=0, payload=b""):
        """Sends one request and waits for its reply; returns (err, data)."""
        h = self.send_request(cmd, offset, length, flags, payload)
        (rh, err, data) = self.recv_reply(length if cmd == CMD_READ else 0)
        if rh != h:
            raise ProtocolError("reply handle %d, want %d" % (rh, h))
        return (err, data)

    def read(self, offset, length):
        (err, data) = self.call(CMD_READ, offset, length)
        if err:
            raise ProtocolError("READ(%d, %d) failed: error %d" % (offset, length, err))
        return data

    def write(self, offset, data, flags=0):
        (err, _) = self.call(CMD_WRITE, offset, len(data), flags, data)
        if err:
            raise ProtocolError("WRITE(%d, %d) failed: error %d" % (offset, len(data), err))

    def disc(self):
        self.send_request(CMD_DISC)

    def wait_closed(self):
        """Returns the bytes the server sent before closing (b"" for a
        clean close right away); raises socket.timeout if it stays open."""
        got = bytearray()
        while True:
            try:
                chunk = self.sock.recv(65536)
            except ConnectionResetError:
                return bytes(got)
            if not chunk:
                return bytes(got)
            got += chunk
