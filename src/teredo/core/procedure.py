"""Bubble and ping procedures (RFC 4380 sections 5.2.4, 5.2.6, 5.2.9, 5.4.1), sans I/O.

How a peer that is not trusted yet is reached, and what its waiting local sender is told when it
cannot be: the kinds of procedure, their timing, the section 5.2.6 bubble limits, and the
rate-limited ICMPv6 errors of a give-up. `ClientProcedures` is the client's part of
`ClientMachine` (core/client.py) that runs them; the relay (core/relay.py) drives its own bubble
retries from a ring but takes the timing and the error rules from here.
"""

from __future__ import annotations

import enum
import heapq
import math
from collections.abc import Callable
from typing import TYPE_CHECKING

from teredo.core.addr import (
    ALL_NODES,
    LINK_LOCAL_RESTRICTED,
    TEREDO_PORT,
    EndpointCache,
    embedded_mapping,
    embedded_server,
)
from teredo.core.counters import DropCounters, DropReason
from teredo.core.ipv6 import NH_ICMPV6, UNREACH_ADDRESS, build_bubble, build_echo, build_unreachable
from teredo.core.peers import BUBBLE_MAX_COUNT, PeerTable
from teredo.core.qualify import ClientParams, ClientTransmit
from teredo.core.ratelimit import BucketTable, TokenBucket
from teredo.core.symmetric import PortAdoption

if TYPE_CHECKING:
    from teredo.core.portpredict import PortPrediction

#: Sections 5.2.4, 5.2.6 and 5.4.1: a bubble is repeated 2 s after the last one, at most 3
#: times (4 bubbles), by the client and the relay alike.
BUBBLE_INTERVAL = 2.0
BUBBLE_SENDS = 4
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
# While a ping test runs, each ping also re-sends our direct bubble to the relays
# whose indirect bubbles reached us (origin indications, section 5.2.3) in the last 23 s (a
# test's length), at most this many relays. Why: a relay holding our echo reply waits for that
# bubble; if it is lost, a Miredo relay bubbles us again only for a new echo reply, at most
# once per 2 s and 4 times per 300 s (section 5.2.6), so under 30 % loss a test could fail
# with the reply queued at the relay (issue 12). The bubbles go through the origin limits.
RELAY_ORIGINS = 8
RELAY_ORIGIN_KEEP = 23.0
# Miredo's ping test: hop limit 128 (1.0.5 NEWS: some hosts were unreachable with less).
PING_HOP_LIMIT = 128
PING_NONCE_LEN = 16  # section 5.2.9: at least 64 bits; 128 keeps the echo at 24 bytes
# Errors to local applications: 10 per second (Miredo).
UNREACH_RATE = 10.0


class ProcedureKind(enum.Enum):
    """How a peer is reached before it is trusted (section 5.2.4 cases 2-5)."""

    BUBBLE = 0  # Teredo peer: direct + indirect bubble (case 5)
    LOCAL = 1  # local peer: unicast bubble to its local address + discovery bubble (case 3)
    PING = 2  # native peer: Echo Request through our server (case 2, section 5.2.9)


class Procedure:
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


def bubble_wait(peers: PeerTable, row: int, now: float) -> float:
    """When the next bubble to `row` may go (section 5.2.6): `now` when at once, the end of
    the 2 s gap after the last transmission, or `math.inf` when 4 bubbles went out in the last
    300 s without a direct answer (MUST: no more)."""
    if peers.may_send_bubble(row, now):
        return now
    if peers.bubble_count(row, now) >= BUBBLE_MAX_COUNT:
        return math.inf
    return peers.last_tx(row) + BUBBLE_INTERVAL


def unreachable(errors: TokenBucket, source: bytes, packet: bytes, now: float) -> bytes | None:
    """The ICMPv6 address unreachable telling the local sender of `packet`, which waited for a
    procedure that failed, that its destination cannot be reached (sections 5.2.4, 5.4.1), from
    `source`; None when none may go: never to a source that is no unicast host, never about an
    error (RFC 4443 2.4 (e)), at most as many as the `errors` bucket allows (Miredo: 10/s)."""
    src = packet[8:24]
    if bad_source(src):
        return None
    if packet[6] == NH_ICMPV6 and len(packet) > 40 and packet[40] < 128:
        return None
    if not errors.allow(now):
        return None
    return build_unreachable(source, src, UNREACH_ADDRESS, packet)


def bad_source(addr16: bytes) -> bool:
    """Multicast, unspecified or loopback: never a packet's source (RFC 4291 2.5.2, 2.7)."""
    if addr16[0] == 0xFF:
        return True
    return addr16[0] == 0 and addr16[:15] == bytes(15) and addr16[15] in (0, 1)


