"""The whole Teredo path side by side: `python -m bench.path [--rounds 3]` (root; issue 8).

Three paths over the same lab links (prefix `tdw-` by default), one lab each, alternating over
the rounds (miredo, teredo, plain, miredo, ...):

- **miredo**: Miredo's server, relay and client (behind a port-restricted NAT);
- **teredo**: ours in all three roles, started with `--datapath DATAPATH` (default auto: the
  kernel programs where they load; a role whose daemon has no kernel wiring yet runs the
  Python path); the data path each daemon uses is reported, from `teredo status` (key
  "datapath"), else from its log;
- **plain**: no Teredo at all, native IPv6 forwarded over the same links and routers: native
  host -> wan -> relay host -> wan -> NAT host -> client host (a policy route in the wan sends
  the packets through the relay host, as the Teredo packets go), IPv6 on the NAT's links
  (2001:db8:4::/64 outside, 2001:db8:3::/64 inside). This is the reference fraction.

Measured between the native host and the client, both directions ("down" = native -> client,
"up" = client -> native): TCP (iperf3), 64-byte UDP capacity (iperf3 `-b 0`: as fast as the
sender can; the receiver's count gives packets/s; and with `--senders` N iperf3 processes at
once, their counts summed: a kernel data path runs every hop in its sender's system call, so
one sender keeps it on one CPU while Miredo's daemons have the other), and 64-byte UDP at a
fixed `--cpu-pps` rate
that every path carries, for the CPU per packet: the lab's CPU time during the run, softirq
included (bench/labcpu.py: every process in the lab's namespaces, the daemons and the iperf3
ends, + the ksoftirqd threads' time less their rate over `--idle` seconds just before), per
packet received. The whole machine's /proc/stat delta (less its rate before) is printed beside
it as context: on a shared machine it moves with the others' load.

Before measuring, `ethtool -K DEV tx off` on every veth of the lab's namespaces and `tx off
tso off gso off` on the relay's and the client's TUN (`--offload keep` leaves them): with
offload the lab's TCP reaches the kernel programs as CHECKSUM_PARTIAL / GSO super-packets,
which they pass up to Python; a real NIC delivers complete checksums. All three paths get the
same links. Our daemons' kernel counters ("kernel" in `teredo status`) are printed at the end.

`--rx threaded` (default `inline`, the lab as it always was) models a NIC's receive in its own
context: a veth's transmit normally runs the peer's whole receive (and every further hop) in
the sender's system call (backlog, softirq at the sender's local_bh_enable), so a kernel data
path's chain stays on the sender's CPU. `threaded` turns on NAPI on every veth of the lab's
namespaces (`ethtool -K DEV gro on`: veth uses NAPI when GRO is requested) with
`gro_max_size 1` (GRO merges no IPv6 packet; the lab's IPv4 is UDP, not merged either: only
the context changes, not the packets) and `/sys/class/net/DEV/threaded` = 1, so each veth's
receive runs in its napi/DEV-ID kernel thread, which the scheduler may put on the other CPU,
as a NIC's interrupt and softirq would.
Applied to every path alike; the napi threads' CPU is counted in the lab CPU (bench/labcpu.py).

Output: one table with the three paths, ours/miredo and the fraction of plain forwarding each
Teredo path reaches, then one JSON line.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TypeVar

from bench import labcpu
from bench.lab_bench import (
    IPERF_PORT,
    BenchError,
    cpu_seconds,
    format_ratio,
    format_table,
    interrupt_on_sigterm,
    iperf3,
    json_line,
    load_average,
    machine_cpu,
    parse_iperf3_tcp,
    parse_iperf3_udp,
    ratio,
    reap,
    require_root,
    role_pids,
    run_rounds,
    wait_tcp_listen,
)
from teredo.lab import system
from teredo.lab.roles import Impl, Role
from teredo.lab.topology import NATIVE_V6, RELAY_V6, Lab

PATHS = ("miredo", "teredo", "plain")
PREFIX = "tdw-"
PAYLOAD = 64
# The plain path's addresses (RFC 3849 documentation range, as the rest of the lab).
WAN_V6_NATS = "2001:db8:4::1"
NAT_V6_OUTSIDE = "2001:db8:4::11"
NAT_V6_INSIDE = "2001:db8:3::1"
CLIENT_V6 = "2001:db8:3::2"
CLIENT_NET = "2001:db8:3::/64"
NATIVE_NET = "2001:db8:1::/64"
# Pings (3 echoes each, 1 s apart) until the native host reaches a just-started lab's client.
RELAY_READY_TRIES = 10
DATAPATH_RE = re.compile(r"data path: (kernel|user)\b")
TUN_OFFLOAD_OFF = ("tx", "off", "tso", "off", "gso", "off")
RX_MODES = ("inline", "threaded")
DAEMON_HOSTS = ("server", "relay", "client1")
MMSG_PORT = 5301
T = TypeVar("T")


def add_plain_ipv6(lab: Lab) -> None:
    """Native IPv6 from the native host to client 1 through the wan, the relay host and the
    NAT host: the links the Teredo packets cross, forwarded by the kernels alone."""
    wan, nat, client = lab.ns("wan"), lab.ns("nat1"), lab.ns("client1")
    system.run(["ip", "netns", "exec", nat, "sysctl", "-q", "-w", "net.ipv6.conf.all.forwarding=1"])
    system.ip_batch(
        wan,
        [
            f"addr add {WAN_V6_NATS}/64 dev bn nodad",
            # From the native side: to the client through the relay host, as Teredo goes.
            f"route add {CLIENT_NET} via {RELAY_V6} table 100",
            # From the client side: to the native host through the relay host too.
            f"route add {NATIVE_NET} via {RELAY_V6} table 101",
            # What the relay host sends back to the wan: the main table, direct routes.
            f"route add {CLIENT_NET} via {NAT_V6_OUTSIDE}",
        ],
    )
    for iif, table in (("b6", "100"), ("bn", "101")):
        system.run(["ip", "-n", wan, "-6", "rule", "add", "iif", iif, "lookup", table])
    system.ip_batch(
        nat,
        [
            f"addr add {NAT_V6_OUTSIDE}/64 dev eth0 nodad",
            f"addr add {NAT_V6_INSIDE}/64 dev in0 nodad",
            f"route add default via {WAN_V6_NATS}",
        ],
    )
    system.ip_batch(
        client,
        [f"addr add {CLIENT_V6}/64 dev eth0 nodad", f"route add default via {NAT_V6_INSIDE}"],
    )
    # The relay host's default route (::/0 via the wan's bs address) forwards both ways back
    # to the wan, which then uses its main table.


def _datapaths(lab: Lab) -> dict[str, str]:
    """The data path each of our daemons uses, as `teredo status` says (key "datapath"),
    else as it logged at start ("kernel" or "user"), else "?" (a daemon without the key: its
    role has no kernel data path wiring yet, so it runs the Python path)."""
    found: dict[str, str] = {}
    for host in DAEMON_HOSTS:
        docs = lab.daemon_status(host) or []
        modes = {
            str(d["status"]["datapath"])
            for d in docs
            if isinstance(d.get("status"), dict) and "datapath" in d["status"]
        }
        if modes:
            found[host] = "+".join(sorted(modes)) + " (status)"
    for rec in lab.procs:
        if rec.role and rec.log and rec.host not in found:
            with contextlib.suppress(OSError):
                text = Path(rec.log).read_text(encoding="utf-8", errors="replace")
                modes = set(DATAPATH_RE.findall(text))
                found[rec.host] = "+".join(sorted(modes)) + " (log)" if modes else "user? (no key)"
    return found


def veth_offload_off(lab: Lab) -> list[str]:
    """`ethtool -K DEV tx off` on every veth of every lab namespace (never the host's): with
    checksum offload the lab's TCP arrives as CHECKSUM_PARTIAL (and TSO/GSO super-packets)
    at the relay's and client's programs, which pass such packets up to Python; a real NIC
    delivers complete checksums. Tx checksumming off also turns TSO off. Applied to every
    path alike. Returns the devices changed, as "ns/dev"."""
    changed: list[str] = []
    for ns, dev in lab_veths(lab):
        system.run(["ip", "netns", "exec", ns, "ethtool", "-K", dev, "tx", "off"])
        changed.append(f"{ns}/{dev}")
    return changed


def lab_veths(lab: Lab) -> list[tuple[str, str]]:
    """(namespace, device) of every veth in the lab's namespaces (never the host's)."""
    found: list[tuple[str, str]] = []
    for host in lab.hosts():
        ns = lab.ns(host)
        out = system.run(["ip", "-n", ns, "-j", "link", "show", "type", "veth"])
        found += [(ns, str(link["ifname"])) for link in json.loads(out.stdout or "[]")]
    return found


def veth_rx_commands(ns: str, dev: str) -> list[list[str]]:
    """The commands that put one veth of namespace `ns` in threaded NAPI (`--rx threaded`):
    GRO requested (veth then receives through NAPI), but merging nothing (gro_max_size 1: a
    packet is never grown past it, so every packet is flushed alone; this iproute2 cannot set
    gro_ipv4_max_size, and the lab's IPv4 is UDP only, which GRO merges only for a UDP GRO
    socket or with rx-udp-gro-forwarding, neither used), and the NAPI poll in its own kernel
    thread. Inside the namespace only."""
    return [
        ["ip", "netns", "exec", ns, "ethtool", "-K", dev, "gro", "on"],
        ["ip", "-n", ns, "link", "set", "dev", dev, "gro_max_size", "1"],
        ["ip", "netns", "exec", ns, "sh", "-c", f"echo 1 > /sys/class/net/{dev}/threaded"],
    ]


def napi_threads() -> list[str]:
    """The names of the napi/* kernel threads running now (threaded NAPI polls)."""
    names = []
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            with contextlib.suppress(OSError):
                comm = Path(f"/proc/{pid}/comm").read_text(encoding="utf-8").strip()
                if labcpu.kernel_thread(comm) == "napi":
                    names.append(comm)
    return names


def veth_rx_threaded(lab: Lab) -> list[str]:
    """Every veth of every lab namespace in threaded NAPI (`veth_rx_commands`), checked: each
    reads back threaded = 1 and has its napi/DEV-ID thread. Returns the threads, by name."""
    before = set(napi_threads())
    devices: list[str] = []
    for ns, dev in lab_veths(lab):
        for argv in veth_rx_commands(ns, dev):
            system.run(argv)
        got = system.run(["ip", "netns", "exec", ns, "cat", f"/sys/class/net/{dev}/threaded"])
        if got.stdout.strip() != "1":
            raise BenchError(f"--rx threaded: {ns}/{dev} threaded reads {got.stdout!r}")
        devices.append(dev)
    threads = sorted(set(napi_threads()) - before)
    # A veth has one NAPI per receive queue (one here); thread names are comm-truncated.
    if len(threads) < len(devices):
        raise BenchError(f"--rx threaded: {len(devices)} veths, napi threads {threads}")
    return threads


def tun_offload_off(lab: Lab) -> list[str]:
    """`ethtool -K DEV tx off tso off gso off` on the TUN devices of the relay's and the
    client's namespaces (our daemons' and Miredo's): the client host's own TCP reaches the
    TUN's egress program as a GSO super-packet otherwise (the stack segments only after tc
    egress), which the program passes up to Python. Returns the devices changed, "ns/dev"
    (a refusal is listed with "!")."""
    changed: list[str] = []
    for host in ("relay", "client1"):
        ns = lab.ns(host)
        out = system.run(["ip", "-n", ns, "-j", "link", "show", "type", "tun"])
        for link in json.loads(out.stdout or "[]"):
            dev = str(link["ifname"])
            done = system.run(
                ["ip", "netns", "exec", ns, "ethtool", "-K", dev, *TUN_OFFLOAD_OFF],
                check=False,
            )
            changed.append(f"{ns}/{dev}" + ("" if done.returncode == 0 else "!"))
    return changed


def kernel_counters(lab: Lab) -> dict[str, object]:
    """The "kernel" counters of our daemons' status (what the programs forwarded and why they
    passed packets up), by host; {} for Miredo or the Python path."""
    found: dict[str, object] = {}
    for host in DAEMON_HOSTS:
        for doc in lab.daemon_status(host) or []:
            st = doc.get("status")
            if isinstance(st, dict) and st.get("kernel"):
                found[host] = st["kernel"]
    return found


@contextlib.contextmanager
def path_lab(path: str, args: argparse.Namespace) -> Iterator[tuple[Lab, str]]:
    """The lab of `path` and the client's address to measure to; always taken down."""
    lab = Lab(args.prefix, ["port-restricted"], server_impl=None, relay_impl=None, client_impl=None)
    try:
        lab.up()
        if args.offload == "off":
            args.offload_devices = len(veth_offload_off(lab))
        if args.rx == "threaded":
            args.napi_threads = veth_rx_threaded(lab)
        if path == "plain":
            add_plain_ipv6(lab)
            ping = lab.ping("native", CLIENT_V6, count=2)
            if ping.returncode != 0:
                raise BenchError(f"plain IPv6 path does not forward:\n{ping.stdout}")
            # Four routers on the way (wan, relay host, wan, NAT host), as the Teredo packets.
            if f"ttl={64 - 4}" not in ping.stdout:
                raise BenchError(f"plain IPv6 path is not the lab's Teredo path:\n{ping.stdout}")
            yield lab, CLIENT_V6
            return
        impl = Impl.MIREDO if path == "miredo" else Impl.TEREDO
        extra = ["--datapath", args.datapath] if impl is Impl.TEREDO else []
        lab.start(Role.SERVER, impl, extra=extra)
        lab.start(Role.RELAY, impl, extra=extra)
        lab.start(Role.CLIENT, impl, 1, extra=extra)
        info = lab.wait_qualified(1, timeout=30)
        if args.offload == "off":
            args.tun_devices = tun_offload_off(lab)
        # The first packets set up the relay's peer entry (bubbles, RFC 4380 section 5.4):
        # measure the forwarding, not the setting up. The client qualifies through the server
        # alone, so on a loaded machine the relay may not have its TUN and route yet (the
        # wan's route to the Teredo prefix then loops back: "hop limit exceeded" from the
        # relay): a few tries, bounded, for every path alike.
        for _attempt in range(RELAY_READY_TRIES):
            ping = lab.ping("native", str(info.address), count=3)
            if ping.returncode == 0:
                break
            time.sleep(1.0)
        if ping.returncode != 0:
            raise BenchError(f"{path}: native host cannot reach the client:\n{ping.stdout}")
        yield lab, str(info.address)
    finally:
        lab.down()


def _daemon_cpu(lab: Lab, path: str) -> list[list[int]]:
    return [] if path == "plain" else [role_pids(lab, h) for h in DAEMON_HOSTS]


def measured_run(
    lab: Lab, path: str, addr: str, args: argparse.Namespace, iperf_args: Sequence[str]
) -> tuple[str, dict[str, float]]:
    """One iperf3 run native <-> client with the lab's CPU around it (bench/labcpu.py):
    (JSON, figures). Nothing else runs as a child of this process during the sample."""
    return with_lab_cpu(
        lab,
        path,
        args,
        lambda: iperf3(
            lab,
            server_host="client1",
            server_addr=addr,
            client_host="native",
            args=iperf_args,
            seconds=args.seconds,
        ),
    )


def parallel_udp(
    lab: Lab, addr: str, senders: int, seconds: float, reverse: bool
) -> tuple[float, float]:
    """`senders` iperf3 64-byte UDP runs at once (-b 0), each its own one-off server in the
    client and its own client process in the native host (`reverse`: -R, client -> native), so
    that both of the machine's CPUs send, for every path alike: (received pkt/s summed, loss
    %). Bounded by `seconds` + 20 s; every process is stopped."""
    ports = [IPERF_PORT + 10 + i for i in range(senders)]
    servers = [
        lab.popen("client1", ["iperf3", "-s", "-1", "-B", addr, "-p", str(port)]) for port in ports
    ]
    clients: list[subprocess.Popen[bytes]] = []
    try:
        for port in ports:
            wait_tcp_listen(lab, "client1", port)
        for port in ports:
            argv = ["iperf3", "-c", addr, "-p", str(port), "-t", str(seconds), "-J"]
            argv += ["--connect-timeout", "5000", "-u", "-l", str(PAYLOAD), "-b", "0"]
            clients.append(
                lab.popen("native", argv + (["-R"] if reverse else []), stdout=subprocess.PIPE)
            )
        received = sent = 0
        pps = 0.0
        for proc in clients:
            out, _ = proc.communicate(timeout=seconds + 20)
            udp = parse_iperf3_udp(out.decode("utf-8", "replace"), PAYLOAD)
            pps += udp.received_pps
            received += udp.received
            sent += udp.sent
        return pps, 100.0 * (1 - received / sent) if sent else 100.0
    finally:
        for proc in clients + servers:
            reap(proc)


def mmsg_run(
    lab: Lab, path: str, addr: str, args: argparse.Namespace, *, up: bool
) -> tuple[int, dict[str, float]]:
    """`--cpu-pps` datagrams of 64 bytes a second for `--seconds`, sent with sendmmsg and
    received with recvmmsg (bench/mmsgudp.py) native -> client or (`up`) client -> native, with
    the lab's CPU around the sending only (both ends started before the sample): (datagrams
    received, figures)."""
    sink_host, dest, source_host = (
        ("native", NATIVE_V6, "client1") if up else ("client1", addr, "native")
    )
    tool = str(Path(__file__).with_name("mmsgudp.py"))
    budget = args.seconds + 20
    sink = lab.popen(
        sink_host,
        [sys.executable, "-u", tool, "recv", str(MMSG_PORT), str(args.seconds + 5)],
        name=f"mmsg-recv-{sink_host}",
        stdout=subprocess.PIPE,
    )
    source = lab.popen(
        source_host,
        [
            sys.executable,
            "-u",
            tool,
            "send",
            dest,
            str(MMSG_PORT),
            str(args.cpu_pps),
            str(args.seconds),
        ],
        name=f"mmsg-send-{source_host}",
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    try:
        for proc in (sink, source):
            assert proc.stdout is not None
            if not proc.stdout.readline().startswith(b"ready"):
                raise BenchError(f"{path}: bench/mmsgudp.py did not start")

        def traffic() -> str:
            source.communicate(b"go\n", timeout=budget)
            out, _ = sink.communicate(timeout=budget)
            return out.decode()

        text, figures = with_lab_cpu(lab, path, args, traffic)
    finally:
        for proc in (source, sink):
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    words = text.split()
    if "received" not in words:
        raise BenchError(f"{path}: bench/mmsgudp.py sink said {text!r}")
    return int(words[words.index("received") + 1]), figures


def with_lab_cpu(
    lab: Lab, path: str, args: argparse.Namespace, traffic: Callable[[], T]
) -> tuple[T, dict[str, float]]:
    """`traffic()` with the lab's CPU around it (bench/labcpu.py), after an idle sample of
    `--idle` seconds for the others' rates: (its result, figures)."""
    namespaces = [lab.ns(h) for h in lab.hosts()]
    tick = os.sysconf("SC_CLK_TCK")
    idle0, base0 = machine_cpu(), labcpu.sample(namespaces)
    time.sleep(args.idle)
    idle1, base1 = machine_cpu(), labcpu.sample(namespaces)
    idle_busy, idle_softirq = idle1.seconds_since(idle0)
    idle_rate = idle_busy / args.idle
    ksoftirqd_rate = (base1.ksoftirqd - base0.ksoftirqd) / tick / args.idle
    napi_rate = (base1.napi - base0.napi) / tick / args.idle
    pids = _daemon_cpu(lab, path)
    daemon0 = [cpu_seconds(p) for p in pids]
    cpu0, lab0, t0 = machine_cpu(), labcpu.sample(namespaces), time.monotonic()
    text = traffic()
    wall = time.monotonic() - t0
    lab_cpu = labcpu.between(lab0, labcpu.sample(namespaces))
    busy, softirq = machine_cpu().seconds_since(cpu0)
    figures = {
        "net": lab_cpu.total(ksoftirqd_rate * wall, napi_rate * wall),
        "processes": lab_cpu.processes,
        "ksoftirqd": max(0.0, lab_cpu.ksoftirqd - ksoftirqd_rate * wall),
        "napi": max(0.0, lab_cpu.napi - napi_rate * wall),
        "machine_net": max(0.0, busy - idle_rate * wall),
        "softirq": max(0.0, softirq - idle_softirq / args.idle * wall),
        "wall": wall,
        "idle_pct": 100.0 * idle_rate,
    }
    for host, p, c in zip(DAEMON_HOSTS, pids, daemon0, strict=False):
        figures[f"{host}_pct"] = 100.0 * (cpu_seconds(p) - c) / wall
    return text, figures


def measure(path: str, args: argparse.Namespace) -> dict[str, float | None]:
    results: dict[str, float | None] = {"load1": float(load_average().split()[0])}
    with path_lab(path, args) as (lab, addr):
        for direction, rev in (("down", []), ("up", ["-R"])):
            text, cpu = measured_run(lab, path, addr, args, rev)
            results[f"tcp_{direction}_mbps"] = parse_iperf3_tcp(text).receiver_bps / 1e6
            results[f"tcp_{direction}_lab_pct"] = 100.0 * cpu["net"] / cpu["wall"]
            udp_args = ["-u", "-l", str(PAYLOAD), "-b", "0", *rev]
            text, cpu = measured_run(lab, path, addr, args, udp_args)
            udp = parse_iperf3_udp(text, PAYLOAD)
            results[f"udp_{direction}_pps"] = udp.received_pps
            results[f"udp_{direction}_loss_pct"] = 100.0 * udp.loss
            if args.senders > 1:
                # Through Miredo's path, flooded by two senders (70-90 % lost), iperf3's own
                # control connection sometimes breaks or stalls at the end of a run (an error,
                # or no exit within seconds + 20 s): one more try, and
                # then the figure is missing ("-"), said on stderr, not the round lost.
                for attempt in (1, 2):
                    try:
                        pps, loss = parallel_udp(lab, addr, args.senders, args.seconds, bool(rev))
                    except (BenchError, subprocess.TimeoutExpired) as exc:
                        print(
                            f"bench.path: {path} {direction} --senders try {attempt}: {exc}",
                            file=sys.stderr,
                        )
                        continue
                    results[f"udp_{direction}_par_pps"] = pps
                    results[f"udp_{direction}_par_loss_pct"] = loss
                    break
            bitrate = args.cpu_pps * PAYLOAD * 8
            fixed = ["-u", "-l", str(PAYLOAD), "-b", str(bitrate), *rev]
            text, cpu = measured_run(lab, path, addr, args, fixed)
            udp = parse_iperf3_udp(text, PAYLOAD)
            got = udp.received
            for key, part in (
                ("us_per_pkt", "net"),
                ("processes_us_per_pkt", "processes"),
                ("ksoftirqd_us_per_pkt", "ksoftirqd"),
                ("napi_us_per_pkt", "napi"),
                ("machine_us_per_pkt", "machine_net"),
                ("softirq_us_per_pkt", "softirq"),
            ):
                results[f"cpu_{direction}_{key}"] = 1e6 * cpu[part] / got if got else None
            results[f"cpu_{direction}_loss_pct"] = 100.0 * udp.loss
            if args.mmsg:
                # The same datagrams from a generator that costs the ends little (both
                # figures reported: bench/mmsgudp.py says why).
                got, cpu = mmsg_run(lab, path, addr, args, up=direction == "up")
                sent = int(args.cpu_pps * args.seconds)
                results[f"cpu_{direction}_mmsg_us_per_pkt"] = (
                    1e6 * cpu["net"] / got if got else None
                )
                results[f"cpu_{direction}_mmsg_loss_pct"] = 100.0 * (1 - got / sent)
            results[f"cpu_{direction}_idle_pct"] = cpu["idle_pct"]
            for host in DAEMON_HOSTS:
                if f"{host}_pct" in cpu:
                    results[f"cpu_{direction}_{host}_pct"] = cpu[f"{host}_pct"]
        if path == "teredo":
            modes = _datapaths(lab)
            args.datapaths_seen.append(modes)
            args.kernel_counters.append(kernel_counters(lab))
    return results


METRICS = (
    ("tcp_down_mbps", "TCP native->client Mbit/s"),
    ("tcp_down_lab_pct", "  lab CPU % of one core"),
    ("tcp_up_mbps", "TCP client->native Mbit/s"),
    ("tcp_up_lab_pct", "  lab CPU % of one core"),
    ("udp_down_pps", "UDP 64 B native->client pkt/s (-b 0)"),
    ("udp_down_loss_pct", "  loss %"),
    ("udp_up_pps", "UDP 64 B client->native pkt/s (-b 0)"),
    ("udp_up_loss_pct", "  loss %"),
    ("udp_down_par_pps", "UDP 64 B native->client pkt/s, --senders at once"),
    ("udp_down_par_loss_pct", "  loss %"),
    ("udp_up_par_pps", "UDP 64 B client->native pkt/s, --senders at once"),
    ("udp_up_par_loss_pct", "  loss %"),
    ("cpu_down_us_per_pkt", "lab CPU us/pkt down (fixed rate)"),
    ("cpu_down_processes_us_per_pkt", "  lab processes us/pkt"),
    ("cpu_down_ksoftirqd_us_per_pkt", "  ksoftirqd us/pkt (net of before)"),
    ("cpu_down_napi_us_per_pkt", "  napi kthreads us/pkt (net of before; --rx threaded)"),
    ("cpu_down_machine_us_per_pkt", "  whole machine us/pkt (net of before)"),
    ("cpu_down_softirq_us_per_pkt", "  machine softirq us/pkt (net of before)"),
    ("cpu_down_loss_pct", "  loss %"),
    ("cpu_down_server_pct", "  server daemon CPU %"),
    ("cpu_down_relay_pct", "  relay daemon CPU %"),
    ("cpu_down_client1_pct", "  client daemon CPU %"),
    ("cpu_down_idle_pct", "  machine busy before, % (others)"),
    ("cpu_up_us_per_pkt", "lab CPU us/pkt up (fixed rate)"),
    ("cpu_up_processes_us_per_pkt", "  lab processes us/pkt"),
    ("cpu_up_ksoftirqd_us_per_pkt", "  ksoftirqd us/pkt (net of before)"),
    ("cpu_up_napi_us_per_pkt", "  napi kthreads us/pkt (net of before; --rx threaded)"),
    ("cpu_up_machine_us_per_pkt", "  whole machine us/pkt (net of before)"),
    ("cpu_up_softirq_us_per_pkt", "  machine softirq us/pkt (net of before)"),
    ("cpu_up_loss_pct", "  loss %"),
    ("cpu_up_server_pct", "  server daemon CPU %"),
    ("cpu_up_relay_pct", "  relay daemon CPU %"),
    ("cpu_up_client1_pct", "  client daemon CPU %"),
    ("cpu_up_idle_pct", "  machine busy before, % (others)"),
    ("cpu_down_mmsg_us_per_pkt", "lab CPU us/pkt down (fixed rate, sendmmsg generator)"),
    ("cpu_down_mmsg_loss_pct", "  loss %"),
    ("cpu_up_mmsg_us_per_pkt", "lab CPU us/pkt up (fixed rate, sendmmsg generator)"),
    ("cpu_up_mmsg_loss_pct", "  loss %"),
    ("load1", "load average (1 min) at start"),
)
#: The figures with a ratio: the headline ones (the others are context).
RATIO_KEYS = frozenset(
    {
        "tcp_down_mbps",
        "tcp_up_mbps",
        "udp_down_pps",
        "udp_up_pps",
        "udp_down_par_pps",
        "udp_up_par_pps",
        "cpu_down_us_per_pkt",
        "cpu_up_us_per_pkt",
        "cpu_down_mmsg_us_per_pkt",
        "cpu_up_mmsg_us_per_pkt",
    }
)
#: The CPU-per-packet figures, each followed by what Teredo adds to plain forwarding.
CPU_KEYS = frozenset(k for k in RATIO_KEYS if k.startswith("cpu_"))


def report_rows(results: Mapping[str, Mapping[str, float | None]]) -> list[list[object]]:
    """Rows: metric, miredo, teredo, plain, ours/miredo, miredo/plain, ours/plain."""
    rows: list[list[object]] = []
    for key, label in METRICS:
        got = {p: results.get(p, {}).get(key) for p in PATHS}
        ratios = ["", "", ""]
        if key in RATIO_KEYS:
            ratios = [
                format_ratio(ratio(got["teredo"], got["miredo"])),
                format_ratio(ratio(got["miredo"], got["plain"])),
                format_ratio(ratio(got["teredo"], got["plain"])),
            ]
        rows.append([label, got["miredo"], got["teredo"], got["plain"], *ratios])
        if key in CPU_KEYS:
            # What Teredo adds to plain forwarding: the endpoints' iperf3 work is in all three.
            over = {p: _minus(got[p], got["plain"]) for p in ("miredo", "teredo")}
            rows.append(
                [
                    f"  above plain us/pkt {key.split('_')[1]} (Teredo's own"
                    + (", sendmmsg)" if "_mmsg_" in key else ")"),
                    over["miredo"],
                    over["teredo"],
                    None,
                    format_ratio(ratio(over["teredo"], over["miredo"])),
                    "",
                    "",
                ]
            )
    return rows


def spread_rows(samples: Mapping[str, Sequence[Mapping[str, float | None]]]) -> list[str]:
    """One line per headline figure: each path's rounds, lowest to highest (the table has the
    medians; on a shared machine the spread says how far to trust a ratio)."""
    lines = []
    for key in sorted(RATIO_KEYS):
        parts = []
        for path in PATHS:
            got = sorted(v for r in samples.get(path, []) if (v := r.get(key)) is not None)
            if got:
                parts.append(f"{path} " + " / ".join(_figure(v) for v in got))
        if parts:
            lines.append(f"   {key}: " + "; ".join(parts))
    return lines


def _figure(v: float) -> str:
    return f"{v:,.0f}" if abs(v) >= 100 else f"{v:.3g}"


def _minus(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else max(0.0, a - b)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """bench.path's options, checked (argparse exits with status 2 on a bad one)."""
    parser = argparse.ArgumentParser(prog="python -m bench.path", description=__doc__)
    parser.add_argument("--paths", default=",".join(PATHS), help="comma-separated subset")
    parser.add_argument("--seconds", type=float, default=3.0, help="per iperf3 run (default 3)")
    parser.add_argument("--cpu-pps", type=int, default=20_000, help="fixed UDP rate for CPU/pkt")
    parser.add_argument("--idle", type=float, default=1.0, help="idle sample before each run, s")
    parser.add_argument(
        "--mmsg",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also the CPU/pkt with bench/mmsgudp.py's sendmmsg/recvmmsg ends (default on)",
    )
    parser.add_argument("--rounds", type=int, default=1, help="rounds, medians reported")
    parser.add_argument(
        "--senders",
        type=int,
        default=2,
        help="also the 64-byte UDP rate with this many iperf3 senders at once, so that a kernel "
        "data path, whose whole chain runs in its sender's system call, can use both CPUs as "
        "Miredo's daemons do (default 2; 1: not measured)",
    )
    parser.add_argument("--datapath", default="auto", choices=("auto", "kernel", "user"))
    parser.add_argument(
        "--offload",
        default="off",
        choices=("off", "keep"),
        help="tx checksum/TSO offload of the lab's veths (default off: as a real NIC delivers)",
    )
    parser.add_argument(
        "--rx",
        default="inline",
        choices=RX_MODES,
        help="the lab veths' receive: inline (default: in the sender's system call, as veth "
        "does) or threaded (NAPI in per-device kernel threads, as a NIC's own RX context)",
    )
    parser.add_argument("--prefix", default=PREFIX, help=f"namespace prefix (default {PREFIX})")
    args = parser.parse_args(argv)
    paths = [p for p in args.paths.split(",") if p]
    if not paths or not set(paths) <= set(PATHS):
        parser.error(f"--paths: a comma-separated subset of {','.join(PATHS)}")
    if not 0 < args.seconds <= 60 or not 0 < args.cpu_pps <= 1_000_000:
        parser.error("--seconds must be in (0, 60] and --cpu-pps in (0, 1000000]")
    if not 0 < args.idle <= 10 or not 1 <= args.rounds <= 20:
        parser.error("--idle must be in (0, 10] and --rounds 1..20")
    if not 1 <= args.senders <= 8:
        parser.error("--senders must be 1..8")
    args.path_list = paths
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    paths: list[str] = args.path_list
    try:
        system.check_prefix(args.prefix)
        require_root()
        interrupt_on_sigterm()
    except (ValueError, BenchError, system.LabError) as exc:
        print(f"bench.path: {exc}", file=sys.stderr)
        return 2
    args.datapaths_seen = []
    args.offload_devices = 0
    args.tun_devices = []
    args.napi_threads = []
    args.kernel_counters = []
    notes: list[str] = []
    samples: dict[str, list[Mapping[str, float | None]]] = {p: [] for p in paths}

    def one_round(path: str) -> Mapping[str, float | None]:
        got = measure(path, args)
        samples[path].append(got)
        return got

    results = run_rounds(paths, args.rounds, one_round, notes)
    for note in notes:
        print(f"note: {note}", file=sys.stderr)
    print(f"\n== path: all-miredo, all-ours (--datapath {args.datapath}), plain IPv6")
    print(f"   ours' data path (teredo status): {args.datapaths_seen}  (load {load_average()})")
    print(
        f"   tx offload: {args.offload} ({args.offload_devices} veths in the last lab; TUNs"
        f" {args.tun_devices})"
    )
    print(f"   veth receive: --rx {args.rx} (napi threads in the last lab: {args.napi_threads})")
    print(f"   our kernel counters at the end: {args.kernel_counters}")
    print(f"   CPU/pkt method: {labcpu.METHOD}")
    headers = ["metric", "miredo", "teredo", "plain", "ours/miredo", "miredo/plain", "ours/plain"]
    print(format_table(headers, report_rows(results)))
    print("   each round (medians above):")
    print("\n".join(spread_rows(samples)))
    record = {
        "results": results,
        "ratios": {
            key: {
                "ours_over_miredo": ratio(
                    results.get("teredo", {}).get(key), results.get("miredo", {}).get(key)
                ),
                "ours_over_plain": ratio(
                    results.get("teredo", {}).get(key), results.get("plain", {}).get(key)
                ),
                "miredo_over_plain": ratio(
                    results.get("miredo", {}).get(key), results.get("plain", {}).get(key)
                ),
            }
            for key in sorted(RATIO_KEYS)
        },
        "datapath": args.datapath,
        "datapaths_seen": args.datapaths_seen,
        "offload": args.offload,
        "rx": args.rx,
        "napi_threads": args.napi_threads,
        "kernel_counters": args.kernel_counters,
        "cpu_method": labcpu.METHOD,
        "seconds": args.seconds,
        "cpu_pps": args.cpu_pps,
        "rounds": args.rounds,
        "samples": {
            p: [{k: r.get(k) for k in sorted(RATIO_KEYS)} for r in rs] for p, rs in samples.items()
        },
        "notes": notes,
    }
    print(json_line("path", record))
    return 0 if results and not notes else 1


if __name__ == "__main__":
    sys.exit(main())
