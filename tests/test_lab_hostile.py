"""The lab's hostile traffic (teredo.lab.hostile), kind by kind through the core machine: each
kind is dropped for the reason the system test (tests/system/test_hostile.py) expects from the
running daemon's counters."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from teredo.core.addr import LINK_LOCAL_RESTRICTED, TEREDO_PREFIX, ipv4_to_int, server_link_local
from teredo.core.client import ClientMachine, ClientParams, ClientState
from teredo.core.ipv6 import build_ra
from teredo.core.relay import RelayMachine, RelayParams
from teredo.core.server import MAX_DATAGRAM, ServerMachine, ServerParams
from teredo.core.wire import TeredoPacket, build_auth, build_origin, parse_payload
from teredo.lab.hostile import client_kinds, relay_kinds, server_kinds, to_json
from teredo.lab.topology import SERVER_V4, SERVER_V4_2

ATTACKER = "203.0.113.102"


@dataclass
class Sink:
    udp: list[tuple[bytes, tuple[str, int], bool]] = field(default_factory=list)
    native: list[bytes] = field(default_factory=list)

    def send_udp(self, payload: bytes, destination: tuple[str, int], from_secondary: bool) -> None:
        self.udp.append((payload, destination, from_secondary))

    def send_ipv6(self, packet: bytes) -> None:
        self.native.append(packet)


@dataclass
class Sink2:
    udp: list[tuple[bytes, tuple[str, int]]] = field(default_factory=list)
    tun: list[bytes] = field(default_factory=list)

    def send_udp(self, payload: bytes, destination: tuple[str, int]) -> None:
        self.udp.append((payload, destination))

    def send_discovery(self, payload: bytes) -> None:
        self.udp.append((payload, ("224.0.0.253", 3544)))

    def write_tun(self, packet: bytes) -> None:
        self.tun.append(packet)


def test_every_server_kind_is_dropped_for_its_reason() -> None:
    kinds = server_kinds(SERVER_V4, ATTACKER)
    assert len({k.source for k in kinds}) == len(kinds), "one source per kind"
    for listed in kinds:
        # The driver reads MAX_DATAGRAM + 1 bytes: that is what the machine gets of a longer one.
        kind = replace(listed, payload=listed.payload[: MAX_DATAGRAM + 1])
        out = Sink()
        server = ServerMachine(ServerParams(ipv4_to_int(SERVER_V4), ipv4_to_int(SERVER_V4_2)), out)
        for _ in range(kind.count):
            server.receive(kind.payload, kind.source, False, 1000.0)
        drops = server.drops.snapshot()
        if kind.reason is None:  # the replayed RS: answered up to the burst, then limited
            limited = drops.pop("rs_rate_limited", 0)
            assert drops == {}, (kind.name, drops)
            assert limited > 0, kind.name
            assert len(out.udp) + limited == kind.count, kind.name
        else:
            assert drops == {kind.reason.name.lower(): kind.count}, (kind.name, drops)
            assert out.udp == [], kind.name
        assert out.native == [], kind.name


def test_kinds_travel_as_json() -> None:
    kinds = server_kinds(SERVER_V4, ATTACKER, count=3)
    assert f'"{kinds[0].payload.hex()}"' in to_json(kinds)


def _qualified_client() -> tuple[ClientMachine, Sink2]:
    """A client qualified by answering its two RS as the lab's server would (section 5.2.1)."""
    out = Sink2()
    server = ipv4_to_int(SERVER_V4)
    counter = iter(range(1, 1 << 30))
    client = ClientMachine(ClientParams(server), out, lambda n: next(counter).to_bytes(n, "big"))
    client.start(1000.0)
    prefix = TEREDO_PREFIX + server.to_bytes(4, "big") + bytes(8)
    for i, source in enumerate([(SERVER_V4, 3544), (SERVER_V4_2, 3544)]):
        rs = parse_payload(out.udp[-1][0])
        assert isinstance(rs, TeredoPacket)
        assert rs.nonce is not None
        ra = build_ra(server_link_local(server), LINK_LOCAL_RESTRICTED, prefix)
        answer = build_auth(rs.nonce) + build_origin(ipv4_to_int("203.0.113.11"), 51000) + ra
        client.receive_udp(answer, source, 1000.05 + 0.05 * i)
    assert client.state is ClientState.QUALIFIED
    out.udp.clear()
    return client, out


def test_every_client_kind_is_dropped_for_its_reason() -> None:
    probe, _ = _qualified_client()
    assert probe.address is not None
    for kind in client_kinds(probe.address, SERVER_V4):
        client, out = _qualified_client()
        address = client.address
        for i in range(kind.count):
            client.receive_udp(kind.payload, kind.source, 1001.0 + 0.01 * i)
        assert kind.reason is not None, kind.name
        assert client.drops.snapshot() == {kind.reason.name.lower(): kind.count}, kind.name
        assert out.udp == [], kind.name
        assert out.tun == [], kind.name
        assert client.state is ClientState.QUALIFIED, kind.name
        assert client.address == address, kind.name


@dataclass
class Sink3:
    udp: list[tuple[bytes, tuple[str, int]]] = field(default_factory=list)
    tun: list[bytes] = field(default_factory=list)

    def send_udp(self, payload: bytes | memoryview, destination: tuple[str, int]) -> None:
        self.udp.append((bytes(payload), destination))

    def write_tun(self, packet: bytes | memoryview) -> None:
        self.tun.append(bytes(packet))


def test_every_relay_kind_is_dropped_for_its_reason() -> None:
    for kind in relay_kinds(SERVER_V4):
        out = Sink3()
        relay = RelayMachine(RelayParams(peers=64), out, bytes(range(32)), 1000.0)
        for i in range(kind.count):
            relay.receive_udp(kind.payload, kind.source, 1000.0 + 0.01 * i)
        assert kind.reason is not None
        assert relay.drops.snapshot() == {kind.reason.name.lower(): kind.count}, kind.name
        assert out.udp == [], kind.name
        assert out.tun == [], kind.name
        assert relay.peers.stats().size == 0, kind.name  # no state for any of it
