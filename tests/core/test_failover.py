"""Server choice and failover among several servers (core/failover.py) under a fake clock."""

from __future__ import annotations

import pytest

from teredo.core.failover import Move, ServerFailover

T0 = 500.0


def test_starts_with_the_best_ranked_server_and_keeps_the_rest_as_last_resorts() -> None:
    failover = ServerFailover(3)
    assert failover.choose([2, 0]) == 2
    assert failover.ranking == [2, 0, 1]
    assert failover.preferred == failover.current == 2
    assert failover.next_check() is None


def test_moves_to_the_next_at_once_and_back_only_after_stable_checks() -> None:
    failover = ServerFailover(2, stable_checks=3, check_interval=20.0)
    failover.choose([0, 1])
    assert failover.failed(T0) == Move(1, now=True)
    failover.qualified()
    assert failover.next_check() == pytest.approx(T0 + 20.0)
    # Answered, answered, lost: the streak starts again.
    assert failover.checked(True, T0 + 20.0) is None
    assert failover.checked(True, T0 + 40.0) is None
    assert failover.checked(False, T0 + 60.0) is None
    assert failover.next_check() == pytest.approx(T0 + 80.0)
    assert failover.checked(True, T0 + 80.0) is None
    assert failover.checked(True, T0 + 100.0) is None
    assert failover.checked(True, T0 + 120.0) == Move(0, now=True)
    assert failover.current == 0
    assert failover.next_check() is None
    assert failover.moves == 2


def test_a_whole_round_of_failures_waits_for_the_back_off() -> None:
    failover = ServerFailover(3)
    failover.choose([1, 2, 0])
    assert failover.failed(T0) == Move(2, now=True)
    assert failover.failed(T0 + 12.0) == Move(0, now=True)
    # Every server failed in a row: the next attempt waits (machine back-off), no busy cycle.
    assert failover.failed(T0 + 24.0) == Move(1, now=False)
    assert failover.next_check() is None  # back on the preferred one
    failover.qualified()
    assert failover.failed(T0 + 100.0) == Move(2, now=True)


def test_a_single_server_stays_put() -> None:
    failover = ServerFailover(1)
    failover.choose([])
    assert failover.failed(T0) == Move(0, now=False)
    assert failover.checked(True, T0) is None


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="at least one"):
        ServerFailover(0)
    with pytest.raises(ValueError, match="stable_checks"):
        ServerFailover(2, stable_checks=0)
