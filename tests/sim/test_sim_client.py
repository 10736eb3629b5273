"""The client machine on the simulated network (tests/sim/network.py): the real ServerMachine,
NAT models, a relay model and a native host, on a fake clock. Each scenario covers minutes of
protocol time in milliseconds."""

from __future__ import annotations

import itertools

import pytest

from teredo.core.addr import TeredoAddress, ipv4_to_int
from teredo.core.client import (
    AddressChanged,
    ClientState,
    NatType,
    Offline,
    Qualified,
    ResolveServer,
    SymmetricNat,
)
from teredo.core.counters import DropReason
from teredo.core.ipv6 import build_echo, parse_echo
from teredo.core.qualify import REFRESH_GIVE_UP

from .network import (
    NATIVE,
    RELAY,
    SERVER,
    SERVER2,
    ClientNode,
    Nat,
    NativeHost,
    NatKind,
    RelayNode,
    ServerNode,
    Sim,
)


def qualified_event(node: ClientNode) -> Qualified:
    found = [e for _t, e in node.events if isinstance(e, Qualified)]
    assert found, f"not qualified; events: {node.event_types()}"
    return found[-1]


def behind(
    sim: Sim, kind: NatKind, n: int, *, seed: int | None = None, refuse_symmetric: bool = False
) -> ClientNode:
    nat = Nat(sim, f"203.0.113.{10 + n}", kind, first_port=20000 + 100 * n)
    return ClientNode(
        sim,
        (f"192.168.{n}.2", 3544 + n),
        nat=nat,
        seed=n if seed is None else seed,
        refuse_symmetric=refuse_symmetric,
    )


# --- qualification per NAT kind (RFC 4380 5.2.1) -----------------------------------------------


@pytest.mark.parametrize("kind", [NatKind.FULL_CONE, NatKind.RESTRICTED, NatKind.PORT_RESTRICTED])
def test_qualifies_behind_cone_like_nats_as_restricted(kind: NatKind) -> None:
    sim = Sim()
    ServerNode(sim)
    node = behind(sim, kind, 1)
    node.start()
    sim.run_for(1.0)
    event = qualified_event(node)
    # RFC 5991: the cone bit is never set, and both server addresses saw the same mapping.
    assert event.nat is NatType.RESTRICTED
    assert event.mapping == ("203.0.113.11", 20100)
    decoded = TeredoAddress.unpack(event.address)
    assert decoded is not None
    assert decoded.server == ipv4_to_int(SERVER)
    assert (decoded.client, decoded.port) == (ipv4_to_int("203.0.113.11"), 20100)
    assert not decoded.cone
    assert decoded.other_flags == 0
    assert node.machine.state is ClientState.QUALIFIED
    # One RS to each server address, nothing more.
    rs_to = [dest for _t, _p, dest in node.sent_udp]
    assert rs_to == [(SERVER, 3544), (SERVER2, 3544)]


def test_public_address_qualifies_as_no_nat_without_the_secondary_test() -> None:
    sim = Sim()
    ServerNode(sim)
    node = ClientNode(sim, ("198.51.100.77", 4000))
    node.start()
    sim.run_for(1.0)
    event = qualified_event(node)
    assert event.nat is NatType.NONE
    assert event.mapping == ("198.51.100.77", 4000)
    assert [dest for _t, _p, dest in node.sent_udp] == [(SERVER, 3544)]


def test_symmetric_nat_is_refused_when_strict() -> None:
    sim = Sim()
    ServerNode(sim)
    node = behind(sim, NatKind.SYMMETRIC, 1, refuse_symmetric=True)
    node.start()
    sim.run_for(1.0)
    found = [e for _t, e in node.events if isinstance(e, SymmetricNat)]
    assert found == [
        SymmetricNat(
            ("203.0.113.11", 20100),
            ("203.0.113.11", 20101),
            qualified=False,
            behaviour="symmetric, sequential ports +1",
        )
    ]
    assert node.machine.state is ClientState.OFFLINE
    assert node.address is None
    assert node.machine.nat_type is NatType.SYMMETRIC
    assert not any(isinstance(e, Qualified) for _t, e in node.events)
    # It tries again later (back-off), and is still refused: no pretending.
    sim.run_for(60.0)
    assert len([e for _t, e in node.events if isinstance(e, SymmetricNat)]) >= 2
    assert node.address is None


