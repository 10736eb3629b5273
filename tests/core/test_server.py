"""The server machine (RFC 4380 section 5.3): every acceptance check and destination rule is fed
the packet it forbids and must drop it with its reason; the allowed cases are checked byte for
byte against packets built independently with the codecs."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from teredo.core.addr import (
    ALL_ROUTERS,
    LINK_LOCAL_CONE,
    LINK_LOCAL_RESTRICTED,
    TEREDO_PREFIX,
    ipv4_to_int,
    make_flags,
    pack_address,
    server_link_local,
)
from teredo.core.counters import DropReason
from teredo.core.ipv6 import build_bubble, build_echo, build_ra, build_rs, parse_ra
from teredo.core.server import ServerLimits, ServerMachine, ServerParams
from teredo.core.wire import build_auth, build_origin, parse_payload

PRIMARY = "198.51.100.10"
SECONDARY = "198.51.100.11"
CLIENT = ("203.0.113.77", 51234)
OTHER_CLIENT = ("203.0.113.90", 40000)
RELAY = ("198.51.100.20", 33333)
NONCE = bytes.fromhex("0102030405060708")
NATIVE = bytes.fromhex("20010db8000100000000000000000100")  # 2001:db8:1::100


@dataclass
class Recorder:
    udp: list[tuple[bytes, tuple[str, int], bool]] = field(default_factory=list)
    native: list[bytes] = field(default_factory=list)

    def send_udp(self, payload: bytes, destination: tuple[str, int], from_secondary: bool) -> None:
        self.udp.append((payload, destination, from_secondary))

    def send_ipv6(self, packet: bytes) -> None:
        self.native.append(packet)


def teredo_address(mapping: tuple[str, int], server: str = PRIMARY) -> bytes:
    return pack_address(
        TEREDO_PREFIX, ipv4_to_int(server), make_flags(0x123), mapping[1], ipv4_to_int(mapping[0])
    )


def make_server(limits: ServerLimits | None = None) -> tuple[ServerMachine, Recorder]:
    out = Recorder()
    params = ServerParams(ipv4_to_int(PRIMARY), ipv4_to_int(SECONDARY))
    if limits is not None:
        params = ServerParams(ipv4_to_int(PRIMARY), ipv4_to_int(SECONDARY), limits=limits)
    return ServerMachine(params, out), out


def _bubble_to_peer() -> bytes:
    return build_bubble(teredo_address(CLIENT), teredo_address(OTHER_CLIENT))


def rs_payload(src: bytes = LINK_LOCAL_RESTRICTED, nonce: bytes | None = NONCE) -> bytes:
    auth = build_auth(nonce) if nonce is not None else b""
    return auth + build_rs(src)


def only_drop(server: ServerMachine) -> DropReason:
    counts = server.drops.snapshot()
    assert len(counts) == 1, counts
    assert sum(counts.values()) == 1
    return DropReason[next(iter(counts)).upper()]


# --- Router Solicitation -> Router Advertisement (section 5.3.2) -------------------------------


def test_rs_is_answered_with_the_ra_miredo_sends() -> None:
    server, out = make_server()
    server.receive(rs_payload(), CLIENT, False, 0.0)
    assert server.drops.total() == 0
    [(payload, destination, from_secondary)] = out.udp
    assert destination == CLIENT
    assert from_secondary is False
    expected_ra = build_ra(
        server_link_local(ipv4_to_int(PRIMARY)),
        LINK_LOCAL_RESTRICTED,
        TEREDO_PREFIX + bytes.fromhex("c633640a") + bytes(8),
    )
    expected = build_auth(NONCE) + build_origin(ipv4_to_int(CLIENT[0]), CLIENT[1]) + expected_ra
    assert payload == expected
    assert len(payload) == 117  # Miredo's RA size (TEREDO-SPEC 2.3)
    ra = parse_ra(parse_payload(payload).ipv6)  # type: ignore[union-attr]
    assert not isinstance(ra, DropReason)
    assert ra.mtu == 1280


def test_rs_without_auth_gets_an_ra_without_auth() -> None:
    server, out = make_server()
    server.receive(rs_payload(nonce=None), CLIENT, False, 0.0)
    [(payload, _, _)] = out.udp
    packet = parse_payload(payload)
    assert not isinstance(packet, DropReason)
    assert packet.auth is None
    assert packet.origin == (ipv4_to_int(CLIENT[0]), CLIENT[1])


@pytest.mark.parametrize(
    ("source", "on_secondary", "answer_from_secondary"),
    [
        (LINK_LOCAL_RESTRICTED, False, False),
        (LINK_LOCAL_RESTRICTED, True, True),
        (LINK_LOCAL_CONE, False, True),  # a cone RS is answered from the other address
        (LINK_LOCAL_CONE, True, False),
    ],
)
def test_ra_leaves_from_the_address_the_rfc_says(
    source: bytes, on_secondary: bool, answer_from_secondary: bool
) -> None:
    server, out = make_server()
    server.receive(rs_payload(source), CLIENT, on_secondary, 0.0)
    [(_payload, _, from_secondary)] = out.udp
    assert from_secondary is answer_from_secondary


# The fast path (a repeated RS skips the IPv6 checks) must answer exactly as the full path does.


Sent = list[tuple[bytes, tuple[str, int], bool]]


def _answers(server: ServerMachine, out: Recorder, payload: bytes, source: tuple[str, int]) -> Sent:
    before = len(out.udp)
    server.receive(payload, source, False, 1.0)
    return out.udp[before:]


@pytest.mark.parametrize("source", [LINK_LOCAL_RESTRICTED, LINK_LOCAL_CONE])
def test_repeated_rs_gets_the_same_answer_as_a_first_one(source: bytes) -> None:
    warm, warm_out = make_server()
    cold_nonce = bytes(range(8))
    _answers(warm, warm_out, rs_payload(source, NONCE), OTHER_CLIENT)  # fills the cache
    for nonce, client in ((cold_nonce, CLIENT), (NONCE, ("198.51.100.99", 7))):
        cold, cold_out = make_server()  # every check done afresh
        expected = _answers(cold, cold_out, rs_payload(source, nonce), client)
        got = _answers(warm, warm_out, rs_payload(source, nonce), client)
        assert got == expected
        assert len(got) == 1
        packet = parse_payload(got[0][0])
        assert not isinstance(packet, DropReason)
        assert packet.nonce == nonce
        assert packet.origin == (ipv4_to_int(client[0]), client[1])
    assert warm.stats.router_advertisements == 3


@pytest.mark.parametrize(
    ("source", "reason"),
    [
        (("192.168.1.5", 4000), DropReason.NOT_GLOBAL_IPV4),
        (("not-an-ip", 4000), DropReason.BAD_UDP_SOURCE),
        ((SECONDARY, 3544), DropReason.LOOP),
    ],
)
def test_repeated_rs_still_gets_the_ipv4_source_checks(
    source: tuple[str, int], reason: DropReason
) -> None:
    server, out = make_server()
    assert len(_answers(server, out, rs_payload(), CLIENT)) == 1
    assert _answers(server, out, rs_payload(), source) == []
    assert only_drop(server) is reason


def test_repeated_rs_is_rate_limited_like_a_first_one() -> None:
    server, out = make_server(
        ServerLimits(rs_rate=1.0, rs_burst=2.0, rs_ipv4_rate=1.0, rs_ipv4_burst=2.0)
    )
    for port in range(10):
        server.receive(rs_payload(), (CLIENT[0], 1000 + port), False, 3.0)
    assert len(out.udp) == 2
    assert server.drops.get(DropReason.RS_RATE_LIMITED) == 8


def test_a_broken_variant_of_a_known_rs_is_still_checked() -> None:
    server, out = make_server()
    good = rs_payload()
    server.receive(good, CLIENT, False, 0.0)
    bad = bytearray(good)
    bad[-6] ^= 0xFF  # the checksum: bytes after the nonce differ, so no cache hit
    server.receive(bytes(bad), CLIENT, False, 0.0)
    assert len(out.udp) == 1
    assert only_drop(server) is DropReason.BAD_ROUTER_SOLICITATION


def test_cache_of_known_rs_stays_bounded() -> None:
    server, out = make_server(ServerLimits(rs_burst=1000.0))
    for i in range(200):
        # Distinct link-local sources: each RS is different, all valid.
        source = bytes.fromhex("fe80000000000000") + i.to_bytes(8, "big")
        server.receive(rs_payload(source), CLIENT, False, 0.0)
    assert len(out.udp) == 200
    assert len(server._rs_known) <= 32


def test_rs_with_bad_checksum_is_dropped() -> None:
    server, out = make_server()
    bad = bytearray(rs_payload())
    bad[-6] ^= 0xFF  # inside the ICMPv6 checksum
    server.receive(bytes(bad), CLIENT, False, 0.0)
    assert out.udp == []
    assert only_drop(server) is DropReason.BAD_ROUTER_SOLICITATION


def test_rs_with_wrong_hop_limit_is_dropped() -> None:
    server, out = make_server()
    server.receive(build_auth(NONCE) + build_rs(hop_limit=64), CLIENT, False, 0.0)
    assert out.udp == []
    assert only_drop(server) is DropReason.BAD_ROUTER_SOLICITATION


def test_echo_to_all_routers_is_not_answered() -> None:
    server, out = make_server()
    echo = build_echo(LINK_LOCAL_RESTRICTED, ALL_ROUTERS, 1, 1, b"x")
    server.receive(echo, CLIENT, False, 0.0)
    assert out.udp == []
    assert only_drop(server) is DropReason.NOT_FOR_SERVER


# --- acceptance checks (section 5.3.1) ---------------------------------------------------------


def test_check1_malformed_packet_dropped() -> None:
    server, out = make_server()
    server.receive(b"\x60" + bytes(10), CLIENT, False, 0.0)
    assert out.udp == []
    assert only_drop(server) is DropReason.TOO_SHORT


def test_check2_data_packets_are_not_carried() -> None:
    server, out = make_server()
    src = teredo_address(CLIENT)
    udp_packet = build_bubble(src, teredo_address(OTHER_CLIENT))
    udp_packet = udp_packet[:4] + b"\x00\x08\x11" + udp_packet[7:] + bytes(8)  # next header UDP
    server.receive(udp_packet, CLIENT, False, 0.0)
    assert out.udp == []
    assert only_drop(server) is DropReason.NOT_BUBBLE_OR_ICMPV6


@pytest.mark.parametrize("source_ip", ["192.168.1.2", "10.0.0.1", "127.0.0.1", "224.0.0.253"])
def test_check3_non_global_ipv4_source_dropped(source_ip: str) -> None:
    server, out = make_server()
    server.receive(rs_payload(), (source_ip, 4000), False, 0.0)
    assert out.udp == []
    assert only_drop(server) is DropReason.NOT_GLOBAL_IPV4


def test_check5_teredo_source_with_another_mapping_dropped() -> None:
    server, out = make_server()
    spoofed = teredo_address(OTHER_CLIENT)  # claims another client's mapping
    server.receive(build_bubble(spoofed, teredo_address(CLIENT)), RELAY, False, 0.0)
    assert out.udp == []
    assert only_drop(server) is DropReason.MAPPING_MISMATCH


def test_check6_native_source_to_another_servers_client_dropped() -> None:
    server, out = make_server()
    elsewhere = teredo_address(CLIENT, server="203.0.113.200")
    server.receive(build_bubble(NATIVE, elsewhere), RELAY, False, 0.0)
    assert out.udp == []
    assert only_drop(server) is DropReason.NOT_ACCEPTED


def test_check7_native_source_to_native_destination_dropped() -> None:
    server, out = make_server()
    server.receive(build_echo(NATIVE, NATIVE, 1, 1), RELAY, False, 0.0)
    assert out.udp == []
    assert out.native == []
    assert only_drop(server) is DropReason.NOT_ACCEPTED


def test_loop_guard_drops_our_own_port_3544() -> None:
    server, out = make_server()
    server.receive(rs_payload(), (SECONDARY, 3544), False, 0.0)
    assert out.udp == []
    assert only_drop(server) is DropReason.LOOP


# --- forwarding (section 5.3.1, destination rules) ---------------------------------------------


def test_indirect_bubble_from_relay_reaches_our_client_with_origin() -> None:
    server, out = make_server()
    bubble = build_bubble(NATIVE, teredo_address(CLIENT))
    server.receive(bubble, RELAY, False, 0.0)
    [(payload, destination, from_secondary)] = out.udp
    assert destination == CLIENT
    assert from_secondary is False
    assert payload == build_origin(ipv4_to_int(RELAY[0]), RELAY[1]) + bubble
    assert server.stats.bubbles_forwarded == 1


def test_client_bubble_to_client_of_another_server_has_no_origin() -> None:
    server, out = make_server()
    bubble = build_bubble(teredo_address(CLIENT), teredo_address(OTHER_CLIENT, "203.0.113.200"))
    server.receive(bubble, CLIENT, False, 0.0)
    [(payload, destination, _)] = out.udp
    assert destination == OTHER_CLIENT
    assert payload == bubble


def test_trailers_travel_with_the_bubble() -> None:
    server, out = make_server()
    bubble = build_bubble(teredo_address(CLIENT), teredo_address(OTHER_CLIENT))
    # RFC 6081 Alternate Address trailer: type 3, length 8, reserved, 192.168.1.2 port 3478.
    trailer = bytes((0x03, 8)) + bytes(2) + bytes.fromhex("c0a801020d96")
    server.receive(bubble + trailer, CLIENT, False, 0.0)
    [(payload, _, _)] = out.udp
    assert payload.endswith(bubble + trailer)


def test_echo_to_native_host_goes_out_natively() -> None:
    server, out = make_server()
    echo = build_echo(teredo_address(CLIENT), NATIVE, 7, 1, NONCE, hop_limit=128)
    server.receive(build_auth(NONCE) + echo, CLIENT, False, 0.0)
    assert out.udp == []
    assert out.native == [echo]


@pytest.mark.parametrize(
    "destination",
    [
        bytes.fromhex("ff0e0000000000000000000000000001"),  # multicast
        bytes.fromhex("fe800000000000000000000000000001"),  # link-local
        bytes(15) + b"\x01",  # loopback
    ],
)
def test_non_global_destinations_are_never_forwarded(destination: bytes) -> None:
    server, out = make_server()
    server.receive(build_bubble(teredo_address(CLIENT), destination), CLIENT, False, 0.0)
    assert out.udp == []
    assert out.native == []
    assert only_drop(server) is DropReason.NOT_GLOBAL_DESTINATION


def test_teredo_destination_embedding_private_ipv4_dropped() -> None:
    server, out = make_server()
    private_peer = teredo_address(("192.168.1.2", 4000))
    server.receive(build_bubble(teredo_address(CLIENT), private_peer), CLIENT, False, 0.0)
    assert out.udp == []
    assert only_drop(server) is DropReason.DESTINATION_NOT_GLOBAL_IPV4


def test_large_icmpv6_is_not_relayed() -> None:
    server, out = make_server()
    big = build_echo(teredo_address(CLIENT), NATIVE, 1, 1, bytes(200))
    server.receive(big, CLIENT, False, 0.0)
    assert out.native == []
    assert only_drop(server) is DropReason.ICMPV6_TOO_LARGE
    small = build_echo(teredo_address(CLIENT), NATIVE, 1, 1, bytes(80))  # 88 bytes of ICMPv6
    server.receive(small, CLIENT, False, 0.0)
    assert out.native == [small]


# --- abuse limits ------------------------------------------------------------------------------


def test_rs_flood_from_many_ports_is_limited_per_source() -> None:
    limits = ServerLimits(rs_rate=5.0, rs_burst=10.0, rs_ipv4_rate=5.0, rs_ipv4_burst=10.0)
    server, out = make_server(limits)
    for port in range(1024, 1024 + 5000):
        server.receive(rs_payload(), ("203.0.113.66", port), False, 0.0)
    assert len(out.udp) == 10
    assert server.drops.get(DropReason.RS_RATE_LIMITED) == 4990
    # A regular client is answered meanwhile.
    server.receive(rs_payload(), CLIENT, False, 0.0)
    assert out.udp[-1][1] == CLIENT
    # The flooder gets its rate back as time passes: 5 per second.
    for port in range(100):
        server.receive(rs_payload(), ("203.0.113.66", port + 2000), False, 2.0)
    assert len(out.udp) == 10 + 1 + 10


def test_forwarding_is_limited_per_source() -> None:
    limits = ServerLimits(forward_rate=1.0, forward_burst=3.0)
    server, out = make_server(limits)
    bubble = build_bubble(teredo_address(CLIENT), teredo_address(OTHER_CLIENT))
    for _ in range(10):
        server.receive(bubble, CLIENT, False, 5.0)
    assert len(out.udp) == 3
    assert server.drops.get(DropReason.FORWARD_RATE_LIMITED) == 7


def test_params_are_checked() -> None:
    with pytest.raises(ValueError, match="global unicast"):
        ServerMachine(ServerParams(ipv4_to_int("192.168.0.1"), ipv4_to_int(SECONDARY)), Recorder())
    with pytest.raises(ValueError, match="same"):
        ServerMachine(ServerParams(ipv4_to_int(PRIMARY), ipv4_to_int(PRIMARY)), Recorder())


# --- no input crashes the server or grows its state ---------------------------------------------


@settings(max_examples=300, deadline=None)
@given(
    data=st.one_of(
        st.binary(max_size=200),
        # Mutations of valid datagrams reach deeper than random bytes.
        st.tuples(
            st.sampled_from([rs_payload(), rs_payload(LINK_LOCAL_CONE, None), _bubble_to_peer()]),
            st.integers(0, 150),
            st.integers(0, 255),
        ).map(lambda t: t[0][: t[1]] + bytes([t[2]]) + t[0][t[1] + 1 :]),
    ),
    host=st.sampled_from(["203.0.113.77", "10.0.0.1", "198.51.100.10", "0.0.0.0", "bogus"]),
    port=st.sampled_from([3544, 51234, 0]),
    on_secondary=st.booleans(),
)
def test_any_datagram_is_handled_or_dropped_with_a_reason(
    data: bytes, host: str, port: int, on_secondary: bool
) -> None:
    server, out = make_server()
    for _ in range(2):  # the second time may take the fast path
        server.receive(data, (host, port), on_secondary, 1.0)
    handled = len(out.udp) + len(out.native)
    assert handled + server.drops.total() == 2
    assert len(server._rs_known) <= 32
    assert len(server._endpoints.ipv4) <= 4096
    assert len(server._endpoints.global_ipv4) <= 4096


def test_thousands_of_clients_behind_one_nat_keep_refreshing() -> None:
    """Issue 12: a carrier-grade NAT puts thousands of clients behind one IPv4 address, each
    refreshing every 30 s (RFC 4380 section 5.2.7). Limits are per client socket first: all
    5,000 get every RA, for three rounds, with the default limits."""
    server, out = make_server()
    clients = 5000
    for round_ in range(3):
        for i in range(clients):
            now = 30.0 * round_ + 30.0 * i / clients
            server.receive(rs_payload(), ("203.0.113.66", 1024 + i), False, now)
    assert len(out.udp) == 3 * clients
    assert server.drops.get(DropReason.RS_RATE_LIMITED) == 0


def test_one_client_socket_is_still_limited_on_its_own() -> None:
    limits = ServerLimits()
    server, out = make_server()
    for _ in range(1000):
        server.receive(rs_payload(), CLIENT, False, 0.0)
    assert len(out.udp) == limits.rs_burst
    # Its neighbours behind the same NAT are not held back by it.
    server.receive(rs_payload(), (CLIENT[0], CLIENT[1] + 1), False, 0.0)
    assert out.udp[-1][1] == (CLIENT[0], CLIENT[1] + 1)


def test_reflection_is_bounded_per_packet_per_source_and_per_target() -> None:
    """Issue 12, reflection and amplification: what the server sends without state, per
    packet in, and the bounds per source and per target. An RS gets one RA (117 bytes for 61:
    the only growth, bounded per source IPv4:port and IPv4); a bubble gets one bubble (8 bytes
    of origin indication more, to the embedded mapping). 5,000 forged sources, each under its
    own limit, aiming bubbles at one client get target_burst through, not 5,000."""
    limits = ServerLimits()
    server, out = make_server()
    rs = rs_payload()
    server.receive(rs, CLIENT, False, 0.0)
    [(ra, _dest, _secondary)] = out.udp
    assert (len(rs), len(ra)) == (61, 117)
    out.udp.clear()
    victim = teredo_address(CLIENT)
    bubble_in = 0
    for i in range(5000):
        source = (f"203.0.{113 + i // 250}.{i % 250 + 1}", 40000)
        packet = build_bubble(teredo_address(source), victim)
        bubble_in = len(packet)
        server.receive(packet, source, False, 0.0)
    assert len(out.udp) == limits.target_burst
    assert {dest for _p, dest, _s in out.udp} == {CLIENT}
    assert all(len(p) == bubble_in + 8 for p, _d, _s in out.udp)  # + origin indication
    assert server.drops.get(DropReason.FORWARD_RATE_LIMITED) == 5000 - limits.target_burst
    # Another client of the same server is not held back by the flood at the first.
    other = teredo_address(OTHER_CLIENT)
    server.receive(build_bubble(teredo_address(RELAY), other), RELAY, False, 0.0)
    assert out.udp[-1][1] == OTHER_CLIENT
