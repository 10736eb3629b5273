"""RFC 6081 Symmetric NAT Support, receiving side (core/symmetric.py, core/client.py
`_adopt_port`): a peer behind a symmetric NAT answers from another port of the IPv4 its
address embeds; we record that port, within bounds, and nothing else moves a peer.

Spoofing: a bubble from the right IPv4 but a wrong port outside the window, or from another
IPv4, or aimed at a valid trusted peer, never redirects anyone (RFC6081-NOTES "Security")."""

from __future__ import annotations

import pytest
from test_client import (
    PEER_MAPPING,
    SRV,
    T0,
    Recorder,
    qualified_client,
    teredo_address,
)

from teredo.core.addr import ipv4_to_int
from teredo.core.client import ClientMachine
from teredo.core.ipv6 import build_bubble, build_echo
from teredo.core.symmetric import ADOPT_WINDOW, PortAdoption
from teredo.core.wire import build_origin

PEER = teredo_address(PEER_MAPPING)  # embeds 203.0.113.90:40000, its mapping toward the server
NEW_PORT = (PEER_MAPPING[0], 41234)  # the port its symmetric NAT chose toward us
OTHER_IPV4 = ("203.0.113.91", 41234)


def to_peer(out: Recorder, dest: tuple[str, int]) -> list[bytes]:
    return [p for p, d in out.udp if d == dest]


def start_bubbling(client: ClientMachine, out: Recorder, me: bytes, now: float) -> bytes:
    """We start: an echo for the peer is queued, direct + indirect bubbles go out."""
    echo = build_echo(me, PEER, 7, 1, b"hello")
    client.receive_tun(echo, now)
    assert to_peer(out, PEER_MAPPING) == [build_bubble(me, PEER)]
    assert to_peer(out, SRV) == [build_bubble(me, PEER)]
    out.clear()
    return echo


def indirect_bubble(me: bytes, origin: tuple[str, int] = PEER_MAPPING) -> bytes:
    return build_origin(ipv4_to_int(origin[0]), origin[1]) + build_bubble(PEER, me)


def test_we_start_and_the_symmetric_peer_answers_from_a_new_port() -> None:
    client, out, event = qualified_client()
    me = event.address
    echo = start_bubbling(client, out, me, T0 + 1.0)
    # Its direct bubble answering our indirect one comes from its NAT's new port.
    client.receive_udp(build_bubble(PEER, me), NEW_PORT, T0 + 1.2)
    assert client.drops.total() == 0
    # The queued echo goes to the real port, and one bubble for the peer's own procedure.
    assert to_peer(out, NEW_PORT) == [echo, build_bubble(me, PEER)]
    assert to_peer(out, PEER_MAPPING) == []
    st = client.status()
    assert st["trusted_peers"] == 1
    assert st["probes"] == 0
    assert st["symmetric_ports_adopted"] == 1
    # From then on the peer is an ordinary trusted peer at that port, both ways.
    out.clear()
    data = build_echo(PEER, me, 7, 1, b"hello", reply=True)
    client.receive_udp(data, NEW_PORT, T0 + 1.3)
    assert out.tun == [data]
    client.receive_tun(echo, T0 + 1.4)
    assert out.udp == [(echo, NEW_PORT)]
    assert client.drops.total() == 0


def test_the_symmetric_peer_starts_and_we_answer_its_new_port() -> None:
    client, out, event = qualified_client()
    me = event.address
    # Its first direct bubble (from the new port) comes before we sent anything: dropped.
    client.receive_udp(build_bubble(PEER, me), NEW_PORT, T0 + 1.0)
    assert client.drops.snapshot() == {"unknown_bubble": 1}
    assert out.udp == []
    # Its indirect bubble through our server: answered at the origin (RFC 4380 5.2.3)...
    client.receive_udp(indirect_bubble(me), SRV, T0 + 1.1)
    assert out.udp == [(build_bubble(me, PEER), PEER_MAPPING)]
    out.clear()
    # ... and its next direct bubble, 2 s later, from the new port of the same IPv4: believed.
    client.receive_udp(build_bubble(PEER, me), NEW_PORT, T0 + 3.0)
    assert out.udp == [(build_bubble(me, PEER), NEW_PORT)]
    assert client.status()["trusted_peers"] == 1
    assert client.drops.snapshot() == {"unknown_bubble": 1}  # only the first one


def test_right_ipv4_wrong_port_outside_the_window_is_dropped() -> None:
    client, out, event = qualified_client()
    me = event.address
    client.receive_udp(indirect_bubble(me), SRV, T0 + 1.0)
    out.clear()
    client.receive_udp(build_bubble(PEER, me), NEW_PORT, T0 + 1.0 + ADOPT_WINDOW + 0.5)
    assert out.udp == []
    assert client.status()["trusted_peers"] == 0
    assert client.drops.snapshot() == {"unknown_bubble": 1}