def test_symmetric_nat_qualifies_and_reaches_a_native_host_through_the_relay() -> None:
    # RFC 6081 Symmetric NAT Support (the default): the primary mapping, then case 2 through
    # the relay, which answers at the mapping our packets came from (a new port per peer).
    sim = Sim()
    ServerNode(sim)
    relay = RelayNode(sim)
    host = NativeHost(sim)
    a = behind(sim, NatKind.SYMMETRIC, 1)
    a.start()
    sim.run_for(1.0)
    event = qualified_event(a)
    assert event.nat is NatType.SYMMETRIC
    assert event.mapping == ("203.0.113.11", 20100)
    assert a.address is not None
    a.send(build_echo(a.address, NATIVE, 9, 1, b"native data"))
    sim.run_for(3.0)
    assert relay.forwarded_native == 1
    assert len(a.inbox) == 1, a.machine.drops.snapshot()
    assert relay.peers[a.address].mapping != event.mapping  # the NAT's port toward the relay
    reply = parse_echo(a.inbox[0])
    assert not isinstance(reply, DropReason)
    assert reply.reply
    assert reply.data == b"native data"
    # And the other way: the host starts, the packet comes back to the local stack.
    hello = build_echo(NATIVE, a.address, 3, 3, b"from native", reply=True)
    host.send(hello)
    sim.run_for(3.0)
    assert a.inbox[-1] == hello


def test_silent_secondary_address_qualifies_with_nat_unknown() -> None:
    sim = Sim()
    server = ServerNode(sim)
    del sim.hosts[SERVER2]  # the secondary address answers nothing
    node = behind(sim, NatKind.PORT_RESTRICTED, 1)
    node.start()
    sim.run_for(5.0)
    assert node.address is None
    sim.run_for(10.0)
    event = qualified_event(node)
    assert event.nat is NatType.UNKNOWN
    assert event.mapping == ("203.0.113.11", 20100)
    secondary_rs = [t for t, _p, dest in node.sent_udp if dest == (SERVER2, 3544)]
    assert len(secondary_rs) == 3  # N = 3 tries, T = 4 s apart
    assert secondary_rs[1] - secondary_rs[0] == pytest.approx(4.0)
    assert server.machine.stats.router_advertisements == 1


def test_qualifies_with_ten_percent_loss() -> None:
    qualified = 0
    lost = 0
    for seed in range(10):
        sim = Sim(seed=seed, loss=0.10)
        ServerNode(sim)
        node = behind(sim, NatKind.PORT_RESTRICTED, 1, seed=seed)
        node.start()
        sim.run_for(60.0)
        lost += sim.lost
        if node.address is not None:
            qualified += 1
            assert qualified_event(node).nat in (NatType.RESTRICTED, NatType.UNKNOWN)
    assert lost > 0  # the loss did hit RS or RA datagrams
    assert qualified == 10


# --- client to client with bubbles (RFC 4380 5.2.4 case 5, 5.2.3 case 3) -----------------------


def two_clients(kind1: NatKind, kind2: NatKind) -> tuple[Sim, ServerNode, ClientNode, ClientNode]:
    sim = Sim()
    server = ServerNode(sim)
    a = behind(sim, kind1, 1)
    b = behind(sim, kind2, 2)
    a.start()
    b.start()
    sim.run_for(1.0)
    assert a.address is not None
    assert b.address is not None
    return sim, server, a, b


