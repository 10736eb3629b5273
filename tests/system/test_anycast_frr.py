"""FRR as the routing daemon next to our servers (issue 11: "an operator's existing BIRD or FRR
set-up works the same way"): 2 servers of ours on 198.51.100.10/.11 announcing in the main
table (`--announce-table 254`), each with FRR (bgpd `redistribute kernel route-map` of a prefix
list of the two /32, bfdd) as its BGP speaker, behind the BIRD router up4 (ECMP); one client
of ours.

* up4 learns both servers' routes from FRR; the client qualifies through them;
* SIGTERM of a server: it deletes its routes, FRR withdraws them, up4 drops the path; restarted,
  the server is announced again;
* kill -9 of a server: FRR withdraws it too (with `ip import-table 100` it did not: lab/frr.py).

The relays' 2001::/32 is not tried here: FRR 8.4 cannot export it (lab/frr.py).
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator

import pytest

from teredo.lab import anycast
from teredo.lab.nat import NatKind
from teredo.lab.roles import Impl
from teredo.lab.system import LabError
from teredo.lab.topology import SERVER_V4, SERVER_V4_2, Lab

from .conftest import prefix_for, tear_down

pytestmark = pytest.mark.system

SPEC = anycast.AnycastSpec(relays=0, servers=2, routing="frr")
PREFIXES = (f"{SERVER_V4}/32", f"{SERVER_V4_2}/32")
QUALIFY_TIMEOUT = 30.0


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    lab = Lab(
        prefix_for("l"),
        [NatKind.PORT_RESTRICTED],
        server_impl=None,
        relay_impl=None,
        client_impl=None,
    )
    try:
        anycast.up(lab, SPEC, [Impl.TEREDO])
        yield lab
    finally:
        tear_down(lab)


def paths(lab: Lab, prefix: str) -> list[str]:
    return sorted(anycast.kernel_nexthops(lab, "up4", prefix))


def frr_routes(lab: Lab, host: str) -> str:
    """The speaker's zebra RIB (`show ip route`): the evidence if it kept a stale route."""
    return anycast.vtysh(lab, host, "show ip route")


def restart_server(lab: Lab, j: int) -> None:
    anycast.start_server(lab, j, SPEC)
    for prefix in PREFIXES:
        anycast.wait_paths(lab, "up4", prefix, SPEC.servers, timeout=30)


def test_router_learns_every_server_from_frr(lab: Lab) -> None:
    servers = [anycast.server_link(j)[1] for j in range(1, SPEC.servers + 1)]
    for prefix in PREFIXES:
        assert paths(lab, prefix) == servers
    for j in range(1, SPEC.servers + 1):
        speaker = anycast.speaker_view(lab, anycast.server_host(j))
        assert speaker["daemon"] == "frr"
        assert speaker["established"] == [anycast.server_link(j)[0]]
        assert speaker["announces"] == sorted(PREFIXES)
    lines = "\n".join(anycast.status_lines(anycast.status(lab) or {}))
    assert "server1  frr  BGP up" in lines, lines


def test_client_qualifies_through_the_frr_announced_servers(lab: Lab) -> None:
    info = lab.wait_qualified(1, timeout=QUALIFY_TIMEOUT)
    assert str(info.mapped_ip) == lab.site(1).public_ip


def test_sigterm_withdraws_through_frr_then_restart_announces(lab: Lab) -> None:
    record = anycast.daemon_record(lab, "server1")
    assert record is not None
    assert record.alive()
    os.kill(record.pid, signal.SIGTERM)
    # The server deletes its routes (RTM_DELROUTE), zebra drops the import, bgpd withdraws.
    took = max(anycast.wait_paths(lab, "up4", p, 1, timeout=15) for p in PREFIXES)
    print(f"SIGTERM of server1: withdrawn at up4 in {took:.3f} s")  # docs/scale.md (-s)
    for prefix in PREFIXES:
        assert paths(lab, prefix) == [anycast.server_link(2)[1]]
    assert "198.51.100.10/32" not in frr_routes(lab, "server1")
    # It drains (2 s) with its sockets bound, then exits: only then can a new one bind.
    deadline = time.monotonic() + 30
    while record.alive():
        assert time.monotonic() < deadline, "server1 did not stop after its drain"
        time.sleep(0.1)
    restart_server(lab, 1)
    info = lab.wait_qualified(1, timeout=QUALIFY_TIMEOUT)
    assert str(info.mapped_ip) == lab.site(1).public_ip


def test_kill9_withdraws_through_frr(lab: Lab) -> None:
    """The kernel flushes the dead anchor's routes without an RTM_DELROUTE; zebra drops the
    main table's kernel routes of a deleted interface, and bgpd withdraws them."""
    record = anycast.daemon_record(lab, "server2")
    assert record is not None
    assert record.alive()
    os.kill(record.pid, signal.SIGKILL)
    try:
        took = max(anycast.wait_paths(lab, "up4", p, 1, timeout=15) for p in PREFIXES)
        print(f"kill -9 of server2: withdrawn at up4 in {took:.3f} s")  # docs/scale.md (-s)
        for prefix in PREFIXES:
            assert paths(lab, prefix) == [anycast.server_link(1)[1]]
    except LabError as exc:
        raise AssertionError(f"{exc}\nserver2's zebra:\n{frr_routes(lab, 'server2')}") from None
    assert "198.51.100.10/32" not in frr_routes(lab, "server2")
    restart_server(lab, 2)
