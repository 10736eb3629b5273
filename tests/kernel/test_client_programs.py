"""The client's tc programs (src/teredo/bpf/teredo_client.bpf.c) against the sans-I/O core, with
`bpf_prog_test_run_opts`: for the same packet, the kernel program either produces the bytes the
core would send (to the same mapping, or to the TUN) or leaves the packet unchanged for the
Python path. Never something the core would not do (docs/kernel.md).

The core is a real ClientMachine, qualified by RAs, with a Teredo peer trusted by its direct
bubble (section 5.2.3 case 3) and a native destination trusted by the ping test through a relay
(sections 5.2.9, 5.2.3 case 2): the kernel's map holds what the daemon's mirror would copy."""

from __future__ import annotations

import socket
import struct
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from teredo.core.addr import LINK_LOCAL_RESTRICTED, Address, ipv4_to_int, server_link_local
from teredo.core.client import ClientMachine, ClientParams
from teredo.core.counters import DropReason
from teredo.core.ipv6 import build_bubble, build_echo, build_ra, parse_echo
from teredo.core.wire import build_auth, build_origin, parse_payload
from teredo.io.kclient import COUNTERS
from teredo.io.libbpf import BpfObject

from . import bpftest
from .bpftest import TC_ACT_OK, TC_ACT_REDIRECT, load, run
from .packets import (
    ETH_IP4,
    ETH_IP6,
    NATIVE,
    NOW,
    ODD_DATAGRAM,
    ODD_IPV6,
    OTHER_NATIVE,
    PEER_VALUE,
    SERVER,
    OddDatagram,
    OddIPv6,
    Recorder,
    check_outer,
    checksum,
    ipv6,
    kernel_stamp,
    tcp6,
    teredo_address,
    udp4,
    udp6,
)

SERVER2 = "198.51.100.11"
LOCAL_IP = "192.168.1.2"  # the client socket's address, behind the NAT
LOCAL_PORT = 3545
MAPPING = ("203.0.113.77", 51234)  # what the NAT made of it
PEER_IP = "203.0.113.90"
PEER_PORT = 40000
RELAY = ("198.51.100.20", 3545)  # the relay the ping test found for NATIVE
OUT_IFINDEX = 3
TUN_IFINDEX = 5
_CFG = struct.Struct("=4s2sBBII16sI")  # struct client_config


PEER = teredo_address(PEER_IP, PEER_PORT)
UNKNOWN_PEER = teredo_address("203.0.113.12", 40001)


def _counter_random() -> Iterator[bytes]:
    n = 0
    while True:
        n += 1
        yield (n * 0x9E3779B97F4A7C15 & 0xFFFFFFFFFFFFFFFF).to_bytes(8, "big")


class FakeRandom:
    def __init__(self) -> None:
        self._gen = _counter_random()

    def __call__(self, size: int) -> bytes:
        out = b""
        while len(out) < size:
            out += next(self._gen)
        return out[:size]


def _ra(rs: bytes, server: str) -> bytes:
    pkt = parse_payload(rs)
    assert not isinstance(pkt, DropReason)
    assert pkt.nonce is not None
    prefix = bytes.fromhex("20010000") + socket.inet_aton(SERVER) + bytes(8)
    ra = build_ra(server_link_local(ipv4_to_int(server)), LINK_LOCAL_RESTRICTED, prefix, mtu=1280)
    return build_auth(pkt.nonce) + build_origin(ipv4_to_int(MAPPING[0]), MAPPING[1]) + ra


@dataclass
class Client:
    machine: ClientMachine
    out: Recorder
    address: bytes


def core() -> Client:
    """A client qualified behind a restricted NAT, PEER trusted at its mapping by its direct
    bubble, NATIVE trusted at RELAY by the ping test; the recorder emptied."""
    out = Recorder()
    params = ClientParams(ipv4_to_int(SERVER), peer_capacity=64, local_discovery=False)
    client = ClientMachine(params, out, FakeRandom())
    client.start(NOW - 10)
    client.receive_udp(_ra(out.udp[-1][0], SERVER), (SERVER, 3544), NOW - 9.9)
    client.receive_udp(_ra(out.udp[-1][0], SERVER), (SERVER2, 3544), NOW - 9.8)
    address = client.address
    assert address is not None
    # Section 5.2.3 case 3: a bubble from the peer's own mapping makes it trusted.
    client.receive_udp(build_bubble(PEER, address), (PEER_IP, PEER_PORT), NOW)
    # Section 5.2.9: a packet for a native destination starts the ping test through the
    # server; the echo reply through RELAY makes the relay that destination's mapping.
    client.receive_tun(udp6(address, NATIVE, b"first"), NOW)
    echo = parse_echo(out.udp[-1][0])
    assert not isinstance(echo, DropReason)
    reply = build_echo(NATIVE, address, echo.identifier, echo.sequence, echo.data, reply=True)
    client.receive_udp(reply, RELAY, NOW)
    assert client.status()["trusted_peers"] == 2
    out.udp.clear()
    out.tun.clear()
    return Client(client, out, address)


