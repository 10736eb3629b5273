"""The shared data thread alone (io/datathread.py), in-process: `python -m bench.data_thread`.

No lab: a DataThread serves a UDP socket on 127.0.0.1 and a pipe standing in for the TUN (the
client's and the relay's shape), or two UDP sockets and no TUN with `--shape server`, and feeds
a counter. A sender in the main thread sends `--burst` datagrams (64 bytes) at a time, then
sleeps `--gap` seconds so that each burst is a wake-up of its own, `--count` in all. Printed:
the data thread's own CPU time per datagram (its thread CPU clock: poll, reads, lock, feed),
best of `--repeats`, as one JSON line. `--burst 1` is the client's and relay's common case at
moderate rates (one wake-up per datagram, where the per-wake-up work weighs most); a larger
burst is the busy case (adaptive batches).

Compare two trees with PYTHONPATH=<export>/src:. (docs/benchmarks.md, "The server on the shared
data path"); the module's signature of the tree under test is used as it is.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import threading
import time
from typing import Any

from teredo.io.datathread import DataThread, Feed


class _Counter:
    def __init__(self) -> None:
        self.fed = 0

    def feed_udp(self, data: bytes, source: Any, now: float) -> None:
        self.fed += 1

    def feed_tun(self, packet: bytes, now: float) -> None:
        pass


def _thread_cpu(thread: threading.Thread) -> float:
    ident = thread.ident
    if ident is None:
        raise RuntimeError("the data thread has not started")
    return time.clock_gettime(time.pthread_getcpuclockid(ident))


def run(shape: str, count: int, burst: int, gap: float) -> float:
    """CPU ns per datagram of one run."""
    counter = _Counter()
    socks = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(2)]
    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    tun_r, tun_w = os.pipe2(os.O_NONBLOCK)
    try:
        for s in (*socks, sender):
            s.bind(("127.0.0.1", 0))
        for s in socks:
            s.setblocking(False)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        lock = threading.Lock()
        if shape == "server":
            feed = Feed((counter.feed_udp, counter.feed_udp))
            data = DataThread("bench-data", socks, None, feed, lock=lock, on_fatal=lambda why: None)
        else:
            feed = Feed(counter.feed_udp, counter.feed_tun)
            data = DataThread(
                "bench-data",
                socks[0],
                tun_r,
                feed,
                lock=lock,
                on_fatal=lambda why: None,
                on_tun_error=lambda fd, exc: None,
            )
        target = socks[0].getsockname()
        payload = bytes(64)
        sendto = sender.sendto
        data.start()
        try:
            thread = next(t for t in threading.enumerate() if t.name == "bench-data")
            start = _thread_cpu(thread)
            sent = 0
            while sent < count:
                n = min(burst, count - sent)
                for _ in range(n):
                    sendto(payload, target)
                sent += n
                time.sleep(gap)
            deadline = time.monotonic() + 10.0
            while counter.fed < count and time.monotonic() < deadline:
                time.sleep(0.01)
            elapsed = _thread_cpu(thread) - start
            if counter.fed < count:
                raise RuntimeError(f"fed {counter.fed} of {count}: datagrams lost")
        finally:
            data.stop()
    finally:
        for s in (*socks, sender):
            s.close()
        os.close(tun_r)
        os.close(tun_w)
    return elapsed / count * 1e9


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shape", choices=("client", "server"), default="client")
    parser.add_argument("--count", type=int, default=10_000, help="datagrams per run (<= 10^6)")
    parser.add_argument("--burst", type=int, default=1, help="datagrams sent at a time (<= 256)")
    parser.add_argument("--gap", type=float, default=0.0001, help="sleep after a burst, s")
    parser.add_argument("--repeats", type=int, default=5, help="runs; the best is printed")
    args = parser.parse_args(argv)
    count = min(max(args.count, 1), 1_000_000)
    burst = min(max(args.burst, 1), 256)
    best = min(
        run(args.shape, count, burst, min(max(args.gap, 0.0), 0.01))
        for _ in range(max(args.repeats, 1))
    )
    print(
        json.dumps(
            {
                "benchmark": "data-thread",
                "shape": args.shape,
                "burst": burst,
                "count": count,
                "cpu_ns_per_datagram": round(best),
            }
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
