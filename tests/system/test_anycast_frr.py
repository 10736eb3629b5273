"""FRR as the routing daemon next to our relays and servers (issue 11: "an operator's existing
BIRD or FRR set-up works the same way"), in one lab: 2 relays of ours behind the BIRD router up6
(ECMP on 2001::/32) and 2 servers of ours on 198.51.100.10/.11 behind the BIRD router up4, each
announcing in the main table (`--announce-table 254`) with FRR as its BGP speaker (bgpd
`redistribute kernel route-map` of a prefix list, bfdd; a relay's session is IPv6); one client
of ours.

* up4 learns both servers' routes from FRR, up6 both relays' 2001::/32; the client qualifies
  through the servers, the native host and the client reach each other through the relays;
* SIGTERM of the relay carrying the client's traffic: it deletes its announcement (its
  forwarding route, `proto kernel`, stays while it drains), FRR withdraws it, no echo is lost;
  the lab relay host's `unreachable 2001::/32 metric 4000`, which zebra then selects, is not
  announced in its place (the route map matches our metric); restarted, it is announced again;
* kill -9 of a relay: its anchor goes, the kernel notifies the IPv6 route's deletion, FRR
  withdraws; a relay cut off without a word: FRR's BFD (over IPv6) tells up6;
* SIGTERM of a server: it deletes its routes, FRR withdraws them, up4 drops the path; restarted,
  the server is announced again; kill -9 of a server: FRR withdraws it too (with `ip
  import-table 100` it did not: lab/frr.py).

Withdrawal times are printed with `pytest -s`; docs/scale.md has the measured ones.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator

import pytest

from teredo.lab import anycast, anycast_failover, frr
from teredo.lab.nat import NatKind
from teredo.lab.roles import Impl
from teredo.lab.system import LabError
from teredo.lab.topology import NATIVE_V6, SERVER_V4, SERVER_V4_2, TEREDO_PREFIX, Lab

from .conftest import prefix_for, received, tear_down

pytestmark = pytest.mark.system

SPEC = anycast.AnycastSpec(relays=2, servers=2, routing="frr")
PREFIXES = (f"{SERVER_V4}/32", f"{SERVER_V4_2}/32")
QUALIFY_TIMEOUT = 30.0
# Generous under load: the lab measures well under a second (docs/scale.md).
MAX_OUTAGE = 5.0


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


def relay_bgp(lab: Lab, host: str) -> list[str]:
    """What the relay's bgpd has (and exports): its IPv6 unicast prefixes."""
    return frr.announced(anycast.vtysh(lab, host, "show bgp ipv6 unicast json"))


def restart_relay(lab: Lab, i: int) -> None:
    anycast.start_relay(lab, i, SPEC)
    anycast.wait_paths(lab, "up6", TEREDO_PREFIX, SPEC.relays, timeout=30)


def client_address(lab: Lab) -> str:
    return str(lab.wait_qualified(1, timeout=QUALIFY_TIMEOUT).address)


def test_router_learns_every_relay_from_frr(lab: Lab) -> None:
    relays = sorted(anycast.relay_link(i)[1] for i in range(1, SPEC.relays + 1))
    assert sorted(anycast.kernel_nexthops(lab, "up6", TEREDO_PREFIX)) == relays
    for i in range(1, SPEC.relays + 1):
        host = anycast.relay_host(i)
        speaker = anycast.speaker_view(lab, host)
        assert speaker["daemon"] == "frr"
        assert speaker["established"] == [anycast.relay_link(i)[0]]
        assert speaker["announces"] == [TEREDO_PREFIX]
        # The kernel forwards through the Teredo interface, not into the anchor.
        got = lab.exec(host, ["ip", "-6", "route", "get", "2001:0:c633:640a::1"]).stdout
        assert " dev teredo " in got, got
    lines = "\n".join(anycast.status_lines(anycast.status(lab) or {}))
    assert "relay1   frr  BGP up   announces 2001::/32" in lines, lines


def test_native_host_and_client_through_the_frr_relays(lab: Lab) -> None:
    target = client_address(lab)
    assert received(lab.ping("native", target, count=3).stdout) == 3
    assert received(lab.ping("client1", NATIVE_V6, count=3).stdout) == 3


def test_relay_sigterm_drains_through_frr_then_restart_announces(lab: Lab) -> None:
    target = client_address(lab)
    assert received(lab.ping("native", target, count=2).stdout) == 2
    victim = anycast.carrying_relay(lab, target)
    assert victim is not None
    record = anycast.daemon_record(lab, victim)
    assert record is not None
    failover = anycast_failover.stop_relay_under_ping(lab, target, signal.SIGTERM, seconds=3.0)
    print(f"\nFRR relay: {failover.line()}")  # docs/scale.md (-s)
    assert failover.relay == victim
    assert failover.lost == 0, failover.line()
    assert failover.duplicates == 0, failover.line()
    # zebra now selects the host's unreachable route (metric 4000); bgpd does not export it.
    assert relay_bgp(lab, victim) == []
    assert "unreachable" in anycast.vtysh(lab, victim, "show ipv6 route 2001::/32")
    log = anycast_failover.drained_log(record)
    assert "withdrawn 2001::/32 from routing table 254" in log
    restart_relay(lab, int(victim.removeprefix("relay")))
    assert relay_bgp(lab, victim) == [TEREDO_PREFIX]
    assert received(lab.ping("native", target, count=3).stdout) == 3


def test_relay_kill9_withdraws_through_frr(lab: Lab) -> None:
    """The anchor goes with the process; the kernel notifies the deletion of its IPv6 route
    (net.ipv6.route.skip_notify_on_dev_down is 0), zebra drops it, bgpd withdraws."""
    target = client_address(lab)
    assert received(lab.ping("native", target, count=2).stdout) == 2
    failover = anycast_failover.stop_relay_under_ping(lab, target, signal.SIGKILL, seconds=4.0)
    print(f"\nFRR relay: {failover.line()}")  # docs/scale.md (-s)
    victim = failover.relay
    assert not anycast.daemon_record(lab, victim).alive()  # type: ignore[union-attr]
    assert failover.outage_seconds < MAX_OUTAGE, failover.line()
    assert failover.duplicates == 0, failover.line()
    assert relay_bgp(lab, victim) == []
    # -c 3 -w 10: ping sends until 3 replies are in.
    assert received(lab.ping("native", target, count=3).stdout) >= 3
    restart_relay(lab, int(victim.removeprefix("relay")))


def test_relay_cut_off_is_noticed_by_frrs_bfd(lab: Lab) -> None:
    anycast.cut_relay(lab, 1)
    try:
        # BFD: 3 x 100 ms; without it the BGP hold timer (FRR: 180 s) would take much longer.
        took = anycast.wait_paths(lab, "up6", TEREDO_PREFIX, SPEC.relays - 1, timeout=20)
        print(f"\nFRR relay1 cut off: withdrawn by BFD in {took * 1000:.0f} ms")
        assert took < MAX_OUTAGE
        assert anycast.kernel_nexthops(lab, "up6", TEREDO_PREFIX) == [anycast.relay_link(2)[1]]
    finally:
        anycast.heal_relay(lab, 1)
    anycast.wait_paths(lab, "up6", TEREDO_PREFIX, SPEC.relays, timeout=30)


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
    anycast_failover.drained_log(record)
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