def mirror(
    obj: BpfObject, addr: bytes, mapping: Address, *, ago: float = 0.0, flags: int = 0
) -> None:
    value = PEER_VALUE.pack(
        socket.inet_aton(mapping[0]), mapping[1].to_bytes(2, "big"), flags, 0, kernel_stamp(ago)
    )
    obj.map("client_peers").update(addr, value)


def configure(obj: BpfObject, address: bytes, l2: int = 14, flags: int = 0) -> None:
    cfg = _CFG.pack(
        socket.inet_aton(LOCAL_IP),
        LOCAL_PORT.to_bytes(2, "big"),
        l2,
        l2,
        OUT_IFINDEX,
        TUN_IFINDEX,
        address,
        flags,
    )
    obj.map("client_cfg").update(struct.pack("=I", 0), cfg)
    mirror(obj, PEER, (PEER_IP, PEER_PORT))
    mirror(obj, NATIVE, RELAY)


def counters(obj: BpfObject) -> dict[str, int]:
    return bpftest.counters(obj, "client_counters", COUNTERS)


@pytest.fixture(scope="module")
def address() -> bytes:
    return core().address


@pytest.fixture
def client_obj(address: bytes) -> Iterator[BpfObject]:
    with load("teredo_client") as obj:
        configure(obj, address)
        yield obj


@pytest.fixture(scope="module")
def shared_obj(address: bytes) -> Iterator[BpfObject]:
    """One loaded object for the hypothesis tests (loading takes a while)."""
    with load("teredo_client") as obj:
        configure(obj, address)
        yield obj


# --- our IPv6 -> Teredo (client_encap) -------------------------------------------------------


def check_encap(obj: BpfObject, packet: bytes, *, later: float = 1.0) -> bool:
    """Run client_encap and the core (`later` s after trust) on `packet`; True when the kernel
    forwarded it, which must be exactly what the core sent."""
    c = core()
    c.machine.receive_tun(packet, NOW + later)
    got = run(obj.program("client_encap"), ETH_IP6 + packet)
    if got.retval == TC_ACT_OK:
        assert got.data == ETH_IP6 + packet, "a packet passed up must be unchanged"
        return False
    assert got.retval == TC_ACT_REDIRECT
    assert len(c.out.udp) == 1, f"the kernel sent what the core would not: {c.out.udp}"
    [(sent, dest)] = c.out.udp
    assert sent == packet
    check_outer(got.data, packet, (LOCAL_IP, LOCAL_PORT), dest)  # from the client socket
    return True


def test_encap_trusted_peers_are_the_core_bytes(client_obj: BpfObject, address: bytes) -> None:
    before = counters(client_obj)
    # A Teredo peer at its mapping, a native destination at its relay; TCP, UDP, ICMPv6.
    assert check_encap(client_obj, udp6(address, PEER, b"hello teredo"))
    assert check_encap(client_obj, tcp6(address, PEER, b"GET / HTTP/1.0\r\n\r\n"))
    assert check_encap(client_obj, udp6(address, NATIVE, b"to the native host"))
    assert check_encap(client_obj, ipv6(address, NATIVE, b"\x80\x00" + bytes(30), nh=58))
    after = counters(client_obj)
    assert after["encap"] - before["encap"] == 4
    raw = client_obj.map("client_peers").lookup(NATIVE)
    assert raw is not None
    assert PEER_VALUE.unpack(raw)[3] != 0, "the kernel stamps its last send"


