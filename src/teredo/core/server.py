"""The Teredo server (RFC 4380 section 5.3), sans I/O.

The server is stateless towards clients: each datagram is checked (section 5.3.1), then either
answered with a Router Advertisement (section 5.3.2), relayed over UDP to a Teredo client with an
origin indication, or handed to the native IPv6 network (a client's ping test, section 5.2.9).
What the driver must do comes out through `ServerTransmit`; drops are counted by reason.

Beyond the RFC, the server must not be an amplifier or a free relay (section 7.4): Router
Solicitations and forwarded packets are rate-limited per source IPv4 and overall, in buckets of
fixed memory, and relayed ICMPv6 is capped in size as Miredo and Microsoft's servers do.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Protocol

from teredo.core.addr import (
    ALL_ROUTERS,
    TEREDO_PORT,
    TEREDO_PREFIX,
    Address,
    EndpointCache,
    embedded_mapping,
    is_global_ipv4,
    server_link_local,
)
from teredo.core.counters import DropCounters, DropReason
from teredo.core.ipv6 import (
    IPV6_MIN_MTU,
    ND_ROUTER_SOLICIT,
    NH_ICMPV6,
    build_ra,
    icmpv6_checksum_ok,
)
from teredo.core.ratelimit import BucketTable, TokenBucket
from teredo.core.wire import AUTH_MIN_LEN, TeredoPacket, build_origin, parse_payload

_AUTH_LEAD = b"\x00\x01\x00\x00"  # Authentication header, nonce-only: ID-len = AU-len = 0
_CONFIRMATION_OK = b"\x00"
_NOT_IPV4 = -2  # EndpointCache.global_ipv4_of: the source is no IPv4 address (BAD_UDP_SOURCE)

# Router Advertisements are cached by RS source address: clients use one of a handful of
# link-local sources (TEREDO-SPEC 1.4), so the RA's IPv6 part, checksum included, is a constant.
_RA_CACHE_LIMIT = 32
_SOURCE_CACHE_LIMIT = 4096
# Confirmation byte (0: RFC 4380 5.2.2) then the origin indication (5.1.1): 00 00, ~port, ~IPv4.
_CONF_ORIGIN = struct.Struct("!BHHI")
#: The largest datagram a server handles: RS, bubbles (with RFC 6081 trailers) and ICMPv6 of at
#: most 88 bytes of payload come nowhere near it (docs/server.md). A driver reads one byte more,
#: so that a longer datagram, cut by the read, is seen and dropped (OVERSIZED).
MAX_DATAGRAM = 2048


@dataclass(frozen=True, slots=True)
class ServerLimits:
    """Abuse limits; the defaults are documented in docs/server.md.

    Rates are per second. Router Solicitations are limited per source IPv4:port (one client),
    then per source IPv4 with all its ports together (a flood from many ports of one host, or
    the thousands of clients behind one carrier-grade NAT: the IPv4 limit is sized so that
    6,000 of them refreshing every 30 s, RFC 4380 section 5.2.7, all get their RAs), then
    overall. Forwarding is limited per source IPv4 and overall.
    """

    rs_rate: float = 5.0
    rs_burst: float = 20.0
    rs_ipv4_rate: float = 200.0
    rs_ipv4_burst: float = 400.0
    rs_total_rate: float = 20000.0
    forward_rate: float = 50.0
    forward_burst: float = 200.0
    forward_total_rate: float = 50000.0
    # Per target (issue 12, reflection): what one client (the embedded IPv4:port) and one
    # IPv4 (a NAT, maybe carrier-grade) may be sent, whoever the (perhaps spoofed) sources are.
    target_rate: float = 50.0
    target_burst: float = 200.0
    target_ipv4_rate: float = 1000.0
    target_ipv4_burst: float = 2000.0
    bucket_slots: int = 65536
    icmpv6_max_payload: int = 88


@dataclass(frozen=True, slots=True)
class ServerParams:
    """What a server needs to know: its two addresses (IPv4 as int), prefix and MTU."""

    primary: int
    secondary: int
    prefix: bytes = TEREDO_PREFIX
    mtu: int = IPV6_MIN_MTU
    limits: ServerLimits = field(default_factory=ServerLimits)

    def check(self) -> str | None:
        """Why these parameters cannot serve (RFC 4380 section 5.3), or None."""
        for name, ipv4 in (("primary", self.primary), ("secondary", self.secondary)):
            if not is_global_ipv4(ipv4):
                dotted = ".".join(str(b) for b in ipv4.to_bytes(4, "big"))
                return f"the {name} address {dotted} is not a global unicast IPv4 address"
        if self.primary == self.secondary:
            return "the primary and secondary addresses are the same"
        if len(self.prefix) != 4:
            return "the prefix must be 32 bits"
        if not IPV6_MIN_MTU <= self.mtu <= 65535:
            return "the MTU must be between 1280 and 65535"
        return None


class ServerTransmit(Protocol):
    """Where the server's output goes (the driver's sockets, or a test's recorder)."""

    def send_udp(self, payload: bytes, destination: Address, from_secondary: bool) -> None:
        """Send from port 3544 of the primary address (or the secondary one)."""

    def send_ipv6(self, packet: bytes) -> None:
        """Send a native IPv6 packet (Miredo uses a raw IPv6 socket)."""


