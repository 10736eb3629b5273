"""The relay's tc programs (src/teredo/bpf/teredo_relay.bpf.c) against the sans-I/O core, with
`bpf_prog_test_run_opts`: for the same packet, the kernel program either produces the bytes the
core would send (to the same mapping, or to the TUN) or leaves the packet unchanged for the
Python path. Never something the core would not do (docs/kernel.md)."""

from __future__ import annotations

import socket
import struct
import time
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from teredo.core.addr import Address
from teredo.core.relay import RelayMachine, RelayParams
from teredo.io.krelay import COUNTERS
from teredo.io.libbpf import BpfObject, possible_cpus

from .bpftest import TC_ACT_OK, TC_ACT_REDIRECT, load, run

RELAY_IP = "198.51.100.20"
RELAY_PORT = 3544
SERVER = bytes((198, 51, 100, 10))
NATIVE = bytes.fromhex("20010db8000100000000000000000100")  # 2001:db8:1::100
OTHER_NATIVE = bytes.fromhex("20010db8000100000000000000000200")
PEER_IP = "203.0.113.11"
PEER_PORT = 40000
ETH_IP6 = bytes(6) + bytes((2, 0, 0, 0, 0, 1)) + b"\x86\xdd"
ETH_IP4 = bytes(6) + bytes((2, 0, 0, 0, 0, 1)) + b"\x08\x00"
NOW = 1000.0


def teredo_address(ip: str, port: int, server: bytes = SERVER) -> bytes:
    """RFC 4380 section 4: prefix, server, flags, obscured port and IPv4."""
    obscured_port = (port ^ 0xFFFF).to_bytes(2, "big")
    obscured_ip = bytes(b ^ 0xFF for b in socket.inet_aton(ip))
    return bytes.fromhex("20010000") + server + b"\x00\x00" + obscured_port + obscured_ip


PEER = teredo_address(PEER_IP, PEER_PORT)
UNKNOWN_PEER = teredo_address("203.0.113.12", 40001)


def checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\x00"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return int(total)


def ipv6(src: bytes, dst: bytes, payload: bytes, nh: int = 17, hop: int = 64) -> bytes:
    return struct.pack("!IHBB", 6 << 28, len(payload), nh, hop) + src + dst + payload


def udp6(src: bytes, dst: bytes, body: bytes) -> bytes:
    """An IPv6 UDP packet with a complete checksum."""
    length = 8 + len(body)
    pseudo = src + dst + struct.pack("!IxxxB", length, 17)
    head = struct.pack("!HHHH", 1234, 5678, length, 0)
    csum = 0xFFFF - checksum(pseudo + head + body) or 0xFFFF
    return ipv6(src, dst, struct.pack("!HHHH", 1234, 5678, length, csum) + body)


def udp4(
    src: str, sport: int, dst: str, dport: int, payload: bytes, *, csum: str = "zero"
) -> bytes:
    """IPv4 + UDP around `payload`; `csum`: "zero", "full" (complete) or "partial" (only the
    pseudo-header sum, as a sender that leaves it to the device)."""
    length = 8 + len(payload)
    s, d = socket.inet_aton(src), socket.inet_aton(dst)
    pseudo = s + d + struct.pack("!xBH", 17, length)
    if csum == "zero":
        check = 0
    elif csum == "partial":
        check = checksum(pseudo)
    else:
        head = struct.pack("!HHHH", sport, dport, length, 0)
        check = 0xFFFF - checksum(pseudo + head + payload) or 0xFFFF
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + length, 1, 0, 64, 17, 0, s, d)
    ip = ip[:10] + struct.pack("!H", 0xFFFF - checksum(ip)) + ip[12:]
    return ip + struct.pack("!HHHH", sport, dport, length, check) + payload


class Recorder:
    def __init__(self) -> None:
        self.udp: list[tuple[bytes, Address]] = []
        self.tun: list[bytes] = []

    def send_udp(self, payload: bytes, destination: Address) -> None:
        self.udp.append((bytes(payload), destination))

    def write_tun(self, packet: bytes | memoryview) -> None:
        self.tun.append(bytes(packet))


