"""Teredo address codec: RFC 4380 and TEREDO-SPEC worked examples, byte for byte."""

from __future__ import annotations

import ipaddress

import pytest

from teredo.core.addr import (
    ALL_NODES,
    ALL_ROUTERS,
    FLAG_CONE,
    FLAG_RANDOM_MASK,
    LINK_LOCAL_CONE,
    LINK_LOCAL_RESTRICTED,
    LINK_LOCAL_XP,
    TEREDO_PREFIX,
    TEREDO_PREFIX_LEGACY,
    TeredoAddress,
    embedded_flags,
    embedded_mapping,
    embedded_server,
    embedded_sockaddr,
    format_prefix,
    int_to_ipv4,
    ipv4_to_int,
    is_cone,
    is_global_ipv4,
    is_link_local,
    is_teredo,
    make_flags,
    obfuscate_ipv4,
    obfuscate_port,
    pack_address,
    parse_prefix,
    random_bits,
    server_link_local,
)


def v6(text: str) -> bytes:
    return ipaddress.IPv6Address(text).packed


def test_rfc4380_example_decodes() -> None:
    # RFC 4380 section 4: server 65.54.227.120, cone, port 40000, client 192.0.2.45.
    addr = TeredoAddress.parse("2001:0:4136:e378:8000:63bf:3fff:fdd2")
    assert addr is not None
    assert addr.prefix == TEREDO_PREFIX
    assert str(addr.server_ipv4) == "65.54.227.120"
    assert addr.flags == 0x8000
    assert addr.cone
    assert addr.port == 40000
    assert str(addr.client_ipv4) == "192.0.2.45"
    assert addr.mapping == (ipv4_to_int("192.0.2.45"), 40000)


def test_digest_worked_example_encodes_byte_exact() -> None:
    # TEREDO-SPEC 1.3: server 198.51.100.10, mapping 203.0.113.77:51234, A bits 0xD59.
    flags = make_flags(0xD59)
    assert flags == 0x3459
    assert flags & ~FLAG_RANDOM_MASK == 0
    addr = TeredoAddress(
        TEREDO_PREFIX, ipv4_to_int("198.51.100.10"), flags, 51234, ipv4_to_int("203.0.113.77")
    )
    assert addr.pack() == bytes.fromhex("20010000c633640a345937dd34ff8eb2")
    assert str(addr) == "2001:0:c633:640a:3459:37dd:34ff:8eb2"
    assert TeredoAddress.unpack(addr.pack()) == addr
    assert addr.random_bits == 0xD59
    assert not addr.cone
    assert addr.other_flags == 0


def test_fast_functions_agree_with_the_dataclass() -> None:
    raw = v6("2001:0:c633:640a:3459:37dd:34ff:8eb2")
    view = memoryview(raw)
    for data in (raw, view):
        assert is_teredo(data)
        assert not is_teredo(data, TEREDO_PREFIX_LEGACY)
        assert embedded_server(data) == ipv4_to_int("198.51.100.10")
        assert embedded_mapping(data) == (ipv4_to_int("203.0.113.77"), 51234)
        assert embedded_sockaddr(data) == ("203.0.113.77", 51234)
        assert embedded_flags(data) == 0x3459
        assert not is_cone(data)
    assert is_cone(v6("2001:0:4136:e378:8000:63bf:3fff:fdd2"))
    assert not is_teredo(v6("2001:db8::1"))


def test_unpack_rejects_wrong_prefix_and_length() -> None:
    legacy = v6("3ffe:831f:4136:e378:8000:63bf:3fff:fdd2")
    assert TeredoAddress.unpack(legacy) is None
    got = TeredoAddress.unpack(legacy, TEREDO_PREFIX_LEGACY)
    assert got is not None
    assert got.port == 40000
    assert TeredoAddress.unpack(legacy, None) == got
    assert TeredoAddress.unpack(legacy[:15]) is None
    assert TeredoAddress.unpack(legacy + b"\x00") is None
    assert TeredoAddress.parse("not an address") is None
    assert TeredoAddress.parse("192.0.2.1") is None


def test_dataclass_validates_fields() -> None:
    with pytest.raises(ValueError, match="prefix"):
        TeredoAddress(b"\x20\x01", 0, 0, 0, 0)
    with pytest.raises(ValueError, match="32-bit"):
        TeredoAddress(TEREDO_PREFIX, 1 << 32, 0, 0, 0)
    with pytest.raises(ValueError, match="16-bit"):
        TeredoAddress(TEREDO_PREFIX, 0, 0, 70000, 0)


def test_origin_vectors_obfuscation() -> None:
    # RFC 4380 section 5.1.1: port 337 -> 0xFEAE, 1.2.3.4 -> fe fd fc fb.
    assert obfuscate_port(337) == 0xFEAE
    assert obfuscate_ipv4(ipv4_to_int("1.2.3.4")) == 0xFEFDFCFB
    assert obfuscate_port(obfuscate_port(51234)) == 51234


