"""Relay side by side: `python -m bench.bench_relay [--impl both|miredo|teredo]` (root).

Namespaces: `tdb-` by default; `--prefix tdq-` gives `tdq-...` and `tdq-fk` instead.

For each implementation of the relay (Miredo's, then ours), a lab `tdb-` is built with a Miredo
server, the relay under test and one Miredo client behind a port-restricted NAT, then:

- transfer: TCP throughput native host <-> client through the relay, both directions (iperf3
  -J), and the small-packet rate (iperf3 UDP, 64-byte payloads, offered at `--udp-pps`), with
  the relay's CPU (and the client's, to see which one was the bottleneck);
- memory (`--peers N`, 0 to skip): relay resident memory per peer. A second lab (no client) gets
  a fake-server host `tdb-fk` (198.51.100.30, mapped addresses 198.51.100.64-79 on the bridge of
  the server and relay); the native host sends one datagram to each of N Teredo addresses that
  embed it (bench.fakeclients send), so the relay creates a peer, queues the datagram and sends
  an indirect bubble to the fake server, whose answerer (bench.fakeclients answer) replies with a
  direct bubble from the embedded mapping; the relay then trusts the peer and sends the queued
  datagram (dropped by an nft rule in tdb-fk). Peers created = distinct peers answered (the same
  count for both implementations); memory = growth of the relay's VmRSS (daemon and children).
  For ours, the relay's own peer count is also read from its SIGUSR1 summary when it logs one.

Miredo's peer list forgets a peer 30 to 60 s after its last use (two generations of 30 s), so
the peers must be created within about 30 s for all of them to be resident at once: the JSON
reports the creation time and the peak RSS sampled every 0.2 s.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.lab_bench import (
    FAKE_SERVER,
    MAPPED_COUNT,
    MAPPED_FIRST,
    MAX_FAKE_PEERS,
    PREFIX,
    BenchError,
    bench_lab,
    bpf_map_memlock,
    impl_available,
    interrupt_on_sigterm,
    load_average,
    parse_impls,
    parse_link_drops,
    parse_snmp_udp,
    print_report,
    require_root,
    role_pids,
    rss_bytes,
    run_rounds,
    transfer_metric_labels,
    transfer_metrics,
)
from bench.path import veth_offload_off
from teredo.core.peers import MIREDO_MAX_PEERS
from teredo.lab import system
from teredo.lab.roles import RELAY_PORT, TUN_NAME, Impl, Role, command
from teredo.lab.topology import Lab

#: The fake-clients namespace's name after the lab prefix (`tdb-fk` by default).
FAKE_SUFFIX = "fk"
REPO = Path(__file__).resolve().parent.parent
PEER_COUNT_RE = re.compile(r"\bpeers (\d+)/\d+")
CAPACITY_RE = re.compile(r"peer table: (\d+) peers")


def fake_ns(lab: Lab) -> str:
    """The fake-clients namespace of `lab`: under the lab's prefix, so Lab.down deletes it."""
    return lab.prefix + FAKE_SUFFIX


def _our_kernel_counters(lab: Lab) -> dict[str, float | None]:
    """Our relay's data path and what its kernel programs carried (`teredo status`)."""
    got = lab.exec("relay", [sys.executable, "-m", "teredo", "status", "--json"], check=False)
    docs = json.loads(got.stdout or "[]") if got.returncode == 0 else []
    status: dict[str, Any] = next((d["status"] for d in docs if d.get("role") == "relay"), {})
    kernel: dict[str, Any] = (status.get("kernel") or {}).get("counters") or {}
    return {
        "kernel_datapath": 1.0 if status.get("datapath") == "kernel" else 0.0,
        "kernel_encap": float(kernel.get("encap", 0)),
        "kernel_decap": float(kernel.get("decap", 0)),
        "python_to_teredo": float(status.get("counters", {}).get("to_teredo", 0))
        - float(kernel.get("encap", 0)),
        "python_from_teredo": float(status.get("counters", {}).get("from_teredo", 0))
        - float(kernel.get("decap", 0)),
    }


