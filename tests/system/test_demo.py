"""The demo is the project's main job: it must pass end to end with its defaults (our server,
relay and clients, a Miredo client among them, a symmetric NAT) and leave nothing behind."""

from __future__ import annotations

import subprocess
import sys

import pytest

from teredo.lab.teardown import cleanup

from .conftest import assert_nothing_left, prefix_for

pytestmark = pytest.mark.system


def test_demo_passes_every_step_and_cleans_up() -> None:
    prefix = prefix_for("g")
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "teredo.cli.lab", "demo", "--prefix", prefix, "--count", "2"],
            capture_output=True,
            text=True,
            timeout=180,
            check=False,
        )
    finally:
        cleanup(prefix)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output
    summary = output.split("== summary ==", 1)[1]
    verdicts = [line.split()[0] for line in summary.splitlines() if line.startswith("  ")]
    # 9 steps of Teredo at work (client4 behind the symmetric NAT qualifies and reaches the
    # native host both ways), 3 status views (client1, relay, server), 2 probes; client4 to the
    # full-cone client and back are counted only where they work (RFC 6081's port rule on the
    # receiving side, issue 9).
    assert verdicts.count("PASS") in (14, 15, 16), output
    assert "FAIL" not in verdicts, output
    assert "client4 reports symmetric NAT" in summary
    assert "PASS  client4 qualifies (symmetric)" in summary
    assert "PASS  client4 (symmetric) <-> native" in summary
    assert "(miredo) behind a port-restricted NAT" in output
    assert "probe from behind symmetric" in summary
    assert "client1 status" in summary
    assert "nothing left behind" in output
    assert_nothing_left(prefix, [])


def test_demo_behind_a_symmetric_nat() -> None:
    """`teredo lab demo --nat symmetric`: two cone-NAT clients are added (Miredo's, the demo's
    second client, and ours, the third); ours behind the symmetric NAT qualifies, pings the
    native host both ways, and each cone client is tried both ways: ours works both ways."""
    prefix = prefix_for("h")
    argv = [sys.executable, "-m", "teredo.cli.lab", "demo", "--prefix", prefix, "--count", "2"]
    try:
        proc = subprocess.run(
            [*argv, "--nat", "symmetric"], capture_output=True, text=True, timeout=180, check=False
        )
    finally:
        cleanup(prefix)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output
    summary = output.split("== summary ==", 1)[1]
    assert "PASS  client1 qualifies (symmetric)" in summary, output
    assert "PASS  client1 (symmetric) <-> native" in summary, output
    assert "client2 (miredo) behind a full-cone NAT" in output
    # Miredo's cone client accepts our symmetric client's new port: measured to work.
    assert "PASS  client2 -> client1 (full-cone to symmetric)" in summary, output
    assert "[5c] client1 -> client2 (symmetric to full-cone, the cone client is miredo)" in output
    assert "PASS  client1 -> client3 (symmetric to full-cone)" in summary, output
    assert "PASS  client3 -> client1 (full-cone to symmetric)" in summary, output
    assert "FAIL" not in summary, output
    assert "nothing left behind" in output
    assert_nothing_left(prefix, [])