def test_encap_passes_up_what_it_must_not_forward(client_obj: BpfObject, address: bytes) -> None:
    good = udp6(address, PEER, b"x" * 20)
    cases = {
        "unknown peer": udp6(address, UNKNOWN_PEER, b"x" * 20),
        "native destination without a relay": udp6(address, OTHER_NATIVE, b"x"),
        "not from our address": udp6(OTHER_NATIVE, PEER, b"x"),
        "from another Teredo address": udp6(UNKNOWN_PEER, PEER, b"x"),
        "multicast": udp6(address, b"\xff\x02" + bytes(13) + b"\x01", b"x"),
        "payload past the end": good[:-1],
        "version 4": bytes((0x45,)) + good[1:],
        # A checksum left to the device (CHECKSUM_PARTIAL): the TUN path completes it.
        "partial checksum": ipv6(
            address,
            PEER,
            struct.pack("!HHHH", 1, 2, 9, checksum(address + PEER + struct.pack("!IxxxB", 9, 17)))
            + b"z",
        ),
    }
    before = counters(client_obj)
    for name, packet in cases.items():
        assert not check_encap(client_obj, packet), name
    after = counters(client_obj)
    assert after["encap"] == before["encap"]
    assert after["encap_partial"] - before["encap_partial"] == 1


def test_encap_keeps_the_hop_limit_the_stack_left(client_obj: BpfObject, address: bytes) -> None:
    # At the TUN's egress the stack has applied the hop limit; the core sends what it reads.
    for hop in (0, 1, 255):
        assert check_encap(client_obj, ipv6(address, PEER, b"\x80\x00" + bytes(6), nh=58, hop=hop))


def test_stale_peer_goes_to_the_core(client_obj: BpfObject, address: bytes) -> None:
    """Section 5.2.4 case 1 needs a reception less than 30 s ago: past it the core bubbles the
    peer (or pings the destination) again, and so the kernel passes the packet up."""
    mirror(client_obj, PEER, (PEER_IP, PEER_PORT), ago=31)
    mirror(client_obj, NATIVE, RELAY, ago=31)
    for dst in (PEER, NATIVE):
        packet = udp6(address, dst, b"late")
        assert not check_encap(client_obj, packet, later=31)
        c = core()
        c.machine.receive_tun(packet, NOW + 31)
        assert all(sent != packet for sent, _dest in c.out.udp), "the core did not send it either"
    assert counters(client_obj)["encap_stale"] == 2
    # A local peer (section 5.2.8) stays valid for 600 s.
    mirror(client_obj, PEER, (PEER_IP, PEER_PORT), ago=31, flags=1)
    got = run(client_obj.program("client_encap"), ETH_IP6 + udp6(address, PEER, b"local"))
    assert got.retval == TC_ACT_REDIRECT
    mirror(client_obj, PEER, (PEER_IP, PEER_PORT), ago=601, flags=1)
    got = run(client_obj.program("client_encap"), ETH_IP6 + udp6(address, PEER, b"local"))
    assert got.retval == TC_ACT_OK


def test_not_qualified_passes_everything(address: bytes) -> None:
    with load("teredo_client") as obj:
        configure(obj, bytes(16))  # no address yet
        packet = udp6(bytes(16), PEER, b"x")
        assert run(obj.program("client_encap"), ETH_IP6 + packet).retval == TC_ACT_OK
        frame = ETH_IP4 + udp4(PEER_IP, PEER_PORT, LOCAL_IP, LOCAL_PORT, udp6(PEER, address, b""))
        got = run(obj.program("client_decap"), frame)
        assert (got.retval, got.data) == (TC_ACT_OK, frame)


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    odd=ODD_IPV6,
    dst=st.sampled_from(
        [PEER, UNKNOWN_PEER, NATIVE, OTHER_NATIVE, bytes(16), b"\xff\x02" + bytes(14)]
    ),
    ours=st.booleans(),
)
def test_encap_is_the_core_or_passes_up(
    *, shared_obj: BpfObject, address: bytes, odd: OddIPv6, dst: bytes, ours: bool
) -> None:
    check_encap(shared_obj, odd.packet(address if ours else NATIVE, dst))


# --- Teredo -> our IPv6 (client_decap) -------------------------------------------------------


