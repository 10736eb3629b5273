"""bench/path_profile.py's pure helpers: perf script parsing and the per-packet attribution."""

from __future__ import annotations

import pytest
from bench.lab_bench import BenchError
from bench.path_profile import busiest_pid, parse_perf_script, per_packet

# `perf script -F comm,pid,ip,sym` as perf 6.1 prints it (leaf frame first).
SCRIPT = """iperf3  4242
\tffffffff81a0c1d0 pskb_expand_head+0x0
\tffffffff81a2e0f0 bpf_skb_adjust_room+0x1a0
\tffffffffc0123456 bpf_prog_ef792d922de2035c_relay_encap+0x2c4
\tffffffff81a1b000 __dev_queue_xmit+0x7f0
\tffffffff81c00000 udpv6_sendmsg+0x9b0

iperf3  4242
\tffffffff81a1b000 ktime_get_boot_fast_ns+0x10
\tffffffffc0123456 bpf_prog_ef792d922de2035c_relay_encap+0x10
\tffffffff81c00000 udpv6_sendmsg+0x100

iperf3  4242
\tffffffff81c00000 udpv6_sendmsg+0x100

iperf3  4240
\tffffffff81c00000 udpv6_recvmsg+0x10

swapper     0
\tffffffff81000000 pv_native_safe_halt+0x5

Web Content  77
\tffffffff81000000 pv_native_safe_halt
"""


def test_parse_perf_script_frames_without_offsets() -> None:
    samples = parse_perf_script(SCRIPT)
    assert len(samples) == 6
    assert samples[0] == (
        "iperf3",
        "4242",
        [
            "pskb_expand_head",
            "bpf_skb_adjust_room",
            "bpf_prog_ef792d922de2035c_relay_encap",
            "__dev_queue_xmit",
            "udpv6_sendmsg",
        ],
    )
    assert samples[4] == ("swapper", "0", ["pv_native_safe_halt"])
    assert samples[5] == ("Web Content", "77", ["pv_native_safe_halt"])


def test_busiest_pid_is_the_sender() -> None:
    samples = parse_perf_script(SCRIPT)
    assert busiest_pid(samples, "iperf3") == "4242"
    assert busiest_pid(samples, "miredo") is None


def test_per_packet_counts_each_sample_once_per_function() -> None:
    samples = parse_perf_script(SCRIPT)
    fns = ["bpf_prog_*_relay_encap", "bpf_prog_*_client_encap", "pskb_expand_head", "udpv6"]
    # 3 samples of 1,000 us each over 100 packets: 30 us a packet in all.
    got = per_packet(samples, "4242", fns, 100, 1000.0)
    assert got == {
        "total": 30.0,
        "bpf_prog_*_relay_encap": 20.0,
        "bpf_prog_*_client_encap": 0.0,
        "pskb_expand_head": 10.0,
        "udpv6": 0.0,  # a name, not a prefix
    }


def test_per_packet_needs_packets() -> None:
    with pytest.raises(BenchError):
        per_packet(parse_perf_script(SCRIPT), "4242", [], 0, 1000.0)
