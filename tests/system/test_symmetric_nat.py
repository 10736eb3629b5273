"""Our client behind each symmetric NAT kind of the lab (issue 9, RFC 6081 Symmetric NAT Support).

Two labs, one with Miredo's server and relay, one with ours: our client behind a symmetric NAT
with random ports, a port-preserving one and a sequential one. Each qualifies with the primary
server's mapping, says what it saw of the NAT in `teredo status`, and reaches the native host
through the relay in both directions (who starts: the client, then the native host).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from teredo.lab.nat import NatKind
from teredo.lab.roles import Impl
from teredo.lab.topology import NATIVE_V6, Lab

from .conftest import prefix_for, received, tear_down

pytestmark = pytest.mark.system

QUALIFY_TIMEOUT = 40.0
KINDS = [NatKind.SYMMETRIC, NatKind.SYMMETRIC_PORT_PRESERVING, NatKind.SYMMETRIC_SEQUENTIAL]
# RFC 4380's NAT type (two server addresses, one socket) and core/natbehaviour.py's ports.
EXPECTED = {
    NatKind.SYMMETRIC: ("symmetric", {"random", "sequential"}),
    # Both addresses see the local port: to RFC 4380 a port-restricted NAT.
    NatKind.SYMMETRIC_PORT_PRESERVING: ("restricted", {"port-preserving"}),
    NatKind.SYMMETRIC_SEQUENTIAL: ("symmetric", {"sequential"}),
}


@pytest.fixture(scope="module", params=[Impl.MIREDO, Impl.TEREDO], ids=["miredo", "teredo"])
def lab(request: pytest.FixtureRequest) -> Iterator[Lab]:
    impl: Impl = request.param
    lab = Lab(
        prefix_for("y" if impl is Impl.MIREDO else "z"),
        KINDS,
        server_impl=impl,
        relay_impl=impl,
        client_impl=[Impl.TEREDO] * len(KINDS),
    )
    try:
        lab.up()
        yield lab
    finally:
        tear_down(lab)


@pytest.mark.parametrize("kind", KINDS, ids=[k.value for k in KINDS])
def test_qualifies_and_reaches_native_both_ways(lab: Lab, kind: NatKind) -> None:
    index = KINDS.index(kind) + 1
    site = lab.site(index)
    info = lab.wait_qualified(index, timeout=QUALIFY_TIMEOUT)
    assert str(info.mapped_ip) == site.public_ip
    docs = lab.daemon_status(site.client_host) or []
    assert docs, f"{site.client_host}: no status"
    st = docs[0]["status"]
    nat, ports = EXPECTED[kind]
    assert st["nat"] == nat, st
    assert st["nat_behaviour"]["ports"] in ports, st
    out = lab.ping(site.client_host, NATIVE_V6, count=4, deadline=20)
    assert received(out.stdout) >= 3, out.stdout
    back = lab.ping("native", str(info.address), count=4, deadline=20)
    assert received(back.stdout) >= 3, back.stdout
