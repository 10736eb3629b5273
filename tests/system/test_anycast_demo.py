"""`teredo lab demo --relays 3` (issue 11): a relay killed and traffic moving, a relay drained
without loss, both back; every step passes and nothing is left behind."""

from __future__ import annotations

import subprocess
import sys

import pytest

from teredo.lab.teardown import cleanup

from .conftest import assert_nothing_left, prefix_for

pytestmark = pytest.mark.system


def test_anycast_demo_passes_and_cleans_up() -> None:
    prefix = prefix_for("v")
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "teredo.cli.lab", "demo", "--prefix", prefix, "--relays", "3"],
            capture_output=True,
            text=True,
            timeout=240,
            check=False,
        )
    finally:
        cleanup(prefix)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output
    summary = output.split("== summary ==", 1)[1]
    verdicts = [line.split()[0] for line in summary.splitlines() if line.startswith("  ")]
    assert verdicts.count("PASS") == 7, output
    assert "relay killed: traffic moves" in summary
    assert "relay drained: no echo lost" in summary
    assert "kernel ECMP via 2001:db8:10:1::2, 2001:db8:10:2::2, 2001:db8:10:3::2" in output
    assert_nothing_left(prefix, [])
