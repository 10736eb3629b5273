"""Each lab NAT kind is checked, not assumed: UDP probes show its mapping and filtering behaviour.

One lab (no Teredo processes) holds a client behind every kind (the RFC 6081 symmetric kinds
too); reflectors on the server host (198.51.100.10 and .11) and the relay host (198.51.100.20)
tell each probe which public address and port it came from. The third host for unsolicited
packets is the wan router (198.51.100.1).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator

import pytest

from teredo.lab.nat import NatKind
from teredo.lab.site import Site
from teredo.lab.topology import Lab
from teredo.lab.udpprobe import ProbeAgent, send_from, start_reflector

from .conftest import prefix_for, tear_down

pytestmark = pytest.mark.system

KINDS: list[NatKind] = [k for k in NatKind if k is not NatKind.SHARED]  # shared: test_nat_shared.py
SERVER_A = "198.51.100.10:4000"
SERVER_A_OTHER_PORT = "198.51.100.10:4001"
SERVER_B = "198.51.100.11:4000"  # same host, an address the client never contacted
RELAY = "198.51.100.20:4000"
THIRD = "198.51.100.1:5000"  # the wan router: neither contacted nor related
CLIENT_PORT = 40000
WAIT = 0.3  # seconds to wait for an unsolicited packet; the lab's round trip is well under 1 ms


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    lab = Lab(prefix_for("n"), KINDS, server_impl=None, relay_impl=None, client_impl=None)
    lab.up()
    try:
        start_reflector(lab, "server", [SERVER_A, SERVER_B])
        start_reflector(lab, "relay", [RELAY])
        yield lab
    finally:
        tear_down(lab)


def _site(lab: Lab, kind: NatKind) -> Site:
    return next(s for s in lab.sites if s.nat is kind)


@pytest.fixture
def probe(lab: Lab, request: pytest.FixtureRequest) -> Iterator[tuple[Site, ProbeAgent]]:
    kind: NatKind = request.param
    site = _site(lab, kind)
    # A fresh source port per test, so one test's conntrack entries never help another.
    port = CLIENT_PORT + KINDS.index(kind) * 10 + len(lab.procs)
    agent = ProbeAgent(lab, site.client_host, f"{site.client_ip}:{port}")
    try:
        yield site, agent
    finally:
        agent.close()


def _unsolicited(lab: Lab, agent: ProbeAgent, host: str, source: str, target: str) -> bool:
    """Send from `source` (in `host`) to the mapped `target`; did the client get it?"""
    send_from(lab, host, source, target)
    return any(src == source for src, _ in agent.recv(WAIT))


@pytest.mark.parametrize("probe", [NatKind.NONE], indirect=True)
def test_none_does_not_translate(lab: Lab, probe: tuple[Site, ProbeAgent]) -> None:
    site, agent = probe
    mapped = agent.send(SERVER_A)
    assert mapped is not None
    assert mapped.split(":")[0] == site.client_ip == site.public_ip
    assert mapped == agent.send(RELAY)
    # No filter: a host the client never talked to gets through.
    assert _unsolicited(lab, agent, "wan", THIRD, mapped)


@pytest.mark.parametrize("probe", [NatKind.FULL_CONE], indirect=True)
def test_full_cone(lab: Lab, probe: tuple[Site, ProbeAgent]) -> None:
    site, agent = probe
    mapped = agent.send(SERVER_A)
    assert mapped is not None
    assert mapped.split(":")[0] == site.public_ip != site.client_ip
    assert agent.send(RELAY) == mapped, "a cone NAT maps every destination to the same port"
    assert _unsolicited(lab, agent, "wan", THIRD, mapped), "a full cone admits any host"
    assert _unsolicited(lab, agent, "server", SERVER_B, mapped)


@pytest.mark.parametrize("probe", [NatKind.ADDRESS_RESTRICTED], indirect=True)
def test_address_restricted(lab: Lab, probe: tuple[Site, ProbeAgent]) -> None:
    site, agent = probe
    mapped = agent.send(SERVER_A)
    assert mapped is not None
    assert mapped.split(":")[0] == site.public_ip
    assert agent.send(RELAY) == mapped
    assert _unsolicited(lab, agent, "server", SERVER_A_OTHER_PORT, mapped), (
        "a contacted address, from another port, gets in"
    )
    assert not _unsolicited(lab, agent, "server", SERVER_B, mapped), (
        "an address never contacted is filtered"
    )
    assert not _unsolicited(lab, agent, "wan", THIRD, mapped)


@pytest.mark.parametrize("probe", [NatKind.PORT_RESTRICTED], indirect=True)
def test_port_restricted(lab: Lab, probe: tuple[Site, ProbeAgent]) -> None:
    site, agent = probe
    mapped = agent.send(SERVER_A)
    assert mapped is not None
    assert mapped.split(":")[0] == site.public_ip
    assert agent.send(RELAY) == mapped
    assert not _unsolicited(lab, agent, "server", SERVER_A_OTHER_PORT, mapped), (
        "a contacted address from another port is filtered"
    )
    assert not _unsolicited(lab, agent, "server", SERVER_B, mapped)
    # The dropped packets must not have disturbed the mapping, not even towards the address and
    # port they came from (a conntrack entry left by them would force a new port there).
    assert agent.send(SERVER_A) == mapped
    assert agent.send(RELAY) == mapped
    start_reflector(lab, "server", [SERVER_A_OTHER_PORT], lifetime=10)
    assert agent.send(SERVER_A_OTHER_PORT) == mapped


@pytest.mark.parametrize("probe", [NatKind.SYMMETRIC], indirect=True)
def test_symmetric(lab: Lab, probe: tuple[Site, ProbeAgent]) -> None:
    site, agent = probe
    to_server = agent.send(SERVER_A)
    to_relay = agent.send(RELAY)
    assert to_server is not None
    assert to_relay is not None
    assert to_server.split(":")[0] == to_relay.split(":")[0] == site.public_ip
    assert to_server != to_relay, "a symmetric NAT maps each destination to a new port"
    assert agent.send(SERVER_A) == to_server, "an existing flow keeps its mapping"
    assert to_server is not None
    assert not _unsolicited(lab, agent, "server", SERVER_A_OTHER_PORT, to_server)


def _port(mapped: str | None) -> int:
    assert mapped is not None, "no answer from the reflector"
    return int(mapped.rsplit(":", 1)[1])


@pytest.mark.parametrize("probe", [NatKind.SYMMETRIC_PORT_PRESERVING], indirect=True)
def test_symmetric_port_preserving(lab: Lab, probe: tuple[Site, ProbeAgent]) -> None:
    site, agent = probe
    local_port = int(agent.bind.rsplit(":", 1)[1])
    to_server = agent.send(SERVER_A)
    assert to_server == f"{site.public_ip}:{local_port}", "the inside port is kept"
    assert agent.send(RELAY) == to_server, "both destinations see the local port"
    assert not _unsolicited(lab, agent, "server", SERVER_A_OTHER_PORT, to_server)
    # A second inside socket on the same port (another inside address): toward the server's
    # first address the port is taken, so it gets another one; toward its second address (which
    # the first socket never contacted) the port is free, so it keeps it. One socket, two public
    # ports: the mapping depends on the destination (symmetric).
    second_ip = f"192.168.{site.index}.3"
    lab.exec(site.client_host, ["ip", "addr", "add", f"{second_ip}/24", "dev", "eth0"])
    other = ProbeAgent(lab, site.client_host, f"{second_ip}:{local_port}")
    try:
        clash = other.send(SERVER_A)
        assert clash is not None
        assert _port(clash) != local_port, "the port is taken toward the server"
        kept = other.send(SERVER_B)
        assert kept == f"{site.public_ip}:{local_port}", "free toward the second address"
    finally:
        other.close()


@pytest.mark.parametrize("probe", [NatKind.SYMMETRIC_SEQUENTIAL], indirect=True)
def test_symmetric_sequential(lab: Lab, probe: tuple[Site, ProbeAgent]) -> None:
    site, agent = probe
    to_server = agent.send(SERVER_A)
    to_server2 = agent.send(SERVER_B)
    to_relay = agent.send(RELAY)
    for mapped in (to_server, to_server2, to_relay):
        assert mapped is not None
        assert mapped.split(":")[0] == site.public_ip
    first = _port(to_server)
    assert first != int(agent.bind.rsplit(":", 1)[1]), "the inside port is not kept"
    # Each new destination: the next port (nothing else crosses this NAT meanwhile).
    assert [_port(to_server2), _port(to_relay)] == [first + 1, first + 2]
    assert agent.send(SERVER_A) == to_server, "an existing flow keeps its mapping"
    assert to_server is not None
    assert not _unsolicited(lab, agent, "server", SERVER_A_OTHER_PORT, to_server)


def _upnp(lab: Lab, site: Site, action: str, port: int) -> dict[str, object]:
    """Our UPnP client (io/upnp.py, miniupnpc) run by hand in the client's namespace."""
    out = lab.exec(
        site.client_host,
        [sys.executable, "-m", "teredo.io.upnp", action, str(port)],
        check=False,
        timeout=30,
    )
    doc: dict[str, object] = json.loads(out.stdout.strip().splitlines()[-1])
    return doc


