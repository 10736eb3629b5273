"""The IPv6 packets Teredo itself makes and reads: header, ICMPv6 checksum, RS, RA, echo,
destination unreachable and bubbles (RFC 4380 sections 2.8, 5.1-5.3; RFC 4861; RFC 4443).

Addresses are 16 raw bytes. Builders return whole IPv6 packets (header included) as `bytes`;
parsers take a whole IPv6 packet (exactly 40 + payload length bytes, as `wire.TeredoPacket.ipv6`
gives it) and return a small frozen record or a `DropReason`, never raising on any input.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import NamedTuple

from teredo.core.addr import ALL_ROUTERS, LINK_LOCAL_RESTRICTED
from teredo.core.counters import DropReason

IPV6_HEADER_LEN = 40
IPV6_MIN_MTU = 1280  # RFC 8200 section 5; the Teredo link MTU (RFC 4380 section 5.1.2)
NH_ICMPV6 = 58
NH_NONE = 59  # "no next header": bubbles (RFC 4380 section 2.8)
NH_TCP = 6

ICMPV6_DST_UNREACH = 1
ICMPV6_ECHO_REQUEST = 128
ICMPV6_ECHO_REPLY = 129
ND_ROUTER_SOLICIT = 133
ND_ROUTER_ADVERT = 134
ND_OPT_PREFIX_INFORMATION = 3
ND_OPT_MTU = 5

# Destination Unreachable codes (RFC 4443 section 3.1).
UNREACH_NO_ROUTE = 0
UNREACH_ADMIN = 1
UNREACH_ADDRESS = 3
UNREACH_PORT = 4

PIO_FLAG_ONLINK = 0x80
PIO_FLAG_AUTONOMOUS = 0x40

_HEADER = struct.Struct("!IHBB16s16s")
_RA_BODY = struct.Struct("!BBHBBHII")  # type, code, cksum, cur hop limit, flags, lifetime, ...
_PIO = struct.Struct("!BBBBIII16s")  # type, len, prefix length, flags, valid, preferred, 0, prefix
_MTU_OPT = struct.Struct("!BBHI")
_ECHO = struct.Struct("!BBHHH")


# --- header ------------------------------------------------------------------------------------


def pack_header(
    src: bytes,
    dst: bytes,
    payload_length: int,
    next_header: int,
    hop_limit: int,
    *,
    traffic_class: int = 0,
    flow_label: int = 0,
) -> bytes:
    """The 40-byte IPv6 header (RFC 8200 section 3)."""
    first = (6 << 28) | ((traffic_class & 0xFF) << 20) | (flow_label & 0xFFFFF)
    return _HEADER.pack(first, payload_length, next_header, hop_limit, src, dst)


class IPv6Header(NamedTuple):
    """The fixed header. A NamedTuple, not a dataclass: built per packet where it is used, and
    a tuple costs a fraction of a frozen dataclass's field-by-field initialisation."""

    traffic_class: int
    flow_label: int
    payload_length: int
    next_header: int
    hop_limit: int
    src: bytes
    dst: bytes

    def pack(self) -> bytes:
        return pack_header(
            self.src,
            self.dst,
            self.payload_length,
            self.next_header,
            self.hop_limit,
            traffic_class=self.traffic_class,
            flow_label=self.flow_label,
        )


def parse_header(packet: bytes | memoryview) -> IPv6Header | DropReason:
    """Read the fixed header; checks the version and that the payload length fits."""
    if len(packet) < IPV6_HEADER_LEN:
        return DropReason.TOO_SHORT
    first, plen, nxt, hlim, src, dst = _HEADER.unpack_from(packet, 0)
    if first >> 28 != 6:
        return DropReason.NOT_IPV6
    if IPV6_HEADER_LEN + plen > len(packet):
        return DropReason.BAD_PAYLOAD_LENGTH
    return IPv6Header((first >> 20) & 0xFF, first & 0xFFFFF, plen, nxt, hlim, src, dst)


# --- ICMPv6 checksum (RFC 4443 section 2.3, pseudo-header RFC 8200 section 8.1) --------------


