"""`teredo status` in the lab: each namespace's daemons answer on their control sockets.

One lab: our server, our relay, and two clients behind port-restricted NATs (ours, Miredo's).
`ip netns exec NS teredo status` shows the daemons of NS only (abstract socket names belong to
the network namespace, so the two namespaces' `teredo/client/teredo` never collide).
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest

from teredo.lab.nat import NatKind
from teredo.lab.roles import Impl
from teredo.lab.topology import SERVER_V4, Lab, ping_counts

from .conftest import prefix_for, tear_down

pytestmark = pytest.mark.system

QUALIFY_TIMEOUT = 30.0


@pytest.fixture
def lab() -> Iterator[Lab]:
    lab = Lab(
        prefix_for("h"),
        [NatKind.PORT_RESTRICTED, NatKind.PORT_RESTRICTED],
        server_impl=Impl.TEREDO,
        relay_impl=Impl.TEREDO,
        client_impl=[Impl.TEREDO, Impl.MIREDO],
    )
    try:
        lab.up()
        yield lab
    finally:
        tear_down(lab)


def status(lab: Lab, host: str, *extra: str) -> subprocess.CompletedProcess[str]:
    return lab.exec(
        host, [sys.executable, "-m", "teredo", "status", *extra], timeout=20, check=False
    )


def documents(lab: Lab, host: str) -> list[dict[str, Any]]:
    proc = status(lab, host, "--json")
    assert proc.returncode == 0, f"{host}: teredo status failed: {proc.stderr}"
    docs = json.loads(proc.stdout)
    assert isinstance(docs, list)
    return docs


def only(lab: Lab, host: str, role: str) -> dict[str, Any]:
    docs = documents(lab, host)
    assert [d["role"] for d in docs] == [role], f"{host}: {docs}"
    st = docs[0]["status"]
    assert isinstance(st, dict)
    assert "error" not in docs[0], docs[0]
    return docs[0]


def test_status_of_every_daemon_in_its_namespace(lab: Lab) -> None:
    info = lab.wait_qualified(1, timeout=QUALIFY_TIMEOUT)
    lab.wait_qualified(2, timeout=QUALIFY_TIMEOUT)

    client = only(lab, "client1", "client")
    assert client["control"] == "teredo/client/teredo"
    assert client["interface"] == "teredo"
    assert client["pid"] == next(r.pid for r in lab.procs if r.host == "client1")
    st = client["status"]
    assert st["state"] == "qualified"
    assert st["address"] == str(info.address), "status and the interface disagree"
    assert st["nat"] == "restricted"
    assert st["server"] == SERVER_V4
    assert st["mapping"] == f"{info.mapped_ip}:{info.mapped_port}"
    human = status(lab, "client1")
    assert human.returncode == 0, human.stderr
    assert "  state      qualified" in human.stdout
    assert f"  address    {info.address}" in human.stdout

    server = only(lab, "server", "server")
    assert server["control"] == "teredo/server"
    assert server["status"]["router_advertisements"] >= 1

    relay = only(lab, "relay", "relay")
    assert relay["control"] == "teredo/relay/teredo"
    assert isinstance(relay["status"]["peers"], int)
    assert relay["status"]["capacity"] >= 1

    # Miredo's namespace has no control socket of ours: a clear message, exit status 1.
    miredo = status(lab, "client2")
    assert miredo.returncode == 1
    assert "no teredo daemon found" in miredo.stderr

    # Native host -> our client goes through the relay, which then has the client as a peer.
    ping = lab.ping("native", str(info.address), count=3, deadline=15)
    counts = ping_counts(ping.stdout)
    assert counts is not None, ping.stdout
    assert counts[1] >= 2, ping.stdout
    after = only(lab, "relay", "relay")["status"]
    assert after["peers"] >= 1
    assert after["counters"]["from_teredo"] >= 2

    # `teredo lab status` has one line for each namespace running one of our daemons.
    lines = {d["host"]: d["summary"] for d in lab.status()["daemons"]}
    assert set(lines) == {"server", "relay", "client1"}, lines
    assert lines["client1"].startswith(f"client qualified {info.address} NAT restricted")
    assert lines["relay"].startswith("relay peers ")
