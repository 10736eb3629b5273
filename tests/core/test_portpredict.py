"""RFC 6081 port prediction (core/portpredict.py, core/client.py `_predicted_try`,
`_predicted_accept`, the Random Port trailer in bubbles behind a sequential NAT).

Sender: behind a sequential NAT (M2 = M1 + 1) each new destination of our socket is the NAT's
next port; our bubbles announce it. Receiver: a relayed bubble with a Random Port trailer makes
us bubble the announced port and the next ones; a packet from one of them, from the peer's own
IPv4, in time, is believed once. Spoofing: another IPv4, a port not tried, too late, a second
time, or a valid trusted peer: never moved."""

from __future__ import annotations

import pytest
from test_client import (
    MAPPING,
    PEER_MAPPING,
    SRV,
    SRV2,
    T0,
    Recorder,
    events,
    make_client,
    qualified_client,
    ra_payload,
    rs_nonce,
    teredo_address,
)

from teredo.core.addr import ipv4_to_int
from teredo.core.client import ClientMachine, Qualified
from teredo.core.ipv6 import build_bubble, build_echo
from teredo.core.natbehaviour import classify
from teredo.core.portpredict import (
    PREDICT_TRIES,
    PREDICT_WINDOW,
    PortPrediction,
    PredictedPorts,
    random_port,
    tried_ports,
)
from teredo.core.wire import RandomPortTrailer, build_origin, parse_trailers

PEER = teredo_address(PEER_MAPPING)  # 203.0.113.90:40000
ANNOUNCED = 41234
IP = ipv4_to_int(PEER_MAPPING[0])


def relayed(me: bytes, port: int = ANNOUNCED) -> bytes:
    """The peer's bubble through our server, origin its mapping, with a Random Port trailer."""
    origin = build_origin(IP, PEER_MAPPING[1])
    return origin + build_bubble(PEER, me) + RandomPortTrailer(port).pack()


def tried(me: bytes, client: ClientMachine, out: Recorder) -> None:
    client.receive_udp(relayed(me), SRV, T0 + 1.0)
    bubble = build_bubble(me, PEER)
    assert (bubble, PEER_MAPPING) in out.udp  # RFC 4380 5.2.3: the origin, as ever
    for port in tried_ports(ANNOUNCED):
        assert (bubble, (PEER_MAPPING[0], port)) in out.udp
    out.clear()


# --- the module ------------------------------------------------------------------------------


def test_prediction_numbers_new_flows_from_the_secondary_port() -> None:
    behaviour = classify((1, 50000), (1, 50001), (2, 3545))
    p = PortPrediction()
    servers = ((9, 3544), (10, 3544))
    assert p.start(behaviour, (1, 50000), servers)
    p.seen((9, 3544))  # the servers are old flows
    p.seen((20, 3544))  # a relay: the NAT's 50002
    assert p.predict((30, 40000)) == 50003
    assert p.predict((30, 40000)) == 50003  # the same flow
    p.seen((20, 3544))
    assert p.predict((31, 40000)) == 50004
    trailer = p.trailer((31, 40000))
    assert trailer == RandomPortTrailer(50004).pack()
    assert p.announced == 1


@pytest.mark.parametrize(
    ("primary", "secondary"),
    [((1, 50000), (1, 50000)), ((1, 50000), (1, 7000)), ((1, 3545), (1, 3545))],
    ids=["cone-or-restricted", "random", "port-preserving"],
)
def test_no_prediction_unless_sequential(
    primary: tuple[int, int], secondary: tuple[int, int]
) -> None:
    p = PortPrediction()
    assert not p.start(classify(primary, secondary, (2, 3545)), primary, ())
    assert p.predict((30, 40000)) is None
    assert p.trailer((30, 40000)) == b""


def test_tried_ports_and_the_trailer_lookup() -> None:
    assert tried_ports(41234) == (41234, 41235, 41236)[:PREDICT_TRIES]
    assert tried_ports(65535)[1] == 1024
    trailers = parse_trailers(RandomPortTrailer(41234).pack())
    assert isinstance(trailers, tuple)
    assert random_port(trailers) == 41234
    assert random_port(()) is None


def test_records_are_used_once_and_bounded() -> None:
    r = PredictedPorts(capacity=2)
    r.tried(b"a", 1, (5, 6), T0)
    assert not r.accept(b"a", 2, 5, T0)  # another IPv4
    assert not r.accept(b"a", 1, 7, T0)  # not tried
    assert not r.accept(b"a", 1, 5, T0 + PREDICT_WINDOW + 0.1)  # too late
    assert r.accept(b"a", 1, 6, T0 + 1)
    assert not r.accept(b"a", 1, 6, T0 + 1)  # once
    r.tried(b"b", 1, (5,), T0)
    r.tried(b"c", 1, (5,), T0)
    r.tried(b"d", 1, (5,), T0)
    assert len(r) == 2
    assert not r.accept(b"b", 1, 5, T0)  # the oldest went first


