"""The server's XDP program (src/teredo/bpf/teredo_server.bpf.c) against the sans-I/O core, with
`bpf_prog_test_run_opts`: for the same frame, the program either sends back (XDP_TX) exactly
the datagram teredo.core.server would send, from the address the core would pick, or drops
(XDP_DROP) an RS the core's limits would drop, or leaves the frame unchanged for the Python
path (XDP_PASS). Never something the core would not do (docs/kernel.md "Server")."""

from __future__ import annotations

import socket
import struct
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from teredo.core.addr import Address
from teredo.core.counters import DropReason
from teredo.core.ipv6 import build_rs
from teredo.core.server import ServerLimits, ServerMachine, ServerParams
from teredo.io.kserver import pack_config, reset_buckets
from teredo.io.libbpf import BpfObject, possible_cpus

from .bpftest import load
from .packets import checksum

XDP_DROP, XDP_PASS, XDP_TX = 1, 2, 3
PRIMARY = "198.51.100.10"
SECONDARY = "198.51.100.11"
CLIENT = "203.0.113.40"
CLIENT_PORT = 40000
TTL = 64
MAC_SERVER = bytes((2, 0, 0, 0, 0, 0x10))
MAC_CLIENT = bytes((2, 0, 0, 0, 0, 0x40))
LL_RESTRICTED = bytes.fromhex("fe800000000000000000ffffffffffff")
LL_CONE = bytes.fromhex("fe800000000000008000ffffffffffff")
NONCE = bytes.fromhex("0102030405060708")
COUNTERS = ("ra", "rs_rate_limited", "passed")
# Limits no test reaches unless it means to (the buckets live on between test runs).
WIDE = ServerLimits(
    rs_rate=1000.0, rs_burst=4e6, rs_ipv4_rate=1000.0, rs_ipv4_burst=4e6, rs_total_rate=4e6
)


def ip_int(dotted: str) -> int:
    return int.from_bytes(socket.inet_aton(dotted), "big")


def params(limits: ServerLimits = WIDE) -> ServerParams:
    return ServerParams(primary=ip_int(PRIMARY), secondary=ip_int(SECONDARY), limits=limits)


def auth(nonce: bytes = NONCE, confirmation: int = 0) -> bytes:
    """RFC 4380 5.1.1: 00 01, no client id, no value, nonce, confirmation."""
    return b"\x00\x01\x00\x00" + nonce + bytes((confirmation,))


def frame(
    payload: bytes,
    *,
    src: str = CLIENT,
    sport: int = CLIENT_PORT,
    dst: str = PRIMARY,
    dport: int = 3544,
    udp_csum: str = "full",
    ip_options: bytes = b"",
    frag: int = 0x4000,
    ethertype: int = 0x0800,
) -> bytes:
    """Ethernet + IPv4 + UDP around `payload`; `udp_csum` "full", "zero", "bad" or
    "partial" (only the pseudo-header sum, as a sender that leaves it to the device)."""
    length = 8 + len(payload)
    s, d = socket.inet_aton(src), socket.inet_aton(dst)
    check = 0
    if udp_csum == "partial":
        check = checksum(s + d + struct.pack("!xBH", 17, length))
    elif udp_csum != "zero":
        pseudo = s + d + struct.pack("!xBH", 17, length)
        head = struct.pack("!HHHH", sport, dport, length, 0)
        check = 0xFFFF - checksum(pseudo + head + payload) or 0xFFFF
        if udp_csum == "bad":
            check ^= 0x0101
    ihl = 5 + len(ip_options) // 4
    ip = (
        struct.pack("!BBHHHBBH4s4s", 0x40 | ihl, 0, ihl * 4 + length, 7, frag, 64, 17, 0, s, d)
        + ip_options
    )
    ip = ip[:10] + struct.pack("!H", 0xFFFF - checksum(ip)) + ip[12:]
    eth = MAC_SERVER + MAC_CLIENT + struct.pack("!H", ethertype)
    return eth + ip + struct.pack("!HHHH", sport, dport, length, check) + payload


class Recorder:
    def __init__(self) -> None:
        self.udp: list[tuple[bytes, Address, bool]] = []

    def send_udp(self, payload: bytes, destination: Address, from_secondary: bool) -> None:
        self.udp.append((bytes(payload), destination, from_secondary))

    def send_ipv6(self, packet: bytes) -> None:
        raise AssertionError("an RS never leaves natively")


