"""RFC 6081 Hairpinning (core/hairpin.py, core/client.py `_hairpin_*`): Alternate Address
trailers offered to peers behind our own NAT only, tried when relayed to us, and a local source
believed only within those bounds (never a global source, never moving a valid trusted peer)."""

from __future__ import annotations

import pytest
from test_client import MAPPING, PEER_MAPPING, SRV, T0, qualified_client, teredo_address

from teredo.core.addr import ipv4_to_int
from teredo.core.client import ClientMachine
from teredo.core.hairpin import HAIRPIN_WINDOW, HairpinRecords, alternates
from teredo.core.ipv6 import build_bubble, build_echo
from teredo.core.wire import AlternateAddressTrailer, build_origin, parse_payload

LOCAL = ("192.168.1.2", 3545)  # our socket's local address
NEIGHBOUR_MAPPING = (MAPPING[0], 40001)  # behind our NAT: the same public IPv4
NEIGHBOUR = teredo_address(NEIGHBOUR_MAPPING)
NEIGHBOUR_LOCAL = ("192.168.1.3", 3546)


def alt(addr: tuple[str, int]) -> bytes:
    return AlternateAddressTrailer(((ipv4_to_int(addr[0]), addr[1]),)).pack()


def client() -> tuple[ClientMachine, object, bytes]:
    c, out, event = qualified_client(local_address=(ipv4_to_int(LOCAL[0]), LOCAL[1]))
    return c, out, event.address


def test_bubbles_carry_our_local_address_to_a_peer_behind_our_nat_only() -> None:
    c, out, me = client()
    c.receive_tun(build_echo(me, NEIGHBOUR, 1, 1, b"x"), T0 + 1.0)
    sent = [p for p, _ in out.udp]  # type: ignore[attr-defined]
    assert sent == [build_bubble(me, NEIGHBOUR) + alt(LOCAL)] * 2  # direct and indirect
    out.clear()  # type: ignore[attr-defined]
    c.receive_tun(build_echo(me, teredo_address(PEER_MAPPING), 1, 1, b"x"), T0 + 1.0)
    assert all(not parse_payload(p).has_trailers for p, _ in out.udp)  # type: ignore[attr-defined,union-attr]


def test_a_relayed_offer_is_tried_at_the_local_address_then_both_sides_trust() -> None:
    c, out, me = client()
    relayed = build_origin(ipv4_to_int(NEIGHBOUR_MAPPING[0]), NEIGHBOUR_MAPPING[1])
    c.receive_udp(relayed + build_bubble(NEIGHBOUR, me) + alt(NEIGHBOUR_LOCAL), SRV, T0 + 1.0)
    assert (build_bubble(me, NEIGHBOUR) + alt(LOCAL), NEIGHBOUR_LOCAL) in out.udp  # type: ignore[attr-defined]
    # Its answer comes from the address we tried: a local peer there, data delivered.
    data = build_echo(NEIGHBOUR, me, 1, 1, b"hi")
    c.receive_udp(data, NEIGHBOUR_LOCAL, T0 + 1.2)
    assert out.tun == [data]  # type: ignore[attr-defined]
    st = c.status()
    assert st["hairpin_peers"] == 1
    assert st["trusted_peers"] == 1
    assert c.drops.total() == 0


def test_our_offer_answered_from_a_listed_local_address() -> None:
    c, out, me = client()
    echo = build_echo(me, NEIGHBOUR, 1, 1, b"x")
    c.receive_tun(echo, T0 + 1.0)
    out.clear()  # type: ignore[attr-defined]
    c.receive_udp(build_bubble(NEIGHBOUR, me) + alt(NEIGHBOUR_LOCAL), NEIGHBOUR_LOCAL, T0 + 1.1)
    # A bubble back (it waits for one from our local address), then what waited.
    assert out.udp == [  # type: ignore[attr-defined]
        (build_bubble(me, NEIGHBOUR) + alt(LOCAL), NEIGHBOUR_LOCAL),
        (echo, NEIGHBOUR_LOCAL),
    ]
    assert c.drops.total() == 0


@pytest.mark.parametrize(
    ("source", "peer", "delay"),
    [
        (("198.51.100.99", 3546), NEIGHBOUR, 0.1),  # a global source: from the internet
        (NEIGHBOUR_LOCAL, teredo_address(("203.0.113.5", 40001)), 0.1),  # another NAT's peer
        (NEIGHBOUR_LOCAL, NEIGHBOUR, HAIRPIN_WINDOW + 1.0),  # too late after our offer
    ],
    ids=["global-source", "other-nat", "outside-window"],
)
def test_what_is_never_believed(source: tuple[str, int], peer: bytes, delay: float) -> None:
    c, out, me = client()
    c.receive_tun(build_echo(me, peer, 1, 1, b"x"), T0 + 1.0)
    out.clear()  # type: ignore[attr-defined]
    listed = AlternateAddressTrailer(((ipv4_to_int(source[0]), source[1]),)).pack()
    c.receive_udp(build_bubble(peer, me) + listed, source, T0 + 1.0 + delay)
    assert c.status()["hairpin_peers"] == 0
    assert c.drops.snapshot() == {"unknown_bubble": 1}


def test_no_offer_no_belief_and_a_valid_trusted_peer_stays() -> None:
    c, out, me = client()
    # Unsolicited, from the local network, listing itself: we offered nothing.
    c.receive_udp(build_bubble(NEIGHBOUR, me) + alt(NEIGHBOUR_LOCAL), NEIGHBOUR_LOCAL, T0 + 1.0)
    assert c.status()["trusted_peers"] == 0
    # Trusted at its local address through our try, then another local source claims it.
    relayed = build_origin(ipv4_to_int(NEIGHBOUR_MAPPING[0]), NEIGHBOUR_MAPPING[1])
    c.receive_udp(relayed + build_bubble(NEIGHBOUR, me) + alt(NEIGHBOUR_LOCAL), SRV, T0 + 2.0)
    c.receive_udp(build_bubble(NEIGHBOUR, me), NEIGHBOUR_LOCAL, T0 + 2.1)
    assert c.status()["hairpin_peers"] == 1
    c.receive_udp(
        build_bubble(NEIGHBOUR, me) + alt(("192.168.1.9", 9)), ("192.168.1.9", 9), T0 + 2.2
    )
    assert c.status()["hairpin_peers"] == 1
    out.clear()  # type: ignore[attr-defined]
    echo = build_echo(me, NEIGHBOUR, 1, 2, b"y")
    c.receive_tun(echo, T0 + 2.3)
    assert out.udp == [(echo, NEIGHBOUR_LOCAL)]  # type: ignore[attr-defined]


def test_records_are_bounded_and_alternates_local() -> None:
    table = HairpinRecords(capacity=2)
    for i in range(3):
        table.offered(bytes([i]) * 16, 10.0)
    assert len(table) == 2
    assert table.accept(bytes([0]) * 16, (1, 1), True, 10.5) is None  # evicted
    assert table.accept(bytes([2]) * 16, (1, 1), False, 10.5) is None  # not listed
    assert table.accept(bytes([2]) * 16, (1, 1), True, 10.5) == "listed"
    assert table.accept(bytes([2]) * 16, (1, 1), True, 10.5) is None  # spent
    trailer = AlternateAddressTrailer(((ipv4_to_int("8.8.8.8"), 1), (ipv4_to_int("10.0.0.1"), 2)))
    assert alternates((trailer,)) == ((ipv4_to_int("10.0.0.1"), 2),)
    with pytest.raises(ValueError, match="positive"):
        HairpinRecords(window=0)
