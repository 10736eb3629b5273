"""Harness of the side-by-side benchmarks (bench_client, bench_relay): ours versus Miredo.

Every benchmark builds a namespace lab (teredo.lab) under the prefix `tdb-`, runs one
implementation of the role under test against Miredo in every other role, tears the lab down,
then does the same with the other implementation, and prints a table with the ratio ours/miredo
plus one JSON line per benchmark. The pure helpers at the top (iperf3 JSON parsing, ratios,
tables, /proc parsing, the fake-peer address generator) have unit tests in tests/bench/; the lab
helpers below them need root and are exercised only by the benchmark commands.

Nothing here is sent outside the lab's namespaces: iperf3 and the fake clients run inside them,
and the addresses are the lab's documentation ranges (RFC 5737, RFC 3849) and Teredo addresses
that embed them.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import signal
import statistics
import subprocess
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from teredo.core.addr import TEREDO_PREFIX, embedded_mapping, pack_address
from teredo.lab import system
from teredo.lab.system import LabError
from teredo.lab.topology import Lab

PREFIX = "tdb-"  # the namespace prefix reserved for the benchmarks
IMPLS = ("miredo", "teredo")
IPERF_PORT = 5201


class BenchError(Exception):
    """A benchmark could not run or its tool gave an unusable answer."""


# --- iperf3 JSON --------------------------------------------------------------------------------


@dataclass(frozen=True)
class TcpResult:
    """One iperf3 TCP run: rates in bits per second, as seen by the sender and the receiver."""

    sender_bps: float
    receiver_bps: float
    retransmits: int
    seconds: float


@dataclass(frozen=True)
class UdpResult:
    """One iperf3 UDP run, from the receiver's report (the packets that crossed the tunnel)."""

    sent: int
    received: int
    seconds: float
    payload: int

    @property
    def received_pps(self) -> float:
        return self.received / self.seconds if self.seconds > 0 else 0.0

    @property
    def loss(self) -> float:
        return 1.0 - self.received / self.sent if self.sent else 0.0


def _load_iperf3(text: str) -> dict[str, object]:
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise BenchError(f"iperf3 output is not JSON: {text[:200]!r}") from exc
    if not isinstance(data, dict):
        raise BenchError("iperf3 output is not a JSON object")
    if data.get("error"):
        raise BenchError(f"iperf3: {data['error']}")
    return data


def _section(data: Mapping[str, object], *keys: str) -> dict[str, object]:
    node: object = data
    for key in keys:
        if not isinstance(node, dict) or key not in node:
            raise BenchError(f"iperf3 JSON has no {'.'.join(keys)}")
        node = node[key]
    if not isinstance(node, dict):
        raise BenchError(f"iperf3 JSON: {'.'.join(keys)} is not an object")
    return node


def _number(section: Mapping[str, object], key: str) -> float:
    value = section.get(key)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise BenchError(f"iperf3 JSON: {key} is missing or not a number")
    return float(value)


def parse_iperf3_tcp(text: str) -> TcpResult:
    """The rates of an `iperf3 -J` TCP run (the JSON printed by the iperf3 client)."""
    data = _load_iperf3(text)
    sent = _section(data, "end", "sum_sent")
    received = _section(data, "end", "sum_received")
    return TcpResult(
        sender_bps=_number(sent, "bits_per_second"),
        receiver_bps=_number(received, "bits_per_second"),
        retransmits=int(_number(sent, "retransmits")) if "retransmits" in sent else 0,
        seconds=_number(received, "seconds"),
    )


def parse_iperf3_udp(text: str, payload: int) -> UdpResult:
    """The receiver's count of an `iperf3 -u -J` run.

    iperf3 3.12 reports in end.sum_received `packets` (as the sender numbered them) and
    `lost_packets` (gaps seen by the receiver); `bytes` is what arrived. The received count is
    taken from `bytes / payload`, which does not depend on how iperf3 counts loss, and checked
    against packets - lost_packets.
    """
    data = _load_iperf3(text)
    if payload <= 0:
        raise BenchError("UDP payload size must be positive")
    sent_sum = _section(data, "end", "sum_sent")
    received_sum = _section(data, "end", "sum_received")
    sent = int(_number(sent_sum, "packets"))
    received = int(_number(received_sum, "bytes")) // payload
    if received > sent:
        raise BenchError(f"iperf3 JSON: {received} packets received but only {sent} sent")
    return UdpResult(
        sent=sent, received=received, seconds=_number(received_sum, "seconds"), payload=payload
    )


