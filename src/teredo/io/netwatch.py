"""Network changes that matter to a client (issue 13): netlink's notifications, judged.

io/netlink.py's thread reports links, IPv4 addresses and routes; they come in bursts (an
address, then its routes), so they are looked at together once settled, on the asyncio loop.
The client's own interface is ignored. What is left is one of three changes: no route to the
server any more (offline at once, cleanly: RFC 4380 5.2.5 would notice only after a refresh
interval and three RS, up to 42 s with a dead address), a new local IPv4 (qualify again), or a
new default route (check the mapping). The daemon applies them to the machine.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import socket
from collections.abc import Callable
from typing import TYPE_CHECKING

from teredo.core.addr import int_to_ipv4

if TYPE_CHECKING:
    from teredo.io.loop import DaemonLoop
    from teredo.io.netlink import NetworkChange, NetworkMonitor

log = logging.getLogger("teredo.client")

# Network notifications come in bursts (an address, then its routes): looked at once settled.
NETWORK_SETTLE = 0.3


class Change(enum.Enum):
    DOWN = "down"  # no route to the server any more
    MOVED = "moved"  # a new local IPv4 or port towards the server
    ROUTE = "route"  # a new default route, the same local address


class NetworkWatch:
    """Calls `act(change, why, local)` when the network changed for the client.

    `interface()` names the client's own interface (its changes are its own doing),
    `local_address()` gives the local IPv4/port towards the server (None: no route), and
    `ready()` says whether the daemon has a machine to apply changes to."""

    def __init__(
        self,
        loop: DaemonLoop,
        *,
        interface: Callable[[], str | None],
        local_address: Callable[[], tuple[int, int] | None],
        ready: Callable[[], bool],
        act: Callable[[Change, str, tuple[int, int] | None], None],
    ) -> None:
        self.loop = loop
        self._interface = interface
        self._local_address = local_address
        self._ready = ready
        self._act = act
        self.local: tuple[int, int] | None = None  # local IPv4/port last seen
        self._monitor: NetworkMonitor | None = None
        self._check: asyncio.TimerHandle | None = None
        self._new_default_route = False

    def start(self) -> None:
        """Follows link, IPv4 address and IPv4 route notifications (io/netlink.py's thread)."""
        from teredo.io.netlink import NetworkMonitor  # noqa: PLC0415 - see ThreadedInterface

        loop = self.loop.loop

        def hand_over(changes: list[NetworkChange]) -> None:
            loop.call_soon_threadsafe(self._changes, changes)

        monitor = NetworkMonitor(hand_over)
        try:
            monitor.start()
        except OSError as exc:
            # The client still works; it notices a new network at its next refresh only.
            log.warning("%s; network changes are noticed at the next refresh only", exc)
            monitor.stop()
            return
        self._monitor = monitor

    def stop(self) -> None:
        monitor, self._monitor = self._monitor, None
        if monitor is not None:
            monitor.stop()

    def _changes(self, changes: list[NetworkChange]) -> None:
        """A batch of notifications, in the loop thread. Our own interface's are ours; the
        rest are looked at together a moment later (one change comes as several messages)."""
        own = None
        name = self._interface()
        if name is not None:
            with contextlib.suppress(OSError):
                own = socket.if_nametoindex(name)
        relevant = [c for c in changes if c.index is None or c.index != own]
        if not relevant:
            return
        if any(c.default_route and c.event == "RTM_NEWROUTE" for c in relevant):
            self._new_default_route = True
        if self._check is None:
            self._check = self.loop.loop.call_later(NETWORK_SETTLE, self._settled)

    def _settled(self) -> None:
        """Which change it was, if any: a new local IPv4 beats a new default route."""
        self._check = None
        new_route, self._new_default_route = self._new_default_route, False
        if not self._ready():
            return
        local = self._local_address()
        before, self.local = self.local, local
        if local is None:
            if before is None:
                return
            log.warning("no route to the server any more: offline until the network is back")
            self._act(Change.DOWN, "down", None)
            return
        if local != before:
            why = f"local address {int_to_ipv4(local[0])}"
            log.info("network changed (%s): qualifying again", why)
            self._act(Change.MOVED, why, local)
        elif new_route:
            log.info("network changed (a new default route): checking the mapping")
            self._act(Change.ROUTE, "a new default route", local)
