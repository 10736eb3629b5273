"""Anycast relays (issue 11): `python -m bench.bench_anycast [--relays 1,2,3]` (root).

Namespaces: `tda-` by default (`--prefix`).

For each relay count N, an anycast lab (teredo.lab.anycast: N relays of ours behind the BIRD
router up6, ECMP on 2001::/32; our server) with `--clients K` Miredo clients (no NAT: the relays,
not the clients or NATs, should be the bottleneck) is built, then the native host sends to every
client at once:

- UDP: 64-byte iperf3 datagrams offered at `--udp-pps` in all (split evenly over the clients):
  aggregate packets per second received, and the relays' CPU per packet (all relays' CPU time,
  softirq of their threads included as /proc counts it, over the packets that crossed);
- TCP: one iperf3 stream per client: aggregate Mbit/s.

Which relay carries which client is up6's ECMP choice (a hash of the addresses): the report
shows how many clients each relay got. With `--failover` (default on), the lab of the largest N
also measures a relay killed (-9) and one drained (SIGTERM) under a stream of echoes
(lab.anycast_failover.stop_relay_under_ping), and a relay cut off silently (BFD).

With `--datapath kernel,user` (default auto) every relay count is measured with the relays
started with each --datapath in turn. Per run, each relay's data path (`teredo status --json`,
key "datapath") and, over the UDP run, the packets it encapsulated in the kernel (its programs'
counter "encap") and in Python (to_teredo less encap); beside the relay processes' CPU per
packet, the whole lab's (bench/labcpu.py, as bench.path: every process of the lab's namespaces
+ ksoftirqd less its rate before): on the kernel path the forwarding runs in softirq, charged to
the senders and ksoftirqd, which the relay processes' own CPU does not see.

The machine has 2 cores: 3 relays cannot scale 3x here; the CPU per packet is the figure the
scaling model of docs/scale.md uses. The last line is one JSON record.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from bench import labcpu
from bench.lab_bench import (
    BenchError,
    cpu_seconds,
    format_table,
    interrupt_on_sigterm,
    json_line,
    load_average,
    parse_iperf3_tcp,
    parse_iperf3_udp,
    require_root,
    tree_pids,
    wait_tcp_listen,
)
from teredo.lab import anycast, anycast_failover
from teredo.lab.nat import NatKind
from teredo.lab.roles import Impl
from teredo.lab.topology import TEREDO_PREFIX, Lab

PREFIX = "tda-"
BASE_PORT = 5301
PAYLOAD = 64


@dataclass(frozen=True)
class RelayCounts:
    """What one relay's `teredo status --json` says of its data path and traffic."""

    datapath: str
    kernel_encap: int  # encapsulated by its tc program (kernel counter "encap")
    kernel_decap: int
    to_teredo: int  # in all, kernel and Python (relay_driver.status adds the kernel's)
    from_teredo: int

    @property
    def python_encap(self) -> int:
        return self.to_teredo - self.kernel_encap

    @property
    def python_decap(self) -> int:
        return self.from_teredo - self.kernel_decap

    def since(self, before: RelayCounts) -> RelayCounts:
        return RelayCounts(
            self.datapath,
            self.kernel_encap - before.kernel_encap,
            self.kernel_decap - before.kernel_decap,
            self.to_teredo - before.to_teredo,
            self.from_teredo - before.from_teredo,
        )


def _map(value: object) -> Mapping[str, Any]:
    return value if isinstance(value, dict) else {}


def _int(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def parse_relay_status(docs: Sequence[Mapping[str, Any]] | None) -> RelayCounts:
    """The relay's counts from `teredo status --json` (a list of daemons' documents); "?" and
    zeros when no relay answered."""
    for doc in docs or []:
        st = doc.get("status")
        if doc.get("role", "relay") != "relay" or not isinstance(st, dict):
            continue
        counters = _map(st.get("counters"))
        k = _map(_map(st.get("kernel")).get("counters"))
        return RelayCounts(
            str(st.get("datapath", "user")),
            _int(k.get("encap")),
            _int(k.get("decap")),
            _int(counters.get("to_teredo")),
            _int(counters.get("from_teredo")),
        )
    return RelayCounts("?", 0, 0, 0, 0)


def _relay_counts(lab: Lab, relays: int) -> list[RelayCounts]:
    return [
        parse_relay_status(lab.daemon_status(anycast.relay_host(i))) for i in range(1, relays + 1)
    ]


def _relay_pids(lab: Lab, relays: int) -> list[int]:
    pids: list[int] = []
    for i in range(1, relays + 1):
        record = anycast.daemon_record(lab, anycast.relay_host(i))
        if record is None or not record.alive():
            raise BenchError(f"relay{i} is not running\n{lab.log_tail(f'relay{i}')}")
        pids += tree_pids(record.pid)
    return pids


def _concurrent_iperf3(
    lab: Lab,
    targets: Sequence[tuple[str, str]],
    args: Sequence[str],
    seconds: float,
    started: Callable[[], None] | None = None,
) -> list[str]:
    """One iperf3 server per (client host, address), one client each in the native host, all
    at once; their JSON outputs. `started` is called once the servers listen, just before the
    clients start (a CPU sample: the `ss` polls before it stay out); every iperf3 is reaped
    before this returns."""
    servers = []
    for k, (host, address) in enumerate(targets):
        port = BASE_PORT + k
        servers.append(
            lab.popen(
                host,
                ["iperf3", "-s", "-1", "-B", address, "-p", str(port)],
                name=f"iperf3-s-{host}",
            )
        )
        wait_tcp_listen(lab, host, port)
    if started is not None:
        started()
    clients = [
        lab.popen(
            "native",
            [
                *("iperf3", "-c", address, "-p", str(BASE_PORT + k), "-t", f"{seconds:g}"),
                *("-J", "--connect-timeout", "5000", *args),
            ],
            name=f"iperf3-c-{k}",
            stdout=subprocess.PIPE,
        )
        for k, (_, address) in enumerate(targets)
    ]
    outputs = []
    try:
        for proc in clients:
            out, _ = proc.communicate(timeout=seconds + 30)
            outputs.append(out.decode(errors="replace"))
    finally:
        for proc in [*clients, *servers]:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=5)
    return outputs