# --- ratios, tables, JSON lines -----------------------------------------------------------------


def ratio(ours: float | None, theirs: float | None) -> float | None:
    """ours / theirs, or None when either is missing or theirs is zero."""
    if ours is None or theirs is None or theirs == 0:
        return None
    return ours / theirs


def format_ratio(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}x"


def format_value(value: object) -> str:
    """Numbers with 3 significant digits at most (thousands grouped), others as str."""
    if value is None:
        return "-"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, int) or (float(value).is_integer() and abs(value) >= 1000):
        return f"{int(value):,}"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    return f"{value:.3g}"


def format_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A plain-text table, columns aligned (first column left, others right)."""
    cells = [list(headers)] + [[format_value(v) for v in row] for row in rows]
    for row in cells:
        if len(row) != len(headers):
            raise ValueError(f"row {row} has {len(row)} cells, not {len(headers)}")
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = []
    for n, row in enumerate(cells):
        parts = [
            cell.ljust(widths[i]) if i == 0 else cell.rjust(widths[i]) for i, cell in enumerate(row)
        ]
        lines.append("  ".join(parts).rstrip())
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


NO_RATIO = frozenset(
    {"load1", "rounds", "interpreter_start_s", "capacity", "bytes_per_slot"}
)  # context, not performance


def comparison_rows(
    metrics: Sequence[tuple[str, str]], results: Mapping[str, Mapping[str, float | None]]
) -> list[list[object]]:
    """Rows (metric label, miredo, teredo, ours/miredo) for the metric keys in `metrics`
    ((key, label) pairs); an implementation missing from `results` shows as "-"."""
    rows: list[list[object]] = []
    for key, label in metrics:
        theirs = results.get("miredo", {}).get(key)
        ours = results.get("teredo", {}).get(key)
        shown = None if key in NO_RATIO else ratio(ours, theirs)
        rows.append([label, theirs, ours, format_ratio(shown)])
    return rows


def json_line(benchmark: str, fields: Mapping[str, object]) -> str:
    """One line of JSON for a benchmark: {"benchmark": name, ...fields}, keys sorted."""
    record = {"benchmark": benchmark, **fields}
    return json.dumps(record, sort_keys=True, separators=(",", ":"), allow_nan=False)


def median(values: Sequence[float]) -> float | None:
    return statistics.median(values) if values else None


def median_results(samples: Sequence[Mapping[str, float | None]]) -> dict[str, float | None]:
    """Per key, the median of the rounds that measured it (None if none did). The machine is
    shared: one disturbed round must not make the figure."""
    keys: list[str] = []
    for sample in samples:
        keys += [k for k in sample if k not in keys]
    result: dict[str, float | None] = {}
    for key in keys:
        values = [v for s in samples if (v := s.get(key)) is not None]
        result[key] = median(values)
    return result


def run_rounds(
    impls: Sequence[str],
    rounds: int,
    measure: Callable[[str], Mapping[str, float | None]],
    notes: list[str],
) -> dict[str, dict[str, float | None]]:
    """`measure(impl)` for each implementation, alternating (miredo, teredo, miredo, ...) so
    that a change of load hits both alike; medians over the rounds. A failure is a note."""
    samples: dict[str, list[Mapping[str, float | None]]] = {impl: [] for impl in impls}
    for n in range(rounds):
        for impl in impls:
            try:
                samples[impl].append(measure(impl))
            except (BenchError, LabError, subprocess.TimeoutExpired) as exc:
                # The lab is down again (bench_lab's finally); the other side still runs.
                notes.append(f"{impl}, round {n + 1}: {exc}")
    return {impl: median_results(s) for impl, s in samples.items() if s}


# --- /proc --------------------------------------------------------------------------------------


def parse_loadavg(text: str) -> str:
    """'0.30 0.40 0.48' from the contents of /proc/loadavg."""
    fields = text.split()
    if len(fields) < 3:
        raise ValueError(f"unexpected /proc/loadavg: {text!r}")
    return " ".join(fields[:3])


def load_average() -> str:
    """The 1, 5 and 15 minute load averages now (the machine is shared: noted with every figure)."""
    return parse_loadavg(Path("/proc/loadavg").read_text(encoding="ascii"))


def parse_stat_cpu_ticks(stat: str) -> int:
    """utime + stime (clock ticks, all threads) from the contents of /proc/PID/stat."""
    # The command name (field 2) may hold spaces and parentheses: split after the last ')'.
    rest = stat[stat.rfind(")") + 2 :].split()
    # rest[0] is field 3 (state): utime and stime are fields 14 and 15.
    return int(rest[11]) + int(rest[12])


def parse_vm_rss(status: str) -> int:
    """VmRSS in bytes from the contents of /proc/PID/status."""
    for line in status.splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise ValueError("no VmRSS line (a kernel thread or a zombie?)")


def parse_snmp_udp(text: str) -> dict[str, int]:
    """The Udp counters (InDatagrams, RcvbufErrors, ...) from the contents of /proc/net/snmp
    (per network namespace): where datagrams were dropped for a full receive buffer."""
    rows = [line.split()[1:] for line in text.splitlines() if line.startswith("Udp:")]
    if len(rows) < 2 or len(rows[0]) != len(rows[1]):
        raise ValueError("no Udp header and value lines in /proc/net/snmp")
    return {name: int(value) for name, value in zip(rows[0], rows[1], strict=True)}


def parse_snmp6_udp_rcvbuf(text: str) -> int:
    """Udp6RcvbufErrors from the contents of /proc/net/snmp6 (one "name value" a line)."""
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0] == "Udp6RcvbufErrors":
            return int(parts[1])
    raise ValueError("no Udp6RcvbufErrors line in /proc/net/snmp6")


def socket_buffer_drops(lab: Lab, host: str) -> int:
    """Datagrams `host`'s namespace dropped for a full socket receive buffer, IPv4 and IPv6
    sockets together (Udp RcvbufErrors + Udp6RcvbufErrors): where a UDP run loses packets
    when the receiving process (a Teredo daemon's socket, iperf3's) falls behind."""
    v4 = parse_snmp_udp(lab.exec(host, ["cat", "/proc/net/snmp"]).stdout)
    v6 = parse_snmp6_udp_rcvbuf(lab.exec(host, ["cat", "/proc/net/snmp6"]).stdout)
    return v4.get("RcvbufErrors", 0) + v6


def parse_link_drops(text: str) -> tuple[int, int]:
    """(rx dropped, tx dropped) of the one link in `ip -s -j link show dev X` output. On a TUN
    device tx is the kernel -> daemon direction: tx dropped = packets the daemon did not read
    before its queue (txqueuelen) filled."""
    try:
        links = json.loads(text)
        stats = links[0]["stats64"]
        return int(stats["rx"]["dropped"]), int(stats["tx"]["dropped"])
    except (ValueError, LookupError, TypeError) as exc:
        raise ValueError(f"unexpected `ip -s -j link` output: {text[:200]!r}") from exc


@dataclass(frozen=True)
class MachineCpu:
    """Whole-machine CPU time from the first line of /proc/stat, in clock ticks summed over
    all CPUs: `busy` counts user, nice, system, irq, softirq and steal (the kernel's packet
    work included), `softirq` that part alone, `total` adds idle and iowait."""

    busy: int
    softirq: int
    total: int

    def seconds_since(self, earlier: MachineCpu) -> tuple[float, float]:
        """(busy, softirq) CPU seconds between `earlier` and this sample."""
        tick = os.sysconf("SC_CLK_TCK")
        return (self.busy - earlier.busy) / tick, (self.softirq - earlier.softirq) / tick


def parse_proc_stat(text: str) -> MachineCpu:
    """The aggregate `cpu` line of the contents of /proc/stat (guest time is already inside
    user and nice, so it is not added again)."""
    for line in text.splitlines():
        fields = line.split()
        if fields and fields[0] == "cpu":
            if len(fields) < 9:
                break
            user, nice, system_, idle, iowait, irq, softirq, steal = (int(v) for v in fields[1:9])
            busy = user + nice + system_ + irq + softirq + steal
            return MachineCpu(busy=busy, softirq=softirq, total=busy + idle + iowait)
    raise ValueError("no aggregate cpu line with 8 fields in /proc/stat")


def machine_cpu() -> MachineCpu:
    """The whole machine's CPU counters now (all namespaces share one /proc/stat)."""
    return parse_proc_stat(Path("/proc/stat").read_text(encoding="ascii"))


