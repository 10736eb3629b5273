"""The client machine (RFC 4380 section 5.2) under a fake clock: every rule is fed the packet it
forbids and must drop it with its reason; allowed cases are checked byte for byte against
packets built independently with the codecs."""

from __future__ import annotations

import ipaddress
import itertools
from dataclasses import dataclass, field

import pytest

from teredo.core.addr import (
    ALL_NODES,
    LINK_LOCAL_CONE,
    LINK_LOCAL_RESTRICTED,
    TEREDO_PREFIX,
    TeredoAddress,
    ipv4_to_int,
    make_flags,
    pack_address,
    server_link_local,
)
from teredo.core.client import (
    AddressChanged,
    ClientEvent,
    ClientMachine,
    ClientParams,
    ClientState,
    MtuChanged,
    NatType,
    Offline,
    Qualified,
    ResolveServer,
    SymmetricNat,
)
from teredo.core.counters import DropReason
from teredo.core.ipv6 import (
    build_bubble,
    build_echo,
    build_icmpv6,
    build_ra,
    build_rs,
    parse_echo,
    parse_unreachable,
)
from teredo.core.qualify import REFRESH_GIVE_UP
from teredo.core.wire import build_auth, build_origin, parse_payload

SERVER = "198.51.100.10"
SERVER2 = "198.51.100.11"
SRV = (SERVER, 3544)
SRV2 = (SERVER2, 3544)
MAPPING = ("203.0.113.77", 51234)
LOCAL = ("192.168.1.2", 3545)
RELAY = ("198.51.100.20", 3545)
NATIVE = ipaddress.IPv6Address("2001:db8:1::100").packed
PEER_MAPPING = ("203.0.113.90", 40000)
T0 = 1000.0


class FakeRandom:
    """Deterministic bytes: a counter, so every draw differs and tests can predict none."""

    def __init__(self) -> None:
        self.n = 0

    def __call__(self, size: int) -> bytes:
        out = bytearray()
        while len(out) < size:
            self.n += 1
            out += (self.n * 0x9E3779B97F4A7C15 & 0xFFFFFFFFFFFFFFFF).to_bytes(8, "big")
        return bytes(out[:size])


@dataclass
class Recorder:
    udp: list[tuple[bytes, tuple[str, int]]] = field(default_factory=list)
    discovery: list[bytes] = field(default_factory=list)
    tun: list[bytes] = field(default_factory=list)

    def send_udp(self, payload: bytes, destination: tuple[str, int]) -> None:
        self.udp.append((payload, destination))

    def send_discovery(self, payload: bytes) -> None:
        self.discovery.append(payload)

    def write_tun(self, packet: bytes) -> None:
        self.tun.append(packet)

    def clear(self) -> None:
        self.udp.clear()
        self.discovery.clear()
        self.tun.clear()


def teredo_address(mapping: tuple[str, int], server: str = SERVER, flags: int = 0x123) -> bytes:
    return pack_address(
        TEREDO_PREFIX, ipv4_to_int(server), make_flags(flags), mapping[1], ipv4_to_int(mapping[0])
    )


def advertised(server: str = SERVER) -> bytes:
    return TEREDO_PREFIX + ipv4_to_int(server).to_bytes(4, "big") + bytes(8)


def ra_payload(
    nonce: bytes | None,
    mapping: tuple[str, int] = MAPPING,
    *,
    origin: bool = True,
    dst: bytes = LINK_LOCAL_RESTRICTED,
    prefix: bytes | None = None,
    mtu: int | None = 1280,
    confirmation: int = 0,
    server: str = SERVER,
) -> bytes:
    ra = build_ra(server_link_local(ipv4_to_int(server)), dst, prefix or advertised(), mtu=mtu)
    auth = b"" if nonce is None else build_auth(nonce, confirmation=confirmation)
    oi = build_origin(ipv4_to_int(mapping[0]), mapping[1]) if origin else b""
    return auth + oi + ra


def rs_nonce(payload: bytes) -> bytes:
    pkt = parse_payload(payload)
    assert not isinstance(pkt, DropReason)
    assert pkt.nonce is not None
    assert pkt.ipv6 == build_rs(LINK_LOCAL_RESTRICTED)
    return pkt.nonce


def make_client(**kw: object) -> tuple[ClientMachine, Recorder]:
    out = Recorder()
    params = ClientParams(ipv4_to_int(SERVER), **kw)  # type: ignore[arg-type]
    return ClientMachine(params, out, FakeRandom()), out


def events(client: ClientMachine) -> list[ClientEvent]:
    found = []
    while (e := client.next_event()) is not None:
        found.append(e)
    return found


def qualified_client(now: float = T0, **kw: object) -> tuple[ClientMachine, Recorder, Qualified]:
    kw.setdefault("peer_capacity", 64)
    client, out = make_client(**kw)
    client.start(now)
    (payload, dest) = out.udp[-1]
    assert dest == SRV
    client.receive_udp(ra_payload(rs_nonce(payload)), SRV, now + 0.05)
    (payload, dest) = out.udp[-1]
    assert dest == SRV2
    client.receive_udp(ra_payload(rs_nonce(payload), server=SERVER), SRV2, now + 0.1)
    [event] = events(client)
    assert isinstance(event, Qualified)
    out.clear()
    return client, out, event


def only_drop(client: ClientMachine) -> DropReason:
    counts = client.drops.snapshot()
    assert len(counts) == 1, counts
    return DropReason[next(iter(counts)).upper()]


# --- qualification (section 5.2.1) ---------------------------------------------------------------


def test_start_sends_an_rs_with_a_nonce_to_the_primary() -> None:
    client, out = make_client()
    client.start(T0)
    [(payload, dest)] = out.udp
    assert dest == SRV
    nonce = rs_nonce(payload)
    # Miredo's RS: Auth (nonce only), then the RS from fe80::ffff:ffff:ffff: 61 bytes.
    assert payload == build_auth(nonce) + build_rs(LINK_LOCAL_RESTRICTED)
    assert len(payload) == 61
    assert client.state is ClientState.QUALIFYING
    assert client.next_deadline() == pytest.approx(T0 + 4.0)


def test_rs_is_repeated_every_4_s_three_times_then_offline_with_back_off() -> None:
    client, out = make_client()
    client.start(T0)
    for k in (1, 2):
        client.handle_timer(T0 + 4.0 * k)
    assert [d for _p, d in out.udp] == [SRV] * 3
    # One nonce per attempt: a late RA to the first RS is still good.
    assert len({rs_nonce(p) for p, _d in out.udp}) == 1
    assert events(client) == []
    client.handle_timer(T0 + 12.0)
    assert events(client) == [
        Offline(f"no answer from the server {SERVER} after 3 RS"),
        ResolveServer(),
    ]
    assert client.state is ClientState.OFFLINE
    # Back-off: 4 s, then 8 s, 16 s ... up to 100 s between attempts.
    assert client.next_deadline() == pytest.approx(T0 + 16.0)
    client.handle_timer(T0 + 16.0)
    assert len(out.udp) == 4
    assert rs_nonce(out.udp[-1][0]) != rs_nonce(out.udp[0][0])
    client.handle_timer(T0 + 20.0)
    client.handle_timer(T0 + 24.0)
    client.handle_timer(T0 + 28.0)
    assert client.next_deadline() == pytest.approx(T0 + 36.0)
    now = T0 + 36.0
    delays = []
    for _ in range(8):
        client.handle_timer(now)
        client.handle_timer(now + 4.0)
        client.handle_timer(now + 8.0)
        client.handle_timer(now + 12.0)
        deadline = client.next_deadline()
        assert deadline is not None
        delays.append(round(deadline - (now + 12.0), 3))
        now = deadline
    assert delays == [16.0, 32.0, 64.0, 100.0, 100.0, 100.0, 100.0, 100.0]


def test_qualification_restricted_nat() -> None:
    client, _out, event = qualified_client()
    address = TeredoAddress.unpack(event.address)
    assert address is not None
    assert address.server == ipv4_to_int(SERVER)
    assert (address.client, address.port) == (ipv4_to_int(MAPPING[0]), MAPPING[1])
    assert not address.cone  # RFC 5991: C = 0
    assert address.other_flags == 0
    assert event.nat is NatType.RESTRICTED
    assert event.mapping == MAPPING
    assert event.mtu == 1280
    assert event.link_local == LINK_LOCAL_RESTRICTED
    assert client.address == event.address
    assert client.state is ClientState.QUALIFIED
    assert client.status()["address"] == str(address)


