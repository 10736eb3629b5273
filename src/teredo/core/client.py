"""The Teredo client (RFC 4380 section 5.2, RFC 5991, RFC 6081), sans I/O: the data-path facade.

One `ClientMachine` per Teredo interface. The driver feeds it datagrams from the service port
(`receive_udp`), from the discovery group (`receive_discovery`), packets from the TUN
(`receive_tun`) and timer wake-ups (`handle_timer` at `next_deadline()`); data goes out through
`ClientTransmit`, control happenings come out of `next_event()`. Time (`now`) and randomness
(`random_bytes`) are parameters; docs/client.md describes the behaviour and its choices.

This module holds reception (section 5.2.3), transmission (section 5.2.4), local discovery
(section 5.2.8) and the RFC 6081 peer rules; the machine's other parts are qualification and
maintenance (core/qualify.py: the life cycle, the state as a function of the phase) and the
bubble and ping procedures (core/procedure.py, shared with the relay).
"""

from __future__ import annotations

import hmac
import ipaddress
from collections import deque
from collections.abc import Callable

from teredo.core.addr import (
    ALL_NODES,
    TEREDO_PORT,
    Address,
    EndpointCache,
    embedded_mapping,
    embedded_server,
    is_global_ipv4,
)
from teredo.core.counters import DropCounters, DropReason
from teredo.core.hairpin import HairpinRecords
from teredo.core.ipv6 import (
    ICMPV6_ECHO_REPLY,
    IPV6_HEADER_LEN,
    ND_ROUTER_ADVERT,
    NH_ICMPV6,
    NH_NONE,
    build_bubble,
    parse_echo,
)
from teredo.core.peers import PeerTable
from teredo.core.portpredict import (
    PortPrediction,
    PredictedPorts,
)
from teredo.core.procedure import ClientProcedures, ProcedureKind, bad_source
from teredo.core.qualify import (
    AddressChanged,
    ClientEvent,
    ClientParams,
    ClientState,
    ClientTransmit,
    MtuChanged,
    NatType,
    Offline,
    Qualification,
    Qualified,
    RaInfo,
    ResolveServer,
    SymmetricNat,
    check_ra,
    default_secondary,
    sockaddr,
)
from teredo.core.ratelimit import BucketTable, TokenBucket
from teredo.core.rfc6081 import Rfc6081Peers
from teredo.core.symmetric import PortAdoption
from teredo.core.wire import TeredoPacket, parse_payload

__all__ = [
    "AddressChanged",
    "ClientEvent",
    "ClientMachine",
    "ClientParams",
    "ClientState",
    "ClientTransmit",
    "MtuChanged",
    "NatType",
    "Offline",
    "Qualified",
    "RaInfo",
    "ResolveServer",
    "SymmetricNat",
    "check_ra",
    "default_secondary",
]

# Section 5.2.8: discovery bubbles every uniform(200, 300) s.
DISCOVERY_MIN = 200.0
DISCOVERY_MAX = 300.0
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


_BUBBLE = ProcedureKind.BUBBLE
_LOCAL = ProcedureKind.LOCAL
_PING = ProcedureKind.PING


def _is_multicast(addr16: bytes) -> bool:
    return addr16[0] == 0xFF


def _is_link_local(addr16: bytes) -> bool:
    return addr16[0] == 0xFE and addr16[1] & 0xC0 == 0x80


