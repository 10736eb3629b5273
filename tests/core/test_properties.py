"""Hypothesis properties of the codecs: decode(encode(x)) == x, no parser ever raises on any
bytes, and truncated packets always give a drop reason."""

from __future__ import annotations

import ipaddress
from collections.abc import Callable

from hypothesis import given, settings
from hypothesis import strategies as st

from teredo.core.addr import (
    TEREDO_PREFIX,
    TEREDO_PREFIX_LEGACY,
    TeredoAddress,
    embedded_flags,
    embedded_mapping,
    embedded_server,
    is_global_ipv4,
    is_teredo,
    make_flags,
    random_bits,
)
from teredo.core.counters import DropReason
from teredo.core.ipv6 import (
    Echo,
    IPv6Header,
    RouterAdvertisement,
    RouterSolicitation,
    Unreachable,
    build_bubble,
    build_rs,
    parse_echo,
    parse_header,
    parse_ra,
    parse_rs,
    parse_unreachable,
)
from teredo.core.wire import (
    AlternateAddressTrailer,
    AuthHeader,
    NeighborDiscoveryTrailer,
    NonceTrailer,
    RandomPortTrailer,
    TeredoPacket,
    Trailer,
    UnknownTrailer,
    build_origin,
    build_trailers,
    encapsulate,
    parse_auth,
    parse_origin,
    parse_payload,
    parse_trailers,
)

u8 = st.integers(0, 0xFF)
u16 = st.integers(0, 0xFFFF)
u32 = st.integers(0, 0xFFFFFFFF)
addr16 = st.binary(min_size=16, max_size=16)
prefixes = st.sampled_from([TEREDO_PREFIX, TEREDO_PREFIX_LEGACY]) | st.binary(
    min_size=4, max_size=4
)

teredo_addresses = st.builds(TeredoAddress, prefixes, u32, u16, u16, u32)
auth_headers = st.builds(
    AuthHeader,
    st.binary(min_size=8, max_size=8),
    st.binary(max_size=40),
    st.binary(max_size=40),
    u8,
)
echoes = st.builds(
    Echo,
    addr16,
    addr16,
    st.booleans(),
    u16,
    u16,
    st.binary(max_size=200),
    u8,
    u8,
    st.integers(0, 0xFFFFF),
)
router_advertisements = st.builds(
    RouterAdvertisement,
    addr16,
    addr16,
    addr16,
    st.none() | st.integers(1280, 0xFFFF),
    u8,
    u8,
    u8,
    u16,
    u32,
    u32,
    u8,
    u32,
    u32,
)
port_st = st.integers(1, 0xFFFF)  # RFC 6081 trailers never carry port 0 (MS-TERE 2.2.2)
alt_pairs = st.lists(st.tuples(u32, port_st), min_size=1, max_size=4).map(tuple)
trailers_st: st.SearchStrategy[Trailer] = st.one_of(
    st.builds(NonceTrailer, st.binary(min_size=4, max_size=4)),
    st.builds(AlternateAddressTrailer, alt_pairs),
    st.builds(NeighborDiscoveryTrailer, u8),
    st.builds(RandomPortTrailer, port_st),
    st.builds(UnknownTrailer, u8.filter(lambda t: t not in (1, 3, 4, 5)), st.binary(max_size=255)),
)


@st.composite
def ipv6_packets(draw: st.DrawFn) -> bytes:
    """Any of the packets Teredo builds: bubble, RS, RA, echo, unreachable."""
    kind = draw(st.sampled_from(["bubble", "rs", "ra", "echo", "unreach"]))
    if kind == "bubble":
        return build_bubble(draw(addr16), draw(addr16), hop_limit=draw(u8))
    if kind == "rs":
        return build_rs(draw(addr16))
    if kind == "ra":
        return draw(router_advertisements).pack()
    if kind == "echo":
        return draw(echoes).pack()
    return Unreachable(draw(addr16), draw(addr16), draw(u8), draw(st.binary(max_size=300))).pack()


@st.composite
def payloads(draw: st.DrawFn) -> tuple[bytes, AuthHeader | None, tuple[int, int] | None, bytes]:
    auth = draw(st.none() | auth_headers)
    origin = draw(st.none() | st.tuples(u32, u16))
    ip6 = draw(ipv6_packets())
    data = encapsulate(
        ip6,
        auth=auth.pack() if auth else b"",
        origin=build_origin(*origin) if origin else b"",
    )
    return data, auth, origin, ip6


# --- round trips -------------------------------------------------------------------------------


@given(teredo_addresses)
def test_address_round_trip(addr: TeredoAddress) -> None:
    raw = addr.pack()
    assert TeredoAddress.unpack(raw, addr.prefix) == addr
    assert TeredoAddress.unpack(raw, None) == addr
    assert TeredoAddress.parse(str(addr), addr.prefix) == addr
    assert is_teredo(raw, addr.prefix)
    assert embedded_server(raw) == addr.server
    assert embedded_mapping(memoryview(raw)) == (addr.client, addr.port)
    assert embedded_flags(raw) == addr.flags


@given(st.integers(0, 0xFFF), st.booleans())
def test_flags_round_trip(bits: int, cone: bool) -> None:
    flags = make_flags(bits, cone=cone)
    assert random_bits(flags) == bits
    assert flags & 0x4300 == 0  # R, U, G stay 0 (RFC 5991)
    assert bool(flags & 0x8000) is cone


