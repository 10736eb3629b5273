"""Anycast relays (issue 11): `python -m bench.bench_anycast [--relays 1,2,3]` (root).

Namespaces: `tda-` by default (`--prefix`).

For each relay count N, an anycast lab (teredo.lab.anycast: N relays of ours behind the BIRD
router up6, ECMP on 2001::/32; our server) with `--clients K` Miredo clients (no NAT: the relays,
not the clients or NATs, should be the bottleneck) is built, then the native host sends to every
client at once:

- UDP: 64-byte datagrams (bench/mmsgudp.py: sendmmsg/recvmmsg, one sender and one sink per
  client) offered at `--udp-pps` in all, split evenly over the clients, more than the relays
  carry here: the aggregate packets per second received, and the relays' CPU per packet (all
  relays' CPU time, softirq of their threads included as /proc counts it, over the packets
  that crossed);
- UDP again at `--cpu-pps` in all (default 6000), which every path carries with little or no
  loss: the CPU per packet, of the relay processes and of the whole lab (below), without the
  CPU spent on datagrams that the saturated run dropped on the way;
- TCP: one iperf3 stream per client: aggregate Mbit/s.

Which relay carries which client is up6's ECMP choice (a hash of the addresses): the report
shows how many clients each relay got. With `--failover` (default on), the lab of the largest N
also measures a relay killed (-9) and one drained (SIGTERM) under a stream of echoes
(lab.anycast_failover.stop_relay_under_ping), and a relay cut off silently (BFD).

With `--datapath kernel,user` (default auto) every relay count is measured with the relays
started with each --datapath in turn. Per run, each relay's data path (`teredo status --json`,
key "datapath") and, over each UDP run, the packets it encapsulated in the kernel (its programs'
counter "encap") and in Python (to_teredo less encap); beside the relay processes' CPU per
packet, the whole lab's (bench/labcpu.py, as bench.path: every process of the lab's namespaces
+ ksoftirqd less its rate before; the UDP ends are up before the sample starts, and their
start-up stays out of it): on the kernel path the forwarding runs in softirq, charged to the
senders and ksoftirqd, which the relay processes' own CPU does not see. "less lab idle" (and
the JSON's *_net_*) also takes off the lab processes' rate over `--idle` s without traffic
(BFD, BGP, timers). Where the saturated run lost datagrams at the relays' TUNs (the Python
path's queue toward the daemon): "tun_tx_dropped".

Before measuring, `ethtool -K DEV tx off` on every veth of the lab (bench.path's
veth_offload_off; `--offload keep` leaves them): with checksum offload the native host's
datagrams reach the relays' tc program as CHECKSUM_PARTIAL, which it passes up to Python, so
`--datapath kernel` would forward nothing in the kernel (encap 0); a real NIC delivers
complete checksums.

Why not iperf3 for UDP (as before 2026-12-07): iperf3 3.12 sets up each UDP stream with one
datagram each way, never sent again, and gives up 30 s later ("unable to read from stream
socket: Resource temporarily unavailable", EAGAIN of its SO_RCVTIMEO): with six clients started
together, the streams already running fill the queue of a saturated relay (its TUN's on the
Python path: 321,239 of 360,000 dropped there in one run) that a later client's set-up datagram
must pass, and its run never starts. The sinks and senders of mmsgudp are all up before any
sends ("go" on their stdin). The TCP run still uses iperf3 (TCP retransmits its handshake); a
client still running `--seconds` + 10 s after the start is killed and the run repeated (3 tries;
"iperf3_retries" in the JSON).

The machine has 2 cores: 3 relays cannot scale 3x here; the CPU per packet is the figure the
scaling model of docs/scale.md uses. The last line is one JSON record.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import labcpu
from bench.lab_bench import (
    BenchError,
    cpu_seconds,
    format_table,
    interrupt_on_sigterm,
    json_line,
    load_average,
    median,
    parse_iperf3_tcp,
    parse_link_drops,
    reap,
    require_root,
    tree_pids,
    wait_tcp_listen,
)
from bench.path import veth_offload_off
from teredo.lab import anycast, anycast_failover
from teredo.lab.nat import NatKind
from teredo.lab.roles import TUN_NAME, Impl
from teredo.lab.topology import TEREDO_PREFIX, Lab

PREFIX = "tda-"
BASE_PORT = 5301
PAYLOAD = 64
#: Runs of the concurrent iperf3 clients when a stream fails to set up (_concurrent_iperf3).
SETUP_TRIES = 3
#: The figures of the CPU runs whose medians are reported (as cpu_KEY).
CPU_MEDIANS = (
    "received",
    "relay_cpu_pct",
    "relay_us_per_pkt",
    "relay_net_us_per_pkt",
    "lab_us_per_pkt",
    "lab_net_us_per_pkt",
    "lab_ksoftirqd_us_per_pkt",
    "kernel_encap",
    "python_encap",
    "tun_tx_dropped",
    "senders_user_us_per_pkt",
    "senders_system_us_per_pkt",
    "sinks_user_us_per_pkt",
    "sinks_system_us_per_pkt",
)
MMSG_TOOL = str(Path(__file__).with_name("mmsgudp.py"))
#: Seconds past `--seconds` after which a client still running is taken as stuck in set-up
#: (its TCP control connection is bounded by --connect-timeout 5000).
SETUP_MARGIN = 10.0


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


def _tun_tx_dropped(lab: Lab, relays: int) -> int:
    """Datagrams the relays' TUNs dropped toward the daemons (queue full), all relays: where a
    saturated Python path loses the native host's traffic."""
    total = 0
    for i in range(1, relays + 1):
        out = lab.exec(anycast.relay_host(i), ["ip", "-s", "-j", "link", "show", "dev", TUN_NAME])
        total += parse_link_drops(out.stdout)[1]
    return total