def _ones_sum(data: bytes) -> int:
    """The 16-bit ones' complement sum of `data` (zero-padded to even length), in 0..0xFFFF.

    A big-endian byte string read as one integer is the sum of its 16-bit words times powers
    of 65536, and 65536 = 1 (mod 65535): so the integer mod 65535 is the end-around-carry sum.
    One C-level conversion instead of a Python loop over words.
    """
    if len(data) & 1:
        data += b"\x00"
    total = int.from_bytes(data, "big")
    if total == 0:
        return 0
    r = total % 0xFFFF
    return r if r else 0xFFFF


def _pseudo_header(src: bytes, dst: bytes, length: int, next_header: int) -> bytes:
    return src + dst + length.to_bytes(4, "big") + b"\x00\x00\x00" + bytes((next_header,))


def icmpv6_checksum(src: bytes, dst: bytes, message: bytes | memoryview) -> int:
    """Checksum of an ICMPv6 message whose checksum field (bytes 2-3) is zero."""
    body = bytes(message)
    s = _ones_sum(_pseudo_header(src, dst, len(body), NH_ICMPV6) + body)
    return ~s & 0xFFFF


def icmpv6_checksum_ok(src: bytes, dst: bytes, message: bytes | memoryview) -> bool:
    """True when the message, checksum field included, sums to 0xFFFF over the pseudo-header."""
    body = bytes(message)
    return _ones_sum(_pseudo_header(src, dst, len(body), NH_ICMPV6) + body) == 0xFFFF


def build_icmpv6(
    src: bytes,
    dst: bytes,
    message: bytes,
    *,
    hop_limit: int = 255,
    traffic_class: int = 0,
    flow_label: int = 0,
) -> bytes:
    """An IPv6 packet carrying `message`; its checksum field (bytes 2-3) is computed here."""
    body = message[:2] + b"\x00\x00" + message[4:]
    cksum = icmpv6_checksum(src, dst, body)
    body = body[:2] + cksum.to_bytes(2, "big") + body[4:]
    header = pack_header(
        src,
        dst,
        len(body),
        NH_ICMPV6,
        hop_limit,
        traffic_class=traffic_class,
        flow_label=flow_label,
    )
    return header + body


def _icmpv6_message(
    packet: bytes | memoryview, verify_checksum: bool
) -> tuple[IPv6Header, bytes] | DropReason:
    """Header and ICMPv6 message of `packet` (ICMPv6 directly after the fixed header)."""
    hdr = parse_header(packet)
    if isinstance(hdr, DropReason):
        return hdr
    if hdr.next_header != NH_ICMPV6:
        return DropReason.NOT_ICMPV6
    msg = bytes(packet[IPV6_HEADER_LEN : IPV6_HEADER_LEN + hdr.payload_length])
    if len(msg) < 4:
        return DropReason.BAD_ICMPV6
    if verify_checksum and not icmpv6_checksum_ok(hdr.src, hdr.dst, msg):
        return DropReason.BAD_CHECKSUM
    return hdr, msg


# --- bubbles (RFC 4380 section 2.8) ------------------------------------------------------------


def build_bubble(src: bytes, dst: bytes, *, hop_limit: int = 0) -> bytes:
    """A bubble: IPv6 header only, payload length 0, next header 59.

    Miredo sends hop limit 0 (nothing routes a bubble); receivers never check it.
    """
    return pack_header(src, dst, 0, NH_NONE, hop_limit)


def is_bubble(packet: bytes | memoryview) -> bool:
    """True for an IPv6 packet that is a bubble (payload length 0, next header 59)."""
    return (
        len(packet) >= IPV6_HEADER_LEN
        and packet[4] == 0
        and packet[5] == 0
        and packet[6] == NH_NONE
    )


# --- Router Solicitation (RFC 4861 section 4.1, RFC 4380 section 5.2.1) -----------------------


