"""The machines' per-packet fast paths alone, in-process: `python -m bench.core_paths`.

No lab, no sockets: a qualified client, a relay and a server are fed the packets of their
hot paths (RFC 4380 section 5.2.3 / 5.2.4 case 1 for the client, 5.4.1 / 5.4.2 for the relay,
a known RS for the server, every limit raised) and the CPU time per packet
(time.process_time, best of `--repeats`) is printed, one JSON line at the end. On a shared
machine this is far steadier than the lab's transfers; compare two trees with
PYTHONPATH=<export>/src:<export> (docs/benchmarks.md, "Shape, part 2").
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable

from bench.fuzz_machines import _qualified_client
from teredo.core.addr import (
    LINK_LOCAL_RESTRICTED,
    TEREDO_PREFIX,
    ipv4_to_int,
    make_flags,
    pack_address,
)
from teredo.core.ipv6 import build_rs
from teredo.core.relay import RelayMachine, RelayParams
from teredo.core.server import ServerLimits, ServerMachine, ServerParams
from teredo.core.wire import build_auth

T0 = 1000.0
NATIVE = bytes.fromhex("20010db8000100000000000000000100")  # 2001:db8:1::100
PEER_IP, PEER_PORT = "203.0.113.50", 40000
PEER = pack_address(
    TEREDO_PREFIX, ipv4_to_int("198.51.100.10"), make_flags(0x123), PEER_PORT, ipv4_to_int(PEER_IP)
)


class _Sink:
    def send_udp(self, payload: object, destination: object, *rest: object) -> None:
        pass

    def send_discovery(self, payload: bytes) -> None:
        pass

    def write_tun(self, packet: object) -> None:
        pass

    def send_ipv6(self, packet: bytes) -> None:
        pass


def packet(src: bytes, dst: bytes, size: int = 64) -> bytes:
    """An IPv6/UDP-sized packet of `size` bytes (next header 17, hop limit 64)."""
    payload = bytes(size - 40)
    return (
        bytes((0x60, 0, 0, 0))
        + len(payload).to_bytes(2, "big")
        + bytes((17, 64))
        + src
        + dst
        + payload
    )


def bubble(src: bytes, dst: bytes) -> bytes:
    return bytes((0x60, 0, 0, 0, 0, 0, 59, 0)) + src + dst


def per_packet(feed: Callable[[float], None], count: int, repeats: int) -> float:
    """Best CPU ns per call of `feed(now)` over `repeats` runs of `count` calls."""
    best = float("inf")
    for r in range(repeats):
        now = T0 + 1.0 + r * 0.001
        start = time.process_time()
        for _ in range(count):
            feed(now)
        best = min(best, time.process_time() - start)
    return best / count * 1e9


def client_paths(count: int, repeats: int) -> dict[str, float]:
    client = _qualified_client()
    assert client.address is not None
    own = client.address
    # Section 5.2.3 case 3: a Teredo peer sending from its own mapping becomes trusted.
    source = (PEER_IP, PEER_PORT)
    client.receive_udp(bubble(PEER, own), source, T0 + 0.5)
    inbound = packet(PEER, own)
    outbound = packet(own, PEER)
    slow = client.slow_inputs
    got = {
        "client_udp_in_ns": per_packet(
            lambda now: client.receive_udp(inbound, source, now), count, repeats
        ),
        "client_tun_out_ns": per_packet(
            lambda now: client.receive_tun(outbound, now), count, repeats
        ),
    }
    assert client.slow_inputs == slow, "the client left its fast paths"
    return got


def relay_paths(count: int, repeats: int) -> dict[str, float]:
    relay = RelayMachine(RelayParams(), _Sink(), bytes(range(32)), T0)
    source = (PEER_IP, PEER_PORT)
    relay.receive_tun(packet(NATIVE, PEER), T0 + 0.1)  # a new peer: queued, bubbled
    relay.receive_udp(bubble(PEER, relay.bubble_source(PEER)), source, T0 + 0.2)  # trusted
    native_in = packet(NATIVE, PEER)
    teredo_in = packet(PEER, NATIVE)
    got = {
        "relay_tun_in_ns": per_packet(
            lambda now: relay.receive_tun(native_in, now), count, repeats
        ),
        "relay_udp_in_ns": per_packet(
            lambda now: relay.receive_udp(teredo_in, source, now), count, repeats
        ),
    }
    assert relay.stats.to_teredo >= count * repeats, relay.summary()
    assert relay.stats.from_teredo >= count * repeats, relay.summary()
    return got


def server_paths(count: int, repeats: int) -> dict[str, float]:
    unlimited = ServerLimits(
        rs_rate=1e9, rs_burst=1e9, rs_ipv4_rate=1e9, rs_ipv4_burst=1e9, rs_total_rate=1e9
    )
    primary = ipv4_to_int("198.51.100.10")
    server = ServerMachine(ServerParams(primary, primary + 1, limits=unlimited), _Sink())
    rs = build_auth(bytes(range(8))) + build_rs(LINK_LOCAL_RESTRICTED)
    source = (PEER_IP, PEER_PORT)
    server.receive(rs, source, False, T0 + 0.1)  # checked in full once, then known
    sent = server.stats.router_advertisements
    got = {
        "server_rs_ns": per_packet(
            lambda now: server.receive(rs, source, False, now), count, repeats
        ),
    }
    assert server.stats.router_advertisements == sent + count * repeats, server.drops.snapshot()
    return got


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.core_paths", description=__doc__)
    parser.add_argument("--count", type=int, default=200_000, help="packets per run")
    parser.add_argument("--repeats", type=int, default=5, help="runs, the best is kept")
    args = parser.parse_args(argv)
    if not 1 <= args.count <= 10_000_000 or not 1 <= args.repeats <= 50:
        parser.error("--count must be 1..10000000 and --repeats 1..50")
    results = {
        **client_paths(args.count, args.repeats),
        **relay_paths(args.count, args.repeats),
        **server_paths(args.count, args.repeats),
    }
    for name, ns in results.items():
        print(f"{name:24} {ns:8.0f} ns per packet")
    print(json.dumps({"benchmark": "core-paths", "count": args.count, **results}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
