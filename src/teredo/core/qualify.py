"""A Teredo client's qualification and maintenance (RFC 4380 sections 5.2.1, 5.2.2, 5.2.5, RFC
5991, RFC 6081 section 5.1.1), sans I/O: the configuration, the state and events of a client's
address, and the RA checks shared with `teredo probe` (core/probe.py).

`Qualification` is the part of `ClientMachine` (core/client.py) that runs the control timer;
the client's state is a function of its phase (`Qualification.state`), never stored apart.

Life cycle (section 5.2.1, 5.2.5):

    OFFLINE --start--> QUALIFYING: RS to the primary (T = 4 s, N = 3)
        valid RA, mapping M1 == local address -> QUALIFIED (NatType.NONE)
        valid RA otherwise: RS to the secondary address (T = 4 s, N = 3)
            RA with M2 == M1 -> QUALIFIED (RESTRICTED)
            RA with M2 != M1 -> SymmetricNat event, then QUALIFIED with M1 (SYMMETRIC, RFC 6081
                                Symmetric NAT Support); with refuse_symmetric (RFC 4380
                                strict) OFFLINE instead, retry after the back-off
            no answer        -> QUALIFIED with the primary mapping (NatType.UNKNOWN)
        no RA after 3 RS -> Offline + ResolveServer events, retry after the back-off
    QUALIFIED: refresh RS when the server was silent for the randomized interval
        changed mapping -> AddressChanged (peers forgotten); 3 RS unanswered -> Offline +
        ResolveServer, OFFLINE, retry after the back-off (4 s doubling up to 100 s)
"""

from __future__ import annotations

import enum
import hmac
from collections.abc import Callable
from dataclasses import dataclass, replace
from socket import inet_ntoa
from typing import TYPE_CHECKING, Protocol

from teredo.core.addr import (
    LINK_LOCAL_RESTRICTED,
    TEREDO_PORT,
    TEREDO_PREFIX,
    Address,
    int_to_ipv4,
    is_global_ipv4,
    make_flags,
    pack_address,
)
from teredo.core.counters import DropReason
from teredo.core.ipv6 import IPV6_MIN_MTU, build_rs, parse_ra
from teredo.core.natbehaviour import NatBehaviour, classify
from teredo.core.wire import TeredoPacket, build_auth

# Section 5.2.1: RS timer T and repetitions N (the RFC 2461 values).
RS_TIMEOUT = 4.0
RS_TRIES = 3
# Section 5.2.5 sets no count for refresh RS (Miredo: 3, then offline). Ours tries 6 (18 s,
# still under one refresh interval) before retiring a working address: each RS round trip
# survives 30 % loss each way with probability 0.49, so 3 in a row fail 13 % of the time (the
# address was withdrawn about once a minute there) and 6 fail 1.8 % of the time. The cost: a
# server that really is gone is noticed (and another one tried) later: 6 s later with the
# shorter wait of the extra RS below.
REFRESH_RS_TRIES = 6
# The RS beyond the first RS_TRIES of a refresh wait 2 s each, not T = 4 s: section 5.2.1
# gives T = 4 s as the RFC 2461 *default*, and the 3 extra RS are there for random loss, which
# the number of tries beats whatever their spacing (each RS carries the refresh's one nonce, so
# an RA that comes late still counts). A lost server is noticed after 4 + 4 + 4 + 2 + 2 + 2 =
# 18 s (24 s with 4 s each; Miredo: 12 s with 3 RS). RS go at 0, 4, 8, 12, 14 and 16 s: a
# server outage that ends before the last one (a restart) costs nothing (Miredo's: before 8 s).
REFRESH_RS_EXTRA_TIMEOUT = 2.0
#: Seconds from the first unanswered refresh RS to the address being retired.
REFRESH_GIVE_UP = RS_TRIES * RS_TIMEOUT + (REFRESH_RS_TRIES - RS_TRIES) * REFRESH_RS_EXTRA_TIMEOUT
# Section 5.2.5 / RFC 6081 5.1.1: the randomized interval, 75-100 % of the refresh interval.
REFRESH_LOW = 0.75
# Back-off between qualification attempts: Miredo waits a fixed 100 s; we double from 4 s.
RESTART_FIRST = 4.0
RESTART_MAX = 100.0

_SERVER_PORT = TEREDO_PORT


# --- public types ------------------------------------------------------------------------------


