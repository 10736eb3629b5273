"""The I/O of `teredo probe`: candidates, one UDP socket per server, a bounded select loop.

Each candidate gets its own socket on an ephemeral port, so each server sees an independent
NAT mapping (one socket towards several servers would share one). Datagrams go only to the
two addresses of the candidate they belong to (checked here again before every send), only
when a `ProbeMachine` asks, and the loop ends at the machines' own end or at a hard total
time limit, whichever comes first. Names are resolved (getaddrinfo, IPv4 only) only when the
user gave a name; an IPv4 literal never causes a DNS query.
"""

from __future__ import annotations

import ipaddress
import os
import selectors
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from teredo.core.addr import TEREDO_PORT, TEREDO_PREFIX, int_to_ipv4
from teredo.core.client import default_secondary
from teredo.core.probe import (
    Datagram,
    ProbeMachine,
    ProbeParams,
    ProbeResult,
    unreachable_result,
)
from teredo.io.udp import open_udp_socket

# Datagrams read from one socket per wake-up: a flood towards a probe socket cannot starve
# the timers (and every datagram is checked and dropped by the machine anyway).
_READ_BUDGET = 64
_RECEIVE_SIZE = 2048  # an RA is 117 bytes; anything far larger is not an answer
# Slack added to the machines' own worst case for the hard limit (resolution, scheduling).
_HARD_SLACK = 1.0


class CandidateError(ValueError):
    """A SERVER argument that cannot name a server (bad syntax)."""


@dataclass(frozen=True, slots=True)
class Candidate:
    """One server as given: `PRIMARY` or `PRIMARY/SECONDARY`, names or IPv4 literals."""

    text: str
    primary: str
    secondary: str | None = None


def parse_candidate(text: str) -> Candidate:
    """`PRIMARY[/SECONDARY]`; raises CandidateError on an empty or malformed part."""
    parts = text.strip().split("/")
    if len(parts) > 2 or any(not p.strip() for p in parts):
        raise CandidateError(f"bad server {text!r}: expected NAME-OR-IPV4[/NAME-OR-IPV4]")
    for part in parts:
        if any(c.isspace() for c in part.strip()) or len(part) > 253:
            raise CandidateError(f"bad server {text!r}: {part!r} is not a host name")
    return Candidate(text.strip(), parts[0].strip(), parts[1].strip() if len(parts) == 2 else None)


def _literal(host: str) -> int | None:
    try:
        return int(ipaddress.IPv4Address(host))
    except ValueError:
        return None


def resolve_host(host: str) -> int:
    """IPv4 of `host`: a literal as is (no DNS), else the first A record (getaddrinfo).
    Raises OSError (socket.gaierror) when it does not resolve."""
    literal = _literal(host)
    if literal is not None:
        return literal
    infos = socket.getaddrinfo(host, None, socket.AF_INET, socket.SOCK_DGRAM)
    return int(ipaddress.IPv4Address(infos[0][4][0]))


def local_ipv4_towards(server: int, bind_address: str | None) -> str:
    """The local IPv4 a datagram to `server` leaves from: `bind_address` when it is a real
    one, else what routing picks (connect() on a UDP socket sends nothing)."""
    if bind_address and _literal(bind_address):  # given, and not 0.0.0.0 (any)
        return bind_address
    scratch = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        scratch.connect((int_to_ipv4(server), TEREDO_PORT))
        return str(scratch.getsockname()[0])
    finally:
        scratch.close()


@dataclass
class _Slot:
    """One candidate being probed: its machine and socket, or its result already."""

    candidate: Candidate
    machine: ProbeMachine | None = None
    sock: socket.socket | None = None
    allowed: frozenset[str] = frozenset()
    result: ProbeResult | None = None
    send_errors: int = 0
    refused: int = 0