def core(host_specific: bool = False) -> tuple[RelayMachine, Recorder]:
    out = Recorder()
    relay = RelayMachine(RelayParams(host_specific=host_specific), out, bytes(16), NOW)
    relay.set_own_mapping((int.from_bytes(socket.inet_aton(RELAY_IP), "big"), RELAY_PORT))
    ipv4 = int.from_bytes(socket.inet_aton(PEER_IP), "big")
    row = relay.peers.insert(PEER, NOW, mapping=(ipv4, PEER_PORT))
    assert row is not None
    relay.peers.trust(row, ipv4, PEER_PORT, NOW)
    if host_specific:
        relay.set_own_addresses({NATIVE})
    return relay, out


def configure(obj: BpfObject, host_specific: bool = False, l2: int = 14) -> None:
    cfg = struct.pack(
        "=4s2sBBII4s",
        socket.inet_aton(RELAY_IP),
        RELAY_PORT.to_bytes(2, "big"),
        l2,
        l2,
        1,
        1 if host_specific else 0,
        bytes.fromhex("20010000"),
    )
    obj.map("relay_cfg").update(struct.pack("=I", 0), cfg)
    peer = struct.pack(
        "=4s2sHII", socket.inet_aton(PEER_IP), PEER_PORT.to_bytes(2, "big"), 0, 0, stamp()
    )
    obj.map("relay_peers").update(PEER, peer)
    if host_specific:
        obj.map("relay_own").update(NATIVE, b"\x01")


def stamp(age: float = 0.0) -> int:
    """The programs' clock (bpf_ktime_get_boot_ns() >> 20), `age` seconds ago."""
    return (int((time.clock_gettime(time.CLOCK_BOOTTIME) - age) * 1e9) >> 20) & 0xFFFFFFFF


def set_last_rx(obj: BpfObject, when: int) -> None:
    """The peer's last reception as the mirror keeps it (io/kmirror.py)."""
    m = obj.map("relay_peers")
    raw = m.lookup(PEER)
    if raw is not None:
        m.update(PEER, raw[:12] + struct.pack("=I", when))


def counters(obj: BpfObject) -> dict[str, int]:
    m = obj.map("relay_counters")
    out = {}
    for i, name in enumerate(COUNTERS):
        raw = m.lookup(struct.pack("=I", i), percpu=True)
        assert raw is not None
        out[name] = sum(struct.unpack(f"={possible_cpus()}Q", raw))
    return out


@pytest.fixture(scope="module")
def relay_obj() -> Iterator[BpfObject]:
    with load("teredo_relay") as obj:
        configure(obj)
        yield obj


@pytest.fixture(scope="module")
def host_obj() -> Iterator[BpfObject]:
    with load("teredo_relay") as obj:
        configure(obj, host_specific=True)
        yield obj


# --- native -> Teredo (relay_encap) ----------------------------------------------------------


def check_encap(obj: BpfObject, packet: bytes, *, host_specific: bool = False) -> bool:
    """Run relay_encap and the core on `packet`; True when the kernel forwarded it."""
    relay, out = core(host_specific)
    relay.receive_tun(packet, NOW + 1)
    set_last_rx(obj, stamp())  # the core's peer is valid (heard at NOW)
    got = run(obj.program("relay_encap"), ETH_IP6 + packet)
    if got.retval == TC_ACT_OK:
        assert got.data == ETH_IP6 + packet, "a packet passed up must be unchanged"
        return False
    assert got.retval == TC_ACT_REDIRECT
    assert out.udp == [(packet, (PEER_IP, PEER_PORT))], "the kernel sent what the core would not"
    data = got.data
    assert data[12:14] == b"\x08\x00"
    ip, udp, inner = data[14:34], data[34:42], data[42:]
    assert inner == packet
    assert ip[0] == 0x45
    assert ip[9] == 17
    assert ip[8] == 64
    assert struct.unpack("!H", ip[2:4])[0] == 28 + len(packet)
    assert checksum(ip) == 0xFFFF
    assert ip[12:16] == socket.inet_aton(RELAY_IP)
    assert ip[16:20] == socket.inet_aton(PEER_IP)
    assert struct.unpack("!HHHH", udp) == (RELAY_PORT, PEER_PORT, 8 + len(packet), 0)
    return True


