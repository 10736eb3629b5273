"""Where a 64-byte UDP packet's time goes on one path of bench.path: `python -m bench.path_profile
--path teredo|plain|miredo --direction down|up` (root; issue 8, docs/benchmarks.md "Profile of the
64-byte UDP rate").

Builds the path's lab as bench.path does (`path_lab`, prefix `tpf-` by default, tx offload off),
runs `iperf3 -u -l 64 -b 0` between the native host and the client for `--seconds`, and
`perf record -a -g` (Debian's linux-perf, scripts/setup.sh) over the middle of it. On the kernel
data path every hop of the lab runs in the sending iperf3's system call (its softirq), so the
sender's samples are the path's cost: for each function of `--functions` (default: the Teredo
programs' helpers and the stack's main stages), the sender's samples whose call chain holds it,
in us per packet received (one sample = 1 / `--frequency` s of one CPU). Prints a table and one
JSON line. The lab is always taken down.
"""

from __future__ import annotations

import argparse
import collections
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path

from bench import path as bench_path
from bench.lab_bench import (
    BenchError,
    interrupt_on_sigterm,
    iperf3,
    json_line,
    load_average,
    parse_iperf3_udp,
    require_root,
)
from teredo.lab import system
from teredo.lab.topology import NATIVE_V6

PREFIX = "tpf-"
# Prefixes of symbol names: a BPF program's symbol is bpf_prog_<tag>_<name>.
FUNCTIONS = (
    "udpv6_sendmsg",
    "bpf_prog_*_relay_encap",
    "bpf_prog_*_relay_decap",
    "bpf_prog_*_client_encap",
    "bpf_prog_*_client_decap",
    "bpf_skb_adjust_room",
    "pskb_expand_head",
    "ktime_get_boot_fast_ns",
    "skb_do_redirect",
    "ip_route_output_flow",
    "ip_rcv",
    "ip_output",
    "ipv6_rcv",
    "ip6_forward",
    "nf_conntrack_in",
    "sock_def_readable",
)

Sample = tuple[str, str, list[str]]  # comm, pid, frames (leaf first)


def parse_perf_script(text: str) -> list[Sample]:
    """`perf script -F comm,pid,ip,sym` output: one header line `comm pid` per sample, then its
    frames (`ip sym+off`), a blank line between samples."""
    samples: list[Sample] = []
    current: Sample | None = None
    for line in text.splitlines():
        if not line.strip():
            if current is not None:
                samples.append(current)
            current = None
            continue
        if not line[0].isspace():
            # A command name may hold spaces; the pid is the last field.
            fields = line.rsplit(None, 1)
            if len(fields) == 2:
                current = (fields[0].strip(), fields[1], [])
            continue
        parts = line.split(None, 1)
        if current is not None and len(parts) == 2:
            current[2].append(parts[1].strip().split("+", 1)[0])
    if current is not None:
        samples.append(current)
    return samples


def _matches(pattern: str, frame: str) -> bool:
    if "*" not in pattern:
        return frame == pattern
    head, tail = pattern.split("*", 1)
    return frame.startswith(head) and frame.endswith(tail) and len(frame) >= len(pattern) - 1


def busiest_pid(samples: Iterable[Sample], comm: str) -> str | None:
    """The pid of `comm` with the most samples (the sending iperf3)."""
    counts = collections.Counter(pid for c, pid, _ in samples if c == comm)
    return counts.most_common(1)[0][0] if counts else None


def per_packet(
    samples: Sequence[Sample],
    pid: str,
    functions: Sequence[str],
    packets: int,
    sample_us: float,
) -> dict[str, float]:
    """us per packet of `pid`'s samples, in all ("total") and holding each function."""
    if packets <= 0:
        raise BenchError("no packet received: nothing to divide by")
    mine = [frames for _, p, frames in samples if p == pid]
    out = {"total": len(mine) * sample_us / packets}
    for fn in functions:
        n = sum(1 for frames in mine if any(_matches(fn, f) for f in frames))
        out[fn] = n * sample_us / packets
    return out


