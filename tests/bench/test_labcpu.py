"""The lab CPU accounting of bench.path (bench/labcpu.py): /proc/PID/stat parsing, the delta
between two samples, and a sample of this machine. Nothing here needs root or a lab."""

from __future__ import annotations

import os
import subprocess
import sys

from bench import labcpu


def _stat(comm: str, utime: int, stime: int, start: int) -> str:
    # Fields 3..22 after "(comm) ": state, then 4..13 as zeros, utime, stime, 16..21, starttime.
    fields = ["S"] + ["0"] * 10 + [str(utime), str(stime)] + ["0"] * 6 + [str(start)]
    return f"1234 ({comm}) " + " ".join(fields) + " 0 0\n"


def test_parse_stat_reads_cpu_start_and_a_hostile_command_name() -> None:
    assert labcpu.parse_stat(_stat("iperf3", 7, 5, 99)) == (12, 99, "iperf3")
    assert labcpu.parse_stat(_stat("a) (b", 1, 2, 3)) == (3, 3, "a) (b")


def test_between_counts_processes_children_and_ksoftirqd() -> None:
    tick = os.sysconf("SC_CLK_TCK")
    before = labcpu.CpuSample(lab={(10, 1): 100, (11, 1): 50}, ksoftirqd=1000, children=2.0)
    # Process 10 used 20 ticks, 11 ended (not ours), 12 started and used 30, a reaped child 0.5 s.
    after = labcpu.CpuSample(lab={(10, 1): 120, (12, 5): 30}, ksoftirqd=1000 + tick, children=2.5)
    got = labcpu.between(before, after)
    assert abs(got.processes - (50 / tick + 0.5)) < 1e-9
    assert abs(got.ksoftirqd - 1.0) < 1e-9
    # The others' ksoftirqd share is taken off, never more than ksoftirqd used.
    assert abs(got.total(0.25) - (got.processes + 0.75)) < 1e-9
    assert got.total(5.0) == got.processes


def test_a_pid_reused_by_another_process_is_a_new_process() -> None:
    before = labcpu.CpuSample(lab={(10, 1): 500}, ksoftirqd=0, children=0.0)
    after = labcpu.CpuSample(lab={(10, 9): 3}, ksoftirqd=0, children=0.0)
    assert labcpu.between(before, after).processes == 3 / os.sysconf("SC_CLK_TCK")


def test_sample_sees_ksoftirqd_and_reaped_children() -> None:
    before = labcpu.sample([])  # no namespace: no lab processes
    assert before.lab == {}
    code = "import time\nt = time.process_time() + 0.2\nwhile time.process_time() < t: pass"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
    after = labcpu.sample(["no-such-namespace-kb"])
    assert after.lab == {}
    assert after.children - before.children >= 0.15
    assert after.ksoftirqd >= before.ksoftirqd


def test_path_report_gives_teredos_own_cpu_above_plain_forwarding() -> None:
    from bench.path import report_rows

    results = {
        "miredo": {"cpu_down_us_per_pkt": 10.0},
        "teredo": {"cpu_down_us_per_pkt": 9.0},
        "plain": {"cpu_down_us_per_pkt": 8.0},
    }
    rows = {str(r[0]): r for r in report_rows(results)}
    assert rows["lab CPU us/pkt down (fixed rate)"][4] == "0.90x"
    above = rows["  above plain us/pkt down (Teredo's own)"]
    assert above[1:3] == [2.0, 1.0]
    assert above[4] == "0.50x"


def test_napi_threads_are_counted_apart_from_ksoftirqd_and_lab_processes() -> None:
    assert labcpu.kernel_thread("ksoftirqd/1") == "ksoftirqd"
    assert labcpu.kernel_thread("napi/eth0-258") == "napi"
    assert labcpu.kernel_thread("napid") is None
    assert labcpu.kernel_thread("iperf3") is None
    tick = os.sysconf("SC_CLK_TCK")
    before = labcpu.CpuSample(lab={}, ksoftirqd=0, children=0.0, napi=10)
    after = labcpu.CpuSample(lab={}, ksoftirqd=0, children=0.0, napi=10 + 2 * tick)
    got = labcpu.between(before, after)
    assert abs(got.napi - 2.0) < 1e-9
    # The others' napi share (their rate before) is taken off, never below zero.
    assert abs(got.total(0.0, 0.5) - 1.5) < 1e-9
    assert got.total(0.0, 3.0) == 0.0


def test_ends_started_before_the_sample_count_only_their_cpu_inside_it() -> None:
    tick = os.sysconf("SC_CLK_TCK")
    # Process 11 (a UDP sink, our child) had used 40 ticks starting up; it is reaped in the
    # sample, and the reaping reports its whole lifetime, 1.0 s: 1.0 s - 40 ticks inside.
    before = labcpu.CpuSample(lab={(10, 1): 100, (11, 1): 40}, ksoftirqd=0, children=2.0)
    after = labcpu.CpuSample(lab={(10, 1): 120}, ksoftirqd=0, children=3.0)
    got = labcpu.between(before, after, ended_are_children=True)
    assert abs(got.processes - (20 / tick + 1.0 - 40 / tick)) < 1e-9
    # Without the flag the start-up counts too (bench.path's iperf3 ends start inside).
    assert abs(labcpu.between(before, after).processes - (20 / tick + 1.0)) < 1e-9
    # Never below nothing, whatever ended without being reaped.
    lost = labcpu.CpuSample(lab={(10, 1): 120}, ksoftirqd=0, children=2.0)
    assert labcpu.between(before, lost, ended_are_children=True).processes == 20 / tick
