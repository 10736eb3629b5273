"""Rate limits: exact token accounting under a fake clock, and fixed memory under a flood."""

from __future__ import annotations

import pytest

from teredo.core.ratelimit import BucketTable, TokenBucket


def test_bucket_allows_burst_then_refills_at_rate() -> None:
    bucket = TokenBucket(rate=2.0, burst=3)
    assert [bucket.allow(10.0) for _ in range(4)] == [True, True, True, False]
    assert bucket.allow(10.4) is False  # 0.8 token so far
    assert bucket.allow(10.6) is True  # 1.2 tokens, one spent
    assert bucket.allow(100.0) is True
    assert [bucket.allow(100.0) for _ in range(3)] == [True, True, False]


def test_bucket_ignores_time_going_backwards() -> None:
    bucket = TokenBucket(rate=1.0, burst=1)
    assert bucket.allow(5.0) is True
    assert bucket.allow(4.0) is False
    assert bucket.allow(5.5) is False
    assert bucket.allow(6.6) is True


def test_table_limits_each_key_separately() -> None:
    table = BucketTable(rate=1.0, burst=2, slots=1024)
    flooder = ("198.51.100.66", 0)
    answered = sum(table.allow(flooder, 0.0) for _ in range(1000))
    assert answered == 2
    # Another source is not held back by the flood (unless it shares the slot, which 1024
    # slots make unlikely; the assertion below tolerates no collision for this pair).
    other = ("203.0.113.5", 0)
    if hash(other) & 1023 != hash(flooder) & 1023:
        assert table.allow(other, 0.0) is True


def test_table_memory_is_fixed() -> None:
    table = BucketTable(rate=1.0, burst=1, slots=64)
    for port in range(10_000):
        table.allow(("198.51.100.1", port), float(port))
    assert len(table._tokens) == 64
    assert len(table._stamps) == 64


@pytest.mark.parametrize(("rate", "burst", "slots"), [(0, 1, 8), (1, 0, 8), (1, 1, 6), (1, 1, 0)])
def test_table_rejects_bad_parameters(rate: float, burst: float, slots: int) -> None:
    with pytest.raises(ValueError, match="must be"):
        BucketTable(rate=rate, burst=burst, slots=slots)
