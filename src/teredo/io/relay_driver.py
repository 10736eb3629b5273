"""Runs a RelayMachine on a real UDP socket and TUN interface (RFC 4380 section 5.4).

The machine decides; this module moves bytes. The data path is io/datathread.py's thread
(the UDP socket: client -> native; the TUN: native -> client), which hands each packet to the
machine under the daemon's lock; the asyncio loop of the main thread keeps the timers (bubble
retries, expiry: under the same lock), signals and the netlink address watch.

Why not `add_reader` callbacks on the asyncio loop, as the server does (docs/benchmarks.md,
"Relay")? Measured, the CPU per small packet did not change (15.5-17 us either way); what
changed is the rest: one data thread never hands the GIL back and forth between two readers,
it reads in adaptive batches, and the loop's timer handling no longer interleaves with packet
callbacks.

For a host-specific relay the machine needs this host's own IPv6 addresses: they are read
through netlink at start, and again whenever the kernel announces an address change on a
netlink socket subscribed to RTMGRP_IPV6_IFADDR (served by the loop).
"""

from __future__ import annotations

import ipaddress
import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from typing import TypeVar

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from teredo.core.addr import Address
from teredo.core.config import DatapathMode
from teredo.core.relay import RelayMachine, RelayParams
from teredo.io.datapath import start_kernel
from teredo.io.datathread import DataThread, Feed
from teredo.io.driver import DATAPATH_RESTART, LockedTimer, Reload, StartError, Undo, bind_udp
from teredo.io.kmirror import MirrorTimer
from teredo.io.krelay import RelayKernelPath, ipv4_interface
from teredo.io.loop import DaemonLoop
from teredo.io.memory import release_free_memory
from teredo.io.netlink import InterfaceConfig, NetlinkConfigError
from teredo.io.tun import MAX_PACKET, TunDevice, TunError

log = logging.getLogger("teredo.relay")

