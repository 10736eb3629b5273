"""`teredo lab demo --relays 3` (issue 11): a relay killed and traffic moving, a relay drained
without loss, both back; and `--relays 2 --anycast-ipv4`: the active relay killed, both clients'
traffic moving to the standby at the same IPv4 address, restarted, drained without loss,
restarted. Every step passes and nothing is left behind."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from teredo.lab.teardown import cleanup

from .conftest import assert_nothing_left, prefix_for

pytestmark = pytest.mark.system


def run_demo(prefix: str, *options: str) -> tuple[str, str]:
    """The demo's output and its summary; fails unless it exited 0."""
    argv = [sys.executable, "-m", "teredo.cli.lab", "demo", "--prefix", prefix, *options]
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=240, check=False)
    finally:
        cleanup(prefix)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output
    assert_nothing_left(prefix, [])
    return output, output.split("== summary ==", 1)[1]


def verdicts(summary: str) -> list[str]:
    """PASS or FAIL per step of the summary table."""
    lines = summary.split("tearing down", 1)[0].splitlines()
    return [line.split()[0] for line in lines if line.startswith("  ")]


def test_anycast_demo_passes_and_cleans_up() -> None:
    output, summary = run_demo(prefix_for("v"), "--relays", "3")
    assert verdicts(summary).count("PASS") == 7, output
    assert "relay killed: traffic moves" in summary
    assert "relay drained: no echo lost" in summary
    assert "kernel ECMP via 2001:db8:10:1::2, 2001:db8:10:2::2, 2001:db8:10:3::2" in output


def test_anycast_ipv4_demo_moves_both_clients_to_the_standby() -> None:
    output, summary = run_demo(prefix_for("y"), "--relays", "2", "--anycast-ipv4")
    assert verdicts(summary) == ["PASS"] * 8, output
    killed = (
        r"relay killed: both clients move to the standby +relay1 -> relay2 at 198\.51\.100\.40:3545"
    )
    assert re.search(killed, summary), summary
    assert re.search(r"relay drained: no echo lost +0 of \d+ echoes lost", summary), summary
    # Each stream's outage is printed: the native host to both clients and both clients back.
    for stream in ("native -> client1", "native -> client2", "client1 -> native"):
        assert f"    {stream}: SIGKILL relay1: withdrawn in" in output, output
        assert f"    {stream}: SIGTERM relay1: withdrawn in" in output, output
