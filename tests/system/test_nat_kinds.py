"""Each lab NAT kind is checked, not assumed: UDP probes show its mapping and filtering behaviour.

One lab (no Teredo processes) holds a client behind every kind; reflectors on the server host
(198.51.100.10 and .11) and the relay host (198.51.100.20) tell each probe which public address
and port it came from. The third host for unsolicited packets is the wan router (198.51.100.1).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from teredo.lab.nat import NatKind
from teredo.lab.topology import Lab, Site
from teredo.lab.udpprobe import ProbeAgent, send_from, start_reflector

from .conftest import prefix_for, tear_down

pytestmark = pytest.mark.system

KINDS = list(NatKind)
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
    assert not _unsolicited(lab, agent, "server", SERVER_A_OTHER_PORT, to_server)