class NatType(enum.StrEnum):
    UNKNOWN = "unknown"  # not qualified yet, or the secondary address never answered
    NONE = "none"  # mapping == our local address (ClientParams.local_address)
    CONE = "cone"  # not used for sending (RFC 5991: C=0), kept for reports
    RESTRICTED = "restricted"  # same mapping seen by both server addresses
    SYMMETRIC = "symmetric"  # the secondary address saw another mapping


class ClientState(enum.StrEnum):
    OFFLINE = "offline"
    QUALIFYING = "qualifying"
    QUALIFIED = "qualified"


@dataclass(frozen=True, slots=True)
class ClientParams:
    server: int  # primary server IPv4 (int)
    server2: int | None = None  # secondary; None = server + 1
    prefix: bytes = TEREDO_PREFIX
    refresh_interval: float = 30.0  # RFC 4380 5.2.5 / RFC 6081: default 30 s
    local_address: tuple[int, int] | None = None  # socket's local IPv4/port when known
    peer_capacity: int = 65536
    local_discovery: bool = True
    # RFC 4380 section 5.2.1 strictly: no address behind a symmetric NAT. Off by default: the
    # primary server's mapping serves relays and cone peers (RFC 6081, Symmetric NAT Support).
    refuse_symmetric: bool = False


class ClientTransmit(Protocol):
    def send_udp(self, payload: bytes, destination: Address) -> None: ...

    def send_discovery(self, payload: bytes) -> None:
        """To 224.0.0.253:3544 with IPv4 TTL 1 (section 5.2.8)."""

    def write_tun(self, packet: bytes) -> None:
        """To the local IPv6 stack."""


@dataclass(frozen=True, slots=True)
class Qualified:
    address: bytes
    link_local: bytes
    mtu: int
    nat: NatType
    mapping: Address


@dataclass(frozen=True, slots=True)
class AddressChanged:
    old: bytes
    new: bytes
    link_local: bytes
    mtu: int
    nat: NatType
    mapping: Address


@dataclass(frozen=True, slots=True)
class MtuChanged:
    mtu: int


@dataclass(frozen=True, slots=True)
class Offline:
    reason: str


@dataclass(frozen=True, slots=True)
class SymmetricNat:
    primary_mapping: Address
    secondary_mapping: Address
    qualified: bool = True  # False: refused (ClientParams.refuse_symmetric)
    behaviour: str = "symmetric"  # NatBehaviour.describe()


@dataclass(frozen=True, slots=True)
class ResolveServer:
    pass


ClientEvent = Qualified | AddressChanged | MtuChanged | Offline | SymmetricNat | ResolveServer


class _Phase(enum.Enum):
    """What the control timer is for."""

    IDLE = 0  # not started
    WAIT = 1  # OFFLINE, next qualification attempt at `_deadline`
    PRIMARY = 2  # RS to the primary address pending
    SECONDARY = 3  # RS to the secondary address pending
    MAINTAIN = 4  # QUALIFIED, next refresh check at `_deadline`
    REFRESH = 5  # QUALIFIED, refresh RS pending


# The client's state, a function of the phase (never stored apart, so the two cannot disagree).
_STATE = {
    _Phase.IDLE: ClientState.OFFLINE,
    _Phase.WAIT: ClientState.OFFLINE,
    _Phase.PRIMARY: ClientState.QUALIFYING,
    _Phase.SECONDARY: ClientState.QUALIFYING,
    _Phase.MAINTAIN: ClientState.QUALIFIED,
    _Phase.REFRESH: ClientState.QUALIFIED,
}


def server_problem(server: int, server2: int) -> str | None:
    """Why a client cannot use these server addresses, or None: both must be global unicast
    (section 5.2.4; Miredo refuses a server that is not global, its clients' addresses would
    embed it). Shared by the client and `teredo probe` (core/probe.py)."""
    for name, ipv4 in (("primary", server), ("secondary", server2)):
        if not 0 <= ipv4 <= 0xFFFFFFFF or not is_global_ipv4(ipv4):
            return f"the {name} address {int_to_ipv4(ipv4 & 0xFFFFFFFF)} is not global unicast"
    return None


def default_secondary(server: int) -> int:
    """The secondary server address when none is configured: primary + 1 (TEREDO-SPEC 3.1;
    Windows and Miredo assume it, RFC 4380 section 5.2.1 needs a second address)."""
    return (server + 1) & 0xFFFFFFFF