def test_encap_trusted_peer_is_the_core_bytes(relay_obj: BpfObject) -> None:
    before = counters(relay_obj)
    assert check_encap(relay_obj, udp6(NATIVE, PEER, b"hello teredo"))
    assert check_encap(relay_obj, ipv6(NATIVE, PEER, b"\x80\x00" + bytes(30), nh=58))
    after = counters(relay_obj)
    assert after["encap"] - before["encap"] == 2
    stamp = relay_obj.map("relay_peers").lookup(PEER)
    assert stamp is not None
    assert struct.unpack("=4s2sHII", stamp)[3] != 0


def test_encap_leaves_a_stale_peer_to_python(relay_obj: BpfObject) -> None:
    """Section 5.2.4: no reception for 30 s and the core sends no more directly (it pings the
    peer first); the kernel passes the packet up from 29 s on, and forwards again once the
    mirror writes a newer reception."""
    packet = udp6(NATIVE, PEER, b"stale?")
    relay, out = core(False)
    relay.receive_tun(packet, NOW + 31)  # the core's view: last reception at NOW, 31 s ago
    assert out.udp != [(packet, (PEER_IP, PEER_PORT))]
    before = counters(relay_obj)
    set_last_rx(relay_obj, stamp(age=29.5))
    try:
        got = run(relay_obj.program("relay_encap"), ETH_IP6 + packet)
    finally:
        set_last_rx(relay_obj, stamp())
    assert got.retval == TC_ACT_OK
    assert got.data == ETH_IP6 + packet
    assert counters(relay_obj)["encap_stale"] - before["encap_stale"] == 1
    assert check_encap(relay_obj, packet)


def test_encap_passes_up_what_it_must_not_forward(relay_obj: BpfObject) -> None:
    good = udp6(NATIVE, PEER, b"x" * 20)
    cases = {
        "unknown peer": udp6(NATIVE, UNKNOWN_PEER, b"x" * 20),
        "native destination": udp6(PEER, OTHER_NATIVE, b"x"),
        # (test_run refuses a frame whose IPv6 header is cut: the stack never hands one on)
        "header only": good[:40],
        "payload past the end": good[:-1],
        "version 4": bytes((0x45,)) + good[1:],
        # A TCP/UDP checksum left to the device (CHECKSUM_PARTIAL): the TUN path completes it.
        "partial checksum": ipv6(
            NATIVE,
            PEER,
            struct.pack("!HHHH", 1, 2, 9, checksum(NATIVE + PEER + struct.pack("!IxxxB", 9, 17)))
            + b"z",
        ),
    }
    for name, packet in cases.items():
        assert not check_encap(relay_obj, packet), name


def test_encap_keeps_the_hop_limit_the_stack_left(relay_obj: BpfObject) -> None:
    # At the TUN's egress the stack has already applied the hop limit rule; the core sends the
    # packet as it reads it from the TUN, and so does the kernel, even at hop limit 1 or 0.
    for hop in (0, 1, 255):
        packet = ipv6(NATIVE, PEER, b"\x80\x00" + bytes(6), nh=58, hop=hop)
        assert check_encap(relay_obj, packet)


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    body=st.binary(max_size=64),
    nh=st.sampled_from([6, 17, 58, 59, 0, 44, 43]),
    hop=st.integers(0, 255),
    dst=st.sampled_from([PEER, UNKNOWN_PEER, NATIVE, bytes(16), b"\xff\x02" + bytes(14)]),
    cut=st.integers(0, 8),
    extra=st.binary(max_size=4),
    plen_delta=st.integers(-3, 3),
    first=st.sampled_from([0x60, 0x60, 0x60, 0x45, 0x00, 0x6F]),
)
def test_encap_is_the_core_or_passes_up(
    *,
    relay_obj: BpfObject,
    body: bytes,
    nh: int,
    hop: int,
    dst: bytes,
    cut: int,
    extra: bytes,
    plen_delta: int,
    first: int,
) -> None:
    packet = bytearray(ipv6(NATIVE, dst, body, nh=nh, hop=hop) + extra)
    packet[0] = first
    plen = max(0, min(0xFFFF, len(body) + plen_delta))
    packet[4:6] = plen.to_bytes(2, "big")
    # At least the IPv6 header: test_run (like the stack) refuses a shorter IPv6 frame.
    data = bytes(packet[: max(40, len(packet) - cut)])
    check_encap(relay_obj, data)


