"""PeerTable: every RFC 4380 per-peer rule under a fake clock, the eviction policy under a flood,
bounded queues and nonces, forced hash collisions, and a state machine against a dict model."""

from __future__ import annotations

import struct
from collections import OrderedDict
from dataclasses import dataclass, field

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from teredo.core.ipv6 import tcp_retransmit_key
from teredo.core.peers import (
    QUEUE_PACKET_OVERHEAD,
    PeerTable,
)

T0 = 1000.0  # the fake clock's start; the table's epoch


def teredo(n: int) -> bytes:
    """A Teredo address (2001:0::/32, server 203.0.113.1) for client 198.51.100.x, port n."""
    ip = (198 << 24 | 51 << 16 | 100 << 8 | (n & 0xFF)) ^ 0xFFFFFFFF
    port = (1024 + (n >> 8)) ^ 0xFFFF
    return struct.pack(">IIHHI", 0x20010000, 0xCB007101, 0x8000, port, ip)


def new_table(capacity: int = 16, **kw: object) -> PeerTable:
    return PeerTable(capacity, epoch=T0, **kw)  # type: ignore[arg-type]


def insert(table: PeerTable, addr: bytes, now: float, *, trusted: bool = False) -> int:
    """A new row (refused inserts fail the test); `trusted`: trusted at once, as a direct
    reception from the mapping 0.0.0.0:0 at `now` would make it."""
    row = table.insert(addr, now)
    assert row is not None, "insert was refused"
    if trusted:
        table.trust(row, 0, 0, now)
    return row


def expiry_order(table: PeerTable, addrs: list[bytes], now: float) -> list[bytes]:
    """The order in which `expire` takes the `addrs` present (least recently used first,
    untrusted before trusted), seen from outside: empties the table of them."""
    present = [a for a in addrs if a in table]
    order: list[bytes] = []
    while present:
        assert table.expire(now, budget=1) == 1
        gone = [a for a in present if a not in table]
        assert len(gone) == 1
        order.append(gone[0])
        present.remove(gone[0])
    return order


# --- new entries, validity ----------------------------------------------------------------------


def test_new_entry_is_dated_30_s_back_and_invalid() -> None:
    table = new_table()
    row = insert(table, teredo(1), T0 + 5.0)
    assert table.lookup(teredo(1)) == row
    assert table.last_rx(row) == pytest.approx(T0 - 25.0)
    assert table.last_tx(row) == pytest.approx(T0 - 25.0)
    assert table.bubble_count(row, T0 + 5.0) == 0
    assert not table.is_trusted(row)
    assert not table.is_local(row)
    assert table.mapping(row) == (0, 0)
    # Dated 30 s back, so not valid (section 5.2.4: "less than 30 s").
    assert not table.is_valid(row, T0 + 5.0)


def test_validity_is_30_s_after_reception() -> None:
    table = new_table()
    row = insert(table, teredo(1), T0)
    table.touch_rx(row, T0 + 1.0)
    assert table.is_valid(row, T0 + 1.0)
    assert table.is_valid(row, T0 + 30.99)
    assert not table.is_valid(row, T0 + 31.0)


def test_local_peer_validity_is_600_s() -> None:
    table = new_table()
    row = insert(table, teredo(1), T0)
    table.set_local(row, True)
    table.touch_rx(row, T0)
    assert table.is_local(row)
    assert table.is_valid(row, T0 + 599.99)
    assert not table.is_valid(row, T0 + 600.0)
    table.set_local(row, False)
    assert not table.is_valid(row, T0 + 30.0)


def test_mapping_and_address_round_trip() -> None:
    table = new_table()
    row = insert(table, teredo(7), T0)
    table.set_mapping(row, 0xC6336407, 40000)
    assert table.mapping(row) == (0xC6336407, 40000)
    assert table.mapping_key(row) == (0xC6336407 << 16) | 40000
    assert table.address(row) == teredo(7)
    with pytest.raises(ValueError, match="32 bits"):
        table.set_mapping(row, 1 << 32, 1)
    with pytest.raises(ValueError, match="16 bits"):
        table.set_mapping(row, 1, 65536)


def test_bad_addresses() -> None:
    table = new_table()
    insert(table, teredo(1), T0)
    assert table.lookup(teredo(1)[:15]) is None  # a prefix of a stored key is no match
    assert table.lookup(b"") is None
    assert b"x" not in table
    with pytest.raises(ValueError, match="16 bytes"):
        table.insert(b"short", T0)
    with pytest.raises(ValueError, match="already"):
        table.insert(teredo(1), T0)


# --- bubbles (section 5.2.6) --------------------------------------------------------------------


def test_first_bubble_may_leave_at_once() -> None:
    table = new_table()
    row = insert(table, teredo(1), T0)
    assert table.may_send_bubble(row, T0)


def test_bubbles_are_2_s_apart() -> None:
    table = new_table()
    row = insert(table, teredo(1), T0)
    table.record_bubble(row, T0)
    assert table.last_tx(row) == pytest.approx(T0)
    assert not table.may_send_bubble(row, T0 + 1.99)
    assert table.may_send_bubble(row, T0 + 2.0)


def test_any_transmission_delays_the_next_bubble() -> None:
    table = new_table()
    row = insert(table, teredo(1), T0)
    table.touch_tx(row, T0 + 10.0)
    assert not table.may_send_bubble(row, T0 + 11.0)
    assert table.may_send_bubble(row, T0 + 12.0)
    assert table.bubble_count(row, T0 + 12.0) == 0


def test_four_bubbles_per_300_s_sliding_window() -> None:
    table = new_table()
    row = insert(table, teredo(1), T0)
    for k, when in enumerate((0.0, 200.0, 202.0, 204.0)):
        assert table.may_send_bubble(row, T0 + when)
        table.record_bubble(row, T0 + when)
        assert table.bubble_count(row, T0 + when) == k + 1
    # Four in the last 300 s: no fifth before the first leaves the window at 300 s.
    assert not table.may_send_bubble(row, T0 + 206.0)
    assert not table.may_send_bubble(row, T0 + 299.99)
    assert table.bubble_count(row, T0 + 299.99) == 4
    assert table.may_send_bubble(row, T0 + 300.0)
    assert table.bubble_count(row, T0 + 300.0) == 3
    table.record_bubble(row, T0 + 300.0)
    # Now 200, 202, 204, 300 are in the window: the next waits for 200 to leave (at 500 s).
    # A counter reset every 300 s (Miredo's reading) would allow more here.
    assert not table.may_send_bubble(row, T0 + 302.0)
    assert not table.may_send_bubble(row, T0 + 499.99)
    assert table.may_send_bubble(row, T0 + 500.0)


