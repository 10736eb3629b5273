"""RFC 6081 Hairpinning between two of our clients behind one NAT that does not hairpin (the
lab's `shared` kind, checked by test_nat_shared.py), local discovery off so that only the
extension can help: they reach each other over their local network through Alternate Address
trailers, whichever starts, with Miredo's server and with ours between them."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from teredo.lab.nat import NatKind
from teredo.lab.roles import Impl, Role
from teredo.lab.topology import Lab

from .conftest import prefix_for, received, tear_down

pytestmark = pytest.mark.system

QUALIFY_TIMEOUT = 40.0


@pytest.fixture(scope="module", params=[Impl.MIREDO, Impl.TEREDO], ids=["miredo", "teredo"])
def lab(request: pytest.FixtureRequest) -> Iterator[Lab]:
    impl: Impl = request.param
    lab = Lab(
        prefix_for("q" if impl is Impl.MIREDO else "r"),
        [NatKind.PORT_RESTRICTED, NatKind.SHARED, NatKind.PORT_RESTRICTED, NatKind.SHARED],
        server_impl=impl,
        relay_impl=impl,
        client_impl=None,
    )
    try:
        lab.up()
        for index in (1, 2, 3, 4):
            lab.start(Role.CLIENT, Impl.TEREDO, index, extra=["--no-local-discovery"])
        yield lab
    finally:
        tear_down(lab)


@pytest.mark.parametrize("pair", [(1, 2), (4, 3)], ids=["first-starts", "second-starts"])
def test_two_clients_behind_one_nat_reach_each_other(lab: Lab, pair: tuple[int, int]) -> None:
    a, b = pair
    info_a = lab.wait_qualified(a, timeout=QUALIFY_TIMEOUT)
    info_b = lab.wait_qualified(b, timeout=QUALIFY_TIMEOUT)
    assert info_a.mapped_ip == info_b.mapped_ip  # one NAT, one public IPv4
    out = lab.ping(lab.site(a).client_host, str(info_b.address), count=5, deadline=20)
    assert received(out.stdout) >= 2, out.stdout
    back = lab.ping(lab.site(b).client_host, str(info_a.address), count=3, deadline=10)
    assert received(back.stdout) >= 2, back.stdout
    for index in (a, b):
        docs = lab.daemon_status(lab.site(index).client_host) or []
        assert docs, f"client {index}: no status"
        assert docs[0]["status"]["hairpin_peers"] >= 1, docs[0]["status"]
