"""bench.path's report: the spread of the rounds beside the medians."""

from __future__ import annotations

from bench.path import spread_rows


def test_spread_lists_each_round_lowest_first_and_skips_missing() -> None:
    lines = spread_rows(
        {
            "miredo": [{"tcp_up_mbps": 700.4, "cpu_up_us_per_pkt": 12.14}, {"tcp_up_mbps": 445.2}],
            "teredo": [{"tcp_up_mbps": 2639.0}, {"tcp_up_mbps": None}],
        }
    )
    assert lines == [
        "   cpu_up_us_per_pkt: miredo 12.1",
        "   tcp_up_mbps: miredo 445 / 700; teredo 2,639",
    ]
