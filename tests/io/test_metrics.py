"""Prometheus metrics (teredo.io.metrics) scraped over loopback in the test process (no root).

Each test opens its exporter on 127.0.0.1 port 0 (a free port) and scrapes it with urllib,
then parses the answer with prometheus-client's own parser: what a Prometheus server reads.
"""

from __future__ import annotations

import asyncio
import logging
import re
import socket
import threading
import urllib.request
from collections.abc import Iterator

import pytest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample
from test_control import LoopThread, unique_name

from teredo.core.config import MetricsAddress
from teredo.core.counters import DropReason
from teredo.io.control import ControlIdentity, ControlServer
from teredo.io.loop import DaemonLoop
from teredo.io.metrics import (
    MAX_ACTIVE_SCRAPES,
    MetricsEndpoint,
    MetricsError,
    MetricsExporter,
    control_documents,
    loop_documents,
)

LOOPBACK = MetricsAddress("127.0.0.1", 0)
# Prometheus naming (https://prometheus.io/docs/practices/naming/): the application prefix,
# snake case; counters end in _total.
NAME = re.compile(r"teredo_[a-z0-9_]+|process_[a-z0-9_]+")

CLIENT_DOC: dict[str, object] = {
    "role": "client",
    "pid": 42,
    "version": "0.1.0",
    "control": "teredo/client/teredo",
    "interface": "teredo",
    "started": 1700000000.25,
    "status": {
        "state": "qualified",
        "address": "2001:0:c633:640a:8000:1234:5678:9abc",
        "nat": "restricted",
        "mapping": "203.0.113.11:34952",
        "server": "198.51.100.10",
        "refresh_interval": 27.5,
        "mtu": 1280,
        "peers": 3,
        "trusted_peers": 2,
        "probes": 1,
        "queued_bytes": 120,
        "suspends": 0,
        "slow_inputs": 0,
        "symmetric_ports_adopted": 2,
        "hairpin_peers": 0,
        "predicted_peers": 1,
        "random_ports_announced": 0,
        "upnp": {"state": "in use", "mapping": "203.0.113.11:34952", "cone": True},
        "drops": {"multicast_destination": 7, "bad_checksum": 1},
        "send_errors": {"udp": 1, "tun": 0, "discovery": 0},
        "configuration_errors": 0,
        "kernel": {"counters": {"packets_forwarded": 99}, "drops": {"bad_checksum": 4}},
    },
}


