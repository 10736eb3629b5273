"""Our `teredo server` with its kernel data path (issue 8, docs/kernel.md "The server's
program"): Miredo clients qualify on RAs sent by the XDP program, an RS flood is limited in the
kernel, `--datapath user` leaves every RS to Python, `--workers 2` share one program (attached
once by the supervisor, reported by worker 0), and neither SIGTERM nor SIGKILL leaves the
program attached (the next start attaches it again)."""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from teredo.core.server import ServerLimits
from teredo.lab.nat import NatKind
from teredo.lab.roles import Role
from teredo.lab.topology import SERVER_V4, Lab

from .conftest import prefix_for, tear_down

pytestmark = pytest.mark.system

REPO = Path(__file__).resolve().parents[2]
KINDS = [NatKind.PORT_RESTRICTED, NatKind.FULL_CONE, NatKind.NONE]  # client3: the flooder
FLOODER = 3
QUALIFY_TIMEOUT = 30.0
STATUS_TIMEOUT = 20.0


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    lab = Lab(
        prefix_for("k"),
        KINDS,
        server_impl="teredo",
        relay_impl="none",
        client_impl=["miredo", "miredo", None],
    )
    try:
        lab.up()
        yield lab
    finally:
        tear_down(lab)


def server_status(lab: Lab) -> dict[str, Any]:
    """The server's status document (polled: it may still be starting)."""
    deadline = time.monotonic() + STATUS_TIMEOUT
    while True:
        docs = lab.daemon_status("server")
        if docs:
            status = docs[0].get("status")
            assert isinstance(status, dict), docs
            return status
        assert time.monotonic() < deadline, f"our server does not answer:\n{lab.log_tail('server')}"
        time.sleep(0.2)


def xdp_attached(lab: Lab) -> bool:
    """Whether the server's eth0 has an XDP program (ip -d link shows 'prog/xdp')."""
    out = lab.exec("server", ["ip", "-d", "link", "show", "dev", "eth0"]).stdout
    return "prog/xdp" in out


def wait_xdp(lab: Lab, attached: bool) -> None:
    """The kernel detaches a link when its last descriptor closes, just after the exit."""
    deadline = time.monotonic() + STATUS_TIMEOUT
    while xdp_attached(lab) != attached:
        assert time.monotonic() < deadline, f"XDP attached is not {attached}"
        time.sleep(0.1)


def requalify(lab: Lab, index: int) -> None:
    lab.stop(lab.site(index).client_host)
    lab.start(Role.CLIENT, "miredo", index)
    lab.wait_qualified(index, timeout=QUALIFY_TIMEOUT)


def restart_server(lab: Lab, *extra: str) -> None:
    lab.stop("server")
    lab.start(Role.SERVER, "teredo", extra=list(extra))


def test_miredo_clients_qualify_on_kernel_ras(lab: Lab) -> None:
    for index in (1, 2):
        lab.wait_qualified(index, timeout=QUALIFY_TIMEOUT)
    # The lab starts the clients once the server's port is bound, which is before the program
    # is attached (the sockets are opened first: a start error is then the bind's one line):
    # their first RS may have been answered in Python. Qualifying again, after the attach:
    wait_xdp(lab, True)
    before = server_status(lab)["kernel"]["counters"]["ra"]
    for index in (1, 2):
        requalify(lab, index)
    status = server_status(lab)
    assert status["datapath"] == "kernel", lab.log_tail("server")
    kernel = status["kernel"]
    # Each client's qualification: an RS at least, answered in XDP.
    assert kernel["counters"]["ra"] >= before + 2, (before, status)
    assert status["router_advertisements"] >= kernel["counters"]["ra"], status
    assert xdp_attached(lab)
    assert "data path: kernel" in lab.log_tail("server", lines=200)


def _rsflood(*args: str) -> list[str]:
    return ["env", f"PYTHONPATH={REPO}", sys.executable, "-m", "bench.rsflood", *args]


