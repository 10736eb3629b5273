"""Our client against bytes Miredo 1.2.6 really sent (tests/vectors/miredo_captures.json): our RS
is Miredo's RS byte for byte, Miredo's server RA qualifies us, and where our client sits in a
Miredo client's place (same address, same mapping) it answers exactly as Miredo's did."""

from __future__ import annotations

import ipaddress
import json
from pathlib import Path
from typing import Any

import pytest
from test_client import FakeRandom, Recorder

from teredo.core.addr import TeredoAddress, ipv4_to_int
from teredo.core.client import ClientMachine, ClientParams, NatType, Qualified
from teredo.core.counters import DropReason
from teredo.core.wire import parse_payload

VECTORS = Path(__file__).resolve().parent.parent / "vectors" / "miredo_captures.json"
T0 = 500.0


def captures() -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(VECTORS.read_text())
    return doc


def packets(name: str, src: str | None = None) -> list[dict[str, Any]]:
    return [
        p for p in captures()["packets"] if p["name"] == name and (src is None or p["src"] == src)
    ]


class ScriptedRandom:
    """Hands out given values for given sizes, in order, then counter bytes."""

    def __init__(self, script: dict[int, list[bytes]]) -> None:
        self.script = {k: list(v) for k, v in script.items()}
        self.fallback = FakeRandom()

    def __call__(self, size: int) -> bytes:
        queue = self.script.get(size)
        if queue:
            return queue.pop(0)
        return self.fallback(size)


def miredo_client(name: str) -> tuple[str, int, bytes, bytes]:
    """(mapped IPv4, port, address, random flag draw) of a Miredo client of the capture."""
    topology = captures()["provenance"]["topology"]
    address = ipaddress.IPv6Address(topology["teredo_addresses"][name]).packed
    decoded = TeredoAddress.unpack(address)
    assert decoded is not None
    return (
        str(ipaddress.IPv4Address(decoded.client)),
        decoded.port,
        address,
        decoded.random_bits.to_bytes(2, "big"),
    )


def qualify_like(name: str) -> tuple[ClientMachine, Recorder, bytes]:
    """Our client where Miredo client `name` was: same nonce, mapping and random flags."""
    ipv4, port, address, flags = miredo_client(name)
    rs = next(p for p in packets("rs") if p["src"] == ipv4)
    ra = next(p for p in packets("ra") if p["dst"] == ipv4)
    nonce = bytes.fromhex(rs["payload"])[4:12]
    # Draw order: ping identifier (2), RS nonce (8), flags (2) at qualification.
    out = Recorder()
    rng = ScriptedRandom({2: [b"\x00\x01", flags], 8: [nonce]})
    client = ClientMachine(
        ClientParams(ipv4_to_int(rs["dst"]), local_address=(ipv4_to_int(ipv4), port)), out, rng
    )
    client.start(T0)
    # Our RS is the RS Miredo sent (same nonce): 61 bytes, Auth then RS from fe80::ffff:ffff:ffff.
    assert out.udp == [(bytes.fromhex(rs["payload"]), (rs["dst"], rs["dport"]))]
    client.receive_udp(bytes.fromhex(ra["payload"]), (ra["src"], ra["sport"]), T0 + 0.01)
    assert client.drops.total() == 0
    event = client.next_event()
    assert isinstance(event, Qualified)
    assert event.nat is NatType.NONE  # local address == mapping in this capture
    assert event.address == address  # the very address Miredo formed
    out.clear()
    return client, out, address


@pytest.mark.parametrize("name", ["tdc-c1", "tdc-c2"])
def test_miredo_server_ra_qualifies_us_at_miredos_address(name: str) -> None:
    client, _out, address = qualify_like(name)
    assert client.address == address
    assert client.mtu == 1280


def test_indirect_bubble_from_miredo_relay_gets_miredos_direct_bubble() -> None:
    client, out, _address = qualify_like("tdc-c1")
    [relayed] = packets("relay_bubble_with_origin")
    [answer] = packets("relay_bubble_direct")
    client.receive_udp(
        bytes.fromhex(relayed["payload"]), (relayed["src"], relayed["sport"]), T0 + 1.0
    )
    assert out.udp == [(bytes.fromhex(answer["payload"]), (answer["dst"], answer["dport"]))]
    assert client.drops.total() == 0


def test_indirect_bubble_from_miredo_client_gets_miredos_direct_bubble() -> None:
    client, out, _address = qualify_like("tdc-c2")
    [relayed] = packets("bubble_with_origin")
    [answer] = packets("bubble_direct", src=miredo_client("tdc-c2")[0])
    client.receive_udp(
        bytes.fromhex(relayed["payload"]), (relayed["src"], relayed["sport"]), T0 + 1.0
    )
    assert out.udp == [(bytes.fromhex(answer["payload"]), (answer["dst"], answer["dport"]))]


def test_miredo_peer_echo_requests_reach_our_stack() -> None:
    client, out, _address = qualify_like("tdc-c2")
    c1 = miredo_client("tdc-c1")[0]
    requests = [p for p in packets("echo_request_direct") if p["src"] == c1]
    assert requests
    for p in requests:
        client.receive_udp(bytes.fromhex(p["payload"]), (p["src"], p["sport"]), T0 + 1.0)
    # Section 5.2.3 case 3: a Teredo source sending from its own mapping is trusted.
    expected = []
    for p in requests:
        pkt = parse_payload(bytes.fromhex(p["payload"]))
        assert not isinstance(pkt, DropReason)
        expected.append(pkt.ipv6)
    assert out.tun == expected
    assert client.drops.total() == 0


def test_miredo_ping_test_has_our_shape() -> None:
    """Miredo's ping test (section 5.2.9) goes to the server with hop limit 128, as ours."""
    for p in packets("echo_request_to_server"):
        pkt = parse_payload(bytes.fromhex(p["payload"]))
        assert not isinstance(pkt, DropReason)
        assert pkt.hop_limit == 128
        assert pkt.ip6_length - 40 <= 88  # under the servers' ICMPv6 cap, as ours (24 bytes)
