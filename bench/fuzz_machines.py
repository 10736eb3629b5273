"""Fuzz targets that go through the machines (bench/fuzz.py): a parser must never raise out of
the server, relay or client machine, whatever arrives, and their tables stay within bounds.

One machine per process lives across inputs, so state built by earlier inputs (peers, queues,
rate-limit buckets) meets later ones. An input is: byte 0 = where it comes from and how it
enters (bits 0-2: the UDP source among SOURCES, 7 = the mapping embedded in the packet's own
IPv6 source, so that the section 5.4.2 / 5.3.1 mapping checks pass; bit 3: the TUN instead of
UDP; bit 4: run the timers first; bit 5: the server's secondary address), byte 1 = clock step
in 50 ms units, then the datagram.
"""

# Imports of the core inside the functions: see bench/fuzz.py (atheris instruments late imports).
# ruff: noqa: PLC0415

from __future__ import annotations

import hashlib
from typing import Any

SERVER = "198.51.100.10"
SERVER2 = "198.51.100.11"
SOURCES: tuple[tuple[str, int], ...] = (
    (SERVER, 3544),
    (SERVER2, 3544),
    ("203.0.113.77", 51234),  # the client's mapping
    ("203.0.113.90", 40000),  # a peer
    ("198.51.100.20", 3545),  # a relay
    ("192.168.1.3", 3546),  # a private source
    ("0.0.0.0", 0),  # noqa: S104 (an unspecified source, not a bind)
)
T0 = 1000.0
PEERS = 64  # small tables: a flood fills them within the run, so eviction paths run too

_state: dict[str, Any] = {}


class _Sink:
    """Counts what the machine sends (keeps nothing: bounded memory over a million inputs)."""

    def __init__(self) -> None:
        self.sent = 0

    def send_udp(self, payload: bytes | memoryview, destination: object, *rest: object) -> None:
        self.sent += 1

    def send_ipv6(self, packet: bytes) -> None:
        self.sent += 1

    def write_tun(self, packet: bytes | memoryview) -> None:
        self.sent += 1

    def send_discovery(self, payload: bytes) -> None:
        self.sent += 1


def _source(sel: int, datagram: bytes) -> tuple[str, int]:
    from teredo.core.addr import embedded_mapping, int_to_ipv4
    from teredo.core.wire import TeredoPacket, parse_payload

    index = sel & 7
    if index < len(SOURCES):
        return SOURCES[index]
    pkt = parse_payload(datagram)
    if isinstance(pkt, TeredoPacket):
        ip, port = embedded_mapping(pkt.src)
        return int_to_ipv4(ip), port
    return SOURCES[2]


def _split(data: bytes) -> tuple[int, float, bytes]:
    sel = data[0] if data else 0
    step = data[1] * 0.05 if len(data) > 1 else 0.0
    return sel, step, data[2:]


def _clock(name: str, step: float) -> float:
    now: float = _state.get(f"{name}-now", T0) + step
    _state[f"{name}-now"] = now
    return now


def server_input(data: bytes) -> None:
    from teredo.core.addr import ipv4_to_int
    from teredo.core.server import ServerMachine, ServerParams

    server = _state.get("server")
    if server is None:
        params = ServerParams(ipv4_to_int(SERVER), ipv4_to_int(SERVER2))
        server = _state["server"] = ServerMachine(params, _Sink())
    sel, step, datagram = _split(data)
    now = _clock("server", step)
    server.receive(datagram, _source(sel, datagram), bool(sel & 0x20), now)


def relay_input(data: bytes) -> None:
    from teredo.core.relay import RelayMachine, RelayParams

    relay = _state.get("relay")
    if relay is None:
        relay = _state["relay"] = RelayMachine(
            RelayParams(peers=PEERS), _Sink(), bytes(range(32)), T0
        )
    sel, step, datagram = _split(data)
    now = _clock("relay", step)
    if sel & 0x10:
        relay.handle_timer(now)
    if sel & 0x08:
        relay.receive_tun(datagram, now)
    else:
        relay.receive_udp(datagram, _source(sel, datagram), now)
    size = relay.peers.stats().size
    assert size <= PEERS, size


