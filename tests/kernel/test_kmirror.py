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
from teredo.io import kmirror
from teredo.io.datapath import object_path
from teredo.io.kmirror import MIN_BUDGET, PEER_VALUE, PeerMapMirror, boottime, stamp
from teredo.io.libbpf import BpfMap, BpfObject

from .bpftest import TC_ACT_OK, TC_ACT_REDIRECT, load, run

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


# --- re-insert on use (an entry the kernel's LRU evicted) ------------------------------------


def test_a_peer_gone_from_the_map_comes_back_on_its_next_use(relay_obj: BpfObject) -> None:
    table, mirror, m, _ = setup(relay_obj)
    a, b = mapping("203.0.113.11", 40000), mapping("203.0.113.12", 50000)
    row1 = trusted(table, 1, a, T0)
    trusted(table, 2, b, T0)
    mirror.sync(table, T0 + 1)
    m.delete(addr(1))  # what the kernel's LRU does to a full map, without telling anyone
    m.delete(addr(2))
    # The Python path sends to peer 1 (sending case 1: still valid, heard at T0).
    assert table.send_row(addr(1), T0 + 2.5) == row1
    mirror.sync(table, T0 + 3)
    got = entries(m)
    assert set(got) == {addr(1)}, "used: back in the kernel; unused: stays on the Python path"
    assert got[addr(1)][0] == a
    assert got[addr(1)][2] == stamp(table.last_rx(row1)), "valid as long as the core says"
    assert mirror.reinserted == 1
    # A present entry is left as it is (the kernel's own stamps are not reset).
    raw, flags, _, rx = PEER_VALUE.unpack(m.lookup(addr(1)) or b"")
    m.update(addr(1), PEER_VALUE.pack(raw, flags, stamp(T0 + 3.5), rx))
    table.touch_rx(row1, T0 + 4.5)
    mirror.sync(table, T0 + 5)
    assert entries(m)[addr(1)][1] == stamp(T0 + 3.5)
    assert mirror.reinserted == 1
    assert mirror.errors == 0


def test_a_stale_or_untrusted_peer_is_not_put_back(relay_obj: BpfObject) -> None:
    table, mirror, m, _ = setup(relay_obj, capacity=8)
    a = mapping("203.0.113.11", 40000)
    row1 = trusted(table, 1, a, T0)
    row2 = trusted(table, 2, a, T0)
    mirror.sync(table, T0 + 1)
    m.delete(addr(1))
    m.delete(addr(2))
    table.touch_tx(row1, T0 + 31)  # used, but no reception for 31 s: not valid (5.2.4)
    table.untrust(row2)
    table.touch_tx(row2, T0 + 31)
    mirror.sync(table, T0 + 32)
    assert entries(m) == {}
    assert mirror.reinserted == 0