def scrape(port: int, path: str = "/metrics") -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as answer:
        assert answer.status == 200
        assert answer.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        text: str = answer.read().decode("utf-8")
        return text


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample by (name, sorted labels); also checks names and types as Prometheus would."""
    out: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in text_string_to_metric_families(text):
        assert NAME.fullmatch(family.name), family.name
        for sample in family.samples:
            assert isinstance(sample, Sample)
            if family.type == "counter":
                assert sample.name.endswith(("_total", "_created")), sample.name
            out[sample.name, tuple(sorted(sample.labels.items()))] = sample.value
    return out


class FakeDaemon:
    """What DaemonLoop needs of a daemon; records the threads status() runs in."""

    def __init__(self, status: dict[str, object] | None = None) -> None:
        self.threads: list[int] = []
        self.closed = False
        self._status = status or {}

    def summary(self) -> str:
        return "fake"

    def status(self) -> dict[str, object]:
        self.threads.append(threading.get_ident())
        return dict(self._status)

    def close(self) -> None:
        self.closed = True


@pytest.fixture
def exporters() -> Iterator[list[MetricsExporter]]:
    opened: list[MetricsExporter] = []
    try:
        yield opened
    finally:
        for exporter in opened:
            exporter.close()


def test_client_document_as_metrics(exporters: list[MetricsExporter]) -> None:
    exporter = MetricsExporter(LOOPBACK, lambda: [CLIENT_DOC])
    exporters.append(exporter)
    got = samples(scrape(exporter.port))
    assert got["teredo_status_available", ()] == 1
    info = (
        ("control", "teredo/client/teredo"),
        ("interface", "teredo"),
        ("role", "client"),
        ("version", "0.1.0"),
    )
    assert got["teredo_daemon_info", info] == 1
    assert got["teredo_start_time_seconds", ()] == 1700000000.25
    assert got["teredo_drops_total", (("reason", "multicast_destination"),)] == 7
    assert got["teredo_drops_total", (("reason", "bad_checksum"),)] == 1
    # Every reason a client can count is there from the start, at 0 (rate() sees the first).
    assert got["teredo_drops_total", (("reason", "ra_bad_nonce"),)] == 0
    assert ("teredo_drops_total", (("reason", "rs_rate_limited"),)) not in got  # a server's
    assert got["teredo_client_state", (("state", "qualified"),)] == 1
    assert got["teredo_client_state", (("state", "offline"),)] == 0
    assert got["teredo_client_qualified", ()] == 1
    assert got["teredo_peers", ()] == 3
    assert got["teredo_trusted_peers", ()] == 2
    assert got["teredo_queued_bytes", ()] == 120
    assert got["teredo_client_refresh_interval_seconds", ()] == 27.5
    assert got["teredo_send_errors_total", (("socket", "udp"),)] == 1
    assert got["teredo_configuration_errors_total", ()] == 0
    assert got["teredo_client_symmetric_ports_adopted_total", ()] == 2
    assert got["teredo_client_predicted_peers_total", ()] == 1
    assert got["teredo_client_hairpin_peers_total", ()] == 0
    assert got["teredo_client_upnp_cone", ()] == 1
    client_info = dict(k for k in next(k for n, k in got if n == "teredo_client_info"))
    assert client_info["address"] == "2001:0:c633:640a:8000:1234:5678:9abc"
    assert client_info["nat"] == "restricted"
    # The kernel data path's counters, through the "kernel" hook.
    assert got["teredo_kernel_packets_forwarded_total", ()] == 99
    assert got["teredo_kernel_drops_total", (("reason", "bad_checksum"),)] == 4
    # The process' own CPU and memory come along.
    assert got["process_resident_memory_bytes", ()] > 0


def test_relay_and_server_documents(exporters: list[MetricsExporter]) -> None:
    relay: dict[str, object] = {
        "role": "relay",
        "status": {
            "local": "198.51.100.20:3545",
            "prefix": "2001::/32",
            "host_specific": False,
            "peers": 5,
            "capacity": 1024,
            "pending_peers": 1,
            "evicted": 2,
            "refused": 0,
            "counters": {"to_teredo": 11, "from_teredo": 12, "brand_new": 1, "bad name": 3},
            "data_path_faults": 0,
            "drops": {},
        },
    }
    server = {
        "role": "server",
        "worker": 1,
        "status": {
            "router_advertisements": 4,
            "addresses": ["198.51.100.10", "198.51.100.11"],
            "datapath": "kernel",
            "kernel": {"counters": {"ra": 3, "passed": 9}, "drops": {"rs_rate_limited": 5}},
        },
    }
    relay_exporter = MetricsExporter(LOOPBACK, lambda: [relay])
    exporters.append(relay_exporter)
    got = samples(scrape(relay_exporter.port, "/"))
    assert got["teredo_relay_to_teredo_total", ()] == 11
    assert got["teredo_relay_from_teredo_total", ()] == 12
    assert got["teredo_relay_brand_new_total", ()] == 1  # a counter added later appears too
    assert not [name for name, _ in got if "bad" in name and "name" in name]
    assert got["teredo_peer_capacity", ()] == 1024
    assert got["teredo_relay_peers_evicted_total", ()] == 2
    assert got["teredo_drops_total", (("reason", "queue_full"),)] == 0

    server2 = {**server, "worker": 2, "status": {"router_advertisements": 6}}
    server_exporter = MetricsExporter(LOOPBACK, lambda: [server, server2])
    exporters.append(server_exporter)
    got = samples(scrape(server_exporter.port))
    assert got["teredo_server_router_advertisements_total", (("worker", "1"),)] == 4
    assert got["teredo_server_router_advertisements_total", (("worker", "2"),)] == 6
    assert got["teredo_drops_total", (("reason", "rs_rate_limited"), ("worker", "2"))] == 0
    # The server's XDP program (io/kserver.py), through the "kernel" hook.
    assert got["teredo_kernel_ra_total", (("worker", "1"),)] == 3
    assert got["teredo_kernel_passed_total", (("worker", "1"),)] == 9
    assert got["teredo_kernel_drops_total", (("reason", "rs_rate_limited"), ("worker", "1"))] == 5


def test_unreadable_status_is_a_gauge_not_an_error(exporters: list[MetricsExporter]) -> None:
    def failing() -> list[dict[str, object]]:
        raise TimeoutError("no status within 2 s")

    exporter = MetricsExporter(LOOPBACK, failing)
    exporters.append(exporter)
    got = samples(scrape(exporter.port))
    assert got["teredo_status_available", ()] == 0
    assert not [name for name, _ in got if name.startswith("teredo_drops")]


def test_address_in_use_is_one_clear_error(exporters: list[MetricsExporter]) -> None:
    exporter = MetricsExporter(LOOPBACK, list)
    exporters.append(exporter)
    with pytest.raises(MetricsError, match=rf"metrics on 127\.0\.0\.1:{exporter.port}: .*in use"):
        MetricsExporter(MetricsAddress("127.0.0.1", exporter.port), list)


def test_ipv6_loopback(exporters: list[MetricsExporter]) -> None:
    exporter = MetricsExporter(MetricsAddress("::1", 0), lambda: [CLIENT_DOC])
    exporters.append(exporter)
    with urllib.request.urlopen(f"http://[::1]:{exporter.port}/metrics", timeout=10) as answer:
        assert b"teredo_client_qualified 1.0" in answer.read()


def test_idle_scrapers_cannot_take_more_than_their_share(exporters: list[MetricsExporter]) -> None:
    exporter = MetricsExporter(LOOPBACK, lambda: [CLIENT_DOC])
    exporters.append(exporter)
    idle = [
        socket.create_connection(("127.0.0.1", exporter.port)) for _ in range(MAX_ACTIVE_SCRAPES)
    ]
    try:
        # Each idle connection holds one of the slots (its thread waits for a request line);
        # one more connection is closed at once, unanswered.
        extra = socket.create_connection(("127.0.0.1", exporter.port), timeout=10)
        with extra:
            extra.sendall(b"GET /metrics HTTP/1.0\r\n\r\n")
            assert extra.recv(100) == b""
    finally:
        for sock in idle:
            sock.close()
    # Their slots come back as soon as they hang up.
    for _ in range(50):
        try:
            text = scrape(exporter.port)
            break
        except OSError:
            threading.Event().wait(0.1)
    else:
        pytest.fail("no scrape answered after the idle connections closed")
    assert "teredo_client_qualified 1.0" in text


def test_daemon_status_is_read_in_the_loop_thread(exporters: list[MetricsExporter]) -> None:
    loop = DaemonLoop()
    daemon = FakeDaemon({"state": "qualifying", "peers": 0})
    runner = threading.Thread(target=loop.loop.run_forever, daemon=True)
    runner.start()
    try:
        identity = ControlIdentity("teredo/client/teredo", "client", "teredo")
        endpoint = MetricsEndpoint(LOOPBACK, identity)
        exporter = loop.start_metrics(endpoint, daemon)
        exporters.append(exporter)
        got = samples(scrape(exporter.port))
    finally:
        loop.loop.call_soon_threadsafe(loop.loop.stop)
        runner.join(5)
        loop.close()
    assert daemon.threads == [runner.ident], "status() must run in the daemon's loop thread"
    assert got["teredo_client_state", (("state", "qualifying"),)] == 1
    assert got["teredo_client_qualified", ()] == 0


def test_stopped_loop_times_out() -> None:
    loop = asyncio.new_event_loop()
    try:
        documents = loop_documents(
            loop, ControlIdentity("x", "relay"), lambda: {"peers": 1}, timeout=0.2
        )
        with pytest.raises(TimeoutError, match="no status within"):
            documents()
    finally:
        loop.close()


def test_server_workers_through_their_status_sockets() -> None:
    base = unique_name("workers")
    thread = LoopThread()
    servers = [
        ControlServer(
            ControlIdentity(f"{base}/{i}", "server", worker=i),
            lambda i=i: {"router_advertisements": 10 + i},  # type: ignore[misc]
            thread.loop,
        )
        for i in range(2)
    ]
    for server in servers:
        assert server.start() is None
    thread.start()
    try:
        docs = control_documents(base)()
    finally:
        for server in servers:
            thread.call(server.close)
        thread.stop()
    assert sorted((d["worker"], d["status"]) for d in docs) == [
        (0, {"router_advertisements": 10}),
        (1, {"router_advertisements": 11}),
    ]


def test_drop_reason_groups_cover_every_reason() -> None:
    # Each reason belongs to a role's group (teredo.core.counters numbers them by range),
    # so every reason is exported at 0 by at least one role.
    from teredo.io.metrics import _role_reasons

    exported = {*_role_reasons("client"), *_role_reasons("server"), *_role_reasons("relay")}
    assert exported == {r.name.lower() for r in DropReason}


def test_grafana_dashboard_uses_only_exported_metrics() -> None:
    import json
    from pathlib import Path

    from teredo.io.metrics import families

    server_doc: dict[str, object] = {
        "role": "server",
        "worker": 0,
        "status": dict.fromkeys(("router_advertisements", "bubbles_forwarded"), 0)
        | {"packets_forwarded": 0, "native_forwarded": 0},
    }
    relay_doc: dict[str, object] = {
        "role": "relay",
        "status": {
            "peers": 0,
            "capacity": 1,
            "pending_peers": 0,
            "evicted": 0,
            "refused": 0,
            "data_path_faults": 0,
            "counters": {"to_teredo": 0, "from_teredo": 0, "queued": 0},
        },
    }
    exported = {"process_cpu_seconds_total", "process_resident_memory_bytes"}
    for docs in ([CLIENT_DOC], [relay_doc], [server_doc]):
        for family in families(docs):
            exported |= {sample.name for sample in family.samples}
    exported.add("teredo_status_available")
    path = Path(__file__).resolve().parents[2] / "docs" / "grafana-teredo.json"
    dashboard = json.loads(path.read_text(encoding="utf-8"))
    exprs = [target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", [])]
    assert exprs, "no query in the dashboard"
    used = {name for expr in exprs for name in re.findall(r"\b(?:teredo|process)_[a-z0-9_]+", expr)}
    used.discard("teredo_kernel_")  # the regular expression of the kernel panel
    assert used, exprs
    assert used <= exported, f"the dashboard queries unknown metrics: {sorted(used - exported)}"
    variables = dashboard["templating"]["list"]
    assert any("teredo_daemon_info" in str(v.get("query")) for v in variables)


def test_a_daemon_whose_metrics_address_is_taken_stops_with_one_error(
    caplog: pytest.LogCaptureFixture,
) -> None:
    holder = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    holder.bind(("127.0.0.1", 0))
    holder.listen(1)
    port = holder.getsockname()[1]
    daemon = FakeDaemon()
    loop = DaemonLoop()
    endpoint = MetricsEndpoint(
        MetricsAddress("127.0.0.1", port), ControlIdentity("teredo/relay/x", "relay", "x")
    )
    try:
        # A logger of its own: the "teredo" one may not propagate (configure_logging).
        log = logging.getLogger("test-metrics-serve")
        with caplog.at_level(logging.INFO, logger=log.name):
            status = loop.serve(daemon, log, lambda: None, metrics=endpoint)
    finally:
        loop.close()
        holder.close()
    assert status == 1
    assert daemon.closed, "the daemon must be closed (its interface removed)"
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors == [f"metrics on 127.0.0.1:{port}: Address already in use"]
