"""Runs a ServerMachine on real sockets: UDP 3544 on both addresses and a raw IPv6 socket.

The machine decides; this module only moves bytes: datagrams from either socket go in with
the time, the machine's output goes out through `_Sockets`. With the kernel data path
(io/kserver.py, started before the privileges are dropped), plain RS are answered in XDP and
never reach the sockets; status and summary add the program's counters.
"""

from __future__ import annotations

import functools
import logging
import socket
from collections.abc import Callable
from typing import TYPE_CHECKING

from teredo.core.addr import TEREDO_PORT, Address
from teredo.core.counters import DropReason
from teredo.core.server import ServerMachine, ServerParams
from teredo.io.driver import Reload, StartError, Undo, bind_udp, changed
from teredo.io.loop import DaemonLoop
from teredo.io.udp import DRAIN_BUDGET

if TYPE_CHECKING:
    from teredo.io.kserver import ServerKernelPath

log = logging.getLogger("teredo.server")

# Nothing a server handles comes near this: RS, bubbles (with RFC 6081 trailers) and ICMPv6 of
# at most 88 bytes of payload (docs/server.md); larger datagrams are counted and dropped.
RECEIVE_SIZE = 2048


class _Sockets:
    """The ServerTransmit of a running server."""

    def __init__(self, primary: socket.socket, secondary: socket.socket, raw: socket.socket):
        self._sendto1 = primary.sendto
        self._sendto2 = secondary.sendto
        self.udp_send_errors = 0
        self._raw = raw
        self.native_errors = 0

    def send_udp(self, payload: bytes, destination: Address, from_secondary: bool) -> None:
        # Straight to sendto (the hot path: one call less than through UdpSender).
        try:
            (self._sendto2 if from_secondary else self._sendto1)(payload, destination)
        except OSError:
            # A full socket buffer or an unreachable network loses the datagram, as a wire would.
            self.udp_send_errors += 1

    @property
    def udp_errors(self) -> int:
        return self.udp_send_errors

    def send_ipv6(self, packet: bytes) -> None:
        # With IPPROTO_RAW the kernel takes our IPv6 header as it is; the address given here
        # only selects the route.
        try:
            self._raw.sendto(packet, (socket.inet_ntop(socket.AF_INET6, packet[24:40]), 0))
        except OSError:
            self.native_errors += 1


def _bind(address: str, reuse_port: bool, probe: bool) -> socket.socket:
    if probe:
        # Workers share the port through SO_REUSEPORT, which lets any process of the same
        # user join in silently: first make sure nobody holds the port yet, with an
        # exclusive bind that fails with EADDRINUSE if someone does.
        bind_udp(address, TEREDO_PORT).close()
    return bind_udp(address, TEREDO_PORT, reuse_port=reuse_port)


ServerSockets = tuple[socket.socket, socket.socket, socket.socket]


def open_server_sockets(
    params: ServerParams, *, reuse_port: bool = False, first: bool = True
) -> ServerSockets:
    """The two UDP sockets and the raw IPv6 socket, or StartError with one clear line.

    With `reuse_port`, each call gives one worker's set of sockets on the same two ports; the
    `first` set checks that nobody else holds them.
    """
    problem = params.check()
    if problem is not None:
        raise StartError(problem)
    addresses = [
        socket.inet_ntoa(ip.to_bytes(4, "big")) for ip in (params.primary, params.secondary)
    ]
    opened: list[socket.socket] = []
    try:
        for address in addresses:
            opened.append(_bind(address, reuse_port, reuse_port and first))
        try:
            raw = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_RAW)
        except OSError as exc:
            raise StartError(f"raw IPv6 socket not available: {exc.strerror}") from None
        raw.setblocking(False)
    except StartError:
        for sock in opened:
            sock.close()
        raise
    return opened[0], opened[1], raw