class ClientMachine(Qualification, ClientProcedures, Rfc6081Peers):
    """A client: the data path (reception, transmission, discovery, peers) over its
    qualification (core/qualify.py), its bubble and ping procedures (core/procedure.py) and
    its RFC 6081 peer rules (core/rfc6081.py)."""

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
        self.drops = DropCounters()
        self._init_qualification(params)
        self._discovery_at: float | None = None
        self._events: deque[ClientEvent] = deque()
        self._peers = PeerTable(params.peer_capacity)
        # RFC 6081 Symmetric NAT Support, receiving side: our recent bubbles, per peer.
        self._adoption = PortAdoption()
        self._hairpin = HairpinRecords()  # RFC 6081 Hairpinning: our offers and tries
        # RFC 6081 Sequential Port-Symmetric NAT (core/portpredict.py): our flows and trailers
        # while behind one, the ports we tried for peers behind one.
        self._raw_out = out
        self._prediction = PortPrediction()
        self._predicted = PredictedPorts()
        self._unsolicited = TokenBucket(UNSOLICITED_PING_RATE, UNSOLICITED_PING_BURST)
        self._origin_bubbles = BucketTable(ORIGIN_BUBBLE_RATE, ORIGIN_BUBBLE_BURST, 1024)
        self._origin_bubbles_ipv4 = BucketTable(
            ORIGIN_BUBBLE_IPV4_RATE, ORIGIN_BUBBLE_IPV4_BURST, 1024
        )
        self._init_procedures(params)
        # Data-path caches (bounded): source host string -> IPv4 int, mapping -> sockaddr.
        self._endpoints = EndpointCache(_CACHE_LIMIT)
        self._ipv4_cache = self._endpoints.ipv4
        self._dest_cache = self._endpoints.sockaddrs
        # Inputs that took the full path. The fast paths emit no event and never bring a
        # deadline forward (they only date a trusted peer's last use later), so a driver needs
        # to look at events and deadlines only after a batch in which this count moved.
        self.slow_inputs = 0
        self.suspends = 0

    @property
    def peers(self) -> PeerTable:
        """The peer list (sections 5.2.3-5.2.6), for the kernel data path's mirror, which
        watches it (PeerTable.watch) and reads the kernel's use back into it."""
        return self._peers

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
            self._forget_peers()
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

    def _retire_address(self) -> None:
        """The address is no longer ours: forget peers, probes and the discovery timer."""
        self.address = None
        self._mapping = None
        self._discovery_at = None
        self._clear_probes(DropReason.NOT_QUALIFIED)
        self._forget_peers()

    def _forget_peers(self) -> None:
        """Peers, symmetric-port and hairpin records: all of them knew our old address."""
        self._peers.clear()
        self._adoption.clear()
        self._hairpin.clear()
        self._predicted.clear()

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
        ipv4 = self._endpoints.ipv4_of(source[0])
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
            ipv4 = self._endpoints.ipv4_of(host)
            if ipv4 is None:
                return DropReason.BAD_UDP_SOURCE
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
                self._predicted_try(pkt, now)
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
        if bad_source(src):
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
            if self._predicted_accept(pkt, row, src, (ipv4, port), now):
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
        if not peers.enqueue(row, tagged, inbound=True, ip6_at=len(tagged) - len(pkt.ipv6)):
            return DropReason.QUEUE_FULL
        if src not in self._probes:
            return self._start_probe(row, src, _PING, now)
        return None

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
        self.out.send_udp(build_bubble(address, src), self._endpoints.sockaddr_of(ipv4, port))
        if src[:4] != self._prefix and self._probes:
            self.relay_bubbled(origin, src, now)  # a relay's bubble, during a procedure
        if src[:4] == self._prefix:
            self._adoption.bubbled(src, ipv4, now)  # RFC 6081: its answer may use a new port
            if self._prediction.active:
                # Behind a sequential NAT the bubble above left from a new port, which the
                # peer's NAT does not know: tell it through the peer's server (RFC 6081).
                trailer = self._prediction.trailer(origin)
                if trailer:
                    server = self._endpoints.sockaddr_of(embedded_server(src), _SERVER_PORT)
                    self.out.send_udp(build_bubble(address, src) + trailer, server)

    def _trust(self, row: int, addr: bytes, ipv4: int, port: int, now: float) -> None:
        """Trusted at (ipv4, port): flush what waited (sections 5.2.3 cases 2, 3, 5)."""
        peers = self._peers
        waiting = peers.trust(row, ipv4, port, now)
        self._probes.pop(addr, None)
        if waiting:
            dest = self._endpoints.sockaddr_of(ipv4, port)
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
                key = peers.mapping_key(row)
                dest = self._dest_cache.get(key)
                if dest is None:
                    dest = self._endpoints.sockaddr(key)
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
            return DropReason.LOCAL_MULTICAST  # MLD, ND: nothing to do on this link
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
            self.out.send_udp(packet, self._endpoints.sockaddr(peers.mapping_key(row)))
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
            if bad_source(dst) or dst[0] & 0xE0 != 0x20:
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
            "queue_superseded": stats.queue_superseded,
            "suspends": self.suspends,
            "symmetric_ports_adopted": self._adoption.adopted,
            "hairpin_peers": self._hairpin.accepted,
            "random_ports_announced": self._prediction.announced,
            "predicted_peers": self._predicted.accepted,
            "slow_inputs": self.slow_inputs,
            "drops": self.drops.snapshot(),
        }


def _format4(mapping: tuple[int, int]) -> str:
    host, port = sockaddr(mapping)
    return f"{host}:{port}"


def _sockkey(ipv4: int, port: int) -> bytes:
    return ipv4.to_bytes(4, "big") + port.to_bytes(2, "big")


def _format6(addr16: bytes) -> str:
    return str(ipaddress.IPv6Address(addr16))
