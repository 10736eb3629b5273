"""The Teredo UDP payload (RFC 4380 sections 5.1.1, 2.8; RFC 6081 section 4 trailers).

    | Authentication (13 + ID + AU) |  optional, always first (RFC 4380 5.1.1)
    | Origin Indication (8)         |  optional, only servers add it
    | IPv6 packet (40 + plen)       |
    | trailers (TLV ...)            |  optional, RFC 6081; the client drops malformed ones

`parse_payload` is on the hot path of every role: it checks the structure (TEREDO-SPEC 2.4),
allocates one small `TeredoPacket` holding offsets into the datagram, and leaves the rest
(nonce, origin, trailers) to properties computed when asked. It never raises on any input.
Trailers are checked only by the client (`TeredoPacket.trailers`), the role that uses them.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import TypeVar

from teredo.core.counters import DropReason

AUTH_MIN_LEN = 13  # 00 01, ID-len, AU-len, nonce (8), confirmation (1)
ORIGIN_LEN = 8
IPV6_HEADER_LEN = 40

TRAILER_NONCE = 0x01
TRAILER_ALTERNATE_ADDRESS = 0x03
TRAILER_ND_OPTION = 0x04
TRAILER_RANDOM_PORT = 0x05

ND_SOLICITATION = 0  # DiscoveryType of the Neighbor Discovery Option trailer
ND_ADVERTISEMENT = 1

_ORIGIN = struct.Struct("!HHI")  # 00 00, port ^ 0xFFFF, IPv4 ^ 0xFFFFFFFF
_OBF = struct.Struct("!HI")
_T = TypeVar("_T")
_ALT = struct.Struct("!IH")  # alternate address: IPv4 then port, in clear (MS-TERE 2.2.2)


# --- builders ----------------------------------------------------------------------------------


def build_auth(
    nonce: bytes, *, client_id: bytes = b"", auth_value: bytes = b"", confirmation: int = 0
) -> bytes:
    """Authentication header (RFC 4380 section 5.1.1). Nonce-only (13 bytes) is what Miredo
    and public servers use; a client sends confirmation 0."""
    if len(nonce) != 8:
        raise ValueError("the nonce is 8 bytes")
    if len(client_id) > 255 or len(auth_value) > 255:
        raise ValueError("client id and authentication value are at most 255 bytes")
    if not 0 <= confirmation <= 255:
        raise ValueError("the confirmation is one byte")
    return (
        bytes((0, 1, len(client_id), len(auth_value)))
        + client_id
        + auth_value
        + nonce
        + bytes((confirmation,))
    )


def build_origin(ipv4: int, port: int) -> bytes:
    """Origin Indication: 00 00, port ^ 0xFFFF, IPv4 ^ 0xFFFFFFFF (RFC 4380 section 5.1.1)."""
    return _ORIGIN.pack(0, port ^ 0xFFFF, ipv4 ^ 0xFFFFFFFF)


def encapsulate(
    ipv6: bytes | memoryview,
    *,
    auth: bytes = b"",
    origin: bytes = b"",
    trailers: bytes = b"",
) -> bytes:
    """UDP payload from pre-built parts, in the RFC order: Auth, then origin, then IPv6."""
    return b"".join((auth, origin, ipv6, trailers))


# --- parsed records ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AuthHeader:
    nonce: bytes
    client_id: bytes = b""
    auth_value: bytes = b""
    confirmation: int = 0

    def pack(self) -> bytes:
        return build_auth(
            self.nonce,
            client_id=self.client_id,
            auth_value=self.auth_value,
            confirmation=self.confirmation,
        )


def parse_auth(data: bytes | memoryview) -> tuple[AuthHeader, int] | DropReason:
    """An Authentication header at the start of `data`, and its length."""
    n = len(data)
    if n < 4 or data[0] != 0 or data[1] != 1:
        return DropReason.BAD_AUTH if n >= 2 else DropReason.TRUNCATED_AUTH
    id_len = data[2]
    au_len = data[3]
    end = AUTH_MIN_LEN + id_len + au_len
    if n < end:
        return DropReason.TRUNCATED_AUTH
    nonce_at = 4 + id_len + au_len
    return (
        AuthHeader(
            bytes(data[nonce_at : nonce_at + 8]),
            bytes(data[4 : 4 + id_len]),
            bytes(data[4 + id_len : nonce_at]),
            data[end - 1],
        ),
        end,
    )


def parse_origin(data: bytes | memoryview) -> tuple[int, int] | DropReason:
    """(IPv4, port) of an Origin Indication at the start of `data`."""
    if len(data) < ORIGIN_LEN:
        return DropReason.TRUNCATED_ORIGIN
    zero, port, ipv4 = _ORIGIN.unpack_from(data, 0)
    if zero != 0:
        return DropReason.NOT_IPV6
    return ipv4 ^ 0xFFFFFFFF, port ^ 0xFFFF


# --- RFC 6081 trailers -------------------------------------------------------------------------
# Type-length-value records after the IPv6 packet, inside the UDP payload (RFC 6081 section 4;
# ../shared/spec/RFC6081-NOTES.md "Trailers"). The types and layouts below are marked [unsure]
# in the notes except Alternate Address, which MS-TERE 2.2.2 confirms (length 8, 14, 20 or 26:
# 2 reserved bytes, then 1-4 (IPv4, port) pairs in clear, port never 0). An RFC 4380 receiver
# that honours the IPv6 payload length never sees them; ours parses them only in the client,
# the one role that acts on them (relays and servers pass or ignore them).


def _check_port(port: int, *, nonzero: bool = True) -> None:
    if not (1 if nonzero else 0) <= port <= 0xFFFF:
        raise ValueError(f"port {port} out of range")


@dataclass(frozen=True, slots=True)
class NonceTrailer:
    """Type 0x01, length 4: a 32-bit nonce (Symmetric NAT Support ties a direct bubble to the
    indirect one with it [unsure])."""

    nonce: bytes

    def pack(self) -> bytes:
        if len(self.nonce) != 4:
            raise ValueError("the nonce trailer carries 4 bytes")
        return bytes((TRAILER_NONCE, 4)) + self.nonce


@dataclass(frozen=True, slots=True)
class AlternateAddressTrailer:
    """Type 0x03: 2 reserved bytes, then 1-4 (IPv4, port) pairs in clear (MS-TERE 2.2.2;
    Hairpinning: the sender's local addresses)."""

    addresses: tuple[tuple[int, int], ...]

    def pack(self) -> bytes:
        if not 1 <= len(self.addresses) <= MAX_ALTERNATE_ADDRESSES:
            raise ValueError("an alternate address trailer holds 1 to 4 addresses")
        for ip, port in self.addresses:
            if not 0 <= ip <= 0xFFFFFFFF:
                raise ValueError(f"IPv4 {ip} out of range")
            _check_port(port)
        body = b"".join(_ALT.pack(ip, port) for ip, port in self.addresses)
        return bytes((TRAILER_ALTERNATE_ADDRESS, 2 + len(body), 0, 0)) + body


@dataclass(frozen=True, slots=True)
class NeighborDiscoveryTrailer:
    """Type 0x04, length 4: DiscoveryType (0 solicitation, 1 advertisement) + 3 reserved
    bytes (Server Load Reduction [unsure])."""

    discovery_type: int

    def pack(self) -> bytes:
        if not 0 <= self.discovery_type <= 0xFF:
            raise ValueError("the discovery type is one byte")
        return bytes((TRAILER_ND_OPTION, 4, self.discovery_type, 0, 0, 0))


@dataclass(frozen=True, slots=True)
class RandomPortTrailer:
    """Type 0x05, length 2: the UDP port the sender will use (port-preserving and sequential
    symmetric NATs [unsure])."""

    port: int

    def pack(self) -> bytes:
        _check_port(self.port)
        return bytes((TRAILER_RANDOM_PORT, 2)) + self.port.to_bytes(2, "big")


@dataclass(frozen=True, slots=True)
class UnknownTrailer:
    """A trailer of a type we do not know, kept as raw bytes (and otherwise skipped)."""

    type: int
    value: bytes

    def pack(self) -> bytes:
        if not 0 <= self.type <= 0xFF or len(self.value) > 0xFF:
            raise ValueError("a trailer has a one-byte type and at most 255 bytes of value")
        return bytes((self.type, len(self.value))) + self.value


Trailer = (
    NonceTrailer
    | AlternateAddressTrailer
    | NeighborDiscoveryTrailer
    | RandomPortTrailer
    | UnknownTrailer
)

# 2 bytes at least per TLV already bound the work by the datagram's size; the count is kept
# small all the same (nobody sends more than a few), so that a datagram of 1,400 empty TLVs
# does not cost 700 objects.
MAX_TRAILERS = 16
MAX_ALTERNATE_ADDRESSES = 4
_KNOWN_LENGTHS: dict[int, tuple[int, ...]] = {
    TRAILER_NONCE: (4,),
    TRAILER_ALTERNATE_ADDRESS: (8, 14, 20, 26),
    TRAILER_ND_OPTION: (4,),
    TRAILER_RANDOM_PORT: (2,),
}


def parse_trailers(data: bytes | memoryview) -> tuple[Trailer, ...] | DropReason:
    """All TLVs of a trailer area (the bytes after the IPv6 packet); () when empty.

    Unknown types are skipped by their length (kept as UnknownTrailer). A record that runs
    past the end (TRUNCATED_TRAILER), a known type with another length or a zero port
    (BAD_TRAILER), or more than MAX_TRAILERS records (TOO_MANY_TRAILERS) makes the whole
    datagram malformed: the client drops and counts it (RFC6081-NOTES "Trailers").
    """
    out: list[Trailer] = []
    off = 0
    n = len(data)
    while off < n:
        if len(out) >= MAX_TRAILERS:
            return DropReason.TOO_MANY_TRAILERS
        if n - off < 2:
            return DropReason.TRUNCATED_TRAILER
        ttype = data[off]
        tlen = data[off + 1]
        start = off + 2
        end = start + tlen
        if end > n:
            return DropReason.TRUNCATED_TRAILER
        lengths = _KNOWN_LENGTHS.get(ttype)
        if lengths is not None and tlen not in lengths:
            return DropReason.BAD_TRAILER
        value = bytes(data[start:end])
        trailer: Trailer
        if ttype == TRAILER_NONCE:
            trailer = NonceTrailer(value)
        elif ttype == TRAILER_ALTERNATE_ADDRESS:
            pairs = tuple(_ALT.unpack_from(value, i) for i in range(2, tlen, 6))
            if any(port == 0 for _ip, port in pairs):
                return DropReason.BAD_TRAILER  # MS-TERE 2.2.2: the port MUST NOT be zero
            trailer = AlternateAddressTrailer(pairs)
        elif ttype == TRAILER_ND_OPTION:
            trailer = NeighborDiscoveryTrailer(value[0])
        elif ttype == TRAILER_RANDOM_PORT:
            port = int.from_bytes(value, "big")
            if port == 0:
                return DropReason.BAD_TRAILER
            trailer = RandomPortTrailer(port)
        else:
            trailer = UnknownTrailer(ttype, value)
        out.append(trailer)
        off = end
    return tuple(out)


def build_trailers(trailers: tuple[Trailer, ...] | list[Trailer]) -> bytes:
    if len(trailers) > MAX_TRAILERS:
        raise ValueError(f"at most {MAX_TRAILERS} trailers")
    return b"".join(t.pack() for t in trailers)


def find_trailer(trailers: tuple[Trailer, ...], kind: type[_T]) -> _T | None:
    """The first trailer of a kind (RFC 6081 gives each kind once per packet)."""
    for t in trailers:
        if isinstance(t, kind):
            return t
    return None


# --- the datagram ------------------------------------------------------------------------------


class TeredoPacket:
    """One parsed UDP payload: offsets into `data`, everything else computed when asked.

    `ipv6` is exactly 40 + payload length bytes; bytes after it are RFC 6081 trailers, which
    are never handed to the IPv6 stack (TEREDO-SPEC 2.4).
    """

    __slots__ = ("auth_offset", "data", "ip6_length", "ip6_offset", "origin_offset")

    def __init__(
        self, data: bytes, auth_offset: int, origin_offset: int, ip6_offset: int, ip6_length: int
    ) -> None:
        self.data = data
        self.auth_offset = auth_offset  # -1: no Authentication header
        self.origin_offset = origin_offset  # -1: no Origin Indication
        self.ip6_offset = ip6_offset
        self.ip6_length = ip6_length

    def __repr__(self) -> str:
        return (
            f"TeredoPacket(auth={self.auth!r}, origin={self.origin!r}, "
            f"ipv6={self.ipv6.hex()}, trailers={self.trailer_bytes.hex()})"
        )

    # -- Authentication
    @property
    def auth(self) -> AuthHeader | None:
        if self.auth_offset < 0:
            return None
        got = parse_auth(self.data[self.auth_offset :])
        # parse_payload validated the header already, so this is never a DropReason.
        return got[0] if isinstance(got, tuple) else None

    @property
    def nonce(self) -> bytes | None:
        """The 8-byte Authentication nonce, without building the whole AuthHeader."""
        a = self.auth_offset
        if a < 0:
            return None
        at = a + 4 + self.data[a + 2] + self.data[a + 3]
        return self.data[at : at + 8]

    @property
    def confirmation(self) -> int | None:
        a = self.auth_offset
        if a < 0:
            return None
        return self.data[a + 12 + self.data[a + 2] + self.data[a + 3]]

    # -- Origin Indication
    @property
    def origin(self) -> tuple[int, int] | None:
        """(IPv4 as int, port) of the Origin Indication, de-obfuscated."""
        o = self.origin_offset
        if o < 0:
            return None
        port, ipv4 = _OBF.unpack_from(self.data, o + 2)
        return ipv4 ^ 0xFFFFFFFF, port ^ 0xFFFF

    # -- IPv6 packet
    @property
    def ipv6(self) -> bytes:
        """The IPv6 packet alone (a copy unless it spans the whole datagram)."""
        off = self.ip6_offset
        if off == 0 and self.ip6_length == len(self.data):
            return self.data
        return self.data[off : off + self.ip6_length]

    def ipv6_view(self) -> memoryview:
        """The IPv6 packet without a copy, e.g. for os.write to the TUN."""
        return memoryview(self.data)[self.ip6_offset : self.ip6_offset + self.ip6_length]

    @property
    def src(self) -> bytes:
        o = self.ip6_offset
        return self.data[o + 8 : o + 24]

    @property
    def dst(self) -> bytes:
        o = self.ip6_offset
        return self.data[o + 24 : o + 40]

    @property
    def next_header(self) -> int:
        return self.data[self.ip6_offset + 6]

    @property
    def hop_limit(self) -> int:
        return self.data[self.ip6_offset + 7]

    @property
    def is_bubble(self) -> bool:
        """Payload length 0 and next header 59 (RFC 4380 section 2.8); hop limit not checked."""
        return self.ip6_length == IPV6_HEADER_LEN and self.data[self.ip6_offset + 6] == 59

    # -- RFC 6081 trailers
    @property
    def trailer_bytes(self) -> bytes:
        return self.data[self.ip6_offset + self.ip6_length :]

    @property
    def has_trailers(self) -> bool:
        return self.ip6_offset + self.ip6_length != len(self.data)

    @property
    def trailers(self) -> tuple[Trailer, ...] | DropReason:
        """Parsed trailers, () when there are none; a DropReason when the area is malformed
        (the client then drops the datagram: parse_trailers)."""
        end = self.ip6_offset + self.ip6_length
        if end == len(self.data):
            return ()
        return parse_trailers(memoryview(self.data)[end:])


def parse_payload(data: bytes) -> TeredoPacket | DropReason:
    """Parse one Teredo UDP payload (RFC 4380 sections 5.1.1, 5.2.3; TEREDO-SPEC 2.4).

    Demultiplex on the first bytes: 00 01 Authentication, 00 00 Origin Indication, version 6
    IPv6. Drops: truncated Auth or origin, origin before Auth, fewer than 40 bytes of IPv6,
    version not 6, payload length past the end. Bytes after the IPv6 packet are trailers.
    """
    n = len(data)
    # Fast path first: a bare IPv6 packet is what peers exchange once they talk directly.
    if n >= 40 and data[0] >> 4 == 6:
        ip6_len = 40 + ((data[4] << 8) | data[5])
        if ip6_len > n:
            return DropReason.BAD_PAYLOAD_LENGTH
        return TeredoPacket(data, -1, -1, 0, ip6_len)
    if n < 2 or data[0] != 0:
        return DropReason.TOO_SHORT if n < IPV6_HEADER_LEN else DropReason.NOT_IPV6
    auth_at = -1
    origin_at = -1
    marker = data[1]
    if marker == 1:
        # Authentication (RFC 4380 5.1.1): 13 + ID-len + AU-len bytes.
        if n < AUTH_MIN_LEN:
            return DropReason.TRUNCATED_AUTH
        off = AUTH_MIN_LEN + data[2] + data[3]
        if n < off:
            return DropReason.TRUNCATED_AUTH
        auth_at = 0
        if n >= off + 2 and data[off] == 0:
            if data[off + 1] != 0:
                return DropReason.NOT_IPV6
            origin_at = off
            off += ORIGIN_LEN
            if n < off:
                return DropReason.TRUNCATED_ORIGIN
    elif marker == 0:
        origin_at = 0
        off = ORIGIN_LEN
        if n < off:
            return DropReason.TRUNCATED_ORIGIN
    else:
        return DropReason.NOT_IPV6
    if origin_at >= 0 and n >= off + 2 and data[off] == 0 and data[off + 1] == 1:
        return DropReason.BAD_ORIGIN_ORDER  # Auth MUST come first (RFC 4380 5.1.1)
    if n - off < IPV6_HEADER_LEN:
        return DropReason.TOO_SHORT
    if data[off] >> 4 != 6:
        return DropReason.NOT_IPV6
    ip6_len = IPV6_HEADER_LEN + ((data[off + 4] << 8) | data[off + 5])
    if off + ip6_len > n:
        return DropReason.BAD_PAYLOAD_LENGTH
    return TeredoPacket(data, auth_at, origin_at, off, ip6_len)
