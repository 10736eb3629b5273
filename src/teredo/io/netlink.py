"""Interface configuration through netlink (pyroute2): MTU, addresses, routes, link state.

Off the hot path: called when the daemon starts, qualifies, changes address or stops.
"""

from __future__ import annotations

import contextlib
import ipaddress
import threading
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Any

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

AF_INET6 = 10
#: rtnetlink's RTPROT_KERNEL: the protocol of the routes the kernel makes itself, which FRR's
#: zebra never reads (zebra/rt_netlink.c).
RTPROT_KERNEL = 2

# Miredo's client hook gives its default route metric 1029, above the kernel's 1024 default
# for native routes, so that Teredo is the last resort (miredo client-hook, RFC 4380 section 5.5).
LAST_RESORT_METRIC = 1029


class NetlinkConfigError(OSError):
    """A netlink request failed; the message names the operation and the interface."""


class InterfaceConfig:
    """Configures one named interface; every method is idempotent where the kernel allows it."""

    def __init__(self, ifname: str) -> None:
        self.ifname = ifname
        self._ipr = IPRoute()

    def close(self) -> None:
        self._ipr.close()

    def __enter__(self) -> InterfaceConfig:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def index(self) -> int:
        found = self._ipr.link_lookup(ifname=self.ifname)
        if not found:
            raise NetlinkConfigError(f"{self.ifname}: no such interface")
        return int(found[0])

    def _set_link(self, what: str, **kwargs: object) -> None:
        try:
            self._ipr.link("set", index=self.index(), **kwargs)
        except NetlinkError as exc:
            raise NetlinkConfigError(f"{self.ifname}: {what}: {exc}") from exc

    def set_up(self, mtu: int | None = None) -> None:
        if mtu is None:
            self._set_link("set link up", state="up")
        else:
            self._set_link(f"set link up with MTU {mtu}", state="up", mtu=mtu)

    def set_down(self) -> None:
        self._set_link("set link down", state="down")

    def set_mtu(self, mtu: int) -> None:
        self._set_link(f"set MTU {mtu}", mtu=mtu)

    def add_address(self, address: str, prefixlen: int) -> None:
        ipaddress.IPv6Address(address)
        try:
            self._ipr.addr(
                "add", index=self.index(), address=address, prefixlen=prefixlen, family=AF_INET6
            )
        except NetlinkError as exc:
            if exc.code != 17:  # EEXIST: already there, which is what we want
                raise NetlinkConfigError(
                    f"{self.ifname}: add {address}/{prefixlen}: {exc}"
                ) from exc

    def remove_address(self, address: str, prefixlen: int) -> None:
        try:
            self._ipr.addr(
                "del", index=self.index(), address=address, prefixlen=prefixlen, family=AF_INET6
            )
        except NetlinkError as exc:
            if exc.code not in (99, 19):  # EADDRNOTAVAIL, ENODEV: already gone
                raise NetlinkConfigError(
                    f"{self.ifname}: remove {address}/{prefixlen}: {exc}"
                ) from exc

    def addresses(self) -> list[tuple[str, int]]:
        result = []
        for msg in self._ipr.get_addr(family=AF_INET6, index=self.index()):
            result.append((str(msg.get("IFA_ADDRESS")), int(msg["prefixlen"])))
        return result

    def _route(self, destination: str, metric: int | None) -> dict[str, object]:
        network = ipaddress.IPv6Network(destination)
        route: dict[str, object] = {
            "dst": str(network.network_address),
            "dst_len": network.prefixlen,
            "oif": self.index(),
            "family": AF_INET6,
        }
        if metric is not None:
            route["priority"] = metric
        return route

    def add_route(
        self, destination: str, metric: int | None = None, protocol: int | None = None
    ) -> None:
        """`protocol`: the route's rtm_protocol (`ip route` prints "proto ..."); pyroute2's
        default is RTPROT_STATIC. A relay announcing in the main table passes RTPROT_KERNEL
        (io/announce.py)."""
        route = self._route(destination, metric)
        if protocol is not None:
            route["proto"] = protocol
        try:
            self._ipr.route("replace", **route)
        except NetlinkError as exc:
            raise NetlinkConfigError(f"{self.ifname}: route {destination}: {exc}") from exc

    def remove_route(self, destination: str, metric: int | None = None) -> None:
        try:
            self._ipr.route("del", **self._route(destination, metric))
        except NetlinkError as exc:
            if exc.code not in (3, 19):  # ESRCH, ENODEV: already gone
                message = f"{self.ifname}: remove route {destination}: {exc}"
                raise NetlinkConfigError(message) from exc