def test_direct_reception_resets_the_bubble_count() -> None:
    table = new_table()
    row = insert(table, teredo(1), T0)
    for k in range(4):
        table.record_bubble(row, T0 + 2.0 * k)
    assert not table.may_send_bubble(row, T0 + 10.0)
    table.touch_rx(row, T0 + 10.0)
    assert table.bubble_count(row, T0 + 10.0) == 0
    assert table.may_send_bubble(row, T0 + 10.0)  # last tx 6 s ago, count reset


# --- the one-call data path ------------------------------------------------------------------


def test_send_row_needs_a_valid_trusted_peer() -> None:
    table = new_table()
    row = insert(table, teredo(1), T0)
    assert table.send_row(teredo(1), T0) is None  # untrusted
    table.trust(row, 0, 0, T0)
    assert table.send_row(teredo(1), T0 + 30.0) is None  # trusted but no longer valid
    table.touch_rx(row, T0)
    assert table.send_row(teredo(2), T0) is None  # unknown
    assert table.send_row(b"short", T0) is None
    assert table.send_row(teredo(1), T0 + 5.0) == row
    assert table.last_tx(row) == pytest.approx(T0 + 5.0)
    assert table.send_row(teredo(1), T0 + 30.0) is None  # 30 s without reception
    table.set_local(row, True)
    assert table.send_row(teredo(1), T0 + 599.0) == row
    assert table.last_tx(row) == pytest.approx(T0 + 599.0)


def test_untrust_takes_a_peer_off_the_send_path_until_trusted_again() -> None:
    table = new_table()
    row = insert(table, teredo(1), T0, trusted=True)
    assert table.send_row(teredo(1), T0 + 1.0) == row
    table.untrust(row)
    assert not table.is_trusted(row)
    assert table.send_row(teredo(1), T0 + 2.0) is None
    assert table.receive_row(teredo(1), 0, 0, T0 + 2.0) is None
    table.untrust(row)  # already untrusted: nothing changes
    assert table.stats().untrusted == 1
    table.trust(row, 0, 0, T0 + 3.0)
    assert table.send_row(teredo(1), T0 + 4.0) == row
    table.remove(row)
    with pytest.raises(ValueError, match="not in use"):
        table.untrust(row)


def test_insert_with_a_mapping_then_a_bubble() -> None:
    table = new_table()
    row = table.insert(teredo(1), T0, mapping=(0xC6336401, 4000))
    assert row is not None
    assert table.lookup(teredo(1)) == row
    assert not table.is_trusted(row)
    assert table.mapping(row) == (0xC6336401, 4000)
    assert table.mapping_key(row) == (0xC6336401 << 16) | 4000
    assert table.may_send_bubble(row, T0)  # a new entry: its first bubble at once (5.2.6)
    table.record_bubble(row, T0)
    assert table.bubble_count(row, T0) == 1
    assert table.last_tx(row) == pytest.approx(T0)
    assert not table.may_send_bubble(row, T0 + 1.9)  # section 5.2.6: 2 s apart
    assert table.may_send_bubble(row, T0 + 2.0)
    with pytest.raises(ValueError, match="32 bits"):
        table.insert(teredo(2), T0, mapping=(1 << 32, 1))
    with pytest.raises(ValueError, match="32 bits"):
        table.insert(teredo(2), T0, mapping=(1, 1 << 16))
    assert teredo(2) not in table
    with pytest.raises(ValueError, match="16 bytes"):
        table.insert(b"short", T0)


def test_insert_with_a_bubble_is_insert_then_record_bubble() -> None:
    table = new_table()
    row = table.insert(teredo(1), T0, mapping=(1, 2), bubble=True)
    other = insert(table, teredo(2), T0)
    table.record_bubble(other, T0)
    assert row is not None
    for when in (T0, T0 + 1.9, T0 + 2.0, T0 + 400.0):
        assert table.bubble_count(row, when) == table.bubble_count(other, when)
        assert table.may_send_bubble(row, when) == table.may_send_bubble(other, when)
    assert table.last_tx(row) == table.last_tx(other) == pytest.approx(T0)
    assert table.bubble_count(row, T0) == 1
    assert table.next_expiry() == pytest.approx(T0 + 600.0)


def test_insert_with_a_mapping_follows_the_full_table_policy() -> None:
    table = new_table(capacity=1)
    row = table.insert(teredo(1), T0, mapping=(1, 1))
    assert row is not None
    table.trust(row, 1, 1, T0)
    assert table.insert(teredo(2), T0 + 1.0, mapping=(2, 2)) is None  # valid trusted: kept
    assert table.insert(teredo(2), T0 + 31.0, mapping=(2, 2)) == row  # no longer valid
    assert table.lookup(teredo(1)) is None
    assert table.mapping(row) == (2, 2)


