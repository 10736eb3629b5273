"""The Miredo-compatible hook runner: the environment of each call, and real script runs."""

from __future__ import annotations

import json
import os
import stat
import sys
from ipaddress import IPv6Address
from pathlib import Path

import pytest

from teredo.core.addr import FLAG_CONE, pack_address
from teredo.io.hook import HookError, HookRunner, TunnelState, hook_environment

RESTRICTED = pack_address(b"\x20\x01\x00\x00", 0xC6336410, 0x1234, 0x5678, 0x34567890)
CONE = pack_address(b"\x20\x01\x00\x00", 0xC6336410, FLAG_CONE, 0x5678, 0x34567890)
HOOK_NAMES = {
    *("IFACE", "IFINDEX", "STATE", "ADDRESS", "LLADDRESS", "MTU"),
    *("OLD_STATE", "OLD_ADDRESS", "OLD_LLADDRESS", "OLD_MTU"),
}
OTHER = pack_address(b"\x20\x01\x00\x00", 0xC6336410, 0x0011, 0x1111, 0x34567890)


def text(address: bytes) -> str:
    return str(IPv6Address(address))


def test_first_up_has_no_old_values() -> None:
    env = hook_environment(
        {"PATH": "/bin", "OLD_ADDRESS": "stale"},
        "teredo",
        7,
        "up",
        current=TunnelState(RESTRICTED, 1400),
        previous=TunnelState(),
    )
    assert env == {
        "PATH": "/bin",
        "IFACE": "teredo",
        "IFINDEX": "7",
        "STATE": "up",
        "ADDRESS": text(RESTRICTED),
        "LLADDRESS": "fe80::ffff:ffff:ffff",
        "MTU": "1400",
        "OLD_STATE": "down",
    }


def test_cone_address_gets_the_cone_link_local() -> None:
    env = hook_environment(
        {}, "t", 1, "up", current=TunnelState(CONE, 1280), previous=TunnelState()
    )
    assert env["LLADDRESS"] == "fe80::8000:5445:5245:444f"


def test_down_after_up_carries_old_values_only() -> None:
    env = hook_environment(
        {}, "t", 3, "down", current=TunnelState(), previous=TunnelState(RESTRICTED, 1280)
    )
    assert "ADDRESS" not in env
    assert "LLADDRESS" not in env
    assert "MTU" not in env
    assert env["STATE"] == "down"
    assert env["OLD_STATE"] == "up"
    assert env["OLD_ADDRESS"] == text(RESTRICTED)
    assert env["OLD_LLADDRESS"] == "fe80::ffff:ffff:ffff"
    assert env["OLD_MTU"] == "1280"


def _recording_script(tmp_path: Path, status: int = 0) -> tuple[Path, Path]:
    """A script that appends its hook environment as one JSON line per call."""
    record = tmp_path / "calls.jsonl"
    script = tmp_path / "hook.py"
    script.write_text(
        f"#!{sys.executable}\n"
        "import json, os, sys\n"
        f"names = {sorted(HOOK_NAMES)!r}\n"
        f"with open({str(record)!r}, 'a') as out:\n"
        "    out.write(json.dumps({n: os.environ[n] for n in names if n in os.environ}) + '\\n')\n"
        f"sys.exit({status})\n"
    )
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return script, record


def _calls(record: Path) -> list[dict[str, str]]:
    return [json.loads(line) for line in record.read_text().splitlines()]


def test_runner_sequence_matches_privproc(tmp_path: Path) -> None:
    script, record = _recording_script(tmp_path)
    runner = HookRunner(str(script), "teredo", 5, base_env={"PATH": os.environ["PATH"]})
    runner.up(RESTRICTED, 1280)
    runner.up(OTHER, 1400)  # a new address: OLD_* are the first one
    runner.down()
    runner.destroy()
    calls = _calls(record)
    assert [c["STATE"] for c in calls] == ["up", "up", "down", "destroy"]
    assert calls[0]["ADDRESS"] == text(RESTRICTED)
    assert calls[0]["OLD_STATE"] == "down"
    assert "OLD_ADDRESS" not in calls[0]
    assert calls[1]["ADDRESS"] == text(OTHER)
    assert calls[1]["MTU"] == "1400"
    assert (calls[1]["OLD_ADDRESS"], calls[1]["OLD_MTU"]) == (text(RESTRICTED), "1280")
    assert calls[2]["OLD_ADDRESS"] == text(OTHER)
    assert "ADDRESS" not in calls[2]
    assert calls[3]["OLD_STATE"] == "down"
    assert all(c["IFACE"] == "teredo" and c["IFINDEX"] == "5" for c in calls)
    assert runner.calls == 4


def test_failing_script_is_an_error_with_its_status(tmp_path: Path) -> None:
    script, _ = _recording_script(tmp_path, status=3)
    runner = HookRunner(str(script), "teredo", 5, base_env={"PATH": os.environ["PATH"]})
    with pytest.raises(HookError, match="exit status 3"):
        runner.up(RESTRICTED, 1280)


def test_missing_script_is_an_error(tmp_path: Path) -> None:
    runner = HookRunner(str(tmp_path / "absent"), "teredo", 5)
    with pytest.raises(HookError, match="cannot run"):
        runner.down()


def test_hanging_script_is_killed(tmp_path: Path) -> None:
    script = tmp_path / "slow.sh"
    script.write_text("#!/bin/sh\nsleep 30\n")
    script.chmod(0o755)
    runner = HookRunner(str(script), "teredo", 5, timeout=0.3)
    with pytest.raises(HookError, match="killed after"):
        runner.up(RESTRICTED, 1280)
