"""Our `teredo server` with Miredo clients and Miredo's relay, in one lab.

Clients sit behind each cone-type NAT (none, full-cone, address-restricted, port-restricted) and
one more port-restricted NAT; a sixth host without NAT is the flooder (no Teredo client there).
The server runs with its default limits (docs/server.md), as `teredo lab` starts it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from teredo.core.server import ServerLimits
from teredo.lab import watch
from teredo.lab.nat import NatKind
from teredo.lab.roles import Role
from teredo.lab.teredoaddr import TeredoInfo
from teredo.lab.topology import NATIVE_V6, SERVER_V4, Lab

from .conftest import prefix_for, received, tear_down

pytestmark = pytest.mark.system

REPO = Path(__file__).resolve().parents[2]
KINDS = [
    NatKind.NONE,
    NatKind.FULL_CONE,
    NatKind.ADDRESS_RESTRICTED,
    NatKind.PORT_RESTRICTED,
    NatKind.PORT_RESTRICTED,
    NatKind.NONE,  # client6: the flooder
]
FLOODER = 6
QUALIFY_TIMEOUT = 30.0
FLOOD_COUNT = 20_000
FLOOD_SECONDS = 5.0
FLOOD_LINGER = 0.5


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    lab = Lab(
        prefix_for("s"),
        KINDS,
        server_impl="teredo",
        relay_impl="miredo",
        client_impl=["miredo"] * 5 + [None],
    )
    try:
        lab.up()
        watch.install(lab)
        yield lab
    finally:
        tear_down(lab)


def _server_alive(lab: Lab) -> None:
    recs = [r for r in lab.procs if r.host == "server"]
    assert recs, "no server process recorded"
    assert all(r.alive() for r in recs), f"our server died:\n{lab.log_tail('server')}"


@pytest.mark.parametrize("index", [1, 2, 3, 4], ids=[k.value for k in KINDS[:4]])
def test_miredo_client_qualifies_through_our_server(lab: Lab, index: int) -> None:
    info = lab.wait_qualified(index, timeout=QUALIFY_TIMEOUT)
    site = lab.site(index)
    # RFC 4380 section 4: prefix, server IPv4, flags, obfuscated mapped port and IPv4.
    assert str(info.address).startswith("2001:0:c633:640a:"), info.address
    assert str(info.server) == SERVER_V4
    assert str(info.mapped_ip) == site.public_ip, "the address must embed the NAT's public IPv4"
    ports = lab.mapped_ports(index, socket_owner='"miredo"')
    assert info.mapped_port in ports, (
        f"mapped port {info.mapped_port} is not the one really in use ({sorted(ports)})"
    )
    _server_alive(lab)


def test_port_restricted_clients_ping_through_forwarded_bubbles(lab: Lab) -> None:
    a: TeredoInfo = lab.wait_qualified(4, timeout=QUALIFY_TIMEOUT)
    b: TeredoInfo = lab.wait_qualified(5, timeout=QUALIFY_TIMEOUT)
    before = watch.read(lab)
    ping = lab.ping("client4", str(b.address), count=5, deadline=15)
    after = watch.read(lab)
    assert received(ping.stdout) >= 4, ping.stdout + lab.log_tail("server")
    # RFC 4380 section 5.2.4: the indirect bubble goes through the server, the data does not.
    assert after["bubbles"] > before["bubbles"], "no bubble went through the server"
    assert after["echo"] == before["echo"], f"echo data went through the server: {after}"
    back = lab.ping("client5", str(a.address), count=3)
    assert received(back.stdout) >= 2, back.stdout
    assert watch.read(lab)["echo"] == before["echo"]


def test_miredo_client_reaches_native_host_via_our_server_and_miredo_relay(lab: Lab) -> None:
    lab.wait_qualified(2, timeout=QUALIFY_TIMEOUT)
    before = watch.read(lab)
    ping = lab.ping("client2", NATIVE_V6, count=4, deadline=15)
    after = watch.read(lab)
    assert received(ping.stdout) >= 3, ping.stdout + lab.log_tail("server")
    # RFC 4380 section 5.2.9: the first echo request to a native host is the client's ping
    # test, sent through the server, which sends it on natively (raw IPv6 socket).
    assert after["echo"] > before["echo"], "the ping test did not go through the server"
    assert after["echo"] - before["echo"] < 4, "all the echo data went through the server"


def _rsflood(*args: str) -> list[str]:
    return ["env", f"PYTHONPATH={REPO}", sys.executable, "-m", "bench.rsflood", *args]


def test_rs_flood_is_limited_and_server_stays_responsive(lab: Lab) -> None:
    limits = ServerLimits()  # what `teredo server` runs with when no flag is given
    lab.wait_qualified(1, timeout=QUALIFY_TIMEOUT)
    flood = lab.popen(
        f"client{FLOODER}",
        _rsflood(
            "--server",
            SERVER_V4,
            "--count",
            str(FLOOD_COUNT),
            "--duration",
            str(FLOOD_SECONDS),
            "--rate",
            str(FLOOD_COUNT / (FLOOD_SECONDS - 1)),
            "--sockets",
            "256",
            "--linger",
            str(FLOOD_LINGER),
        ),
        name="flooder",
        stdout=subprocess.PIPE,
    )
    try:
        # Wait (boundedly) until the flood really arrives, then probe from another host and have
        # a Miredo client qualify again from scratch while it lasts.
        start = watch.read(lab)["teredo"]
        deadline = time.monotonic() + FLOOD_SECONDS
        while watch.read(lab)["teredo"] - start < 1000 and time.monotonic() < deadline:
            time.sleep(0.05)
        probe = lab.exec(
            "client1",
            _rsflood("--server", SERVER_V4, "--count", "3", "--rate", "20", "--sockets", "1"),
            timeout=20,
        )
        lab.stop("client3")
        lab.start(Role.CLIENT, "miredo", 3)
        requalified = lab.wait_qualified(3, timeout=QUALIFY_TIMEOUT)
        out, _ = flood.communicate(timeout=FLOOD_SECONDS + 15)
    finally:
        if flood.poll() is None:
            flood.kill()
            flood.wait(timeout=5)
    assert flood.returncode == 0, out
    result = json.loads(out)
    assert result["sent"] >= FLOOD_COUNT * 0.9, result
    # Per-source-IPv4 RS limit (docs/server.md): one burst, then the rate, whatever the source
    # port (the per-socket limit is below it: the flood comes from many sockets).
    allowed = limits.rs_ipv4_burst + limits.rs_ipv4_rate * (result["seconds"] + FLOOD_LINGER + 1.0)
    assert limits.rs_burst <= result["received"] <= allowed, result
    probe_result = json.loads(probe.stdout)
    assert probe_result["received"] == 3, f"the probe from another host was not answered: {probe}"
    assert str(requalified.mapped_ip) == lab.site(3).public_ip
    _server_alive(lab)
    assert "RS_RATE_LIMITED".lower() in _server_counters(lab), lab.log_tail("server")


def _server_counters(lab: Lab) -> str:
    """The server's counters, which it logs on SIGUSR1."""
    rec = next(r for r in lab.procs if r.host == "server")
    os.kill(rec.pid, signal.SIGUSR1)
    for _ in range(50):
        tail = lab.log_tail("server", lines=5)
        if "drops" in tail and "rs_rate_limited" in tail:
            return tail
        time.sleep(0.1)
    return lab.log_tail("server", lines=5)