def check_decap(obj: BpfObject, datagram: bytes, source: Address) -> bool:
    """Run client_decap and the core on an IPv4/UDP datagram; True when the kernel decapsulated
    it into the TUN, which must be exactly the packet the core writes there."""
    c = core()
    frame = ETH_IP4 + datagram
    got = run(obj.program("client_decap"), frame)
    if got.retval == TC_ACT_OK:
        assert got.data == frame, "a packet passed up must be unchanged"
        return False
    assert got.retval == TC_ACT_REDIRECT
    ihl = (datagram[0] & 0xF) * 4
    c.machine.receive_udp(datagram[ihl + 8 :], source, NOW + 1)
    assert c.out.udp == []
    assert c.out.tun == [got.data[14:]], "the kernel forwarded what the core would not"
    assert got.data[12:14] == b"\x86\xdd"
    return True


def datagram_to_us(
    inner: bytes, source: Address = (PEER_IP, PEER_PORT), *, csum: str = "zero"
) -> bytes:
    return udp4(source[0], source[1], LOCAL_IP, LOCAL_PORT, inner, csum=csum)


def test_decap_trusted_peers_are_the_core_bytes(client_obj: BpfObject, address: bytes) -> None:
    before = counters(client_obj)
    from_peer = udp6(PEER, address, b"from the peer")
    assert check_decap(client_obj, datagram_to_us(from_peer), (PEER_IP, PEER_PORT))
    assert check_decap(client_obj, datagram_to_us(from_peer, csum="partial"), (PEER_IP, PEER_PORT))
    from_native = tcp6(NATIVE, address, b"HTTP/1.0 200 OK\r\n\r\n")
    assert check_decap(client_obj, datagram_to_us(from_native, RELAY), RELAY)
    after = counters(client_obj)
    assert after["decap"] - before["decap"] == 3
    raw = client_obj.map("client_peers").lookup(PEER)
    assert raw is not None
    assert PEER_VALUE.unpack(raw)[4] >= kernel_stamp(1), "the kernel stamps its last reception"


def test_decap_passes_up_what_it_must_not_forward(client_obj: BpfObject, address: bytes) -> None:
    inner = udp6(PEER, address, b"x" * 8)
    src = (PEER_IP, PEER_PORT)
    frag = bytearray(datagram_to_us(inner))
    frag[6] = 0x20  # more fragments
    options = bytearray(datagram_to_us(inner))
    options[0] = 0x46
    cases: dict[str, tuple[bytes, Address]] = {
        "wrong mapping port": (
            datagram_to_us(inner, (PEER_IP, PEER_PORT + 1)),
            (PEER_IP, PEER_PORT + 1),
        ),
        "wrong mapping address": (
            datagram_to_us(inner, ("203.0.113.99", PEER_PORT)),
            ("203.0.113.99", PEER_PORT),
        ),
        "native source from another relay": (
            datagram_to_us(udp6(NATIVE, address, b"x"), ("198.51.100.21", 3545)),
            ("198.51.100.21", 3545),
        ),
        "native source from the peer's mapping": (datagram_to_us(udp6(NATIVE, address, b"x")), src),
        "peer not in the map": (datagram_to_us(udp6(UNKNOWN_PEER, address, b"x")), src),
        "bubble": (datagram_to_us(build_bubble(PEER, address)), src),
        "icmpv6 echo reply": (
            datagram_to_us(build_echo(PEER, address, 1, 1, b"nonce", reply=True)),
            src,
        ),
        "not our address": (datagram_to_us(udp6(PEER, OTHER_NATIVE, b"x")), src),
        "multicast destination": (
            datagram_to_us(udp6(PEER, b"\xff\x02" + bytes(13) + b"\x01", b"x")),
            src,
        ),
        "link-local source": (datagram_to_us(udp6(b"\xfe\x80" + bytes(14), address, b"x")), src),
        "trailer": (datagram_to_us(inner + b"\x00\x01\x00\x00"), src),
        "origin indication": (datagram_to_us(build_origin(1, 2) + inner), src),
        "authentication": (datagram_to_us(build_auth(bytes(8)) + inner), src),
        "from the server's port": (
            datagram_to_us(inner, (PEER_IP, 3544)),
            (PEER_IP, 3544),
        ),
        "fragment": (bytes(frag), src),
        "ip options": (bytes(options), src),
        "full checksum, not verified by a device": (datagram_to_us(inner, csum="full"), src),
        "other port": (udp4(PEER_IP, PEER_PORT, LOCAL_IP, 3546, inner), src),
        "other local address": (udp4(PEER_IP, PEER_PORT, "192.168.1.3", LOCAL_PORT, inner), src),
        "truncated": (datagram_to_us(inner)[:60], src),
    }
    before = counters(client_obj)
    for name, (datagram, source) in cases.items():
        assert not check_decap(client_obj, datagram, source), name
    after = counters(client_obj)
    assert after["decap"] == before["decap"]
    assert after["decap_mapping"] - before["decap_mapping"] == 4