# --- Teredo -> native (relay_decap) ----------------------------------------------------------


def check_decap(
    obj: BpfObject, datagram: bytes, source: Address, *, host_specific: bool = False
) -> bool:
    """Run relay_decap and the core on an IPv4/UDP datagram; True when the kernel decapsulated
    it (the core then writes exactly that IPv6 packet to its TUN)."""
    relay, out = core(host_specific)
    frame = ETH_IP4 + datagram
    got = run(obj.program("relay_decap"), frame)
    assert got.retval == TC_ACT_OK
    if got.data == frame:
        return False
    ihl = (datagram[0] & 0xF) * 4 if datagram else 20
    relay.receive_udp(datagram[ihl + 8 :], source, NOW + 1)
    assert out.udp == []
    assert out.tun == [got.data[14:]], "the kernel forwarded what the core would not"
    assert got.data[12:14] == b"\x86\xdd"
    return True


def teredo_datagram(
    inner: bytes, *, src: str = PEER_IP, sport: int = PEER_PORT, csum: str = "zero"
) -> bytes:
    return udp4(src, sport, RELAY_IP, RELAY_PORT, inner, csum=csum)


def bad_checksum(inner: bytes) -> bytes:
    """A datagram whose UDP checksum is off by one: the stack would drop it."""
    good = bytearray(teredo_datagram(inner, csum="full"))
    check = struct.unpack("!H", good[26:28])[0]
    good[26:28] = struct.pack("!H", check - 1 if check > 1 else 0x1234)
    return bytes(good)


def test_decap_trusted_peer_is_the_core_bytes(relay_obj: BpfObject) -> None:
    before = counters(relay_obj)
    inner = udp6(PEER, NATIVE, b"from the client")
    assert check_decap(relay_obj, teredo_datagram(inner), (PEER_IP, PEER_PORT))
    assert check_decap(relay_obj, teredo_datagram(inner, csum="partial"), (PEER_IP, PEER_PORT))
    # A complete checksum that no device verified (test_run's CHECKSUM_NONE): checked here.
    assert check_decap(relay_obj, teredo_datagram(inner, csum="full"), (PEER_IP, PEER_PORT))
    long = udp6(PEER, NATIVE, bytes(range(256)) * 5 + b"odd")  # 3 chunks, an odd tail
    assert check_decap(relay_obj, teredo_datagram(long, csum="full"), (PEER_IP, PEER_PORT))
    after = counters(relay_obj)
    assert after["decap"] - before["decap"] == 4
    stamp = relay_obj.map("relay_peers").lookup(PEER)
    assert stamp is not None
    assert struct.unpack("=4s2sHII", stamp)[4] != 0