def _relay_pids(lab: Lab, relays: int) -> list[int]:
    pids: list[int] = []
    for i in range(1, relays + 1):
        record = anycast.daemon_record(lab, anycast.relay_host(i))
        if record is None or not record.alive():
            raise BenchError(f"relay{i} is not running\n{lab.log_tail(f'relay{i}')}")
        pids += tree_pids(record.pid)
    return pids


def stream_setup_failed(text: str) -> bool:
    """Whether an iperf3 client's `-J` output (empty if it was killed) says it never got its
    test going: killed while still setting up, or failed setting up its data stream. iperf3
    3.12 sets a UDP stream up with one datagram each way, never sent again, and waits 30 s
    for the answer (SO_RCVTIMEO) before failing with "unable to read from stream socket:
    Resource temporarily unavailable" (EAGAIN)."""
    if not text.strip():
        return True
    try:
        data = json.loads(text)
    except ValueError:
        return False
    error = data.get("error") if isinstance(data, dict) else None
    return isinstance(error, str) and ("stream" in error or "temporarily unavailable" in error)


def _iperf3_once(
    lab: Lab,
    targets: Sequence[tuple[str, str]],
    args: Sequence[str],
    seconds: float,
) -> list[str]:
    servers = []
    clients: list[subprocess.Popen[bytes]] = []
    outputs = []
    try:
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
        # Past the run's length and a margin, a client still running is stuck in its set-up
        # (stream_setup_failed): it is killed now, not 30 s later.
        deadline = time.monotonic() + seconds + SETUP_MARGIN
        for proc in clients:
            try:
                out, _ = proc.communicate(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                out, _ = proc.communicate(timeout=5)
            outputs.append(out.decode(errors="replace"))
    finally:
        for proc in [*clients, *servers]:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=5)
    return outputs


