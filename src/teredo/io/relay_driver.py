"""Runs a RelayMachine on a real UDP socket and TUN interface (RFC 4380 section 5.4).

The machine decides; this module moves bytes. The data path runs in one thread of its own,
which waits in poll(2) for the UDP socket (client -> native), the TUN (native -> client) and a
wake-up pipe, and hands each packet to the machine under a lock. The asyncio loop of the main
thread keeps the timers (bubble retries, expiry: under the same lock), signals and the netlink
address watch. Stopping writes to the pipe.

Why not `add_reader` callbacks on the asyncio loop, as the server does (docs/benchmarks.md,
"Relay")? Measured, the CPU per small packet did not change (15.5-17 us either way, and with
one blocking thread per descriptor); what changed is the rest: one data thread never hands
the GIL back and forth between two readers (tried: TCP was lower in that run),
a poll round reads each ready descriptor `want` times, doubling while packets keep coming and
back to 1 at the first EAGAIN (a lone packet costs poll + read, no failing read nor exception),
and the asyncio loop's timer handling no longer interleaves with packet callbacks.

For a host-specific relay the machine needs this host's own IPv6 addresses: they are read
through netlink at start, and again whenever the kernel announces an address change on a
netlink socket subscribed to RTMGRP_IPV6_IFADDR (served by the loop).
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import logging
import os
import select
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from typing import TypeVar

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from teredo.core.addr import Address
from teredo.core.relay import RelayMachine, RelayParams
from teredo.io.driver import LockedTimer, Reload, StartError, Undo, bind_udp
from teredo.io.loop import DaemonLoop
from teredo.io.memory import release_free_memory
from teredo.io.netlink import InterfaceConfig, NetlinkConfigError
from teredo.io.tun import MAX_PACKET, TunDevice, TunError
from teredo.io.udp import RECEIVE_SIZE

log = logging.getLogger("teredo.relay")

#: Miredo's relay puts this link-local address on its interface (relayd.c, "teredo_restrict").
TUN_LINK_LOCAL = "fe80::ffff:ffff:ffff"
RTMGRP_IPV6_IFADDR = 0x100
AF_INET6 = 10
FORWARDING_SYSCTL = "/proc/sys/net/ipv6/conf/all/forwarding"
#: Netlink requests made while the loop runs wait this long at most.
NETLINK_TIMEOUT = 10.0
#: How long `close` waits for the data thread to notice that it must stop.
THREAD_STOP_TIMEOUT = 2.0
#: Packets the TUN holds for the data thread (the kernel's default is 500; see _set_tun_queue).
TUN_QUEUE_LENGTH = 4096
#: Packets read from one descriptor at most before the others get their turn.
READ_BATCH = 256
#: Errors after which the UDP socket cannot be read any more.
_FATAL_ERRNOS = frozenset((errno.EBADF, errno.EFAULT, errno.ENOTSOCK, errno.EINVAL, errno.EBADFD))

_T = TypeVar("_T")


def off_loop(work: Callable[[], _T]) -> _T:
    """Run `work` in a short-lived thread and wait for it.

    pyroute2's synchronous API runs its own asyncio loop, which fails with "This event loop is
    already running" when called from a callback of ours: netlink requests made while the
    daemon runs (address refresh, SIGHUP) go through here. Control path only.
    """
    result: list[_T] = []
    failure: list[BaseException] = []

    def run() -> None:
        try:
            result.append(work())
        except BaseException as exc:  # handed to the caller's thread below
            failure.append(exc)

    thread = threading.Thread(target=run, name="netlink", daemon=True)
    thread.start()
    thread.join(NETLINK_TIMEOUT)
    if failure:
        raise failure[0]
    if not result:
        raise NetlinkConfigError(f"netlink did not answer within {NETLINK_TIMEOUT:g} s")
    return result[0]


@dataclass(frozen=True, slots=True)
class RelayEndpoint:
    """Where the relay lives: its TUN interface, UDP endpoint and served prefix."""

    interface: str
    bind_address: str
    bind_port: int
    prefix: str  # "2001::/32"


class _Output:
    """The RelayTransmit of a running relay: errors are counted, never raised."""

    __slots__ = ("_sendto", "_tun_fd", "tun_errors", "udp_errors")

    def __init__(self, tun_fd: int) -> None:
        self._sendto: Callable[[bytes, Address], int] | None = None
        self._tun_fd = tun_fd
        self.udp_errors = 0
        self.tun_errors = 0

    def attach(self, sock: socket.socket) -> None:
        """The UDP socket, once bound (nothing is sent before: no reader runs until then)."""
        self._sendto = sock.sendto

    def send_udp(self, payload: bytes, destination: Address) -> None:
        sendto = self._sendto
        if sendto is None:
            self.udp_errors += 1
            return
        try:
            sendto(payload, destination)
        except OSError:
            # A full buffer or an unreachable network loses the datagram, as a wire would.
            self.udp_errors += 1

    def write_tun(self, packet: bytes | memoryview) -> None:
        try:
            os.write(self._tun_fd, packet)
        except OSError:
            self.tun_errors += 1


def _fault_site(exc: BaseException) -> str:
    """file:line where `exc` was raised: what tells one fault from another."""
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    return f"{tb.tb_frame.f_code.co_filename}:{tb.tb_lineno}" if tb is not None else "?"


def host_ipv6_addresses(ipr: IPRoute, exclude_ifname: str | None = None) -> frozenset[bytes]:
    """Every IPv6 address of this host (namespace), 16 bytes each, read through netlink."""
    skip = None
    if exclude_ifname is not None:
        found = ipr.link_lookup(ifname=exclude_ifname)
        skip = found[0] if found else None
    out = set()
    for msg in ipr.get_addr(family=AF_INET6):
        if skip is not None and msg["index"] == skip:
            continue
        text = msg.get("IFA_ADDRESS")
        if text:
            out.add(ipaddress.IPv6Address(str(text).split("%")[0]).packed)
    return frozenset(out)


def ipv6_forwarding_enabled() -> bool | None:
    """net.ipv6.conf.all.forwarding, or None when it cannot be read."""
    try:
        with open(FORWARDING_SYSCTL, encoding="ascii") as stream:
            return stream.read().strip() == "1"
    except OSError:
        return None


class RelayDaemon:
    """A relay machine, its socket, TUN interface, netlink watcher and loop."""

    def __init__(
        self, params: RelayParams, endpoint: RelayEndpoint, loop: DaemonLoop, *, secret: bytes
    ) -> None:
        self.loop = loop
        self.endpoint = endpoint
        self._undo = Undo()
        #: Held by whoever touches the machine: the two data-path threads and the loop.
        self.lock = threading.Lock()
        self._stopping = False
        self.data_path_errors = 0
        self._faults_logged: set[str] = set()
        try:
            self._open(params, endpoint, secret)
        except BaseException:
            self.close()
            raise

    def _open(self, params: RelayParams, endpoint: RelayEndpoint, secret: bytes) -> None:
        # The UDP port is bound last, once the interface, its route and the peer table exist:
        # a bound port means a relay ready to serve (the lab and benchmarks wait for it).
        try:
            self.tun = TunDevice.open(endpoint.interface)
        except TunError as exc:
            raise StartError(str(exc)) from None
        # Closing the descriptor of a non-persistent TUN removes the interface, and with it its
        # addresses and routes: nothing else to undo at exit.
        self._undo.push(self.tun.close)
        try:
            self.netlink = InterfaceConfig(self.tun.name)
            self._undo.push(self.netlink.close)
            self.netlink.set_up(params.mtu)
            self.netlink.add_address(TUN_LINK_LOCAL, 64)
            self.netlink.add_route(endpoint.prefix)
            self._set_tun_queue(TUN_QUEUE_LENGTH)
        except (NetlinkConfigError, NetlinkError, OSError) as exc:
            raise StartError(f"cannot configure {self.tun.name}: {exc}") from None
        self.output = _Output(self.tun.fd)
        t0 = time.perf_counter()
        self.machine = RelayMachine(params, self.output, secret, self.loop.clock())
        self.alloc_seconds = time.perf_counter() - t0
        self.sock = bind_udp(endpoint.bind_address, endpoint.bind_port)
        self._undo.push(self.sock.close)
        self.output.attach(self.sock)
        host, port = self.sock.getsockname()
        self.local = (str(host), int(port))
        ipv4 = int(ipaddress.IPv4Address(self.local[0]))
        # A Teredo destination embedding our own endpoint would loop back to us.
        self.machine.set_own_mapping((ipv4, self.local[1]) if ipv4 else None)
        self._watch: socket.socket | None = None
        if params.host_specific:
            self._start_address_watch()
        self._rows = self.machine.peers.allocated
        self.loop.add_machine(
            LockedTimer(
                lambda: self.machine,
                self.lock,
                under_lock=lambda machine: machine.peers.allocated,
                after=self._after_timer,
            )
        )
        # The data path runs in one thread of its own (see the module docstring); the loop's
        # timers reach the machine through the same lock.
        self.sock.setblocking(False)
        os.set_blocking(self.tun.fd, False)
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._undo.push(lambda: os.close(self._wake_r))
        self._undo.push(lambda: os.close(self._wake_w))
        self._undo.push(self._stop_thread)
        self._thread = threading.Thread(target=self._run, name="relay-data", daemon=True)
        self._thread.start()

    def _after_timer(self, rows: int) -> None:
        if rows != self._rows:
            # The peer table grew: its old columns are free heap now (issue 8: memory that
            # grows with the load, and no more).
            self._rows = rows
            release_free_memory()

    def _set_tun_queue(self, length: int) -> None:
        """The TUN's transmit queue: packets routed to us wait there until the data thread
        reads them. The kernel's default (500) overflows while the thread handles a batch of
        UDP or a timer; Miredo's relay, in C, drains it faster."""
        with IPRoute() as ipr:
            ipr.link("set", index=self.netlink.index(), txqlen=length)

    # --- host-specific: own addresses through netlink ---------------------------------------

    def _start_address_watch(self) -> None:
        watch = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)
        self._undo.push(watch.close)
        watch.bind((0, RTMGRP_IPV6_IFADDR))
        watch.setblocking(False)
        self._watch = watch
        self.refresh_addresses()
        self.loop.add_reader(watch.fileno(), self._on_address_event)
        self._undo.push(lambda: self.loop.remove_reader(watch.fileno()))

    def refresh_addresses(self) -> None:
        name = self.tun.name

        def read() -> frozenset[bytes]:
            with IPRoute() as ipr:
                return host_ipv6_addresses(ipr, exclude_ifname=name)

        try:
            own = off_loop(read)
        except (NetlinkError, OSError) as exc:
            log.error("cannot read this host's IPv6 addresses: %s", exc)
            return
        with self.lock:
            before = self.machine.own_addresses
            self.machine.set_own_addresses(own)
            served = self.machine.own_addresses
        if served != before:
            names = sorted(str(ipaddress.IPv6Address(a)) for a in served)
            log.info("host-specific relay: serving %d own addresses: %s", len(served), names)

    def _on_address_event(self) -> None:
        if self._watch is None:
            return
        got = False
        for _ in range(64):
            try:
                self._watch.recv(65536)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                # ENOBUFS: events were lost; reading the whole list again covers them.
                pass
            got = True
        if got:
            self.refresh_addresses()

    # --- data path --------------------------------------------------------------------------

    def _run(self) -> None:
        """Serve until `close`; a bug in the handling of one packet is logged and the thread
        goes on (an event loop would have done the same), so the relay never goes dead."""
        while not self._stopping:
            try:
                self._serve()
            except Exception as exc:
                # Logged once per kind of fault, then only counted: a packet that trips a bug
                # must not turn into a log line per packet.
                self.data_path_errors += 1
                kind = f"{type(exc).__name__} at {_fault_site(exc)}"
                if kind not in self._faults_logged and len(self._faults_logged) < 64:
                    self._faults_logged.add(kind)
                    log.exception("error in the relay's data path (packet dropped; logged once)")

    def _serve(self) -> None:
        """Wait in poll(2) for the UDP socket, the TUN or the wake-up pipe, then read each
        ready descriptor `want` times at most: `want` doubles (up to READ_BATCH) while every
        read finds a packet and falls back to 1 at the first EAGAIN. So a lone packet costs
        poll + read (no read that fails, no exception), and a busy descriptor is read in
        batches without polling in between. One clock read and one lock round per batch."""
        udp_fd = self.sock.fileno()
        tun_fd = self.tun.fd
        poller = select.poll()
        for fd in (udp_fd, tun_fd, self._wake_r):
            poller.register(fd, select.POLLIN)
        poll = poller.poll
        recvfrom = self.sock.recvfrom
        read = os.read
        on_udp = self.machine.receive_udp
        on_tun = self.machine.receive_tun
        clock = self.loop.clock
        lock = self.lock
        want_udp = want_tun = 1
        while not self._stopping:
            ready = poll()
            now = clock()
            for fd, events in ready:
                if events & select.POLLNVAL:
                    self._fail(f"descriptor {fd} was closed under the relay")
                    return
                got = 0
                if fd == udp_fd:
                    with lock:
                        while got < want_udp:
                            try:
                                data, source = recvfrom(RECEIVE_SIZE)
                            except (BlockingIOError, InterruptedError):
                                break
                            except OSError as exc:
                                if exc.errno in _FATAL_ERRNOS:
                                    self._fail(f"cannot read the UDP socket: {exc}")
                                    return
                                got += 1  # a queued ICMP error about an earlier send
                                continue
                            on_udp(data, source, now)
                            got += 1
                    want_udp = min(2 * want_udp, READ_BATCH) if got >= want_udp else 1
                elif fd == tun_fd:
                    with lock:
                        while got < want_tun:
                            try:
                                packet = read(tun_fd, MAX_PACKET)
                            except (BlockingIOError, InterruptedError):
                                break
                            except OSError as exc:
                                self._fail(f"cannot read {self.tun.name}: {exc}")
                                return
                            on_tun(packet, now)
                            got += 1
                    want_tun = min(2 * want_tun, READ_BATCH) if got >= want_tun else 1
                else:
                    with contextlib.suppress(OSError):
                        read(self._wake_r, 64)

    def _fail(self, why: str) -> None:
        """The data path cannot go on: unless we are stopping anyway, the relay is dead, so the
        daemon stops with status 1 and says why."""
        if self._stopping:
            return
        self._stopping = True
        log.error("%s: stopping", why)
        with contextlib.suppress(RuntimeError):  # the loop is closed already
            self.loop.loop.call_soon_threadsafe(self.loop.stop, 1)

    def _stop_thread(self) -> None:
        """Wake the data thread through its pipe and wait for it."""
        self._stopping = True
        with contextlib.suppress(OSError):
            os.write(self._wake_w, b"x")
        self._thread.join(THREAD_STOP_TIMEOUT)
        if self._thread.is_alive():
            log.warning("the relay's data thread did not stop")

    # --- control ----------------------------------------------------------------------------

    def reload(self, params: RelayParams, endpoint: RelayEndpoint) -> Reload:
        """SIGHUP: RelayType (direct bubbles) and InterfaceMTU apply at once; a new interface,
        address, port, prefix, relay kind or peer table size needs a restart."""
        old = self.machine.params
        if endpoint != self.endpoint:
            return Reload(restart="a new interface name, address, port or prefix")
        if params.host_specific != old.host_specific:
            return Reload(restart="switching between relay and host-specific relay")
        if params.peers != old.peers:
            return Reload(restart="a new peer table size")
        applied: list[str] = []
        if params.mtu != old.mtu:
            try:
                name, mtu = self.tun.name, params.mtu

                def set_mtu() -> None:
                    with InterfaceConfig(name) as config:
                        config.set_mtu(mtu)

                off_loop(set_mtu)
            except (NetlinkConfigError, NetlinkError, OSError) as exc:
                return Reload(failed=f"MTU not changed: {exc}")
            applied.append(f"MTU {params.mtu}")
        if params.direct_bubbles != old.direct_bubbles:
            applied.append("RelayType " + ("restricted" if params.direct_bubbles else "cone"))
        with self.lock:
            self.machine.set_direct_bubbles(params.direct_bubbles)
            self.machine.params = replace(old, mtu=params.mtu, direct_bubbles=params.direct_bubbles)
        if params.host_specific:
            self.refresh_addresses()
        return Reload(applied=tuple(applied))

    def summary(self) -> str:
        errors = self.output.udp_errors + self.output.tun_errors
        with self.lock:
            summary = self.machine.summary()
        return f"{summary}, send errors {errors}, data path faults {self.data_path_errors}"

    def status(self) -> dict[str, object]:
        """Peer table, counters, drops and the I/O faults of summary(), for the control socket."""
        with self.lock:
            machine = self.machine
            t = machine.peers.stats()
            counters: dict[str, object] = dict(asdict(machine.stats))
            drops = machine.drops.snapshot()
            host_specific = machine.params.host_specific
        return {
            "local": f"{self.local[0]}:{self.local[1]}",
            "tun": self.tun.name,
            "prefix": self.endpoint.prefix,
            "host_specific": host_specific,
            "peers": t.size,
            "capacity": t.capacity,
            "allocated_rows": t.allocated,
            "trusted_peers": t.trusted,
            "pending_peers": t.untrusted,
            "queued_bytes": t.queued_bytes,
            "evicted": t.evicted_untrusted + t.evicted_trusted,
            "refused": t.refused,
            "counters": counters,
            "send_errors": {"udp": self.output.udp_errors, "tun": self.output.tun_errors},
            "data_path_faults": self.data_path_errors,
            "drops": drops,
        }

    def close(self) -> None:
        self._undo.close()
