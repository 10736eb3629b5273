"""Is the relay's Teredo server answering? (issue 11: a relay announces only while it can serve)

A relay reaches a new peer through that peer's server (indirect bubbles, RFC 4380 section
5.4.1): with `--health-server HOST`, a relay that cannot reach its operator's server withdraws
its announcement, so that native traffic goes to relays that can. Every `interval` seconds one
Router Solicitation goes to the server from a socket of our own, as `teredo probe` sends it
(core/probe.py, its primary phase only: one RS, its nonce checked in the RA); an RA within
`timeout` is a success. `failures` failed checks in a row (one at start) make the server down,
one success up again; `on_change(up)` is called at each change.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
from collections.abc import Callable

from teredo.core.addr import Address
from teredo.core.config import ANY_IPV4
from teredo.core.probe import Datagram, Phase, ProbeMachine, ProbeParams
from teredo.io.announce import AnnounceError, Announcement
from teredo.io.loop import DaemonLoop
from teredo.io.netlink import NetlinkConfigError
from teredo.io.relay_driver import off_loop
from teredo.io.udp import open_udp_socket

log = logging.getLogger("teredo.health")

ANY = str(ANY_IPV4)  # the relay's BindAddress when it has none: any local address
DEFAULT_INTERVAL = 5.0
DEFAULT_TIMEOUT = 1.0
DEFAULT_FAILURES = 3


class ServerHealth:
    """The periodic check; a TimedMachine of the daemon's loop."""

    def __init__(
        self,
        loop: DaemonLoop,
        server: int,
        on_change: Callable[[bool], None],
        *,
        bind_address: str = ANY,
        interval: float = DEFAULT_INTERVAL,
        timeout: float = DEFAULT_TIMEOUT,
        failures: int = DEFAULT_FAILURES,
        random_bytes: Callable[[int], bytes] = os.urandom,
    ) -> None:
        self._loop = loop
        self._params = ProbeParams(server=server, rounds=1, timeout=min(timeout, interval))
        problem = self._params.check()
        if problem is not None:
            raise ValueError(problem)
        self._on_change = on_change
        self._interval = interval
        self._failures = failures
        self._random = random_bytes
        self._sock: socket.socket = open_udp_socket(bind_address, 0)
        self._machine: ProbeMachine | None = None
        self._next_check = loop.clock()  # the first check at once
        self._misses = 0
        self.up: bool | None = None  # unknown until the first check ends
        self.checks = 0
        loop.add_socket(self._sock, self._on_datagram)
        loop.add_machine(self)

    def close(self) -> None:
        if self._sock.fileno() >= 0:
            self._loop.remove_reader(self._sock.fileno())
            self._sock.close()

    def next_deadline(self) -> float | None:
        if self._machine is not None:
            return self._machine.next_deadline()
        return self._next_check

    def handle_timer(self, now: float) -> None:
        if self._machine is None:
            if now >= self._next_check:
                self._machine = ProbeMachine(self._params, self._random)
                self._send(self._machine.start(now))
            return
        self._step(self._machine.handle_timer(now), now)

    def _on_datagram(self, data: bytes, source: Address) -> None:
        if self._machine is None:
            return  # a late answer: the check it belonged to is over
        now = self._loop.clock()
        self._step(self._machine.receive(data, source, now), now)
        self._loop.rearm()

    def _step(self, out: list[Datagram], now: float) -> None:
        machine = self._machine
        if machine is None:
            return
        if machine.phase is Phase.PRIMARY and not machine.done:
            self._send(out)  # still waiting for the primary's answer
            return
        # The primary phase is over: answered (the probe would go on to the cone phase, which
        # a health check does not need) or not.
        answered = bool(machine.result().rtts)
        machine.abort("health check done")
        self._machine = None
        self._next_check = now + self._interval
        self.checks += 1
        self._record(answered)

    def _record(self, answered: bool) -> None:
        if answered:
            self._misses = 0
            state: bool | None = True
        else:
            self._misses += 1
            down = self.up is None or self._misses >= self._failures
            state = False if down else self.up
        if state is not None and state != self.up:
            self.up = state
            self._on_change(state)

    def _send(self, datagrams: list[Datagram]) -> None:
        for payload, destination in datagrams:
            # No route, for now: this check fails by its timeout.
            with contextlib.suppress(OSError):
                self._sock.sendto(payload, destination)


def announce_while_server_answers(
    loop: DaemonLoop,
    announcement: Announcement,
    server: int,
    server_name: str,
    *,
    bind_address: str = ANY,
    interval: float = DEFAULT_INTERVAL,
) -> ServerHealth:
    """Withdraw `announcement` while `server` does not answer, announce it again when it does.

    Announcing again needs CAP_NET_ADMIN: a daemon that has dropped it stops (status 1), so
    that its supervisor starts it again, announcing once its server answers."""

    def changed(up: bool) -> None:
        if not up:
            if announcement.withdraw():
                log.warning("Teredo server %s does not answer: announcement withdrawn", server_name)
            else:
                log.warning("Teredo server %s does not answer: not announcing", server_name)
            return
        if announcement.announced:
            return
        try:
            # pyroute2's synchronous API cannot run inside the loop's callbacks.
            off_loop(announcement.announce)
        except (AnnounceError, NetlinkConfigError) as exc:
            log.error("Teredo server %s answers again, but %s: stopping", server_name, exc)
            loop.stop(1)
            return
        log.info("Teredo server %s answers again: announced", server_name)

    return ServerHealth(loop, server, changed, bind_address=bind_address, interval=interval)