def build_rs(
    src: bytes = LINK_LOCAL_RESTRICTED,
    dst: bytes = ALL_ROUTERS,
    *,
    options: bytes = b"",
    hop_limit: int = 255,
) -> bytes:
    """RS from a Teredo link-local source to ff02::2. Miredo sends no option (61-byte
    UDP payload with its 13-byte Authentication header)."""
    return build_icmpv6(
        src, dst, bytes((ND_ROUTER_SOLICIT, 0, 0, 0, 0, 0, 0, 0)) + options, hop_limit=hop_limit
    )


@dataclass(frozen=True, slots=True)
class RouterSolicitation:
    src: bytes
    dst: bytes
    hop_limit: int
    options: bytes  # raw ND options, validated for length


def _check_options(options: bytes) -> bool:
    """Every ND option has a non-zero length that stays inside the message (RFC 4861 4.6)."""
    off = 0
    n = len(options)
    while off < n:
        if n - off < 2:
            return False
        olen = options[off + 1] * 8
        if olen == 0 or off + olen > n:
            return False
        off += olen
    return True


def parse_rs(
    packet: bytes | memoryview, *, verify_checksum: bool = True
) -> RouterSolicitation | DropReason:
    got = _icmpv6_message(packet, verify_checksum)
    if isinstance(got, DropReason):
        return got
    hdr, msg = got
    if len(msg) < 8 or msg[0] != ND_ROUTER_SOLICIT or msg[1] != 0:
        return DropReason.BAD_ICMPV6
    options = msg[8:]
    if not _check_options(options):
        return DropReason.BAD_ND_OPTION
    return RouterSolicitation(hdr.src, hdr.dst, hdr.hop_limit, options)


# --- Router Advertisement (RFC 4861 section 4.2, RFC 4380 sections 5.2.1, 5.3.2) --------------


@dataclass(frozen=True, slots=True)
class RouterAdvertisement:
    """An RA as Teredo uses it: exactly one /64 Prefix Information option, maybe an MTU.

    Defaults are what miredo-server sends (TEREDO-SPEC 2.3): router lifetime 0 (a Teredo server
    is not a default router), retrans timer 2000 ms, PIO flag A, infinite lifetimes.
    """

    src: bytes
    dst: bytes
    prefix: bytes  # the 16-byte prefix field of the PIO (Teredo prefix + server IPv4 + zeros)
    mtu: int | None = IPV6_MIN_MTU
    hop_limit: int = 255
    cur_hop_limit: int = 0
    flags: int = 0
    router_lifetime: int = 0
    reachable_time: int = 0
    retrans_timer: int = 2000
    prefix_flags: int = PIO_FLAG_AUTONOMOUS
    valid_lifetime: int = 0xFFFFFFFF
    preferred_lifetime: int = 0xFFFFFFFF

    def pack(self) -> bytes:
        return build_ra(
            self.src,
            self.dst,
            self.prefix,
            mtu=self.mtu,
            hop_limit=self.hop_limit,
            cur_hop_limit=self.cur_hop_limit,
            flags=self.flags,
            router_lifetime=self.router_lifetime,
            reachable_time=self.reachable_time,
            retrans_timer=self.retrans_timer,
            prefix_flags=self.prefix_flags,
            valid_lifetime=self.valid_lifetime,
            preferred_lifetime=self.preferred_lifetime,
        )


def build_ra(
    src: bytes,
    dst: bytes,
    prefix: bytes,
    *,
    mtu: int | None = IPV6_MIN_MTU,
    hop_limit: int = 255,
    cur_hop_limit: int = 0,
    flags: int = 0,
    router_lifetime: int = 0,
    reachable_time: int = 0,
    retrans_timer: int = 2000,
    prefix_flags: int = PIO_FLAG_AUTONOMOUS,
    valid_lifetime: int = 0xFFFFFFFF,
    preferred_lifetime: int = 0xFFFFFFFF,
) -> bytes:
    """RA with one /64 PIO then (unless mtu is None) an MTU option, in Miredo's order."""
    msg = _RA_BODY.pack(
        ND_ROUTER_ADVERT,
        0,
        0,
        cur_hop_limit,
        flags,
        router_lifetime,
        reachable_time,
        retrans_timer,
    ) + _PIO.pack(
        ND_OPT_PREFIX_INFORMATION,
        4,
        64,
        prefix_flags,
        valid_lifetime,
        preferred_lifetime,
        0,
        prefix,
    )
    if mtu is not None:
        msg += _MTU_OPT.pack(ND_OPT_MTU, 1, 0, mtu)
    return build_icmpv6(src, dst, msg, hop_limit=hop_limit)