def run_transfer(impl: str, args: argparse.Namespace) -> dict[str, float | None]:
    ours = impl == "teredo"
    relay = None if ours else impl
    with bench_lab(server="miredo", relay=relay, client="miredo", prefix=args.prefix) as lab:
        if args.offload == "off":
            veth_offload_off(lab)
        if ours:
            # Started here so that `--datapath` reaches it (the lab starts it without flags).
            lab.start(Role.RELAY, Impl.TEREDO, extra=["--datapath", args.datapath])
            wait_relay_ready(lab)
        info = lab.wait_qualified(1, timeout=30)
        results: dict[str, float | None] = {"load1": float(load_average().split()[0])}
        results.update(
            transfer_metrics(
                lab,
                daemon_host="relay",
                other_host="client1",
                client_addr=str(info.address),
                seconds=args.seconds,
                udp_pps=args.udp_pps,
            )
        )
        if ours:
            results.update(_our_kernel_counters(lab))
        return results


def _mapped_addresses() -> list[str]:
    a, b, c, d = (int(x) for x in MAPPED_FIRST.split("."))
    return [f"{a}.{b}.{c}.{d + i}" for i in range(MAPPED_COUNT)]


def add_fake_host(lab: Lab) -> None:
    """The namespace <prefix>fk on the servers' bridge; Lab.down deletes it with the prefix."""
    ns = fake_ns(lab)
    system.run(["ip", "netns", "add", ns])
    system.ip_batch(
        lab.ns("wan"),
        [
            f"link add fk type veth peer name eth0 netns {ns}",
            "link set fk master bs",
            "link set fk up",
        ],
    )
    addrs = [f"addr add {FAKE_SERVER}/24 dev eth0"]
    addrs += [f"addr add {ip}/32 dev eth0" for ip in _mapped_addresses()]
    system.ip_batch(ns, ["link set lo up", *addrs, "link set eth0 up"])
    # The relay sends each peer's queued datagram to its mapping once trusted: drop those
    # silently here rather than answer each with an ICMP port unreachable.
    ruleset = (
        "table inet tdbfk {\n chain input {\n  type filter hook input priority 0; policy accept;\n"
        f"  udp dport != {3544} counter drop\n }}\n}}\n"
    )
    system.run(["ip", "netns", "exec", ns, "nft", "-f", "-"], input_text=ruleset)


def delivered_to_mappings(lab: Lab) -> int:
    """Datagrams the relay sent to the fake peers' mappings (the nft counter in <prefix>fk): the
    relay sends a peer's queued datagram only once it trusts the peer (RFC 4380 section 5.4.2),
    so this proves the bubbles were accepted."""
    ns = fake_ns(lab)
    out = system.run(["ip", "netns", "exec", ns, "nft", "list", "table", "inet", "tdbfk"])
    found = re.search(r"counter packets (\d+)", out.stdout)
    return int(found.group(1)) if found else 0


def drop_counters(lab: Lab) -> dict[str, int]:
    """Where datagrams are lost: the relay's TUN queue (native traffic it did not read in time),
    the relay's and the answerer's UDP receive buffers (bubbles)."""
    tun = lab.exec("relay", ["ip", "-s", "-j", "link", "show", "dev", TUN_NAME])
    relay_udp = parse_snmp_udp(lab.exec("relay", ["cat", "/proc/net/snmp"]).stdout)
    fake = system.run(["ip", "netns", "exec", fake_ns(lab), "cat", "/proc/net/snmp"])
    return {
        "tun_dropped": parse_link_drops(tun.stdout)[1],
        "relay_rcvbuf_errors": relay_udp.get("RcvbufErrors", 0),
        "answerer_rcvbuf_errors": parse_snmp_udp(fake.stdout).get("RcvbufErrors", 0),
    }


