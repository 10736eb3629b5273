"""Several Teredo servers for one client: which one is used, and when the client moves (sans I/O).

RFC 4380 gives a client one server; Miredo takes one and, when it stops answering, waits 100 s
before asking the same one again. With several configured (`ServerAddress` repeated, `--server`
repeated), the client:

- starts with the best one by round trip, as `teredo probe` measures it (core/probe.py's
  `choose`: usable, lowest median RTT, then loss, then configured order): the *preferred* one;
- moves to the next one in that ranking at once when its server stops answering (the machine's
  `ResolveServer` after a failed qualification or a lost contact), instead of waiting;
- after a whole round of failures, waits for the machine's back-off (4 s doubling to 100 s)
  instead of cycling without pause;
- while away from the preferred server, checks it every `check_interval` seconds and moves back
  only after `stable_checks` answered checks in a row: moving changes the Teredo address (it
  embeds the server), so a flapping server must not renumber the client each time.

The driver runs the probes (io/probe.py) and the timers; this class only decides.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from teredo.core.probe import ProbeResult

STABLE_CHECKS = 3
CHECK_INTERVAL = 20.0


@dataclass(frozen=True, slots=True)
class Move:
    """Where to go: `index` in the configured list; `now` False: at the machine's next retry."""

    index: int
    now: bool


class ServerFailover:
    """The choice among `count` configured servers (indices in configured order)."""

    def __init__(
        self,
        count: int,
        *,
        stable_checks: int = STABLE_CHECKS,
        check_interval: float = CHECK_INTERVAL,
    ) -> None:
        if count < 1:
            raise ValueError("at least one server")
        if stable_checks < 1 or check_interval <= 0:
            raise ValueError("stable_checks >= 1 and check_interval > 0")
        self.count = count
        self.stable_checks = stable_checks
        self.check_interval = check_interval
        self.ranking: list[int] = list(range(count))
        self.preferred = 0
        self.current = 0
        self.moves = 0
        self._failures = 0  # servers failed in a row since the last qualification
        self._streak = 0  # answered checks of the preferred server in a row
        self._next_check: float | None = None

    def choose(self, ranking: Sequence[int]) -> int:
        """The probes' verdict: configured indices, best first (the unusable ones may be left
        out; they are kept at the end, in configured order, as last resorts)."""
        seen = [i for i in dict.fromkeys(ranking) if 0 <= i < self.count]
        self.ranking = seen + [i for i in range(self.count) if i not in seen]
        self.preferred = self.current = self.ranking[0]
        self._streak = 0
        self._next_check = None
        return self.current

    def qualified(self) -> None:
        """The machine qualified with the current server."""
        self._failures = 0

    def failed(self, now: float) -> Move:
        """The current server stopped answering: the next one in the ranking."""
        self._failures += 1
        position = self.ranking.index(self.current)
        self.current = self.ranking[(position + 1) % self.count]
        self.moves += 1
        self._streak = 0
        self._next_check = None if self.current == self.preferred else now + self.check_interval
        # A whole round failed: every server was just tried; let the back-off pace the next.
        return Move(self.current, self._failures < self.count)

    def next_check(self) -> float | None:
        """When the preferred server should be checked again (None: we are on it)."""
        return self._next_check

    def checked(self, answered: bool, now: float) -> Move | None:
        """One check of the preferred server while on another: a Move back once stable."""
        if self.current == self.preferred:
            self._next_check = None
            return None
        self._streak = self._streak + 1 if answered else 0
        if self._streak >= self.stable_checks:
            self.current = self.preferred
            self.moves += 1
            self._streak = 0
            self._next_check = None
            return Move(self.current, True)
        self._next_check = now + self.check_interval
        return None

    def status(self) -> dict[str, object]:
        return {
            "current": self.current,
            "preferred": self.preferred,
            "ranking": list(self.ranking),
            "moves": self.moves,
            "stable_checks": self._streak,
        }


def rank(results: Sequence[ProbeResult]) -> list[int]:
    """Indices of the usable results, best first: core/probe.py's `choose` order (lowest
    median RTT, then loss, then given order); the unusable ones are left out."""
    usable = [(r.rtt_median or 0.0, r.loss, i) for i, r in enumerate(results) if r.usable]
    return [i for _rtt, _loss, i in sorted(usable)]
