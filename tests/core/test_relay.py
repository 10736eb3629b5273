"""The relay machine (RFC 4380 section 5.4): every receive check is fed the packet it forbids
and must drop it with its reason; the allowed paths (bubbles, trust, queue flush, retries,
giving up) are checked byte for byte against packets built independently with the codecs, on a
fake clock."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from socket import inet_aton

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from teredo.cli.main import main
from teredo.cli.options import EXIT_CONFIG
from teredo.core.addr import (
    TEREDO_PORT,
    TEREDO_PREFIX,
    ipv4_to_int,
    make_flags,
    pack_address,
)
from teredo.core.counters import DropReason
from teredo.core.ipv6 import (
    UNREACH_ADDRESS,
    build_bubble,
    build_echo,
    build_unreachable,
    parse_unreachable,
)
from teredo.core.relay import SERVER_BUBBLE_SLOTS, RelayMachine, RelayParams
from teredo.core.wire import build_auth, build_origin

SERVER = "198.51.100.10"
CLIENT = ("203.0.113.77", 51234)
OTHER = ("203.0.113.90", 40000)
RELAY = ("198.51.100.20", 3545)
NATIVE = bytes.fromhex("20010db8000100000000000000000100")  # 2001:db8:1::100
NATIVE2 = bytes.fromhex("20010db8000100000000000000000200")  # 2001:db8:1::200
SECRET = bytes(range(32))
T0 = 1000.0


@dataclass
class Recorder:
    udp: list[tuple[bytes, tuple[str, int]]] = field(default_factory=list)
    tun: list[bytes] = field(default_factory=list)

    def send_udp(self, payload: bytes, destination: tuple[str, int]) -> None:
        self.udp.append((bytes(payload), destination))

    def write_tun(self, packet: bytes | memoryview) -> None:
        self.tun.append(bytes(packet))

    def clear(self) -> None:
        self.udp.clear()
        self.tun.clear()


def teredo(mapping: tuple[str, int], server: str = SERVER, flags: int = 0x123) -> bytes:
    return pack_address(
        TEREDO_PREFIX, ipv4_to_int(server), make_flags(flags), mapping[1], ipv4_to_int(mapping[0])
    )


def make(**kwargs: object) -> tuple[RelayMachine, Recorder]:
    out = Recorder()
    kwargs.setdefault("peers", 1024)  # small: each test allocates its own table
    params = RelayParams(**kwargs)  # type: ignore[arg-type]
    return RelayMachine(params, out, SECRET, T0), out


def echo(src: bytes, dst: bytes, seq: int = 1, data: bytes = b"hello") -> bytes:
    return build_echo(src, dst, 7, seq, data)


def dropped(relay: RelayMachine, reason: DropReason) -> int:
    return relay.drops.get(reason)


def establish(relay: RelayMachine, out: Recorder, now: float = T0) -> bytes:
    """Native host -> CLIENT: bubble, direct answer; CLIENT is trusted afterwards."""
    peer = teredo(CLIENT)
    relay.receive_tun(echo(NATIVE, peer), now)
    relay.receive_udp(build_bubble(peer, relay.bubble_source(peer)), CLIENT, now + 0.01)
    assert relay.peers.is_trusted(relay.peers.lookup(peer) or 0)
    out.clear()
    return peer


# --- native -> Teredo (section 5.4.1) ---------------------------------------------------------


def test_first_packet_is_queued_and_an_indirect_bubble_goes_to_the_server() -> None:
    relay, out = make()
    peer = teredo(CLIENT)
    relay.receive_tun(echo(NATIVE, peer), T0)
    source = relay.bubble_source(peer)
    assert out.udp == [(build_bubble(source, peer), (SERVER, TEREDO_PORT))]
    assert out.tun == []
    row = relay.peers.lookup(peer)
    assert row is not None
    assert not relay.peers.is_trusted(row)
    assert relay.peers.queued_bytes(row) == len(echo(NATIVE, peer))


def test_restricted_relay_adds_a_direct_bubble() -> None:
    relay, out = make(direct_bubbles=True)
    peer = teredo(CLIENT)
    relay.receive_tun(echo(NATIVE, peer), T0)
    bubble = build_bubble(relay.bubble_source(peer), peer)
    assert out.udp == [(bubble, (SERVER, TEREDO_PORT)), (bubble, CLIENT)]


def test_bubble_source_is_a_keyed_link_local_per_mapping() -> None:
    relay, _ = make()
    other = RelayMachine(RelayParams(peers=16), Recorder(), bytes(32), T0)
    a = relay.bubble_source(teredo(CLIENT))
    assert a[:8] == bytes.fromhex("fe80000000000000")
    assert a[8] & 0x03 == 0
    # Same mapping through another server or flags: same hash (it covers the mapping only).
    assert relay.bubble_source(teredo(CLIENT, server="198.51.100.99", flags=0x456)) == a
    assert relay.bubble_source(teredo(OTHER)) != a
    assert other.bubble_source(teredo(CLIENT)) != a


def test_direct_answer_trusts_the_peer_and_flushes_its_queue() -> None:
    relay, out = make()
    peer = teredo(CLIENT)
    first, second = echo(NATIVE, peer, 1), echo(NATIVE, peer, 2)
    relay.receive_tun(first, T0)
    relay.receive_tun(second, T0 + 0.1)
    assert len(out.udp) == 1  # one bubble only: the 2 s rule (section 5.2.6)
    out.clear()
    # The client's direct bubble, answering at our link-local source (Miredo client).
    relay.receive_udp(build_bubble(peer, relay.bubble_source(peer)), CLIENT, T0 + 0.2)
    assert out.udp == [(first, CLIENT), (second, CLIENT)]
    assert out.tun == []  # bubbles are never forwarded
    assert relay.stats.trusted == 1
    out.clear()
    # Case 1 from now on: straight to the mapping, no bubble.
    third = echo(NATIVE, peer, 3)
    relay.receive_tun(third, T0 + 0.3)
    assert out.udp == [(third, CLIENT)]


def test_client_packet_to_native_host_goes_to_the_tun_without_trailers() -> None:
    relay, out = make()
    peer = establish(relay, out)
    reply = echo(peer, NATIVE, data=b"x" * 100)
    relay.receive_udp(reply + bytes.fromhex("0304000000000000"), CLIENT, T0 + 1)
    assert out.tun == [reply]
    # Authentication and origin headers before the packet are stripped as well.
    out.clear()
    relay.receive_udp(build_auth(bytes(8)) + build_origin(1, 2) + reply, CLIENT, T0 + 1)
    assert out.tun == [reply]


def test_unknown_client_is_dropped_without_state() -> None:
    """Section 5.4.2 MAY, as Miredo (issue 14): a packet from a Teredo source the relay never
    bubbled reaches nothing, creates no entry and sends nothing back."""
    relay, out = make()
    peer = teredo(CLIENT)
    relay.receive_udp(echo(peer, NATIVE), CLIENT, T0)
    assert out.tun == []
    assert out.udp == []
    assert len(relay.peers) == 0
    assert dropped(relay, DropReason.RELAY_UNKNOWN_PEER) == 1
    # The way back still works by the rules: the native answer bubbles the client first.
    answer = echo(NATIVE, peer, data=b"back")
    relay.receive_tun(answer, T0 + 0.5)
    assert out.udp == [(build_bubble(relay.bubble_source(peer), peer), (SERVER, TEREDO_PORT))]


def test_a_flood_of_unknown_sources_forwards_nothing_and_locks_out_no_one() -> None:
    """Issue 14: made-up Teredo sources (each embedding its own UDP source, so they pass the
    mapping check) used to become trusted entries, fill the table and refuse real clients."""
    relay, out = make(peers=8)
    for i in range(500):
        mapping = ("203.0.113.102", 20000 + i)
        relay.receive_udp(echo(teredo(mapping), NATIVE, i), mapping, T0 + i * 0.001)
    assert out.tun == []
    assert out.udp == []
    assert len(relay.peers) == 0
    assert dropped(relay, DropReason.RELAY_UNKNOWN_PEER) == 500
    establish(relay, out, T0 + 1)
    reply = echo(teredo(CLIENT), NATIVE)
    relay.receive_udp(reply, CLIENT, T0 + 1.1)
    assert out.tun == [reply]


def test_an_anycast_relay_serves_unknown_clients_without_state() -> None:
    """serve_unknown (a relay with AnycastIPv4): a standby relay forwards the packets of
    clients that another relay bubbled (the section 5.4.2 MAY not taken), makes no entry, so a
    flood fills nothing; bubbles and wrong mappings are still dropped, and the way back still
    bubbles the client first."""
    relay, out = make(peers=8, serve_unknown=True)
    peer = teredo(CLIENT)
    packet = echo(peer, NATIVE)
    relay.receive_udp(packet, CLIENT, T0)
    assert out.tun == [packet]
    assert relay.stats.unknown_served == 1
    assert relay.stats.from_teredo == 1
    for i in range(500):
        mapping = ("203.0.113.102", 20000 + i)
        relay.receive_udp(echo(teredo(mapping), NATIVE, i), mapping, T0 + i * 0.001)
    assert len(relay.peers) == 0
    out.clear()
    relay.receive_udp(echo(peer, NATIVE), OTHER, T0 + 1)  # not its embedded mapping
    relay.receive_udp(build_bubble(peer, relay.bubble_source(peer)), CLIENT, T0 + 1)
    assert out.tun == []
    assert dropped(relay, DropReason.MAPPING_MISMATCH) == 1
    assert dropped(relay, DropReason.UNKNOWN_PEER_BUBBLE) == 1
    relay.receive_tun(echo(NATIVE, peer, data=b"back"), T0 + 1.5)
    assert out.udp == [(build_bubble(relay.bubble_source(peer), peer), (SERVER, TEREDO_PORT))]


def _run_timers(relay: RelayMachine, until: float, native: list[float], packet: bytes) -> None:
    """Timer calls at each deadline up to `until`; `packet` arrives again at each `native`."""
    now = T0
    pending = sorted(native)
    while True:
        deadline = relay.next_deadline()
        if pending and (deadline is None or pending[0] <= deadline):
            now = pending.pop(0)
            relay.receive_tun(packet, now)
            continue
        if deadline is None or deadline > until:
            return
        now = max(now, deadline)
        relay.handle_timer(now)


def test_unanswered_bubbles_repeat_three_times_then_the_sender_learns_unreachable() -> None:
    """A sender that keeps sending (a ping each second): a bubble every 2 s, 4 in all, then
    2 s later the peer is given up and the queued packets answered with unreachables."""
    relay, out = make()
    peer = teredo(CLIENT)
    packet = echo(NATIVE, peer)
    relay.receive_tun(packet, T0)
    bubble = build_bubble(relay.bubble_source(peer), peer)
    _run_timers(relay, T0 + 8, [T0 + k for k in range(1, 8)], packet)
    assert all(u == (bubble, (SERVER, TEREDO_PORT)) for u in out.udp)
    assert len(out.udp) == 4, "1 bubble + 3 repeats"
    assert relay.stats.given_up == 1
    row = relay.peers.lookup(peer)
    assert row is not None
    assert relay.peers.queued_bytes(row) == 0
    assert out.tun
    assert all(t == build_unreachable(peer, NATIVE, UNREACH_ADDRESS, packet) for t in out.tun)
    got = parse_unreachable(out.tun[0])
    assert not isinstance(got, DropReason)
    assert got.code == UNREACH_ADDRESS
    assert dropped(relay, DropReason.PEER_UNREACHABLE) >= 1
    # The entry kept its 4 bubbles: more native packets within 300 s get no 5th (5.2.6).
    out.clear()
    _run_timers(relay, T0 + 20, [T0 + 10, T0 + 11, T0 + 14], packet)
    assert out.udp == []


def test_one_packet_gets_one_bubble_and_is_given_up_6_s_later() -> None:
    """Issue 14 (reflection): no repeat without a new native packet, so a native packet never
    costs more than one bubble toward the server it names (Miredo: the same)."""
    relay, out = make()
    peer = teredo(CLIENT)
    packet = echo(NATIVE, peer)
    relay.receive_tun(packet, T0)
    _run_timers(relay, T0 + 20, [], packet)
    assert out.udp == [(build_bubble(relay.bubble_source(peer), peer), (SERVER, TEREDO_PORT))]
    assert relay.stats.given_up == 1
    assert out.tun == [build_unreachable(peer, NATIVE, UNREACH_ADDRESS, packet)]


def test_bubbles_toward_one_server_are_rate_limited() -> None:
    """Issue 14: native packets to many Teredo addresses naming one "server" IPv4 (a victim):
    bubbles to it stay within its bucket (rate x 2 s of burst, then the rate), counted; the
    other servers are not affected."""
    relay, out = make(server_bubble_rate=5.0)
    victim = "203.0.113.102"
    for i in range(100):  # 100 packets in 1 s, each to a new peer
        relay.receive_tun(echo(NATIVE, teredo(("203.0.113.150", 1000 + i), victim)), T0 + i / 100)
    _run_timers(relay, T0 + 10, [], b"")
    to_victim = [u for u in out.udp if u[1] == (victim, TEREDO_PORT)]
    assert 10 <= len(to_victim) <= 10 + 5 * 1, len(to_victim)  # burst 10, + 5/s for 1 s
    assert dropped(relay, DropReason.RELAY_BUBBLE_LIMIT) == 100 - len(to_victim)
    assert len(relay.peers) == len(to_victim)  # no state for packets that got no bubble
    # Another server, in another bucket (slots by a per-process keyed hash: 1 in 4096 share).
    mask = SERVER_BUBBLE_SLOTS - 1
    if hash(inet_aton(SERVER)) & mask != hash(inet_aton(victim)) & mask:
        relay.receive_tun(echo(NATIVE, teredo(CLIENT)), T0 + 1)
        assert out.udp[-1][1] == (SERVER, TEREDO_PORT)


def test_unreachables_are_rate_limited_and_never_about_errors() -> None:
    relay, out = make(icmpv6_error_rate=1.0)
    peers = [teredo(("203.0.113.77", 1000 + i)) for i in range(5)]
    for p in peers:
        relay.receive_tun(echo(NATIVE, p), T0)
    error_peer = teredo(("203.0.113.77", 2000))
    relay.receive_tun(build_unreachable(NATIVE, error_peer, 1, b"\x60" + bytes(39)), T0)
    now = T0
    while relay.next_deadline() is not None and now < T0 + 9:
        now = max(now, relay.next_deadline() or now)
        relay.handle_timer(now)
        if all(relay.peers.lookup(p) is None for p in [*peers, error_peer]):
            break
    assert relay.stats.given_up == 6
    assert len(out.tun) == 1, "one error per second, and none about an ICMPv6 error"


def test_trusted_peer_silent_for_30_s_is_bubbled_again() -> None:
    relay, out = make()
    peer = establish(relay, out)
    later = T0 + 31
    packet = echo(NATIVE, peer, 9)
    relay.receive_tun(packet, later)
    assert out.udp == [(build_bubble(relay.bubble_source(peer), peer), (SERVER, TEREDO_PORT))]
    out.clear()
    relay.receive_udp(build_bubble(peer, relay.bubble_source(peer)), CLIENT, later + 0.1)
    assert out.udp == [(packet, CLIENT)]


def answer_from_another_port(
    relay: RelayMachine, out: Recorder, peer: bytes, now: float
) -> tuple[str, int]:
    """A native packet for `peer` at `now` (bubbled), then the client's answer to our bubble
    from another port of its IPv4 (a port-symmetric NAT): the queued packet goes there."""
    packet = echo(NATIVE, peer, 9)
    relay.receive_tun(packet, now)
    out.clear()
    moved = (CLIENT[0], CLIENT[1] + 7)
    relay.receive_udp(build_bubble(peer, relay.bubble_source(peer)), moved, now + 0.1)
    assert out.udp == [(packet, moved)]
    return moved


def test_port_symmetric_answer_to_our_bubble_remaps_the_peer() -> None:
    relay, out = make()
    peer = teredo(CLIENT)
    moved = answer_from_another_port(relay, out, peer, T0)
    assert relay.stats.remapped == 1
    # Later packets from the new port are those of a trusted peer.
    reply = echo(peer, NATIVE)
    relay.receive_udp(reply, moved, T0 + 0.2)
    assert out.tun == [reply]


# --- drops: one test per receive check -------------------------------------------------------


@pytest.mark.parametrize(
    ("packet", "reason"),
    [
        (bytes(39), DropReason.TOO_SHORT),
        (b"\x40" + bytes(59), DropReason.NOT_IPV6),
        (echo(NATIVE, teredo(CLIENT))[:-1], DropReason.BAD_PAYLOAD_LENGTH),
        (echo(NATIVE, NATIVE2), DropReason.NOT_TEREDO_DESTINATION),
        (
            echo(NATIVE, bytes.fromhex("ff020000000000000000000000000001")),
            DropReason.NOT_TEREDO_DESTINATION,
        ),
        (echo(NATIVE, teredo(("192.168.1.2", 4000))), DropReason.DESTINATION_NOT_GLOBAL_IPV4),
        (echo(NATIVE, teredo(CLIENT, server="10.0.0.1")), DropReason.SERVER_NOT_GLOBAL_IPV4),
        (echo(NATIVE, teredo(RELAY)), DropReason.LOOP),
    ],
    ids=["short", "not-v6", "length", "native", "multicast", "private", "server", "loop"],
)
def test_native_side_drops(packet: bytes, reason: DropReason) -> None:
    relay, out = make(own_mapping=(ipv4_to_int(RELAY[0]), RELAY[1]))
    relay.receive_tun(packet, T0)
    assert dropped(relay, reason) == 1
    assert out.udp == []
    assert out.tun == []
    assert len(relay.peers) == 0


def test_queue_is_bounded_in_bytes() -> None:
    relay, out = make(queue_bytes_per_peer=300)
    peer = teredo(CLIENT)
    big = echo(NATIVE, peer, data=bytes(200))
    relay.receive_tun(big, T0)
    relay.receive_tun(big, T0 + 0.1)
    assert dropped(relay, DropReason.QUEUE_FULL) == 1
    out.clear()
    relay.receive_udp(build_bubble(peer, relay.bubble_source(peer)), CLIENT, T0 + 0.2)
    assert out.udp == [(big, CLIENT)]


def test_full_table_refuses_new_peers_and_keeps_serving_established_ones() -> None:
    relay, out = make(peers=8)
    peer = establish(relay, out)
    for i in range(200):
        relay.receive_tun(echo(NATIVE, teredo(("203.0.113.150", 1000 + i))), T0 + 1 + i * 0.01)
    assert relay.peers.lookup(peer) is not None
    out.clear()
    packet = echo(NATIVE, peer, 5)
    relay.receive_tun(packet, T0 + 5)
    assert out.udp == [(packet, CLIENT)]
    # Fill every row with trusted peers: then a new peer is refused, not an old one evicted.
    for i in range(7):
        other = teredo(("203.0.113.160", 100 + i))
        relay.receive_tun(echo(NATIVE, other), T0 + 6)
        relay.receive_udp(
            build_bubble(other, relay.bubble_source(other)), ("203.0.113.160", 100 + i), T0 + 6
        )
    relay.receive_tun(echo(NATIVE, teredo(OTHER)), T0 + 6)
    assert dropped(relay, DropReason.PEER_TABLE_FULL) == 1
    assert relay.peers.lookup(peer) is not None


_DESTINATION_REASONS = (
    DropReason.TEREDO_DESTINATION,
    DropReason.MULTICAST_DESTINATION,
    DropReason.NOT_GLOBAL_DESTINATION,
)


@pytest.mark.parametrize(
    ("datagram", "source", "reason"),
    [
        (b"\x00\x01\x00", CLIENT, DropReason.TRUNCATED_AUTH),
        (b"\x00\x00" + bytes(5), CLIENT, DropReason.TRUNCATED_ORIGIN),
        (echo(NATIVE2, NATIVE), CLIENT, DropReason.NOT_TEREDO_SOURCE),
        (echo(teredo(CLIENT), NATIVE), ("192.168.1.2", CLIENT[1]), DropReason.NOT_GLOBAL_IPV4),
        (echo(teredo(CLIENT), NATIVE), ("not-an-ip", CLIENT[1]), DropReason.BAD_UDP_SOURCE),
        (echo(teredo(CLIENT), NATIVE), OTHER, DropReason.MAPPING_MISMATCH),
        (echo(teredo(CLIENT), NATIVE), (CLIENT[0], CLIENT[1] + 1), DropReason.MAPPING_MISMATCH),
        (build_bubble(teredo(CLIENT), NATIVE), CLIENT, DropReason.UNKNOWN_PEER_BUBBLE),
        (echo(teredo(CLIENT), teredo(OTHER)), CLIENT, DropReason.TEREDO_DESTINATION),
        (
            echo(teredo(CLIENT), bytes.fromhex("ff0e0000000000000000000000000001")),
            CLIENT,
            DropReason.MULTICAST_DESTINATION,
        ),
        (
            echo(teredo(CLIENT), bytes.fromhex("fe800000000000000000000000000001")),
            CLIENT,
            DropReason.NOT_GLOBAL_DESTINATION,
        ),
        (echo(teredo(CLIENT), bytes(15) + b"\x01"), CLIENT, DropReason.NOT_GLOBAL_DESTINATION),
    ],
    ids=[
        "auth",
        "origin",
        "native-source",
        "private-ipv4",
        "not-an-ip",
        "other-mapping",
        "other-port",
        "unknown-bubble",
        "teredo-dest",
        "multicast",
        "link-local",
        "loopback",
    ],
)
def test_teredo_side_drops(datagram: bytes, source: tuple[str, int], reason: DropReason) -> None:
    relay, out = make()
    if reason in _DESTINATION_REASONS:
        establish(relay, out)  # the destination is checked for known peers only
    relay.receive_udp(datagram, source, T0)
    assert dropped(relay, reason) == 1
    assert out.tun == []
    assert out.udp == []


def test_symmetric_answer_needs_our_link_local_and_the_same_ipv4() -> None:
    relay, out = make()
    peer = teredo(CLIENT)
    relay.receive_tun(echo(NATIVE, peer), T0)
    out.clear()
    moved = (CLIENT[0], CLIENT[1] + 7)
    relay.receive_udp(build_bubble(peer, NATIVE), moved, T0 + 0.1)  # not our bubble source
    relay.receive_udp(build_bubble(peer, relay.bubble_source(peer)), OTHER, T0 + 0.1)
    relay.receive_udp(echo(peer, relay.bubble_source(peer)), moved, T0 + 0.1)  # not a bubble
    assert dropped(relay, DropReason.MAPPING_MISMATCH) == 3
    assert out.udp == []
    assert relay.stats.remapped == 0


def test_host_specific_relay_delivers_only_to_own_addresses() -> None:
    relay, out = make(host_specific=True)
    relay.set_own_addresses({NATIVE})
    peer = establish(relay, out)
    to_us = echo(peer, NATIVE)
    relay.receive_udp(to_us, CLIENT, T0)
    assert out.tun == [to_us]
    out.clear()
    relay.receive_udp(echo(peer, NATIVE2, 2), CLIENT, T0 + 0.1)
    assert dropped(relay, DropReason.NOT_OWN_ADDRESS) == 1
    assert out.tun == []
    # Our own stack answers a Teredo client through the same peer entry, directly.
    answer = echo(NATIVE, peer, data=b"back")
    relay.receive_tun(answer, T0 + 0.2)
    assert out.udp == [(answer, CLIENT)]


def test_idle_entries_expire_and_the_timer_says_when() -> None:
    relay, out = make()
    peer = establish(relay, out)
    relay.receive_udp(echo(peer, NATIVE), CLIENT, T0)
    relay.handle_timer(T0 + 2.5)  # the bubble retry entry goes: the peer is trusted
    deadline = relay.next_deadline()
    assert deadline is not None
    assert T0 + 29 <= deadline <= T0 + 31
    relay.handle_timer(deadline)
    assert relay.peers.lookup(peer) is None
    assert relay.next_deadline() is None


def test_a_longer_peer_timeout_keeps_the_entry_but_not_its_validity() -> None:
    relay, out = make(idle_timeout=120.0)
    peer = establish(relay, out)
    relay.handle_timer(T0 + 60)
    row = relay.peers.lookup(peer)
    assert row is not None
    assert relay.peers.is_trusted(row)
    # Kept, but 60 s without reception: no longer valid, so case 3 again (section 5.2.4).
    packet = echo(NATIVE, peer, 5)
    relay.receive_tun(packet, T0 + 60)
    assert out.udp == [(build_bubble(relay.bubble_source(peer), peer), (SERVER, TEREDO_PORT))]
    assert not relay.peers.is_trusted(row)
    out.clear()
    relay.receive_udp(build_bubble(peer, relay.bubble_source(peer)), CLIENT, T0 + 60.1)
    assert out.udp == [(packet, CLIENT)]
    # Quiet for the whole timeout: the entry goes.
    deadline = relay.next_deadline()
    assert deadline is not None
    relay.handle_timer(T0 + 60.1 + 121)
    assert relay.peers.lookup(peer) is None


def test_client_to_native_fast_and_full_paths_agree() -> None:
    """The hot path of receive_udp must pass exactly what the full checks pass: each of these
    comes from the trusted peer's mapping, and only the first is forwarded as it is."""
    relay, out = make()
    peer = establish(relay, out)
    teredo_dst = teredo(OTHER)
    link_local = bytes.fromhex("fe800000000000000000000000000001")
    multicast = bytes.fromhex("ff020000000000000000000000000001")
    cases = [
        (echo(peer, NATIVE), [echo(peer, NATIVE)], None),
        (build_bubble(peer, NATIVE), [], None),
        (echo(peer, teredo_dst), [], DropReason.TEREDO_DESTINATION),
        (echo(peer, link_local), [], DropReason.NOT_GLOBAL_DESTINATION),
        (echo(peer, multicast), [], DropReason.MULTICAST_DESTINATION),
        (echo(peer, NATIVE)[:-1], [], DropReason.BAD_PAYLOAD_LENGTH),
    ]
    for datagram, forwarded, reason in cases:
        before = dropped(relay, reason) if reason is not None else 0
        relay.receive_udp(datagram, CLIENT, T0 + 1)
        assert out.tun == forwarded, datagram.hex()
        if reason is not None:
            assert dropped(relay, reason) == before + 1
        out.clear()
    # From another port: not the trusted mapping, so the full checks refuse it.
    relay.receive_udp(echo(peer, NATIVE), (CLIENT[0], CLIENT[1] + 1), T0 + 1)
    assert out.tun == []
    assert dropped(relay, DropReason.MAPPING_MISMATCH) == 1


