"""Teredo addresses (RFC 4380 sections 2.6, 4; RFC 5991 flags) and the special link-local ones.

Layout of a Teredo address, big-endian (RFC 4380 section 4):

    bytes 0-3    prefix (2001:0000::/32, configurable; 3ffe:831f::/32 before the RFC)
    bytes 4-7    the server's primary IPv4, in clear
    bytes 8-9    flags: C R A A A A U G A A A A A A A A (RFC 5991)
    bytes 10-11  mapped UDP port XOR 0xFFFF
    bytes 12-15  mapped IPv4 XOR 0xFFFFFFFF

Representation, chosen for the hot path: a prefix is 4 `bytes` (compared with one slice), IPv4
addresses are `int` (hashable, cheap to compare and to test for global scope), ports are `int`.
The server and relay call `is_teredo` and `embedded_mapping` on every packet: those work on the
16 raw bytes (bytes or memoryview) and build no object. `TeredoAddress` is for the control path.
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass
from socket import inet_aton, inet_ntoa  # pure conversions: no socket is created

#: A UDP/IPv4 endpoint as the socket module gives and takes it: (dotted quad, port). The one
#: endpoint type of every machine's UDP input and output (the I/O layer passes these through).
Address = tuple[str, int]


def parse_ipv4(host: str) -> int | None:
    """The int of a datagram's source host (a dotted quad, as the sockets give it), or None
    when it is no IPv4 address: the one conversion of a source into the core."""
    try:
        return int.from_bytes(inet_aton(host), "big")
    except (OSError, TypeError, ValueError):
        return None


#: Conversions an `EndpointCache` remembers in each direction before it starts afresh.
ENDPOINT_CACHE = 4096


class EndpointCache:
    """An endpoint's two forms, converted once and remembered (bounded): `Address`, as the
    sockets give and take it, and (IPv4 int, port), as the core compares, stores and tests it.

    Every machine (client, relay, server) holds one: datagram sources enter the core through
    `ipv4`, destinations leave it through `sockaddrs` (keyed `(ipv4 << 16) | port`, the peer
    table's `mapping_key`). The dicts are read inline on the fast paths (one dict look-up per
    datagram, no string and no tuple made); a miss goes through `ipv4_of` / `sockaddr`, which
    empty a dict that reached `limit`, so memory stays bounded whatever the number of senders.
    """

    __slots__ = ("global_ipv4", "ipv4", "limit", "sockaddrs")

    def __init__(self, limit: int = ENDPOINT_CACHE) -> None:
        self.ipv4: dict[str, int] = {}
        self.global_ipv4: dict[str, int] = {}
        self.sockaddrs: dict[int, Address] = {}
        self.limit = limit

    def ipv4_of(self, host: str) -> int | None:
        """The int of a dotted quad, or None when `host` is no IPv4 address."""
        cache = self.ipv4
        got = cache.get(host)
        if got is None:
            got = parse_ipv4(host)
            if got is None:
                return None
            if len(cache) >= self.limit:
                cache.clear()
            cache[host] = got
        return got

    def global_ipv4_of(self, host: str) -> int:
        """The int of `host` when it is a global unicast IPv4 (RFC 4380 section 5.2.4), -1
        when it is another IPv4, -2 when it is none: the server's check of every source,
        remembered in `global_ipv4` so that a known source costs one look-up."""
        cache = self.global_ipv4
        got = cache.get(host)
        if got is None:
            ipv4 = self.ipv4_of(host)
            got = -2 if ipv4 is None else ipv4 if is_global_ipv4(ipv4) else -1
            if len(cache) >= self.limit:
                cache.clear()
            cache[host] = got
        return got

    def sockaddr(self, key: int) -> Address:
        """The socket address of `(ipv4 << 16) | port`."""
        cache = self.sockaddrs
        got = cache.get(key)
        if got is None:
            if len(cache) >= self.limit:
                cache.clear()
            got = cache[key] = (inet_ntoa((key >> 16).to_bytes(4, "big")), key & 0xFFFF)
        return got

    def sockaddr_of(self, ipv4: int, port: int) -> Address:
        """The socket address of (ipv4, port)."""
        return self.sockaddr((ipv4 << 16) | port)


TEREDO_PORT = 3544  # RFC 4380 section 2.7: server UDP port
TEREDO_PREFIX = b"\x20\x01\x00\x00"  # 2001:0000::/32, RFC 4380 section 2.6
TEREDO_PREFIX_LEGACY = b"\x3f\xfe\x83\x1f"  # 3ffe:831f::/32, pre-RFC Windows XP/2003

# Flags (RFC 4380 section 4, RFC 5991).
FLAG_CONE = 0x8000  # C: deprecated by RFC 5991, clients send 0
FLAG_RESERVED = 0x4000  # R: send 0, ignore
FLAG_UNIVERSAL = 0x0200  # U: 0
FLAG_GROUP = 0x0100  # G: 0
FLAG_RANDOM_MASK = 0x3CFF  # the 12 A bits (RFC 5991): 0x3C00 carries 4, 0x00FF carries 8

_ADDR = struct.Struct("!4s4sHHI")
_MAPPING = struct.Struct("!HI")  # bytes 10-15: obfuscated port and IPv4

# Special link-local addresses (TEREDO-SPEC 1.4). Miredo sends its RS from the C=0 form
# ("Vista variant") and RAs come back to exactly that source.
LINK_LOCAL_RESTRICTED = ipaddress.IPv6Address("fe80::ffff:ffff:ffff").packed
LINK_LOCAL_CONE = ipaddress.IPv6Address("fe80::8000:5445:5245:444f").packed  # "TEREDO", C=1
LINK_LOCAL_XP = ipaddress.IPv6Address("fe80::5445:5245:444f").packed  # old XP form, C=0

ALL_ROUTERS = ipaddress.IPv6Address("ff02::2").packed  # RS destination (RFC 4380 5.2.1)
ALL_NODES = ipaddress.IPv6Address("ff02::1").packed  # discovery bubbles (RFC 4380 5.2.8)


def obfuscate_port(port: int) -> int:
    """Port as carried in addresses and Origin Indications (RFC 4380 sections 4, 5.1.1)."""
    return port ^ 0xFFFF


def obfuscate_ipv4(ipv4: int) -> int:
    """IPv4 as carried in addresses and Origin Indications; NATs that rewrite private-looking
    32-bit words in payloads cannot recognise it (RFC 4380 section 3.1)."""
    return ipv4 ^ 0xFFFFFFFF


def ipv4_to_int(text: str) -> int:
    """Dotted quad to int; ValueError on anything else (strict: no octal or short forms)."""
    try:
        return int(ipaddress.IPv4Address(text))
    except ValueError:
        raise ValueError(f"not an IPv4 address: {text!r}") from None


def int_to_ipv4(value: int) -> str:
    """Int to dotted quad, e.g. for a socket address tuple."""
    return inet_ntoa(value.to_bytes(4, "big"))


def parse_prefix(text: str) -> bytes:
    """A Teredo prefix setting ("2001::", "2001:0::/32", "3ffe:831f::/32") -> 4 bytes.

    Teredo addresses keep bits 32-127 for server, flags and mapping, so the prefix must be a /32
    (RFC 4380 section 2.6; miredo-server.conf "Prefix": a 32-bit prefix is required).
    """
    text = text.strip()
    if "/" not in text:
        text += "/32"
    try:
        net = ipaddress.IPv6Network(text, strict=True)
    except ValueError as exc:
        raise ValueError(f"bad Teredo prefix {text!r}: {exc}") from None
    if net.prefixlen != 32:
        raise ValueError(f"bad Teredo prefix {text!r}: the prefix length must be 32")
    return net.network_address.packed[:4]


def format_prefix(prefix: bytes) -> str:
    return f"{ipaddress.IPv6Address(prefix + bytes(12))}/32"


def make_flags(random12: int, *, cone: bool = False) -> int:
    """Spread 12 random bits into the A positions of the flags (RFC 5991, mask 0x3CFF).

    The top 4 of the 12 go to bits 0x3C00, the low 8 to 0x00FF; R, U and G stay 0.
    """
    if not 0 <= random12 <= 0xFFF:
        raise ValueError("random12 must be a 12-bit value")
    return ((random12 >> 8) << 10) | (random12 & 0xFF) | (FLAG_CONE if cone else 0)


def random_bits(flags: int) -> int:
    """The 12 A bits of `flags` gathered back into one number (inverse of make_flags)."""
    return (((flags >> 10) & 0xF) << 8) | (flags & 0xFF)


def _top_octet_table() -> bytes:
    """Per first octet: 0 always global, 1 never global, 2 look closer."""
    table = bytearray(256)
    for top in (0, 10, 127, *range(224, 240)):  # this-net, RFC 1918, loopback, multicast
        table[top] = 1
    for top in (169, 172, 192, 255):  # 169.254/16, 172.16/12, 192.168/16 + 192.88.99/24, bcast
        table[top] = 2
    return bytes(table)


_TOP_OCTET = _top_octet_table()


def is_global_ipv4(ipv4: int) -> bool:
    """Global unicast IPv4 as RFC 4380 section 5.2.4 lists it (TEREDO-SPEC 3.6).

    Like Miredo: no directed broadcasts (unknown here), 240.0.0.0/4 counts as global, and the
    documentation ranges 192.0.2/24, 198.51.100/24 and 203.0.113/24 count as global (the lab's
    "public" addresses live there). Called before every send to a learnt address, so the usual
    answer costs one table look-up.
    """
    kind = _TOP_OCTET[ipv4 >> 24]
    if kind == 0:
        return True
    if kind == 1:
        return False
    if ipv4 & 0xFFF00000 == 0xAC100000:  # 172.16.0.0/12
        return False
    if ipv4 & 0xFFFF0000 in (0xC0A80000, 0xA9FE0000):  # 192.168.0.0/16, 169.254.0.0/16
        return False
    if ipv4 & 0xFFFFFF00 == 0xC0586300:  # 192.88.99.0/24, 6to4 relay anycast
        return False
    return ipv4 != 0xFFFFFFFF  # limited broadcast


# --- fast path on the 16 raw bytes -------------------------------------------------------------


def is_teredo(addr16: bytes | memoryview, prefix: bytes = TEREDO_PREFIX) -> bool:
    """True when the first 32 bits are the Teredo prefix (RFC 4380 section 2.6)."""
    return addr16[0:4] == prefix


def embedded_server(addr16: bytes | memoryview) -> int:
    """The server IPv4 of a Teredo address (bytes 4-7, not obfuscated)."""
    return int.from_bytes(addr16[4:8], "big")


def embedded_mapping(addr16: bytes | memoryview) -> tuple[int, int]:
    """(mapped IPv4 as int, mapped port) from bytes 10-15 of a Teredo address (de-obfuscated)."""
    port, ipv4 = _MAPPING.unpack_from(addr16, 10)
    return ipv4 ^ 0xFFFFFFFF, port ^ 0xFFFF


def embedded_sockaddr(addr16: bytes | memoryview) -> tuple[str, int]:
    """The mapping as a socket address ("a.b.c.d", port), the form sockets use."""
    port, ipv4 = _MAPPING.unpack_from(addr16, 10)
    return inet_ntoa((ipv4 ^ 0xFFFFFFFF).to_bytes(4, "big")), port ^ 0xFFFF


def embedded_flags(addr16: bytes | memoryview) -> int:
    return (addr16[8] << 8) | addr16[9]


def is_cone(addr16: bytes | memoryview) -> bool:
    return bool(addr16[8] & 0x80)


def pack_address(prefix: bytes, server: int, flags: int, port: int, client: int) -> bytes:
    """The 16 bytes of a Teredo address; port and client are the real (clear) mapping."""
    return _ADDR.pack(prefix, server.to_bytes(4, "big"), flags, port ^ 0xFFFF, client ^ 0xFFFFFFFF)


def server_link_local(server_ipv4: int) -> bytes:
    """The server's RA source fe80::8000:f227:<~server IPv4> (RFC 4380 section 5.3.2: the
    link-local form of a Teredo address with C=1, port 3544 and the server's IPv4)."""
    return b"\xfe\x80" + bytes(6) + pack_address(b"", 0, FLAG_CONE, TEREDO_PORT, server_ipv4)[8:]