def test_decap_passes_up_what_it_must_not_forward(relay_obj: BpfObject) -> None:
    inner = udp6(PEER, NATIVE, b"x" * 8)
    src = (PEER_IP, PEER_PORT)
    bubble = ipv6(PEER, NATIVE, b"", nh=59, hop=0)
    frag = bytearray(teredo_datagram(inner))
    frag[6] = 0x20  # more fragments
    options = bytearray(teredo_datagram(inner))
    cases: dict[str, tuple[bytes, Address]] = {
        "wrong mapping port": (
            teredo_datagram(inner, sport=PEER_PORT + 1),
            (PEER_IP, PEER_PORT + 1),
        ),
        "wrong mapping address": (
            teredo_datagram(inner, src="203.0.113.99"),
            ("203.0.113.99", PEER_PORT),
        ),
        "peer not in the map": (teredo_datagram(udp6(UNKNOWN_PEER, NATIVE, b"x")), src),
        "bubble": (teredo_datagram(bubble), src),
        "icmpv6": (teredo_datagram(ipv6(PEER, NATIVE, b"\x80\x00" + bytes(6), nh=58)), src),
        "hop limit 1": (teredo_datagram(ipv6(PEER, NATIVE, inner[40:], hop=1)), src),
        "hop limit 0": (teredo_datagram(ipv6(PEER, NATIVE, inner[40:], hop=0)), src),
        "teredo destination": (teredo_datagram(udp6(PEER, UNKNOWN_PEER, b"x")), src),
        "link-local destination": (teredo_datagram(udp6(PEER, b"\xfe\x80" + bytes(14), b"x")), src),
        "multicast destination": (teredo_datagram(udp6(PEER, b"\xff\x02" + bytes(14), b"x")), src),
        "trailer": (teredo_datagram(inner + b"\x00\x01\x00\x00"), src),
        "origin indication": (teredo_datagram(bytes(8) + inner), src),
        "fragment": (bytes(frag), src),
        "wrong checksum, not verified by a device": (bad_checksum(inner), src),
        "other port": (udp4(PEER_IP, PEER_PORT, RELAY_IP, 3545, inner), src),
        "truncated": (teredo_datagram(inner)[:60], src),
    }
    options[0] = 0x46
    cases["ip options"] = (bytes(options), src)
    for name, (datagram, source) in cases.items():
        assert not check_decap(relay_obj, datagram, source), name


def test_host_specific_decap_serves_only_own_addresses(host_obj: BpfObject) -> None:
    src = (PEER_IP, PEER_PORT)
    mine = teredo_datagram(udp6(PEER, NATIVE, b"mine"))
    other = teredo_datagram(udp6(PEER, OTHER_NATIVE, b"other"))
    assert check_decap(host_obj, mine, src, host_specific=True)
    assert not check_decap(host_obj, other, src, host_specific=True)


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    body=st.binary(max_size=48),
    nh=st.sampled_from([6, 17, 58, 59, 0, 44]),
    hop=st.integers(0, 255),
    inner_src=st.sampled_from([PEER, UNKNOWN_PEER, NATIVE]),
    dst=st.sampled_from([NATIVE, PEER, bytes(16), b"\xfe\x80" + bytes(14), b"\x40" + bytes(15)]),
    source=st.sampled_from(
        [(PEER_IP, PEER_PORT), (PEER_IP, PEER_PORT + 1), ("203.0.113.12", PEER_PORT)]
    ),
    csum=st.sampled_from(["zero", "partial", "full"]),
    mangle=st.lists(st.tuples(st.integers(0, 90), st.integers(0, 255)), max_size=2),
    cut=st.integers(0, 6),
    host_specific=st.booleans(),
)
def test_decap_is_the_core_or_passes_up(
    *,
    relay_obj: BpfObject,
    host_obj: BpfObject,
    body: bytes,
    nh: int,
    hop: int,
    inner_src: bytes,
    dst: bytes,
    source: Address,
    csum: str,
    mangle: list[tuple[int, int]],
    cut: int,
    host_specific: bool,
) -> None:
    inner = ipv6(inner_src, dst, body, nh=nh, hop=hop)
    datagram = bytearray(udp4(source[0], source[1], RELAY_IP, RELAY_PORT, inner, csum=csum))
    for at, value in mangle:
        # Mangle outer or inner header bytes, never the outer source (which `source` names).
        if at < len(datagram) and not 12 <= at < 16 and not 20 <= at < 22:
            datagram[at] = value
    data = bytes(datagram[: max(20, len(datagram) - cut)])
    obj = host_obj if host_specific else relay_obj
    if check_decap(obj, data, source, host_specific=host_specific) and csum == "full":
        # Forwarded with a checksum nobody verified: it must be one the stack would accept.
        ulen = struct.unpack("!H", data[24:26])[0]
        pseudo = data[12:20] + struct.pack("!xBH", 17, ulen)
        assert checksum(pseudo + data[20 : 20 + ulen]) == 0xFFFF