def test_another_ipv4_is_never_believed() -> None:
    client, out, event = qualified_client()
    me = event.address
    start_bubbling(client, out, me, T0 + 1.0)
    client.receive_udp(build_bubble(PEER, me), OTHER_IPV4, T0 + 1.2)
    assert out.udp == []
    assert client.status()["trusted_peers"] == 0
    assert client.drops.snapshot() == {"unknown_bubble": 1}
    # The origin answered at another IPv4 than the embedded one gives no window either.
    client.receive_udp(indirect_bubble(me, origin=OTHER_IPV4), SRV, T0 + 1.3)
    out.clear()
    client.receive_udp(build_bubble(PEER, me), OTHER_IPV4, T0 + 1.4)
    assert out.udp == []
    assert client.status()["symmetric_ports_adopted"] == 0


def test_a_valid_trusted_peer_is_never_redirected() -> None:
    client, out, event = qualified_client()
    me = event.address
    client.receive_udp(build_bubble(PEER, me), PEER_MAPPING, T0 + 1.0)  # trusted at its mapping
    assert client.status()["trusted_peers"] == 1
    # We bubble it (answering an indirect bubble), then a spoofer at its IPv4, another port.
    client.receive_udp(indirect_bubble(me), SRV, T0 + 1.5)
    out.clear()
    client.receive_udp(build_bubble(PEER, me), NEW_PORT, T0 + 1.6)
    assert out.udp == []
    assert client.drops.snapshot() == {"unknown_bubble": 1}
    echo = build_echo(me, PEER, 7, 1, b"still there")
    client.receive_tun(echo, T0 + 1.7)
    assert out.udp == [(echo, PEER_MAPPING)]  # not moved


def test_a_data_packet_from_a_new_port_is_not_enough() -> None:
    client, out, event = qualified_client()
    me = event.address
    start_bubbling(client, out, me, T0 + 1.0)
    client.receive_udp(build_echo(PEER, me, 1, 1, b"x"), NEW_PORT, T0 + 1.2)
    assert out.udp == []
    assert out.tun == []
    assert client.drops.snapshot() == {"mapping_mismatch": 1}


def test_one_bubble_of_ours_buys_one_port_at_most() -> None:
    client, out, event = qualified_client()
    me = event.address
    client.receive_udp(indirect_bubble(me), SRV, T0 + 1.0)
    client.receive_udp(build_bubble(PEER, me), NEW_PORT, T0 + 1.1)
    assert client.status()["symmetric_ports_adopted"] == 1
    out.clear()
    # A third port now: the peer is valid and trusted at the second, and the record is spent.
    client.receive_udp(build_bubble(PEER, me), (PEER_MAPPING[0], 50000), T0 + 1.2)
    assert out.udp == []
    assert client.drops.snapshot() == {"unknown_bubble": 1}


def test_a_stale_trusted_peer_being_bubbled_again_may_move() -> None:
    client, out, event = qualified_client()
    me = event.address
    client.receive_udp(build_bubble(PEER, me), PEER_MAPPING, T0 + 1.0)
    # 40 s of silence: no longer valid (30 s); a packet for it starts bubbles again.
    later = T0 + 41.0
    echo = build_echo(me, PEER, 7, 2, b"again")
    client.receive_tun(echo, later)
    assert to_peer(out, PEER_MAPPING) == [build_bubble(me, PEER)]
    out.clear()
    client.receive_udp(build_bubble(PEER, me), NEW_PORT, later + 0.2)
    assert to_peer(out, NEW_PORT) == [echo, build_bubble(me, PEER)]
    assert client.drops.total() == 0


def test_records_are_bounded_and_spent() -> None:
    table = PortAdoption(capacity=3, window=5.0)
    for i in range(5):
        table.bubbled(bytes([i]) * 16, 7, 100.0)
    assert len(table) == 3
    assert not table.claim(bytes([0]) * 16, 7, 101.0)  # the oldest went first
    assert not table.claim(bytes([4]) * 16, 8, 101.0)  # another IPv4
    assert not table.claim(bytes([4]) * 16, 7, 99.0)  # before our bubble (clock oddity)
    assert not table.claim(bytes([4]) * 16, 7, 105.5)  # past the window
    assert table.claim(bytes([3]) * 16, 7, 105.0)  # at the edge
    assert not table.claim(bytes([3]) * 16, 7, 105.0)  # spent
    assert table.adopted == 1
    table.clear()
    assert len(table) == 0
    with pytest.raises(ValueError, match="positive"):
        PortAdoption(capacity=0)