@dataclass(frozen=True, slots=True)
class RaInfo:
    """What a valid RA teaches a client (RFC 4380 section 5.2.1)."""

    mapping: tuple[int, int]  # (IPv4, port) from the Origin Indication
    mtu: int  # the MTU option, else 1280
    prefix: bytes  # the 16-byte PIO prefix (Teredo prefix + primary server IPv4 + zeros)
    source: bytes  # the RA's IPv6 source (the server's link-local address, section 5.3.2)


def check_ra(
    pkt: TeredoPacket,
    source_ipv4: int,
    *,
    expected_source: int,
    nonce: bytes,
    prefix: bytes,
    server: int,
    destination: bytes = LINK_LOCAL_RESTRICTED,
    router: bytes | None = None,
) -> RaInfo | DropReason:
    """Section 5.2.1 RA checks (TEREDO-SPEC 2.3), shared by the client and `teredo probe`.

    `expected_source` is the server address the RS went to (or, for a cone RS, the other one:
    section 5.3.2), `nonce` the RS's (section 5.2.2), `destination` the RS's IPv6 source,
    `server` the primary server IPv4 named by the advertised prefix; `router`, when given, is
    the IPv6 source the RA must come from (the server's link-local address, section 5.3.2).
    """
    if source_ipv4 != expected_source:
        return DropReason.RA_NOT_FROM_SERVER
    got = pkt.nonce
    if got is None:
        return DropReason.RA_WITHOUT_AUTH
    if not hmac.compare_digest(got, nonce):
        return DropReason.RA_BAD_NONCE
    if pkt.confirmation != 0:
        return DropReason.RA_BAD_CONFIRMATION
    origin = pkt.origin
    if origin is None:
        return DropReason.RA_WITHOUT_ORIGIN
    ra = parse_ra(pkt.ipv6)
    if isinstance(ra, DropReason):
        return ra
    if ra.dst != destination:
        return DropReason.RA_WRONG_DESTINATION
    if router is not None and ra.src != router:
        return DropReason.RA_WRONG_SOURCE
    # The advertised /64 is the Teredo prefix + the *primary* server IPv4 (5.3.2), also
    # when the answer comes from the secondary address.
    if ra.prefix[:4] != prefix or ra.prefix[4:8] != server.to_bytes(4, "big"):
        return DropReason.RA_WRONG_PREFIX
    # Section 4: a global Teredo address embeds a global IPv4 mapping.
    if not is_global_ipv4(origin[0]):
        return DropReason.NOT_GLOBAL_IPV4
    mtu = ra.mtu if ra.mtu is not None else IPV6_MIN_MTU
    return RaInfo(origin, mtu, ra.prefix, ra.src)


