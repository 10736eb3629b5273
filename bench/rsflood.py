"""A Router Solicitation flood from many source ports, bounded in count and in time.

Run inside a lab namespace (never elsewhere: it sends to the address it is given):

    python -m bench.rsflood --server 198.51.100.10 --count 20000 --duration 5 --sockets 64

Each socket is one source port, connected to the server, so that one `sendmmsg` system call
(through ctypes; CPython has no binding) sends a whole batch of the same pre-built datagram:
Authentication header with a nonce + an RS from the restricted link-local address (RFC 4380
section 5.2.1). A restricted (C=0) RS is answered from the address it was sent to (section
5.3.2), so the connected socket accepts the RA. Between batches the sockets are drained and the
RAs counted. At the end one JSON line reports what was sent, received and when.

`--rate` paces the flood (RS per second over all sockets); 0 sends as fast as it can.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import socket
import sys
import time

from teredo.core.addr import LINK_LOCAL_RESTRICTED, TEREDO_PORT
from teredo.core.ipv6 import build_rs
from teredo.core.wire import build_auth
from teredo.io.mmsg import IoVec, MMsgHdr, libc

MAX_COUNT = 10_000_000  # hard bounds, whatever the command line says
MAX_DURATION = 60.0
BATCH = 32


class BatchSender:
    """sendmmsg(2) of `batch` copies of one datagram on connected sockets."""

    def __init__(self, datagram: bytes, batch: int) -> None:
        self._sendmmsg = libc().sendmmsg
        self._sendmmsg.argtypes = (ctypes.c_int, ctypes.c_void_p, ctypes.c_uint, ctypes.c_int)
        self._sendmmsg.restype = ctypes.c_int
        self._buffer = ctypes.create_string_buffer(datagram, len(datagram))
        self._iov = IoVec(ctypes.cast(self._buffer, ctypes.c_void_p), len(datagram))
        self._msgs = (MMsgHdr * batch)()
        for m in self._msgs:
            m.msg_hdr.msg_iov = ctypes.addressof(self._iov)
            m.msg_hdr.msg_iovlen = 1
        self._address = ctypes.addressof(self._msgs)
        self.batch = batch

    def send(self, fd: int, count: int) -> int:
        """Datagrams the kernel took (0 when the socket buffer is full)."""
        sent = int(self._sendmmsg(fd, self._address, min(count, self.batch), socket.MSG_DONTWAIT))
        return max(sent, 0)


def rs_datagram(nonce: bytes = b"rsflood!") -> bytes:
    """Authentication (nonce only) + RS from fe80::ffff:ffff:ffff, as a Miredo client sends."""
    return build_auth(nonce) + build_rs(LINK_LOCAL_RESTRICTED)


def _drain(socks: list[socket.socket]) -> int:
    got = 0
    buf = bytearray(2048)
    for s in socks:
        recv_into = s.recv_into
        while True:
            try:
                recv_into(buf)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                continue  # ICMP error from an earlier datagram: not an RA
            got += 1
    return got


def flood(
    server: str,
    *,
    port: int = TEREDO_PORT,
    count: int,
    duration: float,
    sockets: int,
    rate: float = 0.0,
    linger: float = 0.5,
) -> dict[str, float]:
    """Send up to `count` RS within `duration` seconds; returns the figures."""
    count = min(count, MAX_COUNT)
    duration = min(duration, MAX_DURATION)
    socks = []
    for _ in range(sockets):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 * 1024 * 1024)
        s.connect((server, port))
        s.setblocking(False)
        socks.append(s)
    fds = [s.fileno() for s in socks]
    sender = BatchSender(rs_datagram(), BATCH if rate == 0 or rate > 2000 else 1)
    sent = received = 0
    start = time.monotonic()
    end = start + duration
    i = 0
    try:
        while sent < count:
            now = time.monotonic()
            if now >= end:
                break
            if rate > 0 and sent >= (now - start) * rate:
                time.sleep(min(0.002, end - now))
                received += _drain(socks)
                continue
            sent += sender.send(fds[i], count - sent)
            i = (i + 1) % len(fds)
            if i == 0:
                received += _drain(socks)
        send_end = time.monotonic()
        # The last answers are still on their way: wait a little for them, boundedly.
        stop = send_end + linger
        while time.monotonic() < stop:
            time.sleep(0.02)
            received += _drain(socks)
    finally:
        for s in socks:
            s.close()
    elapsed = send_end - start
    return {
        "sent": sent,
        "received": received,
        "seconds": round(elapsed, 3),
        "sent_per_s": round(sent / elapsed, 1) if elapsed > 0 else 0.0,
        "sockets": sockets,
        "pid": os.getpid(),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--server", required=True, help="server IPv4 address (a lab address)")
    parser.add_argument("--port", type=int, default=TEREDO_PORT)
    parser.add_argument("--count", type=int, default=20000, help=f"RS to send (<= {MAX_COUNT})")
    parser.add_argument("--duration", type=float, default=5.0, help="seconds at most")
    parser.add_argument("--sockets", type=int, default=64, help="source ports")
    parser.add_argument("--rate", type=float, default=0.0, help="RS per second (0: flat out)")
    parser.add_argument("--linger", type=float, default=0.5, help="seconds to wait for RAs")
    args = parser.parse_args(argv)
    if not 1 <= args.sockets <= 1024 or args.count < 0 or args.duration <= 0:
        print("rsflood: --sockets 1..1024, --count >= 0, --duration > 0", file=sys.stderr)
        return 2
    result = flood(
        args.server,
        port=args.port,
        count=args.count,
        duration=args.duration,
        sockets=args.sockets,
        rate=args.rate,
        linger=min(args.linger, 5.0),
    )
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