def test_re_inserts_are_bounded_per_sync(
    relay_obj: BpfObject, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(kmirror, "REINSERT_BUDGET", 3)
    table, mirror, m, _ = setup(relay_obj)
    a = mapping("203.0.113.11", 40000)
    rows = [trusted(table, i, a, T0) for i in range(10)]
    mirror.sync(table, T0 + 1)
    for i in range(10):
        m.delete(addr(i))
    for row in rows:
        table.touch_tx(row, T0 + 2.5)
    mirror.sync(table, T0 + 3)
    assert len(entries(m)) == 3, "at most REINSERT_BUDGET a sync"
    assert set(entries(m)) == {addr(9), addr(8), addr(7)}, "the most recently used first"


def test_an_lru_evicted_peer_is_carried_by_the_kernel_again() -> None:
    """The relay's map for real: an LRU hash smaller than the trusted set evicts; the evicted
    peer's next use on the Python path puts it back, and relay_encap forwards to it again."""
    from .packets import ETH_IP6, NATIVE, udp6
    from .test_relay_programs import configure

    size = 1024
    obj = BpfObject(object_path("teredo_relay"))
    try:
        obj.map("relay_peers").set_max_entries(size)
        obj.load()
        configure(obj)  # relay_cfg (and the other tests' peer, deleted below)
        m = obj.map("relay_peers")
        for key in list(m.keys()):
            m.delete(key)
        clock = Clock()
        clock.now = boottime()
        mirror = PeerMapMirror(m, clock)
        table = PeerTable(4 * size, epoch=clock.now, idle_timeout=30.0, watch=mirror)
        a = mapping("203.0.113.11", 40000)
        n = 2 * size
        rows = [trusted(table, i, a, clock.now) for i in range(n)]
        mirror.sync(table, clock.now)
        present = set(entries(m))
        evicted = [i for i in range(n) if addr(i) not in present]
        assert evicted, "the LRU map holds fewer than the trusted peers"
        assert mirror.errors == 0, "an LRU map evicts instead of refusing"
        gone = evicted[0]
        packet = udp6(NATIVE, addr(gone), b"to an evicted peer")
        assert run(obj.program("relay_encap"), ETH_IP6 + packet).retval == TC_ACT_OK
        clock.now += 1.5
        assert table.send_row(addr(gone), clock.now) == rows[gone], "the Python path sends"
        mirror.sync(table, clock.now + 0.1)
        assert addr(gone) in entries(m)
        assert run(obj.program("relay_encap"), ETH_IP6 + packet).retval == TC_ACT_REDIRECT
    finally:
        obj.close()


# --- a client's local peers (section 5.2.8) ----------------------------------------------------


def test_a_local_peer_keeps_the_cores_600_s_of_validity_in_the_kernel() -> None:
    """RFC 4380 section 5.2.8: a peer found by local discovery is valid 600 s after its last
    reception (section 5.2.4), not 30 s. The client core trusts it through a discovery bubble
    and its direct bubble from its local address; the mirror flags its entry local, so that
    client_encap still forwards to it 100 s later, as the core does, and no longer once the
    core takes the flag away."""
    from teredo.core.addr import ALL_NODES, ipv4_to_int
    from teredo.core.client import ClientMachine, ClientParams
    from teredo.core.ipv6 import build_bubble

    from .packets import ETH_IP6, SERVER, Recorder, kernel_stamp, teredo_address, udp6
    from .test_client_programs import MAPPING, SERVER2, FakeRandom, _ra, configure

    out = Recorder()
    params = ClientParams(ipv4_to_int(SERVER), peer_capacity=64, local_discovery=True)
    client = ClientMachine(params, out, FakeRandom())
    now = boottime()
    client.start(now - 10)
    client.receive_udp(_ra(out.udp[-1][0], SERVER), (SERVER, 3544), now - 9.9)
    client.receive_udp(_ra(out.udp[-1][0], SERVER), (SERVER2, 3544), now - 9.8)
    address = client.address
    assert address is not None
    peer = teredo_address(MAPPING[0], 40001)  # behind our NAT: it embeds our mapped IPv4
    local = ("192.168.1.3", 3545)
    with load("teredo_client") as obj:
        configure(obj, address)
        m = obj.map("client_peers")
        client.peers.watch = PeerMapMirror(m)
        client.receive_discovery(build_bubble(peer, ALL_NODES), local, now)
        client.receive_udp(build_bubble(peer, address), local, now)  # case 5: trusted
        row = client.peers.lookup(peer)
        assert row is not None
        assert client.peers.is_trusted(row)
        assert client.peers.is_local(row)
        raw, flags, _, _ = PEER_VALUE.unpack(m.lookup(peer) or b"")
        assert raw == socket.inet_aton(local[0]) + local[1].to_bytes(2, "big")
        assert flags == kmirror.PEER_LOCAL
        # 100 s without a reception (the kernel's stamp set back): the core still sends to
        # the peer directly, and so does the kernel.
        m.update(peer, PEER_VALUE.pack(raw, flags, 0, kernel_stamp(100)))
        packet = udp6(address, peer, b"to a local peer")
        # (The peer list's sending case 1: the whole client would be re-qualifying by then.)
        assert client.peers.send_row(peer, now + 100) == row, "the core: valid for 600 s"
        got = run(obj.program("client_encap"), ETH_IP6 + packet)
        assert got.retval == TC_ACT_REDIRECT, "the kernel: the core's validity"
        assert got.data[14 + 16 : 14 + 20] == socket.inet_aton(local[0])
        # No longer local (set_local(False) on a trusted peer): the kernel's 30 s again.
        client.peers.set_local(row, False)
        _, flags, _, _ = PEER_VALUE.unpack(m.lookup(peer) or b"")
        assert flags == 0
        m.update(peer, PEER_VALUE.pack(raw, flags, 0, kernel_stamp(100)))
        assert run(obj.program("client_encap"), ETH_IP6 + packet).retval == TC_ACT_OK
