"""Probing a Teredo server the way qualification does (RFC 4380 section 5.2.1), sans I/O.

`teredo probe` runs one `ProbeMachine` per candidate server, each on its own UDP socket (so each
sees its own NAT mapping). The machine creates no interface and keeps no address: it asks the
questions of qualification and measures the answers. Three phases, one RS in flight at a time:

    PRIMARY    `rounds` RS from fe80::ffff:ffff:ffff (C=0) to the primary address, each with a
               fresh nonce (section 5.2.2): round-trip times, loss, the mapping (origin
               indication), the prefix and MTU of the RA.
    CONE       an RS from the cone link-local address (C=1) to the primary address, repeated
               up to `rounds` times. The server answers a cone RS from its *other* address
               (section 5.3.2), so the answer gets through only a cone NAT, or no NAT. It runs
               before anything is sent to the secondary address: that would open a restricted
               NAT to the secondary address and fake a cone answer.
    SECONDARY  a C=0 RS to the secondary address (primary + 1 unless given), repeated up to
               `rounds` times: another mapping there means a symmetric NAT (section 5.2.1).

At most `3 * rounds` RS per server, each waiting `timeout` seconds: the machine is done after at
most `3 * rounds * timeout` seconds whatever the network does. A dead primary ends the probe
after its `rounds` RS (nothing to compare the other answers with).

Every RA passes the client's own checks (`check_ra`: source address, nonce, confirmation, origin
indication, destination, prefix naming the primary server) plus the server's link-local source;
anything else is dropped with a `DropReason` and counted, never trusted.
"""

from __future__ import annotations

import enum
import ipaddress
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from teredo.core.addr import (
    LINK_LOCAL_CONE,
    LINK_LOCAL_RESTRICTED,
    TEREDO_PORT,
    TEREDO_PREFIX,
    Address,
    int_to_ipv4,
    parse_ipv4,
    server_link_local,
)
from teredo.core.counters import DropCounters, DropReason
from teredo.core.ipv6 import build_rs
from teredo.core.natbehaviour import NatBehaviour, classify
from teredo.core.qualify import NatType, RaInfo, check_ra, default_secondary, server_problem
from teredo.core.wire import build_auth, parse_payload

Datagram = tuple[bytes, Address]

DEFAULT_ROUNDS = 3
DEFAULT_TIMEOUT = 1.0  # a client waits 4 s (section 5.2.1); a probe may be impatient
MAX_ROUNDS = 20
MIN_TIMEOUT = 0.05
MAX_TIMEOUT = 30.0
NONCE_LEN = 8  # section 5.2.2: the Authentication nonce
# Nonces of earlier RS remembered to tell a late answer from a forged one (bounded: 3 * rounds).
_KEEP_NONCES = 3 * MAX_ROUNDS


class Phase(enum.StrEnum):
    PRIMARY = "primary"
    CONE = "cone"
    SECONDARY = "secondary"
    DONE = "done"


@dataclass(frozen=True, slots=True)
class ProbeParams:
    server: int  # primary server IPv4 (int)
    server2: int | None = None  # secondary; None = server + 1 (as a client assumes)
    prefix: bytes = TEREDO_PREFIX  # the Teredo prefix the RA must advertise
    rounds: int = DEFAULT_ROUNDS
    timeout: float = DEFAULT_TIMEOUT
    local_address: tuple[int, int] | None = None  # our socket's IPv4/port, for "no NAT"

    def check(self) -> str | None:
        """Why these parameters cannot be probed, or None."""
        # The probe never sends anything to an address a client could not use.
        problem = server_problem(self.server, self.secondary)
        if problem is not None:
            return problem
        if self.server == self.secondary:
            return "the primary and secondary addresses are the same"
        if len(self.prefix) != 4:
            return "the Teredo prefix is 32 bits"
        if not 1 <= self.rounds <= MAX_ROUNDS:
            return f"rounds must be between 1 and {MAX_ROUNDS}"
        if not MIN_TIMEOUT <= self.timeout <= MAX_TIMEOUT:
            return f"the timeout must be between {MIN_TIMEOUT} and {MAX_TIMEOUT} s"
        return None

    @property
    def secondary(self) -> int:
        return default_secondary(self.server) if self.server2 is None else self.server2


