"""Issue 12, hostile traffic at each running daemon of ours (the relay's own attacks are in
test_relay_hostile.py): a bounded mix of malformed, truncated, oversize, spoofed and replayed
datagrams (teredo.lab.hostile, each kind from its own forged source and checked through the core
by tests/test_lab_hostile.py), while a regular client is served; then the drop counters of
`teredo status --json` must account for every datagram sent, kind by kind, and the daemon's
resident memory must stay within its bound.

Figures (one JSON line per test, `pytest -s`) go to docs/robustness.md.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from teredo.core.counters import DropReason
from teredo.core.ipv6 import build_echo, build_rs
from teredo.lab.hostile import (
    GOOD_RS,
    SEND,
    Kind,
    client_kinds,
    relay_kinds,
    server_kinds,
    teredo,
    to_json,
)
from teredo.lab.nat import NatKind
from teredo.lab.roles import RELAY_PORT, Impl
from teredo.lab.topology import NATIVE_V6, RELAY_V4, SERVER_V4, Lab, ping_counts

from .conftest import prefix_for

pytestmark = pytest.mark.system

ATTACKER_V4 = "203.0.113.102"  # site 2: NatKind.NONE, no client of its own
RSS_BOUND_KIB = 200 * 1024  # what a server may use at all (ours idles near 40 MiB)
RSS_GROWTH_KIB = 16 * 1024  # what the attack may add (the tables are bounded; nothing is kept)


def _status(lab: Lab, host: str, role: str) -> dict[str, Any]:
    proc = lab.exec(host, [sys.executable, "-m", "teredo", "status", "--json"], timeout=20)
    docs = json.loads(proc.stdout)
    [doc] = [d for d in docs if d["role"] == role]
    assert "error" not in doc, doc
    return dict(doc)


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for {pid}")


def _popen(lab: Lab, host: str, script: str, *args: str) -> subprocess.Popen[str]:
    argv = ["ip", "netns", "exec", lab.ns(host), sys.executable, "-c", script, *args]
    return subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)


def _finish(proc: subprocess.Popen[str], timeout: float) -> str:
    """What `proc` printed, once it exits (killed after `timeout`: then "")."""
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)
        return ""
    return proc.stdout.read() if proc.stdout is not None else ""


def _delta(after: dict[str, int], before: dict[str, int]) -> dict[str, int]:
    return {k: v - before.get(k, 0) for k, v in after.items() if v != before.get(k, 0)}


def test_hostile_traffic_at_our_server(lab_factory: list[Lab]) -> None:
    lab = Lab(
        prefix_for("s"),
        [NatKind.PORT_RESTRICTED, NatKind.NONE],
        server_impl=Impl.TEREDO,
        relay_impl=None,
        client_impl=[Impl.TEREDO, None],
    )
    lab_factory.append(lab)
    lab.up()
    info = lab.wait_qualified(1, timeout=30)
    before = _status(lab, "server", "server")
    pid = int(before["pid"])
    rss_before = _rss_kib(pid)

    kinds = server_kinds(SERVER_V4, ATTACKER_V4)
    good = _popen(lab, "client2", GOOD_RS, SERVER_V4, "10", build_rs().hex())
    try:
        assert good.stdout is not None
        assert good.stdout.readline().strip() == "ready"
        sent = lab.exec(
            "client2",
            [sys.executable, "-c", SEND, SERVER_V4, "3544"],
            input_text=to_json(kinds),
            timeout=120,
        )
        answered = int(_finish(good, 30).strip())
    finally:
        _finish(good, 1)
    time.sleep(1.0)  # the last datagrams are read and counted
    after = _status(lab, "server", "server")
    rss_after = _rss_kib(pid)

    total = sum(k.count for k in kinds)
    assert int(sent.stdout.strip()) == total
    drops = _delta(after["status"]["drops"], before["status"]["drops"])
    ras = after["status"]["router_advertisements"] - before["status"]["router_advertisements"]
    expected: dict[str, int] = {}
    for k in kinds:
        if k.reason is not None:
            expected[k.reason.name.lower()] = expected.get(k.reason.name.lower(), 0) + k.count
    [replayed] = [k for k in kinds if k.reason is None]
    limited = drops.pop(DropReason.RS_RATE_LIMITED.name.lower(), 0)
    figures = {
        "daemon": "server",
        "datagrams": total,
        "kinds": len(kinds),
        "drops": drops,
        "rs_rate_limited": limited,
        "router_advertisements": ras,
        "regular_rs_answered": f"{answered}/10",
        "rss_kib": [rss_before, rss_after],
    }
    print(json.dumps(figures), flush=True)
    # Every datagram of a dropped kind is counted under its reason, and nothing else dropped.
    assert drops == expected, figures
    # The replayed RS: answered up to the per-source burst, the rest counted as limited; the
    # other RAs are the regular client's (10) and our client's refreshes (a few).
    assert limited > 0, figures
    assert replayed.count <= ras + limited <= replayed.count + 10 + 6, figures
    assert answered == 10, figures
    assert rss_after <= RSS_BOUND_KIB, figures
    assert rss_after - rss_before <= RSS_GROWTH_KIB, figures
    # Our client behind its NAT was never disturbed: still qualified at the same address.
    client = _status(lab, "client1", "client")
    assert client["status"]["state"] == "qualified", client
    assert client["status"]["address"] == str(info.address), client


def test_hostile_traffic_at_our_client(lab_factory: list[Lab]) -> None:
    """Our client behind a full-cone NAT (anyone reaches its mapping) under forged datagrams,
    fake RAs from the server's own address among them, while it pings the native host through
    our relay. It keeps its address and qualification; every datagram is counted by reason."""
    lab = Lab(
        prefix_for("c"),
        [NatKind.FULL_CONE, NatKind.NONE],
        server_impl=Impl.TEREDO,
        relay_impl=Impl.TEREDO,
        client_impl=[Impl.TEREDO, None],
    )
    lab_factory.append(lab)
    lab.up()
    info = lab.wait_qualified(1, timeout=30)
    warm = lab.ping("client1", NATIVE_V6, count=3, deadline=15)
    assert (ping_counts(warm.stdout) or (0, 0))[1] >= 1, warm.stdout
    before = _status(lab, "client1", "client")
    pid = int(before["pid"])
    rss_before = _rss_kib(pid)

    kinds = client_kinds(info.address.packed, SERVER_V4)
    sender = _popen(lab, "client2", SEND, str(info.mapped_ip), str(info.mapped_port))
    try:
        assert sender.stdin is not None
        sender.stdin.write(to_json(kinds))
        sender.stdin.close()
        ping = lab.ping("client1", NATIVE_V6, count=10, deadline=20)
        sent = _finish(sender, 120).strip()
    finally:
        _finish(sender, 1)
    time.sleep(1.0)
    after = _status(lab, "client1", "client")
    rss_after = _rss_kib(pid)

    total = sum(k.count for k in kinds)
    drops = _delta(after["status"]["drops"], before["status"]["drops"])
    expected: dict[str, int] = {}
    for k in kinds:
        assert k.reason is not None
        expected[k.reason.name.lower()] = expected.get(k.reason.name.lower(), 0) + k.count
    counts = ping_counts(ping.stdout) or (0, 0)
    figures = {
        "daemon": "client",
        "datagrams": total,
        "kinds": len(kinds),
        "drops": drops,
        "pings_answered": f"{counts[1]}/10",
        "rss_kib": [rss_before, rss_after],
    }
    print(json.dumps(figures), flush=True)
    assert sent == str(total), figures
    # Every attacking datagram under its reason, exactly; besides, the client's own kernel
    # writes an MLD report or router solicitation to the TUN now and then (`local_multicast`,
    # counted apart from received multicast since one CI run saw 81 of 80), no part of it.
    assert {r: drops.get(r, 0) for r in expected} == expected, figures
    others = {r: n for r, n in drops.items() if r not in expected}
    assert set(others) <= {"local_multicast"}, figures
    assert sum(others.values()) <= 5, figures
    assert counts[1] >= 8, figures
    assert after["status"]["state"] == "qualified", after
    assert after["status"]["address"] == str(info.address), "a forged RA changed the address"
    assert rss_after <= RSS_BOUND_KIB, figures
    assert rss_after - rss_before <= RSS_GROWTH_KIB, figures


def test_hostile_traffic_at_our_relay_is_counted_by_reason(lab_factory: list[Lab]) -> None:
    """The per-reason accounting at our relay (its flood, hijack and reflection attacks are in
    test_relay_hostile.py): forged datagrams of every kind while our client pings the native
    host through it; no peer entry is made for any of them."""
    lab = Lab(
        prefix_for("r"),
        [NatKind.PORT_RESTRICTED, NatKind.NONE],
        server_impl=Impl.TEREDO,
        relay_impl=Impl.TEREDO,
        client_impl=[Impl.TEREDO, None],
    )
    lab_factory.append(lab)
    lab.up()
    lab.wait_qualified(1, timeout=30)
    warm = lab.ping("client1", NATIVE_V6, count=3, deadline=15)
    assert (ping_counts(warm.stdout) or (0, 0))[1] >= 1, warm.stdout
    before = _status(lab, "relay", "relay")
    pid = int(before["pid"])
    rss_before = _rss_kib(pid)

    kinds = relay_kinds(SERVER_V4)
    sender = _popen(lab, "client2", SEND, RELAY_V4, str(RELAY_PORT))
    try:
        assert sender.stdin is not None
        sender.stdin.write(to_json(kinds))
        sender.stdin.close()
        ping = lab.ping("client1", NATIVE_V6, count=10, deadline=20)
        sent = _finish(sender, 120).strip()
    finally:
        _finish(sender, 1)
    time.sleep(1.0)
    after = _status(lab, "relay", "relay")
    rss_after = _rss_kib(pid)

    total = sum(k.count for k in kinds)
    drops = _delta(after["status"]["drops"], before["status"]["drops"])
    expected: dict[str, int] = {}
    for k in kinds:
        assert k.reason is not None
        expected[k.reason.name.lower()] = expected.get(k.reason.name.lower(), 0) + k.count
    counts = ping_counts(ping.stdout) or (0, 0)
    figures = {
        "daemon": "relay",
        "datagrams": total,
        "kinds": len(kinds),
        "drops": drops,
        "pings_answered": f"{counts[1]}/10",
        "peers": [before["status"]["peers"], after["status"]["peers"]],
        "rss_kib": [rss_before, rss_after],
    }
    print(json.dumps(figures), flush=True)
    assert sent == str(total), figures
    # Every attacking datagram under its reason, exactly; besides, the relay's TUN sees the
    # lab's own background (a router solicitation or MLD report of a namespace: at most a few
    # `not_teredo_destination`), which is no part of the attack.
    assert {r: drops.get(r, 0) for r in expected} == expected, figures
    others = {r: n for r, n in drops.items() if r not in expected}
    assert set(others) <= {"not_teredo_destination"}, figures
    assert sum(others.values()) <= 5, figures
    assert counts[1] >= 8, figures
    assert after["status"]["peers"] <= before["status"]["peers"] + 1, figures
    assert rss_after <= RSS_BOUND_KIB, figures
    assert rss_after - rss_before <= RSS_GROWTH_KIB, figures


FLOOD_PEERS = 3000


def test_a_flood_of_new_peers_at_our_client(lab_factory: list[Lab]) -> None:
    """Peer-table exhaustion at the client: FLOOD_PEERS new Teredo peers, each from its own
    forged IPv4:port with a Teredo source embedding it (so it passes the mapping check and is
    a valid direct peer), while the client pings the native host through our relay. The
    relay stays trusted and used (pings answered), the table within its capacity, memory
    within its bound."""
    lab = Lab(
        prefix_for("p"),
        [NatKind.FULL_CONE, NatKind.NONE],
        server_impl=Impl.TEREDO,
        relay_impl=Impl.TEREDO,
        client_impl=[Impl.TEREDO, None],
    )
    lab_factory.append(lab)
    lab.up()
    info = lab.wait_qualified(1, timeout=30)
    warm = lab.ping("client1", NATIVE_V6, count=3, deadline=15)
    assert (ping_counts(warm.stdout) or (0, 0))[1] >= 1, warm.stdout
    before = _status(lab, "client1", "client")
    pid = int(before["pid"])
    rss_before = _rss_kib(pid)
    kinds = []
    for i in range(FLOOD_PEERS):
        source = (f"203.0.113.{150 + i % 100}", 20000 + i // 100)
        peer = teredo(source[0], source[1], SERVER_V4)
        packet = build_echo(peer, info.address.packed, 1, i & 0xFFFF, b"flood")
        kinds.append(Kind("new peer", source, packet, 1, None))
    sender = _popen(lab, "client2", SEND, str(info.mapped_ip), str(info.mapped_port))
    try:
        assert sender.stdin is not None
        sender.stdin.write(to_json(kinds))
        sender.stdin.close()
        ping = lab.ping("client1", NATIVE_V6, count=10, deadline=20)
        sent = _finish(sender, 120).strip()
    finally:
        _finish(sender, 1)
    time.sleep(1.0)
    after = _status(lab, "client1", "client")
    rss_after = _rss_kib(pid)
    counts = ping_counts(ping.stdout) or (0, 0)
    figures = {
        "daemon": "client",
        "new_peers_sent": FLOOD_PEERS,
        "peers": [before["status"]["peers"], after["status"]["peers"]],
        "capacity": after["status"].get("capacity"),
        "pings_answered": f"{counts[1]}/10",
        "rss_kib": [rss_before, rss_after],
    }
    print(json.dumps(figures), flush=True)
    assert sent == str(FLOOD_PEERS), figures
    assert counts[1] >= 8, figures
    assert after["status"]["state"] == "qualified", after
    assert after["status"]["address"] == str(info.address), after
    assert after["status"]["peers"] <= before["status"]["peers"] + FLOOD_PEERS, figures
    assert rss_after <= RSS_BOUND_KIB, figures
    assert rss_after - rss_before <= RSS_GROWTH_KIB, figures
