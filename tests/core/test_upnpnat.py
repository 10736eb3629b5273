"""core/upnpnat.py: when a UPnP mapping makes the client reachable as behind a cone NAT."""

from __future__ import annotations

from teredo.core.natbehaviour import NatBehaviour, PortAllocation, classify
from teredo.core.upnpnat import upnp_verdict

NAT_IP = 0xCB00710B  # 203.0.113.11
LOCAL = (0xC0A80102, 40000)  # 192.168.1.2:40000


def test_port_keeping_nat_with_an_igd_is_cone() -> None:
    kept = classify((NAT_IP, 40000), (NAT_IP, 40000), LOCAL)
    verdict = upnp_verdict("203.0.113.11", ("203.0.113.11", 40000), kept)
    assert verdict.cone
    assert "cone" in verdict.text


def test_no_igd() -> None:
    kept = classify((NAT_IP, 40000), (NAT_IP, 40000), LOCAL)
    verdict = upnp_verdict(None, ("203.0.113.11", 40000), kept)
    assert not verdict.cone
    assert verdict.text.startswith("no UPnP IGD")


def test_random_port_nat_gains_nothing() -> None:
    random = classify((NAT_IP, 51234), (NAT_IP, 7781), LOCAL)
    assert random.ports is PortAllocation.RANDOM
    verdict = upnp_verdict("203.0.113.11", ("203.0.113.11", 51234), random)
    assert not verdict.cone
    assert "does not keep the local port" in verdict.text


def test_igd_behind_another_nat_gains_nothing() -> None:
    kept = NatBehaviour(symmetric=False, ports=PortAllocation.PRESERVED)
    verdict = upnp_verdict("100.64.0.7", ("203.0.113.11", 40000), kept)
    assert not verdict.cone
    assert "another NAT" in verdict.text


def test_nothing_to_compare_with() -> None:
    assert not upnp_verdict("203.0.113.11", None, None).cone
    assert not upnp_verdict("203.0.113.11", ("203.0.113.11", 40000), None).cone
