"""The Teredo relay and host-specific relay (RFC 4380 section 5.4), sans I/O.

A relay sits between native IPv6 (its TUN interface, where the prefix 2001::/32 is routed) and
Teredo clients (one UDP socket). It keeps a peer list shaped like a client's (core/peers.py):

* native -> client (section 5.4.1): only to valid Teredo addresses embedding a global IPv4.
  Case 1, a valid trusted peer: the packet goes straight to its mapping (the hot path). Case 3
  (always used, as Miredo does: cone peers, case 2, are not believed): an untrusted entry, the
  packet queued (bounded), an *indirect* bubble through the client's server (embedded server
  IPv4, port 3544) and, for the deprecated "restricted" relay, a *direct* bubble too. Bubbles
  answer native packets, never more than one per packet (Miredo does the same): a bubble is
  repeated 2 s later, at most 3 times, only when a native packet for the peer arrived since the
  last one; 2 s after the 4th (or 6 s after the last, with no packet since) the peer is given up:
  its queue goes and the sender gets an ICMPv6 address unreachable (rate-limited). The entry
  stays, untrusted, until it expires, so that its section 5.2.6 bubble count (4 in 300 s)
  outlives the give-up. Bubbles toward one server IPv4 are rate-limited as well (a token bucket
  per server address, `RelayParams.server_bubble_rate`): native packets to Teredo addresses
  that embed a victim's IPv4 as "server" cannot make the relay a reflector (section 7.4).
* client -> native (section 5.4.2): a valid IPv6 packet whose Teredo source embeds the UDP
  source IPv4 and port (or a known peer's recorded mapping), from a peer in the list (the MAY
  drop of section 5.4.2, as Miredo: a flood of made-up sources creates no state and gets nothing
  forwarded); bubbles make the peer trusted and flush its queue, and are never forwarded. A
  valid trusted peer is heard only at its recorded mapping: a packet from another IPv4:port
  claiming its address (even one that would pass the checks for a new peer) is dropped, so one
  spoofed packet cannot move its traffic. Other packets go to the TUN only when their
  destination is one the relay serves: for a relay, a global non-Teredo address; for a
  host-specific relay (section 5.4, "local relay" of section 3.4, section 7.3.1), one of this
  host's own addresses (the driver learns them through netlink and passes them in).

Bubble source (TEREDO-SPEC 2.2, Miredo's practice): a link-local address whose interface
identifier is a keyed hash of the peer's embedded mapping. A client answers an indirect bubble
that its server forwarded with an origin indication by a direct bubble to that origin, addressed
to that link-local source; the relay recognises the hash even when the answer comes from another
port of the same IPv4 (a port-symmetric NAT) and then records the port it really came from.

Bubble retries are driven by a FIFO ring of (deadline, row) that grows with the rows it holds:
every retry is due exactly 2 s after the bubble that scheduled it, so the ring stays sorted
without a heap, and each row sits in it at most once (one byte per row says so), which bounds
it by the peer table whatever arrives.
"""

from __future__ import annotations

import hashlib
from array import array
from dataclasses import dataclass, replace
from typing import Protocol

from teredo.core.addr import (
    TEREDO_PORT,
    TEREDO_PREFIX,
    Address,
    EndpointCache,
    embedded_mapping,
    is_global_ipv4,
)
from teredo.core.counters import DropCounters, DropReason
from teredo.core.ipv6 import IPV6_MIN_MTU
from teredo.core.peers import MIREDO_MAX_PEERS, PEER_VALIDITY, PeerTable
from teredo.core.procedure import BUBBLE_INTERVAL, BUBBLE_SENDS, bubble_wait, unreachable
from teredo.core.ratelimit import BucketTable, TokenBucket
from teredo.core.wire import TeredoPacket, parse_payload

