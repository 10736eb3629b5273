"""Teredo UDP payload: Authentication, Origin Indication, RFC 6081 trailers, the receive checks
of TEREDO-SPEC 2.4, and the packets captured from Miredo 1.2.6 (tests/vectors), rebuilt byte
for byte from their parsed fields."""

from __future__ import annotations

import ipaddress
import json
from pathlib import Path
from typing import Any

import pytest

from teredo.core.addr import (
    LINK_LOCAL_RESTRICTED,
    TEREDO_PORT,
    TEREDO_PREFIX,
    TeredoAddress,
    embedded_mapping,
    embedded_server,
    ipv4_to_int,
    is_link_local,
    is_teredo,
    server_link_local,
)
from teredo.core.counters import DropCounters, DropReason
from teredo.core.ipv6 import (
    Echo,
    RouterAdvertisement,
    RouterSolicitation,
    build_bubble,
    build_echo,
    build_ra,
    build_rs,
    parse_echo,
    parse_ra,
    parse_rs,
)
from teredo.core.wire import (
    AlternateAddressTrailer,
    AuthHeader,
    NeighborDiscoveryTrailer,
    NonceTrailer,
    RandomPortTrailer,
    TeredoPacket,
    UnknownTrailer,
    build_auth,
    build_origin,
    build_trailers,
    encapsulate,
    parse_auth,
    parse_origin,
    parse_payload,
    parse_trailers,
)

VECTORS = Path(__file__).resolve().parent.parent / "vectors" / "miredo_captures.json"
NONCE = bytes.fromhex("0a897afd901282d9")


def v6(text: str) -> bytes:
    return ipaddress.IPv6Address(text).packed


BUBBLE = build_bubble(v6("2001:0:c633:640a:3459:37dd:34ff:8eb2"), v6("2001:0:c633:640a::1"))


def parsed(data: bytes) -> TeredoPacket:
    got = parse_payload(data)
    assert isinstance(got, TeredoPacket), got
    return got


# --- Origin Indication and Authentication ------------------------------------------------------


def test_origin_indication_vectors() -> None:
    # RFC 4380 section 5.1.1: port 337, 1.2.3.4; TEREDO-SPEC 1.3: 203.0.113.77:51234.
    assert build_origin(ipv4_to_int("1.2.3.4"), 337) == bytes.fromhex("0000feaefefdfcfb")
    oi = build_origin(ipv4_to_int("203.0.113.77"), 51234)
    assert oi == bytes.fromhex("000037dd34ff8eb2")
    assert parse_origin(oi) == (ipv4_to_int("203.0.113.77"), 51234)
    assert parse_origin(oi[:7]) is DropReason.TRUNCATED_ORIGIN


def test_auth_header_layout() -> None:
    assert build_auth(NONCE) == bytes.fromhex("00010000") + NONCE + b"\x00"
    full = build_auth(NONCE, client_id=b"id", auth_value=b"value", confirmation=1)
    assert full == bytes.fromhex("00010205") + b"id" + b"value" + NONCE + b"\x01"
    got = parse_auth(full + b"rest")
    assert got == (AuthHeader(NONCE, b"id", b"value", 1), len(full))
    assert parse_auth(full[:-1]) is DropReason.TRUNCATED_AUTH
    assert parse_auth(b"\x00") is DropReason.TRUNCATED_AUTH
    assert parse_auth(b"\x60" + bytes(20)) is DropReason.BAD_AUTH
    with pytest.raises(ValueError, match="at most 255"):
        build_auth(NONCE, client_id=bytes(256))
    with pytest.raises(ValueError, match="one byte"):
        build_auth(NONCE, confirmation=256)
    with pytest.raises(ValueError, match="8 bytes"):
        build_auth(NONCE[:7])


# --- parse_payload -----------------------------------------------------------------------------


def test_plain_ipv6_packet() -> None:
    pkt = parsed(BUBBLE)
    assert pkt.auth is None
    assert pkt.nonce is None
    assert pkt.confirmation is None
    assert pkt.origin is None
    assert pkt.ipv6 is BUBBLE  # no copy when the packet is the whole datagram
    assert bytes(pkt.ipv6_view()) == BUBBLE
    assert pkt.is_bubble
    assert pkt.src == BUBBLE[8:24]
    assert pkt.dst == BUBBLE[24:40]
    assert pkt.next_header == 59
    assert pkt.hop_limit == 0
    assert pkt.trailers == ()
    assert "TeredoPacket(" in repr(pkt)


