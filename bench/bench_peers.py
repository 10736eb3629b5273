"""Peer table memory and speed: `python -m bench.bench_peers --peers 1000000` (from /work/main).

Each measurement runs in a fresh interpreter so that nothing else shares its heap: the child
reads VmRSS from /proc/self/status before building the table and after filling it with
`--peers` Teredo addresses (made one at a time, so the addresses themselves are not counted),
then times inserts, lookups (hits and misses) and `touch_tx`. `--layout dict` measures the
naive alternative (a dict of slotted objects) for comparison. The last line is a JSON summary.
Nothing is sent anywhere: the addresses are only keys (2001:0::/32 with lab IPv4s).
"""

from __future__ import annotations

import argparse
import gc
import json
import random
import struct
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from teredo.core.peers import PeerTable

_SERVER = 0xCB007101  # 203.0.113.1
_PREFIX = struct.Struct(">IIHHI")


def teredo_address(i: int) -> bytes:
    """Peer number i: client 198.51.100.(i % 256), mapped port 1024 + i // 256 (obfuscated)."""
    ip = (0xC6336400 | (i & 0xFF)) ^ 0xFFFFFFFF
    port = (1024 + (i >> 8)) ^ 0xFFFF
    return _PREFIX.pack(0x20010000, _SERVER, 0x8000 | (i & 0x3CFF), port, ip)


def vm_rss() -> int:
    """Resident memory of this process in bytes."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


class _DictPeer:
    __slots__ = ("bubbles", "ipv4", "last_rx", "last_tx", "local", "port", "trusted")

    def __init__(self, now: float) -> None:
        self.ipv4 = 0
        self.port = 0
        self.trusted = False
        self.local = False
        self.last_rx = now - 30.0
        self.last_tx = now - 30.0
        self.bubbles = 0


def best_rate(operation: Callable[[], object], count: int, repeats: int) -> int:
    """Operations per second, from the fastest of `repeats` runs of `count` operations (the
    machine may be shared: the fastest run is the least disturbed)."""
    fastest = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        operation()
        fastest = min(fastest, time.perf_counter() - started)
    return round(count / fastest)


def child(peers: int, capacity: int, samples: int, layout: str, repeats: int) -> dict[str, object]:
    make = teredo_address
    now = 1000.0
    gc.collect()
    rss0 = vm_rss()
    started = time.perf_counter()
    if layout == "dict":
        naive: dict[bytes, _DictPeer] = {}
        for i in range(peers):
            naive[make(i)] = _DictPeer(now)
        insert_s = time.perf_counter() - started
        nbytes = 0
    else:
        table = PeerTable(capacity, epoch=now)
        insert = table.insert
        for i in range(peers):
            insert(make(i), now)
        insert_s = time.perf_counter() - started
        nbytes = table.nbytes()
    gc.collect()
    rss1 = vm_rss()

    rng = random.Random(4380)
    hits = [make(rng.randrange(peers)) for _ in range(samples)]
    misses = [make(peers + rng.randrange(1 << 20)) for _ in range(samples)]

    def make_all() -> None:
        for i in range(samples):
            make(i)

    result: dict[str, object] = {
        "layout": layout,
        "peers": peers,
        "capacity": capacity if layout == "table" else peers,
        "rss_delta_bytes": rss1 - rss0,
        "bytes_per_peer": round((rss1 - rss0) / peers, 1),
        "column_bytes_per_peer": round(nbytes / peers, 1),
        # The fill, one run: each insert includes making its address (rate given apart).
        "fill_inserts_per_s": round(peers / insert_s),
        "address_make_per_s": best_rate(make_all, samples, repeats),
    }
    if layout == "dict":
        get = naive.get

        def dict_hits() -> None:
            for addr in hits:
                get(addr)

        result["lookups_per_s"] = best_rate(dict_hits, samples, repeats)
        return result

    lookup = table.lookup
    rows = [row for row in map(lookup, hits) if row is not None]
    # Each timed run is 2 s after the previous one, so every touch moves its row in the LRU
    # list (within 1 s it would not): the worst case.
    clock = [now]

    def tick() -> float:
        clock[0] += 2.0
        return clock[0]

    def lookup_hits() -> None:
        for addr in hits:
            lookup(addr)

    def lookup_misses() -> None:
        for addr in misses:
            lookup(addr)

    def touch_all() -> None:
        touch = table.touch_tx
        when = tick()
        for row in rows:
            touch(row, when)

    result["lookups_per_s"] = best_rate(lookup_hits, samples, repeats)
    result["misses_per_s"] = best_rate(lookup_misses, samples, repeats)
    result["touch_tx_per_s"] = best_rate(touch_all, len(rows), repeats)

    # The relay's per-packet work with a known client: case 1 in one call, then the mapping.
    when = tick()
    for row in rows:
        table.trust(row, 0, 0, when)
    send_row = table.send_row
    receive_row = table.receive_row
    mapping = table.mapping

    def send_all() -> None:
        when = tick()
        for addr in hits:
            row = send_row(addr, when)
            if row is not None:
                mapping(row)

    def receive_all() -> None:
        when = tick()
        for addr in hits:
            receive_row(addr, 0, 0, when)

    result["send_path_per_s"] = best_rate(send_all, samples, repeats)
    result["receive_path_per_s"] = best_rate(receive_all, samples, repeats)

    # A flood of new addresses: every insert into the full table evicts an untrusted peer.
    first = [peers + (1 << 21)]

    def flood() -> None:
        base = first[0]
        first[0] += samples
        when = tick()
        for i in range(base, base + samples):
            insert(make(i), when)

    result["evicting_inserts_per_s"] = best_rate(flood, samples, repeats)
    result["trusted_kept"] = table.stats().trusted
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--peers", type=int, default=1_000_000)
    parser.add_argument("--capacity", type=int, default=0, help="default: --peers")
    parser.add_argument("--samples", type=int, default=200_000, help="timed lookups")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs; the best is kept")
    parser.add_argument("--layout", choices=("table", "dict"), default="table")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.peers < 1 or args.samples < 1 or args.repeats < 1:
        parser.error("--peers, --samples and --repeats must be >= 1")
    capacity = args.capacity or args.peers
    if capacity < args.peers:
        parser.error("--capacity must be >= --peers")
    if args.child:
        summary = child(args.peers, capacity, args.samples, args.layout, args.repeats)
        print(json.dumps(summary))
        return 0
    command = [sys.executable, "-m", "bench.bench_peers", "--child"]
    command += ["--peers", str(args.peers), "--capacity", str(capacity)]
    command += ["--samples", str(args.samples), "--repeats", str(args.repeats)]
    command += ["--layout", args.layout]
    root = Path(__file__).resolve().parent.parent
    done = subprocess.run(command, cwd=root, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        sys.stderr.write(done.stderr)
        return done.returncode
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    for key, value in summary.items():
        print(f"{key:>24}: {value}")
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