class Qualification:
    """Qualification and maintenance of a client's address, a part of `ClientMachine`: the
    control timer (RS, refresh, restart), the RA checks and the address they give."""

    # Owned by ClientMachine, used here.
    params: ClientParams
    out: ClientTransmit
    _random: Callable[[int], bytes]

    if TYPE_CHECKING:
        # The other parts of ClientMachine (core/client.py, core/procedure.py).
        def _emit(self, event: ClientEvent) -> None: ...
        def _retire_address(self) -> None: ...
        def _clear_probes(self, reason: DropReason) -> None: ...
        def _send_discovery_bubble(self, now: float) -> None: ...
        def _forget_peers(self) -> None: ...
        def _start_prediction(self) -> None: ...

    def _init_qualification(self, params: ClientParams) -> None:
        self._prefix = params.prefix
        self.address: bytes | None = None
        self.nat_type = NatType.UNKNOWN
        self.nat_behaviour: NatBehaviour | None = None  # of the last qualification
        self.mtu = IPV6_MIN_MTU
        self._set_servers(params.server, params.server2)
        self._local = params.local_address
        self._phase = _Phase.IDLE
        self._deadline: float | None = None  # control timer (RS, refresh, restart)
        self._tries = 0
        self._nonce = b""
        self._backoff = RESTART_FIRST
        self._mapping: tuple[int, int] | None = None  # (IPv4, port) of the address in use
        self._mapping1: tuple[int, int] | None = None  # primary answer during qualification
        self._mtu1 = IPV6_MIN_MTU
        self._flag_mapping: tuple[int, int, int] | None = None  # (server, ip, port) of flags
        self._flags = 0
        self._last_contact = float("-inf")
        self._interval = params.refresh_interval
        self._refresh_contact = float("-inf")  # contact time when the refresh RS went out
        self._rs_packet = build_rs(LINK_LOCAL_RESTRICTED)

    @property
    def state(self) -> ClientState:
        return _STATE[self._phase]

    # --- configuration --------------------------------------------------------------------------

    def _set_servers(self, server: int, server2: int | None) -> None:
        if not 0 <= server <= 0xFFFFFFFF:
            raise ValueError("the server address is an IPv4 address")
        if server2 is None:
            server2 = default_secondary(server)
        problem = server_problem(server, server2)
        if problem is not None:
            raise ValueError(problem)
        self._server = server
        self._server2 = server2
        self._server_addr: Address = (int_to_ipv4(server), _SERVER_PORT)
        self._server2_addr: Address = (int_to_ipv4(server2), _SERVER_PORT)

    def set_server(self, server: int, server2: int | None, now: float) -> None:
        """New server addresses (the daemon re-resolved the name after `ResolveServer`).

        Same addresses: nothing changes (a pending retry keeps its date). Other addresses while
        qualified or qualifying: the address embeds the server, so qualification starts again
        at once; while waiting to retry, the next attempt uses them.
        """
        old = (self._server, self._server2)
        self._set_servers(server, server2)
        if (self._server, self._server2) == old:
            return
        if self.state is ClientState.QUALIFIED:
            self._go_offline("the server address changed", now, retry_at=now, resolve=False)
        elif self.state is ClientState.QUALIFYING:
            self._begin_qualification(now)

    def set_refresh_interval(self, interval: float, now: float) -> None:
        """A new refresh interval (SIGHUP), applied without a new qualification.

        The address stays (the random flags belong to the mapping, not to the interval); while
        maintaining, the next refresh is drawn again in the new range from the last contact
        (RFC 4380 section 5.2.5, RFC 6081 section 5.1.1), so a shorter interval acts at once.
        """
        if interval <= 0:
            raise ValueError("the refresh interval must be > 0")
        if interval == self.params.refresh_interval:
            return
        self.params = replace(self.params, refresh_interval=interval)
        if self._phase is _Phase.MAINTAIN:
            self._schedule_refresh(self._last_contact)
            if self._deadline is not None and self._deadline < now:
                self._deadline = now

    def requalify(self, reason: str, now: float, local_address: tuple[int, int] | None) -> None:
        """Qualify again at once: the network changed (a new default route or local IPv4) or
        the interface was created again (issue 13, issue 14).

        The mapping may have changed, so the address is retired first (`Offline(reason)` when
        there was one) and an RS goes out now, with the back-off reset: waiting for the next
        refresh would leave a dead address in place for up to 30 s (Windows re-qualifies at
        once too). `local_address` is the socket's new local IPv4/port (NatType.NONE test).
        The random flag bits belong to (server, mapping): the same mapping gives the same address.
        """
        self._local = local_address
        self._backoff = RESTART_FIRST
        if self.state is ClientState.QUALIFIED:
            self._retire_address()
            self._phase = _Phase.WAIT  # offline until the RS below goes out
            self.nat_type = NatType.UNKNOWN
            self._emit(Offline(reason))
        self._begin_qualification(now)

    def refresh_now(self, now: float) -> None:
        """Check the mapping at once, keeping the address meanwhile (a new default route: the
        way out, so the NAT, may have changed, or not: a DHCP renewal re-adds the same route).

        Qualified: a refresh RS now (section 5.2.5); the same mapping changes nothing, another
        one gives AddressChanged, no answer the usual loss of contact. Otherwise: qualify now.
        """
        if self.state is ClientState.QUALIFIED:
            if self._phase is not _Phase.REFRESH:
                self._send_refresh(now)
            return
        self._backoff = RESTART_FIRST
        self._begin_qualification(now)

    def network_down(self, reason: str, now: float) -> None:
        """No route to the server any more (the uplink is gone): offline at once, cleanly.

        The address is retired (`Offline(reason)`) instead of waiting for three refresh RS to
        go unanswered; the daemon calls `requalify` when a route comes back. Until then one
        attempt per RESTART_MAX, in case the news of the return is missed.
        """
        self._backoff = RESTART_FIRST
        self._clear_probes(DropReason.NOT_QUALIFIED)
        self._go_offline(reason, now, retry_at=now + RESTART_MAX, resolve=False)

    def _control_timer(self, now: float) -> None:
        phase = self._phase
        if phase is _Phase.WAIT:
            self._begin_qualification(now)
        elif phase in (_Phase.PRIMARY, _Phase.SECONDARY, _Phase.REFRESH):
            if self._tries < (REFRESH_RS_TRIES if phase is _Phase.REFRESH else RS_TRIES):
                self._send_rs(now)
            elif phase is _Phase.PRIMARY:
                self._go_offline(
                    f"no answer from the server {self._server_addr[0]} after {RS_TRIES} RS",
                    now,
                )
            elif phase is _Phase.SECONDARY:
                # No answer from the secondary address (RFC 4380 has no rule; Miredo never
                # asks it): qualify with the primary mapping, NAT type unknown.
                if self._mapping1 is not None:
                    self.nat_behaviour = classify(self._mapping1, None, self._local)
                    self._qualify(self._mapping1, self._mtu1, NatType.UNKNOWN, now)
            elif self._last_contact > self._refresh_contact:
                # No RA, but the server did send us something: the path is alive. Check again
                # after a new interval rather than tearing the address down.
                self._schedule_refresh(self._last_contact)
            else:
                self._go_offline(
                    f"contact with the server {self._server_addr[0]} lost "
                    f"({REFRESH_RS_TRIES} refresh RS unanswered)",
                    now,
                )
        elif phase is _Phase.MAINTAIN:
            # Section 5.2.5: an RS only when nothing came from the server in the interval.
            if now >= self._last_contact + self._interval:
                self._send_refresh(now)
            else:
                self._deadline = self._last_contact + self._interval

    # --- qualification (section 5.2.1) ----------------------------------------------------------

    def _uniform(self, low: float, high: float) -> float:
        return low + (high - low) * int.from_bytes(self._random(4), "big") / 4294967296.0

    def _begin_qualification(self, now: float) -> None:
        if self.state is ClientState.QUALIFIED:
            self._retire_address()
            self._emit(Offline("qualification restarted"))
        self._phase = _Phase.PRIMARY
        self._mapping1 = None
        self._tries = 0
        self._nonce = self._random(8)  # section 5.2.2: unpredictable, one per attempt
        self._send_rs(now)

    def _send_rs(self, now: float) -> None:
        # Section 5.2.1: RS from fe80::ffff:ffff:ffff (C=0, RFC 5991) to ff02::2, with an
        # Authentication header carrying the nonce; repeated after T = 4 s, N = 3 times.
        dest = self._server2_addr if self._phase is _Phase.SECONDARY else self._server_addr
        self.out.send_udp(build_auth(self._nonce) + self._rs_packet, dest)
        self._tries += 1
        extra = self._phase is _Phase.REFRESH and self._tries > RS_TRIES
        self._deadline = now + (REFRESH_RS_EXTRA_TIMEOUT if extra else RS_TIMEOUT)

    def _send_refresh(self, now: float) -> None:
        self._phase = _Phase.REFRESH
        self._tries = 0
        self._nonce = self._random(8)
        self._refresh_contact = self._last_contact
        self._send_rs(now)

    def _schedule_refresh(self, contact: float) -> None:
        # RFC 6081 5.1.1 / RFC 4380 5.2: a new randomized interval, 75-100 % of the interval.
        base = self.params.refresh_interval
        self._interval = self._uniform(REFRESH_LOW * base, base)
        self._phase = _Phase.MAINTAIN
        self._deadline = contact + self._interval

    def _restart_delay(self) -> float:
        delay = self._backoff
        self._backoff = min(self._backoff * 2, RESTART_MAX)
        return delay

    def _go_offline(
        self, reason: str, now: float, *, retry_at: float | None = None, resolve: bool = True
    ) -> None:
        was_qualified = self.state is ClientState.QUALIFIED
        if was_qualified:
            self._retire_address()
        self.nat_type = NatType.UNKNOWN
        self._phase = _Phase.WAIT
        self._deadline = now + self._restart_delay() if retry_at is None else retry_at
        self._emit(Offline(reason))
        if resolve:
            self._emit(ResolveServer())

    def _receive_ra(self, pkt: TeredoPacket, source_ipv4: int, now: float) -> DropReason | None:
        """Section 5.2.1 RA checks (TEREDO-SPEC 2.3), in qualification and maintenance."""
        phase = self._phase
        if phase not in (_Phase.PRIMARY, _Phase.SECONDARY, _Phase.REFRESH):
            return DropReason.RA_UNEXPECTED
        expected = self._server2 if phase is _Phase.SECONDARY else self._server
        checked = check_ra(
            pkt,
            source_ipv4,
            expected_source=expected,
            nonce=self._nonce,
            prefix=self._prefix,
            server=self._server,
        )
        if isinstance(checked, DropReason):
            return checked
        origin = checked.mapping
        mtu = checked.mtu
        self._last_contact = now
        if phase is _Phase.PRIMARY:
            if self._local is not None and origin == self._local:
                self.nat_behaviour = classify(origin, origin, self._local)
                self._qualify(origin, mtu, NatType.NONE, now)
                return None
            # Section 5.2.1: ask the secondary address whether the NAT keeps the mapping.
            self._mapping1 = origin
            self._mtu1 = mtu
            self._phase = _Phase.SECONDARY
            self._tries = 0
            self._nonce = self._random(8)
            self._send_rs(now)
        elif phase is _Phase.SECONDARY:
            first = self._mapping1
            if first is None:
                first = origin
            behaviour = self.nat_behaviour = classify(first, origin, self._local)
            if origin == first:
                self._qualify(first, self._mtu1, NatType.RESTRICTED, now)
            elif self.params.refuse_symmetric:
                # RFC 4380 section 5.2.1: no address behind a symmetric NAT; report, stay
                # offline and try again after the back-off (the NAT may change).
                self.nat_type = NatType.SYMMETRIC
                self._phase = _Phase.WAIT
                self._deadline = now + self._restart_delay()
                self._emit(
                    SymmetricNat(sockaddr(first), sockaddr(origin), False, behaviour.describe())
                )
            else:
                # RFC 6081 Symmetric NAT Support: keep the primary server's mapping. The server
                # and relays answer at the mapping our packets came from (the relay re-maps a
                # port-symmetric peer, as Miredo's does), so native IPv6 works both ways.
                self._emit(
                    SymmetricNat(sockaddr(first), sockaddr(origin), True, behaviour.describe())
                )
                self._qualify(first, self._mtu1, NatType.SYMMETRIC, now)
        else:
            self._maintenance_ra(origin, mtu, now)
        return None

    def _qualify(self, mapping: tuple[int, int], mtu: int, nat: NatType, now: float) -> None:
        old = self.address
        address = self._make_address(mapping)
        self.address = address
        self._mapping = mapping
        self.mtu = mtu
        self.nat_type = nat
        self._backoff = RESTART_FIRST
        self._last_contact = now
        self._schedule_refresh(now)
        if old is not None and old != address:
            self._emit(
                AddressChanged(old, address, LINK_LOCAL_RESTRICTED, mtu, nat, sockaddr(mapping))
            )
        else:
            self._emit(Qualified(address, LINK_LOCAL_RESTRICTED, mtu, nat, sockaddr(mapping)))
        self._start_prediction()  # RFC 6081 port prediction behind a sequential NAT
        if self.params.local_discovery:
            self._send_discovery_bubble(now)

    def _make_address(self, mapping: tuple[int, int]) -> bytes:
        # RFC 5991: 12 random flag bits, drawn once per mapping (and server) and kept while
        # it stays the same, so a refresh or a restart keeps the address.
        key = (self._server, mapping[0], mapping[1])
        if self._flag_mapping != key:
            self._flags = make_flags(int.from_bytes(self._random(2), "big") & 0xFFF)
            self._flag_mapping = key
        return pack_address(self._prefix, self._server, self._flags, mapping[1], mapping[0])

    def _maintenance_ra(self, mapping: tuple[int, int], mtu: int, now: float) -> None:
        """Section 5.2.5: a valid refresh RA; a new mapping replaces the address."""
        self._schedule_refresh(now)
        old = self.address
        if old is not None and mapping != self._mapping:
            self._clear_probes(DropReason.NOT_QUALIFIED)
            self._forget_peers()  # peers knew the old address (Miredo empties its list too)
            address = self._make_address(mapping)
            self.address = address
            self._mapping = mapping
            self.mtu = mtu
            self._emit(
                AddressChanged(
                    old, address, LINK_LOCAL_RESTRICTED, mtu, self.nat_type, sockaddr(mapping)
                )
            )
        elif mtu != self.mtu:
            self.mtu = mtu
            self._emit(MtuChanged(mtu))


def sockaddr(mapping: tuple[int, int]) -> Address:
    """("a.b.c.d", port) of an (IPv4 int, port) mapping."""
    return inet_ntoa(mapping[0].to_bytes(4, "big")), mapping[1]