def test_trust_records_the_mapping_and_flushes_the_queue() -> None:
    table = new_table()
    row = table.insert(teredo(1), T0, mapping=(0xC6336401, 4000))
    assert row is not None
    table.set_nonce(row, b"n" * 8)
    assert table.enqueue(row, b"one")
    assert table.enqueue(row, b"two")
    assert table.enqueue(row, b"in", inbound=True)
    assert table.trust(row, 0xC6336401, 4001, T0 + 1.0) == [b"one", b"two"]
    assert table.is_trusted(row)
    assert table.mapping(row) == (0xC6336401, 4001)
    assert table.last_rx(row) == pytest.approx(T0 + 1.0)
    assert table.last_tx(row) == pytest.approx(T0 + 1.0)
    assert table.nonce(row) is None  # section 5.2.9: a trusted peer needs no ping test
    assert table.next_expiry() == pytest.approx(T0 + 1.0 + 600.0)  # last use: now
    assert table.bubble_count(row, T0 + 1.0) == 0
    assert table.queued_bytes(row) == 2  # the inbound packet stays
    assert table.stats().trusted == 1
    assert table.stats().untrusted == 0
    # Again, trusted already and nothing queued outbound: only the dates move.
    assert table.trust(row, 0xC6336401, 4001, T0 + 3.0) == []
    assert table.last_rx(row) == pytest.approx(T0 + 3.0)
    assert table.last_tx(row) == pytest.approx(T0 + 1.0)
    assert table.send_row(teredo(1), T0 + 4.0) == row
    with pytest.raises(ValueError, match="32 bits"):
        table.trust(row, 1 << 32, 1, T0)
    table.remove(row)
    with pytest.raises(ValueError, match="not in use"):
        table.trust(row, 1, 1, T0)


def test_receive_row_needs_trust_and_the_mapping() -> None:
    table = new_table()
    row = insert(table, teredo(1), T0)
    table.set_mapping(row, 0xC6336401, 4000)
    table.record_bubble(row, T0)
    assert table.receive_row(teredo(1), 0xC6336401, 4000, T0 + 1.0) is None  # untrusted
    table.trust(row, 0xC6336401, 4000, T0 + 0.5)
    table.record_bubble(row, T0 + 0.5)
    assert table.receive_row(teredo(1), 0xC6336402, 4000, T0 + 1.0) is None
    assert table.receive_row(teredo(1), 0xC6336401, 4001, T0 + 1.0) is None
    assert table.bubble_count(row, T0 + 1.0) == 1
    assert table.receive_row(teredo(1), 0xC6336401, 4000, T0 + 1.0) == row
    assert table.last_rx(row) == pytest.approx(T0 + 1.0)
    assert table.bubble_count(row, T0 + 1.0) == 0
    assert table.is_valid(row, T0 + 1.0)


# --- LRU and eviction ---------------------------------------------------------------------------


def test_touches_order_rows_most_recent_first() -> None:
    table = new_table(8, idle_timeout=30.0)
    addrs = [teredo(i) for i in range(6)]
    rows = [insert(table, addr, T0 + i) for i, addr in enumerate(addrs)]
    table.touch_tx(rows[0], T0 + 10)
    table.touch_rx(rows[2], T0 + 11)
    assert table.next_expiry() == pytest.approx(T0 + 1 + 30.0)  # teredo(1), the oldest now
    for row in rows[4:]:
        table.trust(row, 0, 0, T0 + 12)
    table.touch_tx(rows[4], T0 + 13)
    assert [a for a, _, _ in table.trusted_peers()] == [addrs[4], addrs[5]]  # recent first
    # Untrusted rows expire first, each list from its least recently used end.
    order = expiry_order(table, addrs, T0 + 100.0)
    assert order == [addrs[1], addrs[3], addrs[0], addrs[2], addrs[5], addrs[4]]


def test_recency_has_a_1_s_granularity() -> None:
    table = new_table(8, idle_timeout=30.0)
    a, _b = insert(table, teredo(1), T0), insert(table, teredo(2), T0 + 0.5)
    table.touch_tx(a, T0 + 0.99)  # moved less than 1 s ago: keeps its place and last use
    assert table.next_expiry() == pytest.approx(T0 + 30.0)
    assert table.last_tx(a) == pytest.approx(T0 + 0.99)  # the dates stay exact
    table.touch_tx(a, T0 + 1.0)
    assert table.next_expiry() == pytest.approx(T0 + 0.5 + 30.0)  # b is the oldest now
    assert expiry_order(table, [teredo(1), teredo(2)], T0 + 100.0) == [teredo(2), teredo(1)]


def test_full_table_evicts_least_recently_used_untrusted_first() -> None:
    table = new_table(4)
    a, b, _c, _d = (insert(table, teredo(i), T0) for i in range(4))
    table.trust(a, 0, 0, T0)
    table.touch_tx(b, T0 + 1)  # b is now more recent than c and d
    insert(table, teredo(10), T0 + 2)
    assert teredo(2) not in table  # c: least recently used untrusted
    insert(table, teredo(11), T0 + 2)
    assert teredo(3) not in table
    insert(table, teredo(12), T0 + 2)
    assert teredo(1) not in table
    assert teredo(0) in table  # the trusted peer outlived three older untrusted peers
    assert table.stats().evicted_untrusted == 3


def test_flood_never_displaces_valid_trusted_peers() -> None:
    capacity = 64
    table = new_table(capacity)
    established = [teredo(i) for i in range(48)]
    for addr in established:
        insert(table, addr, T0, trusted=True)
    # A flood of 5000 new addresses within the validity window.
    accepted = 0
    for i in range(5000):
        now = T0 + i * 0.005
        accepted += table.insert(teredo(1000 + i), now) is not None
    assert accepted == 5000  # untrusted newcomers recycle each other's rows
    assert all(addr in table for addr in established)
    assert len(table) == capacity
    assert table.stats().untrusted == capacity - 48


def test_full_of_valid_trusted_peers_refuses_newcomers() -> None:
    table = new_table(4)
    for i in range(4):
        row = insert(table, teredo(i), T0, trusted=True)
        table.touch_rx(row, T0 + i)
    assert table.insert(teredo(9), T0 + 10) is None
    assert table.insert(teredo(9), T0 + 10, mapping=(1, 1)) is None
    assert table.stats().refused == 2
    # Once the least recently used one has gone quiet (no reception for 30 s) it may go.
    assert table.insert(teredo(9), T0 + 30.0) is not None
    assert teredo(0) not in table
    assert table.stats().evicted_trusted == 1


def test_remove_and_reinsert_reuses_rows() -> None:
    table = new_table(4)
    rows = [insert(table, teredo(i), T0) for i in range(4)]
    table.remove(rows[1])
    assert teredo(1) not in table
    assert len(table) == 3
    with pytest.raises(ValueError, match="not in use"):
        table.remove(rows[1])
    again = insert(table, teredo(1), T0 + 1)
    assert again == rows[1]
    assert table.lookup(teredo(1)) == again
    assert all(table.lookup(teredo(i)) == rows[i] for i in range(4))