def test_decap_of_a_stale_peer_goes_to_the_core(client_obj: BpfObject, address: bytes) -> None:
    # The core may be checking a stale peer again (bubbles, queued packets): the reception
    # that settles it is the core's to see.
    mirror(client_obj, PEER, (PEER_IP, PEER_PORT), ago=31)
    frame = ETH_IP4 + datagram_to_us(udp6(PEER, address, b"x"))
    got = run(client_obj.program("client_decap"), frame)
    assert (got.retval, got.data) == (TC_ACT_OK, frame)
    assert counters(client_obj)["decap_stale"] == 1


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    odd=ODD_DATAGRAM,
    inner_src=st.sampled_from([PEER, UNKNOWN_PEER, NATIVE, b"\xfe\x80" + bytes(14), bytes(16)]),
    to_us=st.sampled_from([True, True, False]),
    source=st.sampled_from(
        [
            (PEER_IP, PEER_PORT),
            (PEER_IP, PEER_PORT + 1),
            RELAY,
            ("203.0.113.12", PEER_PORT),
            (SERVER, 3544),
        ]
    ),
)
def test_decap_is_the_core_or_passes_up(
    *,
    shared_obj: BpfObject,
    address: bytes,
    odd: OddDatagram,
    inner_src: bytes,
    to_us: bool,
    source: Address,
) -> None:
    inner_dst = address if to_us else OTHER_NATIVE
    datagram = odd.datagram(source, (LOCAL_IP, LOCAL_PORT), inner_src, inner_dst)
    check_decap(shared_obj, datagram, source)


def test_checksum_left_to_the_device_where_the_device_completes_it(address: bytes) -> None:
    """CFG_DEVICE_CSUM (the output interface completes checksums in software): a TCP segment of
    a local socket (CHECKSUM_PARTIAL: only the pseudo-header sum in its checksum field) is
    encapsulated as it is; once the device completes it, the bytes are those the core sends
    from the TUN (which completed it before the core read it)."""
    complete = tcp6(address, PEER, b"upload " * 20)
    length = len(complete) - 40
    pseudo = checksum(address + PEER + struct.pack("!IxxxB", length, 6))
    partial = complete[:56] + struct.pack("!H", pseudo) + complete[58:]
    with load("teredo_client") as obj:
        configure(obj, address, flags=1)
        got = run(obj.program("client_encap"), ETH_IP6 + partial)
        assert got.retval == TC_ACT_REDIRECT
        inner = got.data[42:]
        assert inner == partial, "encapsulated as it is, for the device to complete"
        # What the device does: the one's complement of the sum from the TCP header on.
        done = 0xFFFF - checksum(inner[40:]) or 0xFFFF
        completed = inner[:56] + struct.pack("!H", done) + inner[58:]
        c = core()
        c.machine.receive_tun(complete, NOW + 1)
        assert c.out.udp == [(completed, (PEER_IP, PEER_PORT))]
    # Without the flag (the default) the same segment takes the Python path.
    with load("teredo_client") as obj:
        configure(obj, address)
        got = run(obj.program("client_encap"), ETH_IP6 + partial)
        assert (got.retval, got.data) == (TC_ACT_OK, ETH_IP6 + partial)


# --- GSO packets of a local TCP socket (client_encap) ----------------------------------------

# struct __sk_buff (uapi bpf.h; its layout is ABI): bpf_prog_test_run_opts takes gso_segs and
# gso_size from it, and gives them back after the run.
SKB_CTX_SIZE = 192
GSO_SEGS_AT = 164
GSO_SIZE_AT = 176
MSS = 1208  # what the TUN's MTU of 1280 makes of a TCP segment with timestamps
ACK_PSH = 0x18


def gso_ctx(segs: int, size: int) -> bytes:
    ctx = bytearray(SKB_CTX_SIZE)
    struct.pack_into("=I", ctx, GSO_SEGS_AT, segs)
    struct.pack_into("=I", ctx, GSO_SIZE_AT, size)
    return bytes(ctx)