def _prepare(
    candidate: Candidate,
    *,
    rounds: int,
    timeout: float,
    bind_address: str | None,
    prefix: bytes,
    random_bytes: Callable[[int], bytes],
) -> _Slot:
    slot = _Slot(candidate)
    name = candidate.text
    try:
        primary = resolve_host(candidate.primary)
        secondary = None if candidate.secondary is None else resolve_host(candidate.secondary)
    except (OSError, UnicodeError) as exc:
        reason = exc.strerror if isinstance(exc, socket.gaierror) and exc.strerror else str(exc)
        error = f"cannot resolve to IPv4: {reason}"
        slot.result = unreachable_result(name, candidate.primary, candidate.secondary or "", error)
        return slot
    second = default_secondary(primary) if secondary is None else secondary
    params = ProbeParams(primary, secondary, prefix, rounds, timeout)
    problem = params.check()
    if problem is not None:
        slot.result = unreachable_result(name, int_to_ipv4(primary), int_to_ipv4(second), problem)
        return slot
    try:
        local_ip = local_ipv4_towards(primary, bind_address)
        sock = open_udp_socket(local_ip, 0, buffer_bytes=64 * 1024)
    except OSError as exc:
        error = f"no socket towards {int_to_ipv4(primary)}: {exc.strerror or exc}"
        slot.result = unreachable_result(name, int_to_ipv4(primary), int_to_ipv4(second), error)
        return slot
    host, port = sock.getsockname()[:2]
    local = (int(ipaddress.IPv4Address(host)), int(port))
    params = ProbeParams(primary, secondary, prefix, rounds, timeout, local)
    slot.machine = ProbeMachine(params, random_bytes, name)
    slot.sock = sock
    slot.allowed = frozenset((int_to_ipv4(primary), int_to_ipv4(second)))
    return slot


def _send(slot: _Slot, datagrams: list[Datagram]) -> None:
    sock = slot.sock
    if sock is None:
        return
    for payload, dest in datagrams:
        # Belt and braces: a probe socket only ever talks to its own server's two addresses.
        if dest[0] not in slot.allowed or dest[1] != TEREDO_PORT:
            slot.refused += 1  # never happens with ProbeMachine; never sent if it did
            continue
        try:
            sock.sendto(payload, dest)
        except OSError:
            # No route, a full buffer: the RS is lost, as on a wire; its timeout counts it.
            slot.send_errors += 1


def probe_servers(
    candidates: Sequence[Candidate],
    *,
    rounds: int,
    timeout: float,
    bind_address: str | None = None,
    prefix: bytes = TEREDO_PREFIX,
    time_limit: float | None = None,
    clock: Callable[[], float] = time.monotonic,
    random_bytes: Callable[[int], bytes] = os.urandom,
) -> list[ProbeResult]:
    """Probe every candidate at once; results in the candidates' order.

    `time_limit` (default: the machines' worst case, 3 * rounds * timeout, plus 1 s) bounds the
    whole run; machines still busy then are stopped and report what they learnt.
    """
    if time_limit is None:
        time_limit = 3 * rounds * timeout + _HARD_SLACK
    start = clock()
    hard_end = start + time_limit
    slots = [
        _prepare(
            c,
            rounds=rounds,
            timeout=timeout,
            bind_address=bind_address,
            prefix=prefix,
            random_bytes=random_bytes,
        )
        for c in candidates
    ]
    selector = selectors.DefaultSelector()
    try:
        now = clock()
        for slot in slots:
            if slot.machine is not None and slot.sock is not None:
                selector.register(slot.sock, selectors.EVENT_READ, slot)
                _send(slot, slot.machine.start(now))
        _run(slots, selector, hard_end, clock)
    finally:
        selector.close()
        for slot in slots:
            if slot.sock is not None:
                slot.sock.close()
    results: list[ProbeResult] = []
    for slot in slots:
        if slot.result is None:
            machine = slot.machine
            if machine is None:  # pragma: no cover - _prepare sets one or the other
                raise AssertionError("candidate without a machine or a result")
            if not machine.done:
                machine.abort(f"total time limit of {time_limit:.1f} s")
            slot.result = machine.result()
        results.append(slot.result)
    return results


def _run(
    slots: list[_Slot],
    selector: selectors.BaseSelector,
    hard_end: float,
    clock: Callable[[], float],
) -> None:
    while True:
        now = clock()
        busy = [(s, s.machine) for s in slots if s.machine is not None and not s.machine.done]
        if not busy or now >= hard_end:
            return
        wake = hard_end
        for _slot, machine in busy:
            d = machine.next_deadline()
            if d is not None and d < wake:
                wake = d
        for key, _events in selector.select(max(0.0, wake - now)):
            _read(key.data, clock)
        now = clock()
        for slot, machine in busy:
            d = machine.next_deadline()
            if not machine.done and d is not None and now >= d:
                _send(slot, machine.handle_timer(now))


def _read(slot: _Slot, clock: Callable[[], float]) -> None:
    sock = slot.sock
    machine = slot.machine
    if sock is None or machine is None:
        return
    for _ in range(_READ_BUDGET):
        try:
            data, source = sock.recvfrom(_RECEIVE_SIZE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            continue  # a queued ICMP error about an earlier datagram
        # The time of arrival is read per datagram: it is the end of that RS's round trip.
        _send(slot, machine.receive(data, (str(source[0]), int(source[1])), clock()))
