"""Prometheus metrics and systemd readiness in the lab: our server, relay and client each serve
`MetricsAddress 127.0.0.1:9544` in their own namespace, scraped there as Prometheus would.

The client runs with NOTIFY_SOCKET pointing at a datagram socket of the test (a path: the
namespaces share the file system), as in a Type=notify unit: READY=1 must come once it is
qualified, with the address in STATUS, and the interface must have that address by then.
"""

from __future__ import annotations

import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from teredo.lab.nat import NatKind
from teredo.lab.roles import Impl, Role, command, config_text
from teredo.lab.topology import RELAY_V4, SERVER_V4, Lab

from .conftest import prefix_for, tear_down

pytestmark = pytest.mark.system

METRICS = "127.0.0.1:9544"
QUALIFY_TIMEOUT = 40.0
_SCRAPE = """
import sys, urllib.request
with urllib.request.urlopen(sys.argv[1], timeout=10) as answer:
    sys.stdout.write(answer.read().decode())
"""


@pytest.fixture
def lab() -> Iterator[Lab]:
    lab = Lab(
        prefix_for("m"),
        [NatKind.PORT_RESTRICTED],
        server_impl=None,
        relay_impl=None,
        client_impl=None,
    )
    try:
        lab.up()
        yield lab
    finally:
        tear_down(lab)


def start_with_metrics(lab: Lab, role: Role, index: int | None = None) -> None:
    """Our `role` with the lab's configuration plus MetricsAddress (Lab.start's file + one
    directive)."""
    host = lab.role_host(role, index)
    conf = lab.state_dir / f"{host}.conf"
    text = config_text(role, server=SERVER_V4, relay=RELAY_V4) + f"MetricsAddress {METRICS}\n"
    conf.write_text(text, encoding="ascii")
    argv = command(role, Impl.TEREDO, conf, lab.state_dir / f"{host}.pid")
    lab.popen(host, argv, name=host, role=role.value, impl=Impl.TEREDO.value)


Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(lab: Lab, host: str) -> Samples:
    """The samples `host`'s daemon serves, scraped inside its namespace (retried while it
    starts)."""
    deadline = time.monotonic() + 20
    while True:
        done = lab.exec(
            host, [sys.executable, "-c", _SCRAPE, f"http://{METRICS}/metrics"], check=False
        )
        if done.returncode == 0:
            break
        if time.monotonic() > deadline:
            pytest.fail(f"{host}: no metrics: {done.stderr}\n{lab.log_tail(host)}")
        time.sleep(0.3)
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(done.stdout)
        for s in family.samples
    }


def label_of(
    samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str
) -> dict[str, str]:
    return dict(next(labels for n, labels in samples if n == name))


def test_every_role_serves_metrics_and_the_client_is_ready_when_qualified(
    lab: Lab, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    with notify:
        notify.bind(str(tmp_path / "notify"))
        start_with_metrics(lab, Role.SERVER)
        start_with_metrics(lab, Role.RELAY)
        monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "notify"))
        start_with_metrics(lab, Role.CLIENT, 1)
        monkeypatch.delenv("NOTIFY_SOCKET")

        notify.settimeout(QUALIFY_TIMEOUT)
        try:
            fields = notify.recv(4096).decode().split("\n")
        except TimeoutError:
            pytest.fail(f"no READY=1 from the client\n{lab.log_tail('client1')}")
        assert fields[0] == "READY=1", fields
        assert fields[1].startswith("STATUS=qualified: 2001:"), fields
        address = fields[1].split()[1].rstrip(",")
        # Ready means qualified: the interface already has the address READY=1 announced.
        info = lab.teredo_address(1)
        assert info is not None, "READY=1 before the interface has its Teredo address"
        assert str(info.address) == address

    client = scrape(lab, "client1")
    assert client["teredo_status_available", ()] == 1
    assert client["teredo_client_qualified", ()] == 1
    assert client["teredo_client_state", (("state", "qualified"),)] == 1
    assert label_of(client, "teredo_client_info")["address"] == address
    assert label_of(client, "teredo_daemon_info")["role"] == "client"

    # Native host -> client: through the relay, which counts it.
    ping = lab.ping("native", address, count=3, deadline=15)
    assert " 0 received" not in ping.stdout, ping.stdout
    relay = scrape(lab, "relay")
    assert relay["teredo_relay_from_teredo_total", ()] >= 1
    assert relay["teredo_relay_to_teredo_total", ()] >= 1
    assert relay["teredo_peers", ()] >= 1
    assert relay["teredo_drops_total", (("reason", "queue_full"),)] == 0

    server = scrape(lab, "server")
    assert server["teredo_server_router_advertisements_total", ()] >= 1
    assert label_of(server, "teredo_server_info")["primary"] == SERVER_V4
    assert server["process_resident_memory_bytes", ()] > 0