def _read_stats(path: Path) -> dict[str, int]:
    with contextlib.suppress(OSError, ValueError):
        data = json.loads(path.read_text(encoding="ascii"))
        if isinstance(data, dict):
            return {k: int(v) for k, v in data.items() if isinstance(v, (int, float))}
    return {}


def _relay_logged_peers(lab: Lab, pids: list[int]) -> tuple[int | None, int | None]:
    """Ask our relay for its summary (SIGUSR1) and read from its log the peers in its table now
    ("peers N/C") and its capacity, logged at start ("peer table: C peers at most")."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pids[0], signal.SIGUSR1)
    time.sleep(0.5)
    log = lab.log_tail("relay", lines=1000)
    found = PEER_COUNT_RE.findall(log)
    capacity = CAPACITY_RE.findall(log)
    return (int(found[-1]) if found else None), (int(capacity[-1]) if capacity else None)


def wait_relay_ready(lab: Lab, timeout: float = 30.0) -> None:
    """Until the relay's UDP port is bound (ours allocates its peer table before that)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        out = lab.exec("relay", ["ss", "-Hlun", f"sport = :{RELAY_PORT}"], check=False)
        if out.stdout.strip():
            time.sleep(0.5)  # Miredo: its unprivileged child finishes starting
            return
        time.sleep(0.05)
    raise BenchError(
        f"the relay did not bind UDP {RELAY_PORT} in {timeout} s\n{lab.log_tail('relay')}"
    )


def start_our_relay(lab: Lab, capacity: int, name: str, extra: Sequence[str] = ()) -> None:
    """Restart the lab's relay as ours with a peer table of `capacity` (`--peers`)."""
    lab.stop("relay")
    conf = lab.state_dir / "relay.conf"
    argv = [*command(Role.RELAY, Impl.TEREDO, conf, lab.state_dir / "relay.pid")]
    argv += ["--peers", str(capacity), *extra]
    lab.popen("relay", argv, name=name, role="relay", impl="teredo")
    wait_relay_ready(lab)


#: Every fake peer names the same fake server: lift ours' per-server bubble limit (200/s,
#: section 7.4 reflection guard) so that peers are created at `--rate`, as with Miredo.
BENCH_SERVER_BUBBLE_RATE = 1e9


def minimal_relay_rss(lab: Lab) -> int:
    """RSS of our relay started with a one-peer table, idle: the interpreter and code, which a
    per-peer figure must not count. Ours grows its table with the peers (`--peers` is only the
    capacity, default Miredo's 1,048,576), so this is close to its idle RSS at any capacity."""
    start_our_relay(lab, 1, "relay-minimal")
    try:
        return rss_bytes(role_pids(lab, "relay"))
    finally:
        lab.stop("relay")


