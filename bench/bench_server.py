"""Router Solicitation flood against miredo-server and against `teredo server`, same lab, same run.

Run as root from the repository:  .venv/bin/python -m bench.bench_server [--seconds 5]

A lab (prefix `tds-` by default) with the server namespace and flooder hosts without NAT
(203.0.113.101, .102, ...), no relay and no Teredo client. For each server run in turn:

1. miredo-server (it has no rate limit),
2. ours with the limits raised out of the way: the kernel data path (XDP, --datapath kernel,
   1 worker then --workers N: one program for all), then Python (--datapath user, --workers 1,
   then --workers N), so that the protocol path is what is measured,
3. ours with its default limits (kernel data path): what a flooder gets.

`--baseline DIR` adds, right after each Python-path run of ours, the same run of another tree
(DIR/src first on PYTHONPATH, e.g. a `git worktree` or `git archive` export of main): a change to
the data path measured against what it replaces, in the same lab and the same minute.
`--rounds N` repeats the whole list N times in the same lab (the run-to-run spread).

One `bench.rsflood` process per flooder host (`--flooders`, default 2) sends RS from 64
source ports each, flat out, for `--seconds`. Measured: RAs that reached the flooders per
second of flood (the figure compared: the kernel's RAs leave by XDP_TX, which bypasses
netfilter), RAs the server's sockets sent (nftables counter on its output, UDP source port
3544: 0 for the kernel path), RS that reached the server host, and the server's CPU time
(utime + stime of the server and its children, from /proc/<pid>/stat; the XDP program runs
in softirq and is not in it).

Everything stays inside the lab's namespaces (documentation addresses only); every flood is
bounded in count and in time; the lab is taken down whatever happens.
"""

from __future__ import annotations

import argparse
import json
import os
import pstats
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from teredo.lab import system
from teredo.lab.nat import NatKind
from teredo.lab.topology import SERVER_V4, Lab

REPO = Path(__file__).resolve().parents[1]
MAX_FLOODERS = 4
SOCKETS_PER_FLOODER = 64
COUNT_PER_FLOODER = 5_000_000  # a bound far above what one process can send in a minute
# Every RS limit out of the way (the per-IPv4 one too: a flooder host is one IPv4).
RAISED = [
    *("--rs-rate", "1e9", "--rs-burst", "1e9"),
    *("--rs-ipv4-rate", "1e9", "--rs-ipv4-burst", "1e9"),
    *("--rs-total-rate", "1e9"),
]
COUNTERS = f"""table inet tbench {{
  counter rs_in {{ }}
  counter ra_out {{ }}
  chain b_in {{
    type filter hook prerouting priority -300; policy accept;
    ip daddr {SERVER_V4} udp dport 3544 counter name "rs_in"
  }}
  chain b_out {{
    type filter hook output priority -300; policy accept;
    udp sport 3544 counter name "ra_out"
  }}
}}
"""


@dataclass(frozen=True)
class RunResult:
    name: str
    seconds: float
    rs_sent: int
    rs_in: int
    ra_out: int
    ra_received: int
    cpu_seconds: float
    user_seconds: float

    @property
    def ra_per_s(self) -> float:
        """RAs received at the flooders per second of flood."""
        return self.ra_received / self.seconds if self.seconds else 0.0

    @property
    def us_cpu_per_ra(self) -> float:
        """The server process's CPU per RA (the kernel path's work is not in it)."""
        return self.cpu_seconds / self.ra_received * 1e6 if self.ra_received else float("inf")


def cpu_seconds(pids: list[int]) -> tuple[float, float]:
    """(utime, stime) of `pids` (fields 14 and 15 of /proc/<pid>/stat), in seconds."""
    user = system = 0
    for pid in pids:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2 :].split()
        user += int(fields[11])
        system += int(fields[12])
    tick = os.sysconf("SC_CLK_TCK")
    return user / tick, system / tick


