"""io/krelay.ipv4_interface: where the relay's kernel path sends its encapsulated datagrams
from. A relay bound to an anycast IPv4 held on lo (`--anycast-ipv4`, docs/scale.md) sends them
through the default route's interface: through lo they went nowhere (the lab's anycast relays
answered no native packet on the kernel path).

Needs root and a network namespace of its own (deleted afterwards)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator

import pytest

ANYCAST = "198.51.100.40"
ANYIP = "198.51.100.41"  # held as a local route, not an address (a relay with FRR)
UNICAST = "198.51.100.21"
PROBE = (
    "import sys; from teredo.io.krelay import ipv4_interface; print(*ipv4_interface(sys.argv[1]))"
)


@pytest.fixture
def netns() -> Iterator[str]:
    if os.geteuid() != 0:
        pytest.fail("needs root (network namespaces)", pytrace=False)
    name = f"tdt{os.getpid() % 10000}kr-io"
    subprocess.run(["ip", "netns", "del", name], capture_output=True, check=False)
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        for cmd in (
            "link set lo up",
            f"addr add {ANYCAST}/32 dev lo",
            f"route add local {ANYIP}/32 dev lo table local",
            "link add e0 type veth peer name e1",
            "link set e0 up",
            "link set e1 up",
            f"addr add {UNICAST}/24 dev e0",
            "route add default via 198.51.100.1 dev e0",
        ):
            subprocess.run(["ip", "-n", name, *cmd.split()], check=True)
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], capture_output=True, check=False)


def probe(ns: str, address: str) -> tuple[int, int]:
    out = subprocess.run(
        ["ip", "netns", "exec", ns, sys.executable, "-c", PROBE, address],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout.split()
    return int(out[0]), int(out[1])


def index(ns: str, ifname: str) -> int:
    out = subprocess.run(
        ["ip", "-n", ns, "-o", "link", "show", ifname], capture_output=True, text=True, check=True
    ).stdout
    return int(out.split(":", 1)[0])


def as_int(dotted: str) -> int:
    a, b, c, d = (int(x) for x in dotted.split("."))
    return a << 24 | b << 16 | c << 8 | d


def test_an_address_on_lo_goes_out_through_the_default_routes_interface(netns: str) -> None:
    assert probe(netns, ANYCAST) == (index(netns, "e0"), as_int(ANYCAST))


def test_an_address_on_an_interface_goes_out_through_it(netns: str) -> None:
    assert probe(netns, UNICAST) == (index(netns, "e0"), as_int(UNICAST))
    assert probe(netns, "0.0.0.0") == (index(netns, "e0"), as_int(UNICAST))


def test_an_address_held_as_a_local_route_goes_out_through_the_default_routes_interface(
    netns: str,
) -> None:
    assert probe(netns, ANYIP) == (index(netns, "e0"), as_int(ANYIP))
    # Still refused: an address the host does not hold at all.
    proc = subprocess.run(
        ["ip", "netns", "exec", netns, sys.executable, "-c", PROBE, "198.51.100.42"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode != 0
    assert "no interface holds 198.51.100.42" in proc.stderr