@dataclass(frozen=True, slots=True)
class ProbeResult:
    """What one server's probe found (all addresses dotted, times in seconds)."""

    server: str
    server2: str
    reachable: bool
    sent: int = 0  # RS sent in all phases
    rtts: tuple[float, ...] = ()  # primary round-trip times, in answer order
    primary_sent: int = 0
    late: int = 0  # answers to an earlier RS, after its timeout
    prefix: str | None = None  # e.g. "2001:0:c633:640a::/64"
    mtu: int | None = None
    mapping: Address | None = None  # our public IPv4:port as the primary address saw it
    secondary_mapping: Address | None = None
    nat: NatType = NatType.UNKNOWN
    behaviour: NatBehaviour | None = None  # ports and mapping as the two answers showed them
    cone: bool | None = None  # None: not tried
    secondary: bool | None = None  # the secondary address answered; None: not tried
    local: Address | None = None
    errors: tuple[str, ...] = ()
    drops: dict[str, int] = field(default_factory=dict)
    name: str = ""  # the server as the user gave it (a name, or the address)

    @property
    def loss(self) -> float:
        """Fraction of primary RS without an answer in time (0 when none was sent)."""
        if self.primary_sent == 0:
            return 0.0
        return 1.0 - len(self.rtts) / self.primary_sent

    @property
    def rtt_min(self) -> float | None:
        return min(self.rtts) if self.rtts else None

    @property
    def rtt_median(self) -> float | None:
        return statistics.median(self.rtts) if self.rtts else None

    @property
    def rtt_max(self) -> float | None:
        return max(self.rtts) if self.rtts else None

    @property
    def usable(self) -> bool:
        """A client could qualify with it: reachable. Behind a symmetric NAT too: our client
        keeps the primary server's mapping (RFC 6081 Symmetric NAT Support) unless told to
        refuse as RFC 4380 section 5.2.1 does (SymmetricNat refuse)."""
        return self.reachable

    def to_json(self) -> dict[str, object]:
        def ms(v: float | None) -> float | None:
            return None if v is None else round(v * 1000.0, 3)

        def sock(a: Address | None) -> str | None:
            return None if a is None else f"{a[0]}:{a[1]}"

        return {
            "name": self.name or self.server,
            "server": self.server,
            "server2": self.server2,
            "reachable": self.reachable,
            "usable": self.usable,
            "rs_sent": self.sent,
            "rtt_ms": {
                "min": ms(self.rtt_min),
                "median": ms(self.rtt_median),
                "max": ms(self.rtt_max),
                "samples": [ms(r) for r in self.rtts],
            },
            "loss": round(self.loss, 4),
            "late": self.late,
            "prefix": self.prefix,
            "mtu": self.mtu,
            "mapping": sock(self.mapping),
            "secondary_mapping": sock(self.secondary_mapping),
            "local": sock(self.local),
            "nat": str(self.nat),
            "nat_behaviour": None if self.behaviour is None else self.behaviour.as_dict(),
            "cone": self.cone,
            "secondary": self.secondary,
            "errors": list(self.errors),
            "drops": dict(self.drops),
        }


def unreachable_result(name: str, server: str, server2: str, error: str) -> ProbeResult:
    """The result of a candidate that could not be probed at all (no packet was sent)."""
    return ProbeResult(server=server, server2=server2, reachable=False, errors=(error,), name=name)


