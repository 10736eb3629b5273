"""What a Teredo implementation does with datagrams that carry RFC 6081 trailers (issue 9).

    python -m teredo.lab.trailerprobe --bind IP --client TEREDO_ADDR --server IPV4
        --native IPV6      (inside a lab namespace with a public IPv4)

A fake Teredo peer (a socket per test, its Teredo address embedding its own public mapping, so
RFC 4380 section 5.2.3 case 3 trusts it) sends, for each trailer area (none: the control;
each kind; an unknown kind; all of them):

- `direct_data`: a plain bubble, then Echo Requests followed by the trailers, straight to the
  client's mapping: does an Echo Reply come back (the client delivered the packet)?
- `indirect_bubble`: a bubble followed by the trailers through the server to the client: does
  the client's direct bubble answering the relayed one come back (server and client took it)?
- `relay`: Echo Requests to the native host followed by the trailers, out through the server
  (RFC 4380 5.2.9); the relay bubbles us through the server and we answer with a direct bubble
  followed by the trailers: does the reply come back through the relay?

Prints one JSON object {area: {test: true|false}}. Bounded: 3 tries per test, 2 s each.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import socket
import sys
import time
from collections.abc import Callable

from teredo.core.addr import TEREDO_PREFIX, embedded_mapping, int_to_ipv4, ipv4_to_int, pack_address
from teredo.core.counters import DropReason
from teredo.core.ipv6 import build_bubble, build_echo, parse_echo
from teredo.core.wire import (
    AlternateAddressTrailer,
    NeighborDiscoveryTrailer,
    NonceTrailer,
    RandomPortTrailer,
    UnknownTrailer,
    build_trailers,
    parse_payload,
)

TRIES = 3
WAIT = 2.0
FIRST_PORT = 47000

AREAS: dict[str, bytes] = {
    "none": b"",
    "nonce": build_trailers([NonceTrailer(b"\x12\x34\x56\x78")]),
    "alternate-address": build_trailers([AlternateAddressTrailer(((0xC0A80102, 3544),))]),
    "random-port": build_trailers([RandomPortTrailer(40000)]),
    "neighbor-discovery": build_trailers([NeighborDiscoveryTrailer(0)]),
    "unknown-kind": build_trailers([UnknownTrailer(0x7F, b"future")]),
    "all": build_trailers(
        [
            NonceTrailer(b"\x12\x34\x56\x78"),
            AlternateAddressTrailer(((0xC0A80102, 3544),)),
            RandomPortTrailer(40000),
            NeighborDiscoveryTrailer(0),
        ]
    ),
}
TESTS = ("direct_data", "indirect_bubble", "relay")


class Peer:
    """One fake Teredo peer: a socket and the address that embeds its mapping."""

    def __init__(self, bind: str, port: int, server: int) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((bind, port))
        self.address = pack_address(TEREDO_PREFIX, server, 0, port, ipv4_to_int(bind))

    def close(self) -> None:
        self.sock.close()

    def wait_for(self, match: Callable[[bytes], bool], seconds: float, area: bytes = b"") -> bool:
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            self.sock.settimeout(left)
            try:
                data, _src = self.sock.recvfrom(2048)
            except TimeoutError:
                return False
            if match(data):
                return True
            self._answer_origin(data, area)
        return False

    def _answer_origin(self, data: bytes, area: bytes) -> None:
        """A relayed packet with an origin indication (a relay's bubble through our server):
        answer with a direct bubble to the origin, as a Teredo client does (RFC 4380 5.2.3;
        relays wait for it before they send, TEREDO-SPEC 3.8)."""
        pkt = parse_payload(data)
        if isinstance(pkt, DropReason) or pkt.origin is None:
            return
        ipv4, port = pkt.origin
        bubble = build_bubble(self.address, pkt.src) + area
        self.sock.sendto(bubble, (int_to_ipv4(ipv4), port))


def _echo_reply_to(peer: Peer, ident: int) -> Callable[[bytes], bool]:
    def match(data: bytes) -> bool:
        pkt = parse_payload(data)
        if isinstance(pkt, DropReason):
            return False
        echo = parse_echo(pkt.ipv6)
        return not isinstance(echo, DropReason) and echo.reply and echo.identifier == ident

    return match


def _bubble_to(peer: Peer) -> Callable[[bytes], bool]:
    def match(data: bytes) -> bool:
        pkt = parse_payload(data)
        return not isinstance(pkt, DropReason) and pkt.is_bubble and pkt.dst == peer.address

    return match


def run(bind: str, client: bytes, server: int, native: bytes) -> dict[str, dict[str, bool]]:
    mapping = embedded_mapping(client)
    client_udp = (int_to_ipv4(mapping[0]), mapping[1])
    results: dict[str, dict[str, bool]] = {}
    port = FIRST_PORT
    for n, (name, area) in enumerate(AREAS.items()):
        row: dict[str, bool] = {}
        for test in TESTS:
            peer = Peer(bind, port, server)
            port += 1
            ident = 0x7000 + 16 * n + TESTS.index(test)
            ok = False
            try:
                for seq in range(TRIES):
                    if test == "direct_data":
                        peer.sock.sendto(build_bubble(peer.address, client), client_udp)
                        echo = build_echo(peer.address, client, ident, seq, b"trailer probe")
                        peer.sock.sendto(echo + area, client_udp)
                        ok = peer.wait_for(_echo_reply_to(peer, ident), WAIT)
                    elif test == "indirect_bubble":
                        bubble = build_bubble(peer.address, client)
                        peer.sock.sendto(bubble + area, (int_to_ipv4(server), 3544))
                        ok = peer.wait_for(_bubble_to(peer), WAIT)
                    else:
                        # RFC 4380 5.2.9: out through our server; the reply comes back through
                        # the relay, which first bubbles us and waits for our direct bubble.
                        echo = build_echo(peer.address, native, ident, seq, b"trailer probe")
                        peer.sock.sendto(echo + area, (int_to_ipv4(server), 3544))
                        ok = peer.wait_for(_echo_reply_to(peer, ident), WAIT, area)
                    if ok:
                        break
            finally:
                peer.close()
            row[test] = ok
        results[name] = row
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m teredo.lab.trailerprobe")
    parser.add_argument("--bind", required=True, help="this host's public IPv4")
    parser.add_argument("--client", required=True, help="the Teredo client's address")
    parser.add_argument("--server", required=True, help="the server's IPv4")
    parser.add_argument("--native", required=True, help="a native IPv6 host behind the relay")
    args = parser.parse_args(argv)
    got = run(
        args.bind,
        ipaddress.IPv6Address(args.client).packed,
        ipv4_to_int(args.server),
        ipaddress.IPv6Address(args.native).packed,
    )
    print(json.dumps(got, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
