"""A bounded soak (issue 12, "Faults"): steady traffic between several Teredo clients and the
native host for N minutes, every daemon's memory and file descriptors sampled throughout.

    sudo .venv/bin/python -m bench.soak [--minutes 20] [--clients 3] [--rate 20] [--loss 0]
        [--dup 0] [--reorder 0] [--impl teredo|miredo] [--prefix sok-]

Lab: the implementation's server, relay and clients (each behind its own port-restricted
NAT), the native host. Each client sends `rate` numbered UDP datagrams a second to an echo
on the native host, which sends each back: through the client's NAT, the wan and the relay
both ways. `--loss P` drops P % of the UDP datagrams the wan forwards (teredo.lab.wanfaults),
so a round trip is expected to be lost with probability 1 - (1 - P/100)^2; the report gives
the loss measured beyond that; `--dup P` and `--reorder P` duplicate and hold back P % of
them (teredo.lab.wanfaults), and the echoes are counted duplicated and reordered. Every
`--sample` seconds: VmRSS and the open descriptors of each daemon (with its children:
Miredo forks). Growth is the last sample minus the first one taken after the warm-up (the
first minute, or a tenth of the run when shorter).

Not in CI (a long run): docs/robustness.md has the figures of a run. Every sending loop is
bounded in count and time; nothing leaves the lab's namespaces.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass

from teredo.lab import system, wanfaults
from teredo.lab.nat import NatKind
from teredo.lab.roles import Impl
from teredo.lab.topology import NATIVE_V6, Lab, ping_counts

ECHO_PORT = 7007
MAX_RATE = 200  # datagrams a second per client, at most

# The native host's echo: every datagram back to its sender, until `seconds` have passed or
# `limit` datagrams were echoed.
_ECHO = r"""
import socket, sys, time
port, seconds, limit = int(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3])
s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
s.bind(("::", port)); s.settimeout(1.0)
print("ready", flush=True)
end, n = time.monotonic() + seconds, 0
while time.monotonic() < end and n < limit:
    try:
        data, peer = s.recvfrom(2048)
    except socket.timeout:
        continue
    s.sendto(data, peer); n += 1
"""

# A client's sender: `count` numbered datagrams at `rate` a second, the echoes counted by
# number (duplicates apart; reordered: below the highest seen; late: 5 s or more); prints
# one JSON line at the end.
_SENDER = r"""
import json, select, socket, struct, sys, time
dst, port, rate, count = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4])
s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
s.connect((dst, port)); s.setblocking(False)
pad = bytes(56)
got, dup, errors, late, reordered, top = set(), 0, 0, 0, 0, -1
start = time.monotonic()
sent = 0
def drain(until):
    global dup, late, reordered, top
    while True:
        wait = until - time.monotonic()
        if wait <= 0: return
        r, _, _ = select.select([s], [], [], wait)
        if not r: return
        try:
            data = s.recv(2048)
        except OSError:
            continue
        if len(data) < 8: continue
        seq, = struct.unpack("!Q", data[:8])
        if seq in got: dup += 1; continue
        if seq < top: reordered += 1
        top = max(top, seq)
        if seq < sent - 5 * rate: late += 1
        got.add(seq)
while sent < count:
    try:
        s.send(struct.pack("!Q", sent) + pad)
    except OSError:
        errors += 1
    sent += 1
    drain(start + sent / rate)
drain(time.monotonic() + 5.0)
print(json.dumps({"sent": sent, "received": len(got), "duplicates": dup, "late": late,
                  "reordered": reordered, "send_errors": errors}))