def test_make_flags_spreads_bits_into_mask() -> None:
    assert make_flags(0) == 0
    assert make_flags(0xFFF) == FLAG_RANDOM_MASK
    assert make_flags(0xF00) == 0x3C00
    assert make_flags(0x0FF) == 0x00FF
    assert make_flags(0x123, cone=True) == FLAG_CONE | (1 << 10) | 0x23
    for r in (0, 1, 0x100, 0x555, 0xAAA, 0xFFF):
        assert random_bits(make_flags(r)) == r
    with pytest.raises(ValueError, match="12-bit"):
        make_flags(0x1000)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("198.51.100.10", True),
        ("203.0.113.77", True),
        ("192.0.2.45", True),
        ("65.54.227.120", True),
        ("240.0.0.1", True),  # Miredo treats class E as global
        ("0.1.2.3", False),
        ("10.1.2.3", False),
        ("127.0.0.1", False),
        ("169.254.1.1", False),
        ("172.16.0.1", False),
        ("172.31.255.255", False),
        ("172.32.0.1", True),
        ("192.168.1.1", False),
        ("192.88.99.1", False),
        ("192.88.98.1", True),
        ("224.0.0.253", False),
        ("239.255.255.255", False),
        ("255.255.255.255", False),
    ],
)
def test_is_global_ipv4(text: str, expected: bool) -> None:
    assert is_global_ipv4(ipv4_to_int(text)) is expected


def test_special_link_local_addresses() -> None:
    assert v6("fe80::ffff:ffff:ffff") == LINK_LOCAL_RESTRICTED
    assert v6("fe80::8000:5445:5245:444f") == LINK_LOCAL_CONE
    assert v6("fe80::5445:5245:444f") == LINK_LOCAL_XP
    assert v6("ff02::2") == ALL_ROUTERS
    assert v6("ff02::1") == ALL_NODES
    # TEREDO-SPEC 1.4: server link-local for 198.51.100.10.
    assert server_link_local(ipv4_to_int("198.51.100.10")) == v6("fe80::8000:f227:39cc:9bf5")
    assert is_link_local(LINK_LOCAL_CONE)
    assert not is_link_local(ALL_ROUTERS)
    assert not is_link_local(v6("2001::1"))


def test_prefix_setting() -> None:
    assert parse_prefix("2001::") == TEREDO_PREFIX
    assert parse_prefix("2001:0000::/32") == TEREDO_PREFIX
    assert parse_prefix(" 3ffe:831f::/32 ") == TEREDO_PREFIX_LEGACY
    assert format_prefix(TEREDO_PREFIX_LEGACY) == "3ffe:831f::/32"
    for bad in ("2001::/48", "2001::1/32", "junk", "2001::/16"):
        with pytest.raises(ValueError, match="bad Teredo prefix"):
            parse_prefix(bad)


def test_ipv4_text_conversions() -> None:
    assert ipv4_to_int("198.51.100.10") == 0xC633640A
    assert int_to_ipv4(0xC633640A) == "198.51.100.10"
    for bad in ("1.2.3", "1.2.3.256", "x", "01.2.3.4"):
        with pytest.raises(ValueError, match="not an IPv4 address"):
            ipv4_to_int(bad)


def test_pack_address_matches_miredo_capture_addresses() -> None:
    # The client addresses Miredo formed in tests/vectors/miredo_captures.json: our packing of
    # (server, flags, mapping) must give back the same 16 bytes.
    for text in ("2001:0:c633:640a:20dc:63be:34ff:8efd", "2001:0:c633:640a:a5:63bd:34ff:8efc"):
        raw = v6(text)
        srv = embedded_server(raw)
        ipv4, port = embedded_mapping(raw)
        assert pack_address(TEREDO_PREFIX, srv, embedded_flags(raw), port, ipv4) == raw


def test_endpoint_cache_converts_both_ways_and_stays_bounded() -> None:
    from teredo.core.addr import EndpointCache

    cache = EndpointCache(limit=4)
    assert cache.ipv4_of("203.0.113.7") == 0xCB007107
    assert cache.ipv4_of("bogus") is None
    assert cache.ipv4_of("::1") is None
    assert "bogus" not in cache.ipv4
    assert cache.global_ipv4_of("203.0.113.7") == 0xCB007107
    assert cache.global_ipv4_of("192.168.1.2") == -1
    assert cache.global_ipv4_of("bogus") == -2
    assert cache.sockaddr_of(0xCB007107, 3544) == ("203.0.113.7", 3544)
    assert cache.sockaddr((0xC6336414 << 16) | 1) == ("198.51.100.20", 1)
    for i in range(20):
        assert cache.ipv4_of(f"198.51.100.{i}") == 0xC6336400 + i
        assert cache.sockaddr_of(0xC6336400 + i, i) == (f"198.51.100.{i}", i)
        assert len(cache.ipv4) <= 4
        assert len(cache.sockaddrs) <= 4