def _proc_text(pid: int, name: str) -> str | None:
    try:
        return Path(f"/proc/{pid}/{name}").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None


def bpf_map_memlock(pids: Sequence[int]) -> int:
    """bytes_memlock of the BPF maps that `pids` hold open (each map once, by id): what
    `bpftool map show` reports for them, from /proc/PID/fdinfo (issue 8 counts the kernel
    maps with the resident memory). 0 for a process without maps."""
    seen: dict[int, int] = {}
    for pid in pids:
        fd_dir = Path(f"/proc/{pid}/fd")
        try:
            fds = list(fd_dir.iterdir())
        except OSError:
            continue
        for fd in fds:
            try:
                if os.readlink(fd) != "anon_inode:bpf-map":
                    continue
                info = Path(f"/proc/{pid}/fdinfo/{fd.name}").read_text()
            except OSError:
                continue
            fields = dict(line.split(":", 1) for line in info.splitlines() if ":" in line)
            with contextlib.suppress(KeyError, ValueError):
                seen[int(fields["map_id"])] = int(fields["memlock"])
    return sum(seen.values())


def tree_pids(pid: int) -> list[int]:
    """`pid` and its descendants: Miredo forks an unprivileged child that runs the tunnel."""
    return [pid, *system.descendants(pid)]