def _concurrent_iperf3(
    lab: Lab,
    targets: Sequence[tuple[str, str]],
    args: Sequence[str],
    seconds: float,
    retries: list[str],
) -> list[str]:
    """One iperf3 server per (client host, address), one client each in the native host, all
    at once (TCP: the UDP runs use _concurrent_mmsg); their JSON outputs, every iperf3 reaped
    before this returns. The aggregate needs every stream at once: when one never got going,
    all are run again, up to SETUP_TRIES times in all; each retry is noted in `retries`."""
    for attempt in range(1, SETUP_TRIES + 1):
        outputs = _iperf3_once(lab, targets, args, seconds)
        stuck = [
            host
            for (host, _), out in zip(targets, outputs, strict=True)
            if stream_setup_failed(out)
        ]
        if not stuck:
            return outputs
        note = f"attempt {attempt}: iperf3 to {','.join(stuck)} never started its stream"
        print(f"  {note}", flush=True)
        retries.append(note)
    raise BenchError(f"iperf3 set-up failed {SETUP_TRIES} times: {outputs[0][:300]!r}")


def parse_tool_count(text: str, word: str) -> int:
    """N from bench/mmsgudp.py's last words "sent N" / "received N" (`word`); BenchError when
    the tool said something else (it died, or was killed at the deadline)."""
    words = text.split()
    for k in range(len(words) - 2, -1, -1):
        if words[k] == word and words[k + 1].isdigit():
            return int(words[k + 1])
    raise BenchError(f"bench/mmsgudp.py said {text[-200:]!r}, not {word!r} N")


def _output(proc: subprocess.Popen[bytes], timeout: float) -> str:
    return proc.communicate(timeout=timeout)[0].decode(errors="replace")


def parse_stat_user_system(text: str) -> tuple[int, int]:
    """(utime, stime) in clock ticks from the contents of /proc/PID/stat."""
    # The command name (field 2) may hold spaces and parentheses: split after the last ')'.
    rest = text[text.rfind(")") + 2 :].split()
    return int(rest[11]), int(rest[12])  # fields 14 and 15 (rest[0] is field 3)


@dataclass(frozen=True)
class UdpRun:
    """One concurrent UDP run: per client, datagrams sent and received; the CPU seconds of the
    senders and of the sinks inside the sample, user and system apart (wait4 at their end,
    less what /proc said of them when the sample started). On the kernel path the senders'
    system time carries the whole forwarding chain (veth -> softirq in the sender's context):
    up6, the relay's tc program, the wan and the client host up to Miredo's socket."""

    sent: list[int]
    received: list[int]
    senders_user: float
    senders_system: float
    sinks_user: float
    sinks_system: float


def _refresh_peers(lab: Lab, targets: Sequence[tuple[str, str]]) -> None:
    """Two echoes to every client first: a reply refreshes the relay's peer entry. The UDP runs
    go one way only, and a peer not heard from for 30 s is no longer valid (RFC 4380 section
    5.2.4; the kernel passes its packets up at 29 s, docs/kernel.md): without this, a lab's
    later runs had part of their datagrams wait in the Python path for a new ping test."""
    pings = [
        lab.popen(
            "native",
            ["ping", "-6", "-n", "-q", "-c", "2", "-i", "0.2", "-W", "2", address],
            name=f"refresh-{host}",
        )
        for host, address in targets
    ]
    for proc in pings:
        reap(proc)


def _reap_with_usage(proc: subprocess.Popen[bytes], budget: float) -> tuple[str, float, float]:
    """The output of `proc` (one of ours) to its end, then its own rusage from wait4: (output,
    user s, system s). Killed after `budget` s."""
    watchdog = threading.Timer(budget, proc.kill)
    watchdog.start()
    try:
        assert proc.stdout is not None
        out = proc.stdout.read().decode(errors="replace")
        _, status, usage = os.wait4(proc.pid, 0)
    finally:
        watchdog.cancel()
    proc.returncode = os.waitstatus_to_exitcode(status)
    return out, usage.ru_utime, usage.ru_stime


def _stat_ticks(pids: Sequence[int]) -> tuple[int, int]:
    user = system = 0
    for pid in pids:
        with contextlib.suppress(OSError, ValueError, IndexError):
            u, s = parse_stat_user_system(Path(f"/proc/{pid}/stat").read_text(encoding="utf-8"))
            user, system = user + u, system + s
    return user, system


