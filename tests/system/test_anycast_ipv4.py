"""The relays' anycast IPv4 (issue 11: "an anycast IPv4 Teredo-side address, where it helps
failover"): 2 relays of ours with `--anycast-ipv4 198.51.100.40`, each holding it on lo, bound
to it and announcing it with 2001::/32 (BIRD, a second BGP session over IPv4 to up6), active/
standby (relay2 prepends its AS: lab/anycast.py RELAY_ANYCAST_V4 says why not ECMP); the wan
routes the address to up6. Clients: ours and Miredo's behind port-restricted NATs.

* both relays announce both prefixes, up6 selects relay1; the relays send from the anycast
  address, and the clients' packets to it reach relay1;
* kill -9 of relay1 while the native host pings both clients, then again while the clients
  ping the native host: up6 moves both prefixes to relay2, which the clients know by the same
  address (their NATs' filters let it through), and which forwards the clients' packets
  although it never bubbled them (RelayParams.serve_unknown); the echoes lost and the longest
  round trip are in the assertion (printed with -s); restarted, relay1 is active again;
* SIGTERM of relay1 while echoes go both ways between the native host and both clients: it
  withdraws both prefixes, drains, exits; no echo lost; restarted, up6 selects it again and
  it carries both clients' traffic again.

All of it twice: with BIRD next to each relay (announcing in table 100), then with FRR (the main
table, the anycast address held as a local route on lo, not an address: lab/frr.py).
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from typing import Any

import pytest

from teredo.lab import anycast, anycast_failover
from teredo.lab.nat import NatKind
from teredo.lab.roles import Impl
from teredo.lab.topology import NATIVE_V6, TEREDO_PREFIX, Lab

from .conftest import prefix_for, received, tear_down

pytestmark = pytest.mark.system

ROUTINGS = {"bird": "4", "frr": "5"}  # routing daemon -> the lab's prefix tag
ANYCAST = f"{anycast.RELAY_ANYCAST_V4}/32"
CLIENTS = {1: Impl.TEREDO, 2: Impl.MIREDO}
QUALIFY_TIMEOUT = 30.0
MAX_OUTAGE = 5.0  # generous under load: measured in milliseconds (docs/scale.md)


def spec_of(routing: str) -> anycast.AnycastSpec:
    return anycast.AnycastSpec(relays=2, servers=0, anycast_ipv4=True, routing=routing)


@pytest.fixture(scope="module", params=list(ROUTINGS))
def lab(request: pytest.FixtureRequest) -> Iterator[Lab]:
    routing = str(request.param)
    lab = Lab(
        prefix_for(ROUTINGS[routing]),
        [NatKind.PORT_RESTRICTED] * len(CLIENTS),
        server_impl=Impl.TEREDO,
        relay_impl=None,
        client_impl=None,
    )
    try:
        anycast.up(lab, spec_of(routing), list(CLIENTS.values()))
        yield lab
    finally:
        tear_down(lab)


def spec(lab: Lab) -> anycast.AnycastSpec:
    found = anycast.load_spec(lab)
    assert found is not None
    return found


def relay_status(lab: Lab, host: str) -> dict[str, Any]:
    docs = lab.daemon_status(host)
    assert docs, f"{host}: no status\n{lab.log_tail(host)}"
    status = docs[0]["status"]
    assert isinstance(status, dict)
    return status


def address(lab: Lab, index: int) -> str:
    return str(lab.wait_qualified(index, timeout=QUALIFY_TIMEOUT).address)


def test_relays_share_the_anycast_ipv4_active_standby(lab: Lab) -> None:
    active = [anycast.relay_link_v4(1)[1]]
    assert anycast.kernel_nexthops(lab, "up6", ANYCAST) == active
    assert anycast.kernel_nexthops(lab, "up6", TEREDO_PREFIX) == [anycast.relay_link(1)[1]]
    view = anycast.router_view(lab, "up6")
    assert sorted(view["routes"][ANYCAST]) == ["relay1v4", "relay2v4"]
    for i in (1, 2):
        speaker = anycast.speaker_view(lab, f"relay{i}")
        assert speaker["announces"] == [ANYCAST, TEREDO_PREFIX]
        status = relay_status(lab, f"relay{i}")
        assert status["local"] == f"{anycast.RELAY_ANYCAST_V4}:3545"
        assert status["announce"]["prefixes"] == [TEREDO_PREFIX, ANYCAST]


@pytest.mark.parametrize("index", list(CLIENTS), ids=[i.value for i in CLIENTS.values()])
def test_clients_reach_the_relays_anycast_ipv4(lab: Lab, index: int) -> None:
    target = address(lab, index)
    before = relay_status(lab, "relay1")["counters"]["from_teredo"]
    assert received(lab.ping(f"client{index}", NATIVE_V6, count=3).stdout) == 3
    assert received(lab.ping("native", target, count=3).stdout) == 3
    # The client's packets went to the anycast address, which up6 sends to relay1.
    assert relay_status(lab, "relay1")["counters"]["from_teredo"] >= before + 3


# The clients' streams first: relay2 has then never seen a client (later, it may still hold
# the entries of the first takeover).
@pytest.mark.parametrize("direction", ["clients_to_native", "native_to_clients"])
def test_kill9_of_the_active_relay_fails_over_to_the_same_address(lab: Lab, direction: str) -> None:
    """Each direction on its own: the clients' streams alone are the case where the standby
    never bubbled them and must forward their packets all the same (serve_unknown; without
    it they stalled 30 s, until the clients' peer entries expired)."""
    targets = {index: address(lab, index) for index in CLIENTS}
    for index, target in targets.items():
        assert received(lab.ping("native", target, count=2).stdout) == 2
        assert received(lab.ping(f"client{index}", NATIVE_V6, count=2).stdout) == 2
    if direction == "native_to_clients":
        streams = [("native", t) for t in targets.values()]
    else:
        streams = [(f"client{i}", NATIVE_V6) for i in targets]
    found = anycast_failover.stop_relay_under_pings(lab, streams, signal.SIGKILL, "relay1")
    results = dict(zip(streams, found, strict=True))
    assert anycast.kernel_nexthops(lab, "up6", ANYCAST) == [anycast.relay_link_v4(2)[1]]
    lines = "\n".join(f"{s[0]} -> {s[1]}: {f.line()}" for s, f in results.items())
    print(lines)
    for failover in results.values():
        assert failover.outage_seconds < MAX_OUTAGE, lines
        assert failover.duplicates == 0, lines
    # Restarted, relay1 is the active one again (relay2 prepends its AS).
    anycast.start_relay(lab, 1, spec(lab))
    anycast.wait_without(lab, "up6", ANYCAST, anycast.relay_link_v4(2)[1], timeout=30)
    assert anycast.kernel_nexthops(lab, "up6", ANYCAST) == [anycast.relay_link_v4(1)[1]]
    assert anycast.kernel_nexthops(lab, "up6", TEREDO_PREFIX) == [anycast.relay_link(1)[1]]


# After the kill -9 cases (which end with relay1 restarted and active again): both relays up.
def test_sigterm_of_the_active_relay_drains_without_loss_then_it_takes_traffic_again(
    lab: Lab,
) -> None:
    """SIGTERM of relay1 while the native host pings both clients and both clients ping the
    native host: relay1 withdraws both prefixes, serves its drain time while up6 moves them to
    relay2, exits; no echo lost in either direction. Restarted, up6 selects it again and the
    clients' traffic goes through it again."""
    targets = {index: address(lab, index) for index in CLIENTS}
    for index, target in targets.items():
        assert received(lab.ping("native", target, count=2).stdout) == 2
        assert received(lab.ping(f"client{index}", NATIVE_V6, count=2).stdout) == 2
    record = anycast.daemon_record(lab, "relay1")
    assert record is not None
    assert record.alive()
    streams = [("native", t) for t in targets.values()]
    streams += [(f"client{i}", NATIVE_V6) for i in targets]
    found = anycast_failover.stop_relay_under_pings(
        lab, streams, signal.SIGTERM, "relay1", seconds=3.0
    )
    results = dict(zip(streams, found, strict=True))
    lines = "\n".join(f"{s[0]} -> {s[1]}: {f.line()}" for s, f in results.items())
    print(f"\n{lines}")
    for failover in results.values():
        assert failover.lost == 0, lines
        assert failover.duplicates == 0, lines
    assert anycast.kernel_nexthops(lab, "up6", ANYCAST) == [anycast.relay_link_v4(2)[1]]
    assert anycast.kernel_nexthops(lab, "up6", TEREDO_PREFIX) == [anycast.relay_link(2)[1]]
    log = anycast_failover.drained_log(record)
    assert f"withdrawn {TEREDO_PREFIX}, {ANYCAST} from routing table" in log, log
    # Restarted: announced again, up6 selects it for both prefixes, and it carries both
    # clients' traffic in both directions again.
    anycast.start_relay(lab, 1, spec(lab))
    anycast.wait_without(lab, "up6", ANYCAST, anycast.relay_link_v4(2)[1], timeout=30)
    anycast.wait_without(lab, "up6", TEREDO_PREFIX, anycast.relay_link(2)[1], timeout=30)
    assert anycast.kernel_nexthops(lab, "up6", ANYCAST) == [anycast.relay_link_v4(1)[1]]
    assert anycast.kernel_nexthops(lab, "up6", TEREDO_PREFIX) == [anycast.relay_link(1)[1]]
    assert relay_status(lab, "relay1")["announce"]["announced"] is True
    for index, target in targets.items():
        before = relay_status(lab, "relay1")["counters"]
        assert received(lab.ping("native", target, count=3).stdout) == 3
        assert received(lab.ping(f"client{index}", NATIVE_V6, count=3).stdout) == 3
        after = relay_status(lab, "relay1")["counters"]
        assert after["from_teredo"] >= before["from_teredo"] + 3, (before, after)
        assert after["to_teredo"] + after["queued"] > before["to_teredo"], (before, after)