def test_params_are_checked() -> None:
    with pytest.raises(ValueError, match="prefix"):
        make(prefix=b"\x20\x01")
    with pytest.raises(ValueError, match="peer table"):
        make(peers=0)
    with pytest.raises(ValueError, match="MTU"):
        make(mtu=1000)
    with pytest.raises(ValueError, match="peer timeout"):
        make(idle_timeout=29.0)
    with pytest.raises(ValueError, match="secret"):
        RelayMachine(RelayParams(peers=16), Recorder(), b"short", T0)


# --- the verb's refusals (no root needed: they come before any socket or interface) ----------


def test_relay_verb_rejects_a_bad_file_with_its_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    conf = tmp_path / "miredo.conf"
    conf.write_text("RelayType cone\nBindPort 70000\n")
    assert main(["relay", "-c", str(conf)]) == EXIT_CONFIG
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"{conf}:2: BindPort:"), err
    assert len(err.splitlines()) == 1


def test_relay_verb_rejects_a_client_mode_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    conf = tmp_path / "miredo.conf"
    conf.write_text("RelayType client\nServerAddress 198.51.100.10\n")
    assert main(["relay", "-c", str(conf)]) == EXIT_CONFIG
    assert f"{conf}:1: RelayType:" in capsys.readouterr().err


