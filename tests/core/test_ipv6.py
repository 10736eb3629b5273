"""IPv6 header, ICMPv6 checksum, RS/RA/echo/unreachable/bubble: byte-exact vectors and the
RA validation rules of Miredo's teredo_parse_ra (RFC 4380 section 5.2.1)."""

from __future__ import annotations

import ipaddress
import struct

import pytest

from teredo.core.addr import (
    ALL_ROUTERS,
    LINK_LOCAL_CONE,
    LINK_LOCAL_RESTRICTED,
    TEREDO_PREFIX,
    ipv4_to_int,
    server_link_local,
)
from teredo.core.counters import DropReason
from teredo.core.ipv6 import (
    MAX_QUOTED,
    NH_ICMPV6,
    NH_NONE,
    Echo,
    IPv6Header,
    RouterAdvertisement,
    RouterSolicitation,
    Unreachable,
    build_bubble,
    build_echo,
    build_icmpv6,
    build_ra,
    build_rs,
    build_unreachable,
    icmpv6_checksum,
    icmpv6_checksum_ok,
    is_bubble,
    pack_header,
    parse_echo,
    parse_header,
    parse_ra,
    parse_rs,
    parse_unreachable,
)

SERVER = ipv4_to_int("198.51.100.10")
SERVER_LL = server_link_local(SERVER)
PREFIX64 = TEREDO_PREFIX + SERVER.to_bytes(4, "big") + bytes(8)


def v6(text: str) -> bytes:
    return ipaddress.IPv6Address(text).packed


def test_rs_checksums_match_digest_vectors() -> None:
    # TEREDO-SPEC 1.4: 0x7D37 (fe80::ffff:ffff:ffff) and 0x125D (cone form) to ff02::2.
    rs = build_rs()
    assert rs == bytes.fromhex(
        "6000000000083aff"
        "fe800000000000000000ffffffffffff"
        "ff020000000000000000000000000002"
        "85007d3700000000"
    )
    cone = build_rs(LINK_LOCAL_CONE)
    assert cone[42:44] == b"\x12\x5d"
    assert len(rs) + 13 == 61  # Miredo's RS UDP payload with its nonce-only Auth header


def test_checksum_matches_a_plain_word_loop() -> None:
    # Independent reference: RFC 1071 sum over 16-bit words with end-around carry.
    src, dst = v6("2001:db8::1"), v6("2001:db8::2")
    msg = bytes((128, 0, 0, 0, 0, 7, 0, 1)) + b"odd-length payload!"
    pseudo = src + dst + struct.pack("!I3xB", len(msg), NH_ICMPV6)
    data = pseudo + msg + b"\x00"
    total = 0
    for i in range(0, len(data) - 1, 2):
        total += (data[i] << 8) | data[i + 1]
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    assert icmpv6_checksum(src, dst, msg) == ~total & 0xFFFF
    filled = msg[:2] + icmpv6_checksum(src, dst, msg).to_bytes(2, "big") + msg[4:]
    assert icmpv6_checksum_ok(src, dst, filled)
    assert not icmpv6_checksum_ok(src, dst, msg[:2] + b"\x00\x01" + msg[4:])


def test_header_round_trip_and_checks() -> None:
    hdr = IPv6Header(0xB8, 0x431CC, 0, NH_NONE, 17, v6("2001::1"), v6("2001::2"))
    raw = hdr.pack()
    assert len(raw) == 40
    assert parse_header(raw) == hdr
    assert parse_header(raw[:39]) is DropReason.TOO_SHORT
    assert parse_header(b"\x40" + raw[1:]) is DropReason.NOT_IPV6
    longer = pack_header(v6("::1"), v6("::2"), 1, NH_NONE, 0)
    assert parse_header(longer) is DropReason.BAD_PAYLOAD_LENGTH
    assert isinstance(parse_header(longer + b"\x00"), IPv6Header)


def test_rs_parse() -> None:
    rs = parse_rs(build_rs(LINK_LOCAL_CONE))
    assert rs == RouterSolicitation(LINK_LOCAL_CONE, ALL_ROUTERS, 255, b"")
    with_opt = build_rs(options=bytes((1, 1)) + bytes(6))  # a source link-layer option
    got = parse_rs(with_opt)
    assert not isinstance(got, DropReason)
    assert got.options == bytes((1, 1)) + bytes(6)
    assert parse_rs(build_rs(options=bytes((1, 0)) + bytes(6))) is DropReason.BAD_ND_OPTION
    assert parse_rs(build_rs(options=bytes((1, 2)) + bytes(6))) is DropReason.BAD_ND_OPTION
    broken = bytearray(build_rs())
    broken[-1] ^= 1
    assert parse_rs(bytes(broken)) is DropReason.BAD_CHECKSUM
    assert not isinstance(parse_rs(bytes(broken), verify_checksum=False), DropReason)
    assert parse_rs(build_bubble(LINK_LOCAL_CONE, ALL_ROUTERS)) is DropReason.NOT_ICMPV6
    echo = build_echo(LINK_LOCAL_CONE, ALL_ROUTERS, 1, 1)
    assert parse_rs(echo) is DropReason.BAD_ICMPV6