# RFC 4380 section 5.2.4's list of non-global IPv4 ranges, checked the slow way.
NOT_GLOBAL = [
    ipaddress.IPv4Network(n)
    for n in (
        "0.0.0.0/8",
        "10.0.0.0/8",
        "127.0.0.0/8",
        "169.254.0.0/16",
        "172.16.0.0/12",
        "192.168.0.0/16",
        "192.88.99.0/24",
        "224.0.0.0/4",
        "255.255.255.255/32",
    )
]
EDGES = [int(n.network_address) + d for n in NOT_GLOBAL for d in (-1, 0)] + [
    int(n.broadcast_address) + d for n in NOT_GLOBAL for d in (0, 1)
]


@given(st.one_of(u32, st.sampled_from([e & 0xFFFFFFFF for e in EDGES])))
def test_is_global_ipv4_matches_reference(ipv4: int) -> None:
    expected = not any(ipaddress.IPv4Address(ipv4) in net for net in NOT_GLOBAL)
    assert is_global_ipv4(ipv4) is expected


@given(auth_headers, st.binary(max_size=20))
def test_auth_round_trip(auth: AuthHeader, rest: bytes) -> None:
    raw = auth.pack()
    assert len(raw) == 13 + len(auth.client_id) + len(auth.auth_value)
    assert parse_auth(raw + rest) == (auth, len(raw))


@given(u32, u16)
def test_origin_round_trip(ipv4: int, port: int) -> None:
    assert parse_origin(build_origin(ipv4, port)) == (ipv4, port)


@given(addr16, addr16, u8)
def test_bubble_and_header_round_trip(src: bytes, dst: bytes, hop: int) -> None:
    assert parse_header(build_bubble(src, dst, hop_limit=hop)) == IPv6Header(
        0, 0, 0, 59, hop, src, dst
    )


@given(addr16)
def test_rs_round_trip(src: bytes) -> None:
    rs = parse_rs(build_rs(src))
    assert isinstance(rs, RouterSolicitation)
    assert rs.src == src


@given(router_advertisements)
def test_ra_round_trip(ra: RouterAdvertisement) -> None:
    assert parse_ra(ra.pack()) == ra


@given(echoes)
def test_echo_round_trip(echo: Echo) -> None:
    assert parse_echo(echo.pack()) == echo


@given(addr16, addr16, u8, st.binary(max_size=1300))
def test_unreachable_round_trip_and_bound(src: bytes, dst: bytes, code: int, quoted: bytes) -> None:
    raw = Unreachable(src, dst, code, quoted).pack()
    assert len(raw) <= 1280
    got = parse_unreachable(raw)
    assert isinstance(got, Unreachable)
    assert got.quoted == quoted[: 1280 - 48]


@given(st.lists(trailers_st, max_size=6))
def test_trailers_round_trip(trailers: list[Trailer]) -> None:
    assert parse_trailers(build_trailers(trailers)) == tuple(trailers)


@given(payloads(), st.lists(trailers_st, max_size=3))
def test_payload_round_trip(
    case: tuple[bytes, AuthHeader | None, tuple[int, int] | None, bytes], trailers: list[Trailer]
) -> None:
    data, auth, origin, ip6 = case
    pkt = parse_payload(data + build_trailers(trailers))
    assert isinstance(pkt, TeredoPacket)
    assert pkt.auth == auth
    assert pkt.nonce == (auth.nonce if auth else None)
    assert pkt.origin == origin
    assert pkt.ipv6 == ip6
    assert pkt.trailers == tuple(trailers)


# --- robustness --------------------------------------------------------------------------------

PARSERS: list[Callable[[bytes], object]] = [
    parse_payload,
    parse_header,
    parse_rs,
    parse_ra,
    parse_echo,
    parse_unreachable,
    parse_auth,
    parse_origin,
    parse_trailers,
    TeredoAddress.unpack,
]


def _exercise(data: bytes) -> None:
    """Every parser returns a value or a DropReason; a parsed packet's accessors never raise."""
    for parse in PARSERS:
        parse(data)
    pkt = parse_payload(data)
    if isinstance(pkt, TeredoPacket):
        assert pkt.ip6_offset + pkt.ip6_length <= len(data)
        for value in (pkt.auth, pkt.nonce, pkt.confirmation, pkt.origin):
            assert not isinstance(value, DropReason)
        trailers = pkt.trailers
        assert isinstance(trailers, (tuple, DropReason))
        assert (trailers == ()) is not pkt.has_trailers or isinstance(trailers, DropReason)
        assert len(pkt.ipv6) == pkt.ip6_length
        assert len(pkt.src) == len(pkt.dst) == 16
        assert pkt.next_header == pkt.ipv6[6]
        assert pkt.is_bubble in (True, False)
        repr(pkt)
        for parse in PARSERS[1:6]:
            parse(pkt.ipv6)
    else:
        assert isinstance(pkt, DropReason)


@given(st.binary(max_size=200))
def test_arbitrary_bytes_never_raise(data: bytes) -> None:
    _exercise(data)


@settings(max_examples=300)
@given(payloads(), st.data())
def test_mutated_packets_never_raise(
    case: tuple[bytes, AuthHeader | None, tuple[int, int] | None, bytes], data: st.DataObject
) -> None:
    raw = bytearray(case[0])
    for _ in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(0, len(raw) - 1))
        raw[i] = data.draw(u8)
    _exercise(bytes(raw))


@given(payloads(), st.data())
def test_truncated_packets_give_drop_reasons(
    case: tuple[bytes, AuthHeader | None, tuple[int, int] | None, bytes], data: st.DataObject
) -> None:
    full, _auth, _origin, ip6 = case
    cut = data.draw(st.integers(0, len(full) - 1))
    assert isinstance(parse_payload(full[:cut]), DropReason)
    cut6 = data.draw(st.integers(0, len(ip6) - 1))
    for parse in (parse_header, parse_rs, parse_ra, parse_echo, parse_unreachable):
        assert isinstance(parse(ip6[:cut6]), DropReason)
