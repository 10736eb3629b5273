"""The lab's hostile traffic (teredo.lab.hostile), kind by kind through the core machine: each
kind is dropped for the reason the system test (tests/system/test_hostile.py) expects from the
running daemon's counters."""

from __future__ import annotations

from dataclasses import dataclass, field

from teredo.core.addr import ipv4_to_int
from teredo.core.counters import DropReason
from teredo.core.server import ServerMachine, ServerParams
from teredo.lab.hostile import server_kinds, to_json
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


def test_every_server_kind_is_dropped_for_its_reason() -> None:
    kinds = server_kinds(SERVER_V4, ATTACKER)
    assert len({k.source for k in kinds}) == len(kinds), "one source per kind"
    for kind in kinds:
        out = Sink()
        server = ServerMachine(ServerParams(ipv4_to_int(SERVER_V4), ipv4_to_int(SERVER_V4_2)), out)
        if kind.reason is DropReason.OVERSIZED:
            continue  # the driver's check (io/server_driver.py), before the machine
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
