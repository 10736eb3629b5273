"""bench.path's `--rx inline|threaded` option and the commands that put a lab veth in threaded
NAPI. Nothing here needs root or a lab."""

from __future__ import annotations

import pytest
from bench.path import parse_args, veth_rx_commands


def test_rx_defaults_to_inline_and_accepts_threaded() -> None:
    assert parse_args([]).rx == "inline"
    assert parse_args(["--rx", "threaded"]).rx == "threaded"
    assert parse_args(["--paths", "plain,teredo"]).path_list == ["plain", "teredo"]


def test_rx_rejects_another_mode(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        parse_args(["--rx", "busy-poll"])
    assert exc.value.code == 2
    assert "--rx" in capsys.readouterr().err


def test_threaded_commands_stay_in_the_namespace_and_merge_nothing() -> None:
    cmds = veth_rx_commands("tdw-wan", "b6")
    # Every command names the lab namespace: never a device of the host's.
    assert all(("netns" in c and "tdw-wan" in c) or c[:3] == ["ip", "-n", "tdw-wan"] for c in cmds)
    assert cmds[0][4:] == ["ethtool", "-K", "b6", "gro", "on"]
    # GRO requested for NAPI, but no packet may grow: only the receive context changes.
    assert cmds[1][-2:] == ["gro_max_size", "1"]
    assert cmds[2][-1] == "echo 1 > /sys/class/net/b6/threaded"