def test_auth_then_origin_then_ipv6() -> None:
    oi = build_origin(ipv4_to_int("203.0.113.2"), 40001)
    auth = build_auth(NONCE, client_id=b"abc", auth_value=b"de", confirmation=7)
    pkt = parsed(encapsulate(BUBBLE, auth=auth, origin=oi))
    assert pkt.auth == AuthHeader(NONCE, b"abc", b"de", 7)
    assert pkt.nonce == NONCE
    assert pkt.confirmation == 7
    assert pkt.origin == (ipv4_to_int("203.0.113.2"), 40001)
    assert pkt.ipv6 == BUBBLE
    assert pkt.ip6_offset == len(auth) + 8


def test_origin_before_auth_is_dropped() -> None:
    # RFC 4380 5.1.1: the Authentication header MUST come first.
    data = build_origin(1, 2) + build_auth(NONCE) + BUBBLE
    assert parse_payload(data) is DropReason.BAD_ORIGIN_ORDER


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", DropReason.TOO_SHORT),
        (BUBBLE[:39], DropReason.TOO_SHORT),
        (b"\x00", DropReason.TOO_SHORT),
        (b"\x00\x01" + bytes(10), DropReason.TRUNCATED_AUTH),
        (bytes.fromhex("00010405") + bytes(16), DropReason.TRUNCATED_AUTH),
        (b"\x00\x00\x01\x02\x03", DropReason.TRUNCATED_ORIGIN),
        (build_auth(NONCE) + b"\x00\x00\x12", DropReason.TRUNCATED_ORIGIN),
        (build_auth(NONCE) + b"\x00\x02" + BUBBLE, DropReason.NOT_IPV6),
        (b"\x00\x02" + BUBBLE, DropReason.NOT_IPV6),
        (b"\x45" + BUBBLE[1:], DropReason.NOT_IPV6),
        (build_origin(1, 2) + build_origin(1, 2) + BUBBLE, DropReason.NOT_IPV6),
        (build_origin(1, 2) + BUBBLE[:30], DropReason.TOO_SHORT),
        (BUBBLE[:5] + b"\x01" + BUBBLE[6:], DropReason.BAD_PAYLOAD_LENGTH),
        (build_rs()[:-1], DropReason.BAD_PAYLOAD_LENGTH),
    ],
)
def test_drop_reasons(data: bytes, reason: DropReason) -> None:
    assert parse_payload(data) is reason


def test_trailing_bytes_are_trailers_not_ipv6() -> None:
    # TEREDO-SPEC 2.4 / RFC 6081: accept extra bytes, hand only 40 + plen to the stack.
    trailers = (
        NonceTrailer(b"\x01\x02\x03\x04"),
        AlternateAddressTrailer(((ipv4_to_int("192.168.1.2"), 3544), (ipv4_to_int("1.2.3.4"), 9))),
        NeighborDiscoveryTrailer(1),
        RandomPortTrailer(40123),
        UnknownTrailer(0x7F, b"xyz"),
    )
    raw = build_trailers(trailers)
    assert raw[:6] == bytes((1, 4, 1, 2, 3, 4))
    assert raw[6:10] == bytes((3, 14, 0, 0))
    pkt = parsed(BUBBLE + raw)
    assert pkt.ipv6 == BUBBLE
    assert pkt.is_bubble
    assert pkt.trailer_bytes == raw
    assert pkt.trailers == trailers


@pytest.mark.parametrize(
    ("area", "reason"),
    [
        (b"\x01", DropReason.TRUNCATED_TRAILER),  # one lone byte
        (bytes((1, 4, 1, 2)), DropReason.TRUNCATED_TRAILER),  # value runs past the end
        (bytes((1, 3, 1, 2, 3)), DropReason.BAD_TRAILER),  # nonce of 3 bytes
        (bytes((3, 6, 0, 0, 1, 2, 3, 4)), DropReason.BAD_TRAILER),  # no full pair
        (bytes((3, 32)) + bytes(32), DropReason.BAD_TRAILER),  # more than 4 addresses
        (bytes((4, 2, 0, 0)), DropReason.BAD_TRAILER),
        (bytes((5, 3, 0, 0, 0)), DropReason.BAD_TRAILER),
        (bytes((0x7F, 0)) * 17, DropReason.TOO_MANY_TRAILERS),  # more than anybody sends
    ],
)
def test_malformed_trailer_area_is_named(area: bytes, reason: DropReason) -> None:
    assert parse_trailers(area) is reason
    pkt = parsed(BUBBLE + area)
    assert pkt.ipv6 == BUBBLE  # the framing holds; the client drops it (test_trailers.py)
    assert pkt.has_trailers
    assert pkt.trailers is reason


