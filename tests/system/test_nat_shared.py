"""The lab's `shared` kind, checked like the others (test_nat_kinds.py): a second client on the
local network of a port-restricted NAT. Both clients leave through the same public IPv4; the NAT
does not hairpin (a datagram to the other client's public mapping never reaches it); the local
network does carry datagrams between them (what RFC 6081 Hairpinning relies on)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from teredo.lab.nat import NatKind
from teredo.lab.topology import Lab
from teredo.lab.udpprobe import ProbeAgent, start_reflector

from .conftest import prefix_for, tear_down

pytestmark = pytest.mark.system

SERVER_A = "198.51.100.10:4000"
WAIT = 0.3


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    lab = Lab(
        prefix_for("h"),
        [NatKind.PORT_RESTRICTED, NatKind.SHARED],
        server_impl=None,
        relay_impl=None,
        client_impl=None,
    )
    lab.up()
    try:
        start_reflector(lab, "server", [SERVER_A])
        yield lab
    finally:
        tear_down(lab)


def test_two_clients_one_nat_no_hairpin(lab: Lab) -> None:
    first, second = lab.site(1), lab.site(2)
    assert second.nat_host is None
    assert second.host_site == 1
    assert first.public_ip == second.public_ip
    a = ProbeAgent(lab, first.client_host, f"{first.client_ip}:41000")
    b = ProbeAgent(lab, second.client_host, f"{second.client_ip}:41001")
    try:
        mapped_a = a.send(SERVER_A)
        mapped_b = b.send(SERVER_A)
        assert mapped_a is not None
        assert mapped_b is not None
        assert mapped_a.split(":")[0] == mapped_b.split(":")[0] == first.public_ip
        # No hairpinning: A's datagram to B's public mapping does not come back inside, even
        # once B has sent to A's public mapping too (each is a "new" flow toward the NAT).
        assert b.send(mapped_a) is None
        assert a.send(mapped_b) is None
        assert not b.recv(WAIT)
        # The local network carries them: B hears A at A's local address (ProbeAgent.send
        # waits for a reflector's answer, so the payload is just looked for on B's side).
        a.send(f"{second.client_ip}:41001")
        got = b.recv(WAIT)
        assert any(src == f"{first.client_ip}:41000" for src, _ in got), got
    finally:
        a.close()
        b.close()