@pytest.mark.parametrize("peers", ["0", "-5", str(1 << 30)])
def test_relay_verb_rejects_a_bad_peer_table_size(
    peers: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["relay", "--peers", peers]) == EXIT_CONFIG
    assert "--peers" in capsys.readouterr().err


@pytest.mark.parametrize("timeout", ["10", "1e9", "nan"])
def test_relay_verb_rejects_a_bad_peer_timeout(
    timeout: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["relay", "--peer-timeout", timeout]) == EXIT_CONFIG
    assert "--peer-timeout" in capsys.readouterr().err


# --- bad input never crashes, whatever the bytes ----------------------------------------------

_PEER = teredo(CLIENT)
_TEMPLATES = [
    echo(_PEER, NATIVE),
    build_bubble(_PEER, NATIVE),
    echo(NATIVE, _PEER),
    build_auth(bytes(8)) + build_origin(1, 2) + echo(_PEER, NATIVE),
]


@settings(max_examples=300, deadline=None)
@given(
    template=st.sampled_from(_TEMPLATES),
    cut=st.integers(0, 200),
    flips=st.lists(st.tuples(st.integers(0, 199), st.integers(0, 255)), max_size=4),
    tail=st.binary(max_size=16),
)
def test_mutated_packets_never_crash_and_only_checked_ones_pass(
    template: bytes, cut: int, flips: list[tuple[int, int]], tail: bytes
) -> None:
    data = bytearray(template[:cut] + tail)
    for at, value in flips:
        if at < len(data):
            data[at] = value
    relay, out = make(peers=4)
    relay.receive_udp(bytes(data), CLIENT, T0)
    relay.receive_tun(bytes(data), T0)
    relay.handle_timer(T0 + 10)
    for packet in out.tun:
        # Whatever reached the native side is a whole IPv6 packet for a global, non-Teredo
        # destination, or our own ICMPv6 error.
        assert packet[0] >> 4 == 6
        assert len(packet) == 40 + int.from_bytes(packet[4:6], "big")
        assert packet[24:28] != TEREDO_PREFIX
        assert packet[24] & 0xE0 == 0x20 or packet[6] == 58
    for payload, (host, _port) in out.udp:
        # Bubbles and packets leave only for global IPv4 destinations (section 5.4.1).
        assert not host.startswith(("10.", "127.", "192.168.", "0."))
        assert payload[0] >> 4 == 6