def cpu_seconds(pids: Sequence[int]) -> float:
    """CPU time (user + system, all threads) used so far by `pids` together."""
    ticks = 0
    for pid in pids:
        stat = _proc_text(pid, "stat")
        if stat:
            ticks += parse_stat_cpu_ticks(stat)
    return ticks / os.sysconf("SC_CLK_TCK")


def rss_bytes(pids: Sequence[int]) -> int:
    """Resident memory of `pids` together."""
    total = 0
    for pid in pids:
        status = _proc_text(pid, "status")
        if status:
            with contextlib.suppress(ValueError):
                total += parse_vm_rss(status)
    return total


# --- fake peers ---------------------------------------------------------------------------------

# The relay memory benchmark creates peers whose Teredo addresses embed a fake server (a host of
# the lab that answers every indirect bubble) and a mapping on that same host. Mapped addresses:
# MAPPED_COUNT consecutive IPv4s from MAPPED_FIRST, each with ports PORT_FIRST..65535.
FAKE_SERVER = "198.51.100.30"
MAPPED_FIRST = "198.51.100.64"
MAPPED_COUNT = 16
PORT_FIRST = 1024
PORTS_PER_IP = 65536 - PORT_FIRST
MAX_FAKE_PEERS = MAPPED_COUNT * PORTS_PER_IP  # 1,032,192


def _ipv4_int(text: str) -> int:
    a, b, c, d = (int(x) for x in text.split("."))
    return (a << 24) | (b << 16) | (c << 8) | d


_MAPPED_FIRST_INT = _ipv4_int(MAPPED_FIRST)
_FAKE_SERVER_INT = _ipv4_int(FAKE_SERVER)