def measure(
    lab: Lab, relays: int, clients: int, seconds: float, udp_pps: int, *, idle: float = 1.0
) -> dict[str, object]:
    addresses = [str(lab.wait_qualified(i, timeout=30).address) for i in range(1, clients + 1)]
    carriers = [anycast.carrying_relay(lab, a) for a in addresses]
    targets = [(f"client{i}", a) for i, a in enumerate(addresses, start=1)]
    pids = _relay_pids(lab, relays)
    per_client_bits = udp_pps // clients * PAYLOAD * 8
    namespaces = [lab.ns(h) for h in lab.hosts()]
    tick = os.sysconf("SC_CLK_TCK")
    counts0 = _relay_counts(lab, relays)  # outside the sample: `teredo status` is our child
    base0 = labcpu.sample(namespaces)
    time.sleep(idle)
    base1 = labcpu.sample(namespaces)
    ksoftirqd_rate = (base1.ksoftirqd - base0.ksoftirqd) / tick / idle
    mark: dict[str, Any] = {}

    def started() -> None:
        mark["lab"], mark["cpu"], mark["t"] = labcpu.sample(namespaces), cpu_seconds(pids), 0.0
        mark["t"] = time.monotonic()

    udp = _concurrent_iperf3(
        lab, targets, ["-u", "-l", str(PAYLOAD), "-b", str(per_client_bits)], seconds, started
    )
    wall = time.monotonic() - float(mark["t"])
    cpu = cpu_seconds(pids) - float(mark["cpu"])
    lab_cpu = labcpu.between(mark["lab"], labcpu.sample(namespaces))
    lab_total = lab_cpu.total(ksoftirqd_rate * wall)
    counts = [c.since(b) for c, b in zip(_relay_counts(lab, relays), counts0, strict=True)]
    received = sum(parse_iperf3_udp(text, PAYLOAD).received for text in udp)
    udp_seconds = max(parse_iperf3_udp(text, PAYLOAD).seconds for text in udp)
    tcp = _concurrent_iperf3(lab, targets, [], seconds)
    mbps = sum(parse_iperf3_tcp(text).receiver_bps for text in tcp) / 1e6
    return {
        "relays": relays,
        "clients_per_relay": {
            anycast.relay_host(i): carriers.count(anycast.relay_host(i))
            for i in range(1, relays + 1)
        },
        "udp_pps": received / udp_seconds if udp_seconds else None,
        "udp_offered_pps": udp_pps,
        "relay_cpu_pct": 100.0 * cpu / wall,
        "relay_us_per_pkt": 1e6 * cpu / received if received else None,
        "lab_us_per_pkt": 1e6 * lab_total / received if received else None,
        "lab_ksoftirqd_us_per_pkt": (
            1e6 * max(0.0, lab_cpu.ksoftirqd - ksoftirqd_rate * wall) / received
            if received
            else None
        ),
        "datapaths": [c.datapath for c in counts],
        "kernel_encap": sum(c.kernel_encap for c in counts),
        "python_encap": sum(c.python_encap for c in counts),
        "kernel_decap": sum(c.kernel_decap for c in counts),
        "python_decap": sum(c.python_decap for c in counts),
        "per_relay": [c.__dict__ for c in counts],
        "tcp_mbps": mbps,
    }