# --- watching the network (issue 13: network changes) ---------------------------------------

# rtnetlink multicast groups (linux/rtnetlink.h): links, IPv4 addresses, IPv4 routes.
RTMGRP_LINK = 0x1
RTMGRP_IPV4_IFADDR = 0x10
RTMGRP_IPV4_ROUTE = 0x40


@dataclass(frozen=True, slots=True)
class NetworkChange:
    """One rtnetlink notification, reduced to what a Teredo client acts on."""

    event: str  # RTM_NEWLINK, RTM_DELLINK, RTM_NEWADDR, RTM_DELADDR, RTM_NEWROUTE, RTM_DELROUTE
    index: int | None  # the interface (links and addresses; a route's output interface)
    default_route: bool  # an IPv4 default route (0.0.0.0/0) of the main table


def _change(msg: Any) -> NetworkChange:  # a pyroute2 message
    event = str(msg.get("event"))
    index = msg.get("index")
    default = False
    if event.endswith("ROUTE"):
        index = msg.get_attr("RTA_OIF")
        default = msg.get("dst_len") == 0 and msg.get("table") == RT_TABLE_MAIN
    return NetworkChange(event, None if index is None else int(index), default)


RT_TABLE_MAIN = 254


class NetworkMonitor:
    """Link, IPv4 address and IPv4 route notifications, read by a thread of its own.

    pyroute2 (0.9) serves a netlink socket on an asyncio loop of the thread that uses it,
    so the socket is opened, bound and read in this thread, never in the daemon's loop;
    `on_changes` is called from this thread with each batch (the caller hands it over to its
    own loop). `stop()` closes the socket, which ends the blocking read.
    """

    def __init__(self, on_changes: Callable[[list[NetworkChange]], None]) -> None:
        self._on_changes = on_changes
        self._ipr: IPRoute | None = None
        self._ready = threading.Event()
        self._stopping = False
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="netlink-monitor", daemon=True)

    def start(self, timeout: float = 5.0) -> None:
        """Starts the thread and waits (bounded) until it listens; OSError when it cannot."""
        self._thread.start()
        self._ready.wait(timeout)
        if self.error is not None:
            raise NetlinkConfigError(f"cannot watch the network: {self.error}")

    def _run(self) -> None:
        try:
            ipr = IPRoute()
            ipr.bind(groups=RTMGRP_LINK | RTMGRP_IPV4_IFADDR | RTMGRP_IPV4_ROUTE)
        except Exception as exc:  # reported by start()
            self.error = exc
            self._ready.set()
            return
        self._ipr = ipr
        self._ready.set()
        try:
            while not self._stopping:
                changes = [_change(msg) for msg in ipr.get()]
                if changes and not self._stopping:
                    self._on_changes(changes)
        except Exception as exc:  # the socket closed by stop(), or broken
            if not self._stopping:
                self.error = exc
        finally:
            with contextlib.suppress(Exception):
                ipr.close()

    def stop(self) -> None:
        self._stopping = True
        ipr = self._ipr
        if ipr is not None:
            with contextlib.suppress(Exception):
                ipr.close()
        if self._thread.is_alive():
            self._thread.join(timeout=5.0)