class ServerDaemon:
    """A server machine, its sockets and its loop."""

    def __init__(
        self,
        params: ServerParams,
        loop: DaemonLoop,
        sockets: ServerSockets | None = None,
        kernel: ServerKernelPath | None = None,
    ) -> None:
        self.loop = loop
        self._undo = Undo()
        self.kernel = kernel
        if kernel is not None:
            self._undo.push(kernel.close)  # detached last, after the sockets are closed
        if sockets is None:
            sockets = open_server_sockets(params)
        self.primary, self.secondary, self.raw = sockets
        for sock in sockets:
            self._undo.push(sock.close)
        self.transmit = _Sockets(self.primary, self.secondary, self.raw)
        self.machine = ServerMachine(params, self.transmit)
        for sock, on_secondary in ((self.primary, False), (self.secondary, True)):
            loop.add_reader(sock.fileno(), self._reader(sock, on_secondary))
            self._undo.push(functools.partial(loop.remove_reader, sock.fileno()))

    def _reader(self, sock: socket.socket, on_secondary: bool) -> Callable[[], None]:
        """The socket's reader: drains it into the machine (the hot path, kept flat).

        Compared with teredo.io.udp.drain: a 2 KiB read instead of a 64 KiB one (also 0.3 us
        less than recvfrom_into a reused buffer plus a copy, measured), and one clock read per
        wake-up rather than per datagram (a wake-up lasts about a millisecond, nothing for the
        rate limits). recvmmsg/sendmmsg batches (teredo.io.mmsg) were tried and cost more
        than they saved: 10.0-11.6 us of CPU per RA against 7.6-9.2 without
        (docs/benchmarks.md, "Server").
        """
        recvfrom = sock.recvfrom
        clock = self.loop.clock
        # One byte more than the largest datagram handled: a read that fills it was truncated.
        read_size = RECEIVE_SIZE + 1

        def on_readable() -> None:
            machine = self.machine  # replaced by a reload, so read at each wake-up
            receive = machine.receive
            now = clock()
            for _ in range(DRAIN_BUDGET):
                try:
                    data, source = recvfrom(read_size)
                except (BlockingIOError, InterruptedError):
                    return
                except OSError:
                    continue  # an ICMP error about an earlier send, not a datagram
                if len(data) > RECEIVE_SIZE:
                    machine.drops.count(DropReason.OVERSIZED)
                    continue
                receive(data, source, on_secondary, now)

        return on_readable

    def reload(self, params: ServerParams) -> Reload:
        """SIGHUP: everything but the addresses applies at once (the machine is made again
        with the new parameters); new addresses need a restart."""
        old = self.machine.params
        if (params.primary, params.secondary) != (old.primary, old.secondary):
            return Reload(restart="a new server address")
        fresh = ServerMachine(params, self.transmit)
        # The counters go on across a reload (status and metrics must not jump back to zero);
        # the rate-limit buckets start afresh with the new limits.
        fresh.stats = self.machine.stats
        fresh.drops = self.machine.drops
        self.machine = fresh
        if self.kernel is not None:
            self.kernel.configure(params)
        return Reload(applied=changed(old, params))

    def _totals(self) -> tuple[int, dict[str, int], dict[str, int] | None]:
        """RAs and drops by reason, Python's and the kernel's together; the kernel's counters."""
        ras = self.machine.stats.router_advertisements
        drops = self.machine.drops.snapshot()
        if self.kernel is None:
            return ras, drops, None
        kernel = self.kernel.counters()
        ras += kernel["ra"]
        limited = kernel["rs_rate_limited"]
        if limited:
            reason = DropReason.RS_RATE_LIMITED.name.lower()
            drops[reason] = drops.get(reason, 0) + limited
        return ras, drops, kernel

    def summary(self) -> str:
        stats = self.machine.stats
        ras, drops, _ = self._totals()
        line = (
            f"RAs {ras}, bubbles {stats.bubbles_forwarded}, "
            f"packets {stats.packets_forwarded}, native {stats.native_forwarded}, "
            f"send errors {self.transmit.udp_errors + self.transmit.native_errors}, "
            f"drops {drops or 'none'}"
        )
        if self.kernel is not None:
            line += f"; {self.kernel.summary()}"
        return line

    def status(self) -> dict[str, object]:
        """Counters of summary() by name, for the control socket."""
        machine = self.machine
        stats = machine.stats
        params = machine.params
        ras, drops, kernel = self._totals()
        return {
            "datapath": "kernel" if kernel is not None else "user",
            # Of the totals below, what the XDP program did (RAs sent, RS dropped by the
            # limits, frames passed up to the sockets).
            "kernel": None
            if kernel is None
            else {
                "interfaces": self.kernel.describe() if self.kernel is not None else "",
                "counters": {"ra": kernel["ra"], "passed": kernel["passed"]},
                "drops": {DropReason.RS_RATE_LIMITED.name.lower(): kernel["rs_rate_limited"]},
            },
            "addresses": [
                socket.inet_ntoa(ip.to_bytes(4, "big")) for ip in (params.primary, params.secondary)
            ],
            "prefix": socket.inet_ntop(socket.AF_INET6, params.prefix + bytes(12)) + "/32",
            "mtu": params.mtu,
            "router_advertisements": ras,
            "bubbles_forwarded": stats.bubbles_forwarded,
            "packets_forwarded": stats.packets_forwarded,
            "native_forwarded": stats.native_forwarded,
            "send_errors": {
                "udp": self.transmit.udp_errors,
                "native": self.transmit.native_errors,
            },
            "drops": drops,
        }

    def close(self) -> None:
        self._undo.close()