def test_hash_collisions_with_a_tiny_capacity() -> None:
    # Capacity 3 gives 8 index slots: 200 addresses collide over and over, inserted and
    # removed in every order, which exercises the backward-shift deletion.
    table = new_table(3)
    addrs = [teredo(i) for i in range(200)]
    live: list[bytes] = []
    for i, addr in enumerate(addrs):
        if len(live) == 3:
            victim = live.pop(i % 3)
            row = table.lookup(victim)
            assert row is not None
            table.remove(row)
        insert(table, addr, T0)
        live.append(addr)
        for other in live:
            row = table.lookup(other)
            assert row is not None
            assert table.address(row) == other
        assert sum(a in table for a in addrs[: i + 1]) == len(live)


# --- expiry -------------------------------------------------------------------------------------


def test_expire_removes_idle_entries_within_budget() -> None:
    table = new_table(16, idle_timeout=600.0, untrusted_timeout=30.0)
    for i in range(6):
        insert(table, teredo(i), T0 + i)
    trusted = insert(table, teredo(100), T0, trusted=True)
    assert table.next_expiry() == pytest.approx(T0 + 30.0)
    assert table.expire(T0 + 29.99) == 0
    assert table.expire(T0 + 32.0, budget=2) == 2  # budget bounds the work
    assert teredo(0) not in table
    assert teredo(1) not in table
    assert table.expire(T0 + 32.0, budget=10) == 1  # teredo(2); teredo(3) is 29 s idle
    assert table.expire(T0 + 100.0) == 3
    assert len(table) == 1
    assert table.next_expiry() == pytest.approx(T0 + 600.0)
    table.touch_tx(trusted, T0 + 500.0)
    assert table.expire(T0 + 1099.0) == 0
    assert table.expire(T0 + 1100.0) == 1
    assert len(table) == 0
    assert table.next_expiry() is None
    assert table.stats().expired == 7


def test_expire_takes_untrusted_entries_first() -> None:
    table = new_table(8, idle_timeout=30.0)
    trusted = [insert(table, teredo(i), T0, trusted=True) for i in range(3)]
    untrusted = [insert(table, teredo(10 + i), T0 + 1) for i in range(3)]
    assert table.expire(T0 + 100.0, budget=4) == 4
    assert all(teredo(10 + i) not in table for i in range(3))
    assert teredo(0) not in table  # then the least recently used trusted one
    assert [a for a, _, _ in table.trusted_peers()] == [teredo(2), teredo(1)]
    assert set(trusted) | set(untrusted) == set(range(6))


def test_clear_forgets_everything() -> None:
    table = new_table(8)
    for i in range(5):
        row = insert(table, teredo(i), T0)
        table.enqueue(row, b"x" * 100)
    table.clear()
    assert len(table) == 0
    assert table.stats().queued_bytes == 0
    assert all(teredo(i) not in table for i in range(5))
    assert len([insert(table, teredo(i), T0) for i in range(8)]) == 8


def test_times_survive_a_rebase() -> None:
    table = new_table(4)
    row = insert(table, teredo(1), T0)
    table.touch_rx(row, T0)
    # 600 days: past the uint32 range of 10 ms ticks from the epoch (497 days).
    later = T0 + 600 * 86400.0
    other = insert(table, teredo(2), later)
    table.touch_rx(other, later)
    assert table.is_valid(other, later + 29.0)
    assert not table.is_valid(row, later)
    assert table.last_rx(other) == pytest.approx(later)
    assert table.may_send_bubble(row, later)
    assert table.expire(later + 1.0) == 1
    assert teredo(1) not in table
    much_later = later + 600 * 86400.0  # a second rebase
    table.record_bubble(other, much_later)
    assert table.last_tx(other) == pytest.approx(much_later)
    assert not table.may_send_bubble(other, much_later + 1.0)
    assert table.may_send_bubble(other, much_later + 2.0)
    assert table.bubble_count(other, much_later + 2.0) == 1


# --- queues and nonces --------------------------------------------------------------------------


def test_queue_per_peer_bound_counts_both_directions() -> None:
    table = new_table()
    row = insert(table, teredo(1), T0)
    assert table.enqueue(row, b"a" * 1000)
    assert table.enqueue(row, b"b" * 280, inbound=True)
    assert table.queued_bytes(row) == 1280
    assert not table.enqueue(row, b"c")  # 1281 > 1280 (Miredo's per-peer limit)
    assert not table.enqueue(row, b"")
    assert table.drain(row, inbound=True) == [b"b" * 280]
    assert table.enqueue(row, b"d" * 280)
    assert table.drain(row) == [b"a" * 1000, b"d" * 280]
    assert table.drain(row) == []
    assert table.queued_bytes(row) == 0
    assert table.stats().queue_drops == 2


def test_queue_overall_bound_counts_overhead() -> None:
    # Room for two 100-byte packets and a 99-byte one, each with its overhead.
    total = 3 * (100 + QUEUE_PACKET_OVERHEAD) - 1
    table = new_table(16, total_queue_bytes=total)
    rows = [insert(table, teredo(i), T0) for i in range(4)]
    assert [table.enqueue(r, b"p" * 100) for r in rows] == [True, True, False, False]
    assert table.enqueue(rows[2], b"p" * 99)
    assert table.stats().queued_bytes == 299
    table.remove(rows[0])  # the queue goes with the entry
    assert table.enqueue(rows[3], b"p" * 100)
    assert table.stats().queued_peers == 3


def test_eviction_frees_queue_and_nonce() -> None:
    table = new_table(2, total_queue_bytes=1000)
    row = insert(table, teredo(1), T0)
    assert table.enqueue(row, b"q" * 500)
    table.set_nonce(row, b"12345678")
    insert(table, teredo(2), T0 + 1)
    insert(table, teredo(3), T0 + 2)  # evicts teredo(1)
    stats = table.stats()
    assert (stats.queued_bytes, stats.nonces) == (0, 0)
    reused = table.lookup(teredo(3))
    assert reused == row
    assert table.nonce(row) is None
    assert table.drain(row) == []


