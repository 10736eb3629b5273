"""RFC 6081 trailers (core/wire.py): each kind byte for byte, unknown kinds skipped, malformed
areas named by reason, and what a qualified client does with a datagram that carries them
(RFC6081-NOTES "Trailers": skip what is unknown, drop what overruns, count by reason)."""

from __future__ import annotations

import pytest
from test_client import PEER_MAPPING, T0, qualified_client, teredo_address

from teredo.core.addr import ipv4_to_int
from teredo.core.counters import DropReason
from teredo.core.ipv6 import build_bubble, build_echo
from teredo.core.wire import (
    MAX_TRAILERS,
    AlternateAddressTrailer,
    NeighborDiscoveryTrailer,
    NonceTrailer,
    RandomPortTrailer,
    Trailer,
    UnknownTrailer,
    build_trailers,
    find_trailer,
    parse_trailers,
)

# (trailer, its exact encoding): type, length, then the value (RFC6081-NOTES table;
# Alternate Address per MS-TERE 2.2.2: 2 reserved zero bytes, IPv4 and port in clear).
VECTORS: list[tuple[Trailer, str]] = [
    (NonceTrailer(bytes.fromhex("deadbeef")), "0104 deadbeef"),
    (
        AlternateAddressTrailer(((ipv4_to_int("192.168.1.2"), 3544),)),
        "0308 0000 c0a80102 0dd8",
    ),
    (
        AlternateAddressTrailer(
            ((ipv4_to_int("192.168.1.2"), 3544), (ipv4_to_int("10.1.2.3"), 65535))
        ),
        "030e 0000 c0a80102 0dd8 0a010203 ffff",
    ),
    (
        AlternateAddressTrailer(tuple((ipv4_to_int(f"192.168.0.{i}"), 1000 + i) for i in range(4))),
        "031a 0000 c0a80000 03e8 c0a80001 03e9 c0a80002 03ea c0a80003 03eb",
    ),
    (NeighborDiscoveryTrailer(0), "0404 00 000000"),
    (NeighborDiscoveryTrailer(1), "0404 01 000000"),
    (RandomPortTrailer(40000), "0502 9c40"),
    (RandomPortTrailer(1), "0502 0001"),
    (UnknownTrailer(0x7F, b"xyz"), "7f03 78797a"),
    (UnknownTrailer(0x00, b""), "0000"),
]


@pytest.mark.parametrize(("trailer", "hex_"), VECTORS)
def test_each_trailer_byte_for_byte(trailer: Trailer, hex_: str) -> None:
    raw = bytes.fromhex(hex_.replace(" ", ""))
    assert trailer.pack() == raw
    assert parse_trailers(raw) == (trailer,)


def test_a_whole_area_in_order() -> None:
    trailers = [t for t, _ in VECTORS]
    raw = bytes.fromhex("".join(h.replace(" ", "") for _, h in VECTORS))
    assert build_trailers(trailers) == raw
    assert parse_trailers(raw) == tuple(trailers)
    assert find_trailer(tuple(trailers), RandomPortTrailer) == RandomPortTrailer(40000)
    assert find_trailer((NonceTrailer(b"abcd"),), RandomPortTrailer) is None


def test_reserved_bytes_are_ignored_on_receipt() -> None:
    # MS-TERE 2.2.2: the Alternate Address reserved field is ignored on receipt; ND the same.
    alt = bytes.fromhex("0308 ffff c0a80102 0dd8".replace(" ", ""))
    assert parse_trailers(alt) == (AlternateAddressTrailer(((0xC0A80102, 3544),)),)
    nd = bytes.fromhex("0404 01 ffffff".replace(" ", ""))
    assert parse_trailers(nd) == (NeighborDiscoveryTrailer(1),)