@dataclass(frozen=True, slots=True)
class Sent:
    """The datagram the program sent back, read from its frame."""

    payload: bytes
    source: str
    destination: Address


def parse_answer(data: bytes) -> Sent:
    """Check the outer headers of an XDP_TX frame as the stack would have built them."""
    assert data[:14] == MAC_CLIENT + MAC_SERVER + b"\x08\x00"
    ip = data[14:34]
    version_ihl, tos, total, _ident, frag, ttl, proto = struct.unpack("!BBHHHBB", ip[:10])
    # No DF, as our sockets send (io/udp.py); the id is random.
    assert (version_ihl, tos, frag, ttl, proto) == (0x45, 0, 0, TTL, 17)
    assert total == len(data) - 14
    assert checksum(ip) == 0xFFFF
    sport, dport, length, check = struct.unpack("!HHHH", data[34:42])
    assert (sport, length) == (3544, total - 20)
    assert check != 0
    pseudo = ip[12:20] + struct.pack("!xBH", 17, length)
    assert checksum(pseudo + data[34:]) == 0xFFFF
    return Sent(data[42:], socket.inet_ntoa(ip[12:16]), (socket.inet_ntoa(ip[16:20]), dport))


class Pair:
    """The loaded program and a core server with the same parameters."""

    def __init__(self, obj: BpfObject, limits: ServerLimits = WIDE) -> None:
        self.obj = obj
        self.out = Recorder()
        self.core = ServerMachine(params(limits), self.out)
        obj.map("server_cfg").update(struct.pack("=I", 0), pack_config(params(limits), TTL))
        self.now = 1000.0

    def kernel(self, data: bytes) -> tuple[int, bytes]:
        result = self.obj.program("server_rs").test_run(data)
        return result.retval, result.data

    def core_answer(self, data: bytes) -> tuple[bytes, Address, bool] | None:
        """What the core does with the UDP payload of `data` (only for IPv4/UDP to 3544)."""
        ip = data[14:]
        ihl = (ip[0] & 15) * 4
        src = socket.inet_ntoa(ip[12:16])
        sport = struct.unpack("!H", ip[ihl : ihl + 2])[0]
        on_secondary = socket.inet_ntoa(ip[16:20]) == SECONDARY
        before = len(self.out.udp)
        self.core.receive(ip[ihl + 8 :], (src, sport), on_secondary, self.now)
        return self.out.udp[-1] if len(self.out.udp) > before else None

    def counters(self) -> dict[str, int]:
        m = self.obj.map("server_counters")
        out = {}
        for i, name in enumerate(COUNTERS):
            raw = m.lookup(struct.pack("=I", i), percpu=True)
            assert raw is not None
            out[name] = sum(struct.unpack(f"={possible_cpus()}Q", raw))
        return out


@pytest.fixture
def obj() -> Iterator[BpfObject]:
    o = load("teredo_server")
    yield o
    o.close()


def expect_same(pair: Pair, data: bytes) -> Sent:
    """The program answers `data` with the core's answer, byte for byte."""
    retval, out = pair.kernel(data)
    core = pair.core_answer(data)
    assert core is not None, "the core does not answer this frame"
    assert retval == XDP_TX, f"the program did not answer (verdict {retval})"
    sent = parse_answer(out)
    payload, destination, from_secondary = core
    assert sent.payload == payload
    assert sent.destination == destination
    assert sent.source == (SECONDARY if from_secondary else PRIMARY)
    return sent


@pytest.mark.parametrize("with_auth", [True, False], ids=["auth", "no-auth"])
@pytest.mark.parametrize("dst", [PRIMARY, SECONDARY])
@pytest.mark.parametrize("source", [LL_RESTRICTED, LL_CONE], ids=["restricted", "cone"])
@pytest.mark.parametrize("udp_csum", ["full", "zero", "partial"])
def test_plain_rs_answered_as_the_core(
    obj: BpfObject, with_auth: bool, dst: str, source: bytes, udp_csum: str
) -> None:
    pair = Pair(obj)
    payload = (auth() if with_auth else b"") + build_rs(source)
    sent = expect_same(pair, frame(payload, dst=dst, udp_csum=udp_csum))
    # RFC 4380 5.3.2: a cone RS is answered from the other address.
    other = SECONDARY if dst == PRIMARY else PRIMARY
    assert sent.source == (other if source == LL_CONE else dst)
    assert pair.counters() == {"ra": 1, "rs_rate_limited": 0, "passed": 0}