#: Section 5.4.1: the bubble is repeated after 2 s, at most 3 times, then the entry goes
#: (the timing shared with the client's procedures, core/procedure.py).
BUBBLE_RETRY = BUBBLE_INTERVAL
BUBBLE_REPEATS = BUBBLE_SENDS - 1
#: A peer that asked for no bubble since its last one is given up this long after it.
GIVE_UP_IDLE = BUBBLE_RETRY * BUBBLE_REPEATS
#: Indirect bubbles per second toward one server IPv4 (section 7.4: no amplification toward an
#: address named in a packet), with a burst of `SERVER_BUBBLE_BURST` seconds' worth. A real
#: server sees one bubble per new conversation of one of its clients with a native host.
SERVER_BUBBLE_RATE = 200.0
SERVER_BUBBLE_BURST = 2.0
#: Server addresses tracked by the bubble limit (fixed memory; addresses share slots by hash).
#: The key is the address's 4 bytes, whose hash (SipHash, keyed per process) an attacker cannot
#: aim at a chosen server's slot; an int would hash to itself (its low 12 bits).
SERVER_BUBBLE_SLOTS = 4096
#: Miredo answers at most 10 ICMPv6 errors per second (TEREDO-SPEC 7, "Amplification").
ICMPV6_ERROR_RATE = 10.0
#: The longest `RelayParams.idle_timeout` (one day).
MAX_PEER_TIMEOUT = 86400.0
#: Entries removed per timer call at most, so that a timer never stalls the data path.
EXPIRE_BUDGET = 256
#: Retries handled per timer call at most (the rest wait for the next call, at once).
RETRY_BUDGET = 1024
#: Socket addresses converted (int <-> dotted quad) and remembered, at most (core/addr.py
#: EndpointCache): the conversion costs more than the rest of the hot path's bookkeeping.
ADDRESS_CACHE = 1024

_HEADER = 40
_NH_NONE = 59
_LINK_LOCAL_HEAD = b"\xfe\x80" + bytes(6)
#: Version 6, traffic class and flow label 0, payload length 0, next header 59, hop limit 0.
_BUBBLE_HEAD = bytes((0x60, 0, 0, 0, 0, 0, _NH_NONE, 0))


class RelayTransmit(Protocol):
    """Where the relay's output goes (the driver's UDP socket and TUN, or a test's recorder)."""

    def send_udp(self, payload: bytes, destination: Address) -> None:
        """Send one UDP datagram from the relay's service port."""

    def write_tun(self, packet: bytes | memoryview) -> None:
        """Hand one IPv6 packet to the local IPv6 stack."""


@dataclass(frozen=True, slots=True)
class RelayParams:
    """What a relay needs to know; see docs/relay.md."""

    prefix: bytes = TEREDO_PREFIX
    host_specific: bool = False
    #: Miredo's deprecated "restricted" relay adds a direct bubble (section 5.4.1 SHOULD, for a
    #: relay behind a non-cone NAT).
    direct_bubbles: bool = False
    peers: int = MIREDO_MAX_PEERS
    #: Our own UDP endpoint (IPv4 as int, port), when known: a Teredo destination embedding it
    #: would loop back to us (draft-gont-6man-teredo-loops; TEREDO-SPEC 7 "Loops").
    own_mapping: tuple[int, int] | None = None
    queue_bytes_per_peer: int = 1280
    total_queue_bytes: int = 16 * 1024 * 1024
    icmpv6_error_rate: float = ICMPV6_ERROR_RATE
    #: Indirect bubbles a second toward one server IPv4 (burst: twice as many).
    server_bubble_rate: float = SERVER_BUBBLE_RATE
    mtu: int = IPV6_MIN_MTU
    #: How long a trusted peer's entry stays after its last use. Its validity (section 5.2.4,
    #: sending case 1) is 30 s whatever this says; keeping the entry longer only spares a new
    #: bubble exchange's state, at the cost of rows kept in memory longer. Miredo keeps
    #: entries 30 to 60 s (two 30 s generations). Untrusted entries always go after 30 s.
    idle_timeout: float = PEER_VALIDITY
    #: Forward packets from clients not in the peer list instead of dropping them (the
    #: section 5.4.2 MAY not taken), making no entry: for relays that share an anycast IPv4
    #: (AnycastIPv4), where a standby takes over the clients that the failed relay bubbled and
    #: that keep sending to the same address (docs/scale.md). Packets toward the client still
    #: wait for a bubble exchange.
    serve_unknown: bool = False

    def check(self) -> str | None:
        """Why these parameters cannot serve, or None."""
        if len(self.prefix) != 4:
            return "the prefix must be 32 bits"
        if not 1 <= self.peers < (1 << 30):
            return "the peer table size must be between 1 and 2**30 - 1"
        if not IPV6_MIN_MTU <= self.mtu <= 65535:
            return "the MTU must be between 1280 and 65535"
        if self.icmpv6_error_rate <= 0:
            return "the ICMPv6 error rate must be positive"
        if not 0 < self.server_bubble_rate <= 1e9:
            return "the bubble rate per server must be positive"
        if not PEER_VALIDITY <= self.idle_timeout <= MAX_PEER_TIMEOUT:
            return f"the peer timeout must be between {PEER_VALIDITY:g} and {MAX_PEER_TIMEOUT:g} s"
        return None