def parse_ra(
    packet: bytes | memoryview, *, verify_checksum: bool = True
) -> RouterAdvertisement | DropReason:
    """Validate an RA as Miredo's teredo_parse_ra does (RFC 4380 section 5.2.1):

    ICMPv6 134/0; options walked while 8 bytes remain, each with a non-zero length inside the
    message; exactly one Prefix Information option, of prefix length 64; an MTU option, if
    any, within 1280..65535. Whether the prefix is Teredo and names our server, and whether
    the destination is our RS source, is for the client to check (it knows both).
    """
    got = _icmpv6_message(packet, verify_checksum)
    if isinstance(got, DropReason):
        return got
    hdr, msg = got
    if len(msg) < 16 or msg[0] != ND_ROUTER_ADVERT or msg[1] != 0:
        return DropReason.BAD_ICMPV6
    if len(msg) < 16 + 32:
        return DropReason.BAD_PREFIX_INFO  # no room for the mandatory PIO
    _t, _c, _ck, cur_hop, ra_flags, lifetime, reachable, retrans = _RA_BODY.unpack_from(msg, 0)
    prefix: bytes | None = None
    pflags = valid = preferred = 0
    mtu: int | None = None
    off = 16
    n = len(msg)
    while n - off >= 8:
        otype = msg[off]
        olen = msg[off + 1] * 8
        if olen == 0 or off + olen > n:
            return DropReason.BAD_ND_OPTION
        if otype == ND_OPT_PREFIX_INFORMATION:
            if olen < 32:
                return DropReason.BAD_PREFIX_INFO
            if msg[off + 2] != 64 or prefix is not None:  # one /64 only (RFC 4380 5.2.1)
                return DropReason.BAD_PREFIX_INFO
            _ot, _ol, _pl, pflags, valid, preferred, _r, prefix = _PIO.unpack_from(msg, off)
        elif otype == ND_OPT_MTU:
            value = int.from_bytes(msg[off + 4 : off + 8], "big")
            if not IPV6_MIN_MTU <= value <= 0xFFFF:
                return DropReason.BAD_MTU_OPTION
            mtu = value
        off += olen
    if prefix is None:
        return DropReason.BAD_PREFIX_INFO
    return RouterAdvertisement(
        src=hdr.src,
        dst=hdr.dst,
        prefix=prefix,
        mtu=mtu,
        hop_limit=hdr.hop_limit,
        cur_hop_limit=cur_hop,
        flags=ra_flags,
        router_lifetime=lifetime,
        reachable_time=reachable,
        retrans_timer=retrans,
        prefix_flags=pflags,
        valid_lifetime=valid,
        preferred_lifetime=preferred,
    )


# --- Echo Request / Reply (RFC 4443 section 4) -------------------------------------------------


@dataclass(frozen=True, slots=True)
class Echo:
    src: bytes
    dst: bytes
    reply: bool
    identifier: int
    sequence: int
    data: bytes
    hop_limit: int = 64
    traffic_class: int = 0
    flow_label: int = 0

    def pack(self) -> bytes:
        return build_echo(
            self.src,
            self.dst,
            self.identifier,
            self.sequence,
            self.data,
            reply=self.reply,
            hop_limit=self.hop_limit,
            traffic_class=self.traffic_class,
            flow_label=self.flow_label,
        )


def build_echo(
    src: bytes,
    dst: bytes,
    identifier: int,
    sequence: int,
    data: bytes = b"",
    *,
    reply: bool = False,
    hop_limit: int = 64,
    traffic_class: int = 0,
    flow_label: int = 0,
) -> bytes:
    """Echo Request (or Reply). The ping test (RFC 4380 section 5.2.9) carries its nonce in
    `data`; Miredo uses hop limit 128 for it."""
    kind = ICMPV6_ECHO_REPLY if reply else ICMPV6_ECHO_REQUEST
    msg = _ECHO.pack(kind, 0, 0, identifier, sequence) + data
    return build_icmpv6(
        src, dst, msg, hop_limit=hop_limit, traffic_class=traffic_class, flow_label=flow_label
    )


