"""Runs a ServerMachine on real sockets: UDP 3544 on both addresses and a raw IPv6 socket.

The machine decides; this module only moves bytes. The data path is io/datathread.py's thread,
as for the client and the relay: it reads both UDP sockets (no TUN) in adaptive batches and
hands each datagram to the machine under the daemon's lock, with the time; the machine's output
goes out through `_Sockets`, straight from that thread. The asyncio loop of the main thread
keeps signals (SIGHUP: `reload`), the control socket and the metrics, under the same lock.
The server has no timer (its rate limits read the time they are given). Measured beside the
`add_reader` loop it replaced: docs/benchmarks.md, "The server on the shared data path".

With the kernel data path (io/kserver.py, started before the privileges are dropped), plain RS
are answered in XDP and never reach the sockets; status and summary add the program's counters.
"""

from __future__ import annotations

import logging
import socket
import threading
from typing import TYPE_CHECKING

from teredo.core.addr import TEREDO_PORT, Address
from teredo.core.config import DatapathMode
from teredo.core.counters import DropReason
from teredo.core.server import MAX_DATAGRAM, ServerMachine, ServerParams
from teredo.io.datathread import DataThread, Feed, FeedUdp
from teredo.io.driver import DATAPATH_RESTART, Reload, StartError, Undo, bind_udp, changed
from teredo.io.loop import DaemonLoop

if TYPE_CHECKING:
    from teredo.io.kserver import ServerKernelPath

log = logging.getLogger("teredo.server")


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
    """A server machine, its sockets, its data thread and its loop."""

    def __init__(
        self,
        params: ServerParams,
        loop: DaemonLoop,
        sockets: ServerSockets | None = None,
        kernel: ServerKernelPath | None = None,
        *,
        datapath: DatapathMode = DatapathMode.USER,
        on_kernel: bool = False,
    ) -> None:
        self.loop = loop
        #: The Datapath setting it started with (a new one needs a restart).
        self.datapath = datapath
        #: The XDP program answers in front of this process: `kernel` (reported and configured
        #: here) or, for --workers other than 0, worker 0's (docs/server.md, "Workers").
        self.on_kernel = on_kernel or kernel is not None
        self._undo = Undo()
        self.kernel = kernel
        if kernel is not None:
            self._undo.push(kernel.close)  # detached last, after the sockets are closed
        self._data: DataThread | None = None
        try:
            if sockets is None:
                sockets = open_server_sockets(params)
            self.primary, self.secondary, self.raw = sockets
            for sock in sockets:
                self._undo.push(sock.close)
            self.transmit = _Sockets(self.primary, self.secondary, self.raw)
            #: Held by whoever touches the machine: the data thread and the loop.
            self.lock = threading.Lock()
            self.machine = ServerMachine(params, self.transmit)
            self._feed = Feed(_feeds(self.machine))
            self._data = DataThread(
                "server-data",
                (self.primary, self.secondary),
                None,
                self._feed,
                lock=self.lock,
                clock=loop.clock,
                # One byte more than the largest datagram handled: the machine drops a read
                # that fills it (truncated). Also 0.3 us less than a 64 KiB read (measured).
                udp_read_size=MAX_DATAGRAM + 1,
                on_fatal=lambda why: loop.fail_soon(why, log),
            )
            self._data.start()
            self._undo.push(self._data.stop)  # stopped first, before the sockets close
        except BaseException:
            self.close()
            raise

    @property
    def data_path_faults(self) -> int:
        return self._data.faults if self._data is not None else 0

    def reload(self, params: ServerParams, datapath: DatapathMode) -> Reload:
        """SIGHUP: the prefix, MTU and limits apply at once (the machine is made again with
        the new parameters, counters kept); new addresses or a new data path need a restart."""
        old = self.machine.params
        if datapath != self.datapath:
            return DATAPATH_RESTART
        if (params.primary, params.secondary) != (old.primary, old.secondary):
            return Reload(restart="a new server address")
        fresh = ServerMachine(params, self.transmit)
        with self.lock:
            # The counters go on across a reload (status and metrics must not jump back to
            # zero); the rate-limit buckets start afresh with the new limits.
            fresh.stats = self.machine.stats
            fresh.drops = self.machine.drops
            self.machine = fresh
            self._feed.feed_udp = _feeds(fresh)
        if self.kernel is not None:
            self.kernel.configure(params)
        return Reload(applied=applied(old, params))

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
        with self.lock:
            stats = self.machine.stats
            ras, drops, _ = self._totals()
        line = (
            f"RAs {ras}, bubbles {stats.bubbles_forwarded}, "
            f"packets {stats.packets_forwarded}, native {stats.native_forwarded}, "
            f"send errors {self.transmit.udp_errors + self.transmit.native_errors}, "
            f"data path faults {self.data_path_faults}, drops {drops or 'none'}"
        )
        if self.kernel is not None:
            line += f"; {self.kernel.summary()}"
        return line

    def status(self) -> dict[str, object]:
        """Counters of summary() by name, for the control socket."""
        with self.lock:
            machine = self.machine
            stats = machine.stats
            params = machine.params
            ras, drops, kernel = self._totals()
        return {
            "datapath": "kernel" if self.on_kernel else "user",
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
            "data_path_faults": self.data_path_faults,
            "drops": drops,
        }

    def close(self) -> None:
        self._undo.close()


def _feeds(machine: ServerMachine) -> tuple[FeedUdp, FeedUdp]:
    """The data thread's feeds of the primary and the secondary socket (the machine wants to
    know which address a datagram reached: its answer leaves from the matching one)."""
    receive = machine.receive

    def primary(data: bytes, source: Address, now: float) -> None:
        receive(data, source, False, now)

    def secondary(data: bytes, source: Address, now: float) -> None:
        receive(data, source, True, now)

    return primary, secondary


def applied(old: ServerParams, new: ServerParams) -> tuple[str, ...]:
    """What a reload from `old` to `new` puts in force, in words (as the relay and the client
    say theirs: "MTU 1400"); each limit by its ServerLimits name ("limit rs_rate 10")."""
    out: list[str] = []
    if new.prefix != old.prefix:
        out.append(f"prefix {socket.inet_ntop(socket.AF_INET6, new.prefix + bytes(12))}/32")
    if new.mtu != old.mtu:
        out.append(f"MTU {new.mtu}")
    out.extend(
        f"limit {name} {getattr(new.limits, name):g}" for name in changed(old.limits, new.limits)
    )
    return tuple(out)