class ProbeMachine:
    """One server's probe. The driver calls `start`, then `receive` for every datagram of the
    server's socket and `handle_timer` at `next_deadline()`; each returns the datagrams to send.
    `done` ends it; `result()` says what was found (also before the end, e.g. at a hard limit).
    """

    def __init__(
        self, params: ProbeParams, random_bytes: Callable[[int], bytes], name: str = ""
    ) -> None:
        problem = params.check()
        if problem is not None:
            raise ValueError(problem)
        self.params = params
        self.name = name
        self._random = random_bytes
        self._server = params.server
        self._server2 = params.secondary
        self._primary_addr: Address = (int_to_ipv4(self._server), TEREDO_PORT)
        self._secondary_addr: Address = (int_to_ipv4(self._server2), TEREDO_PORT)
        self._router = server_link_local(self._server)
        # Section 5.2.1 RS bodies (no option, as Miredo sends them); only the nonce changes.
        self._rs_restricted = build_rs(LINK_LOCAL_RESTRICTED)
        self._rs_cone = build_rs(LINK_LOCAL_CONE)
        self.drops = DropCounters()
        self.phase = Phase.PRIMARY
        self._started = False
        self._tries = 0  # RS sent in the current phase
        self._nonce = b""
        self._sent_at = 0.0
        self._deadline: float | None = None
        self._old_nonces: list[bytes] = []
        self._sent = 0
        self._primary_sent = 0
        self._rtts: list[float] = []
        self._late = 0
        self._info: RaInfo | None = None
        self._mapping2: tuple[int, int] | None = None
        self._cone: bool | None = None
        self._secondary: bool | None = None
        self._errors: list[str] = []

    @property
    def done(self) -> bool:
        return self.phase is Phase.DONE

    def next_deadline(self) -> float | None:
        return self._deadline

    # --- driving ----------------------------------------------------------------------------

    def start(self, now: float) -> list[Datagram]:
        if self._started:
            return []
        self._started = True
        return [self._send(now)]

    def handle_timer(self, now: float) -> list[Datagram]:
        d = self._deadline
        if d is None or now < d or self.phase is Phase.DONE:
            return []
        # The pending RS got no valid answer in time.
        return self._next(now)

    def receive(self, data: bytes, source: Address, now: float) -> list[Datagram]:
        reason = self._receive(data, source, now)
        if isinstance(reason, DropReason):
            self.drops.count(reason)
            return []
        return reason

    def abort(self, reason: str) -> None:
        """Stop now (the driver's hard time limit); what was learnt so far stays."""
        if self.phase is not Phase.DONE:
            self._errors.append(f"stopped in the {self.phase} phase: {reason}")
            self._finish()

    # --- the phases -------------------------------------------------------------------------

    def _send(self, now: float) -> Datagram:
        if self._nonce:
            self._old_nonces.append(self._nonce)
            del self._old_nonces[:-_KEEP_NONCES]
        # Section 5.2.2: an unpredictable nonce per RS; it pairs an RA with its RS (and so
        # gives each round its own round-trip time).
        self._nonce = self._random(NONCE_LEN)
        self._tries += 1
        self._sent += 1
        self._sent_at = now
        self._deadline = now + self.params.timeout
        phase = self.phase
        if phase is Phase.PRIMARY:
            self._primary_sent += 1
        rs = self._rs_cone if phase is Phase.CONE else self._rs_restricted
        dest = self._secondary_addr if phase is Phase.SECONDARY else self._primary_addr
        return build_auth(self._nonce) + rs, dest

    def _next(self, now: float) -> list[Datagram]:
        """The pending RS is over (answered or timed out): next RS, next phase, or the end."""
        rounds = self.params.rounds
        phase = self.phase
        if phase is Phase.PRIMARY:
            if self._tries < rounds:
                return [self._send(now)]
            if self._info is None:
                return self._finish()  # unreachable: nothing to compare the rest with
            return self._enter(Phase.CONE, now)
        if phase is Phase.CONE:
            if self._cone is None and self._tries < rounds:
                return [self._send(now)]
            if self._cone is None:
                self._cone = False
            return self._enter(Phase.SECONDARY, now)
        if phase is Phase.SECONDARY:
            if self._secondary is None and self._tries < rounds:
                return [self._send(now)]
            if self._secondary is None:
                self._secondary = False
            return self._finish()
        return []

    def _enter(self, phase: Phase, now: float) -> list[Datagram]:
        self.phase = phase
        self._tries = 0
        return [self._send(now)]

    def _finish(self) -> list[Datagram]:
        self.phase = Phase.DONE
        self._deadline = None
        return []

    def _receive(self, data: bytes, source: Address, now: float) -> list[Datagram] | DropReason:
        host, port = source
        ipv4 = parse_ipv4(host)
        if ipv4 is None:
            return DropReason.BAD_UDP_SOURCE
        # Only the server's two addresses, port 3544, may talk to a probe socket (5.2.1).
        if port != TEREDO_PORT or ipv4 not in (self._server, self._server2):
            return DropReason.RA_NOT_FROM_SERVER
        pkt = parse_payload(data)
        if isinstance(pkt, DropReason):
            return pkt
        if self.phase is Phase.DONE:
            return DropReason.RA_UNEXPECTED
        phase = self.phase
        # Section 5.3.2: a cone RS is answered from the other address, a C=0 RS from the one
        # it was sent to.
        expected = self._server if phase is Phase.PRIMARY else self._server2
        got = check_ra(
            pkt,
            ipv4,
            expected_source=expected,
            nonce=self._nonce,
            prefix=self.params.prefix,
            server=self._server,
            destination=LINK_LOCAL_CONE if phase is Phase.CONE else LINK_LOCAL_RESTRICTED,
            router=self._router,
        )
        if isinstance(got, DropReason):
            nonce = pkt.nonce
            if nonce is not None and nonce in self._old_nonces:
                # An answer to an earlier RS that already counted as lost: late, not forged.
                self._late += 1
                return DropReason.RA_UNEXPECTED
            if (
                phase is Phase.CONE
                and got is DropReason.RA_NOT_FROM_SERVER
                and ipv4 == self._server
                and nonce == self._nonce
            ):
                # Not the other address, as section 5.3.2 requires: no cone answer, but say so.
                self._note("the cone RS was answered from the primary address (5.3.2)")
            return got
        if phase is Phase.PRIMARY:
            self._rtts.append(now - self._sent_at)
            first = self._info
            if first is None:
                self._info = got
            elif got.mapping != first.mapping:
                # One socket, one mapping: a change within seconds is a NAT rebinding.
                self._note("the mapping changed between rounds")
            elif got.prefix != first.prefix or got.mtu != first.mtu:
                self._note("the RA changed between rounds")
        elif phase is Phase.CONE:
            self._cone = True
        else:
            self._secondary = True
            self._mapping2 = got.mapping
        return self._next(now)

    def _note(self, error: str) -> None:
        if error not in self._errors and len(self._errors) < 8:
            self._errors.append(error)

    # --- the verdict ------------------------------------------------------------------------

    def nat_type(self) -> NatType:
        """RFC 4380 section 5.2.1 (and RFC 3489's terms, TEREDO-SPEC 6.1):

        another mapping at the secondary address -> symmetric; the mapping is our own socket
        address -> none; the cone RS answered from the other address -> cone; the secondary
        address saw the same mapping -> restricted; else unknown.
        """
        info = self._info
        if info is None:
            return NatType.UNKNOWN
        if self._mapping2 is not None and self._mapping2 != info.mapping:
            return NatType.SYMMETRIC
        if self.params.local_address is not None and info.mapping == self.params.local_address:
            return NatType.NONE
        if self._cone:
            return NatType.CONE
        if self._secondary:
            return NatType.RESTRICTED
        return NatType.UNKNOWN

    def result(self) -> ProbeResult:
        info = self._info
        errors = list(self._errors)
        if info is None and self._primary_sent:
            errors.insert(0, f"no answer to {self._primary_sent} RS")
        local = self.params.local_address
        return ProbeResult(
            server=self._primary_addr[0],
            server2=self._secondary_addr[0],
            reachable=info is not None,
            sent=self._sent,
            rtts=tuple(self._rtts),
            primary_sent=self._primary_sent,
            late=self._late,
            prefix=None
            if info is None
            else f"{ipaddress.IPv6Address(info.prefix[:8] + bytes(8))}/64",
            mtu=None if info is None else info.mtu,
            mapping=None if info is None else _sockaddr(info.mapping),
            secondary_mapping=None if self._mapping2 is None else _sockaddr(self._mapping2),
            nat=self.nat_type(),
            behaviour=None
            if info is None
            else classify(info.mapping, self._mapping2, self.params.local_address),
            cone=self._cone,
            secondary=self._secondary,
            local=None if local is None else _sockaddr(local),
            errors=tuple(errors),
            drops=self.drops.snapshot(),
            name=self.name,
        )