def test_unknown_types_are_skipped_by_their_length() -> None:
    raw = bytes((0x42, 5)) + b"12345" + RandomPortTrailer(7).pack() + bytes((0xFF, 0))
    assert parse_trailers(raw) == (
        UnknownTrailer(0x42, b"12345"),
        RandomPortTrailer(7),
        UnknownTrailer(0xFF, b""),
    )


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        ("0308 0000 c0a80102 0000", DropReason.BAD_TRAILER),  # port 0 (MS-TERE 2.2.2)
        ("0502 0000", DropReason.BAD_TRAILER),  # random port 0
        ("0309 0000 c0a80102 0dd8 00", DropReason.BAD_TRAILER),  # not 2 + 6 n
        ("0105 0102030405", DropReason.BAD_TRAILER),
        ("0403 010000", DropReason.BAD_TRAILER),
        ("0502 9c", DropReason.TRUNCATED_TRAILER),
        ("7fff 00", DropReason.TRUNCATED_TRAILER),
        ("0502 9c40 05", DropReason.TRUNCATED_TRAILER),  # a lone byte after a good trailer
    ],
)
def test_malformed_areas(raw: str, reason: DropReason) -> None:
    data = bytes.fromhex(raw.replace(" ", ""))
    assert parse_trailers(data) is reason


def test_the_number_of_trailers_is_bounded() -> None:
    assert parse_trailers(bytes((0x7F, 0)) * MAX_TRAILERS) == (UnknownTrailer(0x7F, b""),) * 16
    assert parse_trailers(bytes((0x7F, 0)) * (MAX_TRAILERS + 1)) is DropReason.TOO_MANY_TRAILERS
    with pytest.raises(ValueError, match="at most"):
        build_trailers([UnknownTrailer(1, b"")] * (MAX_TRAILERS + 1))


@pytest.mark.parametrize(
    ("trailer", "message"),
    [
        (RandomPortTrailer(0), "out of range"),
        (RandomPortTrailer(65536), "out of range"),
        (AlternateAddressTrailer(((1, 0),)), "out of range"),
        (AlternateAddressTrailer(((1 << 32, 1),)), "out of range"),
        (AlternateAddressTrailer(((1, 1),) * 5), "1 to 4"),
        (NeighborDiscoveryTrailer(256), "one byte"),
        (UnknownTrailer(1, bytes(256)), "255"),
    ],
)
def test_builders_refuse_what_cannot_be_encoded(trailer: Trailer, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        trailer.pack()


# --- a qualified client receiving them -------------------------------------------------------


def test_client_accepts_a_bubble_with_known_and_unknown_trailers() -> None:
    client, out, event = qualified_client()
    peer = teredo_address(PEER_MAPPING)
    area = build_trailers(
        [NonceTrailer(b"abcd"), UnknownTrailer(0x66, b"future"), RandomPortTrailer(4000)]
    )
    client.receive_udp(build_bubble(peer, event.address) + area, PEER_MAPPING, T0 + 1.0)
    assert client.status()["trusted_peers"] == 1
    assert client.drops.total() == 0
    # Data with a trailer: only the IPv6 packet reaches the stack.
    data = build_echo(peer, event.address, 1, 1, b"hi")
    client.receive_udp(data + area, PEER_MAPPING, T0 + 1.1)
    assert out.tun == [data]
    assert client.drops.total() == 0


@pytest.mark.parametrize(
    ("area", "reason"),
    [
        (bytes((5, 2, 0x9C)), DropReason.TRUNCATED_TRAILER),
        (bytes((1, 3, 1, 2, 3)), DropReason.BAD_TRAILER),
        (bytes((0x7F, 0)) * 17, DropReason.TOO_MANY_TRAILERS),
    ],
)
def test_client_drops_and_counts_a_malformed_area(area: bytes, reason: DropReason) -> None:
    client, out, event = qualified_client()
    peer = teredo_address(PEER_MAPPING)
    data = build_echo(peer, event.address, 1, 1, b"hi")
    client.receive_udp(data + area, PEER_MAPPING, T0 + 1.0)
    assert out.tun == []
    assert client.status()["trusted_peers"] == 0  # nothing learnt from it
    assert client.drops.snapshot() == {reason.name.lower(): 1}
    # The same packet without the bad area is fine.
    client.receive_udp(data, PEER_MAPPING, T0 + 1.1)
    assert out.tun == [data]