def _qualified_client() -> Any:
    """A client machine qualified by answering its two RS as a server would (section 5.2.1)."""
    from teredo.core.addr import LINK_LOCAL_RESTRICTED, TEREDO_PREFIX, ipv4_to_int
    from teredo.core.addr import server_link_local as sll
    from teredo.core.client import ClientMachine, ClientParams
    from teredo.core.ipv6 import build_ra
    from teredo.core.wire import TeredoPacket, build_auth, build_origin, parse_payload

    class Recorder(_Sink):
        last: bytes = b""

        def send_udp(self, payload: bytes | memoryview, destination: object, *rest: object) -> None:
            self.last = bytes(payload)

    counter = iter(range(1, 1 << 62))

    def rand(size: int) -> bytes:
        return hashlib.sha256(next(counter).to_bytes(8, "big")).digest()[:size]

    out = Recorder()
    server = ipv4_to_int(SERVER)
    client = ClientMachine(ClientParams(server, peer_capacity=PEERS), out, rand)
    client.start(T0)
    prefix = TEREDO_PREFIX + server.to_bytes(4, "big") + bytes(8)
    for i, source in enumerate(SOURCES[:2]):
        rs = parse_payload(out.last)
        assert isinstance(rs, TeredoPacket)
        assert rs.nonce is not None
        ra = build_ra(sll(server), LINK_LOCAL_RESTRICTED, prefix)
        answer = build_auth(rs.nonce) + build_origin(ipv4_to_int("203.0.113.77"), 51234) + ra
        client.receive_udp(answer, source, T0 + 0.05 * (i + 1))
    while client.next_event() is not None:
        pass
    client.out = _Sink()
    return client


def client_input(data: bytes) -> None:
    from teredo.core.client import ClientState

    client = _state.get("client")
    if client is None:
        client = _state["client"] = _qualified_client()
    sel, step, datagram = _split(data)
    now = _clock("client", step)
    if sel & 0x10:
        client.handle_timer(now)
    if sel & 0x08:
        client.receive_tun(datagram, now)
    else:
        client.receive_udp(datagram, _source(sel, datagram), now)
    while client.next_event() is not None:
        pass
    if client.state is not ClientState.QUALIFIED:
        # Timers ran out its qualification (no server answers here): start again qualified,
        # so that most inputs meet the qualified paths.
        del _state["client"]


def _teredo(ip: str, port: int) -> bytes:
    from teredo.core.addr import TEREDO_PREFIX, ipv4_to_int, make_flags, pack_address

    return pack_address(
        TEREDO_PREFIX, ipv4_to_int(SERVER), make_flags(0x123), port, ipv4_to_int(ip)
    )


def trailer_carriers() -> list[bytes]:
    """Packets from a peer to the fuzzed client that RFC 6081 trailers can follow."""
    from teredo.core.ipv6 import build_bubble, build_echo

    carriers = _state.get("carriers")
    if carriers is None:
        me = _qualified_client().address
        peer = _teredo("203.0.113.90", 40000)
        carriers = _state["carriers"] = [build_bubble(peer, me), build_echo(peer, me, 1, 1, b"x")]
    return list(carriers)


def machine_seeds() -> list[bytes]:
    """Datagrams every machine meets, each under a few selectors."""
    from teredo.core.addr import ALL_NODES, TEREDO_PREFIX, ipv4_to_int, make_flags, pack_address
    from teredo.core.ipv6 import build_bubble, build_echo, build_rs
    from teredo.core.wire import build_auth, build_origin

    def teredo(ip: str, port: int) -> bytes:
        return pack_address(
            TEREDO_PREFIX, ipv4_to_int(SERVER), make_flags(0x123), port, ipv4_to_int(ip)
        )

    me = _qualified_client().address  # deterministic: its random bits come from a counter
    peer = teredo("203.0.113.90", 40000)
    native = bytes.fromhex("20010db8000100000000000000000100")
    packets = [
        build_auth(b"\x01" * 8) + build_rs(),
        build_bubble(peer, me),
        build_bubble(peer, native),
        build_origin(ipv4_to_int("203.0.113.90"), 40000) + build_bubble(peer, me),
        build_echo(peer, me, 1, 1, b"x" * 8),
        build_echo(native, me, 1, 1, b"x" * 8),
        build_echo(me, native, 1, 1, b"ping", reply=False),
        build_echo(peer, native, 1, 1, b"hello"),
        build_echo(native, peer, 2, 2, b"hello"),
        build_bubble(peer, ALL_NODES),
        build_bubble(peer, me) + bytes((3, 8, 0, 0, 192, 168, 1, 2, 0x0D, 0xD8)),
        build_bubble(peer, me) + bytes((5, 2, 0x9C, 0x40, 0x7F, 0)),
        build_bubble(peer, me) + bytes((1, 4, 1, 2)),  # truncated nonce trailer
    ]
    return [bytes((sel, step)) + p for p in packets for sel, step in ((7, 1), (3, 0), (0x18, 20))]
