"""Hypothesis properties of the client machine: no input ever raises, state stays bounded, and
nothing is ever sent over UDP to a non-global IPv4 address that no discovery taught us (RFC 4380
section 5.2.4 MUST)."""

from __future__ import annotations

import ipaddress

from hypothesis import given, settings
from hypothesis import strategies as st
from test_client import (
    MAPPING,
    NATIVE,
    PEER_MAPPING,
    RELAY,
    SRV,
    SRV2,
    FakeRandom,
    Recorder,
    qualified_client,
    teredo_address,
)

from teredo.core.addr import ALL_NODES, LINK_LOCAL_RESTRICTED, ipv4_to_int, is_global_ipv4
from teredo.core.client import ClientMachine, ClientParams, ClientState
from teredo.core.ipv6 import build_bubble, build_echo, pack_header
from teredo.core.server import ServerMachine, ServerParams
from teredo.core.wire import build_auth, build_origin

T = 1000.0
SOURCES = [SRV, SRV2, RELAY, PEER_MAPPING, ("192.168.1.3", 3546), ("0.0.0.0", 0), ("bogus", 1)]


@st.composite
def datagrams(draw: st.DrawFn, me: bytes) -> bytes:
    """Mostly well-formed Teredo payloads around our address, sometimes raw noise."""
    if draw(st.integers(0, 4)) == 0:
        return draw(st.binary(max_size=200))
    src = draw(
        st.sampled_from(
            [
                teredo_address(PEER_MAPPING),
                teredo_address(("10.0.0.1", 1)),
                NATIVE,
                LINK_LOCAL_RESTRICTED,
                ALL_NODES,
                me,
            ]
        )
    )
    dst = draw(st.sampled_from([me, ALL_NODES, NATIVE, LINK_LOCAL_RESTRICTED]))
    kind = draw(st.integers(0, 3))
    if kind == 0:
        ipv6 = build_bubble(src, dst)
    elif kind == 1:
        ipv6 = build_echo(src, dst, 1, 2, draw(st.binary(max_size=32)), reply=draw(st.booleans()))
    else:
        body = draw(st.binary(max_size=64))
        nh = draw(st.sampled_from([58, 59, 17, 6]))
        ipv6 = pack_header(src, dst, len(body), nh, 64) + body
        if draw(st.booleans()):
            ipv6 = ipv6[: draw(st.integers(0, len(ipv6)))]
    auth = build_auth(draw(st.binary(min_size=8, max_size=8))) if draw(st.booleans()) else b""
    origin = (
        build_origin(draw(st.integers(0, 0xFFFFFFFF)), draw(st.integers(0, 0xFFFF)))
        if draw(st.booleans())
        else b""
    )
    trailer = draw(st.binary(max_size=8))
    return auth + origin + ipv6 + trailer


def assert_safe_destinations(out: Recorder) -> None:
    for _payload, (host, _port) in out.udp:
        ipv4 = ipv4_to_int(host)
        # Only the discovery LAN source may be private (section 5.2.4 case 1).
        assert is_global_ipv4(ipv4) or host == "192.168.1.3", host


@settings(max_examples=120, deadline=None)
@given(st.data())
def test_random_datagrams_never_raise(data: st.DataObject) -> None:
    client, out, event = qualified_client()
    now = T + 1.0
    for _ in range(data.draw(st.integers(1, 12))):
        payload = data.draw(datagrams(event.address))
        source = data.draw(st.sampled_from(SOURCES))
        where = data.draw(st.integers(0, 2))
        if where == 0:
            client.receive_udp(payload, source, now)
        elif where == 1:
            client.receive_discovery(payload, source, now)
        else:
            client.receive_tun(payload, now)
        # At most 12 x 1.5 = 18 s in all: less than the shortest refresh interval (75 % of
        # 30 s), so a server that only sends garbage cannot lose the address meanwhile.
        now += data.draw(st.floats(0.0, 1.5))
        client.handle_timer(now)
    assert client.state is ClientState.QUALIFIED
    assert client.address == event.address  # no forged RA can change it (nonce)
    assert_safe_destinations(out)
    stats = client.status()
    assert isinstance(stats["peers"], int)
    assert stats["peers"] <= 64


