"""A cheap fixed-rate UDP generator and sink for bench.path's second CPU-per-packet figure
(issue 8): `python bench/mmsgudp.py send DEST PORT PPS SECONDS` / `recv PORT SECONDS`.

iperf3 spends a system call (and its own timing work) on every datagram at both ends, about
8 us of the ~9 us a packet that plain IPv6 forwarding costs the lab at 20,000 pkt/s; that
common part hides what the Teredo implementations themselves cost. This tool sends with
sendmmsg(2) in batches of BATCH datagrams (paced to PPS, one batch every BATCH/PPS s) and
receives with recvmmsg(2) (up to BATCH a call), so the ends cost a fraction of a microsecond
a packet and the lab's CPU per packet is mostly the network path's. The same datagrams (64
bytes of payload, the same rate) cross every path; bench.path reports it beside iperf3's
figure, never instead of it.

Every loop is bounded by count and by time. Prints "ready", then "sent N" or "received N".
"""

from __future__ import annotations

import ctypes
import errno
import socket
import struct
import sys
import time

from teredo.io.mmsg import IoVec, MMsgHdr, libc

BATCH = 64
PAYLOAD = 64
MSG_WAITFORONE = 0x10000  # <linux/socket.h>; the socket module does not export it

_libc = libc()
_libc.sendmmsg.argtypes = (ctypes.c_int, ctypes.POINTER(MMsgHdr), ctypes.c_uint, ctypes.c_int)
_libc.recvmmsg.argtypes = (
    ctypes.c_int,
    ctypes.POINTER(MMsgHdr),
    ctypes.c_uint,
    ctypes.c_int,
    ctypes.c_void_p,
)


def _vector(
    size: int,
) -> tuple[ctypes.Array[MMsgHdr], ctypes.Array[IoVec], list[ctypes.Array[ctypes.c_char]]]:
    """BATCH message headers, each with one buffer of `size` bytes (the iovecs and buffers
    are returned too: the headers hold only their addresses)."""
    msgs = (MMsgHdr * BATCH)()
    bufs = [ctypes.create_string_buffer(b"m" * size, size) for _ in range(BATCH)]
    iovs = (IoVec * BATCH)()
    for i in range(BATCH):
        iovs[i].iov_base = ctypes.cast(bufs[i], ctypes.c_void_p)
        iovs[i].iov_len = size
        msgs[i].msg_hdr.msg_iov = ctypes.addressof(iovs[i])
        msgs[i].msg_hdr.msg_iovlen = 1
    return msgs, iovs, bufs


def send(dest: str, port: int, pps: float, seconds: float) -> int:
    """Sends after a line on stdin ("go"), so that the caller can start its CPU sample
    after the interpreter's start-up."""
    s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    s.connect((dest, port))
    msgs, _iovs, _bufs = _vector(PAYLOAD)
    print("ready", flush=True)
    sys.stdin.readline()
    total = int(pps * seconds)
    interval = BATCH / pps
    sent = 0
    start = time.monotonic()
    deadline = start + seconds + 5
    next_at = start
    while sent < total and time.monotonic() < deadline:
        n = _libc.sendmmsg(s.fileno(), msgs, min(BATCH, total - sent), 0)
        if n > 0:
            sent += n
        elif ctypes.get_errno() not in (errno.EAGAIN, errno.ENOBUFS, errno.EINTR):
            # ECONNREFUSED (an ICMP error from a missing sink) and the like: keep the pace.
            pass
        next_at += interval
        delay = next_at - time.monotonic()
        if delay > 0:
            time.sleep(delay)
    return sent


def recv(port: int, seconds: float) -> int:
    s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    # A blocking socket with a receive timeout (Python's settimeout would make it
    # non-blocking): recvmmsg returns EAGAIN after 0.2 s without a datagram.
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, struct.pack("@ll", 0, 200_000))
    s.bind(("::", port))
    print("ready", s.getsockname()[1], flush=True)  # the port (0: the kernel's choice)
    msgs, _iovs, _bufs = _vector(2048)
    got = 0
    now = time.monotonic()
    deadline, last = now + seconds, now
    # Until `seconds` are over, or 1 s without a datagram once some came.
    while now < deadline and not (got and now - last > 1.0):
        n = _libc.recvmmsg(s.fileno(), msgs, BATCH, MSG_WAITFORONE, None)
        now = time.monotonic()
        if n > 0:
            got += n
            last = now
    return got


def main(argv: list[str]) -> int:
    if len(argv) == 5 and argv[0] == "send":
        print("sent", send(argv[1], int(argv[2]), float(argv[3]), float(argv[4])), flush=True)
        return 0
    if len(argv) == 3 and argv[0] == "recv":
        print("received", recv(int(argv[1]), float(argv[2])), flush=True)
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