def test_qualification_sends_a_discovery_bubble() -> None:
    client, out = make_client()
    client.start(T0)
    client.receive_udp(ra_payload(rs_nonce(out.udp[-1][0])), SRV, T0)
    client.receive_udp(ra_payload(rs_nonce(out.udp[-1][0])), SRV2, T0)
    assert client.address is not None
    # Section 5.2.8: src our address, dst ff02::1, hop limit 1.
    assert out.discovery == [build_bubble(client.address, ALL_NODES, hop_limit=1)]


def test_no_discovery_bubble_when_disabled() -> None:
    _client, out, _event = qualified_client(local_discovery=False)
    assert out.discovery == []


def test_random_flags_differ_between_clients_and_survive_a_requalification() -> None:
    _a, _o, qa = qualified_client()
    _b, _o2, qb = qualified_client(refresh_interval=31.0)
    # Same mapping, same server, but a different generator state is not guaranteed: compare
    # the flags with a client whose generator was advanced.
    client, out = make_client()
    client._random(5)
    client.start(T0)
    client.receive_udp(ra_payload(rs_nonce(out.udp[-1][0])), SRV, T0)
    client.receive_udp(ra_payload(rs_nonce(out.udp[-1][0])), SRV2, T0)
    [qc] = events(client)
    assert isinstance(qc, Qualified)
    assert qa.address[8:10] != qc.address[8:10]
    assert qa.address[10:] == qc.address[10:]
    assert qb.address == qa.address  # same draws, same address: deterministic


def test_no_nat_when_the_mapping_is_the_local_address() -> None:
    client, out = make_client(local_address=(ipv4_to_int(MAPPING[0]), MAPPING[1]))
    client.start(T0)
    client.receive_udp(ra_payload(rs_nonce(out.udp[-1][0])), SRV, T0 + 0.1)
    [event] = events(client)
    assert isinstance(event, Qualified)
    assert event.nat is NatType.NONE
    assert [d for _p, d in out.udp] == [SRV]  # no secondary test needed


def test_symmetric_nat_is_refused_when_strict() -> None:
    # SymmetricNat refuse: RFC 4380 section 5.2.1 strictly, no address.
    client, out = make_client(refuse_symmetric=True)
    client.start(T0)
    client.receive_udp(ra_payload(rs_nonce(out.udp[-1][0])), SRV, T0 + 0.1)
    other = (MAPPING[0], MAPPING[1] + 1)
    client.receive_udp(ra_payload(rs_nonce(out.udp[-1][0]), other), SRV2, T0 + 0.2)
    assert events(client) == [
        SymmetricNat(MAPPING, other, qualified=False, behaviour="symmetric, sequential ports +1")
    ]
    assert client.state is ClientState.OFFLINE
    assert client.address is None
    assert client.nat_type is NatType.SYMMETRIC
    assert client.next_deadline() == pytest.approx(T0 + 0.2 + 4.0)
    assert client.status()["nat_behaviour"] == {
        "symmetric": True,
        "ports": "sequential",
        "step": 1,
        "same_ipv4": True,
        "text": "symmetric, sequential ports +1",
        "reach": "ports predicted (RFC 6081 Random Port trailers): relays, cone, restricted "
        "and port-restricted peers work; random-port symmetric ones do not",
    }


def test_symmetric_nat_qualifies_with_the_primary_mapping() -> None:
    # RFC 6081 Symmetric NAT Support (the default): the primary server's mapping is kept.
    client, out = make_client(local_address=(ipv4_to_int(LOCAL[0]), LOCAL[1]))
    client.start(T0)
    client.receive_udp(ra_payload(rs_nonce(out.udp[-1][0])), SRV, T0 + 0.1)
    other = (MAPPING[0], 7)
    client.receive_udp(ra_payload(rs_nonce(out.udp[-1][0]), other), SRV2, T0 + 0.2)
    found = events(client)
    assert found[0] == SymmetricNat(
        MAPPING, other, qualified=True, behaviour="symmetric, random ports"
    )
    assert isinstance(found[1], Qualified)
    assert found[1].nat is NatType.SYMMETRIC
    assert found[1].mapping == MAPPING  # the primary's, not the secondary's
    assert client.state is ClientState.QUALIFIED
    assert client.address == found[1].address
    assert client.nat_type is NatType.SYMMETRIC
    assert client.status()["nat"] == "symmetric"
    # Maintenance asks the primary only: its mapping stays the address's.
    deadline = client.next_deadline()
    assert deadline is not None
    sent = len(out.udp)
    client.handle_timer(deadline)
    assert [d for _p, d in out.udp[sent:]] == [SRV]


def test_secondary_silence_qualifies_with_unknown_nat() -> None:
    client, out = make_client()
    client.start(T0)
    client.receive_udp(ra_payload(rs_nonce(out.udp[-1][0])), SRV, T0 + 0.1)
    for k in (1, 2, 3):
        assert client.address is None
        client.handle_timer(T0 + 0.1 + 4.0 * k)
    assert [d for _p, d in out.udp] == [SRV, SRV2, SRV2, SRV2]
    [event] = events(client)
    assert isinstance(event, Qualified)
    assert event.nat is NatType.UNKNOWN
    assert event.mapping == MAPPING


def _ra_case(name: str, nonce: bytes) -> tuple[bytes, tuple[str, int], DropReason]:
    good = ra_payload(nonce)
    ra_ipv6 = parse_payload(good)
    assert not isinstance(ra_ipv6, DropReason)
    two_pio = build_icmpv6(
        server_link_local(ipv4_to_int(SERVER)),
        LINK_LOCAL_RESTRICTED,
        ra_ipv6.ipv6[40:] + ra_ipv6.ipv6[56:88],  # header + PIO + MTU + the PIO again
    )
    bad_checksum = bytearray(good)
    bad_checksum[-1] ^= 0xFF
    cases = {
        "wrong nonce": (ra_payload(bytes(8)), SRV, DropReason.RA_BAD_NONCE),
        "no auth": (ra_payload(None), SRV, DropReason.RA_WITHOUT_AUTH),
        "no origin": (ra_payload(nonce, origin=False), SRV, DropReason.RA_WITHOUT_ORIGIN),
        "two PIOs": (
            build_auth(nonce) + build_origin(ipv4_to_int(MAPPING[0]), MAPPING[1]) + two_pio,
            SRV,
            DropReason.BAD_PREFIX_INFO,
        ),
        "cone destination": (
            ra_payload(nonce, dst=LINK_LOCAL_CONE),
            SRV,
            DropReason.RA_WRONG_DESTINATION,
        ),
        "other server prefix": (
            ra_payload(nonce, prefix=advertised("198.51.100.99")),
            SRV,
            DropReason.RA_WRONG_PREFIX,
        ),
        "other Teredo prefix": (
            ra_payload(nonce, prefix=b"\x3f\xfe\x83\x1f" + advertised()[4:]),
            SRV,
            DropReason.RA_WRONG_PREFIX,
        ),
        "confirmation": (ra_payload(nonce, confirmation=1), SRV, DropReason.RA_BAD_CONFIRMATION),
        "checksum": (bytes(bad_checksum), SRV, DropReason.BAD_CHECKSUM),
        "private mapping": (
            ra_payload(nonce, ("192.168.1.2", 3545)),
            SRV,
            DropReason.NOT_GLOBAL_IPV4,
        ),
        "from the secondary": (good, SRV2, DropReason.RA_NOT_FROM_SERVER),
        "from another port": (good, (SERVER, 3545), DropReason.NOT_QUALIFIED),
        "from a stranger": (good, ("203.0.113.5", 3544), DropReason.NOT_QUALIFIED),
    }
    return cases[name]