def is_link_local(addr16: bytes | memoryview) -> bool:
    return addr16[0] == 0xFE and addr16[1] & 0xC0 == 0x80


@dataclass(frozen=True, slots=True)
class TeredoAddress:
    """A decoded Teredo address. `port` and `client` are the clear mapping (not obfuscated)."""

    prefix: bytes
    server: int
    flags: int
    port: int
    client: int

    def __post_init__(self) -> None:
        if len(self.prefix) != 4:
            raise ValueError("prefix must be 4 bytes")
        if not 0 <= self.server <= 0xFFFFFFFF or not 0 <= self.client <= 0xFFFFFFFF:
            raise ValueError("IPv4 addresses must be 32-bit values")
        if not 0 <= self.flags <= 0xFFFF or not 0 <= self.port <= 0xFFFF:
            raise ValueError("flags and port must be 16-bit values")

    @classmethod
    def unpack(
        cls, data: bytes | memoryview, prefix: bytes | None = TEREDO_PREFIX
    ) -> TeredoAddress | None:
        """Decode 16 bytes; None when the length is wrong or the prefix differs.

        `prefix=None` accepts any prefix (e.g. for `teredo decode` of legacy addresses).
        """
        if len(data) != 16:
            return None
        pfx, server, flags, port, client = _ADDR.unpack(data)
        if prefix is not None and pfx != prefix:
            return None
        return cls(pfx, int.from_bytes(server, "big"), flags, port ^ 0xFFFF, client ^ 0xFFFFFFFF)

    @classmethod
    def parse(cls, text: str, prefix: bytes | None = TEREDO_PREFIX) -> TeredoAddress | None:
        """Decode the textual form; None when not an IPv6 address or not in the prefix."""
        try:
            packed = ipaddress.IPv6Address(text.strip()).packed
        except ValueError:
            return None
        return cls.unpack(packed, prefix)

    def pack(self) -> bytes:
        return pack_address(self.prefix, self.server, self.flags, self.port, self.client)

    def __str__(self) -> str:
        return str(ipaddress.IPv6Address(self.pack()))

    @property
    def cone(self) -> bool:
        return bool(self.flags & FLAG_CONE)

    @property
    def random_bits(self) -> int:
        return random_bits(self.flags)

    @property
    def other_flags(self) -> int:
        """Flag bits outside C and the A bits (R, U, G): 0 when well-formed."""
        return self.flags & ~(FLAG_CONE | FLAG_RANDOM_MASK) & 0xFFFF

    @property
    def server_ipv4(self) -> ipaddress.IPv4Address:
        return ipaddress.IPv4Address(self.server)

    @property
    def client_ipv4(self) -> ipaddress.IPv4Address:
        return ipaddress.IPv4Address(self.client)

    @property
    def mapping(self) -> tuple[int, int]:
        return self.client, self.port
