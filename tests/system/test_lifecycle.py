"""The lab leaves nothing behind: `lab down` from another process, an exception, stale state."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import pytest

from teredo.lab import system
from teredo.lab.nat import NatKind
from teredo.lab.system import LabError
from teredo.lab.teardown import STATE_ROOT, cleanup
from teredo.lab.topology import Lab

from .conftest import assert_nothing_left, namespaces, prefix_for

pytestmark = pytest.mark.system


def _cli(*args: str, timeout: float = 90) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "teredo.cli.lab", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def _all_pids(lab: Lab) -> list[int]:
    """Recorded PIDs and their descendants (Miredo forks an unprivileged child)."""
    pids = []
    for rec in lab.procs:
        pids.append(rec.pid)
        pids.extend(system.descendants(rec.pid))
    return pids


def test_cli_up_status_down_from_other_processes() -> None:
    prefix = prefix_for("a")
    try:
        up = _cli("up", "--prefix", prefix, "--nat", "port-restricted", "--wait", "30")
        assert up.returncode == 0, up.stderr
        status = _cli("status", "--prefix", prefix, "--json")
        assert status.returncode == 0, status.stderr
        state = json.loads(status.stdout)
        site = state["sites"][0]
        assert site["nat"] == "port-restricted"
        assert site["teredo"] is not None
        assert site["teredo"].startswith("2001:0:")
        assert site["mapped"].startswith("203.0.113.11:")
        assert {p["name"] for p in state["procs"]} == {"server", "relay", "client1"}
        assert all(p["alive"] for p in state["procs"])
        lab = Lab.load(prefix)
        pids = _all_pids(lab)
        assert len(pids) > len(lab.procs), "Miredo's children were not found"
        assert len(namespaces(prefix)) == 6  # wan, srv, rly, v6, n1, c1
    finally:
        down = _cli("down", "--prefix", prefix)
    assert down.returncode == 0, down.stderr
    assert_nothing_left(prefix, pids)


def test_exception_inside_lab_still_cleans_up() -> None:
    prefix = prefix_for("b")
    pids: list[int] = []

    def use_lab_then_fail() -> None:
        with Lab(prefix, [NatKind.FULL_CONE]) as lab:
            lab.wait_qualified(1, timeout=30)
            lab.popen("client1", ["sleep", "60"], name="sleeper")
            pids.extend(_all_pids(lab))
            assert len(namespaces(prefix)) == 6  # wan, srv, rly, v6, n1, c1
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        use_lab_then_fail()
    assert pids
    assert_nothing_left(prefix, pids)


def test_failed_build_is_cleaned_up() -> None:
    prefix = prefix_for("c")
    lab = Lab(prefix, [NatKind.PORT_RESTRICTED], client_impl=None, relay_impl=None)
    lab.server_impl = None
    # A namespace of the prefix that `up` will try to create again only after removing stale
    # ones: so make the build fail later instead, with a NAT kind nft rejects.
    original = lab._build_site

    def broken(site: object) -> None:
        original(lab.sites[0])
        raise LabError("injected failure after the first site")

    lab._build_site = broken  # type: ignore[method-assign]
    with pytest.raises(LabError, match="injected"):
        lab.up()
    assert_nothing_left(prefix, [])


def test_up_removes_stale_lab_of_its_prefix_only() -> None:
    prefix = prefix_for("d")
    neighbour = prefix.rstrip("-") + "x-keep"  # shares the letters but not the prefix
    stale = Lab(prefix, [NatKind.NONE], server_impl=None, relay_impl=None, client_impl=None)
    fresh = Lab(prefix, [NatKind.NONE], server_impl=None, relay_impl=None, client_impl=None)
    try:
        subprocess.run(["ip", "netns", "add", neighbour], check=True)
        stale.up()
        stale.popen("native", ["sleep", "60"], name="stale-sleeper")
        stale_pid = stale.procs[-1].pid
        subprocess.run(["ip", "netns", "add", prefix + "zz"], check=True)
        # A new lab of the same prefix, as if the first one's owner had crashed.
        fresh.up()
        assert system.start_time(stale_pid) is None, "the stale lab's process still runs"
        assert prefix + "zz" not in namespaces(prefix)
        assert neighbour in namespaces(neighbour), "a namespace of another prefix was touched"
    finally:
        fresh.down()
        stale.down()
        subprocess.run(["ip", "netns", "delete", neighbour], check=False)
    assert_nothing_left(prefix, [stale_pid])


@pytest.mark.parametrize("bad", ["", "tdo", "TDO-", "-", "a" * 12 + "-"])
def test_bad_prefix_is_refused(bad: str) -> None:
    with pytest.raises(LabError):
        Lab(bad)
    with pytest.raises(LabError):
        system.namespaces_with_prefix(bad)


def test_state_dir_lives_under_run() -> None:
    assert Lab(prefix_for("e"), []).state_dir == STATE_ROOT / prefix_for("e").rstrip("-")


def test_ctrl_c_during_demo_cleans_up() -> None:
    prefix = prefix_for("f")
    proc = subprocess.Popen(
        [sys.executable, "-m", "teredo.cli.lab", "demo", "--prefix", prefix],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        # A shell may start us with SIGINT ignored; the demo must see it like a terminal's Ctrl-C.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),  # noqa: PLW1509
    )
    pids: list[int] = []
    lines: list[str] = []
    try:
        deadline = time.monotonic() + 60
        assert proc.stdout is not None
        # Interrupt once the clients run (Miredo processes exist), i.e. in the middle of the demo.
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line)
            if line.startswith("[2]"):
                pids = _all_pids(Lab.load(prefix))
                proc.send_signal(signal.SIGINT)
                break
        rest, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        cleanup(prefix)
    output = "".join(lines) + rest
    assert pids, f"the demo never reached qualification:\n{output}"
    assert proc.returncode == 130, output
    assert "nothing left behind" in output
    assert_nothing_left(prefix, pids)