def test_own_endpoint_learnt_after_binding_stops_loops() -> None:
    relay, out = make()
    relay.set_own_mapping((ipv4_to_int(RELAY[0]), RELAY[1]))
    relay.receive_tun(echo(NATIVE, teredo(RELAY)), T0)
    assert dropped(relay, DropReason.LOOP) == 1
    assert out.udp == []


# --- mapping hijack (issue 14) ---------------------------------------------------------------


def test_a_spoofed_answer_to_our_bubble_cannot_move_a_valid_trusted_peer() -> None:
    """Even with our keyed link-local (seen on the path to the server) and the client's IPv4,
    one packet from another port does not change where a valid trusted peer's traffic goes."""
    relay, out = make()
    peer = establish(relay, out)
    moved = (CLIENT[0], CLIENT[1] + 7)
    relay.receive_udp(build_bubble(peer, relay.bubble_source(peer)), moved, T0 + 1)
    relay.receive_udp(echo(peer, NATIVE), moved, T0 + 1)
    assert dropped(relay, DropReason.RELAY_MAPPING_CHANGE) == 1
    assert dropped(relay, DropReason.MAPPING_MISMATCH) == 1
    assert relay.stats.remapped == 0
    assert out.tun == []
    packet = echo(NATIVE, peer, 7)
    relay.receive_tun(packet, T0 + 2)
    assert out.udp == [(packet, CLIENT)]