@pytest.mark.parametrize(
    ("kind1", "kind2"),
    [
        (NatKind.PORT_RESTRICTED, NatKind.PORT_RESTRICTED),
        (NatKind.RESTRICTED, NatKind.FULL_CONE),
        (NatKind.FULL_CONE, NatKind.PORT_RESTRICTED),
    ],
)
def test_clients_meet_with_bubbles_then_talk_directly(kind1: NatKind, kind2: NatKind) -> None:
    sim, server, a, b = two_clients(kind1, kind2)
    assert a.address is not None
    assert b.address is not None
    ping = build_echo(a.address, b.address, 7, 1, b"hello")
    a.send(ping)
    sim.run_for(3.0)
    assert b.inbox == [ping]
    # The answer goes straight back: B trusts A from its direct packet (case 3).
    pong = build_echo(b.address, a.address, 7, 1, b"hello", reply=True)
    b.send(pong)
    sim.run_for(1.0)
    assert a.inbox == [pong]
    # From now on nothing but bubbles went through the server, and no more of those.
    forwarded = server.machine.stats.packets_forwarded
    bubbles = server.machine.stats.bubbles_forwarded
    for i in range(5):
        a.send(build_echo(a.address, b.address, 7, 2 + i, b"more"))
        b.send(build_echo(b.address, a.address, 7, 2 + i, b"more", reply=True))
        sim.run_for(0.5)
    assert len(b.inbox) == 6
    assert len(a.inbox) == 6
    assert server.machine.stats.packets_forwarded == forwarded == 0
    assert server.machine.stats.bubbles_forwarded == bubbles
    data_via_server = [
        1
        for _t, _src, dst, payload in sim.log
        if dst[0] in (SERVER, SERVER2) and len(payload) > 61 and b"more" in payload
    ]
    assert data_via_server == []


def test_peer_behind_symmetric_nat_is_unreachable_and_the_sender_hears_it() -> None:
    sim = Sim()
    ServerNode(sim)
    a = behind(sim, NatKind.PORT_RESTRICTED, 1)
    a.start()
    sim.run_for(1.0)
    assert a.address is not None
    # A Teredo peer whose mapping answers nothing (its NAT filters everything).
    ghost = TeredoAddress(
        b"\x20\x01\x00\x00", ipv4_to_int(SERVER), 0, 40000, ipv4_to_int("203.0.113.99")
    ).pack()
    a.send(build_echo(a.address, ghost, 1, 1, b"?"))
    sim.run_for(20.0)
    bubbles = [dest for t, p, dest in a.sent_udp if len(p) == 40 and p[24:40] == ghost and t > 0.5]
    # 4 rounds (first + 3 repeats), each a direct and an indirect bubble.
    assert bubbles.count(("203.0.113.99", 40000)) == 4
    assert bubbles.count((SERVER, 3544)) == 4
    assert len(a.inbox) == 1
    unreachable = a.inbox[0]
    assert unreachable[40] == 1  # ICMPv6 destination unreachable
    assert unreachable[41] == 3  # address unreachable
    assert unreachable[24:40] == a.address


# --- client to a native host through the ping test (5.2.4 case 2, 5.2.9) -----------------------


def test_native_host_through_the_ping_test_and_a_relay() -> None:
    sim = Sim()
    server = ServerNode(sim)
    relay = RelayNode(sim)
    host = NativeHost(sim)
    a = behind(sim, NatKind.PORT_RESTRICTED, 1)
    a.start()
    sim.run_for(1.0)
    assert a.address is not None
    data = build_echo(a.address, NATIVE, 9, 1, b"native data")
    a.send(data)
    sim.run_for(3.0)
    # The ping went to our server, which sent it natively; the reply came back through the
    # relay, which reached us with an indirect bubble (we answered it directly); then the
    # queued packet went to the relay, and on to the host.
    assert server.machine.stats.native_forwarded == 1
    assert host.inbox == []  # the host answered the ping; our data was an echo request too
    assert relay.forwarded_native == 1
    assert a.machine.drops.total() == 0
    # The host's own echo reply to our data came back through the relay to the local stack.
    assert len(a.inbox) == 1
    reply = parse_echo(a.inbox[0])
    assert not isinstance(reply, DropReason)
    assert reply.reply
    assert reply.data == b"native data"
    # Later packets go to the relay directly, no new ping.
    before = server.machine.stats.native_forwarded
    a.send(build_echo(a.address, NATIVE, 9, 2, b"again"))
    sim.run_for(1.0)
    assert server.machine.stats.native_forwarded == before
    assert len(a.inbox) == 2
    last_to_relay = [dest for _t, _p, dest in a.sent_udp][-1]
    assert last_to_relay == RELAY