def _concurrent_mmsg(
    lab: Lab,
    targets: Sequence[tuple[str, str]],
    pps_each: float,
    seconds: float,
    started: Callable[[], None],
) -> UdpRun:
    """One bench/mmsgudp.py sink per (client host, address), one sender each in the native
    host at `pps_each` for `seconds`, all sending at once. No set-up datagram to lose
    (iperf3's UDP needs one each way per stream, stream_setup_failed): the senders start on
    "go", once every end is up; `started` is called just before."""
    _refresh_peers(lab, targets)
    budget = seconds + 20
    tick = os.sysconf("SC_CLK_TCK")
    procs: list[subprocess.Popen[bytes]] = []
    try:
        sinks = []
        for host, _ in targets:
            argv = [sys.executable, "-u", MMSG_TOOL, "recv", str(BASE_PORT), f"{seconds + 5:g}"]
            sinks.append(lab.popen(host, argv, name=f"mmsg-recv-{host}", stdout=subprocess.PIPE))
            procs.append(sinks[-1])
        senders = []
        for k, (_, address) in enumerate(targets):
            argv = [sys.executable, "-u", MMSG_TOOL, "send", address, str(BASE_PORT)]
            senders.append(
                lab.popen(
                    "native",
                    [*argv, f"{pps_each:g}", f"{seconds:g}"],
                    name=f"mmsg-send-{k}",
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                )
            )
            procs.append(senders[-1])
        for proc in procs:
            assert proc.stdout is not None
            if not proc.stdout.readline().startswith(b"ready"):
                raise BenchError("bench/mmsgudp.py did not start")
        send0 = _stat_ticks([p.pid for p in senders])
        sink0 = _stat_ticks([p.pid for p in sinks])
        started()
        for proc in senders:
            assert proc.stdin is not None
            proc.stdin.write(b"go\n")
            proc.stdin.flush()
            proc.stdin.close()
        sent_ends = [_reap_with_usage(p, budget) for p in senders]
        sink_ends = [_reap_with_usage(p, budget) for p in sinks]
    finally:
        for proc in procs:
            if proc.returncode is None and proc.poll() is None:
                proc.kill()
                proc.wait(timeout=5)
    return UdpRun(
        sent=[parse_tool_count(out, "sent") for out, _, _ in sent_ends],
        received=[parse_tool_count(out, "received") for out, _, _ in sink_ends],
        senders_user=max(0.0, sum(u for _, u, _ in sent_ends) - send0[0] / tick),
        senders_system=max(0.0, sum(s for _, _, s in sent_ends) - send0[1] / tick),
        sinks_user=max(0.0, sum(u for _, u, _ in sink_ends) - sink0[0] / tick),
        sinks_system=max(0.0, sum(s for _, _, s in sink_ends) - sink0[1] / tick),
    )