def test_ra_miredo_layout_and_round_trip() -> None:
    ra = build_ra(SERVER_LL, LINK_LOCAL_RESTRICTED, PREFIX64)
    # TEREDO-SPEC 2.3: 117-byte UDP payload = 13 Auth + 8 origin + 96 IPv6.
    assert len(ra) == 96
    assert ra[40:56] == bytes.fromhex("8600954c0000000000000000000007d0")
    assert ra[56:88] == bytes.fromhex(
        "03044040ffffffffffffffff0000000020010000c633640a0000000000000000"
    )
    assert ra[88:] == bytes.fromhex("0501000000000500")
    parsed = parse_ra(ra)
    assert parsed == RouterAdvertisement(SERVER_LL, LINK_LOCAL_RESTRICTED, PREFIX64)
    assert isinstance(parsed, RouterAdvertisement)
    assert parsed.pack() == ra
    no_mtu = parse_ra(build_ra(SERVER_LL, LINK_LOCAL_RESTRICTED, PREFIX64, mtu=None))
    assert isinstance(no_mtu, RouterAdvertisement)
    assert no_mtu.mtu is None


def _ra_with_options(options: bytes) -> bytes:
    body = bytes((134, 0, 0, 0, 0, 0, 0, 0)) + bytes(8) + options
    return build_icmpv6(SERVER_LL, LINK_LOCAL_RESTRICTED, body)


PIO = bytes.fromhex("03044040ffffffffffffffff00000000") + PREFIX64
MTU = bytes.fromhex("0501000000000500")


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        (PIO + MTU, None),
        (MTU + PIO, None),
        (PIO + bytes(7), None),  # fewer than 8 trailing bytes: not walked (as Miredo)
        (PIO + bytes((5, 0)) + bytes(6), DropReason.BAD_ND_OPTION),  # length 0
        (PIO + bytes((5, 2)) + bytes(6), DropReason.BAD_ND_OPTION),  # runs past the end
        (PIO + PIO, DropReason.BAD_PREFIX_INFO),  # two prefixes
        (PIO[:2] + b"\x30" + PIO[3:], DropReason.BAD_PREFIX_INFO),  # /48
        (b"\x03\x03" + PIO[2:24], DropReason.BAD_PREFIX_INFO),  # PIO of 24 bytes
        (MTU + MTU + MTU + MTU, DropReason.BAD_PREFIX_INFO),  # no PIO at all
        (PIO + bytes.fromhex("050100000000047f"), DropReason.BAD_MTU_OPTION),  # 1151
        (PIO + bytes.fromhex("0501000000010000"), DropReason.BAD_MTU_OPTION),  # 65536
        (PIO + bytes.fromhex("050100000000ffff"), None),  # 65535
        (MTU, DropReason.BAD_PREFIX_INFO),  # too short to hold a PIO
    ],
)
def test_ra_validation(options: bytes, expected: DropReason | None) -> None:
    got = parse_ra(_ra_with_options(options))
    if expected is None:
        assert isinstance(got, RouterAdvertisement)
        assert got.prefix == PREFIX64
    else:
        assert got is expected


def test_ra_rejects_wrong_type_code_and_checksum() -> None:
    ra = bytearray(build_ra(SERVER_LL, LINK_LOCAL_RESTRICTED, PREFIX64))
    assert parse_ra(bytes(ra[:-8]), verify_checksum=False) is DropReason.BAD_PAYLOAD_LENGTH
    coded = build_icmpv6(SERVER_LL, LINK_LOCAL_RESTRICTED, bytes((134, 1, 0, 0)) + bytes(ra[44:]))
    assert parse_ra(coded) is DropReason.BAD_ICMPV6
    ra[60] ^= 0xFF
    assert parse_ra(bytes(ra)) is DropReason.BAD_CHECKSUM
    assert parse_ra(build_rs()) is DropReason.BAD_ICMPV6


def test_echo_round_trip_and_miredo_ping_shape() -> None:
    src = v6("2001:0:c633:640a:3459:37dd:34ff:8eb2")
    dst = v6("2001:db8::1")
    req = build_echo(src, dst, 0x214E, 0xF97D, bytes(range(22)), hop_limit=128)
    assert len(req) == 40 + 8 + 22  # Miredo's ping test: 26-byte ICMPv6 payload after id/seq
    parsed = parse_echo(req)
    assert parsed == Echo(src, dst, False, 0x214E, 0xF97D, bytes(range(22)), 128)
    assert isinstance(parsed, Echo)
    assert parsed.pack() == req
    reply = build_echo(dst, src, 1, 2, b"x", reply=True, flow_label=0x7FE6E)
    got = parse_echo(reply)
    assert isinstance(got, Echo)
    assert got.reply
    assert got.flow_label == 0x7FE6E
    assert parse_echo(build_rs()) is DropReason.BAD_ICMPV6


def test_unreachable_is_bounded_to_minimum_mtu() -> None:
    src, dst = v6("2001:0:c633:640a::1"), v6("2001:db8::9")
    big = pack_header(dst, src, 1400, 17, 64) + bytes(1400)
    err = build_unreachable(src, dst, 3, big)
    assert len(err) == 1280
    parsed = parse_unreachable(err)
    assert isinstance(parsed, Unreachable)
    assert parsed.code == 3
    assert parsed.quoted == big[:MAX_QUOTED]
    assert parsed.pack() == err
    small = build_unreachable(src, dst, 1, big[:60])
    assert len(small) == 40 + 8 + 60
    assert parse_unreachable(build_rs()) is DropReason.BAD_ICMPV6


def test_bubble() -> None:
    src, dst = v6("fe80::4090:4f1a:9b1b:59ae"), v6("2001:0:c633:640a:cc2:63bd:34ff:8efc")
    b = build_bubble(src, dst)
    assert b == bytes.fromhex("6000000000003b00") + src + dst  # Miredo: hop limit 0
    assert build_bubble(src, dst, hop_limit=1)[7] == 1
    assert is_bubble(b)
    assert is_bubble(memoryview(b))
    assert not is_bubble(build_rs())
    assert not is_bubble(b[:39])