def ctx_gso(ctx: bytes) -> tuple[int, int]:
    return struct.unpack_from("=I", ctx, GSO_SEGS_AT)[0], struct.unpack_from(
        "=I", ctx, GSO_SIZE_AT
    )[0]


def tcp_segment(
    src: bytes, dst: bytes, seq: int, flags: int, body: bytes, *, partial: bool
) -> bytes:
    """An IPv6 TCP segment, its checksum complete or (`partial`) only the pseudo-header sum,
    as a local socket leaves it to the device (CHECKSUM_PARTIAL)."""
    length = 20 + len(body)
    pseudo = src + dst + struct.pack("!IxxxB", length, 6)
    head = struct.pack("!HHIIBBHHH", 1234, 80, seq, 7, 5 << 4, flags, 65535, 0, 0)
    csum = checksum(pseudo) if partial else 0xFFFF - checksum(pseudo + head + body) or 0xFFFF
    return ipv6(src, dst, head[:16] + struct.pack("!H", csum) + head[18:] + body, nh=6)


def tcp_gso(src: bytes, dst: bytes, count: int) -> bytes:
    """A local socket's GSO packet of `count` full segments: one IPv6 + TCP header in front of
    all the data, the checksum left to the device (the stack segments it at the device)."""
    data = bytes(i * 7 & 0xFF for i in range(count * MSS))
    return tcp_segment(src, dst, 1000, ACK_PSH, data, partial=True)


def test_gso_packet_the_kernel_cannot_grow_goes_up_unchanged(address: bytes) -> None:
    """CFG_DEVICE_CSUM: a TCP GSO packet for a trusted peer reaches the encapsulation (the
    system test tests/system/test_client_kernel.py shows real ones carried, segmented by the
    device, bytes intact). test_run cannot mark a packet TCP GSO (struct __sk_buff has
    gso_size and gso_segs, not gso_type), and bpf_skb_adjust_room refuses a GSO packet of
    another kind before changing it: so here the packet must go up as it was, counted as a
    helper error, never half made. (test_run takes at most a page: 2 segments.)"""
    with load("teredo_client") as obj:
        configure(obj, address, flags=1)
        for dst in (PEER, NATIVE):
            whole = tcp_gso(address, dst, 2)
            before = counters(obj)
            got = obj.program("client_encap").test_run(ETH_IP6 + whole, ctx=gso_ctx(2, MSS))
            assert (got.retval, got.data) == (TC_ACT_OK, ETH_IP6 + whole)
            assert ctx_gso(got.ctx) == (2, MSS)
            after = counters(obj)
            assert after["encap_error"] - before["encap_error"] == 1
            assert after["encap"] == before["encap"]
            assert after["encap_gso"] == before["encap_gso"] == 0


def test_gso_packets_go_up_where_the_device_would_not_segment_them(address: bytes) -> None:
    """Without CFG_DEVICE_CSUM (a veth's TSO would carry the whole packet, partial checksums
    inside, to the next namespace), for a peer not in the map or stale, and for a UDP GSO
    packet (UDP_SEGMENT): the Python path, the packet unchanged."""
    whole = tcp_gso(address, PEER, 2)
    udp_whole = udp6(address, PEER, bytes(2 * MSS))
    unknown = tcp_gso(address, UNKNOWN_PEER, 2)
    with load("teredo_client") as obj:
        configure(obj, address)
        got = obj.program("client_encap").test_run(ETH_IP6 + whole, ctx=gso_ctx(2, MSS))
        assert (got.retval, got.data) == (TC_ACT_OK, ETH_IP6 + whole)
        assert counters(obj)["encap_partial"] == 1
    with load("teredo_client") as obj:
        configure(obj, address, flags=1)
        for packet in (udp_whole, unknown):
            got = obj.program("client_encap").test_run(ETH_IP6 + packet, ctx=gso_ctx(2, MSS))
            assert (got.retval, got.data) == (TC_ACT_OK, ETH_IP6 + packet)
        mirror(obj, PEER, (PEER_IP, PEER_PORT), ago=31)
        got = obj.program("client_encap").test_run(ETH_IP6 + whole, ctx=gso_ctx(2, MSS))
        assert (got.retval, got.data) == (TC_ACT_OK, ETH_IP6 + whole)
        c = counters(obj)
        assert (c["encap"], c["encap_partial"], c["encap_no_peer"], c["encap_stale"]) == (
            0,
            1,
            1,
            1,
        )