# --- the sending side (behind a sequential NAT) --------------------------------------------------


def sequential_client() -> tuple[ClientMachine, Recorder, Qualified]:
    client, out = make_client(local_address=(ipv4_to_int("192.168.1.2"), 3545), peer_capacity=64)
    client.start(T0)
    client.receive_udp(ra_payload(rs_nonce(out.udp[-1][0])), SRV, T0 + 0.1)
    second = (MAPPING[0], MAPPING[1] + 1)  # the NAT's next port: sequential, step +1
    client.receive_udp(ra_payload(rs_nonce(out.udp[-1][0]), second), SRV2, T0 + 0.2)
    found = [e for e in events(client) if isinstance(e, Qualified)]
    assert found
    out.clear()
    return client, out, found[0]


def test_bubbles_behind_a_sequential_nat_announce_the_next_port() -> None:
    client, out, event = sequential_client()
    me = event.address
    client.receive_tun(build_echo(me, PEER, 7, 1, b"hello"), T0 + 1.0)
    expected = build_bubble(me, PEER) + RandomPortTrailer(MAPPING[1] + 2).pack()
    assert (expected, PEER_MAPPING) in out.udp
    assert (expected, SRV) in out.udp
    assert client.status()["random_ports_announced"] == 1  # one bubble, sent both ways


def test_answering_a_relayed_bubble_announces_the_new_flows_port() -> None:
    client, out, event = sequential_client()
    me = event.address
    origin = build_origin(IP, PEER_MAPPING[1])
    client.receive_udp(origin + build_bubble(PEER, me), SRV, T0 + 1.0)
    plain = build_bubble(me, PEER)
    assert (plain, PEER_MAPPING) in out.udp  # the direct answer: a new flow, port M1 + 2
    told = plain + RandomPortTrailer(MAPPING[1] + 2).pack()
    assert (told, SRV) in out.udp  # through the peer's server (here ours)


def test_a_restricted_nat_sends_no_trailer() -> None:
    client, out, event = qualified_client()
    me = event.address
    client.receive_tun(build_echo(me, PEER, 7, 1, b"hello"), T0 + 1.0)
    assert all(p == build_bubble(me, PEER) for p, _d in out.udp)
    assert client.status()["random_ports_announced"] == 0


# --- the receiving side ----------------------------------------------------------------------


def test_a_packet_from_a_tried_port_is_believed_once() -> None:
    client, out, event = qualified_client()
    me = event.address
    tried(me, client, out)
    data = build_echo(PEER, me, 7, 1, b"hi")
    client.receive_udp(data, (PEER_MAPPING[0], ANNOUNCED + 1), T0 + 2.0)
    assert out.tun == [data]
    st = client.status()
    assert st["trusted_peers"] == 1
    assert st["predicted_peers"] == 1
    # The peer is trusted there now: our packets go to that port.
    out.clear()
    echo = build_echo(me, PEER, 7, 2, b"back")
    client.receive_tun(echo, T0 + 2.1)
    assert out.udp == [(echo, (PEER_MAPPING[0], ANNOUNCED + 1))]


@pytest.mark.parametrize(
    ("source", "when"),
    [
        (("203.0.113.91", ANNOUNCED), T0 + 2.0),  # another IPv4
        ((PEER_MAPPING[0], ANNOUNCED + PREDICT_TRIES), T0 + 2.0),  # a port not tried
        ((PEER_MAPPING[0], ANNOUNCED), T0 + 1.0 + PREDICT_WINDOW + 0.5),  # too late
    ],
    ids=["other-ipv4", "port-not-tried", "too-late"],
)
def test_spoofed_or_late_packets_are_dropped(source: tuple[str, int], when: float) -> None:
    client, out, event = qualified_client()
    me = event.address
    tried(me, client, out)
    client.receive_udp(build_echo(PEER, me, 7, 1, b"hi"), source, when)
    assert out.tun == []
    assert client.status()["trusted_peers"] == 0
    assert client.drops.snapshot() == {"mapping_mismatch": 1}


def test_a_valid_trusted_peer_is_never_moved() -> None:
    client, out, event = qualified_client()
    me = event.address
    client.receive_udp(build_bubble(PEER, me), PEER_MAPPING, T0 + 0.5)  # trusted at its mapping
    assert client.status()["trusted_peers"] == 1
    out.clear()
    client.receive_udp(relayed(me), SRV, T0 + 1.0)
    assert [d for _p, d in out.udp if d[1] == ANNOUNCED] == []  # nothing tried
    client.receive_udp(build_echo(PEER, me, 7, 1, b"hi"), (PEER_MAPPING[0], ANNOUNCED), T0 + 2)
    assert client.drops.snapshot() == {"mapping_mismatch": 1}
    out.clear()
    echo = build_echo(me, PEER, 7, 2, b"x")
    client.receive_tun(echo, T0 + 2.1)
    assert out.udp == [(echo, PEER_MAPPING)]