@dataclass(slots=True)
class ServerStats:
    """What the server did, for `status` and metrics."""

    router_advertisements: int = 0
    bubbles_forwarded: int = 0
    packets_forwarded: int = 0
    native_forwarded: int = 0


def router_advertisement(params: ServerParams, destination: bytes) -> bytes:
    """The IPv6 Router Advertisement this server sends to `destination` (section 5.3.2): from
    its link-local address, the Teredo prefix + primary IPv4 as a /64, and its MTU.

    The kernel data path (teredo.io.kserver) is given the one for destination :: and only
    puts in the RS source and adjusts the checksum, so this stays the one place that decides.
    """
    advertised = params.prefix + params.primary.to_bytes(4, "big") + bytes(8)
    return build_ra(server_link_local(params.primary), destination, advertised, mtu=params.mtu)


def _is_global_ipv6(addr16: bytes) -> bool:
    """RFC 4291 section 2.4: not unspecified, loopback, link-local or multicast."""
    first = addr16[0]
    if first == 0xFF:
        return False
    if first == 0xFE and addr16[1] & 0xC0 == 0x80:
        return False
    return not (first == 0 and addr16[:15] == bytes(15) and addr16[15] in (0, 1))


class ServerMachine:
    """Checks and handles every datagram that reaches UDP port 3544 of either server address."""

    def __init__(self, params: ServerParams, out: ServerTransmit) -> None:
        problem = params.check()
        if problem is not None:
            raise ValueError(problem)
        self.params = params
        self.out = out
        self.drops = DropCounters()
        self.stats = ServerStats()
        self._prefix = params.prefix
        self._primary_bytes = params.primary.to_bytes(4, "big")
        self._own = (params.primary, params.secondary)
        self._link_local = server_link_local(params.primary)
        self._ra_cache: dict[bytes, bytes] = {}
        # RS bytes after an Authentication header (nonce-only) -> (RA, cone bit of its source).
        self._rs_known: dict[bytes, tuple[bytes, bool]] = {}
        # One bounded cache converts endpoints where datagrams enter and leave the machine.
        self._endpoints = EndpointCache(_SOURCE_CACHE_LIMIT)
        self._global = self._endpoints.global_ipv4  # read inline on the RS fast path
        limits = params.limits
        # Keyed by (IPv4, port): one client; and by the IPv4 alone: one NAT or one host.
        self._rs_buckets = BucketTable(limits.rs_rate, limits.rs_burst, limits.bucket_slots)
        self._rs_ipv4 = BucketTable(limits.rs_ipv4_rate, limits.rs_ipv4_burst, limits.bucket_slots)
        self._rs_total = TokenBucket(limits.rs_total_rate, limits.rs_total_rate)
        self._fwd_buckets = BucketTable(
            limits.forward_rate, limits.forward_burst, limits.bucket_slots
        )
        self._fwd_total = TokenBucket(limits.forward_total_rate, limits.forward_total_rate)
        self._target = BucketTable(limits.target_rate, limits.target_burst, limits.bucket_slots)
        self._target_ipv4 = BucketTable(
            limits.target_ipv4_rate, limits.target_ipv4_burst, limits.bucket_slots
        )
        self._icmp_cap = limits.icmpv6_max_payload

    def receive(self, data: bytes, source: Address, on_secondary: bool, now: float) -> None:
        """One UDP datagram that arrived on the primary (or secondary) address."""
        # Fast path for the bulk of a server's work, the RS of a qualifying or refreshing
        # client: an RS whose bytes after the nonce equal an RS that passed every check before
        # passes the same checks again (they depend on those bytes only), so only what depends
        # on the IPv4 source is left to check. The nonce (bytes 4-11 of the Authentication
        # header) and confirmation byte vary per RS and take no part in the checks.
        if data[:4] == _AUTH_LEAD:
            known = self._rs_known.get(data[AUTH_MIN_LEN:])
            if known is not None:
                host, port = source
                source_ipv4 = self._global.get(host)
                if source_ipv4 is None:
                    source_ipv4 = self._endpoints.global_ipv4_of(host)
                if source_ipv4 < 0:  # check 3
                    self.drops.count(
                        DropReason.BAD_UDP_SOURCE
                        if source_ipv4 == _NOT_IPV4
                        else DropReason.NOT_GLOBAL_IPV4
                    )
                elif port == TEREDO_PORT and source_ipv4 in self._own:
                    self.drops.count(DropReason.LOOP)
                elif not (self._rs_allowed(source, now)):
                    self.drops.count(DropReason.RS_RATE_LIMITED)
                else:
                    ra, cone = known
                    # Authentication header with the RS nonce (data[:12]), confirmation 0,
                    # origin indication, then the cached RA (section 5.3.2).
                    origin = _CONF_ORIGIN.pack(0, 0, port ^ 0xFFFF, source_ipv4 ^ 0xFFFFFFFF)
                    self.out.send_udp(data[:12] + origin + ra, source, on_secondary ^ cone)
                    self.stats.router_advertisements += 1
                return
        reason = self._receive(data, source, on_secondary, now)
        if reason is not None:
            self.drops.count(reason)

    def _rs_allowed(self, source: Address, now: float) -> bool:
        """The RS limits (RFC 4380 section 7.4: no amplifier): per client socket, per IPv4,
        overall. Never keyed on the IPv4 alone for one client: behind a carrier-grade NAT
        thousands of clients share it and must all keep refreshing."""
        return (
            self._rs_buckets.allow(source, now)
            and self._rs_ipv4.allow(source[0], now)
            and self._rs_total.allow(now)
        )

    def _receive(
        self, data: bytes, source: Address, on_secondary: bool, now: float
    ) -> DropReason | None:
        if len(data) > MAX_DATAGRAM:
            return DropReason.OVERSIZED  # off the RS fast path: no known RS is this long
        # Check 1: a well-formed Teredo packet (section 5.3.1; the codec's drop reasons).
        packet = parse_payload(data)
        if isinstance(packet, DropReason):
            return packet
        d = packet.data
        o = packet.ip6_offset
        next_header = d[o + 6]
        bubble = next_header == 59 and packet.ip6_length == 40
        # Check 2: only bubbles and ICMPv6 pass through a server.
        if not bubble and next_header != NH_ICMPV6:
            return DropReason.NOT_BUBBLE_OR_ICMPV6
        # Check 3: the IPv4 source must be global unicast.
        host, port = source
        source_ipv4 = self._endpoints.ipv4_of(host)
        if source_ipv4 is None:
            return DropReason.BAD_UDP_SOURCE
        if not is_global_ipv4(source_ipv4):
            return DropReason.NOT_GLOBAL_IPV4
        src = d[o + 8 : o + 24]
        dst = d[o + 24 : o + 40]
        # Check 4: a Router Solicitation from a link-local source to all-routers.
        if src[0] == 0xFE and src[1] & 0xC0 == 0x80 and dst == ALL_ROUTERS:
            if next_header != NH_ICMPV6 or packet.ip6_length < 48 or d[o + 40] != ND_ROUTER_SOLICIT:
                return DropReason.NOT_FOR_SERVER
        elif src[:4] == self._prefix:
            # Check 5: a Teredo source whose embedded mapping is the UDP source.
            if embedded_mapping(src) != (source_ipv4, port):
                return DropReason.MAPPING_MISMATCH
        elif not (dst[:4] == self._prefix and dst[4:8] == self._primary_bytes):
            # Check 6 failed (a non-Teredo source may only reach our own clients); check 7.
            return DropReason.NOT_ACCEPTED
        # Miredo's loop guard: nothing from our own port 3544 is ever processed.
        if port == TEREDO_PORT and source_ipv4 in self._own:
            return DropReason.LOOP
        if dst in (ALL_ROUTERS, self._link_local):
            return self._answer_rs(packet, source, source_ipv4, on_secondary, now)
        # Section 5.3.1: never forward to a non-global IPv6 destination.
        if not _is_global_ipv6(dst):
            return DropReason.NOT_GLOBAL_DESTINATION
        if not bubble and packet.ip6_length - 40 > self._icmp_cap:
            return DropReason.ICMPV6_TOO_LARGE
        if not (self._fwd_buckets.allow(host, now) and self._fwd_total.allow(now)):
            return DropReason.FORWARD_RATE_LIMITED
        if dst[:4] != self._prefix:
            # A client's ping test to a native host (section 5.2.9) goes out natively.
            self.out.send_ipv6(packet.ipv6)
            self.stats.native_forwarded += 1
            return None
        target_ipv4, target_port = embedded_mapping(dst)
        if not is_global_ipv4(target_ipv4):
            return DropReason.DESTINATION_NOT_GLOBAL_IPV4
        destination = self._endpoints.sockaddr_of(target_ipv4, target_port)
        # Per target: spoofed sources, each under its own limit, must not aim the forwarded
        # bubbles at one victim (RFC 4380 section 7.4: no amplifier or reflector).
        if not (
            self._target.allow(destination, now) and self._target_ipv4.allow(destination[0], now)
        ):
            return DropReason.FORWARD_RATE_LIMITED
        # The IPv6 packet travels on with whatever RFC 6081 trailers followed it; an origin
        # indication tells our own client who sent it (section 5.3.1, last paragraph).
        payload = d[o:]
        if dst[4:8] == self._primary_bytes:
            payload = build_origin(source_ipv4, port) + payload
        self.out.send_udp(payload, destination, False)
        if bubble:
            self.stats.bubbles_forwarded += 1
        else:
            self.stats.packets_forwarded += 1
        return None

    def _answer_rs(
        self,
        packet: TeredoPacket,
        source: Address,
        source_ipv4: int,
        on_secondary: bool,
        now: float,
    ) -> DropReason | None:
        """Section 5.3.2, after the RS checks of RFC 4861 section 6.1.1."""
        d = packet.data
        o = packet.ip6_offset
        src = d[o + 8 : o + 24]
        message = d[o + 40 : o + packet.ip6_length]
        if (
            d[o + 6] != NH_ICMPV6
            or len(message) < 8
            or message[0] != ND_ROUTER_SOLICIT
            or message[1] != 0
        ):
            return DropReason.NOT_FOR_SERVER
        if d[o + 7] != 255 or not icmpv6_checksum_ok(src, d[o + 24 : o + 40], message):
            return DropReason.BAD_ROUTER_SOLICITATION
        if not (self._rs_allowed(source, now)):
            return DropReason.RS_RATE_LIMITED
        ra = self._ra_cache.get(src)
        if ra is None:
            ra = router_advertisement(self.params, src)
            if len(self._ra_cache) < _RA_CACHE_LIMIT:
                self._ra_cache[src] = ra
        # The nonce is echoed in an Authentication header when the RS had one (5.2.2; Miredo's
        # clients drop an RA without it). The origin indication carries the client's mapping.
        nonce = packet.nonce
        auth = b"" if nonce is None else _AUTH_LEAD + nonce + _CONFIRMATION_OK
        payload = auth + build_origin(source_ipv4, source[1]) + ra
        # A cone RS (C bit of its source) is answered from the other address (5.3.2).
        cone = bool(src[8] & 0x80)
        self.out.send_udp(payload, source, on_secondary ^ cone)
        if (
            packet.auth_offset == 0
            and d[:4] == _AUTH_LEAD
            and o == AUTH_MIN_LEN
            and len(self._rs_known) < _RA_CACHE_LIMIT
        ):
            # Every check of this RS passed and depended only on d[13:] (see `receive`).
            self._rs_known[d[AUTH_MIN_LEN:]] = (ra, cone)
        self.stats.router_advertisements += 1
        return None
