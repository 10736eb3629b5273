"""UDP/IPv4 sockets for Teredo: opening them, draining one from an asyncio reader, sending.

`open_udp_socket` makes every daemon's socket (no Don't Fragment bit, large buffers). `drain`
serves the sockets read on the asyncio loop (the client's local discovery, the relay's health
check through DaemonLoop.add_socket): the stock asyncio datagram protocol costs several times
more per packet than a reader callback that reads a bounded number of datagrams per wake-up.
The data paths read their sockets themselves (io/datathread.py). `UdpSender` counts refused
sends instead of raising.
"""

from __future__ import annotations

import socket
from collections.abc import Callable

from teredo.core.addr import Address

# Linux socket options that the socket module does not name.
IP_MTU_DISCOVER = 10
IP_PMTUDISC_DONT = 0

# Datagrams read per wake-up before other file descriptors get their turn.
DRAIN_BUDGET = 256

# Larger than any UDP payload over IPv4 (65507 bytes).
RECEIVE_SIZE = 65536

DatagramHandler = Callable[[bytes, Address], None]


def open_udp_socket(
    address: str,
    port: int,
    *,
    reuse_port: bool = False,
    buffer_bytes: int = 4 * 1024 * 1024,
) -> socket.socket:
    """A non-blocking UDP/IPv4 socket bound to address:port (port 0: the kernel picks one)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        # RFC 4380 section 5.1.2: Teredo packets SHOULD NOT carry the Don't Fragment bit.
        sock.setsockopt(socket.IPPROTO_IP, IP_MTU_DISCOVER, IP_PMTUDISC_DONT)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        for option in (socket.SO_RCVBUF, socket.SO_SNDBUF):
            # The kernel caps this at net.core.[rw]mem_max; a smaller buffer only costs drops.
            sock.setsockopt(socket.SOL_SOCKET, option, buffer_bytes)
        sock.bind((address, port))
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


def drain(sock: socket.socket, handler: DatagramHandler, budget: int = DRAIN_BUDGET) -> int:
    """Read up to `budget` datagrams, giving each to handler; returns how many were read."""
    receive = sock.recvfrom
    for count in range(budget):
        try:
            data, source = receive(RECEIVE_SIZE)
        except (BlockingIOError, InterruptedError):
            return count
        except OSError:
            # An ICMP error queued on the socket (port unreachable from an earlier send) surfaces
            # here as ECONNREFUSED and the like: it concerns a past datagram, not this read.
            continue
        handler(data, source)
    return budget


class UdpSender:
    """Sends datagrams, counting the ones the kernel refused instead of raising."""

    __slots__ = ("_sendto", "errors")

    def __init__(self, sock: socket.socket) -> None:
        self._sendto = sock.sendto
        self.errors = 0

    def __call__(self, payload: bytes | bytearray | memoryview, destination: Address) -> None:
        try:
            self._sendto(payload, destination)
        except OSError:
            # A full socket buffer or an unreachable network loses the datagram, as a wire would.
            self.errors += 1