def test_nonce_and_confirmation_echoed_as_the_core(obj: BpfObject) -> None:
    """RFC 5991: the RA echoes the RS nonce; its confirmation byte is 0 whatever the RS said."""
    pair = Pair(obj)
    for i, conf in enumerate((0, 1, 255)):
        nonce = bytes((i,)) * 8
        sent = expect_same(pair, frame(auth(nonce, conf) + build_rs()))
        assert sent.payload[4:13] == nonce + b"\x00"


def rs_with(**change: int) -> bytes:
    """A plain RS with one byte changed at offset -> value (checksum NOT recomputed)."""
    rs = bytearray(build_rs())
    for key, value in change.items():
        rs[int(key[1:])] = value
    return bytes(rs)


PASSED = {
    "truncated_rs": frame(auth() + build_rs()[:47]),
    "truncated_auth": frame(auth()[:10]),
    "wrong_version": frame(auth() + bytes((0x50,)) + build_rs()[1:]),
    "rs_with_option": frame(auth() + build_rs(options=bytes((1, 1)) + bytes(6))),
    "trailing_bytes": frame(auth() + build_rs() + bytes(8)),
    "hop_limit_254": frame(auth() + build_rs(hop_limit=254)),
    "bad_icmpv6_checksum": frame(auth() + rs_with(o42=0x12)),
    "code_1": frame(auth() + build_rs()[:41] + b"\x01" + build_rs()[42:]),
    "echo_request": frame(auth() + rs_with(o40=128)),
    "router_advertisement": frame(auth() + rs_with(o40=134)),
    "to_link_local": frame(auth() + build_rs(dst=bytes.fromhex("fe80" + "00" * 13 + "01"))),
    "global_source": frame(auth() + build_rs(src=bytes.fromhex("20010db8" + "00" * 11 + "01"))),
    "not_our_address": frame(auth() + build_rs(), dst="198.51.100.12"),
    "not_port_3544": frame(auth() + build_rs(), dport=3545),
    "ipv4_options": frame(auth() + build_rs(), ip_options=bytes((1, 1, 1, 0))),
    "more_fragments": frame(auth() + build_rs(), frag=0x2000),
    "fragment_offset": frame(auth() + build_rs(), frag=0x0001),
    "bad_udp_checksum": frame(auth() + build_rs(), udp_csum="bad"),
    "private_source": frame(auth() + build_rs(), src="192.168.1.2"),
    "zero_source_port": frame(auth() + build_rs(), sport=0),
    "loop_guard": frame(auth() + build_rs(), src=SECONDARY, sport=3544),
    "client_id": frame(b"\x00\x01\x01\x00\x07" + NONCE + b"\x00" + build_rs()),
    "origin_indication": frame(bytes(8) + build_rs()),
    "bubble": frame(auth() + build_rs()[:4] + b"\x00\x00\x3b" + build_rs()[7:40]),
    "not_ipv4": frame(auth() + build_rs(), ethertype=0x86DD),
}


@pytest.mark.parametrize("name", sorted(PASSED))
def test_everything_else_goes_up_unchanged(obj: BpfObject, name: str) -> None:
    pair = Pair(obj)
    data = PASSED[name]
    retval, out = pair.kernel(data)
    assert (retval, out) == (XDP_PASS, data)
    assert pair.counters() == {"ra": 0, "rs_rate_limited": 0, "passed": 1}


def test_disabled_config_passes_everything(obj: BpfObject) -> None:
    obj.map("server_cfg").update(struct.pack("=I", 0), pack_config(params(), TTL, enabled=False))
    data = frame(auth() + build_rs())
    assert obj.program("server_rs").test_run(data).retval == XDP_PASS


# Limits that the clock does not refill during a test (a token per 1,000 s).
SLOW = 0.001


def flood_verdicts(pair: Pair, frames: list[bytes]) -> list[tuple[int, bool]]:
    """(kernel verdict, core answered) for each frame, in order."""
    out = []
    for data in frames:
        retval, _ = pair.kernel(data)
        out.append((retval, pair.core_answer(data) is not None))
    return out