def test_trailer_builders_validate() -> None:
    with pytest.raises(ValueError, match="4 bytes"):
        NonceTrailer(b"\x01").pack()
    with pytest.raises(ValueError, match="1 to 4"):
        AlternateAddressTrailer(()).pack()
    assert parse_trailers(b"") == ()


# --- Miredo 1.2.6 captures ---------------------------------------------------------------------


def load_captures() -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(VECTORS.read_text())
    return doc


CAPTURES = load_captures()
PACKETS: list[dict[str, Any]] = CAPTURES["packets"]


def test_capture_file_has_provenance_and_every_kind() -> None:
    prov = CAPTURES["provenance"]
    assert "1.2.6" in prov["miredo_version"]
    assert prov["date"]
    assert "capture_miredo.py" in prov["command"]
    names = {p["name"] for p in PACKETS}
    for needed in (
        "rs",
        "ra",
        "bubble_direct",
        "bubble_indirect",
        "bubble_with_origin",
        "echo_request_direct",
        "echo_reply_direct",
        "echo_request_to_server",
        "relay_bubble_indirect",
        "relay_bubble_with_origin",
        "relay_bubble_direct",
        "relay_echo_request_direct",
        "relay_echo_reply_direct",
    ):
        assert needed in names


def _ids(p: dict[str, Any]) -> str:
    return f"{p['name']}-{p['src']}:{p['sport']}->{p['dst']}:{p['dport']}"


def _relay_mapping() -> tuple[int, int]:
    ((ip, port),) = CAPTURES["provenance"]["topology"]["relay"].items()
    return ipv4_to_int(ip), port