def peer_mapping(index: int) -> tuple[int, int]:
    """(mapped IPv4 as int, port) of fake peer `index` (0 <= index < MAX_FAKE_PEERS).

    Consecutive indexes change the port first, so 10^5 peers use only two IPv4s."""
    if not 0 <= index < MAX_FAKE_PEERS:
        raise ValueError(f"fake peer index {index} outside 0..{MAX_FAKE_PEERS - 1}")
    return _MAPPED_FIRST_INT + index // PORTS_PER_IP, PORT_FIRST + index % PORTS_PER_IP


def peer_index(ipv4: int, port: int) -> int | None:
    """The inverse of peer_mapping, or None for a mapping no fake peer has."""
    offset = ipv4 - _MAPPED_FIRST_INT
    if not 0 <= offset < MAPPED_COUNT or not PORT_FIRST <= port <= 65535:
        return None
    return offset * PORTS_PER_IP + port - PORT_FIRST


def peer_address(index: int, server: int = _FAKE_SERVER_INT) -> bytes:
    """The Teredo address (16 bytes) of fake peer `index`: server `server`, flags 0 (not cone:
    RFC 4380 section 5.4.1 then has the relay send bubbles and wait for a direct one), and the
    mapping of peer_mapping(index)."""
    ipv4, port = peer_mapping(index)
    return pack_address(TEREDO_PREFIX, server, 0, port, ipv4)


def peer_index_of_address(addr16: bytes) -> int | None:
    """The fake peer whose Teredo address is `addr16`, or None."""
    if len(addr16) != 16 or addr16[:4] != TEREDO_PREFIX:
        return None
    return peer_index(*embedded_mapping(addr16))


# --- lab helpers (root) -------------------------------------------------------------------------


def interrupt_on_sigterm() -> None:
    """Make SIGTERM (and SIGINT even where a shell started us with it ignored) raise
    KeyboardInterrupt, so that every `finally` runs and the lab is taken down."""

    def interrupt(_signum: int, _frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)
    signal.signal(signal.SIGINT, interrupt)


def require_root() -> None:
    if os.geteuid() != 0:
        raise BenchError("the benchmarks build network namespaces: run them as root")
    for tool in ("ip", "nft", "iperf3", "miredo", "miredo-server"):
        if shutil.which(tool) is None:
            raise BenchError(f"`{tool}` not found: run scripts/setup.sh as root")


def impl_available(impl: str, role: str) -> bool:
    """Miredo is always there (require_root checked it); ours once its verb is registered."""
    if impl == "miredo":
        return True
    from teredo.cli.main import VERB_MODULES  # noqa: PLC0415

    return f"teredo.cli.{role}" in VERB_MODULES


def parse_impls(text: str) -> list[str]:
    """'both' -> ['miredo', 'teredo']; 'miredo' or 'teredo' -> that one."""
    key = text.strip().lower()
    if key == "both":
        return list(IMPLS)
    if key in IMPLS:
        return [key]
    raise ValueError(f"--impl: choose miredo, teredo or both, not {text!r}")


@contextlib.contextmanager
def bench_lab(
    *,
    server: str = "miredo",
    relay: str | None = "miredo",
    client: str | None = "miredo",
    nats: Sequence[str] = ("port-restricted",),
    prefix: str = PREFIX,
) -> Iterator[Lab]:
    """A lab under `prefix` (default PREFIX), always taken down (namespaces, processes) on the
    way out. Two benchmarks may run at once only under different prefixes: a lab removes any
    stale namespace of its own prefix when it comes up."""
    lab = Lab(prefix, list(nats), server_impl=server, relay_impl=relay, client_impl=client)
    try:
        lab.up()
        yield lab
    finally:
        lab.down()


def role_pids(lab: Lab, host: str) -> list[int]:
    """The live processes of the daemon recorded for `host`, with their descendants."""
    pids: list[int] = []
    for rec in lab.procs:
        if rec.host == host and rec.role and rec.alive():
            pids.extend(tree_pids(rec.pid))
    if not pids:
        raise BenchError(f"no live daemon on {host}\n{lab.log_tail(host)}")
    return pids