@pytest.mark.parametrize(
    "name",
    [
        "wrong nonce",
        "no auth",
        "no origin",
        "two PIOs",
        "cone destination",
        "other server prefix",
        "other Teredo prefix",
        "confirmation",
        "checksum",
        "private mapping",
        "from the secondary",
        "from another port",
        "from a stranger",
    ],
)
def test_forbidden_ra_is_dropped_and_qualification_goes_on(name: str) -> None:
    client, out = make_client()
    client.start(T0)
    nonce = rs_nonce(out.udp[-1][0])
    payload, source, reason = _ra_case(name, nonce)
    client.receive_udp(payload, source, T0 + 0.1)
    assert only_drop(client) is reason
    assert client.state is ClientState.QUALIFYING
    assert len(out.udp) == 1  # no secondary RS: the RA did not count
    assert events(client) == []
    # The good RA still works afterwards.
    client.receive_udp(ra_payload(nonce), SRV, T0 + 0.2)
    assert out.udp[-1][1] == SRV2


def test_ra_without_pending_rs_is_unexpected() -> None:
    client, _out, _e = qualified_client()
    client.receive_udp(ra_payload(bytes(8)), SRV, T0 + 1.0)
    assert only_drop(client) is DropReason.RA_UNEXPECTED


# --- maintenance (section 5.2.5) -----------------------------------------------------------------


def refresh_due(client: ClientMachine) -> float:
    deadline = client.next_deadline()
    assert deadline is not None
    return deadline


def test_refresh_rs_after_the_randomized_interval_of_silence() -> None:
    client, out, _e = qualified_client()
    due = refresh_due(client)
    assert T0 + 0.1 + 22.5 <= due <= T0 + 0.1 + 30.0
    client.handle_timer(due - 0.01)
    assert out.udp == []
    client.handle_timer(due)
    [(payload, dest)] = out.udp
    assert dest == SRV
    nonce = rs_nonce(payload)
    client.receive_udp(ra_payload(nonce), SRV, due + 0.1)
    assert events(client) == []
    assert client.drops.total() == 0
    nxt = refresh_due(client)
    assert due + 0.1 + 22.5 <= nxt <= due + 0.1 + 30.0


def test_new_refresh_interval_keeps_the_address_and_reschedules() -> None:
    client, out, _e = qualified_client()
    address = client.address
    assert refresh_due(client) >= T0 + 0.1 + 22.5
    # SIGHUP with a 10 s interval: the next refresh falls in 7.5-10 s after the last contact.
    client.set_refresh_interval(10.0, T0 + 1.0)
    due = refresh_due(client)
    assert T0 + 0.1 + 7.5 <= due <= T0 + 0.1 + 10.0
    assert client.address == address
    assert client.state is ClientState.QUALIFIED
    assert events(client) == []
    client.handle_timer(due)
    [(_payload, dest)] = out.udp
    assert dest == SRV
    # Later than the new deadline already: the refresh is due at once, not in the past.
    client.set_refresh_interval(10.0, T0 + 50.0)  # unchanged: nothing moves
    with pytest.raises(ValueError, match="refresh interval"):
        client.set_refresh_interval(0.0, T0 + 50.0)


def test_shorter_interval_past_due_refreshes_now() -> None:
    client, out, _e = qualified_client()
    client.set_refresh_interval(2.0, T0 + 20.0)
    assert refresh_due(client) == T0 + 20.0
    client.handle_timer(T0 + 20.0)
    assert [dest for _p, dest in out.udp] == [SRV]


def test_contact_from_the_server_postpones_the_refresh() -> None:
    client, out, event = qualified_client()
    due = refresh_due(client)
    peer = teredo_address(PEER_MAPPING)
    # An indirect bubble relayed by our server (with an origin indication) is contact.
    relayed = build_origin(ipv4_to_int(PEER_MAPPING[0]), PEER_MAPPING[1]) + build_bubble(
        peer, event.address
    )
    client.receive_udp(relayed, SRV, due - 1.0)
    out.clear()
    client.handle_timer(due)
    assert out.udp == []  # the server spoke within the interval: no RS
    later = refresh_due(client)
    assert later > due
    client.handle_timer(later)
    assert [d for _p, d in out.udp] == [SRV]


def test_mapping_change_gives_address_changed_and_forgets_peers() -> None:
    client, out, event = qualified_client()
    peer = teredo_address(PEER_MAPPING)
    client.receive_udp(build_bubble(peer, event.address), PEER_MAPPING, T0 + 1.0)
    assert client.status()["trusted_peers"] == 1
    due = refresh_due(client)
    client.handle_timer(due)
    new_mapping = (MAPPING[0], MAPPING[1] + 7)
    client.receive_udp(ra_payload(rs_nonce(out.udp[-1][0]), new_mapping), SRV, due + 0.1)
    [changed] = events(client)
    assert isinstance(changed, AddressChanged)
    assert changed.old == event.address
    assert changed.new == client.address
    assert changed.mapping == new_mapping
    new = TeredoAddress.unpack(changed.new)
    assert new is not None
    assert new.port == new_mapping[1]
    assert client.status()["peers"] == 0


def test_mtu_change_in_a_refresh_ra() -> None:
    client, out, _event = qualified_client()
    due = refresh_due(client)
    client.handle_timer(due)
    client.receive_udp(ra_payload(rs_nonce(out.udp[-1][0]), mtu=1400), SRV, due + 0.1)
    assert events(client) == [MtuChanged(1400)]
    assert client.mtu == 1400


REFRESH_RS_TIMES = (0.0, 4.0, 8.0, 12.0, 14.0, 16.0)  # T = 4 s, then 2 s for the extra 3


def test_six_unanswered_refresh_rs_lose_contact() -> None:
    client, out, _event = qualified_client()
    due = refresh_due(client)
    for k, t in enumerate(REFRESH_RS_TIMES):
        assert client.next_deadline() == pytest.approx(due + t)
        client.handle_timer(due + t)
        assert len(out.udp) == k + 1
    assert [d for _p, d in out.udp] == [SRV] * 6
    assert client.state is ClientState.QUALIFIED
    assert client.next_deadline() == pytest.approx(due + REFRESH_GIVE_UP)
    assert REFRESH_GIVE_UP == 18.0  # was 24 s with 4 s each (Miredo: 12 s, 3 RS)
    client.handle_timer(due + REFRESH_GIVE_UP)
    got = events(client)
    assert [type(e) for e in got] == [Offline, ResolveServer]
    assert "lost" in got[0].reason  # type: ignore[union-attr]
    assert client.status()["state"] == "offline"
    assert client.address is None
    # Retry after the first back-off step.
    assert client.next_deadline() == pytest.approx(due + 22.0)


def test_a_refresh_answered_at_the_fifth_rs_keeps_the_address() -> None:
    """30 % loss each way: a refresh RS round trip fails about half the time, so three in a
    row failed 13 % of the time and withdrew a working address (bench.wan_faults)."""
    client, out, event = qualified_client()
    due = refresh_due(client)
    for t in REFRESH_RS_TIMES[:5]:
        client.handle_timer(due + t)
    assert [d for _p, d in out.udp] == [SRV] * 5
    # One nonce for the whole refresh: the answer to any of the RS counts.
    assert len({rs_nonce(p) for p, _d in out.udp}) == 1
    client.receive_udp(ra_payload(rs_nonce(out.udp[-1][0])), SRV, due + 15.5)
    assert events(client) == []
    assert client.state is ClientState.QUALIFIED
    assert client.address == event.address
    assert refresh_due(client) >= due + 15.5 + 22.5


def test_an_ra_answering_an_earlier_refresh_rs_late_still_counts() -> None:
    """The extra refresh RS wait 2 s only: an RA slower than that (the answer to an earlier
    RS, the same nonce) still keeps the address, so their shorter wait loses nothing."""
    client, out, event = qualified_client()
    due = refresh_due(client)
    for t in REFRESH_RS_TIMES[:4]:
        client.handle_timer(due + t)
    first_nonce = rs_nonce(out.udp[0][0])
    client.receive_udp(ra_payload(first_nonce), SRV, due + 13.9)  # 13.9 s after the first RS
    assert events(client) == []
    assert client.address == event.address


