"""`teredo probe` behind the lab's symmetric kinds (issue 9): what qualification shows of each
NAT (core/natbehaviour.py) and what our client reaches behind it, in the JSON and the table;
with `--upnp` behind the UPnP-enabled NAT, that a client with `UPnP yes` would be reachable as
behind a cone NAT (core/upnpnat.py). Miredo's server.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from typing import Any

import pytest

from teredo.lab.nat import NatKind
from teredo.lab.roles import Impl
from teredo.lab.topology import SERVER_V4, Lab

from .conftest import prefix_for, tear_down

pytestmark = pytest.mark.system

KINDS = [NatKind.SYMMETRIC_PORT_PRESERVING, NatKind.SYMMETRIC_SEQUENTIAL, NatKind.SYMMETRIC_UPNP]
# (RFC 4380's type, ports, words of the table's "!" lines)
KEPT = ("restricted", "port-preserving", "to RFC 4380 a restricted")
EXPECTED = {
    NatKind.SYMMETRIC_PORT_PRESERVING: KEPT,
    NatKind.SYMMETRIC_SEQUENTIAL: ("symmetric", "sequential", "ports predicted"),
    NatKind.SYMMETRIC_UPNP: KEPT,
}


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    lab = Lab(prefix_for("l"), KINDS, server_impl=Impl.MIREDO, relay_impl=None, client_impl=None)
    try:
        lab.up()
        yield lab
    finally:
        tear_down(lab)


def _probe(lab: Lab, index: int, *flags: str) -> tuple[str, dict[str, Any] | None]:
    argv = [sys.executable, "-m", "teredo", "probe", "--rounds", "2", "--timeout", "1", *flags]
    proc = lab.exec(lab.site(index).client_host, [*argv, SERVER_V4], check=False, timeout=40)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout, (json.loads(proc.stdout) if "--json" in flags else None)


@pytest.mark.parametrize("kind", KINDS, ids=[k.value for k in KINDS])
def test_probe_says_the_nat_kind_and_what_it_means(lab: Lab, kind: NatKind) -> None:
    index = KINDS.index(kind) + 1
    nat, ports, words = EXPECTED[kind]
    _text, doc = _probe(lab, index, "--json")
    assert doc is not None
    [live] = doc["servers"]
    behaviour = live["nat_behaviour"]
    assert (live["nat"], behaviour["ports"]) == (nat, ports), live
    if kind is NatKind.SYMMETRIC_SEQUENTIAL:
        assert behaviour["step"] == 1, behaviour  # the lab's NAT: numgen inc
    assert words in behaviour["reach"], behaviour
    table, _ = _probe(lab, index)
    assert words in table, table


def test_probe_upnp_behind_the_upnp_nat(lab: Lab) -> None:
    index = KINDS.index(NatKind.SYMMETRIC_UPNP) + 1
    _text, doc = _probe(lab, index, "--json", "--upnp")
    assert doc is not None
    assert doc["upnp"]["cone"] is True, doc["upnp"]
    table, _ = _probe(lab, index, "--upnp")
    assert "upnp: a UPnP IGD answered" in table
    assert "reachable as behind a cone NAT" in table, table


def test_probe_upnp_where_there_is_no_igd(lab: Lab) -> None:
    index = KINDS.index(NatKind.SYMMETRIC_SEQUENTIAL) + 1
    _text, doc = _probe(lab, index, "--json", "--upnp")
    assert doc is not None
    assert doc["upnp"] == {"cone": False, "text": "no UPnP IGD answered: the NAT is used as it is"}
