"""io/announce.py and the drain of io/loop.py (issue 11): the routes of `--announce-table N`
appear in table N on the daemon's own anchor interface, vanish on withdraw and with the
process even on SIGKILL; SIGTERM withdraws first, serves the drain time, then exits.

Needs root and network namespaces (one of its own per test, deleted afterwards)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from ipaddress import IPv4Address

import pytest

from teredo.io.announce import (
    ANNOUNCE_METRIC,
    ANNOUNCE_PROTO,
    Announcement,
    relay_prefixes,
    server_prefixes,
)
from teredo.io.loop import DaemonLoop

TABLE = 100


@pytest.fixture
def netns() -> Iterator[str]:
    if os.geteuid() != 0:
        pytest.fail("needs root (network namespaces, TUN, routes)", pytrace=False)
    name = f"tdt{os.getpid() % 10000}an-io"
    subprocess.run(["ip", "netns", "del", name], capture_output=True, check=False)
    subprocess.run(["ip", "netns", "add", name], check=True)
    subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)
    try:
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], capture_output=True, check=False)


def table_routes(ns: str) -> list[str]:
    """`ip route show table TABLE`, both families, one route a line."""
    lines = []
    for family in ("-4", "-6"):
        proc = subprocess.run(
            ["ip", "-n", ns, family, "route", "show", "table", str(TABLE)],
            capture_output=True,
            text=True,
            check=False,
        )
        if proc.returncode != 0:  # "FIB table does not exist": nothing announced yet
            assert "does not exist" in proc.stderr, proc.stderr
            continue
        lines += [line.strip() for line in proc.stdout.splitlines() if line.strip()]
    return lines


def wait_for(predicate: object, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not callable(predicate) or not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


def test_prefixes() -> None:
    assert [str(p) for p in relay_prefixes("2001::/32", None)] == ["2001::/32"]
    assert [str(p) for p in relay_prefixes("3ffe:831f::/32", IPv4Address("198.51.100.40"))] == [
        "3ffe:831f::/32",
        "198.51.100.40/32",
    ]
    primary, secondary = IPv4Address("198.51.100.10"), IPv4Address("198.51.100.11")
    assert [str(p) for p in server_prefixes(primary, secondary)] == [
        "198.51.100.10/32",
        "198.51.100.11/32",
    ]


_ANNOUNCER = """
import ipaddress, sys
from teredo.io.announce import Announcement, relay_prefixes
a = Announcement(100, relay_prefixes("2001::/32", ipaddress.IPv4Address("198.51.100.40")))
a.announce()
print(a.name, flush=True)
sys.stdin.readline()
a.withdraw()
print("withdrawn", flush=True)
sys.stdin.readline()
"""


def _announcer(ns: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        ["ip", "netns", "exec", ns, sys.executable, "-c", _ANNOUNCER],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )


def test_routes_in_the_table_on_the_anchor_then_withdrawn(netns: str) -> None:
    proc = _announcer(netns)
    try:
        assert proc.stdout is not None
        assert proc.stdin is not None
        anchor = proc.stdout.readline().strip()
        assert anchor == f"announce{proc.pid}"
        routes = table_routes(netns)
        assert f"198.51.100.40 dev {anchor} proto {ANNOUNCE_PROTO} scope link" in routes
        assert any(r.startswith(f"2001::/32 dev {anchor} proto {ANNOUNCE_PROTO}") for r in routes)
        # Nothing in the main table: table N is only read by the routing daemon.
        assert _prefix_routes(netns) == []
        proc.stdin.write("\n")
        proc.stdin.flush()
        assert proc.stdout.readline().strip() == "withdrawn"
        assert table_routes(netns) == []
        assert proc.poll() is None  # withdrawn while the process lives on (the drain)
    finally:
        proc.kill()
        proc.wait(timeout=10)


def test_withdraw_is_told_to_route_listeners(netns: str) -> None:
    # A routing daemon that follows netlink (FRR's zebra) must hear of every withdrawn route:
    # the kernel flushes the IPv4 routes of a deleted device silently, so withdraw deletes them.
    monitor = subprocess.Popen(
        ["ip", "-n", netns, "monitor", "route"], stdout=subprocess.PIPE, text=True
    )
    proc = _announcer(netns)
    try:
        assert proc.stdout is not None
        assert proc.stdin is not None
        proc.stdout.readline()
        proc.stdin.write("\n")
        proc.stdin.flush()
        assert proc.stdout.readline().strip() == "withdrawn"
        time.sleep(1.0)  # the monitor prints what the kernel told it
        monitor.terminate()
        out = monitor.communicate(timeout=10)[0]
        deleted = [line.strip() for line in out.splitlines() if line.startswith("Deleted")]
        assert any(d.startswith("Deleted 198.51.100.40 ") for d in deleted), deleted
        assert any(d.startswith("Deleted 2001::/32 ") for d in deleted), deleted
    finally:
        proc.kill()
        proc.wait(timeout=10)
        if monitor.poll() is None:
            monitor.kill()
            monitor.wait(timeout=10)


def test_sigkill_takes_the_routes_away(netns: str) -> None:
    proc = _announcer(netns)
    try:
        assert proc.stdout is not None
        proc.stdout.readline()
        assert len(table_routes(netns)) == 2
    finally:
        proc.kill()
        proc.wait(timeout=10)
    wait_for(lambda: table_routes(netns) == [], timeout=10)


def test_announce_failure_leaves_nothing(netns: str) -> None:
    # Table 100 is fine, but an IPv6 prefix cannot go where IPv6 is off: the error is one line
    # and the anchor is gone with it.
    script = (
        "import ipaddress\n"
        "from teredo.io.announce import Announcement, AnnounceError\n"
        "open('/proc/sys/net/ipv6/conf/default/disable_ipv6', 'w').write('1')\n"
        "a = Announcement(100, [ipaddress.IPv6Network('2001::/32')])\n"
        "try:\n    a.announce()\nexcept AnnounceError as e:\n    print('error', e)\n"
        "import subprocess\n"
        "print(subprocess.run(['ip', '-o', 'link'], capture_output=True, text=True).stdout)\n"
    )
    out = subprocess.run(
        ["ip", "netns", "exec", netns, sys.executable, "-c", script],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    ).stdout
    assert out.startswith("error announce in table 100 on announce"), out
    assert "announce" not in out.split("\n", 1)[1]


def test_sigterm_drains_then_stops() -> None:
    loop = DaemonLoop()
    events: list[str] = []

    def drain() -> float:
        events.append("withdrawn")
        loop.loop.call_later(0.1, events.append, "served during the drain")
        return 0.5

    loop.set_drain(drain)
    loop.loop.call_soon(os.kill, os.getpid(), signal.SIGTERM)
    loop.loop.call_later(30.0, loop.stop, 1)  # bound: never hang the suite
    try:
        assert loop.run() == 0
    finally:
        loop.close()
    assert events == ["withdrawn", "served during the drain"]


def test_second_sigterm_stops_at_once() -> None:
    loop = DaemonLoop()
    calls: list[float] = []

    def drain() -> float:
        calls.append(time.monotonic())
        loop.loop.call_soon(os.kill, os.getpid(), signal.SIGTERM)
        return 60.0

    loop.set_drain(drain)
    loop.loop.call_soon(os.kill, os.getpid(), signal.SIGTERM)
    loop.loop.call_later(30.0, loop.stop, 1)
    try:
        assert loop.run() == 0
    finally:
        loop.close()
    assert len(calls) == 1


def test_withdraw_twice_is_harmless() -> None:
    a = Announcement(TABLE, relay_prefixes("2001::/32", None), name="unused")
    assert not a.announced
    assert a.withdraw() is False
    assert a.status() == {
        "table": TABLE,
        "interface": "unused",
        "prefixes": ["2001::/32"],
        "announced": False,
    }


def _daemon(ns: str, *argv: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        ["ip", "netns", "exec", ns, sys.executable, "-m", "teredo", *argv, "--no-control"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def _alive(proc: subprocess.Popen[str]) -> bool:
    return proc.poll() is None


@pytest.mark.parametrize(
    "argv",
    [
        ("relay", "--interface", "tra0", "--peers", "64", "--anycast-ipv4", "198.51.100.40"),
        ("server", "--bind", "198.51.100.10"),
        ("server", "--bind", "198.51.100.10", "--workers", "2"),
    ],
    ids=["relay", "server", "server-workers"],
)
def test_daemon_announces_when_ready_withdraws_then_drains(netns: str, argv: tuple[str]) -> None:
    for address in ("198.51.100.10/32", "198.51.100.11/32"):
        subprocess.run(["ip", "-n", netns, "addr", "add", address, "dev", "lo"], check=True)
    proc = _daemon(netns, *argv, "--announce-table", str(TABLE), "--announce-drain", "2")
    try:
        wait_for(lambda: len(table_routes(netns)) == 2 or not _alive(proc))
        assert _alive(proc), proc.communicate(timeout=10)[1]
        proc.send_signal(signal.SIGTERM)
        wait_for(lambda: table_routes(netns) == [], timeout=10)
        # Withdrawn, and still serving for the drain time.
        assert _alive(proc)
        assert proc.wait(timeout=30) == 0
        log = proc.communicate(timeout=10)[1]
        assert log.index("withdrawn") < log.index("draining for 2 s") < log.index("stopping")
    finally:
        if _alive(proc):
            proc.kill()
            proc.wait(timeout=10)


def test_relay_withdraws_while_its_server_does_not_answer(netns: str) -> None:
    for address in ("198.51.100.10/32", "198.51.100.11/32", "198.51.100.30/32"):
        subprocess.run(["ip", "-n", netns, "addr", "add", address, "dev", "lo"], check=True)
    server = _daemon(netns, "server", "--bind", "198.51.100.10")
    relay = _daemon(
        netns,
        *("relay", "--interface", "trh0", "--peers", "64", "--bind-address", "198.51.100.30"),
        *("--announce-table", str(TABLE), "--announce-drain", "0"),
        *("--health-server", "198.51.100.10", "--health-interval", "0.3"),
    )
    try:
        wait_for(lambda: len(table_routes(netns)) == 1 or not _alive(relay))
        assert _alive(relay), relay.communicate(timeout=10)[1]
        server.kill()
        server.wait(timeout=10)
        # 3 checks without an answer (0.3 s apart, 0.3 s each) withdraw; the relay lives on.
        wait_for(lambda: table_routes(netns) == [] or not _alive(relay))
        assert _alive(relay)
        server = _daemon(netns, "server", "--bind", "198.51.100.10")
        wait_for(lambda: len(table_routes(netns)) == 1 or not _alive(relay))
        relay.send_signal(signal.SIGTERM)
        assert relay.wait(timeout=30) == 0
        log = relay.communicate(timeout=10)[1]
        assert "Teredo server 198.51.100.10 does not answer: announcement withdrawn" in log
        assert "Teredo server 198.51.100.10 answers again: announced" in log
    finally:
        for proc in (relay, server):
            if _alive(proc):
                proc.kill()
                proc.wait(timeout=10)


def _prefix_routes(ns: str) -> list[str]:
    """The main table's routes to 2001::/32, one a line."""
    out = subprocess.run(
        ["ip", "-n", ns, "-6", "route", "show", "2001::/32"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return [line.strip() for line in out.splitlines() if line.strip()]


def test_relay_in_the_main_table_forwards_through_its_tun_and_announces_below(
    netns: str,
) -> None:
    """--announce-table 254 (FRR, docs/scale.md): the forwarding route to the TUN has protocol
    kernel (zebra ignores those) and the default metric; the announcement on the anchor has
    ANNOUNCE_METRIC, so the kernel still forwards through the TUN; SIGTERM takes the
    announcement only."""
    proc = _daemon(
        netns,
        *("relay", "--interface", "trm0", "--peers", "64"),
        *("--announce-table", "254", "--announce-drain", "2"),
    )
    try:
        wait_for(lambda: len(_prefix_routes(netns)) == 2 or not _alive(proc))
        assert _alive(proc), proc.communicate(timeout=10)[1]
        anchor = f"announce{proc.pid}"
        routes = _prefix_routes(netns)
        assert any(r.startswith("2001::/32 dev trm0 proto kernel metric 1024") for r in routes)
        assert any(
            r.startswith(f"2001::/32 dev {anchor} proto {ANNOUNCE_PROTO} metric {ANNOUNCE_METRIC}")
            for r in routes
        ), routes
        got = subprocess.run(
            ["ip", "-n", netns, "-6", "route", "get", "2001:0:c633:640a::1"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        assert " dev trm0 " in got, got
        proc.send_signal(signal.SIGTERM)
        wait_for(lambda: len(_prefix_routes(netns)) == 1, timeout=10)
        # Withdrawn while draining: the relay still forwards.
        assert _alive(proc)
        assert _prefix_routes(netns)[0].startswith("2001::/32 dev trm0 proto kernel")
        assert proc.wait(timeout=30) == 0
    finally:
        if _alive(proc):
            proc.kill()
            proc.wait(timeout=10)