def test_clock_jump_sends_a_refresh_at_once_and_forgets_peers() -> None:
    client, out, event = qualified_client()
    peer = teredo_address(PEER_MAPPING)
    client.receive_udp(build_bubble(peer, event.address), PEER_MAPPING, T0 + 1.0)
    # A bubble procedure is running for another peer when the host goes to sleep.
    other = teredo_address(("203.0.113.91", 40001))
    client.receive_tun(build_echo(event.address, other, 1, 1), T0 + 1.5)
    assert client.status()["peers"] == 2
    out.clear()
    resumed = T0 + 3600.0
    client.handle_timer(resumed)
    [(payload, dest)] = out.udp
    assert dest == SRV
    assert client.status()["peers"] == 0
    assert client.status()["probes"] == 0
    assert client.suspends == 1
    assert client.drops.get(DropReason.SUSPENDED) == 1  # the packet that waited
    # The RA to that refresh keeps the address.
    client.receive_udp(ra_payload(rs_nonce(payload)), SRV, resumed + 0.1)
    assert events(client) == []
    assert client.address == event.address


def test_clock_jump_while_offline_retries_at_once() -> None:
    client, out = make_client()
    client.start(T0)
    for k in (1, 2, 3):
        client.handle_timer(T0 + 4.0 * k)
    events(client)
    out.clear()
    client.handle_timer(T0 + 5000.0)
    assert [d for _p, d in out.udp] == [SRV]


def test_set_server_to_a_new_address_requalifies() -> None:
    client, out, _event = qualified_client()
    client.set_server(ipv4_to_int("198.51.100.30"), None, T0 + 5.0)
    [event] = events(client)
    assert isinstance(event, Offline)
    assert client.address is None
    client.handle_timer(T0 + 5.0)
    assert out.udp[-1][1] == ("198.51.100.30", 3544)
    # The same address again changes nothing.
    out.clear()
    client.set_server(ipv4_to_int("198.51.100.30"), None, T0 + 6.0)
    assert out.udp == []
    assert events(client) == []


def test_a_non_global_server_is_refused() -> None:
    with pytest.raises(ValueError, match="not global"):
        make_client(server2=ipv4_to_int("192.168.0.1"))
    with pytest.raises(ValueError, match="not global"):
        ClientMachine(ClientParams(ipv4_to_int("10.0.0.1")), Recorder(), FakeRandom())


# --- reception (section 5.2.3) -------------------------------------------------------------------


def test_direct_packet_from_a_teredo_peer_is_trusted_and_delivered() -> None:
    client, out, event = qualified_client()
    peer = teredo_address(PEER_MAPPING)
    data = build_echo(peer, event.address, 1, 1, b"hi")
    client.receive_udp(data, PEER_MAPPING, T0 + 1.0)
    assert out.tun == [data]
    # Case 1 now: from the same mapping, delivered; the answer goes straight to the peer.
    reply = build_echo(event.address, peer, 1, 1, b"hi", reply=True)
    client.receive_tun(reply, T0 + 1.1)
    assert out.udp == [(reply, PEER_MAPPING)]
    assert client.drops.total() == 0


def test_bubble_from_a_teredo_peer_trusts_but_is_not_delivered() -> None:
    client, out, event = qualified_client()
    peer = teredo_address(PEER_MAPPING)
    client.receive_udp(build_bubble(peer, event.address), PEER_MAPPING, T0 + 1.0)
    assert out.tun == []
    assert client.status()["trusted_peers"] == 1
    assert client.drops.total() == 0


def test_origin_indication_is_answered_with_a_direct_bubble() -> None:
    client, out, event = qualified_client()
    relay_source = ipaddress.IPv6Address("fe80::1234").packed  # Miredo relay's HMAC source
    relayed = build_origin(ipv4_to_int(RELAY[0]), RELAY[1]) + build_bubble(
        relay_source, event.address
    )
    client.receive_udp(relayed, SRV, T0 + 1.0)
    assert out.udp == [(build_bubble(event.address, relay_source), RELAY)]
    assert out.tun == []
    assert client.drops.total() == 0


def test_indirect_bubble_without_origin_is_answered_at_the_embedded_mapping() -> None:
    client, out, event = qualified_client()
    peer = teredo_address(PEER_MAPPING)
    client.receive_udp(build_bubble(peer, event.address), SRV, T0 + 1.0)
    assert out.udp == [(build_bubble(event.address, peer), PEER_MAPPING)]
    # A native source without origin: nobody to answer.
    out.clear()
    client.receive_udp(build_bubble(NATIVE, event.address), SRV, T0 + 1.0)
    assert out.udp == []
    assert client.drops.total() == 0


def test_origin_bubbles_are_rate_limited_per_sender() -> None:
    client, out, event = qualified_client()
    relayed = build_origin(ipv4_to_int(RELAY[0]), RELAY[1]) + build_bubble(
        teredo_address(PEER_MAPPING), event.address
    )
    for _ in range(50):
        client.receive_udp(relayed, SRV, T0 + 1.0)
    assert 1 <= len(out.udp) <= 4


def test_origin_bubbles_are_bounded_per_ipv4_whatever_the_port() -> None:
    """Issue 14: 200 spoofed origins, each with a new port, for one IPv4: a few bubbles go
    there, not 200 (RFC 4380 5.2.6 bounds bubbles per peer; the IPv4 is one peer)."""
    client, out, event = qualified_client()
    victim = "203.0.113.200"
    peer = teredo_address(PEER_MAPPING)
    for port in range(10000, 10200):
        relayed = build_origin(ipv4_to_int(victim), port) + build_bubble(peer, event.address)
        client.receive_udp(relayed, SRV, T0 + 1.0)
    sent = [d for _p, d in out.udp if d[0] == victim]
    assert 1 <= len(sent) <= 8
    assert client.drops.get(DropReason.ORIGIN_BUBBLE_LIMIT) == 200 - len(sent)
    # Another IPv4 is not held back by the first one's budget.
    out.clear()
    other = build_origin(ipv4_to_int("203.0.113.201"), 4000) + build_bubble(peer, event.address)
    client.receive_udp(other, SRV, T0 + 1.0)
    assert [d for _p, d in out.udp] == [("203.0.113.201", 4000)]
    # The budget comes back with time: one bubble per second.
    out.clear()
    later = build_origin(ipv4_to_int(victim), 20000) + build_bubble(peer, event.address)
    client.receive_udp(later, SRV, T0 + 3.0)
    assert [d for _p, d in out.udp] == [(victim, 20000)]


def test_origin_indication_to_a_private_address_is_not_answered() -> None:
    client, out, event = qualified_client()
    relayed = build_origin(ipv4_to_int("10.1.2.3"), 1000) + build_bubble(
        teredo_address(PEER_MAPPING), event.address
    )
    client.receive_udp(relayed, SRV, T0 + 1.0)
    assert out.udp == []


def _forbidden(name: str, me: bytes) -> tuple[bytes, tuple[str, int], DropReason]:
    peer = teredo_address(PEER_MAPPING)
    other = teredo_address(("203.0.113.91", 40001))
    cases = {
        "to another address": (
            build_echo(peer, other, 1, 1),
            PEER_MAPPING,
            DropReason.NOT_OUR_ADDRESS,
        ),
        "to multicast": (
            build_echo(peer, ALL_NODES, 1, 1),
            PEER_MAPPING,
            DropReason.MULTICAST_DESTINATION,
        ),
        "link-local source": (
            build_echo(ipaddress.IPv6Address("fe80::1").packed, me, 1, 1),
            PEER_MAPPING,
            DropReason.LINK_LOCAL_SOURCE,
        ),
        "multicast source": (
            build_echo(ALL_NODES, me, 1, 1),
            PEER_MAPPING,
            DropReason.INVALID_SOURCE,
        ),
        "spoofed Teredo source": (
            build_echo(peer, me, 1, 1),
            ("203.0.113.66", 40000),
            DropReason.MAPPING_MISMATCH,
        ),
        "bubble from a stranger": (
            build_bubble(NATIVE, me),
            RELAY,
            DropReason.UNKNOWN_BUBBLE,
        ),
        "Teredo bubble from elsewhere": (
            build_bubble(peer, me),
            ("203.0.113.66", 40000),
            DropReason.UNKNOWN_BUBBLE,
        ),
        "private source with matching Teredo address": (
            build_echo(teredo_address(("10.0.0.1", 40000)), me, 1, 1),
            ("10.0.0.1", 40000),
            DropReason.NOT_GLOBAL_IPV4,
        ),
        "malformed": (b"\x60" + bytes(30), PEER_MAPPING, DropReason.TOO_SHORT),
        "bad UDP source": (build_echo(peer, me, 1, 1), ("not-an-ip", 1), DropReason.BAD_UDP_SOURCE),
    }
    return cases[name]