def test_a_remapped_peer_is_not_moved_back_by_a_packet_from_its_embedded_mapping() -> None:
    relay, out = make()
    peer = teredo(CLIENT)
    moved = answer_from_another_port(relay, out, peer, T0)
    out.clear()
    relay.receive_udp(echo(peer, NATIVE), CLIENT, T0 + 1)  # spoofed: the port in the address
    assert dropped(relay, DropReason.RELAY_MAPPING_CHANGE) == 1
    assert out.tun == []
    packet = echo(NATIVE, peer, 7)
    relay.receive_tun(packet, T0 + 2)
    assert out.udp == [(packet, moved)]


def test_a_peer_silent_for_30_s_may_be_remapped_by_the_rules() -> None:
    """Validity gone (section 5.2.4): the next native packet bubbles it again and the answer
    from a new port of the same IPv4 moves it there."""
    relay, out = make()
    peer = establish(relay, out)
    answer_from_another_port(relay, out, peer, T0 + 31)
    assert relay.stats.remapped == 1


def test_retry_ring_grows_with_the_peers_waiting_and_keeps_their_order() -> None:
    """5,000 new peers within 1 s (no bubble limit): the ring grows past its first 64 slots,
    every peer is served in order, one bubble each, and given up 6 s after it (nobody asked
    again), its sender told once."""
    relay, out = make(peers=8192, server_bubble_rate=1e9, icmpv6_error_rate=1e6)
    small = relay.nbytes()
    peers = [teredo(("203.0.113.150", 1000 + i)) for i in range(5000)]
    for i, p in enumerate(peers):
        relay.receive_tun(echo(NATIVE, p, i), T0 + i / 5000)
    assert relay.nbytes() > small  # the table and the ring grew
    assert len(out.udp) == 5000
    now = T0
    first_given_up = None
    while relay.stats.given_up < 5000 and now < T0 + 20:
        now += 0.25
        relay.handle_timer(now)
        if first_given_up is None and relay.stats.given_up:
            first_given_up = now
    assert relay.stats.given_up == 5000
    assert first_given_up is not None
    assert first_given_up >= T0 + 6  # 6 s after its bubble, not before
    assert len(out.udp) == 5000  # no repeat without a new native packet
    assert [t[8:24] for t in out.tun] == peers  # first given up, first told
