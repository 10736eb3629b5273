"""The client's Teredo interface kept in step with the machine: addresses, routes, MTU, hook.

Netlink (pyroute2) runs in a worker thread of its own (`ThreadedInterface`); `TunnelConfigurator`
turns the machine's events into the configuration Miredo's client hook makes (RFC 4380 5.2.1,
5.2.5, 5.5), and failures are logged and counted, never fatal.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Protocol, TypeVar

from teredo.core.ipv6 import IPV6_MIN_MTU  # the tunnel MTU until an RA says otherwise
from teredo.io.hook import HookError, HookRunner

if TYPE_CHECKING:
    from teredo.io.netlink import InterfaceConfig

log = logging.getLogger("teredo.client")
_R = TypeVar("_R")

LINK_LOCAL_PREFIXLEN = 64
DEFAULT_ROUTE = "::/0"
# Miredo's client hook gives its default route metric 1029, above the kernel's 1024 for native
# routes, so that Teredo is the last resort (RFC 4380 section 5.5). The same value as
# io/netlink.py's, not imported from it: that module loads pyroute2, which the data path and
# the command line do not need.
LAST_RESORT_METRIC = 1029


class Interface(Protocol):
    """What the tunnel configuration needs of an interface (ThreadedInterface; tests fake it)."""

    def index(self) -> int: ...
    def set_up(self, mtu: int | None = None) -> None: ...
    def set_down(self) -> None: ...
    def set_mtu(self, mtu: int) -> None: ...
    def add_address(self, address: str, prefixlen: int) -> None: ...
    def remove_address(self, address: str, prefixlen: int) -> None: ...
    def add_route(self, destination: str, metric: int | None = None) -> None: ...
    def remove_route(self, destination: str, metric: int | None = None) -> None: ...


class ThreadedInterface:
    """io/netlink.InterfaceConfig (pyroute2) used from a thread of its own.

    pyroute2 (0.9) runs every request on an asyncio loop of its own, which asyncio refuses to
    run inside the daemon's running loop; one worker thread owns the netlink socket instead.
    Each call waits for its answer: these are rare control-path calls, never per packet.
    pyroute2 is imported by that thread when the daemon starts, not when the command line is
    parsed (its imports cost about 150 ms).
    """

    def __init__(self, ifname: str) -> None:
        self.ifname = ifname
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="netlink")
        try:
            self._cfg = self._pool.submit(_open_interface_config, ifname).result()
        except BaseException:
            self._pool.shutdown(wait=False)
            raise

    def _call(self, method: Callable[..., _R], *args: object) -> _R:
        return self._pool.submit(method, *args).result()

    def index(self) -> int:
        return self._call(self._cfg.index)

    def set_up(self, mtu: int | None = None) -> None:
        self._call(self._cfg.set_up, mtu)

    def set_down(self) -> None:
        self._call(self._cfg.set_down)

    def set_mtu(self, mtu: int) -> None:
        self._call(self._cfg.set_mtu, mtu)

    def add_address(self, address: str, prefixlen: int) -> None:
        self._call(self._cfg.add_address, address, prefixlen)

    def remove_address(self, address: str, prefixlen: int) -> None:
        self._call(self._cfg.remove_address, address, prefixlen)

    def add_route(self, destination: str, metric: int | None = None) -> None:
        self._call(self._cfg.add_route, destination, metric)

    def remove_route(self, destination: str, metric: int | None = None) -> None:
        self._call(self._cfg.remove_route, destination, metric)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._call(self._cfg.close)
        self._pool.shutdown(wait=True)


def _open_interface_config(ifname: str) -> InterfaceConfig:
    from teredo.io.netlink import InterfaceConfig  # noqa: PLC0415 - see ThreadedInterface

    return InterfaceConfig(ifname)


def ipv6_text(address: bytes) -> str:
    return str(ipaddress.IPv6Address(address))


class TunnelConfigurator:
    """Keeps the interface in step with the machine: global address only while qualified.

    Not qualified: the link is up (the machine still writes ICMPv6 errors to it) with no
    address and no route. Qualified (as Miredo's client-hook does it): MTU from the RA, the
    link-local address /64 (RFC 4380 section 5.2.1), the Teredo address /32 (whose kernel
    prefix route sends the whole Teredo prefix into the tunnel: RFC 4380 section 5.2.4 cases
    3-5), and a default route of metric 1029, above native default routes (1024), because
    Teredo is a last resort (RFC 4380 section 5.5).
    """

    def __init__(
        self, iface: Interface, hook: HookRunner | None = None, *, default_route: bool = True
    ) -> None:
        self.iface = iface
        self.hook = hook
        self.default_route = default_route
        self.address: bytes | None = None
        self.link_local: bytes | None = None
        self.prefix: bytes | None = None
        self.mtu = IPV6_MIN_MTU
        self.errors = 0

    def _try(self, what: Callable[[], None]) -> None:
        # A netlink or hook failure is logged and counted; the daemon keeps running (the
        # next event retries the whole configuration).
        try:
            what()
        except (HookError, OSError) as exc:  # NetlinkConfigError too
            self.errors += 1
            log.error("%s", exc)

    def prepare(self) -> None:
        """At start: up, MTU 1280, no address (the kernel's own link-local is turned off)."""
        self.iface.set_up(self.mtu)

    def _run_hook_up(self) -> None:
        hook, address, mtu = self.hook, self.address, self.mtu
        if hook is not None and address is not None:
            self._try(lambda: hook.up(address, mtu))

    def _add(self, address: bytes, link_local: bytes) -> None:
        # The global address goes last: once it is visible, its routes are already in place
        # (the 2001::/32 prefix route comes with the address itself).
        self.iface.add_address(ipv6_text(link_local), LINK_LOCAL_PREFIXLEN)
        if self.default_route:
            self.iface.add_route(DEFAULT_ROUTE, LAST_RESORT_METRIC)
        self.iface.add_address(ipv6_text(address), 32)

    def _remove(self, address: bytes | None, link_local: bytes | None) -> None:
        if self.default_route:
            self.iface.remove_route(DEFAULT_ROUTE, LAST_RESORT_METRIC)
        if address is not None:
            self.iface.remove_address(ipv6_text(address), 32)
        if link_local is not None:
            self.iface.remove_address(ipv6_text(link_local), LINK_LOCAL_PREFIXLEN)

    def qualified(self, address: bytes, link_local: bytes, mtu: int) -> None:
        old_address, old_ll = self.address, self.link_local
        self.address, self.link_local, self.mtu = address, link_local, mtu
        # Up as well as the MTU: Miredo's client-hook sets the link down when contact is lost.
        self._try(lambda: self.iface.set_up(mtu))
        if old_address is not None and old_address != address:
            self._try(lambda: self._remove(old_address, old_ll if old_ll != link_local else None))
        self._try(lambda: self._add(address, link_local))
        self._run_hook_up()

    def address_changed(self, old: bytes, new: bytes, link_local: bytes, mtu: int) -> None:
        # RFC 4380 section 5.2.5: a new mapping retires the old address before the new one.
        self.address = old if self.address is None else self.address
        self.qualified(new, link_local, mtu)

    def set_default_route(self, enabled: bool) -> None:
        """SIGHUP turned the last-resort route on or off; applied at once when qualified."""
        if enabled == self.default_route:
            return
        self.default_route = enabled
        if self.address is not None:
            if enabled:
                self._try(lambda: self.iface.add_route(DEFAULT_ROUTE, LAST_RESORT_METRIC))
            else:
                self._try(lambda: self.iface.remove_route(DEFAULT_ROUTE, LAST_RESORT_METRIC))

    def mtu_changed(self, mtu: int) -> None:
        self.mtu = mtu
        self._try(lambda: self.iface.set_mtu(mtu))
        self._run_hook_up()

    def offline(self) -> None:
        """Contact lost or qualification failed: no global address, no route (5.2.1, 5.2.5)."""
        was_up = self.address is not None
        address, link_local = self.address, self.link_local
        self.address = self.link_local = None
        if was_up:
            self._try(lambda: self._remove(address, link_local))
            if self.hook is not None:
                hook = self.hook
                self._try(hook.down)

    def forget(self) -> None:
        """The interface is gone, and with it every address and route that was on it."""
        self.address = self.link_local = None
        self.mtu = IPV6_MIN_MTU

    def teardown(self) -> None:
        """At exit: take away what we added, then Miredo's last two hook calls."""
        address, link_local = self.address, self.link_local
        self.address = self.link_local = None
        if address is not None:
            self._try(lambda: self._remove(address, link_local))
        self._try(self.iface.set_down)
        if self.hook is not None:
            hook = self.hook
            self._try(hook.down)
            self._try(hook.destroy)


def disable_kernel_link_local(ifname: str) -> None:
    """No kernel-made link-local on the tunnel: its only one is Teredo's (RFC 4380 5.2.1).

    addr_gen_mode 1 ("none"); /proc/sys/net is the caller's network namespace.
    """
    path = f"/proc/sys/net/ipv6/conf/{ifname}/addr_gen_mode"
    with contextlib.suppress(OSError), open(path, "w", encoding="ascii") as stream:
        stream.write("1\n")