def wait_tcp_listen(lab: Lab, host: str, port: int, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        out = lab.exec(host, ["ss", "-Hltn", f"sport = :{port}"], check=False)
        if out.stdout.strip():
            return
        time.sleep(0.05)
    raise BenchError(f"iperf3 server on {host} not listening after {timeout} s")


def iperf3(
    lab: Lab,
    *,
    server_host: str,
    server_addr: str,
    client_host: str,
    args: Sequence[str],
    seconds: float,
) -> str:
    """Run one iperf3 test: a one-off server in `server_host` bound to `server_addr`, the client
    in `client_host` with `args`; returns the client's JSON. Bounded by `seconds` + 20 s."""
    server = lab.popen(
        server_host,
        ["iperf3", "-s", "-1", "-B", server_addr, "-p", str(IPERF_PORT)],
        name=f"iperf3-{server_host}",
    )
    try:
        wait_tcp_listen(lab, server_host, IPERF_PORT)
        out = lab.exec(
            client_host,
            [
                "iperf3",
                "-c",
                server_addr,
                "-p",
                str(IPERF_PORT),
                "-t",
                str(seconds),
                "-J",
                "--connect-timeout",
                "5000",
                *args,
            ],
            timeout=seconds + 20,
            check=False,
        )
        return str(out.stdout)
    finally:
        # A one-off server (-1) exits by itself after the test; give it a moment first.
        reap(server)


def reap(proc: subprocess.Popen[bytes]) -> None:
    """Waits 2 s for `proc` (one of ours) to exit by itself, then terminates it, then kills it."""
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=2)
    if proc.poll() is None:
        proc.terminate()
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=3)
    if proc.poll() is None:
        proc.kill()
        proc.wait(timeout=3)


def print_report(
    title: str,
    metrics: Sequence[tuple[str, str]],
    results: Mapping[str, Mapping[str, float | None]],
    extra: Mapping[str, object],
) -> dict[str, object]:
    """Print the table and the JSON line of one benchmark; returns the JSON record."""
    print(f"\n== {title}  (load {load_average()})")
    print(
        format_table(
            ["metric", "miredo", "teredo", "ours/miredo"], comparison_rows(metrics, results)
        )
    )
    record: dict[str, object] = {**extra, "results": results}
    record["ratios"] = {
        key: ratio(results.get("teredo", {}).get(key), results.get("miredo", {}).get(key))
        for key, _ in metrics
        if key not in NO_RATIO
    }
    print(json_line(title, record))
    return record


def _measured_iperf3(
    lab: Lab,
    hosts: Sequence[str],
    *,
    server_host: str,
    server_addr: str,
    client_host: str,
    args: Sequence[str],
    seconds: float,
) -> tuple[str, list[float], float]:
    """iperf3(...) while counting the CPU of the daemons on `hosts`: (JSON, CPU seconds of
    each, wall-clock seconds)."""
    pids = [role_pids(lab, host) for host in hosts]
    cpu0, t0 = [cpu_seconds(p) for p in pids], time.monotonic()
    text = iperf3(
        lab,
        server_host=server_host,
        server_addr=server_addr,
        client_host=client_host,
        args=args,
        seconds=seconds,
    )
    wall = time.monotonic() - t0
    return text, [cpu_seconds(p) - c for p, c in zip(pids, cpu0, strict=True)], wall