def test_rate_limit_per_socket(obj: BpfObject) -> None:
    """RFC 4380 7.4: a per-client-socket burst, then drops, as the core counts them."""
    limits = ServerLimits(rs_rate=SLOW, rs_burst=3.0, rs_ipv4_burst=1e6, rs_total_rate=1e6)
    pair = Pair(obj, limits)
    frames = [frame(auth() + build_rs()) for _ in range(5)]
    frames.append(frame(auth() + build_rs(), sport=CLIENT_PORT + 1))  # another client
    verdicts = flood_verdicts(pair, frames)
    assert verdicts == [(XDP_TX, True)] * 3 + [(XDP_DROP, False)] * 2 + [(XDP_TX, True)]
    assert pair.core.drops.get(DropReason.RS_RATE_LIMITED) == 2
    assert pair.counters() == {"ra": 4, "rs_rate_limited": 2, "passed": 0}


def test_reset_buckets_gives_a_full_burst_again(obj: BpfObject) -> None:
    """A reload (io/kserver.ServerKernelPath.configure) starts the buckets afresh, as the core's."""
    limits = ServerLimits(rs_rate=SLOW, rs_burst=2.0, rs_ipv4_burst=1e6, rs_total_rate=1e6)
    pair = Pair(obj, limits)
    rs = frame(auth() + build_rs())
    assert [pair.kernel(rs)[0] for _ in range(3)] == [XDP_TX, XDP_TX, XDP_DROP]
    reset_buckets(obj)
    assert [pair.kernel(rs)[0] for _ in range(3)] == [XDP_TX, XDP_TX, XDP_DROP]


def test_rate_limit_per_ipv4_and_overall(obj: BpfObject) -> None:
    limits = ServerLimits(rs_burst=1e6, rs_ipv4_rate=SLOW, rs_ipv4_burst=2.0, rs_total_rate=1e6)
    pair = Pair(obj, limits)
    ports = [frame(auth() + build_rs(), sport=50000 + i) for i in range(4)]
    other = frame(auth() + build_rs(), src="203.0.113.41")
    assert flood_verdicts(pair, [*ports, other]) == [(XDP_TX, True)] * 2 + [
        (XDP_DROP, False)
    ] * 2 + [(XDP_TX, True)]
    # Overall: a total bucket of 3 (its burst is its rate, as the core's).
    obj.map("rs_total").update(struct.pack("=I", 0), bytes(16))
    total = ServerLimits(rs_burst=1e6, rs_ipv4_burst=1e6, rs_total_rate=3.0)
    pair = Pair(obj, total)
    many = [frame(auth() + build_rs(), src=f"203.0.113.{50 + i}") for i in range(5)]
    verdicts = flood_verdicts(pair, many)
    # The refill (3 a second) may give the kernel one more on a slow machine: never fewer.
    assert verdicts[:3] == [(XDP_TX, True)] * 3
    assert [core for _, core in verdicts] == [True] * 3 + [False] * 2
    assert verdicts[4][0] in (XDP_DROP, XDP_TX)


def _mutate(data: bytes, edits: list[tuple[int, int]], cut: int) -> bytes:
    b = bytearray(data)
    for at, value in edits:
        b[14 + at % (len(b) - 14)] = value
    return bytes(b[: len(b) - cut])


BASES = [
    frame(auth() + build_rs()),
    frame(build_rs(LL_CONE), dst=SECONDARY),
    frame(auth() + build_rs(LL_CONE), udp_csum="zero"),
    frame(auth() + build_rs(), dst=SECONDARY, udp_csum="partial"),
]


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    base=st.sampled_from(BASES),
    edits=st.lists(st.tuples(st.integers(0, 200), st.integers(0, 255)), max_size=3),
    cut=st.sampled_from([0, 0, 0, 1, 8, 20]),
    fix_ip=st.booleans(),
)
def test_kernel_never_answers_other_than_the_core(
    obj: BpfObject, base: bytes, edits: list[tuple[int, int]], cut: int, fix_ip: bool
) -> None:
    """Any frame: unchanged for Python, or the core's own answer (the limits are wide)."""
    data = _mutate(base, edits, cut)
    if fix_ip:  # a valid IPv4 checksum so that the later checks are reached
        ip = bytearray(data[14:34])
        ip[10:12] = b"\x00\x00"
        ip[10:12] = struct.pack("!H", 0xFFFF - checksum(bytes(ip)))
        data = data[:14] + bytes(ip) + data[34:]
    pair = Pair(obj)
    retval, out = pair.kernel(data)
    assert retval in (XDP_PASS, XDP_TX)
    if retval == XDP_PASS:
        assert out == data
        return
    core = pair.core_answer(data)
    assert core is not None
    sent = parse_answer(out)
    assert (sent.payload, sent.destination) == core[:2]
    assert sent.source == (SECONDARY if core[2] else PRIMARY)
