"""Anycast announcements through the kernel (issue 11; docs/scale.md "announce-table contract").

Our daemons do not speak BGP. While healthy, a daemon started with `--announce-table N` keeps
one route per prefix it serves in kernel routing table N, with protocol number ANNOUNCE_PROTO,
on an interface of its own; the routing daemon next to it (BIRD's kernel protocol with
`learn`; FRR 8.4: table 254 and `redistribute kernel`, docs/scale.md) exports what it finds
there over BGP.

The interface is the *anchor*: a non-persistent TUN device that no packet ever uses. The kernel
removes a non-persistent TUN, and every route on it, when its last descriptor closes, which
happens when the process dies whatever kills it (SIGKILL, OOM): a dead daemon is never left
announced. Withdrawing on purpose (SIGTERM, before draining) is closing that descriptor too:
no netlink request and no capability are needed after start-up, so the withdraw still works
once the daemon has dropped its privileges. Creating the anchor and its routes needs
CAP_NET_ADMIN, at start, before privileges are dropped.

Table N is never consulted for forwarding (no rule points at it): it is only the contract
between the daemon and the routing daemon. The exception is FRR, whose zebra reads the main
table (254) only (docs/scale.md, FRR). A server's /32 there route nothing: they are local
addresses, which the local table routes first. A relay's prefix (2001::/32) there would compete
with the relay's own forwarding route to its Teredo interface: the announcement gets
ANNOUNCE_METRIC, above the forwarding route's, so that the kernel keeps forwarding through the
Teredo interface, and the relay makes its forwarding route with protocol "kernel"
(RTPROT_KERNEL), which zebra ignores (zebra/rt_netlink.c skips every route of that protocol), so
that zebra sees, and bgpd announces, only the announcement.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import threading
from collections.abc import Sequence
from typing import Final

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from teredo.core.directives import MAIN_TABLE
from teredo.io.loop import Daemon, DaemonLoop
from teredo.io.tun import TunDevice, TunError

log = logging.getLogger("teredo.announce")

#: Route protocol of our announcements (rtnetlink rtm_protocol; `ip route` prints the number):
#: 84 ('T') is not in iproute2's rt_protos, so an operator's filter can match ours exactly
#: (BIRD: `krt_source = 84`).
ANNOUNCE_PROTO: Final = 84
#: Prefix of the anchor interface's name; the process id makes it unique on the host.
ANCHOR_PREFIX: Final = "announce"
#: Metric (priority) of an IPv6 announcement in the main table: above the kernel's default
#: 1024, which the relay's forwarding route to its Teredo interface has, so that the kernel
#: never forwards into the anchor while the relay runs; FRR's route map matches it (as the MED
#: bgpd gives a redistributed route), so that no other route of the prefix is announced.
ANNOUNCE_METRIC: Final = 2048
AF_INET: Final = 2
AF_INET6: Final = 10
RT_SCOPE_LINK: Final = 253
#: Seconds a withdraw waits for its route deletions before it closes the anchor anyway.
DELETE_TIMEOUT: Final = 2.0

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class AnnounceError(RuntimeError):
    """The announcement could not be made; the message is the one line the operator reads."""


def anchor_name(pid: int | None = None) -> str:
    """The anchor interface of process `pid` (ours by default): announce<pid>, <= 15 bytes."""
    return f"{ANCHOR_PREFIX}{os.getpid() if pid is None else pid}"


def relay_prefixes(prefix: str, anycast_ipv4: ipaddress.IPv4Address | None) -> list[Network]:
    """What a relay announces: its Teredo prefix (native side) and its anycast IPv4 if any."""
    found: list[Network] = [ipaddress.IPv6Network(prefix)]
    if anycast_ipv4 is not None:
        found.append(ipaddress.IPv4Network(anycast_ipv4))
    return found


def server_prefixes(
    primary: ipaddress.IPv4Address, secondary: ipaddress.IPv4Address
) -> list[Network]:
    """What a server announces: its two addresses (RFC 4380 section 5.3), each a /32."""
    return [ipaddress.IPv4Network(primary), ipaddress.IPv4Network(secondary)]


class Announcement:
    """Routes for `prefixes` in kernel table `table` on an anchor TUN; `withdraw` removes them.

    Opened when the daemon is ready to serve (sockets bound, data path attached); the daemon
    calls `withdraw` first when it stops, then drains.
    """

    def __init__(self, table: int, prefixes: Sequence[Network], name: str | None = None) -> None:
        self.table = table
        self.prefixes = tuple(prefixes)
        self.name = name or anchor_name()
        self._anchor: TunDevice | None = None
        self._final = False  # withdrawn for good: the daemon is stopping

    @property
    def announced(self) -> bool:
        return self._anchor is not None

    def announce(self) -> None:
        """Create the anchor and its routes. Raises AnnounceError (nothing is left behind).
        Does nothing once withdrawn with `final` (a health check must not announce a daemon
        that is draining)."""
        if self._anchor is not None or self._final:
            return
        try:
            anchor = TunDevice.open(self.name)
        except TunError as exc:
            raise AnnounceError(f"announce: {exc}") from None
        try:
            self._add_routes(anchor.name)
        except (NetlinkError, OSError) as exc:
            anchor.close()  # its routes go with it
            raise AnnounceError(f"announce in table {self.table} on {anchor.name}: {exc}") from None
        except BaseException:
            anchor.close()
            raise
        self._anchor = anchor
        log.info(
            "announcing %s in routing table %d (interface %s)",
            ", ".join(str(p) for p in self.prefixes),
            self.table,
            anchor.name,
        )

    def _route(self, network: Network, index: int) -> dict[str, object]:
        """The netlink request of our route to `network` on the anchor (interface `index`)."""
        route: dict[str, object] = {
            "dst": str(network.network_address),
            "dst_len": network.prefixlen,
            "oif": index,
            "table": self.table,
            "proto": ANNOUNCE_PROTO,
            "family": AF_INET6,
        }
        if network.version == 4:
            # A route through a device without a gateway is on-link, as `ip route add ... dev
            # X` makes it.
            route.update(family=AF_INET, scope=RT_SCOPE_LINK)
        elif self.table == MAIN_TABLE:
            # Below the relay's forwarding route (module docstring); without it, "replace"
            # would even take that route's place (IPv6 routes are keyed by prefix and metric).
            route["priority"] = ANNOUNCE_METRIC
        return route

    def _add_routes(self, ifname: str) -> None:
        with IPRoute() as ipr:
            found = ipr.link_lookup(ifname=ifname)
            if not found:
                raise AnnounceError(f"announce: {ifname} vanished")
            index = int(found[0])
            ipr.link("set", index=index, state="up")
            for network in self.prefixes:
                ipr.route("replace", **self._route(network, index))

    def _delete_routes(self, ifname: str) -> None:
        """Delete our routes one by one before the anchor goes, so that the kernel tells every
        listener (RTM_DELROUTE). When a device goes, the kernel flushes its IPv4 routes without
        a notification; BIRD rescans (`scan time`) and sees them gone, and FRR 8.4's zebra drops
        them with the interface, but a listener that keeps its own copy needs telling (zebra's
        `ip import-table` keeps what it imported: docs/scale.md, FRR). Best effort: it needs
        CAP_NET_ADMIN, which a daemon may have dropped; closing the anchor still removes the
        routes then. In a thread of its own: pyroute2's synchronous API runs an asyncio loop,
        which fails inside the daemon's."""
        thread = threading.Thread(
            target=self._delete_routes_now, args=(ifname,), name="withdraw", daemon=True
        )
        thread.start()
        thread.join(DELETE_TIMEOUT)

    def _delete_routes_now(self, ifname: str) -> None:
        try:
            with IPRoute() as ipr:
                found = ipr.link_lookup(ifname=ifname)
                if not found:
                    return
                for network in self.prefixes:
                    try:
                        ipr.route("del", **self._route(network, int(found[0])))
                    except NetlinkError as exc:
                        log.debug("withdraw: %s left to go with %s (%s)", network, ifname, exc)
        except Exception as exc:  # whatever it is, closing the anchor removes the routes
            log.debug("withdraw: routes left to go with %s (%s)", ifname, exc)

    def withdraw(self, *, final: bool = False) -> bool:
        """Remove the routes (the kernel does, with the anchor); True if they were there.
        `final`: for good (the daemon stops), `announce` will not bring them back."""
        self._final = self._final or final
        anchor, self._anchor = self._anchor, None
        if anchor is None:
            return False
        try:
            self._delete_routes(anchor.name)
        finally:
            anchor.close()
        log.info(
            "withdrawn %s from routing table %d", ", ".join(map(str, self.prefixes)), self.table
        )
        return True

    def close_inherited(self) -> None:
        """In a forked child: drop our copy of the anchor's descriptor without logging, so
        that the routes go when the parent withdraws or dies, whatever the child does."""
        if self._anchor is not None:
            self._anchor.close()
            self._anchor = None

    def status(self) -> dict[str, object]:
        return {
            "table": self.table,
            "interface": self.name,
            "prefixes": [str(p) for p in self.prefixes],
            "announced": self.announced,
        }


class _Announcing:
    """A daemon (teredo.io.loop.Daemon) whose status and summary tell its announcement, and
    whose close withdraws it before anything else is closed."""

    def __init__(self, daemon: Daemon, announcement: Announcement) -> None:
        self._daemon = daemon
        self._announcement = announcement

    def summary(self) -> str:
        state = "announced" if self._announcement.announced else "withdrawn"
        return f"{self._daemon.summary()}, {state} in table {self._announcement.table}"

    def status(self) -> dict[str, object]:
        return {**self._daemon.status(), "announce": self._announcement.status()}

    def close(self) -> None:
        self._announcement.withdraw(final=True)
        self._daemon.close()


def announce_while_serving(
    loop: DaemonLoop, daemon: Daemon, announcement: Announcement, drain: float
) -> Daemon:
    """Announce now (the daemon is ready: sockets bound, data path attached); on SIGTERM
    withdraw first, then serve `drain` seconds more before stopping. Raises AnnounceError.

    Returns the daemon to serve (its status shows the announcement)."""
    announcement.announce()

    def withdraw() -> float:
        if announcement.withdraw(final=True):
            log.info("draining for %g s before stopping", drain)
        return drain

    loop.set_drain(withdraw)
    return _Announcing(daemon, announcement)
