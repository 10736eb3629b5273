"""The Teredo server's name, resolved off the loop and again on demand, with back-off.

The client resolves its server at start and again whenever the machine asks (ResolveServer,
after a loss of contact: the name may point elsewhere now, as Miredo re-resolves); a name that
does not resolve is retried 1, 2, 4 ... 60 s apart, since no network at boot must not end the
daemon.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import socket
from collections.abc import Callable
from typing import TYPE_CHECKING

from teredo.core.addr import TEREDO_PORT, ipv4_to_int
from teredo.io.loop import DaemonLoop

if TYPE_CHECKING:
    pass

log = logging.getLogger("teredo.client")

# Back-off of the server name resolution: first retry after 1 s, doubling up to 60 s, so a
# machine that boots without network finds its server within a minute of the network coming up.
RESOLVE_FIRST_DELAY = 1.0
RESOLVE_MAX_DELAY = 60.0


def resolve_ipv4(host: str) -> int:
    """One IPv4 address of `host` (a dotted quad needs no look-up); OSError when none."""
    with contextlib.suppress(ValueError):
        return ipv4_to_int(host)
    infos = socket.getaddrinfo(host, TEREDO_PORT, socket.AF_INET, socket.SOCK_DGRAM)
    for info in infos:
        address = info[4][0]
        if isinstance(address, str):
            return ipv4_to_int(address)
    raise OSError(errno.ENOENT, f"{host}: no IPv4 address")


def is_literal(host: str) -> bool:
    try:
        ipv4_to_int(host)
    except ValueError:
        return False
    return True


Resolution = tuple[int, int | None]  # primary, secondary (None: primary + 1)


class ServerResolver:
    """Resolves (server, server2) off the loop thread, retrying with exponential back-off.

    `resolve` runs in the loop's default executor, so a slow DNS server never stalls the data
    path. `on_resolved` is called in the loop thread. A new request replaces a pending one.
    """

    def __init__(
        self,
        loop: DaemonLoop,
        on_resolved: Callable[[Resolution], None],
        *,
        resolve: Callable[[str], int] = resolve_ipv4,
        first_delay: float = RESOLVE_FIRST_DELAY,
        max_delay: float = RESOLVE_MAX_DELAY,
    ) -> None:
        self._loop = loop
        self._on_resolved = on_resolved
        self._resolve = resolve
        self._first_delay = first_delay
        self._max_delay = max_delay
        self._generation = 0
        self._names: tuple[str, str | None] = ("", None)
        self.failures = 0
        self.pending = False

    def _lookup(self, names: tuple[str, str | None]) -> Resolution:
        primary = self._resolve(names[0])
        secondary = None if names[1] is None else self._resolve(names[1])
        return primary, secondary

    def request(self, server: str, server2: str | None) -> None:
        """Resolve now (and again after each failure, with back-off, until it works)."""
        self._generation += 1
        self._names = (server, server2)
        self.failures = 0
        self._attempt(self._generation, self._first_delay)

    def cancel(self) -> None:
        self._generation += 1
        self.pending = False

    def _attempt(self, generation: int, delay: float) -> None:
        if generation != self._generation:
            return
        self.pending = True
        if all(n is None or is_literal(n) for n in self._names):
            # Dotted quads need no look-up: no executor thread to start, which saves about
            # 15 ms of the time to qualify (docs/benchmarks.md, "Client").
            future: asyncio.Future[Resolution] = self._loop.loop.create_future()
            try:
                future.set_result(self._lookup(self._names))
            except (OSError, ValueError) as exc:
                future.set_exception(exc)
            self._loop.loop.call_soon(self._done, future, generation, delay)
            return
        future = self._loop.loop.run_in_executor(None, self._lookup, self._names)
        future.add_done_callback(lambda f: self._done(f, generation, delay))

    def _done(self, future: asyncio.Future[Resolution], generation: int, delay: float) -> None:
        if generation != self._generation:
            return
        try:
            result = future.result()
        except (OSError, UnicodeError, ValueError) as exc:
            self.failures += 1
            # One line per attempt: 1, 2, 4 ... s apart, then once a minute at most.
            log.warning(
                "cannot resolve the Teredo server %s: %s; retrying in %g s",
                " / ".join(n for n in self._names if n),
                getattr(exc, "strerror", None) or exc,
                delay,
            )
            self._loop.loop.call_later(
                delay, self._attempt, generation, min(delay * 2, self._max_delay)
            )
            return
        self.pending = False
        self._on_resolved(result)