def run_memory(impl: str, args: argparse.Namespace) -> dict[str, float | None]:
    with bench_lab(server="miredo", relay=impl, client=None, nats=(), prefix=args.prefix) as lab:
        baseline: int | None = None
        if impl == "teredo":
            baseline = minimal_relay_rss(lab)
            extra = ["--server-bubble-rate", f"{BENCH_SERVER_BUBBLE_RATE:g}"]
            if args.teredo_peer_timeout:
                extra += ["--peer-timeout", str(args.teredo_peer_timeout)]
            capacity = args.teredo_capacity or MIREDO_MAX_PEERS
            start_our_relay(lab, capacity, "relay-sized", extra)
        wait_relay_ready(lab)
        add_fake_host(lab)
        stats_path = lab.state_dir / "fakeclients.json"
        rate = args.rate_teredo if impl == "teredo" and args.rate_teredo else args.rate
        max_seconds = args.peers / rate + 60
        answerer = subprocess.Popen(
            [
                "ip",
                "netns",
                "exec",
                fake_ns(lab),
                sys.executable,
                "-m",
                "bench.fakeclients",
                "answer",
                "--stats",
                str(stats_path),
                "--max-seconds",
                str(max_seconds + 30),
            ],
            cwd=REPO,
        )
        try:
            deadline = time.monotonic() + 10
            while not stats_path.exists():
                if answerer.poll() is not None or time.monotonic() > deadline:
                    raise BenchError("the fake-clients answerer did not start")
                time.sleep(0.05)
            pids = role_pids(lab, "relay")
            drops0 = drop_counters(lab)
            rss0 = rss_bytes(pids)
            memlock0 = bpf_map_memlock(pids)
            if baseline is None:  # Miredo's Judy arrays grow with the peers: idle = baseline
                baseline = rss0
            t0 = time.monotonic()
            sender = lab.popen(
                "native",
                [
                    sys.executable,
                    "-m",
                    "bench.fakeclients",
                    "send",
                    "--count",
                    str(args.peers),
                    "--rate",
                    str(rate),
                    "--max-seconds",
                    str(max_seconds),
                ],
                name="sender",
                stdout=subprocess.PIPE,
            )
            peak = rss0
            last_unique, last_change = -1, time.monotonic()
            # Until the sender is done and the answers stopped growing for 2 s (bounded).
            hard_stop = t0 + max_seconds + 30
            while time.monotonic() < hard_stop:
                time.sleep(0.2)
                peak = max(peak, rss_bytes(pids))
                unique = _read_stats(stats_path).get("unique", 0)
                if unique != last_unique:
                    last_unique, last_change = unique, time.monotonic()
                if sender.poll() is not None and time.monotonic() - last_change > 2.0:
                    break
            created_in = last_change - t0
            rss1 = rss_bytes(pids)
            memlock1 = bpf_map_memlock(pids)
            out, _ = sender.communicate(timeout=10)
            sent = json.loads(out.decode() or "{}").get("sent")
            logged, capacity = _relay_logged_peers(lab, pids) if impl == "teredo" else (None, None)
            stats = _read_stats(stats_path)
            delivered = delivered_to_mappings(lab)
            drops1 = drop_counters(lab)
        finally:
            if answerer.poll() is None:
                answerer.terminate()
            try:
                answerer.wait(timeout=5)
            except subprocess.TimeoutExpired:
                answerer.kill()
                answerer.wait(timeout=5)
    # Peers alive in the table: ours says so itself; for Miredo, those that were answered.
    peers = logged if logged is not None else stats.get("unique", 0)
    return {
        "load1": float(load_average().split()[0]),
        "rate": rate,
        "peers_sent": sent,
        "peers_answered": stats.get("unique", 0),
        "peers_logged": logged,
        "bubbles_received": stats.get("received"),
        "delivered": delivered,
        "answer_errors": stats.get("send_errors"),
        **{key: float(drops1[key] - drops0[key]) for key in drops0},
        "creation_s": created_in,
        "created_per_s": stats.get("unique", 0) / created_in if created_in > 0 else None,
        "rss_before_mib": rss0 / 2**20,
        "rss_after_mib": rss1 / 2**20,
        "rss_peak_mib": peak / 2**20,
        "rss_baseline_mib": baseline / 2**20,
        "capacity": capacity,
        # Ours grows its table with the peers: near 0 (it used to preallocate ~70 B a slot).
        "bytes_per_slot": (rss0 - baseline) / capacity if capacity else None,
        "growth_bytes_per_peer": (rss1 - rss0) / peers if peers else None,
        "bytes_per_peer": (rss1 - baseline) / peers if peers else None,
        "peak_bytes_per_peer": (peak - baseline) / peers if peers else None,
        # The kernel maps count too (issue 8): bytes_memlock of the maps the relay holds.
        "memlock_before_mib": memlock0 / 2**20,
        "memlock_after_mib": memlock1 / 2**20,
        "memlock_bytes_per_peer": (memlock1 - memlock0) / peers if peers else None,
        "total_bytes_per_peer": (rss1 - rss0 + memlock1 - memlock0) / peers if peers else None,
    }


