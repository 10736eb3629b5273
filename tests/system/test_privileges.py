"""Least privilege in the lab (issue 12): each of our daemons, started as root with --user
teredo, runs as that user with CAP_NET_ADMIN alone once set up, and still serves.

One lab: our server, our relay, our client behind a port-restricted NAT, all with `--user
teredo` (scripts/setup.sh creates the user). Checked from /proc/PID/status (Uid, Gid, CapEff,
CapPrm, CapBnd, CapAmb, NoNewPrivs), then the lab's regular traffic (qualification, native host
<-> client through the relay), the status socket answering root and the user, and the client's
hook running with the user's ids and CAP_NET_ADMIN (it still configures the interface).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from teredo.io.privileges import CAP_NET_ADMIN, PrivilegeError, resolve
from teredo.lab.nat import NatKind
from teredo.lab.roles import Impl
from teredo.lab.topology import NATIVE_V6, Lab, ping_counts

from .conftest import prefix_for, tear_down

pytestmark = pytest.mark.system

USER = "teredo"
QUALIFY_TIMEOUT = 40.0
NET_ADMIN = f"{1 << CAP_NET_ADMIN:016x}"


@pytest.fixture
def lab() -> Iterator[Lab]:
    try:
        resolve(USER)
    except PrivilegeError as err:
        pytest.fail(f"{err}: run scripts/setup.sh as root")
    lab = Lab(
        prefix_for("v"),
        [NatKind.PORT_RESTRICTED],
        server_impl=Impl.TEREDO,
        relay_impl=Impl.TEREDO,
        client_impl=Impl.TEREDO,
        user=USER,
    )
    try:
        lab.up()
        yield lab
    finally:
        tear_down(lab)


def proc_status(pid: int) -> dict[str, str]:
    out: dict[str, str] = {}
    for line in Path(f"/proc/{pid}/status").read_text(encoding="ascii").splitlines():
        key, _, value = line.partition(":")
        out[key] = value.strip()
    return out


def test_daemons_run_unprivileged_and_serve(lab: Lab) -> None:
    info = lab.wait_qualified(1, timeout=QUALIFY_TIMEOUT)
    user = resolve(USER)
    for record in lab.procs:
        st = proc_status(record.pid)
        where = f"{record.host} (pid {record.pid})"
        assert st["Uid"].split() == [str(user.uid)] * 4, f"{where}: Uid {st['Uid']}"
        assert st["Gid"].split() == [str(user.gid)] * 4, f"{where}: Gid {st['Gid']}"
        for key in ("CapEff", "CapPrm", "CapBnd", "CapAmb"):
            assert st[key] == NET_ADMIN, f"{where}: {key} {st[key]}, expected {NET_ADMIN}"
        assert st["NoNewPrivs"] == "1", where
    assert {r.host for r in lab.procs} == {"server", "relay", "client1"}

    # Traffic both ways through the relay, which became the user before serving.
    for src, dst in (("client1", NATIVE_V6), ("native", str(info.address))):
        ping = lab.ping(src, dst, count=3, deadline=15)
        counts = ping_counts(ping.stdout)
        assert counts is not None, f"{src} -> {dst}: {ping.stdout}"
        assert counts[1] >= 2, f"{src} -> {dst}: {ping.stdout}"

    # The status socket answers root and the daemons' user (SO_PEERCRED); nobody else.
    status = [sys.executable, "-m", "teredo", "status", "--json"]
    as_root = lab.exec("client1", status, timeout=20, check=False)
    assert as_root.returncode == 0, as_root.stderr
    client = json.loads(as_root.stdout)[0]["status"]
    assert client["state"] == "qualified"
    # The client loaded its kernel programs before the drop and attached them after it, with
    # CAP_NET_ADMIN alone (docs/kernel.md, "The client daemon"); the ping above went through.
    assert client["datapath"] == "kernel", client
    assert client["kernel"]["serving"] == 1, client["kernel"]
    assert client["kernel"]["encap"] > 0, client["kernel"]
    # So did the relay and the server (the relay used to load after the drop and crash).
    for host in ("relay", "server"):
        shown = lab.exec(host, status, timeout=20, check=False)
        assert shown.returncode == 0, shown.stderr
        assert json.loads(shown.stdout)[0]["status"]["datapath"] == "kernel", (host, shown.stdout)
    drop = ["setpriv", "--reuid", USER, "--regid", USER, "--clear-groups"]
    as_user = lab.exec("client1", [*drop, *status], timeout=20, check=False)
    assert as_user.returncode == 0, as_user.stderr
    other = ["setpriv", "--reuid", "nobody", "--regid", "nogroup", "--clear-groups"]
    as_other = lab.exec("client1", [*other, *status], timeout=20, check=False)
    assert as_other.returncode != 0, as_other.stdout
    assert "answers only root and its own user" in as_other.stderr, as_other


def test_client_hook_runs_as_the_user_with_net_admin(lab: Lab) -> None:
    """The hook (Miredo's client-hook environment) runs as the user with the ambient
    CAP_NET_ADMIN the drop leaves: enough for `ip` to configure the interface."""
    lab.wait_qualified(1, timeout=QUALIFY_TIMEOUT)
    lab.stop("client1")
    # Where the user can reach it (pytest's tmp_path is root's alone).
    tmp_path = Path(tempfile.mkdtemp(prefix="teredo-hook-"))
    tmp_path.chmod(0o777)
    out = tmp_path / "hook.out"
    hook = tmp_path / "hook"
    hook.write_text(
        "#!/bin/sh\n"
        f'echo "$STATE $(id -u) $(grep CapEff /proc/self/status | cut -f2)" >> {out}\n'
        '[ "$STATE" = up ] && ip -6 route replace 2001:db8:77::/48 dev "$IFACE"\n'
        "exit 0\n",
        encoding="ascii",
    )
    hook.chmod(0o755)
    record = lab.start("client", Impl.TEREDO, index=1, extra=["--hook", str(hook)])
    lab.wait_qualified(1, timeout=QUALIFY_TIMEOUT)
    user = resolve(USER)
    # The hook runs after the address is in place (netlink worker): wait for its line.
    deadline = time.monotonic() + QUALIFY_TIMEOUT
    while True:
        lines = out.read_text(encoding="ascii").splitlines() if out.exists() else []
        up = [line for line in lines if line.startswith("up ")]
        if up or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert up, f"hook never ran with STATE=up: {lines}; log: {lab.log_tail('client1')}"
    assert up[0].split()[1:] == [str(user.uid), NET_ADMIN], up
    routes = lab.exec("client1", ["ip", "-6", "route", "show", "2001:db8:77::/48"]).stdout
    assert "dev teredo" in routes, f"the hook's ip command failed: {routes!r}"
    assert proc_status(record.pid)["Uid"].split()[0] == str(user.uid)
    shutil.rmtree(tmp_path)


def test_server_workers_share_the_kernel_program_unprivileged(lab: Lab) -> None:
    """--workers 2 --user: the supervisor (which stays root to watch them) loads and attaches
    the XDP program before the forks; each worker drops to the user, and worker 0 still reads
    the program's counters and writes a reload into it through the inherited descriptors."""
    lab.stop("server")
    supervisor = lab.start("server", Impl.TEREDO, extra=["--workers", "2", "--datapath", "kernel"])
    status = [sys.executable, "-m", "teredo", "status", "--json"]
    user = resolve(USER)
    deadline = time.monotonic() + QUALIFY_TIMEOUT
    while True:
        shown = lab.exec("server", status, timeout=20, check=False)
        docs = json.loads(shown.stdout) if shown.returncode == 0 else []
        if len(docs) == 2:
            break
        assert time.monotonic() < deadline, f"workers do not answer: {lab.log_tail('server')}"
        time.sleep(0.2)
    workers = sorted(docs, key=lambda d: int(d["worker"]))
    assert [d["status"]["datapath"] for d in workers] == ["kernel", "kernel"], workers
    assert workers[0]["status"]["kernel"]["counters"]["ra"] >= 0, workers[0]
    for doc in workers:
        st = proc_status(int(doc["pid"]))
        assert st["Uid"].split() == [str(user.uid)] * 4, doc
        assert st["CapEff"] == NET_ADMIN, doc
    # A reload reaches the program from worker 0, after its drop (map writes by descriptor).
    log = Path(supervisor.log)
    os.kill(supervisor.pid, signal.SIGHUP)
    deadline = time.monotonic() + QUALIFY_TIMEOUT
    while log.read_text(encoding="utf-8").count("configuration reloaded") < 2:  # each worker
        assert time.monotonic() < deadline, log.read_text(encoding="utf-8")
        time.sleep(0.2)
    assert "Traceback" not in log.read_text(encoding="utf-8")
    lab.wait_qualified(1, timeout=QUALIFY_TIMEOUT)