@pytest.mark.parametrize("probe", [NatKind.SYMMETRIC_UPNP], indirect=True)
def test_symmetric_upnp(lab: Lab, probe: tuple[Site, ProbeAgent]) -> None:
    site, agent = probe
    local_port = int(agent.bind.rsplit(":", 1)[1])
    mapped = agent.send(SERVER_A)
    assert mapped == f"{site.public_ip}:{local_port}", "port-preserving, as Linux masquerade"
    assert not _unsolicited(lab, agent, "wan", THIRD, mapped), "filtered before UPnP"
    assert not _unsolicited(lab, agent, "server", SERVER_A_OTHER_PORT, mapped)
    # miniupnpd maps the port: from then on anyone gets in (a full cone for that port).
    added = _upnp(lab, site, "add", local_port)
    assert added.get("mapping") == f"{mapped} -> {site.client_ip}:{local_port}", added
    shown = _upnp(lab, site, "show", local_port)
    assert isinstance(shown.get("mapping"), list), shown
    assert _unsolicited(lab, agent, "wan", THIRD, mapped), "a UPnP mapping admits any host"
    assert _unsolicited(lab, agent, "server", SERVER_A_OTHER_PORT, mapped)
    assert agent.send(RELAY) == mapped, "outbound keeps the mapped port"
    # Removed: filtered again (THIRD's flow above still exists, so ask from a new port).
    assert _upnp(lab, site, "delete", local_port).get("deleted") is True
    assert _upnp(lab, site, "show", local_port).get("mapping") is None
    assert not _unsolicited(lab, agent, "wan", "198.51.100.1:5001", mapped)
    # Symmetric all the same: a second inside socket on that port gets another one toward the
    # server (the port is taken there), as NatKind.SYMMETRIC_PORT_PRESERVING.
    second_ip = f"192.168.{site.index}.3"
    lab.exec(site.client_host, ["ip", "addr", "add", f"{second_ip}/24", "dev", "eth0"])
    other = ProbeAgent(lab, site.client_host, f"{second_ip}:{local_port}")
    try:
        assert _port(other.send(SERVER_A)) != local_port
    finally:
        other.close()