def test_unsolicited_native_packet_is_held_until_the_ping_test_passes() -> None:
    sim = Sim()
    ServerNode(sim)
    relay = RelayNode(sim)
    host = NativeHost(sim)
    a = behind(sim, NatKind.PORT_RESTRICTED, 1)
    a.start()
    sim.run_for(1.0)
    assert a.address is not None
    hello = build_echo(NATIVE, a.address, 3, 3, b"unsolicited", reply=True)
    host.send(hello)
    sim.run_for(3.0)
    # Case 6: queued, ping-tested through our server, delivered once the reply came back
    # from the same relay.
    assert a.inbox == [hello]
    assert relay.peers[a.address].trusted


# --- maintenance (5.2.5) ------------------------------------------------------------------------


def test_nat_rebinding_moves_to_the_new_address_within_one_refresh() -> None:
    sim = Sim()
    ServerNode(sim)
    nat = Nat(sim, "203.0.113.11", NatKind.PORT_RESTRICTED)
    node = ClientNode(sim, ("192.168.1.2", 3545), nat=nat)
    node.start()
    sim.run_for(1.0)
    old = node.address
    assert old is not None
    nat.rebind()
    t0 = sim.now
    sim.run_for(31.0 + 1.0)
    changed = [(t, e) for t, e in node.events if isinstance(e, AddressChanged)]
    assert len(changed) == 1
    t, event = changed[0]
    assert t - t0 <= 30.0 + 1.0
    assert event.old == old
    assert event.new == node.address
    assert event.mapping[0] == "203.0.113.11"
    assert event.mapping[1] != 20000
    assert node.machine.state is ClientState.QUALIFIED


def test_refresh_keeps_the_address_and_flags() -> None:
    sim = Sim()
    ServerNode(sim)
    node = behind(sim, NatKind.PORT_RESTRICTED, 1)
    node.start()
    sim.run_for(300.0)
    assert node.event_types() == ["Qualified"]
    rs_times = [t for t, p, dest in node.sent_udp if dest == (SERVER, 3544) and len(p) == 61]
    gaps = [b - a for a, b in itertools.pairwise(rs_times)]
    assert gaps
    # RFC 6081 5.1.1 / RFC 4380 5.2: randomized, 75-100 % of 30 s (plus the RTT).
    assert all(22.5 <= g <= 30.1 for g in gaps), gaps
    assert len({round(g, 3) for g in gaps}) > 1


def test_server_down_then_back() -> None:
    sim = Sim()
    server = ServerNode(sim)
    node = behind(sim, NatKind.PORT_RESTRICTED, 1)
    node.start()
    sim.run_for(1.0)
    address = node.address
    assert address is not None
    server.up = False
    sim.run_for(30.0 + REFRESH_GIVE_UP + 1.0)
    types = node.event_types()
    assert "Offline" in types
    assert "ResolveServer" in types
    offline = next(e for _t, e in node.events if isinstance(e, Offline))
    assert "lost" in offline.reason
    assert node.address is None
    assert node.machine.state is not ClientState.QUALIFIED
    server.up = True
    sim.run_for(120.0)
    assert node.machine.status()["state"] == "qualified"
    # Same mapping, same server: the same address (random flags kept, RFC 5991).
    assert node.address == address
    assert isinstance([e for _t, e in node.events][-1], Qualified)
    # The retry came with a back-off, not a flood of RS.
    rs = [t for t, p, dest in node.sent_udp if dest == (SERVER, 3544) and len(p) == 61]
    assert len(rs) < 30
    assert any(isinstance(e, ResolveServer) for _t, e in node.events)


# --- local discovery (5.2.8) ----------------------------------------------------------------------


