"""Packets and fakes shared by the tc programs' tests (test_client_programs.py,
test_relay_programs.py): Teredo addresses, IPv6/UDP/TCP and IPv4/UDP packets built with their
checksums (RFC 768, RFC 8200 section 8.1), the machines' recording I/O, the programs' clock."""

from __future__ import annotations

import socket
import struct
import time
from dataclasses import dataclass

from hypothesis import strategies as st

from teredo.core.addr import Address

SERVER = "198.51.100.10"
NATIVE = bytes.fromhex("20010db8000100000000000000000100")  # 2001:db8:1::100
OTHER_NATIVE = bytes.fromhex("20010db8000100000000000000000200")
ETH_IP6 = bytes(6) + bytes((2, 0, 0, 0, 0, 1)) + b"\x86\xdd"
ETH_IP4 = bytes(6) + bytes((2, 0, 0, 0, 0, 1)) + b"\x08\x00"
NOW = 1000.0
#: struct teredo_peer (teredo_encap.h): ipv4, port, flags, last_tx, last_rx.
PEER_VALUE = struct.Struct("=4s2sHII")


def teredo_address(ip: str, port: int, server: str = SERVER) -> bytes:
    """RFC 4380 section 4: prefix, server, flags 0, obscured port and IPv4."""
    obscured_port = (port ^ 0xFFFF).to_bytes(2, "big")
    obscured_ip = bytes(b ^ 0xFF for b in socket.inet_aton(ip))
    return (
        bytes.fromhex("20010000") + socket.inet_aton(server) + b"\x00\x00" + obscured_port
    ) + obscured_ip


def checksum(data: bytes) -> int:
    """The one's complement sum of `data` as 16-bit words (odd length: padded with a zero)."""
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


def tcp6(src: bytes, dst: bytes, body: bytes) -> bytes:
    """An IPv6 TCP segment (20-byte header) with a complete checksum."""
    length = 20 + len(body)
    pseudo = src + dst + struct.pack("!IxxxB", length, 6)
    head = struct.pack("!HHIIBBHHH", 1234, 80, 1, 0, 5 << 4, 0x18, 65535, 0, 0)
    csum = 0xFFFF - checksum(pseudo + head + body) or 0xFFFF
    return ipv6(src, dst, head[:16] + struct.pack("!H", csum) + head[18:] + body, nh=6)


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
    """What a machine sent: datagrams with their destination, discovery bubbles (the client's),
    packets written to the TUN."""

    def __init__(self) -> None:
        self.udp: list[tuple[bytes, Address]] = []
        self.discovery: list[bytes] = []
        self.tun: list[bytes] = []

    def send_udp(self, payload: bytes, destination: Address) -> None:
        self.udp.append((bytes(payload), destination))

    def send_discovery(self, payload: bytes) -> None:
        self.discovery.append(bytes(payload))

    def write_tun(self, packet: bytes | memoryview) -> None:
        self.tun.append(bytes(packet))


def kernel_stamp(ago: float = 0.0) -> int:
    """teredo_stamp() of `ago` seconds back: CLOCK_BOOTTIME in 2**20 ns units."""
    return (time.clock_gettime_ns(time.CLOCK_BOOTTIME) - int(ago * 1e9)) >> 20 & 0xFFFFFFFF


@dataclass(frozen=True, slots=True)
class OddIPv6:
    """How a property test of an encapsulating program makes an IPv6 packet odd (`ODD_IPV6`):
    its next header and hop limit, bytes after it, another first byte (version), a payload
    length off by `plen_delta`, `cut` bytes cut off its end."""

    body: bytes
    nh: int
    hop: int
    extra: bytes
    plen_delta: int
    first: int
    cut: int

    def packet(self, src: bytes, dst: bytes) -> bytes:
        """The odd packet from `src` to `dst`; never cut into the 40-byte header: test_run,
        like the stack, refuses a shorter IPv6 frame."""
        packet = bytearray(ipv6(src, dst, self.body, nh=self.nh, hop=self.hop) + self.extra)
        packet[0] = self.first
        plen = max(0, min(0xFFFF, len(self.body) + self.plen_delta))
        packet[4:6] = plen.to_bytes(2, "big")
        return bytes(packet[: max(40, len(packet) - self.cut)])


ODD_IPV6 = st.builds(
    OddIPv6,
    body=st.binary(max_size=64),
    nh=st.sampled_from([6, 17, 58, 59, 0, 44, 43]),
    hop=st.integers(0, 255),
    extra=st.binary(max_size=4),
    plen_delta=st.integers(-3, 3),
    first=st.sampled_from([0x60, 0x60, 0x60, 0x45, 0x00, 0x6F]),
    cut=st.integers(0, 8),
)


@dataclass(frozen=True, slots=True)
class OddDatagram:
    """How a property test of a decapsulating program makes a Teredo datagram odd
    (`ODD_DATAGRAM`): the inner packet's next header and hop limit, the UDP checksum ("zero",
    "partial" or "full"), (offset, value) bytes of the headers replaced, `cut` bytes cut off."""

    body: bytes
    nh: int
    hop: int
    csum: str
    mangle: list[tuple[int, int]]
    cut: int

    def datagram(self, source: Address, dst: Address, inner_src: bytes, inner_dst: bytes) -> bytes:
        """IPv4/UDP from `source` to `dst` around an IPv6 packet from `inner_src` to
        `inner_dst`; the outer source (which `source` names) is never mangled, the IPv4 header
        never cut."""
        inner = ipv6(inner_src, inner_dst, self.body, nh=self.nh, hop=self.hop)
        datagram = bytearray(udp4(source[0], source[1], dst[0], dst[1], inner, csum=self.csum))
        for at, value in self.mangle:
            if at < len(datagram) and not 12 <= at < 16 and not 20 <= at < 22:
                datagram[at] = value
        return bytes(datagram[: max(20, len(datagram) - self.cut)])


ODD_DATAGRAM = st.builds(
    OddDatagram,
    body=st.binary(max_size=48),
    nh=st.sampled_from([6, 17, 58, 59, 0, 44]),
    hop=st.integers(0, 255),
    csum=st.sampled_from(["zero", "partial", "full"]),
    mangle=st.lists(st.tuples(st.integers(0, 90), st.integers(0, 255)), max_size=2),
    cut=st.integers(0, 6),
)


def check_outer(frame: bytes, packet: bytes, source: Address, destination: Address) -> None:
    """`frame` (Ethernet) is `packet` as the encapsulating programs send it: in IPv4 without
    options, DF or fragment, TTL 64 and a correct header checksum, and UDP from `source` to
    `destination` with checksum 0 (RFC 4380 section 3; teredo_encap.h teredo_outer_fill)."""
    assert frame[12:14] == b"\x08\x00"
    ip, udp, inner = frame[14:34], frame[34:42], frame[42:]
    assert inner == packet
    assert ip[0] == 0x45
    assert ip[9] == 17
    assert ip[8] == 64
    assert ip[6:8] == b"\x00\x00", "no DF, no fragment"
    assert struct.unpack("!H", ip[2:4])[0] == 28 + len(packet)
    assert checksum(ip) == 0xFFFF
    assert (socket.inet_ntoa(ip[12:16]), struct.unpack("!H", udp[:2])[0]) == source
    assert (socket.inet_ntoa(ip[16:20]), struct.unpack("!H", udp[2:4])[0]) == destination
    assert struct.unpack("!HH", udp[4:8]) == (8 + len(packet), 0)
