"""What a datagram through the relay costs at the receiving socket: `python -m bench.relay_truesize`
(root). docs/benchmarks.md, "Where the native -> client datagrams are lost".

A UDP socket's receive buffer (net.core.rmem_default, 212,992 B) is charged the *truesize* of
each queued datagram (its buffer allocation), not its length: the fewer bytes a datagram costs,
the longer a burst the receiver can fall behind without a drop. For each relay (Miredo's, ours):
a lab with a Miredo server and client, the client's daemon stopped (SIGSTOP), `--count` 64-byte
datagrams from the native host to the client's Teredo address, then the Recv-Q of the client's
UDP socket (`ss -uan`) / count = bytes charged per datagram; then the same up, into a native
socket that never reads. Bounded: `--count` datagrams at 500 a second each way.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time

from bench.bench_relay import wait_relay_ready
from bench.lab_bench import bench_lab, role_pids
from bench.path import veth_offload_off
from teredo.lab.roles import Impl, Role
from teredo.lab.topology import Lab

SEND = """
import socket, sys, time
s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
if len(sys.argv) > 4:
    s.bind((sys.argv[4], 0))
for i in range(int(sys.argv[2])):
    s.sendto(b"x" * 64, (sys.argv[1], int(sys.argv[3])))
    time.sleep(0.002)
"""
HOLD = """
import socket, sys, time
s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
s.bind((sys.argv[1], int(sys.argv[2])))
time.sleep(float(sys.argv[3]))
"""
PORT = 9999


def _global_address(lab: Lab, host: str, dev: str | None = None) -> str:
    argv = ["ip", "-6", "-o", "addr", "show", "scope", "global"]
    out = lab.exec(host, [*argv, "dev", dev] if dev else argv).stdout.split()
    return str(out[3].split("/")[0])


def _queued(lab: Lab, host: str, match: str = "") -> list[int]:
    """Recv-Q of the UDP sockets of `host` holding data (matching `match`)."""
    rows = [line.split() for line in lab.exec(host, ["ss", "-uan"]).stdout.splitlines()]
    return [int(r[1]) for r in rows if r and r[0] == "UNCONN" and int(r[1]) and match in r[3]]


def measure(impl: str, datapath: str, count: int, prefix: str) -> dict[str, float | None]:
    ours = impl == "teredo"
    with bench_lab(server="miredo", relay=None if ours else impl, prefix=prefix) as lab:
        veth_offload_off(lab)
        if ours:
            lab.start(Role.RELAY, Impl.TEREDO, extra=["--datapath", datapath])
            wait_relay_ready(lab)
        lab.wait_qualified(1, timeout=30)
        client = _global_address(lab, "client1", "teredo")
        native = _global_address(lab, "native")
        # Up first (stopping Miredo's client below makes it qualify anew afterwards).
        hold = lab.popen("native", [sys.executable, "-c", HOLD, native, str(PORT), "30"])
        try:
            time.sleep(1.0)
            lab.exec("client1", [sys.executable, "-c", SEND, native, str(count), str(PORT), client])
            time.sleep(0.5)
            up = _queued(lab, "native", f":{PORT}")
        finally:
            hold.kill()
            hold.wait(timeout=5)
        lab.exec("native", [sys.executable, "-c", SEND, client, "3", "9"])  # the peer trusted
        time.sleep(1.0)
        pids = role_pids(lab, "client1")
        for pid in pids:
            os.kill(pid, signal.SIGSTOP)
        try:
            lab.exec("native", [sys.executable, "-c", SEND, client, str(count), "9"])
            time.sleep(0.5)
            down = _queued(lab, "client1")
        finally:
            for pid in pids:
                os.kill(pid, signal.SIGCONT)
    return {
        "down_bytes_per_datagram": down[0] / count if len(down) == 1 else None,
        "up_bytes_per_datagram": up[0] / count if len(up) == 1 else None,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--impl", default="both", help="miredo, teredo or both")
    parser.add_argument("--datapath", default="kernel", choices=("auto", "kernel", "user"))
    parser.add_argument("--count", type=int, default=50, help="datagrams each way (1-200)")
    parser.add_argument("--prefix", default="tdt-", help="lab namespace prefix")
    args = parser.parse_args(argv)
    if not 1 <= args.count <= 200:
        parser.error("--count must be in [1, 200] (the socket buffer holds about 250)")
    impls = ["miredo", "teredo"] if args.impl == "both" else [args.impl]
    results = {impl: measure(impl, args.datapath, args.count, args.prefix) for impl in impls}
    for impl, got in results.items():
        print(
            f"{impl:7} bytes charged per 64-byte datagram: native -> client "
            f"{got['down_bytes_per_datagram']}, client -> native {got['up_bytes_per_datagram']}"
        )
    print(json.dumps({"benchmark": "relay-truesize", "datapath": args.datapath, **results}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