#: Miredo's relay puts this link-local address on its interface (relayd.c, "teredo_restrict").
TUN_LINK_LOCAL = "fe80::ffff:ffff:ffff"
RTMGRP_IPV6_IFADDR = 0x100
AF_INET6 = 10
FORWARDING_SYSCTL = "/proc/sys/net/ipv6/conf/all/forwarding"
#: Netlink requests made while the loop runs wait this long at most.
NETLINK_TIMEOUT = 10.0
#: Packets the TUN holds for the data thread (the kernel's default is 500; see _set_tun_queue).
TUN_QUEUE_LENGTH = 4096

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
    #: rtm_protocol of the prefix route to the TUN (None: pyroute2's, RTPROT_STATIC). A relay
    #: announcing in the main table for FRR makes it RTPROT_KERNEL, which zebra ignores, so that
    #: bgpd sees only the announcement on the anchor (io/announce.py, docs/scale.md FRR).
    route_protocol: int | None = None


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
        self,
        params: RelayParams,
        endpoint: RelayEndpoint,
        loop: DaemonLoop,
        *,
        secret: bytes,
        datapath: DatapathMode = DatapathMode.USER,
        kernel_load: Callable[[], RelayKernelPath] | None = None,
    ) -> None:
        self.loop = loop
        self.datapath = datapath
        #: The programs loaded before the privilege drop (datapath.load_early), else None: the
        #: daemon loads them itself (as root, e.g. in tests).
        self._kernel_load = kernel_load
        #: The kernel data path (io/krelay.py), None on the Python path.
        self.kernel: RelayKernelPath | None = None
        self.endpoint = endpoint
        self._undo = Undo()
        #: Held by whoever touches the machine: the two data-path threads and the loop.
        self.lock = threading.Lock()
        self._data: DataThread | None = None
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
            self.netlink.add_route(endpoint.prefix, protocol=endpoint.route_protocol)
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
        # DatapathError (--datapath kernel where it cannot) is a StartError: one line, exit 1.
        self.kernel = start_kernel(
            self.datapath, f"relay on {self.tun.name}", lambda: self._start_kernel(params)
        )
        if self.kernel is not None:
            kernel = self.kernel
            self._undo.push(kernel.close)
            # Before the data thread starts: the mirror sees every peer the core trusts.
            self.machine.peers.watch = kernel.mirror
            self._undo.push(lambda: setattr(self.machine.peers, "watch", None))
            if params.host_specific:
                kernel.set_own_addresses(self.machine.own_addresses)
            machine = self.machine
            self.loop.add_machine(
                MirrorTimer(
                    lambda: kernel.mirror, lambda: machine.peers, self.lock, self.loop.clock
                )
            )
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
        self._start_data_path()

    def _start_kernel(self, params: RelayParams) -> RelayKernelPath:
        if self._kernel_load is not None:
            kernel = self._kernel_load()
        else:
            kernel = RelayKernelPath(params.peers)
        try:
            v4_ifindex, ipv4 = ipv4_interface(self.local[0])
            kernel.attach(
                tun_ifindex=self.netlink.index(),
                v4_ifindex=v4_ifindex,
                ipv4=ipv4,
                port=self.local[1],
                prefix=params.prefix,
                host_specific=params.host_specific,
            )
        except BaseException:
            kernel.close()
            raise
        return kernel

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
            if self.kernel is not None:
                self.kernel.set_own_addresses(served)
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

    # --- data path (io/datathread.py) ------------------------------------------------------

    def _start_data_path(self) -> None:
        self._data = DataThread(
            "relay-data",
            self.sock,
            self.tun.fd,
            Feed(self.machine.receive_udp, self.machine.receive_tun),
            lock=self.lock,
            clock=self.loop.clock,
            tun_read_size=MAX_PACKET,
            on_fatal=self._fail,
            on_tun_error=lambda _fd, exc: self._fail(f"cannot read {self.tun.name}: {exc}"),
        )
        self._data.start()
        self._undo.push(self._data.stop)

    @property
    def data_path_errors(self) -> int:
        return self._data.faults if self._data is not None else 0

    def _fail(self, why: str) -> None:
        """The data path cannot go on: the relay is dead (a TUN read failing too)."""
        self.loop.fail_soon(why, log)

    # --- control ----------------------------------------------------------------------------

    def reload(
        self, params: RelayParams, endpoint: RelayEndpoint, datapath: DatapathMode
    ) -> Reload:
        """SIGHUP: RelayType (direct bubbles) and InterfaceMTU apply at once; a new interface,
        address, port, prefix, relay kind, peer table size or data path needs a restart."""
        old = self.machine.params
        if datapath != self.datapath:
            return DATAPATH_RESTART
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
            if self.kernel is None:
                summary = self.machine.summary()
                kernel = "data path: user"
            else:
                c = self.kernel.counters()
                summary = self.machine.summary(kernel_to=c["encap"], kernel_from=c["decap"])
                kernel = self.kernel.summary()
        return (
            f"{summary}, send errors {errors}, data path faults {self.data_path_errors}; {kernel}"
        )

    def status(self) -> dict[str, object]:
        """Peer table, counters, drops and the I/O faults of summary(), for the control socket."""
        with self.lock:
            machine = self.machine
            t = machine.peers.stats()
            counters: dict[str, object] = dict(asdict(machine.stats))
            drops = machine.drops.snapshot()
            host_specific = machine.params.host_specific
            kernel = self.kernel.counters() if self.kernel is not None else None
            if kernel is not None:
                # Totals: what the relay forwarded, in Python or in the kernel.
                counters["to_teredo"] = int(str(counters["to_teredo"])) + kernel["encap"]
                counters["from_teredo"] = int(str(counters["from_teredo"])) + kernel["decap"]
        return {
            "datapath": "kernel" if kernel is not None else "user",
            # io/metrics.py kernel_families: teredo_kernel_<name>_total.
            "kernel": {"counters": kernel} if kernel is not None else None,
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