def test_nonces_are_bounded_and_dropped_on_trust() -> None:
    table = new_table(8, max_nonces=2)
    rows = [insert(table, teredo(i), T0) for i in range(3)]
    for k, row in enumerate(rows):
        table.set_nonce(row, bytes([k]) * 8)
    assert table.nonce(rows[0]) is None  # oldest forgotten
    assert table.nonce(rows[1]) == b"\x01" * 8
    table.trust(rows[1], 0, 0, T0)
    assert table.nonce(rows[1]) is None
    table.clear_nonce(rows[2])
    assert table.stats().nonces == 0
    with pytest.raises(ValueError, match="nonce"):
        table.set_nonce(rows[2], b"short")


def test_correct_at_50000_peers() -> None:
    n = 50_000
    table = PeerTable(n, epoch=T0)
    addrs = [teredo(i) for i in range(n)]
    rows = [insert(table, addr, T0) for addr in addrs]
    assert len(set(rows)) == n
    assert all(table.lookup(a) == r for a, r in zip(addrs, rows, strict=True))
    for r in rows[::2]:
        table.remove(r)
    assert all((a in table) == (i % 2 == 1) for i, a in enumerate(addrs))
    assert table.insert(teredo(n + 1), T0) is not None
    assert len(table) == n // 2 + 1


# --- state machine against a dict model -------------------------------------------------------

CAP = 5
POOL = [teredo(i) for i in range(12)]
TICK = 100  # the model counts 10 ms ticks; the table receives seconds
VALID, VALID_LOCAL, NEW_AGE = 3000, 60000, 3000
IDLE, UNTRUSTED_IDLE = 60000, 3000
PER_PEER, TOTAL, MAX_NONCES = 300, 600, 3


@dataclass
class Peer:
    used: int
    rx: int
    tx: int
    trusted: bool
    local: bool = False
    ip: int = 0
    port: int = 0
    bubbles: list[int] = field(default_factory=list)
    queued: int = 0
    cost: int = 0
    out: list[bytes] = field(default_factory=list)
    inb: list[bytes] = field(default_factory=list)


class Mirror:
    """A `PeerWatch` that keeps what a kernel map would: trusted address -> mapping."""

    def __init__(self) -> None:
        self.peers: dict[bytes, tuple[int, int]] = {}
        self.local: set[bytes] = set()
        self.calls = 0

    def trusted(self, addr: bytes, ipv4: int, port: int, local: bool) -> None:
        was = (self.peers.get(addr), addr in self.local)
        assert was != ((ipv4, port), local), "an event that changes nothing"
        self.peers[addr] = (ipv4, port)
        if local:
            self.local.add(addr)
        else:
            self.local.discard(addr)
        self.calls += 1

    def untrusted(self, addr: bytes) -> None:
        del self.peers[addr]  # a KeyError: told of a peer that was not trusted
        self.local.discard(addr)
        self.calls += 1

    def cleared(self) -> None:
        self.peers.clear()
        self.local.clear()
        self.calls += 1


class PeerTableMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.mirror = Mirror()
        self.table = PeerTable(
            CAP,
            epoch=0.0,
            idle_timeout=IDLE / TICK,
            untrusted_timeout=UNTRUSTED_IDLE / TICK,
            queue_bytes_per_peer=PER_PEER,
            total_queue_bytes=TOTAL,
            max_nonces=MAX_NONCES,
            watch=self.mirror,
        )
        self.now = 0
        self.peers: dict[bytes, Peer] = {}
        self.lru: tuple[OrderedDict[bytes, None], OrderedDict[bytes, None]] = (
            OrderedDict(),
            OrderedDict(),
        )  # untrusted, trusted; last = most recent
        self.nonces: OrderedDict[bytes, bytes] = OrderedDict()

    # model helpers

    def t(self) -> float:
        return self.now / TICK

    def valid(self, p: Peer) -> bool:
        return self.now - p.rx < (VALID_LOCAL if p.local else VALID)

    def drop(self, addr: bytes) -> None:
        p = self.peers.pop(addr)
        del self.lru[p.trusted][addr]
        self.nonces.pop(addr, None)

    def touch(self, addr: bytes) -> None:
        p = self.peers[addr]
        if self.now - p.used >= 100:  # recency is kept to 1 s
            p.used = self.now
            self.lru[p.trusted].move_to_end(addr)

    def row(self, addr: bytes) -> int:
        row = self.table.lookup(addr)
        assert row is not None
        return row

    def total_cost(self) -> int:
        return sum(p.cost for p in self.peers.values())

    # rules

    @rule(dt=st.sampled_from([0, 1, 99, 199, 200, 201, 2999, 3000, 29999, 30000, 59999, 60000]))
    def advance(self, dt: int) -> None:
        self.now += dt

    @rule(addr=st.sampled_from(POOL), mapped=st.booleans(), bubble=st.booleans())
    def insert(self, addr: bytes, mapped: bool, bubble: bool = False) -> None:
        mapping = (7, 7) if mapped else None
        if addr in self.peers:
            with pytest.raises(ValueError, match="already"):
                self.table.insert(addr, self.t(), mapping=mapping, bubble=bubble)
            return
        expect_refused = False
        if len(self.peers) == CAP:
            if self.lru[0]:
                self.drop(next(iter(self.lru[0])))
            else:
                oldest = next(iter(self.lru[1]))
                if self.valid(self.peers[oldest]):
                    expect_refused = True
                else:
                    self.drop(oldest)
        row = self.table.insert(addr, self.t(), mapping=mapping, bubble=bubble)
        assert (row is None) == expect_refused
        if row is None:
            return
        age = self.now - NEW_AGE
        ip, port = mapping or (0, 0)
        peer = Peer(used=self.now, rx=max(age, -360000), tx=age, trusted=False, ip=ip, port=port)
        if bubble:
            peer.tx = self.now
            peer.bubbles.append(self.now)
        self.peers[addr] = peer
        self.lru[0][addr] = None

    @rule(addr=st.sampled_from(POOL), moved=st.booleans())
    def establish(self, addr: bytes, moved: bool) -> None:
        """A peer answers: insert (if absent), then trust; fills the table with valid trusted
        peers, the state in which newcomers are refused."""
        if addr not in self.peers:
            self.insert(addr, mapped=False)
        p = self.peers.get(addr)
        if p is not None:
            self.trust(addr, p.ip, p.port ^ moved)

    @rule(addr=st.sampled_from(POOL))
    def remove(self, addr: bytes) -> None:
        if addr in self.peers:
            self.table.remove(self.row(addr))
            self.drop(addr)

    @rule(addr=st.sampled_from(POOL))
    def touch_rx(self, addr: bytes) -> None:
        if addr in self.peers:
            self.table.touch_rx(self.row(addr), self.t())
            p = self.peers[addr]
            p.rx = self.now
            p.bubbles.clear()
            self.touch(addr)

    @rule(addr=st.sampled_from(POOL))
    def touch_tx(self, addr: bytes) -> None:
        if addr in self.peers:
            self.table.touch_tx(self.row(addr), self.t())
            self.peers[addr].tx = self.now
            self.touch(addr)

    @rule(addr=st.sampled_from(POOL))
    def bubble(self, addr: bytes) -> None:
        if addr not in self.peers:
            return
        row = self.row(addr)
        p = self.peers[addr]
        # Section 5.2.6, read literally: the last transmission >= 2 s ago and fewer than 4
        # bubbles in the last 300 s since the last direct reception.
        recent = [b for b in p.bubbles if self.now - b < 30000]
        allowed = self.now - p.tx >= 200 and len(recent) < 4
        assert self.table.may_send_bubble(row, self.t()) == allowed
        if allowed:
            self.table.record_bubble(row, self.t())
            p.tx = self.now
            p.bubbles.append(self.now)
            self.touch(addr)

    @rule(addr=st.sampled_from(POOL))
    def send_row(self, addr: bytes) -> None:
        p = self.peers.get(addr)
        ok = p is not None and p.trusted and self.valid(p)
        row = self.table.send_row(addr, self.t())
        assert (row is not None) == ok
        if p is not None and ok:
            assert row == self.row(addr)
            p.tx = self.now
            self.touch(addr)

    @rule(addr=st.sampled_from(POOL), other=st.booleans())
    def receive_row(self, addr: bytes, other: bool) -> None:
        p = self.peers.get(addr)
        ip, port = (p.ip, p.port) if p is not None else (0, 0)
        if other:
            port ^= 1
        ok = p is not None and p.trusted and not other
        row = self.table.receive_row(addr, ip, port, self.t())
        assert (row is not None) == ok
        if p is not None and ok:
            p.rx = self.now
            p.bubbles.clear()
            self.touch(addr)

    @rule(addr=st.sampled_from(POOL), ip=st.sampled_from([0, 7]), port=st.sampled_from([0, 7]))
    def trust(self, addr: bytes, ip: int, port: int) -> None:
        if addr not in self.peers:
            return
        sent = self.table.trust(self.row(addr), ip, port, self.t())
        p = self.peers[addr]
        if p.trusted:
            self.touch(addr)
        else:
            del self.lru[0][addr]
            self.lru[1][addr] = None
            p.trusted = True
            p.used = self.now
        p.ip, p.port = ip, port
        p.rx = self.now
        p.bubbles.clear()
        self.nonces.pop(addr, None)
        assert sent == p.out
        if p.out:
            p.tx = self.now
            p.queued -= sum(len(x) for x in p.out)
            p.cost -= sum(len(x) + QUEUE_PACKET_OVERHEAD for x in p.out)
            p.out = []

    @rule(addr=st.sampled_from(POOL))
    def untrust(self, addr: bytes) -> None:
        if addr not in self.peers:
            return
        self.table.untrust(self.row(addr))
        p = self.peers[addr]
        if p.trusted:
            del self.lru[1][addr]
            self.lru[0][addr] = None
            p.trusted = False

    @rule()
    def clear(self) -> None:
        self.table.clear()
        self.peers.clear()
        self.lru[0].clear()
        self.lru[1].clear()
        self.nonces.clear()

    @rule(addr=st.sampled_from(POOL), local=st.booleans())
    def set_local(self, addr: bytes, local: bool) -> None:
        if addr in self.peers:
            self.table.set_local(self.row(addr), local)
            self.peers[addr].local = local

    @rule(addr=st.sampled_from(POOL), ip=st.integers(0, 0xFFFFFFFF), port=st.integers(0, 65535))
    def set_mapping(self, addr: bytes, ip: int, port: int) -> None:
        if addr in self.peers:
            self.table.set_mapping(self.row(addr), ip, port)
            self.peers[addr].ip, self.peers[addr].port = ip, port

    @rule(
        addr=st.sampled_from(POOL),
        sizes=st.lists(st.integers(0, 200), min_size=1, max_size=4),
        inbound=st.booleans(),
    )
    def enqueue(self, addr: bytes, sizes: list[int], inbound: bool) -> None:
        for size in sizes:
            self.enqueue_one(addr, size, inbound)

    def enqueue_one(self, addr: bytes, size: int, inbound: bool) -> None:
        if addr not in self.peers:
            return
        p = self.peers[addr]
        packet = bytes([size & 0xFF]) * size
        cost = size + QUEUE_PACKET_OVERHEAD
        ok = size > 0 and p.queued + size <= PER_PEER and self.total_cost() + cost <= TOTAL
        assert self.table.enqueue(self.row(addr), packet, inbound=inbound) == ok
        if ok:
            p.queued += size
            p.cost += cost
            (p.inb if inbound else p.out).append(packet)

    @rule(addr=st.sampled_from(POOL), inbound=st.booleans())
    def drain(self, addr: bytes, inbound: bool) -> None:
        if addr not in self.peers:
            return
        p = self.peers[addr]
        expected = p.inb if inbound else p.out
        assert self.table.drain(self.row(addr), inbound=inbound) == expected
        p.queued -= sum(len(x) for x in expected)
        p.cost -= sum(len(x) + QUEUE_PACKET_OVERHEAD for x in expected)
        if inbound:
            p.inb = []
        else:
            p.out = []

    @rule(addr=st.sampled_from(POOL), nonce=st.binary(min_size=8, max_size=8))
    def set_nonce(self, addr: bytes, nonce: bytes) -> None:
        if addr not in self.peers:
            return
        self.table.set_nonce(self.row(addr), nonce)
        self.nonces.pop(addr, None)
        while len(self.nonces) >= MAX_NONCES:
            self.nonces.popitem(last=False)
        self.nonces[addr] = nonce

    @precondition(lambda self: self.peers)
    @rule(budget=st.integers(0, CAP))
    def expire(self, budget: int) -> None:
        removed = 0
        for lst, limit in ((0, UNTRUSTED_IDLE), (1, IDLE)):
            while removed < budget and self.lru[lst]:
                oldest = next(iter(self.lru[lst]))
                if self.now - self.peers[oldest].used < limit:
                    break
                self.drop(oldest)
                removed += 1
        assert self.table.expire(self.t(), budget) == removed

    # comparison

    @invariant()
    def same_contents(self) -> None:
        table = self.table
        assert len(table) == len(self.peers)
        for addr in POOL:
            assert (table.lookup(addr) is not None) == (addr in self.peers)
        for addr, p in self.peers.items():
            row = self.row(addr)
            assert table.is_trusted(row) == p.trusted
            assert table.is_local(row) == p.local
            assert table.mapping(row) == (p.ip, p.port)
            assert round(table.last_rx(row) * TICK) == max(p.rx, -360000)
            assert round(table.last_tx(row) * TICK) == max(p.tx, -360000)
            assert table.is_valid(row, self.t()) == self.valid(p)
            recent = sum(1 for b in p.bubbles if self.now - b < 30000)
            assert table.bubble_count(row, self.t()) == recent
            assert table.queued_bytes(row) == p.queued
            assert table.nonce(row) == self.nonces.get(addr)
        # The trusted list in order; the untrusted one is checked by eviction and expiry (which
        # take its least recently used end) and here by its end's last use.
        trusted = [(a, self.peers[a].ip, self.peers[a].port) for a in reversed(self.lru[1])]
        assert table.trusted_peers() == trusted
        ends = [
            self.peers[next(iter(lru))].used + limit
            for lru, limit in zip(self.lru, (UNTRUSTED_IDLE, IDLE), strict=True)
            if lru
        ]
        expiry = table.next_expiry()
        assert (expiry is None) == (not ends)
        if expiry is not None:
            assert round(expiry * TICK) == min(ends)
        # The watch was told every change: its copy is the trusted set with the mappings.
        assert self.mirror.peers == {a: (ip, port) for a, ip, port in trusted}
        assert self.mirror.local == {a for a, _, _ in trusted if self.peers[a].local}
        stats = table.stats()
        assert stats.trusted == len(self.lru[1])
        assert stats.queued_bytes == sum(p.queued for p in self.peers.values())