def require_perf() -> None:
    if shutil.which("perf") is None:
        raise BenchError("`perf` not found: run scripts/setup.sh as root (linux-perf)")


def profile(args: argparse.Namespace, functions: Sequence[str]) -> int:
    """Run the profile in the path's lab; print the table and the JSON line."""
    load_before = load_average()
    with (
        tempfile.TemporaryDirectory(prefix="path_profile") as tmp,
        bench_path.path_lab(args.path, args) as (lab, client_addr),
    ):
        data = Path(tmp) / "perf.data"
        if args.direction == "down":
            server, server_addr, client = "client1", client_addr, "native"
        else:
            server, server_addr, client = "native", NATIVE_V6, "client1"
        record_s = args.seconds - 1
        perf_cmd = ["perf", "record", "-a", "-g", "-F", str(args.frequency), "-o", str(data)]
        perf = subprocess.Popen(
            [*perf_cmd, "--", "sleep", str(record_s)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            out = iperf3(
                lab,
                server_host=server,
                server_addr=server_addr,
                client_host=client,
                args=["-u", "-l", "64", "-b", "0"],
                seconds=args.seconds,
            )
        finally:
            _, err = perf.communicate(timeout=record_s + 30)
        if perf.returncode != 0:
            raise BenchError(f"perf record failed: {err.strip()}")
        udp = parse_iperf3_udp(out, 64)
        script = subprocess.run(
            ["perf", "script", "-i", str(data), "-F", "comm,pid,ip,sym"],
            capture_output=True,
            text=True,
            timeout=300,
            check=True,
        ).stdout
    samples = parse_perf_script(script)
    pid = busiest_pid(samples, "iperf3")
    if pid is None:
        raise BenchError("no iperf3 sample in the profile")
    rate = udp.received / udp.seconds
    # Packets received while perf recorded (the rate is steady over the run).
    packets = int(rate * record_s)
    costs = per_packet(samples, pid, functions, packets, 1e6 / args.frequency)
    loss = 100 * (1 - udp.received / udp.sent) if udp.sent else 0.0
    print(
        f"\n== path_profile: {args.path} {args.direction}, {rate:,.0f} pkt/s received, "
        f"loss {loss:.2f} %, load {load_before} -> {load_average()}"
    )
    print(f"   sender (iperf3 pid {pid}); {len(samples)} samples of all CPUs")
    print(f"{'sender CPU us/pkt, call chain holding':48s} {'us':>7s}")
    for fn, us in costs.items():
        print(f"{fn:48s} {us:7.2f}")
    record = {
        "path": args.path,
        "direction": args.direction,
        "pps": rate,
        "loss_pct": loss,
        "us_per_pkt": costs,
        "seconds": args.seconds,
    }
    print(json_line("path_profile", record))
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.path_profile", description=__doc__)
    ap.add_argument("--path", choices=bench_path.PATHS, default="teredo")
    ap.add_argument("--direction", choices=("down", "up"), default="down")
    ap.add_argument("--seconds", type=float, default=4.0, help="the iperf3 run (default 4)")
    ap.add_argument("--frequency", type=int, default=999, help="perf samples/s per CPU")
    ap.add_argument("--functions", default=",".join(FUNCTIONS), help="comma-separated")
    ap.add_argument("--prefix", default=PREFIX, help=f"namespace prefix (default {PREFIX})")
    ap.add_argument("--datapath", default="auto", choices=("auto", "kernel", "user"))
    ap.add_argument("--offload", default="off", choices=("off", "keep"))
    args = ap.parse_args(argv)
    if not 2 <= args.seconds <= 30 or not 10 <= args.frequency <= 5000:
        ap.error("--seconds must be in [2, 30] and --frequency in [10, 5000]")
    functions = [f for f in args.functions.split(",") if f]
    try:
        system.check_prefix(args.prefix)
        require_root()
        require_perf()
        interrupt_on_sigterm()
        args.offload_devices = 0
        args.tun_devices = []
        return profile(args, functions)
    except (ValueError, BenchError, system.LabError, subprocess.SubprocessError) as exc:
        print(f"bench.path_profile: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