def test_clients_behind_one_nat_meet_by_local_discovery() -> None:
    sim = Sim()
    ServerNode(sim)
    nat = Nat(sim, "203.0.113.11", NatKind.PORT_RESTRICTED)
    a = ClientNode(sim, ("192.168.1.2", 3545), nat=nat, seed=1)
    b = ClientNode(sim, ("192.168.1.3", 3546), nat=nat, seed=2)
    a.start()
    sim.run_for(1.0)
    b.start()
    sim.run_for(1.0)
    assert a.address is not None
    assert b.address is not None
    # B's discovery bubble at qualification reached A, which answered with a unicast bubble.
    data = build_echo(a.address, b.address, 5, 5, b"same lan")
    a.send(data)
    sim.run_for(2.0)
    assert b.inbox == [data]
    # It went over the LAN: no hairpin through the NAT is needed.
    assert [dest for _t, _p, dest in a.sent_udp][-1] == ("192.168.1.3", 3546)


def test_no_local_discovery_means_no_discovery_bubbles() -> None:
    sim = Sim()
    ServerNode(sim)
    nat = Nat(sim, "203.0.113.11", NatKind.PORT_RESTRICTED)
    a = ClientNode(sim, ("192.168.1.2", 3545), nat=nat, local_discovery=False)
    a.start()
    sim.run_for(600.0)
    assert a.address is not None
    assert all(dest[0] != "224.0.0.253" for _t, _p, dest in a.sent_udp)


def test_discovery_bubbles_repeat_every_200_to_300_s() -> None:
    sim = Sim()
    ServerNode(sim)
    nat = Nat(sim, "203.0.113.11", NatKind.PORT_RESTRICTED)
    a = ClientNode(sim, ("192.168.1.2", 3545), nat=nat, seed=1)
    b = ClientNode(sim, ("192.168.1.3", 3546), nat=nat, seed=2)
    seen: list[float] = []
    original = b.deliver_discovery

    def spy(payload: bytes, source: tuple[str, int]) -> None:
        seen.append(sim.now)
        original(payload, source)

    b.deliver_discovery = spy  # type: ignore[method-assign]
    a.start()
    sim.run_for(1000.0)
    assert len(seen) >= 4
    gaps = [y - x for x, y in itertools.pairwise(seen)]
    assert all(200.0 <= g <= 300.0 for g in gaps), gaps


# --- stale peers are checked again (5.2.4: valid means heard from within 30 s) --------------------


def test_silent_teredo_peer_is_reached_again_after_a_new_bubble_exchange() -> None:
    sim, server, a, b = two_clients(NatKind.PORT_RESTRICTED, NatKind.PORT_RESTRICTED)
    assert a.address is not None
    assert b.address is not None
    a.send(build_echo(a.address, b.address, 1, 1, b"first"))
    sim.run_for(3.0)
    assert len(b.inbox) == 1
    bubbles = server.machine.stats.bubbles_forwarded
    sim.run_for(60.0)  # silence: the entry is no longer valid
    later = build_echo(a.address, b.address, 1, 2, b"later")
    a.send(later)
    sim.run_for(1.0)
    assert b.inbox[-1] == later
    # One more indirect bubble went through the server to set it up again.
    assert server.machine.stats.bubbles_forwarded == bubbles + 1
    assert a.machine.drops.total() == 0


def test_silent_native_peer_is_ping_tested_again_through_the_same_relay() -> None:
    sim = Sim()
    server = ServerNode(sim)
    RelayNode(sim)
    NativeHost(sim)
    a = behind(sim, NatKind.FULL_CONE, 1)
    a.start()
    sim.run_for(1.0)
    assert a.address is not None
    a.send(build_echo(a.address, NATIVE, 9, 1, b"one"))
    sim.run_for(3.0)
    assert len(a.inbox) == 1
    sim.run_for(60.0)
    pings = server.machine.stats.native_forwarded
    a.send(build_echo(a.address, NATIVE, 9, 2, b"two"))
    sim.run_for(1.0)
    assert server.machine.stats.native_forwarded == pings + 1  # a new ping test
    assert len(a.inbox) == 2
    reply = parse_echo(a.inbox[-1])
    assert not isinstance(reply, DropReason)
    assert reply.data == b"two"
    assert a.machine.drops.total() == 0
