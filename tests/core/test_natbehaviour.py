"""core/natbehaviour.py: the NAT's behaviour from the two server answers and the local port."""

from __future__ import annotations

import pytest

from teredo.core.natbehaviour import (
    SEQUENTIAL_MAX_STEP,
    NatBehaviour,
    PortAllocation,
    classify,
)

PUBLIC = 0xCB007150  # 203.0.113.80
OTHER = 0xCB007151
LOCAL = (0xC0A80102, 40000)  # 192.168.1.2:40000


def test_no_nat() -> None:
    got = classify(LOCAL, LOCAL, LOCAL)
    assert got == NatBehaviour(symmetric=False, ports=PortAllocation.NONE)
    assert got.describe() == "no NAT"


def test_cone_or_restricted_keeps_or_changes_the_port() -> None:
    kept = classify((PUBLIC, 40000), (PUBLIC, 40000), LOCAL)
    assert kept.ports is PortAllocation.PRESERVED
    assert not kept.symmetric
    assert kept.describe() == "cone or restricted, port-preserving"
    moved = classify((PUBLIC, 1234), (PUBLIC, 1234), LOCAL)
    assert moved.ports is PortAllocation.SAME
    assert moved.describe() == "cone or restricted"
    assert classify((PUBLIC, 1234), (PUBLIC, 1234), None).ports is PortAllocation.UNKNOWN


@pytest.mark.parametrize("step", [1, 2, -1, SEQUENTIAL_MAX_STEP, -SEQUENTIAL_MAX_STEP])
def test_sequential(step: int) -> None:
    got = classify((PUBLIC, 30000), (PUBLIC, 30000 + step), LOCAL)
    assert got.symmetric
    assert got.ports is PortAllocation.SEQUENTIAL
    assert got.step == step
    assert got.describe() == f"symmetric, sequential ports {step:+d}"


@pytest.mark.parametrize("second", [30000 + SEQUENTIAL_MAX_STEP + 1, 1025, 65535])
def test_random(second: int) -> None:
    got = classify((PUBLIC, 30000), (PUBLIC, second), LOCAL)
    assert got.symmetric
    assert got.ports is PortAllocation.RANDOM
    assert got.describe() == "symmetric, random ports"


def test_another_ipv4_per_destination() -> None:
    kept = classify((PUBLIC, 40000), (OTHER, 40000), LOCAL)
    assert kept.symmetric
    assert kept.ports is PortAllocation.PRESERVED
    assert not kept.same_ipv4
    assert kept.describe() == "symmetric, port-preserving, a new IPv4 per destination"
    other = classify((PUBLIC, 30000), (OTHER, 30001), LOCAL)
    assert other.ports is PortAllocation.RANDOM
    assert other.step is None


def test_secondary_silent() -> None:
    assert classify((PUBLIC, 40000), None, LOCAL).ports is PortAllocation.PRESERVED
    got = classify((PUBLIC, 1234), None, LOCAL)
    assert got.ports is PortAllocation.UNKNOWN
    assert not got.symmetric
    assert got.as_dict()["text"] == "cone or restricted"