@dataclass
class LabSampler:
    """The CPU and the relays' counters around each run (labcpu: the lab's processes and
    ksoftirqd less its rate before), and the idle rates of the lab's processes, of the relays
    and of ksoftirqd, measured once over `idle` seconds without traffic."""

    lab: Lab
    relays: int
    pids: list[int]
    idle: float

    def __post_init__(self) -> None:
        self.namespaces = [self.lab.ns(h) for h in self.lab.hosts()]
        tick = os.sysconf("SC_CLK_TCK")
        base0, relay0 = labcpu.sample(self.namespaces), cpu_seconds(self.pids)
        time.sleep(self.idle)
        base1, relay1 = labcpu.sample(self.namespaces), cpu_seconds(self.pids)
        self.relay_idle_rate = (relay1 - relay0) / self.idle
        self.ksoftirqd_rate = (base1.ksoftirqd - base0.ksoftirqd) / tick / self.idle
        # The lab's own background without traffic (BFD, BGP, the daemons' and Miredo's
        # timers): at a low rate it is as large as the forwarding, so the net figure drops it.
        self.lab_idle_rate = labcpu.between(base0, base1).processes / self.idle
        self.mark: dict[str, Any] = {}

    def start(self) -> None:
        # `teredo status` is our child: asked before the CPU sample starts and after it
        # ends, it stays out of it. Called again at a retry: the figures are the last one's.
        self.mark["counts"] = _relay_counts(self.lab, self.relays)
        self.mark["tun"] = _tun_tx_dropped(self.lab, self.relays)
        self.mark["lab"] = labcpu.sample(self.namespaces)
        self.mark["cpu"], self.mark["t"] = cpu_seconds(self.pids), time.monotonic()

    def stop(self, received: int, prefix: str) -> dict[str, object]:
        wall = time.monotonic() - float(self.mark["t"])
        cpu = cpu_seconds(self.pids) - float(self.mark["cpu"])
        # The UDP ends are started before the sample and reaped in it (_concurrent_mmsg).
        end = labcpu.sample(self.namespaces)
        lab_cpu = labcpu.between(self.mark["lab"], end, ended_are_children=True)
        lab_total = lab_cpu.total(self.ksoftirqd_rate * wall)
        ksoftirqd = max(0.0, lab_cpu.ksoftirqd - self.ksoftirqd_rate * wall)
        lab_net = max(0.0, lab_total - self.lab_idle_rate * wall)
        now = _relay_counts(self.lab, self.relays)
        tun_dropped = _tun_tx_dropped(self.lab, self.relays) - int(self.mark["tun"])
        counts = [c.since(b) for c, b in zip(now, self.mark["counts"], strict=True)]

        def per_pkt(seconds: float) -> float | None:
            return 1e6 * seconds / received if received else None

        return {
            f"{prefix}relay_cpu_pct": 100.0 * cpu / wall,
            f"{prefix}relay_us_per_pkt": per_pkt(cpu),
            f"{prefix}relay_net_us_per_pkt": per_pkt(max(0.0, cpu - self.relay_idle_rate * wall)),
            f"{prefix}lab_us_per_pkt": per_pkt(lab_total),
            f"{prefix}lab_net_us_per_pkt": per_pkt(lab_net),
            f"{prefix}lab_idle_cpu_pct": 100.0 * self.lab_idle_rate,
            f"{prefix}lab_ksoftirqd_us_per_pkt": per_pkt(ksoftirqd),
            f"{prefix}datapaths": [c.datapath for c in counts],
            f"{prefix}kernel_encap": sum(c.kernel_encap for c in counts),
            f"{prefix}python_encap": sum(c.python_encap for c in counts),
            f"{prefix}kernel_decap": sum(c.kernel_decap for c in counts),
            f"{prefix}python_decap": sum(c.python_decap for c in counts),
            f"{prefix}per_relay": [c.__dict__ for c in counts],
            f"{prefix}tun_tx_dropped": tun_dropped,
        }