def test_rs_flood_is_limited_in_the_kernel(lab: Lab) -> None:
    limits = ServerLimits()
    before = server_status(lab)["kernel"]["drops"]["rs_rate_limited"]
    count, seconds = 5000, 3.0
    out = lab.exec(
        f"client{FLOODER}",
        _rsflood(
            "--server",
            SERVER_V4,
            "--count",
            str(count),
            "--duration",
            str(seconds),
            "--rate",
            str(count / (seconds - 1)),
            "--sockets",
            "64",
            "--linger",
            "0.5",
        ),
        timeout=seconds + 30,
    ).stdout
    result = json.loads(out)
    allowed = limits.rs_ipv4_burst + limits.rs_ipv4_rate * (result["seconds"] + 1.5)
    assert limits.rs_burst <= result["received"] <= allowed, result
    status = server_status(lab)
    limited = status["kernel"]["drops"]["rs_rate_limited"] - before
    assert limited >= result["sent"] - allowed - 100, (result, status)  # a few may be lost
    assert status["drops"]["rs_rate_limited"] >= limited, status
    # A client still qualifies during and after it.
    requalify(lab, 1)


def test_user_datapath_answers_in_python(lab: Lab) -> None:
    restart_server(lab, "--datapath", "user")
    try:
        status = server_status(lab)
        assert status["datapath"] == "user", status
        assert status["kernel"] is None
        assert not xdp_attached(lab)
        requalify(lab, 2)
        status = server_status(lab)
        assert status["router_advertisements"] >= 1, status  # Python answered it
    finally:
        restart_server(lab)


def worker_statuses(lab: Lab, workers: int) -> list[dict[str, Any]]:
    """The status documents of `workers` workers, by worker index (polled while they start)."""
    deadline = time.monotonic() + STATUS_TIMEOUT
    while True:
        docs = lab.daemon_status("server") or []
        if len(docs) == workers and all(isinstance(d.get("status"), dict) for d in docs):
            return [d["status"] for d in sorted(docs, key=lambda d: int(d.get("worker", -1)))]
        assert time.monotonic() < deadline, f"{len(docs)} workers answer:\n{lab.log_tail('server')}"
        time.sleep(0.2)


def test_workers_share_one_program(lab: Lab) -> None:
    """Issue 8: with --workers 2 the XDP program is attached once, before the forks, answers
    for both workers (a Miredo client qualifies on its RAs), worker 0 alone reports its
    counters, and SIGTERM to the supervisor leaves nothing attached."""
    restart_server(lab, "--workers", "2", "--datapath", "kernel")
    try:
        statuses = worker_statuses(lab, 2)
        assert [s["datapath"] for s in statuses] == ["kernel", "kernel"], statuses
        assert statuses[0]["kernel"] is not None, statuses
        assert statuses[1]["kernel"] is None, statuses
        wait_xdp(lab, True)
        before = statuses[0]["kernel"]["counters"]["ra"]
        requalify(lab, 1)
        after = worker_statuses(lab, 2)[0]["kernel"]["counters"]["ra"]
        assert after >= before + 1, (before, after)  # answered in XDP
        os.kill(_server_pid(lab), signal.SIGTERM)
        deadline = time.monotonic() + STATUS_TIMEOUT
        while any(r.alive() for r in lab.procs if r.host == "server"):
            assert time.monotonic() < deadline, "the server does not exit"
            time.sleep(0.1)
        wait_xdp(lab, False)
    finally:
        restart_server(lab)


def _server_pid(lab: Lab) -> int:
    recs = [r for r in lab.procs if r.host == "server" and r.alive()]
    assert len(recs) == 1, recs
    return recs[0].pid


def test_sigterm_and_sigkill_leave_no_program(lab: Lab) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        assert server_status(lab)["datapath"] == "kernel", lab.log_tail("server")
        wait_xdp(lab, True)
        pid = _server_pid(lab)
        os.kill(pid, sig)
        deadline = time.monotonic() + STATUS_TIMEOUT
        while any(r.alive() for r in lab.procs if r.host == "server"):
            assert time.monotonic() < deadline, "the server does not exit"
            time.sleep(0.1)
        wait_xdp(lab, False)
        lab.start(Role.SERVER, "teredo")
        wait_xdp(lab, True)
    requalify(lab, 1)
    assert server_status(lab)["kernel"]["counters"]["ra"] >= 1
