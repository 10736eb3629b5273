"""Interface configuration through netlink (pyroute2): MTU, addresses, routes, link state.

Off the hot path: called when the daemon starts, qualifies, changes address or stops.
"""

from __future__ import annotations

import ipaddress
from types import TracebackType

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

AF_INET6 = 10

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

    def add_route(self, destination: str, metric: int | None = None) -> None:
        try:
            self._ipr.route("replace", **self._route(destination, metric))
        except NetlinkError as exc:
            raise NetlinkConfigError(f"{self.ifname}: route {destination}: {exc}") from exc

    def remove_route(self, destination: str, metric: int | None = None) -> None:
        try:
            self._ipr.route("del", **self._route(destination, metric))
        except NetlinkError as exc:
            if exc.code not in (3, 19):  # ESRCH, ENODEV: already gone
                message = f"{self.ifname}: remove route {destination}: {exc}"
                raise NetlinkConfigError(message) from exc
