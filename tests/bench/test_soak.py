"""bench/soak.py's arithmetic: growth from the first sample after the warm-up to the last, and
the loss a lossy wan explains (the soak itself runs in the lab, not in CI)."""

from __future__ import annotations

import pytest
from bench.soak import Sample, expected_loss, growth


def test_growth_counts_from_the_first_sample_after_the_warm_up() -> None:
    samples = [
        Sample(0.0, {"relay": 100}, {"relay": 9}),  # start-up, before the warm-up ends
        Sample(60.0, {"relay": 200}, {"relay": 10}),
        Sample(120.0, {"relay": 260}, {"relay": 12}),
    ]
    got = growth(samples, warmup=30.0)["relay"]
    assert got["rss_kib_start"] == 200
    assert got["rss_kib_growth"] == 60
    assert got["fds_growth"] == 2


def test_a_daemon_gone_by_the_end_shows_as_zero() -> None:
    samples = [Sample(0.0, {"client1": 300}, {"client1": 20}), Sample(9.0, {}, {})]
    got = growth(samples, warmup=0.0)["client1"]
    assert got["rss_kib_end"] == 0
    assert got["fds_growth"] == -20


def test_a_round_trip_crosses_the_lossy_wan_twice() -> None:
    assert expected_loss(0) == 0.0
    assert expected_loss(10) == pytest.approx(0.19)
    assert expected_loss(30) == pytest.approx(0.51)