@dataclass(slots=True)
class RelayStats:
    """What the relay did, for the SIGUSR1 summary, `status` and benchmarks."""

    to_teredo: int = 0  # native packets sent to a trusted client (case 1 and queue flushes)
    from_teredo: int = 0  # client packets handed to the native side
    queued: int = 0  # native packets held for an untrusted peer
    indirect_bubbles: int = 0
    direct_bubbles: int = 0
    bubbles_received: int = 0
    trusted: int = 0  # peers that became trusted (a direct answer arrived)
    remapped: int = 0  # peers re-mapped to another port (port-symmetric NAT answers)
    given_up: int = 0  # peers deleted after 3 unanswered repeats
    unreachables: int = 0  # ICMPv6 errors written to the TUN
    unknown_served: int = 0  # client packets forwarded from no entry (RelayParams.serve_unknown)


def _global_ipv6_kind(addr: bytes) -> DropReason | None:
    """None for a global unicast IPv6 destination, else why not (RFC 4291 section 2.4)."""
    first = addr[0]
    if first == 0xFF:
        return DropReason.MULTICAST_DESTINATION
    if first == 0xFE and addr[1] & 0xC0 == 0x80:
        return DropReason.NOT_GLOBAL_DESTINATION
    if first == 0 and addr[:15] == bytes(15) and addr[15] in (0, 1):
        return DropReason.NOT_GLOBAL_DESTINATION
    return None


class _RetryRing:
    """A FIFO of (deadline, row), each row at most once; it grows (by doubling) with the rows
    it holds, never beyond one slot per row of the peer table."""

    __slots__ = ("_head", "_mask", "_queued", "_rows", "_size", "_when")

    def __init__(self, slots: int = 64) -> None:
        size = 1
        while size < slots:
            size <<= 1
        self._mask = size - 1
        self._when = array("d", bytes(8 * size))
        self._rows = array("i", bytes(4 * size))
        self._queued = bytearray(size)  # one byte per peer-table row: queued here or not
        self._head = 0
        self._size = 0

    def __len__(self) -> int:
        return self._size

    def nbytes(self) -> int:
        return len(self._when) * 8 + len(self._rows) * 4 + len(self._queued)

    def push(self, row: int, when: float) -> None:
        queued = self._queued
        if row >= len(queued):
            queued += bytes(max(row + 1, 2 * len(queued)) - len(queued))
        if queued[row]:
            return
        if self._size:
            # Keep the ring sorted: a deadline never goes before the one at the tail.
            tail = self._when[(self._head + self._size - 1) & self._mask]
            when = max(when, tail)
        if self._size > self._mask:
            self._grow()
        i = (self._head + self._size) & self._mask
        self._when[i] = when
        self._rows[i] = row
        self._size += 1
        queued[row] = 1

    def _grow(self) -> None:
        """Twice the slots, the entries kept in order from slot 0 (each row is queued at most
        once, so the ring never holds more entries than the peer table has rows)."""
        n = self._mask + 1
        h = self._head
        self._when = self._when[h:] + self._when[:h] + array("d", bytes(8 * n))
        self._rows = self._rows[h:] + self._rows[:h] + array("i", bytes(4 * n))
        self._head = 0
        self._mask = 2 * n - 1

    def first(self) -> float | None:
        return self._when[self._head] if self._size else None

    def pop(self) -> int:
        row = self._rows[self._head]
        self._head = (self._head + 1) & self._mask
        self._size -= 1
        self._queued[row] = 0
        return row

    def clear(self) -> None:
        self._head = 0
        self._size = 0
        self._queued[:] = bytes(len(self._queued))