@pytest.mark.parametrize(
    "name",
    [
        "to another address",
        "to multicast",
        "link-local source",
        "multicast source",
        "spoofed Teredo source",
        "bubble from a stranger",
        "Teredo bubble from elsewhere",
        "private source with matching Teredo address",
        "malformed",
        "bad UDP source",
    ],
)
def test_forbidden_packets_are_dropped(name: str) -> None:
    client, out, event = qualified_client()
    payload, source, reason = _forbidden(name, event.address)
    client.receive_udp(payload, source, T0 + 1.0)
    assert only_drop(client) is reason
    assert out.tun == []
    assert out.udp == []
    assert client.status()["peers"] == 0


def test_nothing_is_received_before_qualification() -> None:
    client, out = make_client()
    client.start(T0)
    out.clear()
    me = teredo_address(MAPPING)
    client.receive_udp(build_echo(teredo_address(PEER_MAPPING), me, 1, 1), PEER_MAPPING, T0)
    assert only_drop(client) is DropReason.NOT_QUALIFIED
    assert out.tun == []


# --- ping test (sections 5.2.4 case 2, 5.2.9) ----------------------------------------------------


def start_ping(client: ClientMachine, out: Recorder, me: bytes, now: float) -> tuple[bytes, bytes]:
    data = build_echo(me, NATIVE, 77, 1, b"payload")
    client.receive_tun(data, now)
    [(payload, dest)] = out.udp
    assert dest == SRV  # section 5.2.9: through our own server
    echo = parse_echo(payload)
    assert not isinstance(echo, DropReason)
    assert not echo.reply
    assert echo.src == me
    assert echo.dst == NATIVE
    assert echo.hop_limit == 128  # Miredo
    assert len(echo.data) >= 8  # >= 64 bits
    out.clear()
    return data, echo.data


def test_ping_test_binds_the_native_peer_to_the_replying_relay() -> None:
    client, out, event = qualified_client()
    data, nonce = start_ping(client, out, event.address, T0 + 1.0)
    reply = build_echo(NATIVE, event.address, 5, 5, nonce, reply=True)
    client.receive_udp(reply, RELAY, T0 + 1.2)
    assert out.udp == [(data, RELAY)]  # the queued packet, to the relay
    assert out.tun == []  # our own test's reply is not for the local stack
    out.clear()
    later = build_echo(event.address, NATIVE, 77, 2, b"more")
    client.receive_tun(later, T0 + 1.3)
    assert out.udp == [(later, RELAY)]
    answer = build_echo(NATIVE, event.address, 77, 2, b"more", reply=True)
    client.receive_udp(answer, RELAY, T0 + 1.4)
    assert out.tun == [answer]
    assert client.drops.total() == 0


def test_a_stale_relay_is_tested_again_at_once_without_the_bubble_gap() -> None:
    # A relay killed mid-stream: we keep sending, nothing comes back, and 30 s after the last
    # reception the peer is no longer valid (section 5.2.4). The new connectivity test (a
    # ping, section 5.2.9) goes out at once: the 2 s gap of section 5.2.6 is for bubbles, and
    # our last transmission to the destination was less than 2 s ago.
    client, out, event = qualified_client()
    _data, nonce = start_ping(client, out, event.address, T0 + 1.0)
    client.receive_udp(build_echo(NATIVE, event.address, 5, 5, nonce, reply=True), RELAY, T0 + 1.2)
    now = T0 + 1.2
    for seq in range(2, 31):
        now += 1.0
        client.receive_tun(build_echo(event.address, NATIVE, 77, seq, b"x"), now)
    assert {d for _p, d in out.udp} == {RELAY}
    out.clear()
    late = build_echo(event.address, NATIVE, 77, 99, b"late")
    client.receive_tun(late, now + 1.0)  # 30 s since the relay's last packet, 1 s since ours
    [(payload, dest)] = out.udp
    assert dest == SRV
    echo = parse_echo(payload)
    assert not isinstance(echo, DropReason)
    assert echo.dst == NATIVE
    # Another relay answers: the held packet goes there, nothing lost.
    other = ("198.51.100.21", 3545)
    out.clear()
    client.receive_udp(
        build_echo(NATIVE, event.address, 5, 6, echo.data, reply=True), other, now + 1.1
    )
    assert out.udp == [(late, other)]
    # Pings are not bubbles: repeated relay failures never hit the 4-per-300 s bubble limit.
    assert client.drops.get(DropReason.BUBBLE_LIMIT) == 0


def test_ping_reply_with_another_nonce_is_dropped() -> None:
    client, out, event = qualified_client()
    _data, nonce = start_ping(client, out, event.address, T0 + 1.0)
    forged = build_echo(NATIVE, event.address, 5, 5, bytes(len(nonce)), reply=True)
    client.receive_udp(forged, RELAY, T0 + 1.2)
    assert only_drop(client) is DropReason.PING_NONCE_MISMATCH
    assert out.udp == []
    # The peer did not become trusted: the next packet is queued, not sent to the forger.
    client.receive_tun(build_echo(event.address, NATIVE, 77, 2, b"x"), T0 + 1.3)
    assert out.udp == []


def test_ping_test_gives_up_after_three_repeats() -> None:
    client, out, event = qualified_client()
    data, first_nonce = start_ping(client, out, event.address, T0 + 1.0)
    now = T0 + 1.0
    for wait in (3.0, 4.0, 8.0):
        now += wait
        client.handle_timer(now)
    assert [d for _p, d in out.udp] == [SRV] * 3  # 4 pings in all, at 0, 3, 7 and 15 s
    client.handle_timer(now + 7.9)
    assert out.tun == []
    client.handle_timer(now + 8.0)  # 8 s after the last ping: given up
    [error] = out.tun
    unreachable = parse_unreachable(error)
    assert not isinstance(unreachable, DropReason)
    assert unreachable.code == 3
    assert unreachable.dst == event.address
    assert unreachable.quoted == data
    assert client.drops.get(DropReason.PEER_UNREACHABLE) == 1
    # A failed test leaves no entry (the bubble limit of 5.2.6 is not for pings): the next
    # packet runs a new test at once, with a new nonce, and is not answered with an error.
    out.clear()
    client.receive_tun(data, now + 3.0)
    [(payload, dest)] = out.udp
    assert dest == SRV
    echo = parse_echo(payload)
    assert not isinstance(echo, DropReason)
    assert echo.data != first_nonce
    assert out.tun == []
    assert client.drops.get(DropReason.BUBBLE_LIMIT) == 0


def test_a_ping_test_outlasts_lost_echoes_under_tcp_retransmissions() -> None:
    # Issue 12, 30 % loss on the wan: a first TCP connection to a native host sometimes never
    # got through. The SYN starts a ping test (section 5.2.9); its echoes or their replies
    # are lost. Before, the 4 pings went 2 s apart and the test failed at 8 s with an ICMPv6
    # error that aborts TCP's connect at once; and a Miredo relay, which refuses a bubble to
    # us within 2 whole seconds of its last one, got only 2 chances out of the 4 echo replies.
    # Now the pings back off (0, 3, 7, 15 s: where Miredo's client pings under the same SYN
    # retransmissions), each more than 2 s after the previous, and the test lasts until 23 s.
    client, out, event = qualified_client()
    start = T0 + 1.0
    syn = build_echo(event.address, NATIVE, 77, 1, b"syn")
    retransmissions = [start + d for d in (1.0, 3.0, 7.0, 15.0)]  # RFC 6298: 1 s, doubling
    client.receive_tun(syn, start)
    pings: list[tuple[float, bytes]] = []
    now = start
    while now < start + 15.5:
        for payload, dest in out.udp:
            assert dest == SRV  # nothing to any relay yet
            echo = parse_echo(payload)
            assert not isinstance(echo, DropReason)
            pings.append((now, echo.data))
        out.clear()
        now = round(now + 0.05, 2)
        if retransmissions and now >= retransmissions[0]:
            retransmissions.pop(0)
            client.receive_tun(syn, now)  # waits in the queue with the first one
        client.handle_timer(now)
        assert out.tun == [], f"an error to the local stack at {now - start:.2f} s"
    times = [round(t - start, 2) for t, _ in pings]
    assert times == [0.0, 3.0, 7.0, 15.0]
    assert len({nonce for _, nonce in pings}) == 1  # one test, one nonce
    # The first three echoes (or their replies) were lost; the fourth is answered.
    reply = build_echo(NATIVE, event.address, 5, 5, pings[-1][1], reply=True)
    client.receive_udp(reply, RELAY, now)
    assert out.udp == [(syn, RELAY)] * 5  # the SYN and its 4 retransmissions, in order
    assert out.tun == []
    assert client.drops.total() == 0


