"""FRR as the routing daemon next to our servers (issue 11: "an operator's existing BIRD or FRR
set-up works the same way"): 2 servers of ours on 198.51.100.10/.11, each with FRR (zebra `ip
import-table 100`, bgpd `redistribute table 100`, bfdd) as its BGP speaker, behind the BIRD
router up4 (ECMP); one client of ours.

* up4 learns both servers' routes from FRR; the client qualifies through them;
* SIGTERM of a server: it deletes its routes, FRR withdraws them, up4 drops the path; restarted,
  the server is announced again;
* kill -9 of a server: FRR 8.4 keeps announcing it (strict xfail, the evidence in the message);
  the operator's work-around (a unit's ExecStopPost= adds the routes again, then deletes them:
  zebra hears the deletion) withdraws it.

The relays' 2001::/32 is not tried here: FRR 8.4 has no `ipv6 import-table` (lab/frr.py).
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
    """The speaker's zebra RIB (`show ip route`): the evidence when it keeps a stale route."""
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
    for prefix in PREFIXES:
        anycast.wait_paths(lab, "up4", prefix, 1, timeout=15)
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


@pytest.mark.xfail(
    strict=True,
    raises=AssertionError,
    reason="FRR 8.4 zebra keeps a route imported with `ip import-table` after the kernel "
    "flushed the source route with its device (a SIGKILLed daemon's anchor): the kernel sends "
    "no RTM_DELROUTE for IPv4 routes flushed with a device; zebra drops the route from its "
    "table-100 copy but not the T[100] route it imported, which bgpd keeps announcing "
    "(docs/scale.md, FRR)",
)
def test_kill9_withdraws_through_frr(lab: Lab) -> None:
    record = anycast.daemon_record(lab, "server2")
    assert record is not None
    assert record.alive()
    os.kill(record.pid, signal.SIGKILL)
    try:
        try:
            anycast.wait_paths(lab, "up4", f"{SERVER_V4}/32", 1, timeout=10)
        except LabError as exc:
            evidence = frr_routes(lab, "server2")
            kernel = lab.exec("server2", ["ip", "route", "show", "table", "100"]).stdout
            raise AssertionError(
                f"{exc}\nserver2's kernel table 100: {kernel!r}\nserver2's zebra:\n{evidence}"
            ) from None
    finally:
        # Whatever FRR did, a new server replaces the stale routes (same prefixes, new anchor).
        restart_server(lab, 2)


def notify_withdrawn(lab: Lab, host: str) -> None:
    """What docs/scale.md has an FRR operator's unit run after the daemon is gone whatever
    killed it (ExecStopPost=): each route added again and deleted, so that zebra is told."""
    for prefix in PREFIXES:
        for op in ("replace", "del"):
            argv = ["ip", "route", op, prefix, "dev", "lo", "table", "100", "proto", "84"]
            lab.exec(host, argv)


def test_kill9_then_the_stop_post_work_around_withdraws(lab: Lab) -> None:
    record = anycast.daemon_record(lab, "server2")
    assert record is not None
    assert record.alive()
    os.kill(record.pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while record.alive():
        assert time.monotonic() < deadline, "server2 survived SIGKILL"
        time.sleep(0.05)
    notify_withdrawn(lab, "server2")
    for prefix in PREFIXES:
        anycast.wait_paths(lab, "up4", prefix, 1, timeout=15)
        assert paths(lab, prefix) == [anycast.server_link(1)[1]]
    assert "T[100]" not in frr_routes(lab, "server2")
    restart_server(lab, 2)