TRANSFER = transfer_metric_labels("client")
#: Ours only: what its kernel programs carried (all runs of the round added up).
KERNEL = (
    ("kernel_datapath", "ours: kernel data path (1) or Python (0)"),
    ("kernel_encap", "ours: packets encapsulated by the kernel"),
    ("kernel_decap", "ours: packets decapsulated by the kernel"),
    ("python_to_teredo", "ours: native->Teredo packets in Python"),
    ("python_from_teredo", "ours: Teredo->native packets in Python"),
)
MEMORY = (
    ("rate", "datagrams offered per second"),
    ("peers_sent", "datagrams sent (one per peer)"),
    ("peers_answered", "peers answered (created)"),
    ("peers_logged", "peers in the relay's summary"),
    ("bubbles_received", "indirect bubbles received"),
    ("delivered", "queued datagrams delivered"),
    ("answer_errors", "answers not sent (errors)"),
    ("tun_dropped", "dropped at the relay's TUN queue"),
    ("relay_rcvbuf_errors", "dropped at relay UDP rcvbuf"),
    ("answerer_rcvbuf_errors", "dropped at answerer rcvbuf"),
    ("creation_s", "creation time s"),
    ("created_per_s", "peers answered per second"),
    ("capacity", "table capacity"),
    ("rss_baseline_mib", "relay RSS baseline MiB"),
    ("rss_before_mib", "relay RSS before MiB"),
    ("rss_after_mib", "relay RSS after MiB"),
    ("rss_peak_mib", "relay RSS peak MiB"),
    ("bytes_per_slot", "(RSS before - baseline)/capacity"),
    ("growth_bytes_per_peer", "RSS growth bytes per peer"),
    ("bytes_per_peer", "RSS - baseline, bytes per peer"),
    ("peak_bytes_per_peer", "peak RSS - baseline, B/peer"),
    ("memlock_before_mib", "BPF maps bytes_memlock before MiB"),
    ("memlock_after_mib", "BPF maps bytes_memlock after MiB"),
    ("memlock_bytes_per_peer", "bytes_memlock growth per peer"),
    ("total_bytes_per_peer", "RSS + memlock growth per peer"),
    ("load1", "load average (1 min)"),
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.bench_relay", description=__doc__)
    parser.add_argument("--impl", default="both", help="miredo, teredo or both (default)")
    parser.add_argument("--seconds", type=float, default=3.0, help="per iperf3 run (default 3)")
    parser.add_argument("--udp-pps", type=int, default=100_000, help="offered UDP packets/s")
    parser.add_argument("--rounds", type=int, default=1, help="transfer rounds (medians)")
    parser.add_argument("--peers", type=int, default=100_000, help="peers created (0: skip)")
    parser.add_argument("--rate", type=float, default=20_000.0, help="peers created per second")
    parser.add_argument(
        "--teredo-capacity",
        type=int,
        default=0,
        help="start our relay with --peers N (0: its default, Miredo's 1,048,576)",
    )
    parser.add_argument(
        "--rate-teredo", type=float, default=0.0, help="a different --rate for ours (0: same)"
    )
    parser.add_argument(
        "--teredo-peer-timeout",
        type=float,
        default=0.0,
        help="start our relay with --peer-timeout S (0: its default, 30 s), so that peers "
        "created more slowly than 1/30 of --peers a second are all alive at the end",
    )
    parser.add_argument(
        "--tests", default="transfer,memory", help="transfer, memory (default both)"
    )
    parser.add_argument(
        "--datapath",
        default="auto",
        choices=("auto", "kernel", "user"),
        help="our relay's data path in the transfer test (default auto: the kernel's eBPF "
        "programs where they load)",
    )
    parser.add_argument(
        "--offload",
        default="keep",
        choices=("keep", "off"),
        help="tx checksum/TSO offload of the lab's veths in the transfer test (off: as a real "
        "NIC delivers, so that the kernel programs see complete checksums; bench/path.py)",
    )
    parser.add_argument(
        "--prefix",
        default=PREFIX,
        help=f"namespace prefix of the labs (default {PREFIX}); the fake clients live in "
        f"<prefix>{FAKE_SUFFIX}. Runs at the same time need different prefixes.",
    )
    args = parser.parse_args(argv)
    tests = set(args.tests.split(","))
    if not tests or not tests <= {"transfer", "memory"}:
        parser.error("--tests: a comma-separated list of transfer, memory")
    if not 0 < args.seconds <= 60 or not 0 < args.udp_pps <= 2_000_000:
        parser.error("--seconds must be in (0, 60] and --udp-pps in (0, 2000000]")
    if not 0 <= args.peers <= MAX_FAKE_PEERS or not 0 < args.rate <= 1e6:
        parser.error(f"--peers must be in 0..{MAX_FAKE_PEERS} and --rate in (0, 1000000]")
    if not 0 <= args.teredo_capacity < 1 << 30:
        parser.error("--teredo-capacity must be in 0..2**30-1")
    if not 1 <= args.rounds <= 20:
        parser.error("--rounds must be 1..20")
    if args.teredo_peer_timeout and not 30 <= args.teredo_peer_timeout <= 86400:
        parser.error("--teredo-peer-timeout must be 0 or in [30, 86400]")
    if not 0 <= args.rate_teredo <= 1e6:
        parser.error("--rate-teredo must be in [0, 1000000]")
    try:
        system.check_prefix(args.prefix)
    except system.LabError as exc:
        parser.error(f"--prefix: {exc}")
    try:
        impls = parse_impls(args.impl)
        require_root()
        interrupt_on_sigterm()
    except (ValueError, BenchError) as exc:
        print(f"bench_relay: {exc}", file=sys.stderr)
        return 2
    # The fake clients run as `python -m bench.fakeclients` in lab namespaces: from any cwd.
    os.environ["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p
    )
    notes: list[str] = []
    for impl in list(impls):
        if not impl_available(impl, "relay"):
            notes.append(f"{impl}: `teredo relay` is not registered in cli/main.py yet")
            impls.remove(impl)
    transfer: dict[str, dict[str, float | None]] = {}
    memory: dict[str, dict[str, float | None]] = {}
    if "transfer" in tests:
        transfer = run_rounds(impls, args.rounds, lambda impl: run_transfer(impl, args), notes)
    if "memory" in tests and args.peers:
        # One round: a memory figure does not depend on the load, and 10^6 peers take minutes.
        memory = run_rounds(impls, 1, lambda impl: run_memory(impl, args), notes)
    for note in notes:
        print(f"note: {note}", file=sys.stderr)
    if "transfer" in tests:
        print_report(
            "relay-transfer",
            (*TRANSFER, *KERNEL, ("load1", "load average (1 min) at start")),
            transfer,
            {
                "seconds": args.seconds,
                "udp_pps_offered": args.udp_pps,
                "rounds": args.rounds,
                "datapath": args.datapath,
                "offload": args.offload,
                "notes": notes,
            },
        )
    if "memory" in tests and args.peers:
        print_report(
            "relay-memory",
            MEMORY,
            memory,
            {
                "peers": args.peers,
                "rate": args.rate,
                "rate_teredo": args.rate_teredo or None,
                "teredo_capacity": args.teredo_capacity or None,
                "teredo_peer_timeout": args.teredo_peer_timeout or None,
                "notes": notes,
            },
        )
    return 0 if (transfer or memory) and not notes else 1


if __name__ == "__main__":
    sys.exit(main())