def failover(lab: Lab, spec: anycast.AnycastSpec, address: str) -> dict[str, object]:
    relays = spec.relays
    results: dict[str, object] = {}
    killed = anycast_failover.stop_relay_under_ping(lab, address, signal.SIGKILL)
    print(f"  {killed.line()}")
    results["kill9"] = killed.__dict__ | {"outage_seconds": killed.outage_seconds}
    anycast.start_relay(lab, int(killed.relay.removeprefix("relay")), spec)
    anycast.wait_paths(lab, "up6", TEREDO_PREFIX, relays, timeout=30)
    drained = anycast_failover.stop_relay_under_ping(lab, address, signal.SIGTERM, seconds=3.0)
    print(f"  {drained.line()}")
    results["sigterm"] = drained.__dict__ | {"outage_seconds": drained.outage_seconds}
    anycast.start_relay(lab, int(drained.relay.removeprefix("relay")), spec)
    anycast.wait_paths(lab, "up6", TEREDO_PREFIX, relays, timeout=30)
    victim = anycast.carrying_relay(lab, address)
    if victim is not None:
        index = int(victim.removeprefix("relay"))
        anycast.cut_relay(lab, index)
        try:
            took = anycast.wait_paths(lab, "up6", TEREDO_PREFIX, relays - 1, timeout=30)
        finally:
            anycast.heal_relay(lab, index)
        print(f"  {victim} cut off: withdrawn by BFD in {took * 1000:.0f} ms")
        results["bfd_withdraw_seconds"] = took
    return results


def run(
    relays: int, args: argparse.Namespace, with_failover: bool, datapath: str = "auto"
) -> dict[str, object]:
    spec = anycast.AnycastSpec(relays, 0, datapath=datapath)
    spec.check()
    lab = Lab(
        args.prefix,
        [NatKind.NONE] * args.clients,
        server_impl=Impl.TEREDO,
        relay_impl=None,
        client_impl=None,
    )
    try:
        anycast.up(lab, spec, [Impl.MIREDO] * args.clients)
        result = measure(lab, relays, args.clients, args.seconds, args.udp_pps, idle=args.idle)
        result["datapath"] = datapath
        if with_failover and relays >= 2:
            address = str(lab.wait_qualified(1, timeout=30).address)
            result["failover"] = failover(lab, spec, address)
        return result
    finally:
        lab.down()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench.bench_anycast", description=__doc__)
    parser.add_argument("--relays", default="1,2,3", help="relay counts (default 1,2,3)")
    parser.add_argument("--clients", type=int, default=6, help="Miredo clients (default 6)")
    parser.add_argument("--seconds", type=float, default=4.0, help="per iperf3 run (default 4)")
    parser.add_argument("--udp-pps", type=int, default=120000, help="offered in all")
    parser.add_argument("--no-failover", action="store_true", help="throughput only")
    parser.add_argument(
        "--datapath",
        default="auto",
        help="the relays' --datapath, comma-separated to measure each: auto, kernel, user",
    )
    parser.add_argument(
        "--idle", type=float, default=1.0, help="s of ksoftirqd base rate before each run"
    )
    parser.add_argument("--prefix", default=PREFIX, help=f"namespace prefix (default {PREFIX})")
    args = parser.parse_args(argv)
    require_root()
    interrupt_on_sigterm()
    counts = [int(n) for n in args.relays.split(",")]
    modes = [m.strip() for m in args.datapath.split(",") if m.strip()]
    for mode in modes:
        anycast.AnycastSpec(1, 0, datapath=mode).check()
    rows, results = [], []
    for k, mode in enumerate(modes):
        for n in counts:
            print(f"-- {n} relay(s), --datapath {mode} ...", flush=True)
            last = k == len(modes) - 1 and n == max(counts)
            result = run(n, args, with_failover=not args.no_failover and last, datapath=mode)
            results.append(result)
            rows.append(
                [
                    n,
                    mode,
                    ",".join(str(d) for d in result["datapaths"]),  # type: ignore[attr-defined]
                    result["clients_per_relay"],
                    result["udp_pps"],
                    f"{result['kernel_encap']}/{result['python_encap']}",
                    result["relay_cpu_pct"],
                    result["relay_us_per_pkt"],
                    result["lab_us_per_pkt"],
                    result["tcp_mbps"],
                ]
            )
    print(f"\n== anycast relays  (load {load_average()})")
    headers = [
        "relays",
        "--datapath",
        "data path (status)",
        "clients per relay",
        "UDP 64 B pkt/s",
        "encap kernel/Python",
        "relays CPU %",
        "relay us/pkt",
        "lab us/pkt",
        "TCP Mbit/s",
    ]
    print(format_table(headers, rows))
    print(f"   lab us/pkt: {labcpu.METHOD}")
    print(
        json_line(
            "anycast",
            {
                "clients": args.clients,
                "seconds": args.seconds,
                "cpu_method": labcpu.METHOD,
                "runs": results,
            },
        )
    )
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except (BenchError, KeyboardInterrupt) as exc:
        print(f"bench_anycast: {exc}", file=sys.stderr)
        sys.exit(1)
