"""The relay's tc programs (src/teredo/bpf/teredo_relay.bpf.c) against the sans-I/O core, with
`bpf_prog_test_run_opts`: for the same packet, the kernel program either produces the bytes the
core would send (to the same mapping, or to the TUN) or leaves the packet unchanged for the
Python path. Never something the core would not do (docs/kernel.md)."""

from __future__ import annotations

import socket
import struct
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from teredo.core.addr import Address
from teredo.core.relay import RelayMachine, RelayParams
from teredo.io.krelay import COUNTERS
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
    OddDatagram,
    OddIPv6,
    Recorder,
    check_outer,
    checksum,
    ipv6,
    kernel_stamp,
    teredo_address,
    udp4,
    udp6,
)

RELAY_IP = "198.51.100.20"
RELAY_PORT = 3544
PEER_IP = "203.0.113.11"
PEER_PORT = 40000


PEER = teredo_address(PEER_IP, PEER_PORT)
UNKNOWN_PEER = teredo_address("203.0.113.12", 40001)


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
    peer = PEER_VALUE.pack(
        socket.inet_aton(PEER_IP), PEER_PORT.to_bytes(2, "big"), 0, 0, kernel_stamp()
    )
    obj.map("relay_peers").update(PEER, peer)
    if host_specific:
        obj.map("relay_own").update(NATIVE, b"\x01")


def set_last_rx(obj: BpfObject, when: int) -> None:
    """The peer's last reception as the mirror keeps it (io/kmirror.py)."""
    m = obj.map("relay_peers")
    raw = m.lookup(PEER)
    if raw is not None:
        m.update(PEER, raw[:12] + struct.pack("=I", when))


def counters(obj: BpfObject) -> dict[str, int]:
    return bpftest.counters(obj, "relay_counters", COUNTERS)


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
    set_last_rx(obj, kernel_stamp())  # the core's peer is valid (heard at NOW)
    got = run(obj.program("relay_encap"), ETH_IP6 + packet)
    if got.retval == TC_ACT_OK:
        assert got.data == ETH_IP6 + packet, "a packet passed up must be unchanged"
        return False
    assert got.retval == TC_ACT_REDIRECT
    assert out.udp == [(packet, (PEER_IP, PEER_PORT))], "the kernel sent what the core would not"
    check_outer(got.data, packet, (RELAY_IP, RELAY_PORT), (PEER_IP, PEER_PORT))
    return True


def test_encap_trusted_peer_is_the_core_bytes(relay_obj: BpfObject) -> None:
    before = counters(relay_obj)
    assert check_encap(relay_obj, udp6(NATIVE, PEER, b"hello teredo"))
    assert check_encap(relay_obj, ipv6(NATIVE, PEER, b"\x80\x00" + bytes(30), nh=58))
    after = counters(relay_obj)
    assert after["encap"] - before["encap"] == 2
    stamp = relay_obj.map("relay_peers").lookup(PEER)
    assert stamp is not None
    assert PEER_VALUE.unpack(stamp)[3] != 0


def test_encap_leaves_a_stale_peer_to_python(relay_obj: BpfObject) -> None:
    """Section 5.2.4: no reception for 30 s and the core sends no more directly (it pings the
    peer first); the kernel passes the packet up from 29 s on, and forwards again once the
    mirror writes a newer reception."""
    packet = udp6(NATIVE, PEER, b"stale?")
    relay, out = core(False)
    relay.receive_tun(packet, NOW + 31)  # the core's view: last reception at NOW, 31 s ago
    assert out.udp != [(packet, (PEER_IP, PEER_PORT))]
    before = counters(relay_obj)
    set_last_rx(relay_obj, kernel_stamp(29.5))
    try:
        got = run(relay_obj.program("relay_encap"), ETH_IP6 + packet)
    finally:
        set_last_rx(relay_obj, kernel_stamp())
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
    odd=ODD_IPV6,
    dst=st.sampled_from([PEER, UNKNOWN_PEER, NATIVE, bytes(16), b"\xff\x02" + bytes(14)]),
)
def test_encap_is_the_core_or_passes_up(*, relay_obj: BpfObject, odd: OddIPv6, dst: bytes) -> None:
    check_encap(relay_obj, odd.packet(NATIVE, dst))


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
    assert PEER_VALUE.unpack(stamp)[4] != 0


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
    odd=ODD_DATAGRAM,
    inner_src=st.sampled_from([PEER, UNKNOWN_PEER, NATIVE]),
    dst=st.sampled_from([NATIVE, PEER, bytes(16), b"\xfe\x80" + bytes(14), b"\x40" + bytes(15)]),
    source=st.sampled_from(
        [(PEER_IP, PEER_PORT), (PEER_IP, PEER_PORT + 1), ("203.0.113.12", PEER_PORT)]
    ),
    host_specific=st.booleans(),
)
def test_decap_is_the_core_or_passes_up(
    *,
    relay_obj: BpfObject,
    host_obj: BpfObject,
    odd: OddDatagram,
    inner_src: bytes,
    dst: bytes,
    source: Address,
    host_specific: bool,
) -> None:
    data = odd.datagram(source, (RELAY_IP, RELAY_PORT), inner_src, dst)
    obj = host_obj if host_specific else relay_obj
    if check_decap(obj, data, source, host_specific=host_specific) and odd.csum == "full":
        # Forwarded with a checksum nobody verified: it must be one the stack would accept.
        ulen = struct.unpack("!H", data[24:26])[0]
        pseudo = data[12:20] + struct.pack("!xBH", 17, ulen)
        assert checksum(pseudo + data[20 : 20 + ulen]) == 0xFFFF
