"""io/kmirror.py's PeerMapMirror on a real BPF map (the relay's `relay_peers`, loaded, not
attached): the map holds exactly the core's trusted peers at their mappings after every change
(the PeerTable's watch), `sync` reads the kernel's use back into the core and writes the Python
path's newer receptions down, and keeps no per-peer state of its own."""

from __future__ import annotations

import socket
import struct
from collections.abc import Iterator

import pytest

from teredo.core.peers import PeerTable
from teredo.io.kmirror import MIN_BUDGET, PEER_VALUE, PeerMapMirror, boottime, stamp
from teredo.io.libbpf import BpfMap, BpfObject

from .bpftest import load

T0 = boottime()


def addr(i: int) -> bytes:
    return bytes.fromhex("20010000c6336400") + i.to_bytes(8, "big")


def mapping(ip: str, port: int) -> tuple[int, int]:
    return int.from_bytes(socket.inet_aton(ip), "big"), port


def entries(m: BpfMap) -> dict[bytes, tuple[tuple[int, int], int, int]]:
    """key -> ((ipv4, port), last_tx, last_rx)"""
    out = {}
    for key, value in m.items():
        raw, _, tx, rx = PEER_VALUE.unpack(value)
        out[key] = ((int.from_bytes(raw[:4], "big"), int.from_bytes(raw[4:], "big")), tx, rx)
    return out


@pytest.fixture
def relay_obj() -> Iterator[BpfObject]:
    with load("teredo_relay") as obj:
        yield obj


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now


def setup(obj: BpfObject, capacity: int = 64) -> tuple[PeerTable, PeerMapMirror, BpfMap, Clock]:
    clock = Clock()
    m = obj.map("relay_peers")
    mirror = PeerMapMirror(m, clock)
    table = PeerTable(capacity, epoch=T0, idle_timeout=30.0, watch=mirror)
    return table, mirror, m, clock


def trusted(table: PeerTable, i: int, at: tuple[int, int], now: float) -> int:
    row = table.lookup(addr(i))
    if row is None:
        row = table.insert(addr(i), now)
        assert row is not None
    table.trust(row, *at, now)
    return row


def test_the_map_is_the_cores_trusted_set(relay_obj: BpfObject) -> None:
    table, mirror, m, clock = setup(relay_obj)
    a, b = mapping("203.0.113.11", 40000), mapping("203.0.113.12", 50000)
    untrusted = table.insert(addr(9), T0)
    assert untrusted is not None
    assert entries(m) == {}, "an untrusted peer is not in the kernel"
    row = trusted(table, 1, a, T0)
    got = entries(m)
    assert got[addr(1)][0] == a
    assert got[addr(1)][2] == stamp(T0), "trusted on a reception: valid from now"
    # A new mapping (section 5.4.2): the old one is gone from the kernel before trust returns.
    clock.now = T0 + 2
    table.trust(row, *b, T0 + 2)
    assert entries(m)[addr(1)][0] == b
    table.untrust(row)
    assert addr(1) not in entries(m)
    row = trusted(table, 1, a, T0 + 3)
    table.remove(row)
    assert entries(m) == {}
    trusted(table, 2, a, T0 + 3)
    trusted(table, 3, b, T0 + 3)
    assert table.expire(T0 + 40) >= 2, "idle 30 s: the core expires them"
    assert entries(m) == {}, "expired in the core: gone from the kernel"
    trusted(table, 4, a, T0 + 41)
    table.clear()
    assert entries(m) == {}
    assert mirror.errors == 0


def test_sync_reads_the_kernels_use_back_and_writes_pythons_down(relay_obj: BpfObject) -> None:
    table, mirror, m, _ = setup(relay_obj)
    a = mapping("203.0.113.11", 40000)
    row_k = trusted(table, 1, a, T0)
    row_p = trusted(table, 2, a, T0)
    # The kernel sent to and forwarded from peer 1 at T0 + 5.
    raw, flags, _, _ = PEER_VALUE.unpack(m.lookup(addr(1)) or b"")
    m.update(addr(1), PEER_VALUE.pack(raw, flags, stamp(T0 + 5), stamp(T0 + 5)))
    # Peer 2 was heard on the Python path at T0 + 12 only.
    table.touch_rx(row_p, T0 + 12)
    mirror.sync(table, T0 + 13)
    assert abs(table.last_tx(row_k) - (T0 + 5)) < 0.1
    assert abs(table.last_rx(row_k) - (T0 + 5)) < 0.1
    assert abs(table.last_rx(row_p) - (T0 + 12)) < 0.1, "the core's own reception stays"
    # Kernel reception 13 s old, the core's 1 s: the newer one is written down (the program
    # would otherwise find the peer stale 16 s too early).
    assert entries(m)[addr(2)][2] == stamp(table.last_rx(row_p))
    assert mirror.entries == 2
    # The kernel's use keeps peer 1 alive past the core's idle timeout of its trust time.
    table.expire(T0 + 31)
    assert table.lookup(addr(1)) is not None


def test_sync_repairs_an_entry_the_core_does_not_trust(relay_obj: BpfObject) -> None:
    table, mirror, m, _ = setup(relay_obj)
    a = mapping("203.0.113.11", 40000)
    trusted(table, 1, a, T0)
    stray = PEER_VALUE.pack(struct.pack("!IH", *a), 0, 0, stamp(T0))
    m.update(addr(7), stray)  # what a failed delete would leave
    mirror.sync(table, T0 + 1)
    assert set(entries(m)) == {addr(1)}
    assert mirror.repaired == 1


def test_the_walk_covers_a_large_map_in_bounded_steps(relay_obj: BpfObject) -> None:
    n = 2 * MIN_BUDGET + 100
    table, mirror, m, _ = setup(relay_obj, capacity=n)
    a = mapping("203.0.113.11", 40000)
    for i in range(n):
        trusted(table, i, a, T0)
    now = T0 + 1
    for _ in range(8):
        mirror.sync(table, now)
        now += 1
        if mirror.entries:
            break
    assert mirror.entries == n, "one walk saw every entry once"
    assert len(entries(m)) == n
