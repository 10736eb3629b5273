"""Runs a RelayMachine on a real UDP socket and TUN interface (RFC 4380 section 5.4).

The machine decides; this module moves bytes. Both descriptors are served by `add_reader`
callbacks that read until the descriptor is empty (a bounded batch), with one clock read per
batch. No re-arming of the timer is needed after packets: every deadline a packet creates is at
least 2 s away, beyond the loop's 1 s upper bound between timer checks.

For a host-specific relay the machine needs this host's own IPv6 addresses: they are read
through netlink at start, and again whenever the kernel announces an address change on a
netlink socket subscribed to RTMGRP_IPV6_IFADDR (served by the same loop).
"""

from __future__ import annotations

import errno
import ipaddress
import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TypeVar

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from teredo.core.relay import Address, RelayMachine, RelayParams
from teredo.io.loop import DaemonLoop
from teredo.io.netlink import InterfaceConfig, NetlinkConfigError
from teredo.io.tun import MAX_PACKET, TunDevice, TunError
from teredo.io.udp import DRAIN_BUDGET, RECEIVE_SIZE, open_udp_socket

log = logging.getLogger("teredo.relay")

#: Miredo's relay puts this link-local address on its interface (relayd.c, "teredo_restrict").
TUN_LINK_LOCAL = "fe80::ffff:ffff:ffff"
RTMGRP_IPV6_IFADDR = 0x100
AF_INET6 = 10
FORWARDING_SYSCTL = "/proc/sys/net/ipv6/conf/all/forwarding"
#: Netlink requests made while the loop runs wait this long at most.
NETLINK_TIMEOUT = 10.0

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


class RelayStartError(RuntimeError):
    """The relay cannot start; the message is the one line the operator reads."""


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
        self._opened: list[Callable[[], None]] = []
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
            raise RelayStartError(str(exc)) from None
        # Closing the descriptor of a non-persistent TUN removes the interface, and with it its
        # addresses and routes: nothing else to undo at exit.
        self._opened.append(self.tun.close)
        try:
            self.netlink = InterfaceConfig(self.tun.name)
            self._opened.append(self.netlink.close)
            self.netlink.set_up(params.mtu)
            self.netlink.add_address(TUN_LINK_LOCAL, 64)
            self.netlink.add_route(endpoint.prefix)
        except (NetlinkConfigError, NetlinkError, OSError) as exc:
            raise RelayStartError(f"cannot configure {self.tun.name}: {exc}") from None
        self.output = _Output(self.tun.fd)
        t0 = time.perf_counter()
        self.machine = RelayMachine(params, self.output, secret, self.loop.clock())
        self.alloc_seconds = time.perf_counter() - t0
        try:
            self.sock = open_udp_socket(endpoint.bind_address, endpoint.bind_port)
        except OSError as exc:
            where = f"{endpoint.bind_address}:{endpoint.bind_port}"
            if exc.errno == errno.EADDRNOTAVAIL:
                message = f"{endpoint.bind_address} is not an address of this host"
                raise RelayStartError(message) from None
            if exc.errno == errno.EADDRINUSE:
                raise RelayStartError(f"UDP {where} is taken") from None
            raise RelayStartError(f"cannot bind UDP {where}: {exc.strerror}") from None
        self._opened.append(self.sock.close)
        self.output.attach(self.sock)
        host, port = self.sock.getsockname()
        self.local = (str(host), int(port))
        ipv4 = int(ipaddress.IPv4Address(self.local[0]))
        # A Teredo destination embedding our own endpoint would loop back to us.
        self.machine.set_own_mapping((ipv4, self.local[1]) if ipv4 else None)
        self._watch: socket.socket | None = None
        if params.host_specific:
            self._start_address_watch()
        self.loop.add_reader(self.sock.fileno(), self._on_udp)
        self._opened.append(lambda: self.loop.remove_reader(self.sock.fileno()))
        self.loop.add_reader(self.tun.fd, self._on_tun)
        self._opened.append(lambda: self.loop.remove_reader(self.tun.fd))
        self.loop.add_machine(self.machine)

    # --- host-specific: own addresses through netlink ---------------------------------------

    def _start_address_watch(self) -> None:
        watch = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)
        self._opened.append(watch.close)
        watch.bind((0, RTMGRP_IPV6_IFADDR))
        watch.setblocking(False)
        self._watch = watch
        self.refresh_addresses()
        self.loop.add_reader(watch.fileno(), self._on_address_event)
        self._opened.append(lambda: self.loop.remove_reader(watch.fileno()))

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

    def _on_udp(self) -> None:
        receive = self.sock.recvfrom
        handle = self.machine.receive_udp
        now = self.loop.clock()
        for _ in range(DRAIN_BUDGET):
            try:
                data, source = receive(RECEIVE_SIZE)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                continue  # a queued ICMP error about an earlier send
            handle(data, source, now)

    def _on_tun(self) -> None:
        read = os.read
        fd = self.tun.fd
        handle = self.machine.receive_tun
        now = self.loop.clock()
        for _ in range(DRAIN_BUDGET):
            try:
                packet = read(fd, MAX_PACKET)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            handle(packet, now)

    # --- control ----------------------------------------------------------------------------

    def apply(self, params: RelayParams, endpoint: RelayEndpoint) -> str | None:
        """Apply reloaded settings; None when done, else why a restart is needed."""
        old = self.machine.params
        if endpoint != self.endpoint:
            return "a new interface name, address, port or prefix needs a restart"
        if params.host_specific != old.host_specific:
            return "switching between relay and host-specific relay needs a restart"
        if params.peers != old.peers:
            return "a new peer table size needs a restart"
        if params.mtu != old.mtu:
            try:
                name, mtu = self.tun.name, params.mtu

                def set_mtu() -> None:
                    with InterfaceConfig(name) as config:
                        config.set_mtu(mtu)

                off_loop(set_mtu)
            except (NetlinkConfigError, NetlinkError, OSError) as exc:
                return f"MTU not changed: {exc}"
        self.machine.set_direct_bubbles(params.direct_bubbles)
        self.machine.params = replace(old, mtu=params.mtu, direct_bubbles=params.direct_bubbles)
        if params.host_specific:
            self.refresh_addresses()
        return None

    def summary(self) -> str:
        errors = self.output.udp_errors + self.output.tun_errors
        return f"{self.machine.summary()}, send errors {errors}"

    def close(self) -> None:
        while self._opened:
            undo = self._opened.pop()
            try:
                undo()
            except (OSError, ValueError, RuntimeError):
                log.debug("error while closing", exc_info=True)