@settings(max_examples=80, deadline=None)
@given(st.lists(st.binary(max_size=120), max_size=10), st.sampled_from(SOURCES))
def test_noise_before_qualification_never_raises(
    packets: list[bytes], source: tuple[str, int]
) -> None:
    out = Recorder()
    client = ClientMachine(ClientParams(ipv4_to_int(SRV[0]), peer_capacity=16), out, FakeRandom())
    for packet in packets:
        client.receive_udp(packet, source, T)
        client.receive_tun(packet, T)
        client.receive_discovery(packet, source, T)
    client.start(T)
    for packet in packets:
        client.receive_udp(packet, source, T + 0.1)
        client.receive_tun(packet, T + 0.1)
    assert client.address is None
    assert [d for _p, d in out.udp] == [SRV]


@st.composite
def tun_packets(draw: st.DrawFn, me: bytes) -> bytes:
    dst = draw(
        st.one_of(
            st.binary(min_size=16, max_size=16),
            st.sampled_from(
                [teredo_address(PEER_MAPPING), teredo_address(("192.168.7.7", 9)), NATIVE]
            ),
            st.builds(
                lambda ip, port: teredo_address((str(ipaddress.IPv4Address(ip)), port)),
                st.integers(0, 0xFFFFFFFF),
                st.integers(0, 0xFFFF),
            ),
        )
    )
    src = draw(st.sampled_from([me, LINK_LOCAL_RESTRICTED, NATIVE]))
    return build_echo(src, dst, 1, 1, draw(st.binary(max_size=40)))


@settings(max_examples=120, deadline=None)
@given(st.data())
def test_random_tun_packets_only_reach_global_ipv4(data: st.DataObject) -> None:
    client, out, event = qualified_client(peer_capacity=8)
    now = T + 1.0
    for _ in range(data.draw(st.integers(1, 20))):
        client.receive_tun(data.draw(tun_packets(event.address)), now)
        now += data.draw(st.floats(0.0, 3.0))
        client.handle_timer(now)
    assert_safe_destinations(out)
    stats = client.status()
    assert isinstance(stats["peers"], int)
    assert stats["peers"] <= 8
    assert isinstance(stats["queued_bytes"], int)
    assert stats["queued_bytes"] <= 8 * 1280


@settings(max_examples=50, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["rs", "drop", "jump", "server", "requalify", "refresh", "down"]),
            st.floats(0.0, 40.0),
        ),
        max_size=30,
    )
)
def test_client_and_real_server_under_random_loss_and_jumps(
    steps: list[tuple[str, float]],
) -> None:
    """The client against the real ServerMachine; datagrams delivered or lost at random, the
    clock stepped or jumped: the machine always has a deadline and ends qualified once the
    server answers again."""
    server_out: list[tuple[bytes, tuple[str, int], bool]] = []

    class ServerOut:
        def send_udp(self, payload: bytes, destination: tuple[str, int], sec: bool) -> None:
            server_out.append((payload, destination, sec))

        def send_ipv6(self, packet: bytes) -> None:
            pass

    server = ServerMachine(ServerParams(ipv4_to_int(SRV[0]), ipv4_to_int(SRV2[0])), ServerOut())
    out = Recorder()
    client = ClientMachine(ClientParams(ipv4_to_int(SRV[0]), peer_capacity=16), out, FakeRandom())
    now = T
    client.start(now)

    def exchange(deliver: bool) -> None:
        for payload, dest in out.udp:
            if deliver and dest in (SRV, SRV2):
                server.receive(payload, MAPPING, dest == SRV2, now)
        out.clear()
        for payload, _dest, sec in server_out:
            if deliver:
                client.receive_udp(payload, SRV2 if sec else SRV, now)
        server_out.clear()

    for action, dt in steps:
        deadline = client.next_deadline()
        assert deadline is not None
        if action == "jump":
            now += 1000.0 + dt
        else:
            now = min(now + dt, deadline) if dt else deadline
        client.handle_timer(now)
        # Network changes (issue 13) at any moment: the machine must keep a deadline.
        if action == "requalify":
            client.requalify("network changed", now, None)
        elif action == "refresh":
            client.refresh_now(now)
        elif action == "down":
            client.network_down("no route", now)
        exchange(action in ("rs", "server", "requalify", "refresh"))
        while client.next_event() is not None:
            pass
    # Then the server answers everything until the client settles.
    for _ in range(200):
        if client.state is ClientState.QUALIFIED:
            break
        deadline = client.next_deadline()
        assert deadline is not None
        now = max(now, deadline)
        client.handle_timer(now)
        exchange(True)
    assert client.state is ClientState.QUALIFIED
    assert client.address is not None
