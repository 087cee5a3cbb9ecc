"""Issue 16 against the real server: partial-block WRITEs and WRITE_ZEROES
on the same blocks from two connections at once.

Usage: /usr/bin/python3 rmwrace.py CASE SOCKET BACKING_FILE [ROUNDS]

Two libnbd handles that never ask for block sizes (so the server accepts
unaligned requests): one writes 24 bytes at offset 100 of every 4 KiB
block of a round, pipelined; at the same time the other zeroes 50 bytes
at offset 300 of the same blocks. Every reply must be OK, and read back
(on a third handle, and from BACKING_FILE after FLUSH) every block must
hold the written bytes, the zeroes and, everywhere else, what it held
before. Prints the count of wrong blocks, then "PASS CASE" when it is 0.
"""

import os
import sys
import threading

import nbd

BLOCK = 4096
BLOCKS = 1024  # blocks a round, as in the issue
WRITE_OFF, WRITE_LEN = 100, 24
ZERO_OFF, ZERO_LEN = 300, 50
CHUNK = 1 << 20  # read back in requests any server takes


def connect(sock):
    h = nbd.NBD()
    h.set_request_block_size(False)  # unaligned requests are the protocol's
    h.set_strict_mode(0)
    h.connect_unix(sock)
    return h


def pump(h, issue, errors, start):
    """Issues every request of a round on h, then waits for their replies."""
    try:
        start.wait()
        cookies = [issue(h, b) for b in range(BLOCKS)]
        while h.aio_in_flight() > 0:
            h.poll(-1)
        for c in cookies:
            h.aio_command_completed(c)  # raises the request's error
    except Exception as e:  # reported by the main thread
        errors.append(e)


def main():
    if len(sys.argv) not in (4, 5):
        sys.exit(__doc__)
    name, sock, backing = sys.argv[1:4]
    rounds = int(sys.argv[4]) if len(sys.argv) == 5 else 3
    with open(backing, "rb") as f:
        want = bytearray(f.read(rounds * BLOCKS * BLOCK))
    if len(want) < rounds * BLOCKS * BLOCK:
        sys.exit("backing file is smaller than %d rounds of %d blocks" % (rounds, BLOCKS))
    writer, zeroer, reader = connect(sock), connect(sock), connect(sock)
    for r in range(rounds):
        base = r * BLOCKS * BLOCK
        data = os.urandom(BLOCKS * WRITE_LEN)
        for b in range(BLOCKS):
            at = base + b * BLOCK
            want[at + WRITE_OFF:at + WRITE_OFF + WRITE_LEN] = \
                data[b * WRITE_LEN:(b + 1) * WRITE_LEN]
            want[at + ZERO_OFF:at + ZERO_OFF + ZERO_LEN] = bytes(ZERO_LEN)

        def write(h, b, base=base, data=data):
            return h.aio_pwrite(data[b * WRITE_LEN:(b + 1) * WRITE_LEN],
                                base + b * BLOCK + WRITE_OFF)

        def zero(h, b, base=base):
            return h.aio_zero(ZERO_LEN, base + b * BLOCK + ZERO_OFF)

        errors, start = [], threading.Barrier(2)
        threads = [threading.Thread(target=pump, args=(h, fn, errors, start))
                   for (h, fn) in ((writer, write), (zeroer, zero))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if errors:
            raise AssertionError("round %d: a request failed: %s" % (r, errors[0]))
    writer.flush()
    got = b"".join(reader.pread(CHUNK, off) for off in range(0, len(want), CHUNK))
    with open(backing, "rb") as f:
        disk = f.read(len(want))
    wrong = wrong_disk = 0
    first = None
    for b in range(len(want) // BLOCK):
        lo, hi = b * BLOCK, (b + 1) * BLOCK
        if got[lo:hi] != want[lo:hi]:
            wrong += 1
            if first is None:
                first = next(i for i in range(lo, hi) if got[i] != want[i])
        if disk[lo:hi] != want[lo:hi]:
            wrong_disk += 1
    print("%d of %d blocks wrong read back, %d wrong in the backing file"
          % (wrong, len(want) // BLOCK, wrong_disk))
    if wrong or wrong_disk:
        raise AssertionError("%d blocks read back wrong (first at byte %s), %d in the "
                             "backing file" % (wrong, first, wrong_disk))
    for h in (writer, zeroer, reader):
        h.shutdown()
    print("PASS %s" % name)


if __name__ == "__main__":
    main()
