"""System tests: real network namespaces, nftables and Miredo. They need root.

A missing prerequisite is a test FAILURE with a message saying what is missing, never a skip: the
suite must not pass silently on a machine that cannot run it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from teredo.lab.teardown import STATE_ROOT
from teredo.lab.topology import Lab, ping_counts


def _missing_prerequisites() -> list[str]:
    problems = []
    if os.geteuid() != 0:
        problems.append("not running as root (network namespaces and nftables need it)")
    for tool in ("ip", "nft", "conntrack", "ping", "ss", "miredo", "miredo-server"):
        if shutil.which(tool) is None:
            problems.append(f"`{tool}` not found (run scripts/setup.sh as root)")
    if not problems:
        probe = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=False)
        if probe.returncode != 0:
            problems.append(f"`ip netns` does not work: {probe.stderr.strip()}")
    return problems


@pytest.fixture(scope="session", autouse=True)
def _system_prerequisites() -> None:
    problems = _missing_prerequisites()
    if problems:
        pytest.fail("system tests cannot run: " + "; ".join(problems), pytrace=False)


def prefix_for(tag: str) -> str:
    """A prefix unique to this test session and module: tdt<pid % 10000><tag>-."""
    return f"tdt{os.getpid() % 10000}{tag}-"


def namespaces(prefix: str) -> list[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    return [line.split()[0] for line in out.splitlines() if line.startswith(prefix)]


def received(ping_output: str) -> int:
    """Echo replies a `ping` run received, from its summary line (fails on other output)."""
    counts = ping_counts(ping_output)
    assert counts, f"unexpected ping output: {ping_output!r}"
    return counts[1]


def tear_down(lab: Lab) -> None:
    """Takes `lab` down and checks that nothing of it is left: namespaces, processes, state."""
    pids = [r.pid for r in lab.procs]
    lab.down()
    assert_nothing_left(lab.prefix, pids)


def assert_nothing_left(prefix: str, pids: list[int]) -> None:
    """No namespace of `prefix`, none of `pids` alive, no state directory."""
    assert namespaces(prefix) == [], f"namespaces left behind: {namespaces(prefix)}"
    alive = [pid for pid in pids if _alive(pid)]
    assert alive == [], f"processes left running: {alive}"
    state = STATE_ROOT / prefix.rstrip("-")
    assert not state.exists(), f"state directory left behind: {state}"


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rfind(")") + 2] != "Z"


@pytest.fixture
def lab_factory() -> Iterator[list[Lab]]:
    """Labs a test appends here are taken down after it, whatever happens, and checked."""
    labs: list[Lab] = []
    try:
        yield labs
    finally:
        for lab in labs:
            tear_down(lab)