def transfer_metrics(
    lab: Lab,
    *,
    daemon_host: str,
    other_host: str,
    client_addr: str,
    seconds: float,
    udp_pps: int,
    payload: int = 64,
    client_host: str = "client1",
    native_host: str = "native",
) -> dict[str, float | None]:
    """TCP throughput and small-packet UDP rate between `native_host` and the Teredo client at
    `client_addr`, both directions, with the CPU used meanwhile by the daemon under test (on
    `daemon_host`) and by the other Teredo daemon on the path (`other_host`: the relay when the
    client is tested, the client when the relay is), to see which one was the bottleneck.

    "down" is native -> client (the iperf3 client runs on the native host), "up" the reverse
    (-R). The iperf3 server runs on the Teredo client, bound to its Teredo address.
    """
    results: dict[str, float | None] = {}
    for direction, extra in (("down", []), ("up", ["-R"])):
        text, (cpu, other), wall = _measured_iperf3(
            lab,
            (daemon_host, other_host),
            server_host=client_host,
            server_addr=client_addr,
            client_host=native_host,
            args=extra,
            seconds=seconds,
        )
        tcp = parse_iperf3_tcp(text)
        results[f"tcp_{direction}_mbps"] = tcp.receiver_bps / 1e6
        results[f"tcp_{direction}_cpu_pct"] = 100.0 * cpu / wall
        results[f"tcp_{direction}_other_cpu_pct"] = 100.0 * other / wall
    bitrate = udp_pps * payload * 8
    hosts = lab.hosts()
    for direction, extra in (("down", []), ("up", ["-R"])):
        drops0 = {host: socket_buffer_drops(lab, host) for host in hosts}
        text, (cpu, other), wall = _measured_iperf3(
            lab,
            (daemon_host, other_host),
            server_host=client_host,
            server_addr=client_addr,
            client_host=native_host,
            args=["-u", "-l", str(payload), "-b", str(bitrate), *extra],
            seconds=seconds,
        )
        udp = parse_iperf3_udp(text, payload)
        results[f"udp_{direction}_pps"] = udp.received_pps
        results[f"udp_{direction}_loss_pct"] = 100.0 * udp.loss
        results[f"udp_{direction}_cpu_pct"] = 100.0 * cpu / wall
        results[f"udp_{direction}_other_cpu_pct"] = 100.0 * other / wall
        # Where the lost datagrams went: full socket buffers, all namespaces and the receiving
        # end's (the Teredo client's host down, the native host up).
        drops = {host: socket_buffer_drops(lab, host) - drops0[host] for host in hosts}
        receiver = client_host if direction == "down" else native_host
        results[f"udp_{direction}_rcvbuf_drops"] = float(sum(drops.values()))
        results[f"udp_{direction}_rcvbuf_drops_receiver"] = float(drops.get(receiver, 0))
        # CPU per packet that crossed: the figure least dependent on who else is running.
        results[f"udp_{direction}_us_per_pkt"] = 1e6 * cpu / udp.received if udp.received else None
    return results


def transfer_metric_labels(other: str) -> tuple[tuple[str, str], ...]:
    """(key, label) of transfer_metrics' results; `other` names the other daemon ("relay")."""
    return (
        ("tcp_down_mbps", "TCP native->client Mbit/s"),
        ("tcp_down_cpu_pct", "  tested daemon CPU %"),
        ("tcp_down_other_cpu_pct", f"  {other} CPU %"),
        ("tcp_up_mbps", "TCP client->native Mbit/s"),
        ("tcp_up_cpu_pct", "  tested daemon CPU %"),
        ("tcp_up_other_cpu_pct", f"  {other} CPU %"),
        ("udp_down_pps", "UDP 64 B native->client pkt/s"),
        ("udp_down_loss_pct", "  loss %"),
        ("udp_down_rcvbuf_drops", "  socket buffer drops, all hosts"),
        ("udp_down_rcvbuf_drops_receiver", "  of which at the client host"),
        ("udp_down_cpu_pct", "  tested daemon CPU %"),
        ("udp_down_other_cpu_pct", f"  {other} CPU %"),
        ("udp_down_us_per_pkt", "  tested daemon CPU us/pkt"),
        ("udp_up_pps", "UDP 64 B client->native pkt/s"),
        ("udp_up_loss_pct", "  loss %"),
        ("udp_up_rcvbuf_drops", "  socket buffer drops, all hosts"),
        ("udp_up_rcvbuf_drops_receiver", "  of which at the native host"),
        ("udp_up_cpu_pct", "  tested daemon CPU %"),
        ("udp_up_other_cpu_pct", f"  {other} CPU %"),
        ("udp_up_us_per_pkt", "  tested daemon CPU us/pkt"),
    )
