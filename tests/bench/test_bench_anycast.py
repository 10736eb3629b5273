"""bench.bench_anycast's parsing of a relay's `teredo status --json`, of a stalled iperf3
client's output and of bench/mmsgudp.py's counts. No root, no lab."""

from __future__ import annotations

import json

import pytest
from bench.bench_anycast import (
    RelayCounts,
    parse_relay_status,
    parse_stat_user_system,
    parse_tool_count,
    stream_setup_failed,
)
from bench.lab_bench import BenchError


def _doc(datapath: str, to: int, frm: int, kernel: dict[str, int] | None) -> dict[str, object]:
    return {
        "role": "relay",
        "status": {
            "datapath": datapath,
            "kernel": {"counters": kernel} if kernel is not None else None,
            "counters": {"to_teredo": to, "from_teredo": frm},
        },
    }


def test_kernel_path_counts_split_kernel_and_python() -> None:
    got = parse_relay_status([_doc("kernel", 1000, 40, {"encap": 990, "decap": 30})])
    assert got == RelayCounts("kernel", 990, 30, 1000, 40)
    assert (got.python_encap, got.python_decap) == (10, 10)


def test_python_path_and_the_delta_over_a_run() -> None:
    before = parse_relay_status([_doc("user", 5, 1, None)])
    after = parse_relay_status([_doc("user", 105, 3, None)])
    run = after.since(before)
    assert run == RelayCounts("user", 0, 0, 100, 2)
    assert run.python_encap == 100


def test_no_answer_or_junk_is_unknown_not_a_crash() -> None:
    assert parse_relay_status(None) == RelayCounts("?", 0, 0, 0, 0)
    junk = [{"role": "relay", "status": {"counters": {"to_teredo": "x"}, "kernel": 3}}]
    assert parse_relay_status(junk) == RelayCounts("user", 0, 0, 0, 0)
    assert parse_relay_status([{"role": "server", "status": {}}]).datapath == "?"


def test_a_stream_that_never_started_is_told_apart_from_a_result() -> None:
    # iperf3 3.12's -J output when its UDP stream's set-up datagram or answer was lost.
    error = "error - unable to read from stream socket: Resource temporarily unavailable"
    eagain = json.dumps({"start": {}, "intervals": [], "end": {}, "error": error})
    assert stream_setup_failed(eagain)
    assert stream_setup_failed("")  # killed at the deadline before it printed anything
    assert stream_setup_failed(" \n")
    done = json.dumps({"start": {}, "end": {"sum_received": {"bytes": 64}}})
    assert not stream_setup_failed(done)
    # Another failure is the caller's to report (parse_iperf3_* raise it), not a retry.
    refused = json.dumps({"error": "error - unable to connect to server: Connection refused"})
    assert not stream_setup_failed(refused)
    assert not stream_setup_failed("iperf3: not JSON")
    assert not stream_setup_failed("[1, 2]")


def test_the_udp_tools_count_is_its_last_word_pair() -> None:
    assert parse_tool_count("ready\nsent 24000\n", "sent") == 24000
    assert parse_tool_count("ready 5301\nreceived 0\n", "received") == 0
    # A sink that printed its port first and its count last: the count, not the port.
    assert parse_tool_count("ready 5301\nreceived 17\n", "received") == 17
    for text in ("", "ready\n", "ready\nsent x\n", "Traceback ...\nsent\n"):
        with pytest.raises(BenchError, match="mmsgudp"):
            parse_tool_count(text, "sent")
    with pytest.raises(BenchError):
        parse_tool_count("ready\nsent 5\n", "received")


def test_user_and_system_ticks_apart_from_a_hostile_command_name() -> None:
    fields = ["S"] + ["0"] * 10 + ["7", "5"] + ["0"] * 7
    assert parse_stat_user_system("1234 (python3) " + " ".join(fields)) == (7, 5)
    assert parse_stat_user_system("1234 (a) (b) " + " ".join(fields)) == (7, 5)