class ClientProcedures:
    """The client's bubble and ping procedures, a part of `ClientMachine`: one per peer at most,
    their timers in one heap (sections 5.2.4, 5.2.6, 5.2.9)."""

    # Owned by the other parts of ClientMachine, used here.
    params: ClientParams
    out: ClientTransmit
    drops: DropCounters
    address: bytes | None
    _random: Callable[[int], bytes]
    _peers: PeerTable
    _adoption: PortAdoption
    _prediction: PortPrediction
    _server_addr: tuple[str, int]
    _endpoints: EndpointCache
    _origin_bubbles: BucketTable
    _origin_bubbles_ipv4: BucketTable

    if TYPE_CHECKING:

        def _hairpin_trailer(self, peer: bytes, now: float) -> bytes:
            raise NotImplementedError  # core/client.py

    def _init_procedures(self, params: ClientParams) -> None:
        self._probes: dict[bytes, Procedure] = {}
        self._probe_heap: list[tuple[float, int, bytes]] = []
        self._probe_seq = 0
        self._max_probes = min(params.peer_capacity, 4096)
        self._unreach = TokenBucket(UNREACH_RATE, UNREACH_RATE)
        self._ping_id = int.from_bytes(self._random(2), "big")
        self._ping_seq = 0
        # Relays that bubbled us through our server: origin -> (their bubble's source, when).
        self._relay_origins: dict[tuple[int, int], tuple[bytes, float]] = {}

    def _start_probe(
        self, row: int, addr: bytes, kind: ProcedureKind, now: float
    ) -> DropReason | None:
        if len(self._probes) >= self._max_probes:
            self._peers.drain(row)
            self._peers.drain(row, inbound=True)
            return DropReason.PROBES_FULL
        probe = Procedure(kind, now)
        self._probes[addr] = probe
        return self._probe_step(row, addr, probe, now)

    def _probe_step(self, row: int, addr: bytes, probe: Procedure, now: float) -> DropReason | None:
        """One round of bubbles or one ping, or giving up (sections 5.2.4, 5.2.6, 5.2.9)."""
        peers = self._peers
        if probe.sends >= (len(PING_WAITS) if probe.kind == _PING else BUBBLE_SENDS):
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
        if not ping:
            wait = bubble_wait(peers, row, now)
            if wait == math.inf:
                self._give_up(row, addr, DropReason.BUBBLE_LIMIT, now)
                return None
            if wait > now:
                self._arm(addr, probe, wait)
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
            bubble += self._prediction.trailer(mapping)  # RFC 6081: behind a sequential NAT
            self.out.send_udp(bubble, self._endpoints.sockaddr_of(*mapping))
            self.out.send_udp(
                bubble, self._endpoints.sockaddr_of(embedded_server(addr), TEREDO_PORT)
            )
            self._adoption.bubbled(addr, mapping[0], now)  # RFC 6081 Symmetric NAT Support
        elif kind is _LOCAL:
            self.out.send_udp(
                build_bubble(address, addr), self._endpoints.sockaddr(peers.mapping_key(row))
            )
            if self.params.local_discovery:
                self.out.send_discovery(build_bubble(address, ALL_NODES, hop_limit=1))
        else:
            nonce = peers.nonce(row)
            if nonce is None:
                nonce = self._random(PING_NONCE_LEN)
                peers.set_nonce(row, nonce)
            # Also at a test's first ping: a connect retried after a failed test (its ICMPv6
            # error) starts a new test while the relay that bubbled us may still hold a reply.
            self._rebubble_relays(address, now)
            self._ping_seq = (self._ping_seq + 1) & 0xFFFF
            echo = build_echo(
                address, addr, self._ping_id, self._ping_seq, nonce, hop_limit=PING_HOP_LIMIT
            )
            # Section 5.2.9: through our own server, which sends it out natively.
            self.out.send_udp(echo, self._server_addr)
            self._arm(addr, probe, now + PING_WAITS[probe.sends - 1])
            return None
        self._arm(addr, probe, now + BUBBLE_INTERVAL)
        return None

    def relay_bubbled(self, origin: tuple[int, int], src: bytes, now: float) -> None:
        """A relay's indirect bubble reached us from `origin` with source `src` (kept for
        `_rebubble_relays`; the oldest goes when RELAY_ORIGINS are kept)."""
        origins = self._relay_origins
        origins.pop(origin, None)
        if len(origins) >= RELAY_ORIGINS:
            del origins[next(iter(origins))]
        origins[origin] = (src, now)

    def _rebubble_relays(self, address: bytes, now: float) -> None:
        """A ping: our direct bubble again to the relays that recently bubbled us."""
        for origin, (src, seen) in list(self._relay_origins.items()):
            if now - seen > RELAY_ORIGIN_KEEP:
                del self._relay_origins[origin]
                continue
            ipv4 = origin[0]
            if self._origin_bubbles.allow(origin, now) and self._origin_bubbles_ipv4.allow(
                ipv4, now
            ):
                self.out.send_udp(build_bubble(address, src), self._endpoints.sockaddr_of(*origin))

    def _arm(self, addr: bytes, probe: Procedure, when: float) -> None:
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
        error = unreachable(self._unreach, self.address or LINK_LOCAL_RESTRICTED, packet, now)
        if error is not None:
            self.out.write_tun(error)