@pytest.mark.parametrize("cap", PACKETS, ids=[_ids(p) for p in PACKETS])
def test_miredo_capture_parses_and_rebuilds(cap: dict[str, Any]) -> None:
    payload = bytes.fromhex(cap["payload"])
    pkt = parsed(payload)
    server = ipv4_to_int(CAPTURES["provenance"]["topology"]["server"][0])
    relayed = cap["name"].startswith("relay_")  # the Miredo relay is one end
    name = cap["name"].removeprefix("relay_")
    src4, dst4 = ipv4_to_int(cap["src"]), ipv4_to_int(cap["dst"])
    assert pkt.ip6_offset + pkt.ip6_length == len(payload)  # Miredo sends no trailers

    if name == "rs":
        assert pkt.nonce is not None
        assert pkt.origin is None
        rs = parse_rs(pkt.ipv6)
        assert rs == RouterSolicitation(LINK_LOCAL_RESTRICTED, v6("ff02::2"), 255, b"")
        assert len(payload) == 61
        assert (dst4, cap["dport"]) == (server, TEREDO_PORT)
        assert build_auth(pkt.nonce) + build_rs() == payload

    elif name == "ra":
        assert pkt.nonce is not None
        assert pkt.confirmation == 0
        # The origin is the client's mapping: the UDP destination of the RA.
        assert pkt.origin == (dst4, cap["dport"])
        ra = parse_ra(pkt.ipv6)
        assert isinstance(ra, RouterAdvertisement)
        assert ra.src == server_link_local(server)
        assert ra.dst == LINK_LOCAL_RESTRICTED
        assert ra.prefix == TEREDO_PREFIX + server.to_bytes(4, "big") + bytes(8)
        assert ra.mtu == 1280
        assert len(payload) == 117
        rebuilt = build_ra(server_link_local(server), LINK_LOCAL_RESTRICTED, ra.prefix)
        assert build_auth(pkt.nonce) + build_origin(*pkt.origin) + rebuilt == payload
        # The address the client formed embeds this mapping and server.
        addrs = CAPTURES["provenance"]["topology"]["teredo_addresses"].values()
        mine = [v6(a) for a in addrs if embedded_mapping(v6(a)) == pkt.origin]
        assert len(mine) == 1
        assert embedded_server(mine[0]) == server

    elif name.startswith("bubble"):
        assert pkt.is_bubble
        assert pkt.auth is None
        assert pkt.hop_limit == 0
        # Miredo's bubbles go between an HMAC link-local identity and a Teredo address.
        assert is_teredo(pkt.src) != is_teredo(pkt.dst)
        assert is_link_local(pkt.src) or is_link_local(pkt.dst)
        origin = b""
        if name == "bubble_with_origin":
            # Forwarded by the server to its client, naming the sender's mapping.
            assert (src4, cap["sport"]) == (server, TEREDO_PORT)
            assert pkt.origin is not None
            assert pkt.origin != (dst4, cap["dport"])
            if relayed:
                assert pkt.origin == _relay_mapping()
            assert embedded_mapping(pkt.dst) == (dst4, cap["dport"])
            origin = build_origin(*pkt.origin)
        elif name == "bubble_indirect":
            assert pkt.origin is None
            assert (dst4, cap["dport"]) == (embedded_server(pkt.dst), TEREDO_PORT)
        else:
            assert pkt.origin is None
            if is_teredo(pkt.dst):
                assert embedded_mapping(pkt.dst) == (dst4, cap["dport"])
            else:
                assert embedded_mapping(pkt.src) == (src4, cap["sport"])
        assert origin + build_bubble(pkt.src, pkt.dst) == payload

    elif name.startswith("echo"):
        echo = parse_echo(pkt.ipv6)
        assert isinstance(echo, Echo)
        assert echo.reply == name.startswith("echo_reply")
        if name == "echo_request_to_server":
            # The ping test (RFC 4380 5.2.9): through the own server, hop limit 128, 26 bytes.
            assert (dst4, cap["dport"]) == (server, TEREDO_PORT)
            assert echo.hop_limit == 128
            assert len(echo.data) + 8 == 26  # the whole ICMPv6 message
            assert not is_teredo(echo.dst)
        else:
            # Direct: each Teredo end is reached at the mapping its address embeds.
            assert is_teredo(echo.src) or is_teredo(echo.dst)
            if is_teredo(echo.src):
                assert embedded_mapping(echo.src) == (src4, cap["sport"])
            if is_teredo(echo.dst):
                assert embedded_mapping(echo.dst) == (dst4, cap["dport"])
            if relayed:
                assert _relay_mapping() in ((src4, cap["sport"]), (dst4, cap["dport"]))
        rebuilt = build_echo(
            echo.src,
            echo.dst,
            echo.identifier,
            echo.sequence,
            echo.data,
            reply=echo.reply,
            hop_limit=echo.hop_limit,
            traffic_class=echo.traffic_class,
            flow_label=echo.flow_label,
        )
        assert rebuilt == payload
        assert echo.pack() == payload

    else:
        pytest.fail(f"capture has a packet kind this test does not know: {name}")


def test_miredo_client_addresses_decode() -> None:
    server = CAPTURES["provenance"]["topology"]["server"][0]
    clients = CAPTURES["provenance"]["topology"]["clients"]
    for text in CAPTURES["provenance"]["topology"]["teredo_addresses"].values():
        addr = TeredoAddress.parse(text)
        assert addr is not None
        assert str(addr.server_ipv4) == server
        assert clients[str(addr.client_ipv4)] == addr.port
        assert not addr.cone  # Miredo follows RFC 5991: C = 0, random bits
        assert addr.other_flags == 0


# --- drop counters -----------------------------------------------------------------------------


def test_drop_counters_count_by_reason() -> None:
    counters = DropCounters()
    assert counters.snapshot() == {}
    for data in (b"", b"\x00\x01", b"\x45" + bytes(60), b"\x00\x01" + bytes(5)):
        got = parse_payload(data)
        assert isinstance(got, DropReason)
        counters.count(got)
    counters.count(DropReason.BAD_CHECKSUM, 3)
    assert counters.get(DropReason.TRUNCATED_AUTH) == 2
    assert counters.snapshot() == {
        "too_short": 1,
        "not_ipv6": 1,
        "truncated_auth": 2,
        "bad_checksum": 3,
    }
    assert counters.total() == 7
    for reason in DropReason:  # every member has a slot
        counters.count(reason)
    assert len(counters.snapshot()) == len(DropReason)
    counters.reset()
    assert counters.total() == 0
