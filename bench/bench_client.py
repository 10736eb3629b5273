"""Client side by side: `python -m bench.bench_client [--impl both|miredo|teredo]` (root).

For each implementation of the Teredo client (Miredo's, then ours), a lab `tdb-` is built with a
Miredo server and a Miredo relay and one client behind a port-restricted NAT, then:

- TCP throughput native host <-> client, both directions (iperf3 -J, `--seconds` each);
- small-packet rate: iperf3 UDP with 64-byte payloads offered at `--udp-pps` packets per second,
  both directions; the receiver's packet count gives packets/s and loss, and the client
  daemon's CPU time (all its threads and children, from /proc) gives CPU microseconds per packet,
  the figure least disturbed by whatever else shares the machine;
- time to qualify: client start -> a global address on its TUN, median of `--qualify-runs`.

Who is the bottleneck: every process (two iperf3, the NAT's kernel, the relay, the client) shares
the same 2 cores, so packets/s is a joint figure; the daemon CPU % next to it says whether the
client was saturated (close to 100 %: the client is the bottleneck).

The table shows miredo, teredo and ours/miredo; the last line is the JSON record.
"""

from __future__ import annotations

import argparse
import sys
import time

from bench.lab_bench import (
    BenchError,
    bench_lab,
    impl_available,
    interrupt_on_sigterm,
    load_average,
    median,
    parse_impls,
    print_report,
    require_root,
    run_rounds,
    transfer_metric_labels,
    transfer_metrics,
)
from teredo.lab.roles import Role
from teredo.lab.topology import Lab

QUALIFY_TIMEOUT = 30.0
POLL = 0.01


def time_to_qualify(lab: Lab, impl: str, runs: int) -> list[float]:
    """Seconds from starting client 1 to a global address on its TUN, `runs` times."""
    times: list[float] = []
    for _ in range(runs):
        lab.stop("client1")
        # The interface goes with the daemon; wait for that so the next poll cannot see the
        # previous run's address.
        deadline = time.monotonic() + 10.0
        while lab.teredo_address(1) is not None:
            if time.monotonic() > deadline:
                raise BenchError("client1: the previous Teredo address did not go away")
            time.sleep(POLL)
        t0 = time.monotonic()
        lab.start(Role.CLIENT, impl, 1)
        deadline = t0 + QUALIFY_TIMEOUT
        while lab.teredo_address(1) is None:
            if time.monotonic() > deadline:
                raise BenchError(f"client1 ({impl}) not qualified after {QUALIFY_TIMEOUT} s")
            time.sleep(POLL)
        times.append(time.monotonic() - t0)
    return times


def interpreter_start(lab: Lab, runs: int) -> float | None:
    """Median time of `python -m teredo --version` in the client's namespace: the part of our
    time to qualify that is Python starting and importing the CLI, not Teredo."""
    times = []
    for _ in range(runs):
        t0 = time.monotonic()
        lab.exec("client1", [sys.executable, "-m", "teredo", "--version"])
        times.append(time.monotonic() - t0)
    return median(times)


def run_one(impl: str, args: argparse.Namespace) -> dict[str, float | None]:
    with bench_lab(server="miredo", relay="miredo", client=impl) as lab:
        info = lab.wait_qualified(1, timeout=QUALIFY_TIMEOUT)
        results: dict[str, float | None] = {"load1": float(load_average().split()[0])}
        if "transfer" in args.tests:
            results.update(
                transfer_metrics(
                    lab,
                    daemon_host="client1",
                    other_host="relay",
                    client_addr=str(info.address),
                    seconds=args.seconds,
                    udp_pps=args.udp_pps,
                )
            )
        if "qualify" in args.tests:
            times = time_to_qualify(lab, impl, args.qualify_runs)
            results["qualify_median_s"] = median(times)
            results["qualify_max_s"] = max(times)
            if impl == "teredo":
                results["interpreter_start_s"] = interpreter_start(lab, args.qualify_runs)
        return results


METRICS = (
    *transfer_metric_labels("relay"),
    ("qualify_median_s", "time to qualify, median s"),
    ("qualify_max_s", "time to qualify, max s"),
    ("interpreter_start_s", "  of which python -m teredo start"),
    ("load1", "load average (1 min) at start"),
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.bench_client", description=__doc__)
    parser.add_argument("--impl", default="both", help="miredo, teredo or both (default)")
    parser.add_argument("--seconds", type=float, default=3.0, help="per iperf3 run (default 3)")
    parser.add_argument("--udp-pps", type=int, default=100_000, help="offered UDP packets/s")
    parser.add_argument("--rounds", type=int, default=1, help="rounds, medians reported")
    parser.add_argument("--qualify-runs", type=int, default=5, help="qualifications timed")
    parser.add_argument(
        "--tests",
        default="transfer,qualify",
        help="comma-separated: transfer (TCP + UDP), qualify (default both)",
    )
    args = parser.parse_args(argv)
    args.tests = set(args.tests.split(","))
    if not args.tests or not args.tests <= {"transfer", "qualify"}:
        parser.error("--tests: a comma-separated list of transfer, qualify")
    if not 0 < args.seconds <= 60 or not 0 < args.udp_pps <= 2_000_000:
        parser.error("--seconds must be in (0, 60] and --udp-pps in (0, 2000000]")
    if not 1 <= args.qualify_runs <= 50 or not 1 <= args.rounds <= 20:
        parser.error("--qualify-runs must be 1..50 and --rounds 1..20")
    try:
        impls = parse_impls(args.impl)
        require_root()
        interrupt_on_sigterm()
    except (ValueError, BenchError) as exc:
        print(f"bench_client: {exc}", file=sys.stderr)
        return 2
    notes: list[str] = []
    for impl in list(impls):
        if not impl_available(impl, "client"):
            notes.append(f"{impl}: `teredo client` is not registered in cli/main.py yet")
            impls.remove(impl)
    results = run_rounds(impls, args.rounds, lambda impl: run_one(impl, args), notes)
    for note in notes:
        print(f"note: {note}", file=sys.stderr)
    print_report(
        "client",
        METRICS,
        results,
        {
            "seconds": args.seconds,
            "udp_pps_offered": args.udp_pps,
            "qualify_runs": args.qualify_runs,
            "rounds": args.rounds,
            "notes": notes,
        },
    )
    return 0 if results and not notes else 1


if __name__ == "__main__":
    sys.exit(main())