def syn_segment(src: bytes, dst: bytes, tsval: int) -> bytes:
    """An IPv6 TCP SYN with a timestamp option (RFC 7323): what a connect sends every second."""
    options = bytes((1, 1, 8, 10)) + tsval.to_bytes(4, "big") + bytes(4)
    tcp = (
        (40000).to_bytes(2, "big")
        + (5201).to_bytes(2, "big")
        + (1000).to_bytes(4, "big")
        + bytes(4)
        + bytes((8 << 4, 0x02))
        + bytes((0xFA, 0xF0, 0, 0, 0, 0))
        + options
    )
    return bytes((0x60, 0, 0, 0, 0, len(tcp), 6, 64)) + src + dst + tcp


def test_the_syns_queued_during_a_ping_test_leave_as_one_the_newest() -> None:
    # Issue 12, 30 % loss: connect() sent its SYN every second while the ping test ran; all
    # copies waited in the queue and left oldest first when the reply came (7 s in), the
    # native host answered the oldest, and its echoed timestamp gave TCP a 7 s round trip,
    # a 21 s retransmission timeout: the connection's data then stalled past 2 minutes.
    client, out, event = qualified_client()
    start = T0 + 1.0
    client.receive_tun(syn_segment(event.address, NATIVE, 0), start)
    [(ping, dest)] = out.udp
    assert dest == SRV
    echo = parse_echo(ping)
    assert not isinstance(echo, DropReason)
    out.clear()
    for second in range(1, 8):
        client.receive_tun(syn_segment(event.address, NATIVE, second * 1000), start + second)
    reply = build_echo(NATIVE, event.address, 5, 5, echo.data, reply=True)
    client.receive_udp(reply, RELAY, start + 7.5)
    assert out.udp[-1:] == [(syn_segment(event.address, NATIVE, 7000), RELAY)]
    assert [d for _p, d in out.udp].count(RELAY) == 1  # one SYN, not 8
    assert client.status()["queue_superseded"] == 7
    assert client.drops.total() == 0


def test_a_repeated_ping_bubbles_again_the_relay_holding_our_echo_reply() -> None:
    """Issue 12, 30 % loss: the relay queued our echo reply and bubbled us through the server;
    our direct bubble back was lost, and a Miredo relay bubbles again only for a new reply
    (at most 4 in 300 s). Each repeated ping now re-sends that direct bubble, so the relay
    flushes the reply it holds."""
    client, out, event = qualified_client()
    start = T0 + 1.0
    _data, nonce = start_ping(client, out, event.address, start)
    relay_source = ipaddress.IPv6Address("fe80::1234").packed  # Miredo relay's HMAC source
    relayed = build_origin(ipv4_to_int(RELAY[0]), RELAY[1]) + build_bubble(
        relay_source, event.address
    )
    client.receive_udp(relayed, SRV, start + 0.1)
    bubble = (build_bubble(event.address, relay_source), RELAY)
    assert out.udp == [bubble]  # the answer of section 5.2.3 (lost on the way)
    out.clear()
    client.handle_timer(start + 3.0)  # the bubble again, then the second ping
    assert [d for _p, d in out.udp] == [RELAY, SRV]
    assert out.udp[0] == bubble
    out.clear()
    client.handle_timer(start + 7.0)
    assert [d for _p, d in out.udp] == [RELAY, SRV]
    # The relay got it and sends the reply it held: the test succeeds, nothing more.
    reply = build_echo(NATIVE, event.address, 5, 5, nonce, reply=True)
    client.receive_udp(reply, RELAY, start + 7.1)
    out.clear()
    client.handle_timer(start + 15.0)
    assert out.udp == []
    assert client.drops.total() == 0


def test_a_new_test_after_a_failed_one_bubbles_the_relay_at_its_first_ping() -> None:
    """Issue 12, 30 % loss: the relay bubbled us late in a test that then failed; the local
    sender's retry starts a new test, whose first ping re-sends our direct bubble to that
    relay (a Miredo relay bubbles a client 4 times in 300 s at most: each chance counts)."""
    client, out, event = qualified_client()
    start = T0 + 1.0
    start_ping(client, out, event.address, start)
    relay_source = ipaddress.IPv6Address("fe80::1234").packed
    relayed = build_origin(ipv4_to_int(RELAY[0]), RELAY[1]) + build_bubble(
        relay_source, event.address
    )
    for t in (3.0, 7.0, 15.0):  # the second, third and fourth pings
        client.handle_timer(start + t)
    client.receive_udp(relayed, SRV, start + 15.1)  # its answer bubbled (ours back: lost)
    client.handle_timer(start + 23.0)  # the test fails: the error to the local sender
    assert len(out.tun) == 1
    out.clear()
    client.receive_tun(build_echo(event.address, NATIVE, 77, 2, b"retry"), start + 23.2)
    assert [d for _p, d in out.udp] == [RELAY, SRV]
    assert out.udp[0] == (build_bubble(event.address, relay_source), RELAY)


def test_without_a_running_test_an_indirect_bubble_gets_one_answer() -> None:
    client, out, event = qualified_client()
    relay_source = ipaddress.IPv6Address("fe80::1234").packed
    relayed = build_origin(ipv4_to_int(RELAY[0]), RELAY[1]) + build_bubble(
        relay_source, event.address
    )
    client.receive_udp(relayed, SRV, T0 + 1.0)
    out.clear()
    # A ping test started afterwards does not bubble that relay: it was not waiting for us.
    start_ping(client, out, event.address, T0 + 2.0)
    client.handle_timer(T0 + 5.0)
    assert [d for _p, d in out.udp] == [SRV]


def test_unsolicited_native_packet_is_held_for_a_ping_test() -> None:
    client, out, event = qualified_client()
    hello = build_echo(NATIVE, event.address, 1, 1, b"unsolicited")
    client.receive_udp(hello, RELAY, T0 + 1.0)
    assert out.tun == []
    [(payload, dest)] = out.udp
    assert dest == SRV
    echo = parse_echo(payload)
    assert not isinstance(echo, DropReason)
    # The reply to our ping through the same relay proves the path: the held packet goes up.
    client.receive_udp(
        build_echo(NATIVE, event.address, 0, 0, echo.data, reply=True), RELAY, T0 + 1.1
    )
    assert out.tun == [hello]
    assert client.drops.total() == 0


def test_held_packet_from_another_relay_is_not_delivered() -> None:
    client, out, event = qualified_client()
    hello = build_echo(NATIVE, event.address, 1, 1, b"unsolicited")
    client.receive_udp(hello, ("198.51.100.66", 3545), T0 + 1.0)
    echo = parse_echo(out.udp[-1][0])
    assert not isinstance(echo, DropReason)
    client.receive_udp(
        build_echo(NATIVE, event.address, 0, 0, echo.data, reply=True), RELAY, T0 + 1.1
    )
    assert out.tun == []
    assert client.drops.get(DropReason.MAPPING_MISMATCH) == 1


