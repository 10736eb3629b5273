"""Fake Teredo clients for the relay memory benchmark (run by bench_relay inside the lab only).

    python -m bench.fakeclients answer --stats FILE [--bind 198.51.100.30] [--max-seconds T]
    python -m bench.fakeclients send --count N [--rate R] [--max-seconds T]

`answer` runs on the lab's fake-server host. The fake peers' Teredo addresses embed that host as
their server (bench.lab_bench.peer_address), so a relay that has native traffic for one of them
sends its indirect bubble there (RFC 4380 section 5.4.1: to the server embedded in the address,
UDP 3544). For every such bubble the process answers as the client would after the server
forwarded it (section 5.2.3): a direct bubble from the client's mapped address and port (both on
this host; a raw IPv4 socket sets the source port) to the relay's address and port, with the
client's Teredo address as IPv6 source, so the relay trusts the peer (section 5.4.2). It counts
the distinct peers answered (a bitmap over the peer index) and rewrites a small JSON stats file
every half second.

`send` runs on the native host: one empty UDP datagram to each of `count` fake peers (port 9,
discard), paced at `rate` per second, bounded by `--max-seconds`; it prints a JSON summary.

Both are bounded in time and in count and only ever address the lab's documentation ranges.
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import select
import signal
import socket
import struct
import sys
import time
from pathlib import Path

from bench.lab_bench import (
    FAKE_SERVER,
    MAX_FAKE_PEERS,
    peer_address,
    peer_index,
)
from teredo.core.addr import TEREDO_PORT, TEREDO_PREFIX, embedded_mapping
from teredo.core.ipv6 import build_bubble

_IPV4_UDP = struct.Struct("!BBHHHBBH4s4sHHHH")
IPV6_HEADER = 40
STATS_EVERY = 0.5
# Linux socket options (socket(7)) that CPython does not name: as SO_RCVBUF / SO_SNDBUF, but
# root may exceed net.core.rmem_max / wmem_max, so a burst of bubbles is not dropped.
SO_SNDBUFFORCE = 32
SO_RCVBUFFORCE = 33


def direct_bubble(
    peer: bytes, relay_ipv6: bytes, mapped: tuple[int, int], relay: tuple[str, int]
) -> bytes:
    """IPv4 + UDP + IPv6 bubble from the peer's mapping to the relay.

    The kernel fills the IPv4 total length, identification and header checksum of a raw
    IPPROTO_RAW packet; the UDP checksum 0 means "none", legal over IPv4 (RFC 768)."""
    bubble = build_bubble(peer, relay_ipv6, hop_limit=64)
    return (
        _IPV4_UDP.pack(
            0x45,
            0,
            20 + 8 + len(bubble),
            0,
            0x4000,
            64,
            socket.IPPROTO_UDP,
            0,
            mapped[0].to_bytes(4, "big"),
            socket.inet_aton(relay[0]),
            mapped[1],
            relay[1],
            8 + len(bubble),
            0,
        )
        + bubble
    )


class Answerer:
    """The state of `answer`: counters and the bitmap of peers answered."""

    def __init__(self) -> None:
        self.received = 0
        self.answered = 0
        self.unique = 0
        self.ignored = 0
        self.send_errors = 0
        self.bitmap = bytearray(MAX_FAKE_PEERS // 8 + 1)

    def reply_for(self, data: bytes, source: tuple[str, int]) -> bytes | None:
        """The spoofed direct bubble answering `data` (an IPv6 packet sent to a fake peer
        through its server), or None for anything else."""
        self.received += 1
        if len(data) < IPV6_HEADER or data[0] >> 4 != 6:
            self.ignored += 1
            return None
        peer = data[24:40]
        mapped = embedded_mapping(peer)
        index = peer_index(*mapped) if peer[:4] == TEREDO_PREFIX else None
        if index is None:
            self.ignored += 1
            return None
        byte, bit = divmod(index, 8)
        if not self.bitmap[byte] & (1 << bit):
            self.bitmap[byte] |= 1 << bit
            self.unique += 1
        return direct_bubble(peer, data[8:24], mapped, source)

    def stats(self) -> dict[str, int]:
        return {
            "received": self.received,
            "answered": self.answered,
            "unique": self.unique,
            "ignored": self.ignored,
            "send_errors": self.send_errors,
        }


def _write_stats(path: Path, stats: dict[str, object]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(stats), encoding="ascii")
    os.replace(tmp, path)


def answer(args: argparse.Namespace) -> int:
    stop: list[int] = []
    signal.signal(signal.SIGTERM, lambda signum, _frame: stop.append(signum))
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 32 << 20)
    udp.bind((args.bind, TEREDO_PORT))
    udp.setblocking(False)
    raw = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
    state = Answerer()
    stats_path = Path(args.stats)
    deadline = time.monotonic() + args.max_seconds
    next_stats = 0.0
    while not stop and time.monotonic() < deadline:
        now = time.monotonic()
        if now >= next_stats:
            _write_stats(stats_path, {**state.stats(), "time": now})
            next_stats = now + STATS_EVERY
        ready, _, _ = select.select([udp], [], [], 0.1)
        if not ready:
            continue
        for _ in range(4096):  # drain, bounded so that the stats and the deadline are seen
            try:
                data, source = udp.recvfrom(2048)
            except BlockingIOError:
                break
            reply = state.reply_for(data, source)
            if reply is None:
                continue
            try:
                raw.sendto(reply, (source[0], 0))
                state.answered += 1
            except OSError:
                state.send_errors += 1
    _write_stats(stats_path, {**state.stats(), "time": time.monotonic(), "done": True})
    return 0


def send(args: argparse.Namespace) -> int:
    sock = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, SO_SNDBUFFORCE, 4 << 20)
    t0 = time.monotonic()
    deadline = t0 + args.max_seconds
    sent = errors = 0
    index = args.first
    end = args.first + args.count
    while index < end:
        now = time.monotonic()
        if now > deadline:
            break
        ahead = (index - args.first) / args.rate - (now - t0)
        if ahead > 0:
            time.sleep(min(ahead, 0.05))
            continue
        for _ in range(min(256, end - index)):  # a burst between two clock reads
            dest = socket.inet_ntop(socket.AF_INET6, peer_address(index))
            try:
                sock.sendto(b"", (dest, 9))
                sent += 1
                index += 1
            except OSError as exc:
                if exc.errno not in (errno.ENOBUFS, errno.EAGAIN):
                    raise
                errors += 1
                time.sleep(0.001)
                break
    print(
        json.dumps(
            {"sent": sent, "errors": errors, "seconds": time.monotonic() - t0, "next": index}
        )
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.fakeclients", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    ans = sub.add_parser("answer", help="answer indirect bubbles with direct ones")
    ans.add_argument("--bind", default=FAKE_SERVER)
    ans.add_argument("--stats", required=True)
    ans.add_argument("--max-seconds", type=float, default=600.0)
    snd = sub.add_parser("send", help="one datagram to each fake peer")
    snd.add_argument("--count", type=int, required=True)
    snd.add_argument("--first", type=int, default=0)
    snd.add_argument("--rate", type=float, default=20_000.0)
    snd.add_argument("--max-seconds", type=float, default=300.0)
    args = parser.parse_args(argv)
    if not 0 < args.max_seconds <= 3600:
        parser.error("--max-seconds must be in (0, 3600]")
    if args.command == "send":
        if not args.first >= 0 or not 0 < args.first + args.count <= MAX_FAKE_PEERS:
            parser.error(f"--first + --count must be in 1..{MAX_FAKE_PEERS}")
        if not 0 < args.rate <= 1e6:
            parser.error("--rate must be in (0, 1000000]")
        return send(args)
    return answer(args)


if __name__ == "__main__":
    sys.exit(main())