def measure(
    lab: Lab,
    relays: int,
    clients: int,
    seconds: float,
    udp_pps: int,
    *,
    idle: float = 1.0,
    cpu_pps: int = 6000,
    cpu_rounds: int = 3,
) -> dict[str, object]:
    addresses = [str(lab.wait_qualified(i, timeout=30).address) for i in range(1, clients + 1)]
    carriers = [anycast.carrying_relay(lab, a) for a in addresses]
    targets = [(f"client{i}", a) for i, a in enumerate(addresses, start=1)]
    sampler = LabSampler(lab, relays, _relay_pids(lab, relays), idle)
    # The aggregate: `udp_pps` in all, more than the relays carry here.
    udp = _concurrent_mmsg(lab, targets, udp_pps / clients, seconds, sampler.start)
    received = sum(udp.received)
    result: dict[str, object] = {
        "relays": relays,
        "clients_per_relay": {
            anycast.relay_host(i): carriers.count(anycast.relay_host(i))
            for i in range(1, relays + 1)
        },
        "udp_pps": received / seconds,
        "udp_offered_pps": udp_pps,
        "udp_sent": sum(udp.sent),
        "udp_received": received,
        **sampler.stop(received, ""),
    }
    # The CPU per packet: at `cpu_pps`, which every path carries (nearly) without loss, so
    # that no CPU spent on datagrams dropped on the way counts against those that arrived;
    # `cpu_rounds` times, the medians (the machine is shared: one disturbed round must not
    # make the figure).
    rounds: list[dict[str, object]] = []
    for _ in range(cpu_rounds):
        run = _concurrent_mmsg(lab, targets, cpu_pps / clients, seconds, sampler.start)
        got = sum(run.received)
        rounds.append(
            {
                "sent": sum(run.sent),
                "received": got,
                **sampler.stop(got, ""),
                "senders_user_us_per_pkt": 1e6 * run.senders_user / got if got else None,
                "senders_system_us_per_pkt": 1e6 * run.senders_system / got if got else None,
                "sinks_user_us_per_pkt": 1e6 * run.sinks_user / got if got else None,
                "sinks_system_us_per_pkt": 1e6 * run.sinks_system / got if got else None,
            }
        )
    result |= {"cpu_pps": cpu_pps, "cpu_rounds": rounds}
    for key in CPU_MEDIANS:
        values = [v for r in rounds if isinstance(v := r.get(key), (int, float))]
        result[f"cpu_{key}"] = median(values)
    retries: list[str] = []
    tcp = _concurrent_iperf3(lab, targets, [], seconds, retries)
    result["tcp_mbps"] = sum(parse_iperf3_tcp(text).receiver_bps for text in tcp) / 1e6
    result["iperf3_retries"] = retries
    return result


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
        if args.offload == "off":
            veth_offload_off(lab)
        result = measure(
            lab,
            relays,
            args.clients,
            args.seconds,
            args.udp_pps,
            idle=args.idle,
            cpu_pps=args.cpu_pps,
            cpu_rounds=args.cpu_rounds,
        )
        result["datapath"] = datapath
        result["offload"] = args.offload
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
    parser.add_argument(
        "--cpu-pps",
        type=int,
        default=6000,
        help="offered in all in the CPU-per-packet run, below what every path carries (6000)",
    )
    parser.add_argument(
        "--cpu-rounds", type=int, default=3, help="CPU runs per lab, medians (default 3)"
    )
    parser.add_argument("--no-failover", action="store_true", help="throughput only")
    parser.add_argument(
        "--datapath",
        default="auto",
        help="the relays' --datapath, comma-separated to measure each: auto, kernel, user",
    )
    parser.add_argument(
        "--idle",
        type=float,
        default=2.0,
        help="s without traffic before the runs: ksoftirqd's and the lab's idle rates (2)",
    )
    parser.add_argument(
        "--offload",
        choices=("off", "keep"),
        default="off",
        help="tx checksum/TSO offload of the lab's veths (default off, as bench.path: a real NIC "
        "delivers complete checksums; with it on the relays' tc program passes every packet up)",
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
                    result["cpu_received"],
                    result["cpu_relay_us_per_pkt"],
                    result["cpu_lab_us_per_pkt"],
                    result["cpu_lab_net_us_per_pkt"],
                    result["cpu_senders_system_us_per_pkt"],
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
        f"at {args.cpu_pps} pkt/s: received",
        "relay us/pkt",
        "lab us/pkt",
        "less lab idle",
        "senders sys",
        "TCP Mbit/s",
    ]
    print(format_table(headers, rows))
    print(f"   lab us/pkt: {labcpu.METHOD}")
    print("   less lab idle: minus the lab processes' CPU rate over --idle s before, no traffic")
    print("   senders sys: the UDP senders' system time, us/pkt (kernel path: the whole chain)")
    print(
        json_line(
            "anycast",
            {
                "clients": args.clients,
                "seconds": args.seconds,
                "load": load_average(),
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