def test_unsolicited_pings_are_rate_limited() -> None:
    client, out, event = qualified_client(peer_capacity=256)
    for i in range(100):
        source = ipaddress.IPv6Address(f"2001:db8:5::{i + 1:x}").packed
        client.receive_udp(build_echo(source, event.address, 1, 1), RELAY, T0 + 1.0)
    pings = [d for _p, d in out.udp if d == SRV]
    assert 10 <= len(pings) <= 21
    assert client.drops.get(DropReason.PING_RATE_LIMITED) == 100 - len(pings)


# --- sending (section 5.2.4) ---------------------------------------------------------------------


def test_teredo_destination_gets_direct_and_indirect_bubbles() -> None:
    client, out, event = qualified_client()
    peer = teredo_address(PEER_MAPPING, server="198.51.100.40")
    data = build_echo(event.address, peer, 1, 1, b"x")
    client.receive_tun(data, T0 + 1.0)
    bubble = build_bubble(event.address, peer)
    assert out.udp == [(bubble, PEER_MAPPING), (bubble, ("198.51.100.40", 3544))]
    # A second packet within 2 s waits with the first; no bubble (section 5.2.6).
    client.receive_tun(data, T0 + 1.5)
    assert len(out.udp) == 2
    # The peer's direct bubble makes it trusted: the queue goes out, in order.
    client.receive_udp(build_bubble(peer, event.address), PEER_MAPPING, T0 + 1.6)
    assert out.udp[2:] == [(data, PEER_MAPPING), (data, PEER_MAPPING)]


def test_bubbles_repeat_every_2_s_then_an_error() -> None:
    client, out, event = qualified_client()
    peer = teredo_address(PEER_MAPPING)
    data = build_echo(event.address, peer, 1, 1, b"x")
    client.receive_tun(data, T0 + 1.0)
    times = [T0 + 1.0]
    for k in range(1, 4):
        client.handle_timer(T0 + 1.0 + 2.0 * k)
        times.append(T0 + 1.0 + 2.0 * k)
    assert len(out.udp) == 8  # 4 rounds of 2
    assert out.tun == []
    client.handle_timer(T0 + 9.0)
    assert len(out.tun) == 1
    assert out.tun[0][40:42] == b"\x01\x03"
    assert client.drops.get(DropReason.PEER_UNREACHABLE) == 1


@pytest.mark.parametrize(
    ("dst", "reason"),
    [
        (teredo_address(("192.168.1.5", 4000)), DropReason.NOT_GLOBAL_IPV4),
        (teredo_address(PEER_MAPPING, server="10.0.0.1"), DropReason.NOT_GLOBAL_IPV4),
        (ipaddress.IPv6Address("fe80::1").packed, DropReason.LINK_LOCAL_DESTINATION),
        (ipaddress.IPv6Address("ff02::1").packed, DropReason.LOCAL_MULTICAST),
        (ipaddress.IPv6Address("ff02::16").packed, DropReason.LOCAL_MULTICAST),
        (ipaddress.IPv6Address("fc00::1").packed, DropReason.NOT_GLOBAL_DESTINATION),
        (ipaddress.IPv6Address("::1").packed, DropReason.NOT_GLOBAL_DESTINATION),
    ],
)
def test_forbidden_destinations_are_dropped_silently(dst: bytes, reason: DropReason) -> None:
    client, out, event = qualified_client()
    client.receive_tun(build_echo(event.address, dst, 1, 1), T0 + 1.0)
    assert only_drop(client) is reason
    assert out.udp == []
    assert out.tun == []


def test_own_address_and_wrong_source() -> None:
    client, out, event = qualified_client()
    client.receive_tun(build_echo(event.address, event.address, 1, 1), T0 + 1.0)
    assert only_drop(client) is DropReason.OWN_ADDRESS
    client.drops.reset()
    other = teredo_address(("203.0.113.1", 1))
    client.receive_tun(build_echo(other, NATIVE, 1, 1), T0 + 1.0)
    assert only_drop(client) is DropReason.WRONG_SOURCE
    assert out.udp == []


def test_offline_packets_get_rate_limited_errors() -> None:
    client, out = make_client()
    client.start(T0)
    out.clear()
    me = teredo_address(MAPPING)
    packet = build_echo(me, NATIVE, 1, 1, b"early")
    for _ in range(50):
        client.receive_tun(packet, T0 + 0.5)
    assert len(out.tun) == 10  # Miredo: 10 per second
    error = parse_unreachable(out.tun[0])
    assert not isinstance(error, DropReason)
    assert error.code == 3
    assert error.dst == me
    assert error.quoted == packet
    assert client.drops.get(DropReason.NOT_QUALIFIED) == 50
    assert out.udp == []


def test_no_error_about_an_icmpv6_error() -> None:
    client, out = make_client()
    client.start(T0)
    out.clear()
    me = teredo_address(MAPPING)
    error = build_icmpv6(me, NATIVE, bytes((1, 3, 0, 0, 0, 0, 0, 0)) + bytes(48))
    client.receive_tun(error, T0)
    assert out.tun == []


def test_queue_is_bounded_per_peer() -> None:
    client, out, event = qualified_client()
    peer = teredo_address(PEER_MAPPING)
    big = build_echo(event.address, peer, 1, 1, bytes(500))
    for _ in range(4):
        client.receive_tun(big, T0 + 1.0)
    assert client.drops.get(DropReason.QUEUE_FULL) == 2  # 1280 bytes per peer (Miredo)
    client.receive_udp(build_bubble(peer, event.address), PEER_MAPPING, T0 + 1.1)
    assert [p for p, d in out.udp if p == big] == [big, big]


def test_valid_trusted_peers_are_never_displaced() -> None:
    client, out, event = qualified_client(peer_capacity=2)
    for port in (40000, 40001):
        peer = teredo_address((PEER_MAPPING[0], port))
        client.receive_udp(build_bubble(peer, event.address), (PEER_MAPPING[0], port), T0 + 1.0)
    assert client.status()["trusted_peers"] == 2
    third = teredo_address(("203.0.113.91", 40002))
    client.receive_tun(build_echo(event.address, third, 1, 1), T0 + 2.0)
    assert only_drop(client) is DropReason.PEER_TABLE_FULL
    assert out.udp == []


def test_peer_table_stays_bounded() -> None:
    client, _out, event = qualified_client(peer_capacity=8)
    for i in range(200):
        peer = teredo_address(("203.0.113.50", 10000 + i))
        client.receive_tun(build_echo(event.address, peer, 1, 1), T0 + 1.0 + i * 0.001)
    status = client.status()
    assert status["peers"] == 8
    assert isinstance(status["probes"], int)
    assert status["probes"] <= 8  # min(capacity, 4096) procedures at once
    assert client.drops.get(DropReason.PROBES_FULL) > 0
    # Every timer fires; no error, no growth.
    now = T0 + 2.0
    for _ in range(20):
        now += 1.0
        client.handle_timer(now)
    assert client.status()["probes"] == 0


# --- local discovery (sections 5.2.3 case 4, 5.2.8) ----------------------------------------------


def test_discovery_bubble_creates_a_local_peer_and_gets_a_unicast_reply() -> None:
    client, out, event = qualified_client()
    neighbour = teredo_address((MAPPING[0], 50000))
    client.receive_discovery(build_bubble(neighbour, ALL_NODES, hop_limit=1), LOCAL, T0 + 1.0)
    assert out.udp == [(build_bubble(event.address, neighbour), LOCAL)]
    assert client.drops.total() == 0
    # Sending to it: case 3, a unicast bubble to its local address and a discovery bubble.
    out.clear()
    data = build_echo(event.address, neighbour, 1, 1, b"lan")
    client.receive_tun(data, T0 + 5.0)
    assert out.udp == [(build_bubble(event.address, neighbour), LOCAL)]
    assert out.discovery == [build_bubble(event.address, ALL_NODES, hop_limit=1)]
    # Its unicast bubble from the local address (case 5) makes it trusted: the packet goes.
    client.receive_udp(build_bubble(neighbour, event.address), LOCAL, T0 + 5.1)
    assert out.udp[-1] == (data, LOCAL)


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (
            build_bubble(teredo_address(("203.0.113.1", 50000)), ALL_NODES),
            DropReason.DISCOVERY_OTHER_NAT,
        ),
        (build_bubble(NATIVE, ALL_NODES), DropReason.BAD_DISCOVERY),
        (
            build_bubble(teredo_address((MAPPING[0], 50000)), teredo_address(MAPPING)),
            DropReason.BAD_DISCOVERY,
        ),
        (
            build_echo(teredo_address((MAPPING[0], 50000)), ALL_NODES, 1, 1),
            DropReason.BAD_DISCOVERY,
        ),
        (b"\x00\x01junk", DropReason.TRUNCATED_AUTH),
    ],
)
def test_forbidden_discovery_bubbles(payload: bytes, reason: DropReason) -> None:
    client, out, _event = qualified_client()
    client.receive_discovery(payload, LOCAL, T0 + 1.0)
    assert only_drop(client) is reason
    assert out.udp == []
    assert client.status()["peers"] == 0