def parse_echo(packet: bytes | memoryview, *, verify_checksum: bool = True) -> Echo | DropReason:
    got = _icmpv6_message(packet, verify_checksum)
    if isinstance(got, DropReason):
        return got
    hdr, msg = got
    if len(msg) < 8 or msg[0] not in (ICMPV6_ECHO_REQUEST, ICMPV6_ECHO_REPLY) or msg[1] != 0:
        return DropReason.BAD_ICMPV6
    _t, _c, _ck, ident, seq = _ECHO.unpack_from(msg, 0)
    return Echo(
        hdr.src,
        hdr.dst,
        msg[0] == ICMPV6_ECHO_REPLY,
        ident,
        seq,
        msg[8:],
        hdr.hop_limit,
        hdr.traffic_class,
        hdr.flow_label,
    )


# --- Destination Unreachable (RFC 4443 section 3.1) --------------------------------------------

# The error and the quoted packet together fit the minimum MTU (RFC 4443 section 2.4 (c)).
MAX_QUOTED = IPV6_MIN_MTU - IPV6_HEADER_LEN - 8


@dataclass(frozen=True, slots=True)
class Unreachable:
    src: bytes
    dst: bytes
    code: int
    quoted: bytes  # as much of the offending packet as fits in 1280 bytes
    hop_limit: int = 255

    def pack(self) -> bytes:
        return build_unreachable(
            self.src, self.dst, self.code, self.quoted, hop_limit=self.hop_limit
        )


def build_unreachable(
    src: bytes, dst: bytes, code: int, original: bytes | memoryview, *, hop_limit: int = 255
) -> bytes:
    """Destination Unreachable quoting `original`, cut so the whole packet is <= 1280 bytes."""
    msg = bytes((ICMPV6_DST_UNREACH, code, 0, 0, 0, 0, 0, 0)) + bytes(original[:MAX_QUOTED])
    return build_icmpv6(src, dst, msg, hop_limit=hop_limit)


def parse_unreachable(
    packet: bytes | memoryview, *, verify_checksum: bool = True
) -> Unreachable | DropReason:
    got = _icmpv6_message(packet, verify_checksum)
    if isinstance(got, DropReason):
        return got
    hdr, msg = got
    if len(msg) < 8 or msg[0] != ICMPV6_DST_UNREACH:
        return DropReason.BAD_ICMPV6
    return Unreachable(hdr.src, hdr.dst, msg[1], msg[8:], hdr.hop_limit)


_TCP_HEADER_MIN = 20


def tcp_retransmit_key(packet: bytes, at: int = 0) -> bytes | None:
    """What a retransmission of the TCP segment in the IPv6 packet at `packet[at:]` has in
    common with the original, or None when it is no TCP segment right after the IPv6 header
    (extension headers, fragments: None). The addresses, ports, sequence number, flags and
    segment length (RFC 9293 3.1): a retransmission repeats them, its timestamp option, ACK
    and window may be newer. For a queue that holds packets while a peer is checked (core/
    peers.py): the newest copy of a segment replaces the older ones."""
    n = len(packet) - at
    if n < IPV6_HEADER_LEN + _TCP_HEADER_MIN or packet[at] >> 4 != 6 or packet[at + 6] != NH_TCP:
        return None
    payload = (packet[at + 4] << 8) | packet[at + 5]
    if IPV6_HEADER_LEN + payload > n:
        return None
    t = at + IPV6_HEADER_LEN
    offset = (packet[t + 12] >> 4) * 4
    if offset < _TCP_HEADER_MIN or offset > payload:
        return None
    segment = payload - offset
    return (
        packet[:at]
        + packet[at + 8 : at + 40]
        + packet[t : t + 8]
        + bytes((packet[t + 13],))
        + segment.to_bytes(2, "big")
    )