PeerTableMachine.TestCase.settings = settings(
    max_examples=150, stateful_step_count=60, deadline=None
)
test_peer_table_matches_model = PeerTableMachine.TestCase


# --- growth (issue 8: memory grows with the peers) ----------------------------------------------


def test_columns_start_small_and_grow_up_to_the_capacity() -> None:
    import teredo.core.peerrows as peers_module

    table = new_table(1_048_576)
    idle = table.nbytes()
    assert table.stats().allocated == peers_module.INITIAL_ROWS
    assert idle < 100 * 1024  # not 70 MB: nothing is allocated for peers not seen yet
    for i in range(5000):
        row = insert(table, teredo(i), T0, trusted=i % 2 == 0)
        table.set_mapping(row, i, i & 0xFFFF)
    allocated = table.stats().allocated
    assert 5000 <= allocated <= 5000 + max(5000 // 8, peers_module.INITIAL_ROWS)
    assert len(table) == 5000
    for i in range(5000):
        found = table.lookup(teredo(i))
        assert found is not None
        assert table.mapping(found) == (i, i & 0xFFFF)
        assert table.is_trusted(found) == (i % 2 == 0)
    # 60 bytes a row of columns, and an index of 4-byte slots at a load of 1/8 to 1/4 (small).
    assert table.nbytes() <= allocated * 60 + 4 * 8 * allocated


def test_growth_stops_at_the_capacity_then_eviction_as_before(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("teredo.core.peerrows.INITIAL_ROWS", 2)
    table = new_table(6)
    trusted = [insert(table, teredo(i), T0, trusted=True) for i in range(3)]
    for row in trusted:
        table.touch_rx(row, T0)
    assert table.stats().allocated == 4  # 2, then 2 more (at least INITIAL_ROWS more a time)
    pending = [insert(table, teredo(10 + i), T0 + 1) for i in range(3)]
    assert table.stats().allocated == 6
    assert table.enqueue(pending[0], b"held")
    # Full at capacity: a newcomer evicts the least recently used untrusted peer only.
    insert(table, teredo(20), T0 + 2)
    assert teredo(10) not in table
    assert table.stats().allocated == 6
    assert all(teredo(i) in table for i in range(3))
    assert table.stats().queued_bytes == 0  # the evicted peer's queue went with it


def test_a_grown_table_agrees_with_a_dict_under_churn(monkeypatch: pytest.MonkeyPatch) -> None:
    import random

    monkeypatch.setattr("teredo.core.peerrows.INITIAL_ROWS", 1)
    rng = random.Random(14)  # noqa: S311 (a reproducible test, not a secret)
    table = new_table(500, idle_timeout=30.0)
    model: dict[bytes, int] = {}
    for step in range(3000):
        addr = teredo(rng.randrange(400))
        if addr in model and rng.random() < 0.4:
            row = table.lookup(addr)
            assert row is not None
            table.remove(row)
            del model[addr]
        elif addr not in model:
            row = table.insert(addr, T0 + step * 0.001)
            if row is not None:
                table.set_mapping(row, step, 0)
                model[addr] = step
        assert len(table) == len(model)
    for addr, value in model.items():
        row = table.lookup(addr)
        assert row is not None
        assert table.mapping(row) == (value, 0)
    assert len(model) <= table.stats().allocated <= 500
    table.clear()
    assert table.stats().allocated == 1


def test_trusted_used_since_lists_the_recent_uses_first() -> None:
    """The mirror's re-insert walk (io/kmirror.py): trusted peers used after a time, newest
    first, bounded; untrusted peers and older uses are not listed."""
    table = PeerTable(16, epoch=0.0)
    rows = []
    for i in range(4):
        row = table.insert(bytes(15) + bytes((i,)), 1.0)
        assert row is not None
        table.trust(row, 0x0A000001, 4000 + i, 1.0)
        rows.append(row)
    untrusted = table.insert(bytes(15) + b"\x09", 1.0)
    assert untrusted is not None
    table.touch_tx(rows[1], 3.0)
    table.touch_rx(rows[3], 4.0)
    table.touch_tx(untrusted, 4.5)
    assert table.trusted_used_since(2.0, 10) == [rows[3], rows[1]]
    assert table.trusted_used_since(2.0, 1) == [rows[3]]
    assert table.trusted_used_since(4.0, 10) == []
    assert table.trusted_used_since(0.0, 10)[:2] == [rows[3], rows[1]]
    assert len(table.trusted_used_since(0.0, 10)) == 4


def tcp_segment(
    src: bytes,
    dst: bytes,
    seq: int,
    *,
    flags: int = 0x02,
    tsval: int = 1,
    data: bytes = b"",
    sack: bytes = b"",
) -> bytes:
    """An IPv6 packet with a TCP segment: a header with a timestamp option (and `sack`, a
    multiple of 4 bytes, after it), then `data`."""
    options = bytes((1, 1, 8, 10)) + struct.pack(">II", tsval, 0) + sack
    offset = (20 + len(options)) // 4
    tcp = struct.pack(">HHIIBBHHH", 40000, 5201, seq, 0, offset << 4, flags, 64240, 0, 0)
    body = tcp + options + data
    return bytes((0x60, 0, 0, 0)) + struct.pack(">HBB", len(body), 6, 64) + src + dst + body


def test_a_retransmitted_tcp_segment_replaces_its_queued_copy() -> None:
    # Issue 12, 30 % loss: a SYN repeated every second during a 7 s ping test left 7 copies
    # queued; flushed oldest first, the native host answered the oldest, and the echoed
    # timestamp (RFC 7323) gave the sender a 7 s round trip, so a 21 s retransmission timeout.
    table = new_table()
    peer, us = teredo(1), teredo(2)
    row = insert(table, peer, T0)
    syns = [tcp_segment(us, peer, 1000, tsval=t) for t in range(7)]
    for syn in syns:
        assert table.enqueue(row, syn)
    data = tcp_segment(us, peer, 1001, flags=0x10, data=b"x" * 100)
    assert table.enqueue(row, data)
    assert table.enqueue(row, tcp_segment(us, peer, 1001, flags=0x10, tsval=9, data=b"x" * 100))
    other_port = bytearray(syns[0])
    other_port[40:42] = (40001).to_bytes(2, "big")  # another connection: its own segment
    assert table.enqueue(row, bytes(other_port))
    stats = table.stats()
    assert stats.queue_superseded == 7
    assert stats.queue_drops == 0
    assert stats.queued_bytes == len(syns[-1]) + len(data) + len(other_port)
    assert table.trust(row, 1, 1, T0 + 7.0) == [
        syns[-1],  # the newest copy, where the first one stood
        tcp_segment(us, peer, 1001, flags=0x10, tsval=9, data=b"x" * 100),
        bytes(other_port),
    ]
    assert table.stats().queued_bytes == 0


def test_the_retransmission_key_keeps_distinct_segments_apart() -> None:
    us, peer = teredo(2), teredo(1)
    syn = tcp_segment(us, peer, 1000)
    assert tcp_retransmit_key(syn) == tcp_retransmit_key(tcp_segment(us, peer, 1000, tsval=99))
    assert tcp_retransmit_key(syn) != tcp_retransmit_key(tcp_segment(us, peer, 1001))
    assert tcp_retransmit_key(syn) != tcp_retransmit_key(tcp_segment(us, peer, 1000, flags=0x12))
    assert tcp_retransmit_key(syn) != tcp_retransmit_key(tcp_segment(us, peer, 1000, data=b"a"))
    assert tcp_retransmit_key(b"\x06" * 6 + syn, 6) == b"\x06" * 6 + (
        tcp_retransmit_key(syn) or b""
    )
    udp = bytearray(syn)
    udp[6] = 17
    assert tcp_retransmit_key(bytes(udp)) is None
    assert tcp_retransmit_key(syn[:59]) is None  # cut inside the TCP header
    bad_offset = bytearray(syn)
    bad_offset[52] = 15 << 4  # a 60-byte header in a 32-byte segment
    assert tcp_retransmit_key(bytes(bad_offset)) is None


def test_a_replacement_that_would_pass_the_bound_is_dropped() -> None:
    table = new_table(queue_bytes_per_peer=190)
    us, peer = teredo(2), teredo(1)
    row = insert(table, peer, T0)
    first = tcp_segment(us, peer, 5, flags=0x10, data=b"a" * 100)
    assert len(first) == 172
    assert table.enqueue(row, first)
    sack = bytes((1, 1, 5, 26)) + bytes(24)  # its retransmission carries 3 SACK blocks
    longer = tcp_segment(us, peer, 5, flags=0x10, data=b"a" * 100, sack=sack)
    assert tcp_retransmit_key(longer) == tcp_retransmit_key(first)
    assert not table.enqueue(row, longer)  # 200 bytes would pass the 190
    assert table.stats().queue_drops == 1
    shorter = tcp_segment(
        us, peer, 5, flags=0x10, tsval=2, data=b"a" * 100, sack=bytes((1, 1, 5, 10)) + bytes(8)
    )
    assert table.enqueue(row, shorter)  # 184 bytes fit
    assert table.stats().queued_bytes == 184
    assert table.trust(row, 1, 1, T0 + 1.0) == [shorter]
