"""bench/mmsgudp.py, bench.path's cheap fixed-rate generator: over loopback, what it sends in
batches arrives and is counted (no root, no namespace)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

TOOL = Path(__file__).resolve().parents[2] / "bench" / "mmsgudp.py"


def test_batches_sent_are_received_and_counted() -> None:
    sink = subprocess.Popen(
        [sys.executable, "-u", str(TOOL), "recv", "0", "20"],
        stdout=subprocess.PIPE,
    )
    try:
        assert sink.stdout is not None
        first = sink.stdout.readline().split()
        assert first[0] == b"ready"
        port = first[1].decode()
        source = subprocess.run(
            [sys.executable, str(TOOL), "send", "::1", port, "10000", "0.1"],
            input=b"go\n",
            capture_output=True,
            timeout=30,
            check=True,
        )
        assert source.stdout.split() == [b"ready", b"sent", b"1000"]
        out, _ = sink.communicate(timeout=30)
        # 1,000 datagrams of 64 bytes over loopback, into a 4 MiB receive buffer: all of them.
        assert out.split() == [b"received", b"1000"]
    finally:
        if sink.poll() is None:
            sink.kill()
            sink.wait()
