"""RFC 6081 Symmetric NAT Support between two of our clients (issue 9): one behind a symmetric
NAT with random ports, the other behind a full-cone or an address-restricted NAT, each pair
tried with either side starting (a fresh pair per direction, so that no state of an earlier
exchange helps). The cone side believes the symmetric side's new port only within the bounds
of core/symmetric.py; a forged bubble from the symmetric NAT's IPv4 but another port, or from
another IPv4, never moves the trusted peer (counted as unknown_bubble, pings still answered).
Miredo's server and relay, as in docs/client.md's table.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest

from teredo.core.ipv6 import build_bubble
from teredo.lab.nat import NatKind
from teredo.lab.roles import Impl
from teredo.lab.teredoaddr import TeredoInfo
from teredo.lab.topology import Lab

from .conftest import prefix_for, received, tear_down

pytestmark = pytest.mark.system

QUALIFY_TIMEOUT = 40.0
CONE, RESTRICTED, SYM = NatKind.FULL_CONE, NatKind.ADDRESS_RESTRICTED, NatKind.SYMMETRIC
# (cone-side kind, who starts); site 2k+1 the cone side, 2k+2 the symmetric side, k = index.
PAIRS = [(CONE, "cone"), (CONE, "symmetric"), (RESTRICTED, "cone"), (RESTRICTED, "symmetric")]
ATTACKER = len(PAIRS) * 2 + 1  # a site without NAT: another IPv4

# Forged bubbles from a chosen source socket, bounded: count datagrams 0.05 s apart.
FORGE = """
import socket, sys, time
bind, port, to, to_port, hexdata, count = sys.argv[1:7]
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sock.bind((bind, int(port)))
for _ in range(int(count)):
    sock.sendto(bytes.fromhex(hexdata), (to, int(to_port)))
    time.sleep(0.05)
"""


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    sites: list[NatKind] = []
    for kind, _who in PAIRS:
        sites += [kind, SYM]
    lab = Lab(
        prefix_for("p"),
        [*sites, NatKind.NONE],
        server_impl=Impl.MIREDO,
        relay_impl=Impl.MIREDO,
        client_impl=Impl.TEREDO,
    )
    try:
        lab.up()
        yield lab
    finally:
        tear_down(lab)


def _infos(lab: Lab, *indices: int) -> list[TeredoInfo]:
    return [lab.wait_qualified(i, timeout=QUALIFY_TIMEOUT) for i in indices]


def _client_status(lab: Lab, index: int) -> dict[str, Any]:
    docs = lab.daemon_status(lab.site(index).client_host) or []
    assert docs, f"site {index}: no status"
    status: dict[str, Any] = docs[0]["status"]
    return status


@pytest.mark.parametrize(("kind", "starts"), PAIRS, ids=[f"{k.value}-{w}" for k, w in PAIRS])
def test_direct_between_symmetric_and_cone(lab: Lab, kind: NatKind, starts: str) -> None:
    k = PAIRS.index((kind, starts))
    cone_i, sym_i = 2 * k + 1, 2 * k + 2
    cone, sym = _infos(lab, cone_i, sym_i)
    assert _client_status(lab, sym_i)["nat"] == "symmetric"
    first, dest = (cone_i, sym) if starts == "cone" else (sym_i, cone)
    out = lab.ping(lab.site(first).client_host, str(dest.address), count=5, deadline=20)
    assert received(out.stdout) >= 2, out.stdout
    back_i, back_dest = (sym_i, cone) if starts == "cone" else (cone_i, sym)
    back = lab.ping(lab.site(back_i).client_host, str(back_dest.address), count=3, deadline=10)
    assert received(back.stdout) >= 2, back.stdout
    # The cone side learnt the symmetric side's real port through the RFC 6081 rule.
    assert _client_status(lab, cone_i)["symmetric_ports_adopted"] >= 1


def test_forged_bubbles_never_move_a_trusted_peer(lab: Lab) -> None:
    cone_i, sym_i = 1, 2  # the first pair: trusted each other in the test above
    cone, sym = _infos(lab, cone_i, sym_i)
    host = lab.site(cone_i).client_host
    warm = lab.ping(host, str(sym.address), count=2, deadline=10)
    assert received(warm.stdout) >= 1, warm.stdout
    before = _client_status(lab, cone_i)
    bubble = build_bubble(sym.address.packed, cone.address.packed).hex()
    to = (str(cone.mapped_ip), str(cone.mapped_port))
    sym_site = lab.site(sym_i)
    assert sym_site.nat_host is not None
    # The right IPv4 (the symmetric NAT's own address), a port it never used toward us...
    lab.exec(
        sym_site.nat_host,
        [sys.executable, "-c", FORGE, sym_site.public_ip, "45678", *to, bubble, "10"],
        timeout=20,
    )
    # ... and another IPv4 claiming the same peer.
    attacker = lab.site(ATTACKER)
    lab.exec(
        attacker.client_host,
        [sys.executable, "-c", FORGE, attacker.public_ip, "45679", *to, bubble, "10"],
        timeout=20,
    )
    time.sleep(0.5)
    after = _client_status(lab, cone_i)
    unknown = after["drops"].get("unknown_bubble", 0) - before["drops"].get("unknown_bubble", 0)
    assert unknown == 20, (before["drops"], after["drops"])
    assert after["symmetric_ports_adopted"] == before["symmetric_ports_adopted"]
    # The peer still answers where it really is.
    out = lab.ping(host, str(sym.address), count=3, deadline=10)
    assert received(out.stdout) >= 2, out.stdout