def _sockaddr(mapping: tuple[int, int]) -> Address:
    return int_to_ipv4(mapping[0]), mapping[1]


def _format64(prefix: bytes) -> str:
    return f"{ipaddress.IPv6Address(prefix[:8] + bytes(8))}/64"


# --- the choice --------------------------------------------------------------------------------


def choose(results: Sequence[ProbeResult]) -> tuple[ProbeResult | None, str]:
    """The best server and why: among usable (reachable) ones, those that do not see a
    symmetric NAT first (RFC 4380 5.2.1 peers can reach the client there), then the lowest
    median RTT, ties broken by loss, then by command-line order."""
    usable = [(i, r) for i, r in enumerate(results) if r.usable]
    if not usable:
        if not results:
            return None, "no server probed"
        return None, "no server answered"
    _i, best = min(
        usable,
        key=lambda ir: (
            ir[1].nat is NatType.SYMMETRIC,
            ir[1].rtt_median or 0.0,
            ir[1].loss,
            ir[0],
        ),
    )
    median = best.rtt_median or 0.0
    why = [f"median RTT {median * 1000.0:.1f} ms", f"loss {best.loss:.0%}"]
    others = len(usable) - 1
    if others:
        why.append(f"lowest of {len(usable)} usable")
    else:
        why.append("the only usable server")
    skipped = len(results) - len(usable)
    if skipped:
        why.append(f"{skipped} unusable")
    if best.nat is NatType.SYMMETRIC:
        # Said in the choice too: relays work from behind it, many peers do not (RFC 6081).
        why.append("symmetric NAT: our client qualifies with its primary mapping")
    return best, ", ".join(why)
