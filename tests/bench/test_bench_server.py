"""bench.bench_server's run order: with --baseline, every other round the tree before goes
first, so that neither tree always gets the later minute of a loaded machine."""

from __future__ import annotations

from bench.bench_server import _swapped


def test_each_baseline_run_moves_before_the_run_it_follows() -> None:
    runs = [
        ("miredo-server", ["m"]),
        ("teredo, kernel (XDP)", ["k"]),
        ("teredo, user, 1 worker", ["a"]),
        ("baseline, user, 1 worker", ["b"]),
        ("teredo, user, 2 workers", ["c"]),
        ("baseline, user, 2 workers", ["d"]),
        ("teredo, default limits", ["e"]),
    ]
    assert [name for name, _ in _swapped(runs)] == [
        "miredo-server",
        "teredo, kernel (XDP)",
        "baseline, user, 1 worker",
        "teredo, user, 1 worker",
        "baseline, user, 2 workers",
        "teredo, user, 2 workers",
        "teredo, default limits",
    ]
    assert _swapped(runs[:3]) == runs[:3], "nothing to swap without a baseline"
