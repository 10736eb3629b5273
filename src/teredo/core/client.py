"""The Teredo client (RFC 4380 section 5.2, RFC 5991, RFC 6081 section 5.1.1), sans I/O.

One `ClientMachine` per Teredo interface. The driver feeds it datagrams from the service port
(`receive_udp`), from the discovery group (`receive_discovery`), packets from the TUN
(`receive_tun`) and timer wake-ups (`handle_timer` at `next_deadline()`); data goes out through
`ClientTransmit`, control happenings come out of `next_event()`. Time (`now`) and randomness
(`random_bytes`) are parameters; docs/client.md describes the behaviour and its choices.

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
import heapq
import hmac
import ipaddress
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, replace
from socket import inet_aton, inet_ntoa
from typing import Protocol

from teredo.core.addr import (
    ALL_NODES,
    LINK_LOCAL_RESTRICTED,
    TEREDO_PORT,
    TEREDO_PREFIX,
    Address,
    embedded_mapping,
    embedded_server,
    int_to_ipv4,
    is_global_ipv4,
    make_flags,
    pack_address,
)
from teredo.core.counters import DropCounters, DropReason
from teredo.core.hairpin import HairpinRecords, alternates
from teredo.core.ipv6 import (
    ICMPV6_ECHO_REPLY,
    IPV6_HEADER_LEN,
    IPV6_MIN_MTU,
    ND_ROUTER_ADVERT,
    NH_ICMPV6,
    NH_NONE,
    UNREACH_ADDRESS,
    build_bubble,
    build_echo,
    build_rs,
    build_unreachable,
    parse_echo,
    parse_ra,
)
from teredo.core.natbehaviour import NatBehaviour, classify
from teredo.core.peers import PeerTable
from teredo.core.ratelimit import BucketTable, TokenBucket
from teredo.core.symmetric import PortAdoption
from teredo.core.wire import AlternateAddressTrailer, TeredoPacket, build_auth, parse_payload

# Section 5.2.1: RS timer T and repetitions N (the RFC 2461 values).
RS_TIMEOUT = 4.0
RS_TRIES = 3
# Section 5.2.5 / RFC 6081 5.1.1: the randomized interval, 75-100 % of the refresh interval.
REFRESH_LOW = 0.75
# Back-off between qualification attempts: Miredo waits a fixed 100 s; we double from 4 s.
RESTART_FIRST = 4.0
RESTART_MAX = 100.0
# Sections 5.2.4 and 5.2.9: bubbles are repeated 2 s apart, up to 3 repeats.
PROBE_INTERVAL = 2.0
PROBE_SENDS = 4
# The ping test (section 5.2.9, 4 pings as Miredo) backs off: the waits after each ping, the
# last one before giving up (pings at 0, 3, 7, 15 s, failure declared at 23 s). Why not 2 s:
# - a relay bubbles an unknown client only when an echo reply reaches it, and Miredo's
#   relays refuse a new bubble within 2 s of the last, counted in whole seconds
#   (`now - last_tx <= 2`): a ping 2 s after the previous one gives the relay no new chance,
#   so under loss our 4 tries were 2 chances (issue 12, 30 % loss: 1 first TCP connection in
#   3 never got through);
# - these are the times at which Miredo's client, whose pings are driven by the packets it
#   must send, pings under a TCP SYN's retransmissions (1, 3, 7, 15 s; RFC 6298);
# - the error sent when the test fails aborts a TCP connect at once (an ICMPv6 error in
#   SYN-SENT), so a test given up early kills a connection TCP's own retries would have made.
PING_WAITS = (3.0, 4.0, 8.0, 8.0)
# Section 5.2.8: discovery bubbles every uniform(200, 300) s.
DISCOVERY_MIN = 200.0
DISCOVERY_MAX = 300.0
# Miredo's ping test: hop limit 128 (1.0.5 NEWS: some hosts were unreachable with less).
PING_HOP_LIMIT = 128
PING_NONCE_LEN = 16  # section 5.2.9: at least 64 bits; 128 keeps the echo at 24 bytes
# Errors to local applications: 10 per second (Miredo).
UNREACH_RATE = 10.0
# Ping tests started by unsolicited packets (case 6): CVE-2006-6266 asks for a global limit.
UNSOLICITED_PING_RATE = 10.0
UNSOLICITED_PING_BURST = 20.0
# Direct bubbles answering origin indications: per sender, 4 within a 2 s burst.
ORIGIN_BUBBLE_RATE = 0.5
ORIGIN_BUBBLE_BURST = 4.0
# ... and per IPv4 address whatever the port (issue 14): a spoofer that varies the port must
# not turn us into a reflector toward one IPv4 (RFC 4380 5.2.6 bounds bubbles per peer; a
# victim's address is one peer however many ports are claimed). Several clients behind one
# NAT may contact us at once, hence more than one peer's share.
ORIGIN_BUBBLE_IPV4_RATE = 1.0
ORIGIN_BUBBLE_IPV4_BURST = 8.0
# A wake-up this late after the planned one means the host was suspended. Generous, so that a
# daemon stalled a few seconds (a slow name resolution) is not taken for a suspend; a shorter
# sleep needs nothing special anyway: peers are then still valid or expire by their dates.
JUMP_SLACK = 30.0
MAX_EVENTS = 64
# Entries of each data-path cache before it is emptied (memory stays bounded).
_CACHE_LIMIT = 4096
# First source bytes the receive fast path leaves to the full checks: multicast (ff), link-local
# (fe80::/10, with the rest of fe), and 0 (::, ::1 and other oddities).
_SLOW_SOURCE_BYTE = frozenset((0x00, 0xFE, 0xFF))

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


class ProcedureKind(enum.Enum):
    """How a peer is reached before it is trusted (section 5.2.4 cases 2-5)."""

    BUBBLE = 0  # Teredo peer: direct + indirect bubble (case 5)
    LOCAL = 1  # local peer: unicast bubble to its local address + discovery bubble (case 3)
    PING = 2  # native peer: Echo Request through our server (case 2, section 5.2.9)


class _Procedure:
    """A bubble or ping procedure in progress for one peer (sections 5.2.4, 5.2.9); not to be
    confused with core/probe.py's ProbeMachine, the `teredo probe` qualification check."""

    __slots__ = ("deadline", "kind", "sends")

    def __init__(self, kind: ProcedureKind, deadline: float) -> None:
        self.kind = kind
        self.sends = 0
        self.deadline = deadline


