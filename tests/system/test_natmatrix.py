"""`python -m teredo.lab.natmatrix`, the script behind docs/client.md's NAT table, on a short run:
two NAT kinds, our client only. The cells that RFC 4380 alone settles are checked; the ones that
RFC 6081's receiving-side rule will change (issue 9) are not."""

from __future__ import annotations

import subprocess
import sys

import pytest

from teredo.lab.topology import cleanup

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
    assert rows["full-cone"][0] == "- / yes", output
    assert rows["full-cone"][2] == "- / yes", output
    assert rows["symmetric"][2] == "- / yes", output  # RFC 6081 Symmetric NAT Support
    assert "LEFT BEHIND" not in output
    assert_nothing_left(prefix, [])