def _counters(lab: Lab) -> dict[str, int]:
    out = lab.exec("server", ["nft", "-j", "list", "counters", "table", "inet", "tbench"]).stdout
    found = {}
    for item in json.loads(out).get("nftables", []):
        counter = item.get("counter")
        if isinstance(counter, dict):
            found[str(counter["name"])] = int(counter.get("packets", 0))
    return found


def _wait_bound(lab: Lab, pid: int, timeout: float = 10.0) -> None:
    """Until the server has its UDP port 3544 open (bounded)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        out = lab.exec("server", ["ss", "-Hunl", "sport", "= :3544"], check=False).stdout
        if out.count("3544") >= 2:
            return
        if not Path(f"/proc/{pid}").exists():
            break
        time.sleep(0.1)
    raise RuntimeError(f"the server did not start:\n{lab.log_tail('server')}")


def run_one(lab: Lab, name: str, argv: list[str], seconds: float, flooders: int) -> RunResult:
    proc = lab.popen("server", argv, name=f"server-{name}")
    try:
        _wait_bound(lab, proc.pid)
        time.sleep(0.3)
        pids = [proc.pid, *system.descendants(proc.pid)]
        before = _counters(lab)
        cpu0 = cpu_seconds(pids)
        floods = [
            lab.popen(
                host,
                [
                    "env",
                    f"PYTHONPATH={REPO}",
                    sys.executable,
                    "-m",
                    "bench.rsflood",
                    "--server",
                    SERVER_V4,
                    "--count",
                    str(COUNT_PER_FLOODER),
                    "--duration",
                    str(seconds),
                    "--sockets",
                    str(SOCKETS_PER_FLOODER),
                    "--linger",
                    "0.5",
                ],
                name=f"flood-{name}-{host}",
                stdout=subprocess.PIPE,
            )
            for host in [f"client{i + 1}" for i in range(flooders)]
        ]
        reports = []
        for flooder in floods:
            out, _ = flooder.communicate(timeout=seconds + 30)
            reports.append(json.loads(out))
        cpu1 = cpu_seconds(pids)
        after = _counters(lab)
    finally:
        lab.stop("server")
    return RunResult(
        name=name,
        seconds=max(r["seconds"] for r in reports),
        rs_sent=sum(r["sent"] for r in reports),
        rs_in=after["rs_in"] - before["rs_in"],
        ra_out=after["ra_out"] - before["ra_out"],
        ra_received=sum(r["received"] for r in reports),
        cpu_seconds=sum(cpu1) - sum(cpu0),
        user_seconds=cpu1[0] - cpu0[0],
    )


def _table(results: list[RunResult]) -> str:
    head = (
        f"{'server':<26} {'RS sent':>9} {'RS in':>9} {'RA sock':>9} {'RA rcvd':>9} "
        f"{'RA/s':>8} {'CPU s':>6} {'user':>5} {'us CPU/RA':>9}"
    )
    rows = [head, "-" * len(head)]
    for r in results:
        rows.append(
            f"{r.name:<26} {r.rs_sent:>9} {r.rs_in:>9} {r.ra_out:>9} {r.ra_received:>9} "
            f"{r.ra_per_s:>8.0f} {r.cpu_seconds:>6.2f} {r.user_seconds:>5.2f} "
            f"{r.us_cpu_per_ra:>9.1f}"
        )
    return "\n".join(rows)


def _swapped(runs: list[tuple[str, list[str]]]) -> list[tuple[str, list[str]]]:
    """`runs` with each "baseline, ..." run moved before the run of ours it follows."""
    out = list(runs)
    for i in range(1, len(out)):
        if out[i][0].startswith("baseline, "):
            out[i - 1], out[i] = out[i], out[i - 1]
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="flood length (<= 30 s)")
    parser.add_argument(
        "--flooders", type=int, default=2, help=f"flooder hosts (<= {MAX_FLOODERS})"
    )
    parser.add_argument("--workers", type=int, default=2, help="workers of ours' second run")
    parser.add_argument("--prefix", default="tds-", help="lab namespace prefix")
    parser.add_argument("--profile", action="store_true", help="also run ours under cProfile")
    parser.add_argument(
        "--baseline",
        type=Path,
        metavar="DIR",
        help="another tree whose Python-path runs follow ours (its DIR/src on PYTHONPATH)",
    )
    parser.add_argument("--rounds", type=int, default=1, help="times the runs are repeated")
    args = parser.parse_args(argv)
    if args.baseline is not None and not (args.baseline / "src" / "teredo").is_dir():
        parser.error(f"--baseline {args.baseline}: no src/teredo there")
    rounds = min(max(args.rounds, 1), 10)
    seconds = min(max(args.seconds, 1.0), 30.0)
    flooders = min(max(args.flooders, 1), MAX_FLOODERS)
    lab = Lab(
        args.prefix,
        [NatKind.NONE] * flooders,
        server_impl=None,
        relay_impl=None,
        client_impl=None,
    )
    results: list[RunResult] = []
    try:
        lab.up()
        lab.exec("server", ["nft", "-f", "-"], input_text=COUNTERS)
        conf = lab.state_dir / "bench-server.conf"
        conf.write_text(f"ServerBindAddress {SERVER_V4}\n", encoding="ascii")
        ours = [sys.executable, "-m", "teredo", "server", "-c", str(conf)]
        user_runs: list[tuple[str, list[str]]] = [
            ("user, 1 worker", [*RAISED, "--datapath", "user"]),
            (
                f"user, {args.workers} workers",
                [*RAISED, "--datapath", "user", "--workers", str(args.workers)],
            ),
        ]
        runs: list[tuple[str, list[str]]] = [
            (
                "miredo-server",
                ["miredo-server", "-f", "-c", str(conf), "-p", str(lab.state_dir / "miredo.pid")],
            ),
            ("teredo, kernel (XDP)", [*ours, *RAISED, "--datapath", "kernel"]),
            (
                f"teredo, kernel, {args.workers} workers",
                [*ours, *RAISED, "--datapath", "kernel", "--workers", str(args.workers)],
            ),
        ]
        for name, flags in user_runs:
            runs.append((f"teredo, {name}", [*ours, *flags]))
            if args.baseline is not None:
                base_env = ["env", f"PYTHONPATH={args.baseline.resolve() / 'src'}"]
                runs.append((f"baseline, {name}", [*base_env, *ours, *flags]))
        runs.append(("teredo, default limits", [*ours, "--datapath", "kernel"]))
        prof = lab.state_dir / "server.prof"
        if args.profile:
            profiled = [sys.executable, "-m", "cProfile", "-o", str(prof), "-m", "teredo"]
            runs.append(
                ("teredo under cProfile", [*profiled, *ours[3:], *RAISED, "--datapath", "user"])
            )
        load = os.getloadavg()
        print(f"load average at start: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}", flush=True)
        for round_ in range(rounds):
            if rounds > 1:
                load = os.getloadavg()
                print(f"round {round_ + 1} of {rounds}, load {load[0]:.2f}", flush=True)
            done: list[RunResult] = []
            # Every other round the baseline goes first: no tree always gets the later minute.
            for name, command in runs if round_ % 2 == 0 else _swapped(runs):
                done.append(run_one(lab, name, command, seconds, flooders))
                print(_table(done[-1:]).splitlines()[-1], flush=True)
            results.extend(done)
            miredo = done[0]
            for r in done[1:-1]:
                print(
                    f"ratio {r.name} / miredo-server: RA/s {r.ra_per_s / miredo.ra_per_s:.2f}, "
                    f"CPU per RA {r.us_cpu_per_ra / miredo.us_cpu_per_ra:.2f}"
                )
        print()
        print(_table(results))
        for r in results:
            print(json.dumps({"bench": "server_rs_flood", **r.__dict__, "ra_per_s": r.ra_per_s}))
        if args.profile and prof.exists():
            pstats.Stats(str(prof)).sort_stats("tottime").print_stats(15)
    finally:
        lab.down()
    return 0


if __name__ == "__main__":
    sys.exit(main())