def test_own_discovery_bubble_is_ignored() -> None:
    client, out, event = qualified_client()
    client.receive_discovery(build_bubble(event.address, ALL_NODES, hop_limit=1), LOCAL, T0)
    assert only_drop(client) is DropReason.OWN_ADDRESS
    assert out.udp == []


def test_discovery_disabled() -> None:
    client, out, _event = qualified_client(local_discovery=False)
    neighbour = teredo_address((MAPPING[0], 50000))
    client.receive_discovery(build_bubble(neighbour, ALL_NODES, hop_limit=1), LOCAL, T0 + 1.0)
    assert only_drop(client) is DropReason.DISCOVERY_DISABLED
    assert out.udp == []


def test_discovery_bubbles_every_200_to_300_s() -> None:
    client, out, _event = qualified_client()
    now = T0
    sent_at = []
    for _ in range(4000):
        deadline = client.next_deadline()
        assert deadline is not None
        now = deadline
        client.handle_timer(now)
        for payload, _dest in out.udp:
            if payload[:2] == b"\x00\x01":
                nonce = rs_nonce(payload)
                client.receive_udp(ra_payload(nonce), SRV, now + 0.05)
        if out.discovery:
            sent_at.append(now)
        out.clear()
        if now > T0 + 2000.0:
            break
    gaps = [b - a for a, b in itertools.pairwise(sent_at)]
    assert len(gaps) >= 5
    assert all(200.0 <= g <= 300.0 for g in gaps), gaps
    assert events(client) == []  # refreshes kept the address all along


# --- network changes and a recreated interface (issues 13 and 14) -------------------------------


def test_requalify_retires_the_address_and_sends_an_rs_at_once() -> None:
    client, out, event = qualified_client()
    client.requalify("the local IPv4 changed", T0 + 7.0, None)
    assert events(client) == [Offline("the local IPv4 changed")]
    assert client.state is ClientState.QUALIFYING
    assert client.address is None
    [(payload, dest)] = out.udp
    assert dest == SRV
    # Same mapping again: the same address (the flag bits belong to server and mapping).
    client.receive_udp(ra_payload(rs_nonce(payload)), SRV, T0 + 7.1)
    (payload, dest) = out.udp[-1]
    client.receive_udp(ra_payload(rs_nonce(payload)), SRV2, T0 + 7.2)
    [again] = events(client)
    assert isinstance(again, Qualified)
    assert again.address == event.address


def test_requalify_while_waiting_resets_the_back_off() -> None:
    client, out = make_client()
    client.start(T0)
    for k in (1, 2, 3):
        client.handle_timer(T0 + 4.0 * k)
    events(client)
    assert client.state is ClientState.OFFLINE
    out.clear()
    client.requalify("a new default route", T0 + 13.0, (ipv4_to_int(MAPPING[0]), MAPPING[1]))
    assert [d for _p, d in out.udp] == [SRV]
    assert events(client) == []  # nothing was qualified: nothing to retire
    (payload, _d) = out.udp[-1]
    # The new local address is the mapping: no NAT, no secondary test.
    client.receive_udp(ra_payload(rs_nonce(payload)), SRV, T0 + 13.1)
    [event] = events(client)
    assert isinstance(event, Qualified)
    assert event.nat is NatType.NONE


def test_network_down_goes_offline_at_once_and_waits() -> None:
    client, out, _event = qualified_client()
    client.network_down("no route to the server", T0 + 5.0)
    assert events(client) == [Offline("no route to the server")]
    assert client.state is ClientState.OFFLINE
    assert client.address is None
    assert out.udp == []
    # One attempt per 100 s at most while the network is away (the return is news of its own).
    assert client.next_deadline() == pytest.approx(T0 + 105.0)
    client.requalify("network back", T0 + 20.0, None)
    assert [d for _p, d in out.udp] == [SRV]


def test_refresh_now_keeps_the_address_unless_the_mapping_changed() -> None:
    client, out, event = qualified_client()
    client.refresh_now(T0 + 3.0)
    [(payload, dest)] = out.udp
    assert dest == SRV
    client.refresh_now(T0 + 3.1)  # a second route in the same burst: no second RS
    assert len(out.udp) == 1
    client.receive_udp(ra_payload(rs_nonce(payload)), SRV, T0 + 3.2)
    assert events(client) == []  # same mapping: nothing changes
    assert client.address == event.address
    out.clear()
    client.refresh_now(T0 + 4.0)
    (payload, _d) = out.udp[-1]
    moved = ("203.0.113.78", 40001)
    client.receive_udp(ra_payload(rs_nonce(payload), moved), SRV, T0 + 4.1)
    [changed] = events(client)
    assert isinstance(changed, AddressChanged)
    assert changed.mapping == moved


def test_a_flood_of_new_peers_never_evicts_an_active_trusted_peer() -> None:
    """Issue 12, peer-table exhaustion: 5,000 new Teredo peers (each from its own port, so the
    mapping check passes) flood the client while one trusted peer keeps talking. The table
    stays within its capacity and the active peer is never evicted: its packets keep reaching
    the TUN and ours keep reaching it directly."""
    client, out, event = qualified_client(peer_capacity=64)
    friend = teredo_address(PEER_MAPPING)
    client.receive_udp(build_bubble(friend, event.address), PEER_MAPPING, T0 + 1.0)
    out.clear()
    delivered = 0
    for i in range(5000):
        now = T0 + 2.0 + i * 0.002
        port = 10000 + i
        flooder = teredo_address(("203.0.113.50", port))
        client.receive_udp(build_echo(flooder, event.address, 1, 1), ("203.0.113.50", port), now)
        if i % 500 == 0:
            ping = build_echo(friend, event.address, 7, i, b"friend")
            client.receive_udp(ping, PEER_MAPPING, now)
            delivered += out.tun.count(ping)
            reply = build_echo(event.address, friend, 7, i, b"ours", reply=True)
            client.receive_tun(reply, now)
            assert (reply, PEER_MAPPING) in out.udp, i
            client.handle_timer(now)
        peers = client.status()["peers"]
        assert isinstance(peers, int)
        assert peers <= 64
    assert delivered == 10


def test_an_off_path_attacker_cannot_make_a_fake_relay_trusted() -> None:
    """Issue 12, spoofing: native traffic from a relay the client never tested is held until
    the section 5.2.9 ping test answers with our nonce through that relay. An attacker that
    did not see the ping (off path) forges Echo Replies with other nonces: the fake relay is
    never trusted, nothing of its reaches the TUN, and the client's address is unchanged."""
    client, out, event = qualified_client()
    fake_relay = ("203.0.113.66", 3544)
    packet = build_echo(NATIVE, event.address, 9, 1, b"from the fake relay")
    client.receive_udp(packet, fake_relay, T0 + 1.0)
    assert out.tun == []
    for i in range(50):
        guess = build_echo(NATIVE, event.address, 0, i, (i * 7919).to_bytes(8, "big"), reply=True)
        client.receive_udp(guess, fake_relay, T0 + 1.1 + i * 0.01)
        client.receive_udp(packet, fake_relay, T0 + 1.1 + i * 0.01)
    assert out.tun == []
    assert client.drops.get(DropReason.PING_NONCE_MISMATCH) == 50
    assert client.drops.get(DropReason.QUEUE_FULL) > 0  # its queue stays bounded meanwhile
    assert client.address == event.address
    assert client.state is ClientState.QUALIFIED
