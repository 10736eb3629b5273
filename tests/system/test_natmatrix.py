"""`python -m teredo.lab.natmatrix`, the script behind docs/client.md's NAT table, on a short run:
two NAT kinds, our client only. Every cell is checked: full-cone <-> symmetric works both ways
since the RFC 6081 receiving-side rule (core/symmetric.py); symmetric <-> symmetric does not."""

from __future__ import annotations

import subprocess
import sys

import pytest

from teredo.lab.teardown import cleanup

from .conftest import assert_nothing_left, prefix_for

pytestmark = pytest.mark.system


def test_short_matrix() -> None:
    prefix = prefix_for("x")
    argv = [sys.executable, "-m", "teredo.lab.natmatrix", "--prefix", prefix]
    argv += ["--kind", "full-cone", "--kind", "symmetric", "--client", "teredo"]
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=240, check=False)
    finally:
        cleanup(prefix)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output
    rows = {
        line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]]
        for line in output.splitlines()
        if line.startswith("| ") and "\\" not in line
    }
    assert set(rows) == {"full-cone", "symmetric"}, output
    # Columns: full-cone, symmetric, native host; each cell "Miredo / ours" (Miredo not run).
    assert rows["full-cone"] == ["- / yes", "- / yes", "- / yes"], output
    # RFC 6081 Symmetric NAT Support: qualified, native both ways, and the cone peer both ways.
    assert rows["symmetric"] == ["- / yes", "- / no", "- / yes"], output
    assert "LEFT BEHIND" not in output
    assert_nothing_left(prefix, [])