"""


@dataclass(frozen=True, slots=True)
class Sample:
    t: float  # seconds since the traffic started
    rss_kib: dict[str, int]  # daemon -> VmRSS (with children)
    fds: dict[str, int]  # daemon -> open descriptors (with children)


def _rss_kib(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def _fds(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return 0


def daemons(lab: Lab) -> dict[str, list[int]]:
    """Each daemon's host -> its live PIDs (the recorded one and its descendants); the soak's
    own senders and echo, started in the same hosts, are not daemons."""
    found: dict[str, list[int]] = {}
    for record in lab.procs:
        if record.role in ("server", "relay", "client") and record.alive():
            pids = found.setdefault(record.host, [])
            pids += [record.pid, *system.descendants(record.pid)]
    return found


def sample(lab: Lab, t: float) -> Sample:
    found = daemons(lab)
    return Sample(
        t,
        {h: sum(_rss_kib(p) for p in pids) for h, pids in found.items()},
        {h: sum(_fds(p) for p in pids) for h, pids in found.items()},
    )


def growth(samples: Sequence[Sample], warmup: float) -> dict[str, dict[str, int]]:
    """Per daemon: RSS (KiB) and descriptors at the first sample after `warmup` and at the
    last, and the difference."""
    if not samples:
        return {}
    base = next((s for s in samples if s.t >= warmup), samples[-1])
    last = samples[-1]
    return {
        h: {
            "rss_kib_start": base.rss_kib[h],
            "rss_kib_end": last.rss_kib.get(h, 0),
            "rss_kib_growth": last.rss_kib.get(h, 0) - base.rss_kib[h],
            "fds_start": base.fds[h],
            "fds_end": last.fds.get(h, 0),
            "fds_growth": last.fds.get(h, 0) - base.fds[h],
        }
        for h in base.rss_kib
    }


def expected_loss(percent: float) -> float:
    """A round trip crosses the lossy wan twice."""
    return 1.0 - (1.0 - percent / 100.0) ** 2


def _open_paths(lab: Lab) -> None:
    for site in lab.sites:
        for _ in range(10):
            counts = ping_counts(lab.ping(site.client_host, NATIVE_V6, count=2, deadline=4).stdout)
            if counts and counts[1]:
                break


def run(args: argparse.Namespace) -> dict[str, object]:
    impl = Impl(args.impl)
    seconds = args.minutes * 60.0
    rate = min(args.rate, MAX_RATE)
    count = int(seconds * rate)
    lab = Lab(
        args.prefix,
        [NatKind.PORT_RESTRICTED] * args.clients,
        server_impl=impl,
        relay_impl=impl,
        client_impl=impl,
    )
    try:
        lab.up()
        for site in lab.sites:
            lab.wait_qualified(site.index, timeout=90)
        _open_paths(lab)
        limit = count * args.clients * 2
        echo = lab.popen(
            "native",
            [sys.executable, "-c", _ECHO, str(ECHO_PORT), str(seconds + 60), str(limit)],
            name="native-echo",
            stdout=subprocess.PIPE,
        )
        assert echo.stdout is not None
        echo.stdout.readline()  # "ready"
        if args.loss:
            wanfaults.set_loss(lab, args.loss)
        if args.dup:
            wanfaults.set_duplication(lab, args.dup)
        if args.reorder:
            wanfaults.set_reorder(lab, args.reorder)
        senders = [
            lab.popen(
                site.client_host,
                [sys.executable, "-c", _SENDER, NATIVE_V6, str(ECHO_PORT), str(rate), str(count)],
                name=f"{site.client_host}-soak",
                stdout=subprocess.PIPE,
            )
            for site in lab.sites
        ]
        start = time.monotonic()
        samples = [sample(lab, 0.0)]
        while any(p.poll() is None for p in senders) and time.monotonic() - start < seconds + 60:
            time.sleep(min(args.sample, max(0.1, seconds + 60 - (time.monotonic() - start))))
            samples.append(sample(lab, time.monotonic() - start))
        flows = {}
        for site, proc in zip(lab.sites, senders, strict=True):
            try:
                out, _ = proc.communicate(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                out, _ = proc.communicate()
            text = out.decode() if isinstance(out, bytes) else (out or "")
            flows[site.client_host] = json.loads(text) if text.strip() else {"error": "no result"}
        dropped = wanfaults.dropped(lab)
        duplicated = wanfaults.duplicated(lab)
        held = wanfaults.held_back(lab)
    finally:
        lab.down()
    sent = sum(int(f.get("sent", 0)) for f in flows.values())
    received = sum(int(f.get("received", 0)) for f in flows.values())
    measured = 1.0 - received / sent if sent else 1.0
    return {
        "impl": impl.value,
        "minutes": args.minutes,
        "clients": args.clients,
        "rate_per_client": rate,
        "injected_loss_percent": args.loss,
        "injected_dup_percent": args.dup,
        "injected_reorder_percent": args.reorder,
        "wan_dropped": dropped,
        "wan_duplicated": duplicated,
        "wan_held_back": held,
        "flows": flows,
        "round_trip_loss": round(measured, 5),
        "expected_loss": round(expected_loss(args.loss), 5),
        "loss_beyond_injected": round(measured - expected_loss(args.loss), 5),
        "daemons": growth(samples, min(60.0, seconds / 10)),
        "samples": len(samples),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--minutes", type=float, default=20.0)
    parser.add_argument("--clients", type=int, default=3)
    parser.add_argument("--rate", type=float, default=20.0, help="datagrams/s per client")
    parser.add_argument("--loss", type=int, default=0, help="%% of wan UDP datagrams dropped")
    parser.add_argument("--dup", type=int, default=0, help="%% of them sent twice")
    parser.add_argument("--reorder", type=int, default=0, help="%% of them held back")
    parser.add_argument("--sample", type=float, default=10.0, help="seconds between samples")
    parser.add_argument("--impl", choices=("teredo", "miredo"), default="teredo")
    parser.add_argument("--prefix", default="sok-")
    args = parser.parse_args(argv)
    if not 0 < args.minutes <= 24 * 60 or not 1 <= args.clients <= 20 or args.rate <= 0:
        parser.error("--minutes in (0, 1440], --clients in 1..20, --rate > 0")
    result = run(args)
    print(f"{'daemon':10} {'RSS start':>10} {'RSS end':>10} {'growth':>8} {'fds':>9} {'growth':>6}")
    daemons_table = result["daemons"]
    assert isinstance(daemons_table, dict)
    for name, d in daemons_table.items():
        print(
            f"{name:10} {d['rss_kib_start']:>7} KiB {d['rss_kib_end']:>6} KiB "
            f"{d['rss_kib_growth']:>+8} {d['fds_start']:>4}->{d['fds_end']:<4} "
            f"{d['fds_growth']:>+6}"
        )
    print(
        f"round trips lost {result['round_trip_loss']:.3%} (injected loss alone: "
        f"{result['expected_loss']:.3%}; beyond it: {result['loss_beyond_injected']:+.3%})"
    )
    print(json.dumps({"benchmark": "soak", **result}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