class RelayMachine:
    """A Teredo relay (or host-specific relay): `receive_tun`, `receive_udp`, timers."""

    def __init__(self, params: RelayParams, out: RelayTransmit, secret: bytes, now: float) -> None:
        """`secret`: random bytes (16 or more) keying the bubble source hash; `now`: the
        driver's clock at start (the peer table's epoch)."""
        problem = params.check()
        if problem is not None:
            raise ValueError(problem)
        if len(secret) < 16:
            raise ValueError("the secret must hold at least 16 random bytes")
        self.params = params
        self.out = out
        self.drops = DropCounters()
        self.stats = RelayStats()
        self._prefix = params.prefix
        self._secret = bytes(secret[:64])
        self._hasher = hashlib.blake2b(key=self._secret, digest_size=8)
        self._host_specific = params.host_specific
        self._direct = params.direct_bubbles
        self._serve_unknown = params.serve_unknown
        self._own_mapping = params.own_mapping
        self._own_addresses: frozenset[bytes] = frozenset()
        # Entries go `idle_timeout` after their last use (30 s by default, the section 5.2.4
        # validity), untrusted ones after 30 s.
        self.peers = PeerTable(
            params.peers,
            epoch=now,
            idle_timeout=params.idle_timeout,
            untrusted_timeout=PEER_VALIDITY,
            queue_bytes_per_peer=params.queue_bytes_per_peer,
            total_queue_bytes=params.total_queue_bytes,
            max_nonces=0,
        )
        self._ring = _RetryRing()
        self._errors = TokenBucket(params.icmpv6_error_rate, params.icmpv6_error_rate)
        rate = params.server_bubble_rate
        self._server_bubbles = BucketTable(
            rate, max(1.0, rate * SERVER_BUBBLE_BURST), SERVER_BUBBLE_SLOTS
        )
        # Untrusted peers (rows) for which a native packet arrived since their last bubble:
        # only they get a repeat (one bubble per native packet at most). Each is in the ring.
        self._wanted: set[int] = set()
        # One bounded cache converts endpoints where datagrams enter and leave the machine;
        # its two dicts are read inline on the hot paths.
        self._endpoints = EndpointCache(ADDRESS_CACHE)
        self._to_sockaddr = self._endpoints.sockaddrs
        self._from_host = self._endpoints.ipv4

    # --- configuration ----------------------------------------------------------------------

    def set_own_addresses(self, addresses: frozenset[bytes] | set[bytes]) -> None:
        """The host's own IPv6 addresses (16 bytes each): the only destinations a host-specific
        relay delivers to (section 5.4; the driver keeps this current through netlink)."""
        # Only global unicast ones: loopback and link-local addresses are never reachable
        # from a Teredo client (section 5.4.2 forwards only to global destinations).
        self._own_addresses = frozenset(
            a for a in addresses if len(a) == 16 and _global_ipv6_kind(a) is None
        )

    @property
    def own_addresses(self) -> frozenset[bytes]:
        return self._own_addresses

    def set_own_mapping(self, mapping: tuple[int, int] | None) -> None:
        """Our own UDP endpoint (IPv4 as int, port), once the driver has bound it."""
        self._own_mapping = mapping
        self.params = replace(self.params, own_mapping=mapping)

    def set_direct_bubbles(self, direct: bool) -> None:
        """Switch between "cone" and "restricted" (configuration reload)."""
        self._direct = direct

    def nbytes(self) -> int:
        """Memory held by the columns (peer table and retry ring), which grow with the peers."""
        return self.peers.nbytes() + self._ring.nbytes()

    def bubble_source(self, peer: bytes) -> bytes:
        """fe80::<keyed hash of the peer's embedded mapping>, the 2 low bits of the first
        interface identifier byte cleared as Miredo does (TEREDO-SPEC 2.2)."""
        hasher = self._hasher.copy()  # the keyed state, computed once (saves a block)
        hasher.update(peer[10:16])
        digest = hasher.digest()
        return _LINK_LOCAL_HEAD + bytes((digest[0] & 0xFC,)) + digest[1:]

    # --- native IPv6 -> Teredo client (section 5.4.1) -------------------------------------

    def receive_tun(self, packet: bytes, now: float) -> None:
        """One IPv6 packet that the local stack routed into the Teredo interface."""
        n = len(packet)
        if n < _HEADER:
            self.drops.count(DropReason.TOO_SHORT)
            return
        if packet[0] >> 4 != 6:
            self.drops.count(DropReason.NOT_IPV6)
            return
        if _HEADER + ((packet[4] << 8) | packet[5]) > n:
            self.drops.count(DropReason.BAD_PAYLOAD_LENGTH)
            return
        dst = packet[24:40]
        peers = self.peers
        # Case 1 (hot path): a valid trusted peer; the packet goes to its mapping as it is.
        row = peers.send_row(dst, now)
        if row is not None:
            key = peers.mapping_key(row)
            destination = self._to_sockaddr.get(key)
            if destination is None:
                destination = self._endpoints.sockaddr(key)
            self.out.send_udp(packet, destination)
            self.stats.to_teredo += 1
            return
        reason = self._from_native(packet, dst, now)
        if reason is not None:
            self.drops.count(reason)

    def _from_native(self, packet: bytes, dst: bytes, now: float) -> DropReason | None:
        """Cases 2-3 of section 5.4.1: `dst` is not a valid trusted peer (`send_row` said so)."""
        # Section 5.4.1: only valid Teredo addresses with a global embedded IPv4.
        if dst[:4] != self._prefix:
            return DropReason.NOT_TEREDO_DESTINATION
        mapping = embedded_mapping(dst)
        if not is_global_ipv4(mapping[0]):
            return DropReason.DESTINATION_NOT_GLOBAL_IPV4
        if mapping == self._own_mapping:
            return DropReason.LOOP
        server = int.from_bytes(dst[4:8], "big")
        if not is_global_ipv4(server):
            return DropReason.SERVER_NOT_GLOBAL_IPV4
        peers = self.peers
        row = peers.lookup(dst)
        if row is None:
            # A new peer (case 3): its entry, its packet queued, a first bubble now (always
            # allowed for a new entry, section 5.2.6), unless its server had its share of
            # bubbles: then no state either.
            if not self._server_bubbles.allow(dst[4:8], now):
                return DropReason.RELAY_BUBBLE_LIMIT
            row = peers.insert(dst, now, mapping=mapping, bubble=True)
            if row is None:
                return DropReason.PEER_TABLE_FULL
            self._wanted.discard(row)  # a reused row: the last holder's demand is not ours
            queued = peers.enqueue(row, packet)
            self._send_bubbles(row, dst, server)
            self._ring.push(row, now + BUBBLE_RETRY)
        else:
            if peers.is_trusted(row):
                # Trusted but no longer valid (30 s without reception, section 5.2.4): case 3
                # again.
                peers.untrust(row)
            queued = peers.enqueue(row, packet)
            if peers.may_send_bubble(row, now) and self._server_bubbles.allow(dst[4:8], now):
                self._bubble(row, dst, server, now)
                self._wanted.discard(row)
            else:
                # Within 2 s of the last bubble (or over a limit): the timer may repeat it.
                self._wanted.add(row)
            self._ring.push(row, now + BUBBLE_RETRY)
        if queued:
            self.stats.queued += 1
            return None
        return DropReason.QUEUE_FULL

    def _bubble(self, row: int, peer: bytes, server: int, now: float) -> None:
        """Case 3: an indirect bubble via the peer's server, plus a direct one when configured
        (section 5.4.1); counted against the section 5.2.6 limits."""
        self._send_bubbles(row, peer, server)
        self.peers.record_bubble(row, now)

    def _send_bubbles(self, row: int, peer: bytes, server: int) -> None:
        """The bubbles of `_bubble`, without recording them (the caller does)."""
        # A bubble: the IPv6 header alone, payload length 0, next header 59, hop limit 0 as
        # Miredo sends it (section 2.8; ipv6.build_bubble, written out here).
        bubble = _BUBBLE_HEAD + self.bubble_source(peer) + peer
        cache = self._to_sockaddr
        key = (server << 16) | TEREDO_PORT
        destination = cache.get(key)
        if destination is None:
            destination = self._endpoints.sockaddr(key)
        self.out.send_udp(bubble, destination)
        self.stats.indirect_bubbles += 1
        if self._direct:
            self.out.send_udp(bubble, self._endpoints.sockaddr(self.peers.mapping_key(row)))
            self.stats.direct_bubbles += 1

    # --- Teredo client -> native IPv6 (section 5.4.2) ---------------------------------------

    def receive_udp(self, data: bytes, source: Address, now: float) -> None:
        """One UDP datagram that arrived on the relay's service port."""
        # Hot path: a bare IPv6 packet (no Authentication, no origin: parse_payload's fast
        # path) from a trusted peer's recorded mapping (reception case 1), to a global unicast
        # non-Teredo destination, for a relay. Anything else, or any doubt, takes the full
        # path below, which checks everything again (the peer-table update here is the same
        # there, so doing it twice changes nothing).
        n = len(data)
        if n >= _HEADER and data[0] >> 4 == 6 and not self._host_specific:
            plen = (data[4] << 8) | data[5]
            ipv4 = self._from_host.get(source[0])
            if (
                _HEADER + plen <= n
                and ipv4 is not None
                and (plen or data[6] != _NH_NONE)
                and data[24] & 0xE0 == 0x20
                and data[24:28] != self._prefix
                and self.peers.receive_row(data[8:24], ipv4, source[1], now) is not None
            ):
                # Section 5.4.2: trailers (bytes after the IPv6 packet) never go to the stack.
                self.out.write_tun(data if n == _HEADER + plen else data[: _HEADER + plen])
                self.stats.from_teredo += 1
                return
        reason = self._from_teredo(data, source, now)
        if reason is not None:
            self.drops.count(reason)

    def _from_teredo(self, data: bytes, source: Address, now: float) -> DropReason | None:
        packet = parse_payload(data)
        if isinstance(packet, DropReason):
            return packet
        d = packet.data
        o = packet.ip6_offset
        src = d[o + 8 : o + 24]
        host, port = source
        ipv4 = self._from_host.get(host)
        if ipv4 is None:
            ipv4 = self._endpoints.ipv4_of(host)
            if ipv4 is None:
                return DropReason.BAD_UDP_SOURCE
        peers = self.peers
        # Reception case 1 (hot path): a trusted peer, from its recorded mapping.
        row = peers.receive_row(src, ipv4, port, now)
        if row is None:
            # The slow path: trust, re-mapping, new peers; may give the row or a drop reason.
            got = self._unknown_source(packet, source, ipv4, port, now)
            if isinstance(got, DropReason):
                return got
        plen = packet.ip6_length - _HEADER
        if plen == 0 and d[o + 6] == _NH_NONE:
            self.stats.bubbles_received += 1
            return None  # section 5.4.2: bubbles are never forwarded
        dst = d[o + 24 : o + 40]
        if self._host_specific:
            # Section 5.4: a host-specific relay serves its own addresses and nothing else.
            if dst not in self._own_addresses:
                return DropReason.NOT_OWN_ADDRESS
        else:
            if dst[:4] == self._prefix:
                return DropReason.TEREDO_DESTINATION
            # 2000::/3 (global unicast, RFC 4291 section 2.4) passes at once; the rest is looked
            # at closely.
            if dst[0] & 0xE0 != 0x20:
                kind = _global_ipv6_kind(dst)
                if kind is not None:
                    return kind
        self.out.write_tun(d if o == 0 and len(d) == _HEADER + plen else packet.ipv6_view())
        self.stats.from_teredo += 1
        return None

    def _unknown_source(
        self, packet: TeredoPacket, source: Address, ipv4: int, port: int, now: float
    ) -> int | DropReason:
        """A packet that is not from a trusted peer's recorded mapping (`source`, which is
        `ipv4:port`): its row, a drop reason, or -1 (forwarded from no row: serve_unknown)."""
        src = packet.src
        bubble = packet.is_bubble
        # Section 5.4.2: the source must be a Teredo address...
        if src[:4] != self._prefix:
            return DropReason.NOT_TEREDO_SOURCE
        if not is_global_ipv4(ipv4):
            return DropReason.NOT_GLOBAL_IPV4
        peers = self.peers
        row = peers.lookup(src)
        embedded = embedded_mapping(src)
        remap = embedded != (ipv4, port)
        if remap and not (
            # ...whose embedded mapping is the UDP source; Miredo also takes a bubble from
            # another port of the same IPv4 when it answers our own bubble (its destination is
            # the keyed link-local we used for this peer): a port-symmetric NAT's answer.
            bubble
            and row is not None
            and embedded[0] == ipv4
            and packet.dst == self.bubble_source(src)
        ):
            return DropReason.MAPPING_MISMATCH
        if row is None:
            # Section 5.4.2 MAY drop clients not in the list (Miredo does): only peers that
            # the relay bubbled, and that answered, are served. Serving unknown sources would
            # let a flood of made-up ones reach the native side and fill the table with
            # trusted entries that lock out real clients for 30 s. An anycast relay forwards
            # them (the source checks above passed) but makes no entry: nothing fills.
            if self._serve_unknown and not bubble:
                self.stats.unknown_served += 1
                return -1
            return DropReason.UNKNOWN_PEER_BUBBLE if bubble else DropReason.RELAY_UNKNOWN_PEER
        if peers.is_trusted(row) and peers.is_valid(row, now):
            # Not from the recorded mapping of a valid trusted peer (the fast path said so): a
            # valid entry's mapping never moves on one packet, which anyone may spoof. It may
            # move once the entry is no longer valid (30 s without reception from it), by the
            # rules above: a packet from the embedded mapping, or an answer to our bubble.
            return DropReason.RELAY_MAPPING_CHANGE
        if remap:
            self.stats.remapped += 1
        # A direct answer: the peer is trusted at this mapping, its queue flushed (5.4.1).
        was_trusted = peers.is_trusted(row)
        queued = peers.trust(row, ipv4, port, now)
        if not was_trusted:
            self.stats.trusted += 1
        if queued:
            # The mapping just recorded is where this packet came from.
            for held in queued:
                self.out.send_udp(held, source)
            self.stats.to_teredo += len(queued)
        return row

    # --- timers -----------------------------------------------------------------------------

    def next_deadline(self) -> float | None:
        """When `handle_timer` has work: a bubble retry or an entry to expire."""
        retry = self._ring.first()
        expiry = self.peers.next_expiry()
        if retry is None:
            return expiry
        if expiry is None:
            return retry
        return min(retry, expiry)

    def handle_timer(self, now: float) -> None:
        """Repeat bubbles, give up on silent peers (section 5.4.1), expire idle entries."""
        ring = self._ring
        peers = self.peers
        wanted = self._wanted
        for _ in range(RETRY_BUDGET):
            due = ring.first()
            if due is None or due > now:
                break
            row = ring.pop()
            # The row may have been evicted, or reused by another peer since it was queued:
            # whoever holds it now is judged on its own dates.
            addr = peers.address(row)
            if peers.lookup(addr) != row or peers.is_trusted(row):
                wanted.discard(row)
                continue
            since = now - peers.last_tx(row)
            if peers.bubble_count(row, now) >= 1 + BUBBLE_REPEATS:
                if since >= BUBBLE_RETRY:
                    self._give_up(row, addr, now)
                else:
                    ring.push(row, peers.last_tx(row) + BUBBLE_RETRY)
            elif row not in wanted:
                # No native packet since the last bubble: no repeat (one bubble per packet at
                # most); the peer is given up once nobody has asked for GIVE_UP_IDLE.
                if since >= GIVE_UP_IDLE:
                    self._give_up(row, addr, now)
                else:
                    ring.push(row, now + BUBBLE_RETRY)
            elif (wait := bubble_wait(peers, row, now)) <= now:
                server = int.from_bytes(addr[4:8], "big")
                if self._server_bubbles.allow(addr[4:8], now):
                    self._bubble(row, addr, server, now)
                    wanted.discard(row)
                else:
                    self.drops.count(DropReason.RELAY_BUBBLE_LIMIT)
                ring.push(row, now + BUBBLE_RETRY)
            else:
                ring.push(row, wait)  # fewer than 4 bubbles (above): within the 2 s gap
        peers.expire(now, EXPIRE_BUDGET)

    def _give_up(self, row: int, addr: bytes, now: float) -> None:
        """Section 5.4.1: the queue goes and its packets are answered with ICMPv6 destination
        (address) unreachable, at most `icmpv6_error_rate` a second. The entry itself stays
        (untrusted, it expires 30 s after its last bubble) so that its bubble count, 4 in 300 s
        at most (section 5.2.6), is not reset by the next native packet."""
        queued = self.peers.drain(row)
        self._wanted.discard(row)
        self.stats.given_up += 1
        if queued:
            self.drops.count(DropReason.PEER_UNREACHABLE, len(queued))
        for held in queued:
            # The error comes from the unreachable Teredo address itself: a link-local source
            # would not be forwarded to the sender, and the relay has no address of its own.
            error = unreachable(self._errors, addr, held, now)
            if error is not None:
                self.out.write_tun(error)
                self.stats.unreachables += 1

    def clear(self) -> None:
        """Forget every peer (e.g. when the service port changes)."""
        self.peers.clear()
        self._ring.clear()
        self._wanted.clear()

    def summary(self, *, kernel_to: int = 0, kernel_from: int = 0) -> str:
        """One line of counters for the log (SIGUSR1) and benchmarks; `kernel_to`/`kernel_from`:
        packets the kernel data path forwarded for the core (io/krelay.py), counted in."""
        s = replace(self.stats)
        s.to_teredo += kernel_to
        s.from_teredo += kernel_from
        t = self.peers.stats()
        drops = self.drops.snapshot()
        return (
            f"peers {t.size}/{t.capacity} ({t.trusted} trusted, {t.untrusted} pending, "
            f"{t.queued_bytes} B queued, {t.evicted_untrusted + t.evicted_trusted} evicted, "
            f"{t.refused} refused), to teredo {s.to_teredo}, from teredo {s.from_teredo}, "
            f"queued {s.queued}, bubbles sent {s.indirect_bubbles}+{s.direct_bubbles} "
            f"received {s.bubbles_received}, trusted {s.trusted}, remapped {s.remapped}, "
            f"given up {s.given_up}, unreachables {s.unreachables}, drops {drops or 'none'}"
        )
