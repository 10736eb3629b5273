"""Runs a ServerMachine on real sockets: UDP 3544 on both addresses and a raw IPv6 socket.

The machine decides; this module only moves bytes: datagrams from either socket go in with
the time, the machine's output goes out through `_Sockets`.
"""

from __future__ import annotations

import errno
import logging
import socket
from collections.abc import Callable

from teredo.core.addr import TEREDO_PORT
from teredo.core.server import Address, ServerMachine, ServerParams
from teredo.io.loop import DaemonLoop
from teredo.io.udp import UdpSender, open_udp_socket

log = logging.getLogger("teredo.server")


class ServerStartError(RuntimeError):
    """The server cannot start; the message is the one line the operator reads."""


class _Sockets:
    """The ServerTransmit of a running server."""

    def __init__(self, primary: socket.socket, secondary: socket.socket, raw: socket.socket):
        self._primary = UdpSender(primary)
        self._secondary = UdpSender(secondary)
        self._raw = raw
        self.native_errors = 0

    def send_udp(self, payload: bytes, destination: Address, from_secondary: bool) -> None:
        (self._secondary if from_secondary else self._primary)(payload, destination)

    def send_ipv6(self, packet: bytes) -> None:
        # With IPPROTO_RAW the kernel takes our IPv6 header as it is; the address given here
        # only selects the route.
        try:
            self._raw.sendto(packet, (socket.inet_ntop(socket.AF_INET6, packet[24:40]), 0))
        except OSError:
            self.native_errors += 1

    @property
    def udp_errors(self) -> int:
        return self._primary.errors + self._secondary.errors


def _bind(address: str) -> socket.socket:
    try:
        return open_udp_socket(address, TEREDO_PORT)
    except OSError as exc:
        if exc.errno == errno.EADDRNOTAVAIL:
            raise ServerStartError(f"{address} is not an address of this host") from None
        if exc.errno == errno.EADDRINUSE:
            raise ServerStartError(f"UDP port {TEREDO_PORT} of {address} is taken") from None
        raise ServerStartError(f"cannot bind {address}:{TEREDO_PORT}: {exc.strerror}") from None


def open_server_sockets(params: ServerParams) -> tuple[socket.socket, socket.socket, socket.socket]:
    """The two UDP sockets and the raw IPv6 socket, or ServerStartError with one clear line."""
    problem = params.check()
    if problem is not None:
        raise ServerStartError(problem)
    addresses = [
        socket.inet_ntoa(ip.to_bytes(4, "big")) for ip in (params.primary, params.secondary)
    ]
    opened: list[socket.socket] = []
    try:
        for address in addresses:
            opened.append(_bind(address))
        try:
            raw = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_RAW)
        except OSError as exc:
            raise ServerStartError(f"raw IPv6 socket not available: {exc.strerror}") from None
        raw.setblocking(False)
    except ServerStartError:
        for sock in opened:
            sock.close()
        raise
    return opened[0], opened[1], raw


class ServerDaemon:
    """A server machine, its sockets and its loop."""

    def __init__(self, params: ServerParams, loop: DaemonLoop) -> None:
        self.loop = loop
        self.primary, self.secondary, self.raw = open_server_sockets(params)
        self.transmit = _Sockets(self.primary, self.secondary, self.raw)
        self.machine = ServerMachine(params, self.transmit)
        clock = loop.clock
        loop.add_socket(self.primary, self._receiver(False, clock))
        loop.add_socket(self.secondary, self._receiver(True, clock))

    def _receiver(
        self, on_secondary: bool, clock: Callable[[], float]
    ) -> Callable[[bytes, Address], None]:
        def receive(data: bytes, source: Address) -> None:
            self.machine.receive(data, source, on_secondary, clock())

        return receive

    def replace_params(self, params: ServerParams) -> bool:
        """Applies new parameters that keep the same addresses; False when a restart is needed."""
        old = self.machine.params
        if (params.primary, params.secondary) != (old.primary, old.secondary):
            return False
        self.machine = ServerMachine(params, self.transmit)
        return True

    def summary(self) -> str:
        stats = self.machine.stats
        drops = self.machine.drops.snapshot()
        return (
            f"RAs {stats.router_advertisements}, bubbles {stats.bubbles_forwarded}, "
            f"packets {stats.packets_forwarded}, native {stats.native_forwarded}, "
            f"send errors {self.transmit.udp_errors + self.transmit.native_errors}, "
            f"drops {drops or 'none'}"
        )

    def close(self) -> None:
        for sock in (self.primary, self.secondary):
            self.loop.remove_reader(sock.fileno())
            sock.close()
        self.raw.close()
