"""RFC 6081 port prediction between two of our clients (issue 9): one behind the lab's
sequential-port symmetric NAT, the other behind a port-restricted NAT, each pair tried with
either side starting (a fresh pair per direction). The sequential side announces the port its
NAT gives the flow toward the peer in a Random Port trailer (core/portpredict.py); the
port-restricted side bubbles that port, which opens its NAT to it, and believes packets from a
tried port of the peer's IPv4 once. Without it these pairs never meet (docs/client.md table:
port-restricted <-> symmetric-sequential "no"). Miredo's server and relay, then ours.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from teredo.lab.nat import NatKind
from teredo.lab.roles import Impl
from teredo.lab.topology import Lab

from .conftest import prefix_for, received, tear_down

pytestmark = pytest.mark.system

QUALIFY_TIMEOUT = 40.0
# (who starts); site 2k+1 port-restricted, 2k+2 sequential.
STARTS = ["port-restricted", "sequential"]


@pytest.fixture(scope="module", params=[Impl.MIREDO, Impl.TEREDO], ids=["miredo", "teredo"])
def lab(request: pytest.FixtureRequest) -> Iterator[Lab]:
    infra: Impl = request.param
    sites = [NatKind.PORT_RESTRICTED, NatKind.SYMMETRIC_SEQUENTIAL] * len(STARTS)
    lab = Lab(
        prefix_for("i" if infra is Impl.MIREDO else "t"),
        sites,
        server_impl=infra,
        relay_impl=infra,
        client_impl=Impl.TEREDO,
    )
    try:
        lab.up()
        yield lab
    finally:
        tear_down(lab)


def _status(lab: Lab, index: int) -> dict[str, Any]:
    docs = lab.daemon_status(lab.site(index).client_host) or []
    assert docs, f"site {index}: no status"
    status: dict[str, Any] = docs[0]["status"]
    return status


@pytest.mark.parametrize("starts", STARTS)
def test_direct_between_port_restricted_and_sequential(lab: Lab, starts: str) -> None:
    k = STARTS.index(starts)
    pr_i, seq_i = 2 * k + 1, 2 * k + 2
    pr = lab.wait_qualified(pr_i, timeout=QUALIFY_TIMEOUT)
    seq = lab.wait_qualified(seq_i, timeout=QUALIFY_TIMEOUT)
    seq_status = _status(lab, seq_i)
    assert seq_status["nat"] == "symmetric"
    assert seq_status["nat_behaviour"]["ports"] == "sequential", seq_status["nat_behaviour"]
    first, dest = (pr_i, seq) if starts == "port-restricted" else (seq_i, pr)
    out = lab.ping(lab.site(first).client_host, str(dest.address), count=5, deadline=20)
    assert received(out.stdout) >= 2, out.stdout
    back_i, back_dest = (seq_i, pr) if starts == "port-restricted" else (pr_i, seq)
    back = lab.ping(lab.site(back_i).client_host, str(back_dest.address), count=3, deadline=10)
    assert received(back.stdout) >= 2, back.stdout
    # The sequential side announced its port; the port-restricted side met it there.
    assert _status(lab, seq_i)["random_ports_announced"] >= 1
    assert _status(lab, pr_i)["predicted_peers"] >= 1
