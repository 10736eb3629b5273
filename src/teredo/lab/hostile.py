"""Hostile traffic for the lab (issue 12): bounded mixes of malformed, truncated, oversize,
spoofed and replayed datagrams, each kind with the drop reason the daemon must count for it.

A kind is sent from its own (spoofed) IPv4 source, so that per-source rate limits of one kind
never change the reason of another; the counts stay under those limits unless the kind is the
rate limit itself. `tests/test_lab_hostile.py` replays every kind through the core
machine and checks the reason; `tests/system/test_hostile.py` sends them to a running daemon
and compares the sent counts with the drop counters of `teredo status --json`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from teredo.core.addr import (
    ALL_NODES,
    ALL_ROUTERS,
    LINK_LOCAL_RESTRICTED,
    TEREDO_PREFIX,
    ipv4_to_int,
    make_flags,
    pack_address,
    server_link_local,
)
from teredo.core.counters import DropReason
from teredo.core.ipv6 import build_bubble, build_echo, build_ra, build_rs, pack_header
from teredo.core.wire import build_auth, build_origin

__all__ = [
    "GOOD_RS",
    "MANY_CLIENTS",
    "SEND",
    "Kind",
    "client_kinds",
    "relay_kinds",
    "server_kinds",
    "to_json",
]


@dataclass(frozen=True)
class Kind:
    name: str
    source: tuple[str, int]  # the IPv4 source the attacker forges
    payload: bytes
    count: int
    # None: answered or forwarded, or rate limited (counted as `limited`), not a plain drop.
    reason: DropReason | None
    raw: bool = True  # False: an ordinary UDP socket (oversize datagrams need fragmenting)


def teredo(ip: str, port: int, server: str) -> bytes:
    """The Teredo address of mapping ip:port served by `server` (RFC 4380 section 4)."""
    return pack_address(
        TEREDO_PREFIX, ipv4_to_int(server), make_flags(0x123), port, ipv4_to_int(ip)
    )


NATIVE_A = bytes.fromhex("20010db8000100000000000000000066")
NATIVE_B = bytes.fromhex("20010db8000100000000000000000077")
LINK_LOCAL = bytes.fromhex("fe800000000000000000000000000001")
SITE_MULTICAST = bytes.fromhex("ff050000000000000000000000000001")


def _spoof(n: int) -> str:
    """The n-th forged source: 203.0.113.150 and up (the attacker's own public subnet)."""
    return f"203.0.113.{150 + n}"


def server_kinds(server: str, attacker: str, count: int = 40) -> list[Kind]:
    """What a Teredo server at `server` must drop (RFC 4380 section 5.3.1), kind by kind.
    `attacker` is the attacking host's own address (for the unspoofed oversize datagrams)."""
    kinds: list[Kind] = []

    def add(name: str, payload: bytes, reason: DropReason | None, port: int = 40000) -> None:
        kinds.append(Kind(name, (_spoof(len(kinds)), port), payload, count, reason))

    def own(port: int = 40000) -> bytes:
        """A Teredo source that matches the forged outer address (passes check 5)."""
        return teredo(_spoof(len(kinds)), port, server)

    peer = teredo("203.0.113.90", 41000, server)
    add("truncated auth", b"\x00\x01\x00\x00\x01\x02\x03", DropReason.TRUNCATED_AUTH)
    add("truncated origin", b"\x00\x00\x12\x34", DropReason.TRUNCATED_ORIGIN)
    add("too short", b"\x60" * 20, DropReason.TOO_SHORT)
    add("not IPv6", b"\x45" + bytes(59), DropReason.NOT_IPV6)
    add(
        "payload length past the end",
        pack_header(own(), peer, 200, 59, 64),
        DropReason.BAD_PAYLOAD_LENGTH,
    )
    add(
        "origin before auth",
        build_origin(1, 2) + build_auth(bytes(8)) + build_bubble(own(), peer),
        DropReason.BAD_ORIGIN_ORDER,
    )
    add(
        "UDP over IPv6",
        pack_header(own(), peer, 8, 17, 64) + bytes(8),
        DropReason.NOT_BUBBLE_OR_ICMPV6,
    )
    add(
        "Teredo source not matching the outer address",
        build_bubble(teredo("198.51.100.99", 999, server), peer),
        DropReason.MAPPING_MISMATCH,
    )
    add(
        "native source to a stranger",
        build_echo(NATIVE_A, NATIVE_B, 1, 1, b"x"),
        DropReason.NOT_ACCEPTED,
    )
    add(
        "link-local source to all-nodes",
        build_bubble(LINK_LOCAL, ALL_NODES),
        DropReason.NOT_ACCEPTED,
    )
    add(
        "multicast destination",
        build_bubble(own(), SITE_MULTICAST),
        DropReason.NOT_GLOBAL_DESTINATION,
    )
    add(
        "link-local destination", build_bubble(own(), LINK_LOCAL), DropReason.NOT_GLOBAL_DESTINATION
    )
    add(
        "RS with hop limit 64",
        build_auth(b"\x07" * 8) + build_rs(hop_limit=64),
        DropReason.BAD_ROUTER_SOLICITATION,
    )
    rs = build_rs()
    add(
        "RS with a wrong checksum",
        build_auth(b"\x08" * 8) + rs[:42] + bytes((rs[42] ^ 0xFF,)) + rs[43:],
        DropReason.BAD_ROUTER_SOLICITATION,
    )
    add(
        "RS from a global source to all-routers",
        build_auth(b"\x09" * 8) + build_rs(NATIVE_A, ALL_ROUTERS),
        DropReason.NOT_ACCEPTED,
    )
    add(
        "destination embedding a private IPv4",
        build_bubble(own(), teredo("10.1.2.3", 5000, server)),
        DropReason.DESTINATION_NOT_GLOBAL_IPV4,
    )
    add(
        "ICMPv6 over the relay cap",
        build_echo(own(), peer, 1, 1, bytes(200)),
        DropReason.ICMPV6_TOO_LARGE,
    )
    # A replayed RS (the same nonce every time) from one source, in a burst: answered up to the
    # per-source burst, then rate limited (RS_RATE_LIMITED); `reason` None: counted apart.
    add("replayed RS", build_auth(b"\x0a" * 8) + build_rs(LINK_LOCAL_RESTRICTED), None)
    kinds.append(
        Kind(
            "oversize datagram", (attacker, 40001), bytes(3000), 10, DropReason.OVERSIZED, raw=False
        )
    )
    return kinds


def client_kinds(address: bytes, server: str, count: int = 40) -> list[Kind]:
    """What a qualified client of Teredo address `address` (16 bytes) served by `server` must
    drop (RFC 4380 sections 5.2.1-5.2.3), kind by kind, from forged sources. The fake RAs come
    from the server's own address and port: an off-path attacker can forge those."""
    kinds: list[Kind] = []

    def add(
        name: str, payload: bytes, reason: DropReason, source: tuple[str, int] | None = None
    ) -> None:
        kinds.append(Kind(name, source or (_spoof(len(kinds)), 40000), payload, count, reason))

    def own() -> bytes:
        return teredo(_spoof(len(kinds)), 40000, server)

    server_ipv4 = ipv4_to_int(server)
    prefix = TEREDO_PREFIX + server_ipv4.to_bytes(4, "big") + bytes(8)
    ra = build_ra(server_link_local(server_ipv4), LINK_LOCAL_RESTRICTED, prefix)
    fake_mapping = build_origin(ipv4_to_int("203.0.113.200"), 1000)
    add("truncated auth", b"\x00\x01\x00\x00\x01\x02\x03", DropReason.TRUNCATED_AUTH)
    add("too short", b"\x60" * 20, DropReason.TOO_SHORT)
    add("not IPv6", b"\x45" + bytes(59), DropReason.NOT_IPV6)
    add(
        "payload length past the end",
        pack_header(own(), address, 300, 59, 64),
        DropReason.BAD_PAYLOAD_LENGTH,
    )
    # An RA forged from the server's address with a made-up nonce and a new mapping: no RS is
    # pending (section 5.2.2), so it cannot change the client's address.
    add(
        "RA from the server's address, wrong nonce",
        build_auth(b"\x66" * 8) + fake_mapping + ra,
        DropReason.RA_UNEXPECTED,
        (server, 3544),
    )
    add(
        "RA from a stranger",
        build_auth(b"\x67" * 8) + fake_mapping + ra,
        DropReason.NOT_OUR_ADDRESS,
    )
    add(
        "Teredo source not matching the outer address",
        build_echo(teredo("198.51.100.99", 999, server), address, 1, 1, b"x"),
        DropReason.MAPPING_MISMATCH,
    )
    add(
        "link-local source",
        build_echo(LINK_LOCAL, address, 1, 1, b"x"),
        DropReason.LINK_LOCAL_SOURCE,
    )
    add(
        "multicast destination",
        build_echo(own(), SITE_MULTICAST, 1, 1, b"x"),
        DropReason.MULTICAST_DESTINATION,
    )
    add("bubble to all-nodes", build_bubble(own(), ALL_NODES), DropReason.MULTICAST_DESTINATION)
    add("not our address", build_echo(own(), NATIVE_A, 1, 1, b"x"), DropReason.NOT_OUR_ADDRESS)
    add(
        "spoofed origin indication from a stranger",
        fake_mapping + build_bubble(teredo("203.0.113.200", 1000, server), address),
        DropReason.UNKNOWN_BUBBLE,
    )
    return kinds


def relay_kinds(server: str, count: int = 40) -> list[Kind]:
    """What a relay must drop (RFC 4380 section 5.4.2; issue 14: a Teredo source it never
    bubbled is dropped without state, whatever the packet's destination), kind by kind."""
    kinds: list[Kind] = []

    def add(name: str, payload: bytes, reason: DropReason) -> None:
        kinds.append(Kind(name, (_spoof(len(kinds)), 40000), payload, count, reason))

    def own() -> bytes:
        return teredo(_spoof(len(kinds)), 40000, server)

    add("truncated auth", b"\x00\x01\x00\x00\x01\x02\x03", DropReason.TRUNCATED_AUTH)
    add("too short", b"\x60" * 20, DropReason.TOO_SHORT)
    add("not IPv6", b"\x45" + bytes(59), DropReason.NOT_IPV6)
    add("payload length", pack_header(own(), NATIVE_A, 300, 59, 64), DropReason.BAD_PAYLOAD_LENGTH)
    unknown = DropReason.RELAY_UNKNOWN_PEER
    add(
        "never-bubbled Teredo source to a native host",
        build_echo(own(), NATIVE_A, 1, 1, b"x"),
        unknown,
    )
    add(
        "never-bubbled source, multicast destination",
        build_echo(own(), SITE_MULTICAST, 1, 1, b"x"),
        unknown,
    )
    add(
        "never-bubbled source, link-local destination",
        build_echo(own(), LINK_LOCAL, 1, 1, b"x"),
        unknown,
    )
    add(
        "never-bubbled source, spoofed origin indication",
        build_origin(1, 2) + build_echo(own(), NATIVE_A, 1, 1, b"x"),
        unknown,
    )
    add("bubble from a stranger", build_bubble(own(), NATIVE_A), DropReason.UNKNOWN_PEER_BUBBLE)
    add(
        "Teredo source not matching the outer address",
        build_echo(teredo("198.51.100.99", 999, server), NATIVE_A, 1, 1, b"x"),
        DropReason.MAPPING_MISMATCH,
    )
    add("native source", build_echo(NATIVE_A, NATIVE_B, 1, 1, b"x"), DropReason.NOT_TEREDO_SOURCE)
    add(
        "link-local source",
        build_echo(LINK_LOCAL, NATIVE_A, 1, 1, b"x"),
        DropReason.NOT_TEREDO_SOURCE,
    )
    add("RS to a relay", build_auth(bytes(8)) + build_rs(), DropReason.NOT_TEREDO_SOURCE)
    return kinds


def to_json(kinds: list[Kind]) -> str:
    return json.dumps([[k.source[0], k.source[1], k.payload.hex(), k.count, k.raw] for k in kinds])


# The sender, run in the attacker's namespace: argv[1] the target IPv4, argv[2] its port, the
# kinds as JSON on stdin. Forged sources go out through a raw socket with our own IPv4 header
# (UDP checksum 0: allowed over IPv4); paced (1 ms) so that no queue on the way drops them.
SEND = """
import json, socket, sys, time
target, port = sys.argv[1], int(sys.argv[2])
kinds = json.load(sys.stdin)
raw = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
sent = 0
for src, sport, payload, count, use_raw in kinds:
    data = bytes.fromhex(payload)
    if use_raw:
        udp = sport.to_bytes(2, "big") + port.to_bytes(2, "big")
        udp += (8 + len(data)).to_bytes(2, "big") + bytes(2) + data
        head = bytes((0x45, 0)) + (20 + len(udp)).to_bytes(2, "big") + bytes(4)
        head += bytes((64, 17, 0, 0)) + socket.inet_aton(src) + socket.inet_aton(target)
        for _ in range(count):
            raw.sendto(head + udp, (target, 0))
            sent += 1
            time.sleep(0.001)
    else:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.bind((src, sport))
            for _ in range(count):
                sock.sendto(data, (target, port))
                sent += 1
                time.sleep(0.001)
print(sent, flush=True)
"""

# A regular client's RS, one every 0.3 s from the attacker's site (its real address), during
# the attack; prints how many were answered by an RA with its nonce.
GOOD_RS = """
import socket, sys, time
server, n = sys.argv[1], int(sys.argv[2])
rs = bytes.fromhex(sys.argv[3])
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sock.bind(("0.0.0.0", 45000))
sock.settimeout(0.3)
print("ready", flush=True)
answered = 0
for i in range(n):
    nonce = (0x1000 + i).to_bytes(8, "big")
    sock.sendto(bytes((0, 1, 0, 0)) + nonce + bytes(1) + rs, (server, 3544))
    deadline = time.monotonic() + 1.0
    while time.monotonic() < deadline:
        try:
            data = sock.recv(2048)
        except TimeoutError:
            continue
        if data[4:12] == nonce:
            answered += 1
            break
    time.sleep(0.2)
print(answered, flush=True)
"""

# Many clients behind one NAT (issue 12, CGNAT): argv clients sockets, rounds rounds each
# spread over `spread` s; prints the RAs matched per round.
MANY_CLIENTS = """
import json, resource, selectors, socket, sys, time
server, clients, rounds = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
spread = float(sys.argv[4])
rs = bytes.fromhex(sys.argv[5])
resource.setrlimit(resource.RLIMIT_NOFILE, (clients + 100, clients + 100))
socks = []
for _ in range(clients):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("0.0.0.0", 0))
    s.setblocking(False)
    socks.append(s)
sel = selectors.DefaultSelector()
for i, s in enumerate(socks):
    sel.register(s, selectors.EVENT_READ, i)
answered = []
for r in range(rounds):
    got = set()
    t0 = time.monotonic()
    def drain(timeout):
        for key, _ in sel.select(timeout):
            try:
                data = key.fileobj.recv(2048)
            except BlockingIOError:
                continue
            if data[4:12] == (r << 32 | key.data).to_bytes(8, "big"):
                got.add(key.data)
    for i, s in enumerate(socks):
        nonce = (r << 32 | i).to_bytes(8, "big")
        s.sendto(bytes((0, 1, 0, 0)) + nonce + bytes(1) + rs, (server, 3544))
        due = t0 + spread * (i + 1) / clients  # paced: refreshes are spread over time
        while (wait := due - time.monotonic()) > 0:
            drain(wait)
    end = time.monotonic() + 3.0
    while time.monotonic() < end and len(got) < clients:
        drain(0.2)
    answered.append(len(got))
print(json.dumps(answered), flush=True)
"""
