"""Which of the configured Teredo servers the client uses (issue 13), on the asyncio loop.

One server: it is resolved and used. Several: their RS round trips are measured off the loop
(RFC 4380 5.2.1's questions, as `teredo probe` asks them), the best is used, the next one when
it stops answering, and the preferred one is checked again now and then to move back to it;
core/failover.py makes every one of those decisions, this module runs them.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

from teredo.core.failover import Move, ServerFailover, rank

if TYPE_CHECKING:
    from teredo.core.probe import ProbeResult
    from teredo.io.loop import DaemonLoop

log = logging.getLogger("teredo.client")

# Only the first phase of a probe matters for the choice, so it is cut short after
# PROBE_TIME_LIMIT.
PROBE_ROUNDS = 2
PROBE_TIMEOUT = 1.0
PROBE_TIME_LIMIT = 1.5

#: (name, secondary name): a candidate server; only the first configured one has a secondary.
Names = tuple[str, str | None]


class ServerChoice:
    """The server in use among `candidates`; `request(name, secondary)` asks for it to be
    resolved and used (the daemon's io/resolve.py ServerResolver)."""

    def __init__(self, loop: DaemonLoop, request: Callable[[str, str | None], None]) -> None:
        self.loop = loop
        self._request = request
        self._candidates: list[Names] = []
        self._bind_address = "0.0.0.0"  # noqa: S104
        self.failover: ServerFailover | None = None
        self.active: Names = ("", None)
        # A move to apply at once (no back-off wait): set by a failover, cleared once used.
        self.move_now = False
        self._check_timer: asyncio.TimerHandle | None = None

    def start(self, candidates: list[Names], bind_address: str) -> None:
        """One server: resolve it. Several: probe them all off the loop, then use the best
        by round trip (also on a reload that changes the list)."""
        self.cancel()
        self._candidates = candidates
        self._bind_address = bind_address
        if len(candidates) == 1:
            self.failover = None
            self._use(candidates[0], move_now=False)
            return
        self.failover = failover = ServerFailover(len(candidates))
        future = self.loop.loop.run_in_executor(
            None, _probe_candidates, candidates, bind_address, PROBE_ROUNDS
        )
        future.add_done_callback(lambda f: self._ranked(failover, f))

    def cancel(self) -> None:
        """No more checks of the preferred server (clean-up, or a new choice)."""
        if self._check_timer is not None:
            self._check_timer.cancel()
            self._check_timer = None

    def qualified(self) -> None:
        """The server in use qualified us: failures in a row start again from zero."""
        if self.failover is not None:
            self.failover.qualified()

    def failed(self) -> None:
        """The server in use stopped answering (ResolveServer): the next one, if any."""
        failover = self.failover
        if failover is None:
            return
        old = self.active[0]
        move: Move = failover.failed(self.loop.clock())
        new = self._candidates[move.index]
        log.warning(
            "server %s is not answering: moving to server %s%s",
            old,
            new[0],
            "" if move.now else " (every server failed in a row: after the back-off)",
        )
        self._use(new, move_now=move.now)

    def status(self) -> dict[str, object]:
        """For the daemon's status: the servers and the failover's state (several only)."""
        if self.failover is None:
            return {}
        return {
            "servers": [c[0] for c in self._candidates],
            "failover": self.failover.status(),
        }

    def _ranked(self, failover: ServerFailover, future: asyncio.Future[list[ProbeResult]]) -> None:
        if failover is not self.failover:
            return  # a reload started another choice
        try:
            results = future.result()
        except Exception as exc:  # whatever happened, the client must still start
            log.warning("cannot probe the servers (%s): trying them in the configured order", exc)
            results = []
        index = failover.choose(rank(results))
        log.info(
            "servers by round trip: %s; using %s",
            ", ".join(_rtt_text(r) for r in results) or "not measured",
            self._candidates[index][0],
        )
        self._use(self._candidates[index], move_now=False)

    def _use(self, names: Names, *, move_now: bool) -> None:
        self.active = names
        self.move_now = move_now
        self._request(*names)
        self._arm_check()

    def _arm_check(self) -> None:
        """While away from the preferred server, check it again at the failover's date."""
        self.cancel()
        when = self.failover.next_check() if self.failover is not None else None
        if when is not None:
            delay = max(0.0, when - self.loop.clock())
            self._check_timer = self.loop.loop.call_later(delay, self._check_preferred)

    def _check_preferred(self) -> None:
        self._check_timer = None
        failover = self.failover
        if failover is None:
            return
        preferred = self._candidates[failover.preferred]
        future = self.loop.loop.run_in_executor(
            None, _probe_candidates, [preferred], self._bind_address, 1
        )
        future.add_done_callback(lambda f: self._checked(failover, f))

    def _checked(self, failover: ServerFailover, future: asyncio.Future[list[ProbeResult]]) -> None:
        if failover is not self.failover:
            return
        try:
            answered = any(r.reachable for r in future.result())
        except Exception:  # a check that fails is a check not answered
            answered = False
        move = failover.checked(answered, self.loop.clock())
        if move is None:
            self._arm_check()
            return
        back = self._candidates[move.index]
        log.info(
            "server %s answered %d checks in a row: moving back to it",
            back[0],
            failover.stable_checks,
        )
        self._use(back, move_now=True)


def _probe_candidates(candidates: list[Names], bind_address: str, rounds: int) -> list[ProbeResult]:
    """RS round trips to each candidate from sockets of their own (io/probe.py), bounded by
    PROBE_TIME_LIMIT: run in an executor thread, never on the loop."""
    from teredo.io.probe import Candidate, probe_servers  # noqa: PLC0415 - only with failover

    return probe_servers(
        [Candidate(name, name, second) for name, second in candidates],
        rounds=rounds,
        timeout=PROBE_TIMEOUT,
        bind_address=None if bind_address == "0.0.0.0" else bind_address,  # noqa: S104
        time_limit=PROBE_TIME_LIMIT,
    )


def _rtt_text(result: ProbeResult) -> str:
    median = result.rtt_median
    if median is None:
        return f"{result.name or result.server} no answer"
    return f"{result.name or result.server} {median * 1000.0:.1f} ms"