_BUBBLE = ProcedureKind.BUBBLE
_LOCAL = ProcedureKind.LOCAL
_PING = ProcedureKind.PING


def _is_multicast(addr16: bytes) -> bool:
    return addr16[0] == 0xFF


def _is_link_local(addr16: bytes) -> bool:
    return addr16[0] == 0xFE and addr16[1] & 0xC0 == 0x80


def _bad_source(addr16: bytes) -> bool:
    """Multicast, unspecified or loopback: never a packet's source (RFC 4291 2.5.2, 2.7)."""
    if addr16[0] == 0xFF:
        return True
    return addr16[0] == 0 and addr16[:15] == bytes(15) and addr16[15] in (0, 1)


def _ipv4(host: str) -> int | None:
    try:
        return int.from_bytes(inet_aton(host), "big")
    except (OSError, TypeError, ValueError):
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


class ClientMachine:
    """Qualification, maintenance, peers, sending cases and reception checks of a client."""

    def __init__(
        self,
        params: ClientParams,
        out: ClientTransmit,
        random_bytes: Callable[[int], bytes],
    ) -> None:
        if len(params.prefix) != 4:
            raise ValueError("the Teredo prefix is 32 bits")
        if params.refresh_interval <= 0:
            raise ValueError("the refresh interval must be > 0")
        self.params = params
        self.out = out
        self._random = random_bytes
        self._prefix = params.prefix
        self.drops = DropCounters()
        self.state = ClientState.OFFLINE
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
        self._discovery_at: float | None = None
        self._events: deque[ClientEvent] = deque()
        self._peers = PeerTable(params.peer_capacity)
        # RFC 6081 Symmetric NAT Support, receiving side: our recent bubbles, per peer.
        self._adoption = PortAdoption()
        self._hairpin = HairpinRecords()  # RFC 6081 Hairpinning: our offers and tries
        self._probes: dict[bytes, _Procedure] = {}
        self._probe_heap: list[tuple[float, int, bytes]] = []
        self._probe_seq = 0
        self._max_probes = min(params.peer_capacity, 4096)
        self._unreach = TokenBucket(UNREACH_RATE, UNREACH_RATE)
        self._unsolicited = TokenBucket(UNSOLICITED_PING_RATE, UNSOLICITED_PING_BURST)
        self._origin_bubbles = BucketTable(ORIGIN_BUBBLE_RATE, ORIGIN_BUBBLE_BURST, 1024)
        self._origin_bubbles_ipv4 = BucketTable(
            ORIGIN_BUBBLE_IPV4_RATE, ORIGIN_BUBBLE_IPV4_BURST, 1024
        )
        self._ping_id = int.from_bytes(random_bytes(2), "big")
        self._ping_seq = 0
        self._rs_packet = build_rs(LINK_LOCAL_RESTRICTED)
        # Data-path caches (bounded): source host string -> IPv4 int, mapping -> sockaddr.
        self._ipv4_cache: dict[str, int] = {}
        self._dest_cache: dict[tuple[int, int], Address] = {}
        # Inputs that took the full path. The fast paths emit no event and never bring a
        # deadline forward (they only date a trusted peer's last use later), so a driver needs
        # to look at events and deadlines only after a batch in which this count moved.
        self.slow_inputs = 0
        self.suspends = 0

    # --- configuration --------------------------------------------------------------------------

    def _set_servers(self, server: int, server2: int | None) -> None:
        if not 0 <= server <= 0xFFFFFFFF:
            raise ValueError("the server address is an IPv4 address")
        if server2 is None:
            server2 = default_secondary(server)
        # Miredo refuses a server that is not global: its clients' addresses would embed it.
        for ipv4 in (server, server2):
            if not is_global_ipv4(ipv4):
                raise ValueError(f"server address {int_to_ipv4(ipv4)} is not global unicast")
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
            self.state = ClientState.OFFLINE
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

    # --- events and timers ----------------------------------------------------------------------

    def next_event(self) -> ClientEvent | None:
        return self._events.popleft() if self._events else None

    def has_events(self) -> bool:
        """True when next_event() has something (a driver's cheap check per batch)."""
        return bool(self._events)

    def _emit(self, event: ClientEvent) -> None:
        if len(self._events) >= MAX_EVENTS:
            self._events.popleft()  # a driver that never reads must not grow memory
        self._events.append(event)

    def start(self, now: float) -> None:
        self._begin_qualification(now)

    def next_deadline(self) -> float | None:
        best = self._deadline
        d = self._discovery_at
        if d is not None and (best is None or d < best):
            best = d
        heap = self._probe_heap
        if heap and (best is None or heap[0][0] < best):
            best = heap[0][0]
        if len(self._peers):
            e = self._peers.next_expiry()
            if e is not None and (best is None or e < best):
                best = e
        return best

    def _check_jump(self, now: float) -> bool:
        """A wake-up long after the planned one: the host slept (suspend/resume)."""
        d = self._deadline
        if d is None or now <= d + JUMP_SLACK:
            return False
        self.suspends += 1
        self._clear_probes(DropReason.SUSPENDED)
        if self.state is ClientState.QUALIFIED:
            # Peer NAT bindings are gone after a long sleep: start the peer list afresh, and
            # check the mapping at once (section 5.2.5) instead of trusting an old contact.
            self._peers.clear()
            self._adoption.clear()
            self._hairpin.clear()
            self._send_refresh(now)
        else:
            self._begin_qualification(now)
        return True

    def handle_timer(self, now: float) -> None:
        if self._check_jump(now):
            return
        d = self._deadline
        if d is not None and now >= d:
            self._control_timer(now)
        d = self._discovery_at
        if d is not None and now >= d:
            self._send_discovery_bubble(now)
        self._probe_timers(now)
        if len(self._peers):
            e = self._peers.next_expiry()
            if e is not None and now >= e:
                self._peers.expire(now)  # probes of expired rows end at their next timer

    def _control_timer(self, now: float) -> None:
        phase = self._phase
        if phase is _Phase.WAIT:
            self._begin_qualification(now)
        elif phase in (_Phase.PRIMARY, _Phase.SECONDARY, _Phase.REFRESH):
            if self._tries < RS_TRIES:
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
                    f"({RS_TRIES} refresh RS unanswered)",
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
        self.state = ClientState.QUALIFYING
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
        self._deadline = now + RS_TIMEOUT

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
        self.state = ClientState.OFFLINE
        self.nat_type = NatType.UNKNOWN
        self._phase = _Phase.WAIT
        self._deadline = now + self._restart_delay() if retry_at is None else retry_at
        self._emit(Offline(reason))
        if resolve:
            self._emit(ResolveServer())

    def _retire_address(self) -> None:
        """The address is no longer ours: forget peers, probes and the discovery timer."""
        self.address = None
        self._mapping = None
        self._discovery_at = None
        self._clear_probes(DropReason.NOT_QUALIFIED)
        self._peers.clear()
        self._adoption.clear()
        self._hairpin.clear()

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
                self.state = ClientState.OFFLINE
                self._phase = _Phase.WAIT
                self._deadline = now + self._restart_delay()
                self._emit(
                    SymmetricNat(_sockaddr(first), _sockaddr(origin), False, behaviour.describe())
                )
            else:
                # RFC 6081 Symmetric NAT Support: keep the primary server's mapping. The server
                # and relays answer at the mapping our packets came from (the relay re-maps a
                # port-symmetric peer, as Miredo's does), so native IPv6 works both ways.
                self._emit(
                    SymmetricNat(_sockaddr(first), _sockaddr(origin), True, behaviour.describe())
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
        self.state = ClientState.QUALIFIED
        self._backoff = RESTART_FIRST
        self._last_contact = now
        self._schedule_refresh(now)
        if old is not None and old != address:
            self._emit(
                AddressChanged(old, address, LINK_LOCAL_RESTRICTED, mtu, nat, _sockaddr(mapping))
            )
        else:
            self._emit(Qualified(address, LINK_LOCAL_RESTRICTED, mtu, nat, _sockaddr(mapping)))
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
            self._peers.clear()  # peers knew the old address (Miredo empties its list too)
            self._adoption.clear()
            self._hairpin.clear()
            address = self._make_address(mapping)
            self.address = address
            self._mapping = mapping
            self.mtu = mtu
            self._emit(
                AddressChanged(
                    old, address, LINK_LOCAL_RESTRICTED, mtu, self.nat_type, _sockaddr(mapping)
                )
            )
        elif mtu != self.mtu:
            self.mtu = mtu
            self._emit(MtuChanged(mtu))

    # --- local discovery (section 5.2.8) --------------------------------------------------------

    def _send_discovery_bubble(self, now: float) -> None:
        self._discovery_at = None
        if not self.params.local_discovery or self.address is None:
            return
        # Section 5.2.8: source our Teredo address, destination ff02::1, hop limit 1.
        self.out.send_discovery(build_bubble(self.address, ALL_NODES, hop_limit=1))
        self._discovery_at = now + self._uniform(DISCOVERY_MIN, DISCOVERY_MAX)

    def receive_discovery(self, data: bytes, source: Address, now: float) -> None:
        """A datagram that arrived on 224.0.0.253:3544 (section 5.2.3 case 4, 5.2.8)."""
        reason = self._receive_discovery(data, source, now)
        if reason is not None:
            self.drops.count(reason)

    def _receive_discovery(self, data: bytes, source: Address, now: float) -> DropReason | None:
        if not self.params.local_discovery:
            return DropReason.DISCOVERY_DISABLED
        self._check_jump(now)
        if self.address is None or self._mapping is None:
            return DropReason.NOT_QUALIFIED
        pkt = parse_payload(data)
        if isinstance(pkt, DropReason):
            return pkt
        if not pkt.is_bubble or pkt.origin_offset >= 0 or pkt.auth_offset >= 0:
            return DropReason.BAD_DISCOVERY
        src = pkt.src
        if src[:4] != self._prefix or pkt.dst != ALL_NODES:
            return DropReason.BAD_DISCOVERY  # MUST: a well-formed Teredo source
        if src == self.address:
            return DropReason.OWN_ADDRESS
        ipv4 = _ipv4(source[0])
        if ipv4 is None:
            return DropReason.BAD_UDP_SOURCE
        # We cannot know the local IPv4 subnet here; we use the MAY of 5.2.8 instead: the
        # bubble must embed our own mapped IPv4, i.e. come from behind the same NAT.
        if embedded_mapping(src)[0] != self._mapping[0]:
            return DropReason.DISCOVERY_OTHER_NAT
        peers = self._peers
        row = peers.lookup(src)
        if row is None:
            row = peers.insert(src, now)  # untrusted, last tx = now - 30 s (5.2.8)
            if row is None:
                return DropReason.PEER_TABLE_FULL
        elif peers.mapping(row) != (ipv4, source[1]) or not peers.is_local(row):
            peers.untrust(row)  # the local address is not proven yet
        peers.set_local(row, True)
        peers.set_mapping(row, ipv4, source[1])
        peers.touch_rx(row, now)
        # Section 5.2.3 case 4: reply with a unicast bubble (rate rules of 5.2.6).
        if peers.may_send_bubble(row, now):
            peers.record_bubble(row, now)
            self.out.send_udp(build_bubble(self.address, src), source)
        return None

    # --- reception (section 5.2.3) --------------------------------------------------------------

    def receive_udp(self, data: bytes, source: Address, now: float) -> None:
        # Fast path, section 5.2.3 case 1 only: a bare IPv6 packet (no Authentication, no
        # Origin Indication, no RFC 6081 trailer) for our address from a trusted peer at its
        # mapping, with no probe or queue pending for it. Every check below is one the full
        # path makes too, so a packet accepted here gets exactly the full path's treatment;
        # anything else (or a clock jump: _check_jump) goes the full way.
        n = len(data)
        d = self._deadline
        address = self.address
        if (
            n >= IPV6_HEADER_LEN
            and data[0] >> 4 == 6
            and IPV6_HEADER_LEN + ((data[4] << 8) | data[5]) == n
            and address is not None
            and (d is None or now <= d + JUMP_SLACK)
            and data.startswith(address, 24)
            and data[8] not in _SLOW_SOURCE_BYTE  # multicast, link-local, ::, ::1 (5.2.3)
        ):
            port = source[1]
            ipv4 = self._ipv4_cache.get(source[0])
            if ipv4 is not None and port != _SERVER_PORT:
                src = data[8:24]
                peers = self._peers
                row = peers.receive_row(src, ipv4, port, now)
                probes = self._probes
                # Packets are queued only for a peer with a procedure running (_send, case 6,
                # _start_probe), so with no procedure at all there is no queue to look at.
                if row is not None and (
                    not probes or (src not in probes and not peers.queued_bytes(row))
                ):
                    if n != IPV6_HEADER_LEN or data[6] != NH_NONE:  # a bubble is not delivered
                        self.out.write_tun(data)
                    return
        self.slow_inputs += 1
        self._check_jump(now)
        reason = self._receive(data, source, now)
        if reason is not None:
            self.drops.count(reason)

    def _receive(self, data: bytes, source: Address, now: float) -> DropReason | None:
        pkt = parse_payload(data)
        if isinstance(pkt, DropReason):
            return pkt
        if pkt.has_trailers:
            # RFC 6081 trailers: unknown ones are skipped, a malformed area drops the datagram.
            trailers = pkt.trailers
            if isinstance(trailers, DropReason):
                return trailers
        host = source[0]
        ipv4 = self._ipv4_cache.get(host)
        if ipv4 is None:
            ipv4 = _ipv4(host)
            if ipv4 is None:
                return DropReason.BAD_UDP_SOURCE
            cache = self._ipv4_cache
            if len(cache) >= _CACHE_LIMIT:
                cache.clear()  # bounded whatever the number of senders
            cache[host] = ipv4
        port = source[1]
        d = pkt.data
        o = pkt.ip6_offset
        next_header = d[o + 6]
        if port == _SERVER_PORT and ipv4 in (self._server, self._server2):
            if (
                next_header == NH_ICMPV6
                and pkt.ip6_length >= IPV6_HEADER_LEN + 8
                and d[o + 40] == ND_ROUTER_ADVERT
            ):
                return self._receive_ra(pkt, ipv4, now)
            if self.address is None:
                return DropReason.NOT_QUALIFIED
            # Section 5.2.3: any packet from the server is an interaction with it.
            self._last_contact = now
            origin = pkt.origin
            bubble = next_header == NH_NONE and pkt.ip6_length == IPV6_HEADER_LEN
            if origin is None and bubble and d[o + 8 : o + 12] == self._prefix:
                # A server that adds no origin indication: a Teredo source names its own
                # mapping (Miredo's client guesses it the same way).
                origin = embedded_mapping(d[o + 8 : o + 24])
            if origin is not None:
                self._answer_origin(pkt, origin, now)
            if pkt.has_trailers:
                self._hairpin_try(pkt, now)
            if bubble:
                return None  # an indirect bubble has done its job with the reply above
        elif self.address is None:
            return DropReason.NOT_QUALIFIED
        src = d[o + 8 : o + 24]
        dst = d[o + 24 : o + 40]
        if dst != self.address:
            if _is_multicast(dst):
                return DropReason.MULTICAST_DESTINATION
            return DropReason.NOT_OUR_ADDRESS
        if _is_link_local(src):
            return DropReason.LINK_LOCAL_SOURCE
        if _bad_source(src):
            return DropReason.INVALID_SOURCE
        bubble = next_header == NH_NONE and pkt.ip6_length == IPV6_HEADER_LEN
        peers = self._peers
        # Case 1: trusted peer, packet from its mapping.
        row = peers.receive_row(src, ipv4, port, now)
        if row is not None:
            if src in self._probes or peers.queued_bytes(row):
                # A stale trusted peer being checked again: this reception settles it.
                echo = (
                    next_header == NH_ICMPV6
                    and pkt.ip6_length >= IPV6_HEADER_LEN + 8
                    and d[o + 40] == ICMPV6_ECHO_REPLY
                    and self._is_our_echo_reply(pkt, row)
                )
                self._trust(row, src, ipv4, port, now)
                if echo:
                    return None  # our own ping's reply: nothing for the local stack
            if not bubble:
                self.out.write_tun(pkt.ipv6)
            return None
        return self._receive_unknown(pkt, src, ipv4, port, now)

    def _receive_unknown(
        self, pkt: TeredoPacket, src: bytes, ipv4: int, port: int, now: float
    ) -> DropReason | None:
        """Section 5.2.3 cases 2-6: a packet for us that is not from a trusted peer's
        recorded mapping (`ipv4:port` is its UDP source)."""
        d = pkt.data
        o = pkt.ip6_offset
        next_header = d[o + 6]
        bubble = next_header == NH_NONE and pkt.ip6_length == IPV6_HEADER_LEN
        peers = self._peers
        row = peers.lookup(src)
        # Case 2: an Echo Reply carrying the nonce of our ping test (section 5.2.9), from
        # whatever relay is nearest the peer: that relay becomes the peer's mapping.
        if (
            row is not None
            and next_header == NH_ICMPV6
            and pkt.ip6_length >= IPV6_HEADER_LEN + 8
            and d[o + 40] == ICMPV6_ECHO_REPLY
            and peers.nonce(row) is not None
        ):
            if not self._is_our_echo_reply(pkt, row):
                return DropReason.PING_NONCE_MISMATCH
            if not is_global_ipv4(ipv4):
                return DropReason.NOT_GLOBAL_IPV4
            self._trust(row, src, ipv4, port, now)
            return None  # the reply answers our own test: nothing for the local stack
        if src[:4] == self._prefix:
            # Case 3: a Teredo source sending from its own mapping MUST become trusted.
            if embedded_mapping(src) == (ipv4, port):
                if not is_global_ipv4(ipv4):
                    return DropReason.NOT_GLOBAL_IPV4
                if row is None:
                    row = peers.insert(src, now)  # trusted just below
                    if row is None:
                        return DropReason.PEER_TABLE_FULL
                elif peers.is_local(row):
                    peers.set_local(row, False)
                self._trust(row, src, ipv4, port, now)
                if not bubble:
                    self.out.write_tun(pkt.ipv6)
                return None
            # Case 5: a local peer (discovery) sending from its local address.
            if row is not None and peers.is_local(row) and peers.mapping(row) == (ipv4, port):
                self._trust(row, src, ipv4, port, now)
                if not bubble:
                    self.out.write_tun(pkt.ipv6)
                return None
            # A Teredo source from another mapping: spoofed, or behind a symmetric NAT (RFC 6081
            # Symmetric NAT Support: its bubble may come from another port of the same IPv4
            # shortly after ours; core/symmetric.py). Anything else is dropped (RFC 4380).
            if self._hairpin_accept(pkt, row, src, (ipv4, port), now):
                return None
            if bubble and self._adopt_port(row, src, ipv4, port, now):
                return None
            return DropReason.UNKNOWN_BUBBLE if bubble else DropReason.MAPPING_MISMATCH
        # Case 6: a native source through a relay we have not verified: queue the packet
        # and run the ping test; it is delivered if the reply comes from the same relay.
        if bubble:
            return DropReason.UNKNOWN_BUBBLE
        if not is_global_ipv4(ipv4):
            return DropReason.NOT_GLOBAL_IPV4
        if row is None:
            if not self._unsolicited.allow(now):
                return DropReason.PING_RATE_LIMITED
            row = peers.insert(src, now)
            if row is None:
                return DropReason.PEER_TABLE_FULL
        elif src not in self._probes and not self._unsolicited.allow(now):
            return DropReason.PING_RATE_LIMITED
        tagged = _sockkey(ipv4, port) + pkt.ipv6
        if not peers.enqueue(row, tagged, inbound=True):
            return DropReason.QUEUE_FULL
        if src not in self._probes:
            return self._start_probe(row, src, _PING, now)
        return None

    def _adopt_port(self, row: int | None, src: bytes, ipv4: int, port: int, now: float) -> bool:
        """RFC 6081 Symmetric NAT Support, receiving side (core/symmetric.py has the bounds):
        a bubble from the IPv4 that `src` embeds but another port, for a peer that is new,
        untrusted, or trusted but no longer valid and being bubbled again (never a valid
        trusted peer, never a local one), within the window after our own bubble to it: the
        port is the peer's real mapping. The peer is trusted there, what waited goes out, and
        one bubble goes back to that port (the peer's own procedure waits for it)."""
        address = self.address
        if address is None or embedded_mapping(src)[0] != ipv4 or not is_global_ipv4(ipv4):
            return False
        peers = self._peers
        if row is not None and (
            peers.is_local(row)
            or (peers.is_trusted(row) and (peers.is_valid(row, now) or src not in self._probes))
        ):
            return False
        if not self._adoption.claim(src, ipv4, now):
            return False
        if row is None:
            row = peers.insert(src, now)  # trusted just below
            if row is None:
                return False
        self._trust(row, src, ipv4, port, now)
        self.out.send_udp(build_bubble(address, src), (int_to_ipv4(ipv4), port))
        peers.touch_tx(row, now)
        return True

    # --- RFC 6081 Hairpinning (core/hairpin.py has the rules) ----------------------------------

    def _hairpin_trailer(self, peer: bytes, now: float) -> bytes:
        """Our Alternate Address trailer (local IPv4 and port) for a peer whose address embeds
        our own mapped IPv4, i.e. behind our NAT; nothing for any other peer."""
        mapping, local = self._mapping, self._local
        if (
            mapping is None
            or local is None
            or local == mapping
            or is_global_ipv4(local[0])
            or embedded_mapping(peer)[0] != mapping[0]
        ):
            return b""
        self._hairpin.offered(peer, now)
        return AlternateAddressTrailer((local,)).pack()

    def _hairpin_try(self, pkt: TeredoPacket, now: float) -> None:
        """A packet relayed by our server with trailers: a peer behind our NAT that lists its
        local addresses gets a direct bubble at each of them (rate-limited as origin bubbles)."""
        address, mapping, src = self.address, self._mapping, pkt.src
        trailers = pkt.trailers
        if (
            address is None
            or mapping is None
            or isinstance(trailers, DropReason)
            or src[:4] != self._prefix
            or src == address
            or embedded_mapping(src)[0] != mapping[0]
        ):
            return
        found = tuple(a for a in alternates(trailers) if a != self._local)
        if not found:
            return
        bubble = build_bubble(address, src) + self._hairpin_trailer(src, now)
        for alt in found:
            if self._origin_bubbles.allow(alt, now):
                self.out.send_udp(bubble, _sockaddr(alt))
        self._hairpin.tried(src, found, now)

    def _hairpin_accept(
        self,
        pkt: TeredoPacket,
        row: int | None,
        src: bytes,
        source: tuple[int, int],
        now: float,
    ) -> bool:
        """A packet from a peer behind our NAT at a local source: believed within the rules
        of core/hairpin.py; the peer becomes a local peer there (never a valid trusted one)."""
        address, mapping = self.address, self._mapping
        if (
            address is None
            or mapping is None
            or is_global_ipv4(source[0])
            or embedded_mapping(src)[0] != mapping[0]
        ):
            return False
        peers = self._peers
        if row is not None and peers.is_trusted(row) and peers.is_valid(row, now):
            return False
        trailers = pkt.trailers
        bubble = pkt.is_bubble
        listed = bubble and not isinstance(trailers, DropReason) and source in alternates(trailers)
        why = self._hairpin.accept(src, source, listed, now)
        if why is None:
            return False
        if row is None:
            row = peers.insert(src, now)  # trusted just below
            if row is None:
                return False
        peers.set_local(row, True)
        if why == "listed":
            # It answered our offer from its local address and waits for a bubble from ours.
            reply = build_bubble(address, src) + self._hairpin_trailer(src, now)
            self.out.send_udp(reply, _sockaddr(source))
        self._trust(row, src, source[0], source[1], now)
        if not bubble:
            self.out.write_tun(pkt.ipv6)
        return True

    def _is_our_echo_reply(self, pkt: TeredoPacket, row: int) -> bool:
        nonce = self._peers.nonce(row)
        if nonce is None:
            return False
        echo = parse_echo(pkt.ipv6)
        if isinstance(echo, DropReason) or not echo.reply:
            return False
        return echo.dst == self.address and hmac.compare_digest(echo.data, nonce)

    def _answer_origin(self, pkt: TeredoPacket, origin: tuple[int, int], now: float) -> None:
        """Section 5.2.3: a packet relayed by our server with an origin indication. We answer
        with a direct bubble to the origin (TEREDO-SPEC 3.8: Miredo's relays wait for it; it
        opens our NAT to the sender, which then reaches us directly)."""
        address = self.address
        ipv4, port = origin
        if address is None or not is_global_ipv4(ipv4):
            return
        if not self._origin_bubbles.allow(origin, now) or not self._origin_bubbles_ipv4.allow(
            ipv4, now
        ):
            self.drops.count(DropReason.ORIGIN_BUBBLE_LIMIT)
            return
        src = pkt.src
        self.out.send_udp(build_bubble(address, src), (int_to_ipv4(ipv4), port))
        if src[:4] == self._prefix:
            self._adoption.bubbled(src, ipv4, now)  # RFC 6081: its answer may use a new port

    def _trust(self, row: int, addr: bytes, ipv4: int, port: int, now: float) -> None:
        """Trusted at (ipv4, port): flush what waited (sections 5.2.3 cases 2, 3, 5)."""
        peers = self._peers
        waiting = peers.trust(row, ipv4, port, now)
        self._probes.pop(addr, None)
        if waiting:
            dest = (int_to_ipv4(ipv4), port)
            for packet in waiting:
                self.out.send_udp(packet, dest)
        if peers.queued_bytes(row):
            key = _sockkey(ipv4, port)
            for tagged in peers.drain(row, inbound=True):
                if tagged[:6] == key:
                    self.out.write_tun(tagged[6:])
                else:
                    self.drops.count(DropReason.MAPPING_MISMATCH)

    # --- transmission (section 5.2.4) -----------------------------------------------------------

    def receive_tun(self, packet: bytes, now: float) -> None:
        # Fast path, section 5.2.4 case 1 only: a well-formed unicast packet from our address
        # to a valid trusted peer (the first checks of _send, in its order); anything else,
        # or a clock jump, goes the full way.
        n = len(packet)
        d = self._deadline
        address = self.address
        if (
            n >= IPV6_HEADER_LEN
            and packet[0] >> 4 == 6
            and IPV6_HEADER_LEN + ((packet[4] << 8) | packet[5]) <= n
            and packet[24] != 0xFF
            and address is not None
            and (d is None or now <= d + JUMP_SLACK)
            and packet.startswith(address, 8)
        ):
            peers = self._peers
            row = peers.send_row(packet[24:40], now)
            if row is not None:
                key = peers.mapping(row)
                dest = self._dest_cache.get(key)
                if dest is None:
                    dest = self._sockaddr_cached(key)
                self.out.send_udp(packet, dest)
                return
        self.slow_inputs += 1
        self._check_jump(now)
        reason = self._send(packet, now)
        if reason is not None:
            self.drops.count(reason)

    def _send(self, packet: bytes, now: float) -> DropReason | None:
        n = len(packet)
        if n < IPV6_HEADER_LEN:
            return DropReason.TOO_SHORT
        if packet[0] >> 4 != 6:
            return DropReason.NOT_IPV6
        if IPV6_HEADER_LEN + ((packet[4] << 8) | packet[5]) > n:
            return DropReason.BAD_PAYLOAD_LENGTH
        dst = packet[24:40]
        if dst[0] == 0xFF:
            return DropReason.MULTICAST_DESTINATION  # MLD, ND: nothing to do on this link
        address = self.address
        if address is None:
            self._unreachable(packet, now)
            return DropReason.NOT_QUALIFIED
        if packet[8:24] != address:
            return DropReason.WRONG_SOURCE
        peers = self._peers
        # Case 1: a valid trusted peer.
        row = peers.send_row(dst, now)
        if row is not None:
            self.out.send_udp(packet, self._sockaddr_cached(peers.mapping(row)))
            return None
        if _is_link_local(dst):
            return DropReason.LINK_LOCAL_DESTINATION
        if dst == address:
            return DropReason.OWN_ADDRESS
        if dst[:4] == self._prefix:
            # Cases 3-5. The cone bit is ignored (section 5.2.4 MAY; RFC 5991 clears it):
            # every peer gets case 5, with the direct bubble always added (also a MAY).
            if not is_global_ipv4(embedded_mapping(dst)[0]) or not is_global_ipv4(
                embedded_server(dst)
            ):
                return DropReason.NOT_GLOBAL_IPV4  # MUST drop silently (cases 4 and 5)
            kind = _BUBBLE
        else:
            if _bad_source(dst) or dst[0] & 0xE0 != 0x20:
                # Only global unicast (2000::/3) is reachable through relays.
                return DropReason.NOT_GLOBAL_DESTINATION
            kind = _PING  # case 2
        row = peers.lookup(dst)
        if row is None:
            row = peers.insert(dst, now)  # section 5.2.6: dated 30 s back, no bubbles
            if row is None:
                return DropReason.PEER_TABLE_FULL
        elif kind is _BUBBLE and peers.is_local(row) and peers.is_valid(row, now):
            kind = _LOCAL  # case 3: a local peer heard from within 600 s
        if not peers.enqueue(row, packet):
            return DropReason.QUEUE_FULL
        if dst in self._probes:
            return None  # a procedure is running; the packet waits with the others
        return self._start_probe(row, dst, kind, now)

    def _sockaddr_cached(self, mapping: tuple[int, int]) -> Address:
        """The socket address of a mapping, from a bounded cache (no string per packet)."""
        cache = self._dest_cache
        dest = cache.get(mapping)
        if dest is None:
            if len(cache) >= _CACHE_LIMIT:
                cache.clear()
            dest = cache[mapping] = _sockaddr(mapping)
        return dest

    def _start_probe(
        self, row: int, addr: bytes, kind: ProcedureKind, now: float
    ) -> DropReason | None:
        if len(self._probes) >= self._max_probes:
            self._peers.drain(row)
            self._peers.drain(row, inbound=True)
            return DropReason.PROBES_FULL
        probe = _Procedure(kind, now)
        self._probes[addr] = probe
        return self._probe_step(row, addr, probe, now)

    def _probe_step(
        self, row: int, addr: bytes, probe: _Procedure, now: float
    ) -> DropReason | None:
        """One round of bubbles or one ping, or giving up (sections 5.2.4, 5.2.6, 5.2.9)."""
        peers = self._peers
        if probe.sends >= (len(PING_WAITS) if probe.kind == _PING else PROBE_SENDS):
            self._give_up(row, addr, DropReason.PEER_UNREACHABLE, now)
            if probe.kind is _PING:
                # The bubble limit of section 5.2.6 is about bubbles; a failed connectivity
                # test (section 5.2.9) leaves no state, so the next packet for that
                # destination runs a new test (under loss one test can fail, and a native
                # destination must not stay black-holed for 300 s).
                peers.remove(row)
            return None
        ping = probe.kind is _PING
        # The 2 s / 4-per-300 s limit of section 5.2.6 is about bubbles. A ping (the
        # connectivity test of section 5.2.9, sent through our own server) is not a bubble:
        # gating it would delay the move to a new relay by up to 2 s after traffic to the
        # destination stopped being answered (a relay killed mid-stream), and then block it.
        if not ping and not peers.may_send_bubble(row, now):
            if peers.bubble_count(row, now) >= 4:
                # Section 5.2.6 MUST: 4 bubbles in 300 s without answer, no more.
                self._give_up(row, addr, DropReason.BUBBLE_LIMIT, now)
                return None
            # Less than 2 s since the last transmission: try again when it is allowed.
            self._arm(addr, probe, peers.last_tx(row) + PROBE_INTERVAL)
            return None
        address = self.address
        if address is None:
            self._give_up(row, addr, DropReason.NOT_QUALIFIED, now)
            return None
        if ping:
            peers.touch_tx(row, now)  # last tx only: a ping is not counted as a bubble
        else:
            peers.record_bubble(row, now)  # last tx and the count (5.2.6 MUST)
        probe.sends += 1
        kind = probe.kind
        if kind is _BUBBLE:
            bubble = build_bubble(address, addr)
            # Direct bubble to the peer's mapping, indirect one through its server.
            mapping = embedded_mapping(addr)
            bubble += self._hairpin_trailer(addr, now)  # RFC 6081 Hairpinning: same NAT only
            self.out.send_udp(bubble, _sockaddr(mapping))
            self.out.send_udp(bubble, (int_to_ipv4(embedded_server(addr)), _SERVER_PORT))
            self._adoption.bubbled(addr, mapping[0], now)  # RFC 6081 Symmetric NAT Support
        elif kind is _LOCAL:
            self.out.send_udp(build_bubble(address, addr), _sockaddr(peers.mapping(row)))
            if self.params.local_discovery:
                self.out.send_discovery(build_bubble(address, ALL_NODES, hop_limit=1))
        else:
            nonce = peers.nonce(row)
            if nonce is None:
                nonce = self._random(PING_NONCE_LEN)
                peers.set_nonce(row, nonce)
            self._ping_seq = (self._ping_seq + 1) & 0xFFFF
            echo = build_echo(
                address, addr, self._ping_id, self._ping_seq, nonce, hop_limit=PING_HOP_LIMIT
            )
            # Section 5.2.9: through our own server, which sends it out natively.
            self.out.send_udp(echo, self._server_addr)
            self._arm(addr, probe, now + PING_WAITS[probe.sends - 1])
            return None
        self._arm(addr, probe, now + PROBE_INTERVAL)
        return None

    def _arm(self, addr: bytes, probe: _Procedure, when: float) -> None:
        probe.deadline = when
        self._probe_seq += 1
        heapq.heappush(self._probe_heap, (when, self._probe_seq, addr))
        heap = self._probe_heap
        if len(heap) > 4 * len(self._probes) + 64:
            # Drop stale entries so the heap stays proportional to the running procedures.
            live = [(p.deadline, i, a) for i, (a, p) in enumerate(self._probes.items())]
            heapq.heapify(live)
            self._probe_heap = live

    def _probe_timers(self, now: float) -> None:
        heap = self._probe_heap
        while heap and heap[0][0] <= now:
            when, _seq, addr = heapq.heappop(heap)
            probe = self._probes.get(addr)
            if probe is None or probe.deadline != when:
                continue  # finished, or re-armed for another time
            row = self._peers.lookup(addr)
            if row is None or self.address is None:
                del self._probes[addr]  # the entry was evicted with its queue
                continue
            self._probe_step(row, addr, probe, now)
            heap = self._probe_heap

    def _give_up(self, row: int, addr: bytes, reason: DropReason, now: float) -> None:
        """Bubbles or pings exhausted: drop what waited and tell the local sender."""
        self._probes.pop(addr, None)
        peers = self._peers
        waiting = peers.drain(row)
        peers.drain(row, inbound=True)
        peers.clear_nonce(row)
        self.drops.count(reason, max(1, len(waiting)))
        if waiting:
            self._unreachable(waiting[0], now)

    def _clear_probes(self, reason: DropReason) -> None:
        peers = self._peers
        for addr in self._probes:
            row = peers.lookup(addr)
            if row is not None:
                dropped = len(peers.drain(row)) + len(peers.drain(row, inbound=True))
                if dropped:
                    self.drops.count(reason, dropped)
        self._probes.clear()
        self._probe_heap = []

    def _unreachable(self, packet: bytes, now: float) -> None:
        """ICMPv6 address unreachable to the local sender (Miredo: 10 per second)."""
        src = packet[8:24]
        if _bad_source(src):
            return
        if packet[6] == NH_ICMPV6 and len(packet) > 40 and packet[40] < 128:
            return  # never an error about an error (RFC 4443 2.4 (e))
        if not self._unreach.allow(now):
            return
        self.out.write_tun(
            build_unreachable(self.address or LINK_LOCAL_RESTRICTED, src, UNREACH_ADDRESS, packet)
        )

    # --- status ---------------------------------------------------------------------------------

    def status(self) -> dict[str, object]:
        stats = self._peers.stats()
        mapping = self._mapping
        return {
            "state": str(self.state),
            "address": None if self.address is None else _format6(self.address),
            "nat": str(self.nat_type),
            "nat_behaviour": None if self.nat_behaviour is None else self.nat_behaviour.as_dict(),
            "mtu": self.mtu,
            "mapping": None if mapping is None else _format4(mapping),
            "server": self._server_addr[0],
            "server2": self._server2_addr[0],
            "refresh_interval": round(self._interval, 3),
            "peers": stats.size,
            "trusted_peers": stats.trusted,
            "probes": len(self._probes),
            "queued_bytes": stats.queued_bytes,
            "suspends": self.suspends,
            "symmetric_ports_adopted": self._adoption.adopted,
            "hairpin_peers": self._hairpin.accepted,
            "slow_inputs": self.slow_inputs,
            "drops": self.drops.snapshot(),
        }


def _sockaddr(mapping: tuple[int, int]) -> Address:
    return inet_ntoa(mapping[0].to_bytes(4, "big")), mapping[1]


def _format4(mapping: tuple[int, int]) -> str:
    host, port = _sockaddr(mapping)
    return f"{host}:{port}"


def _sockkey(ipv4: int, port: int) -> bytes:
    return ipv4.to_bytes(4, "big") + port.to_bytes(2, "big")


def _format6(addr16: bytes) -> str:
    return str(ipaddress.IPv6Address(addr16))
