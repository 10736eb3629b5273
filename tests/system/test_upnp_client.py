"""Our client with `--upnp` behind the lab's UPnP-enabled symmetric NAT (issue 9, RFC 6081
UPnP-Enabled Symmetric NAT).

Site 1 is NatKind.SYMMETRIC_UPNP (a port-preserving symmetric NAT with Debian's miniupnpd);
our client there maps its UDP port on the NAT (io/upnp.py through miniupnpc) and, once the
server sees that mapping, is reachable as behind a cone NAT: `teredo status` says `cone`, a host
it never contacted gets a datagram through, native IPv6 works both ways, port-restricted peers
(sites 2 and 3, ours) are reached directly whoever starts, and so is a peer behind a
random-port symmetric NAT (site 4), which the same NAT without UPnP never admits (docs/client.md
table: symmetric -> symmetric-port-preserving "no"). After SIGTERM, miniupnpd (asked with
Debian's `upnpc -i -l` from inside the NAT) holds no mapping of the client any more.
Miredo's server and relay, then ours.
"""

from __future__ import annotations

import re
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest

from teredo.lab.nat import NatKind
from teredo.lab.roles import Impl, Role
from teredo.lab.topology import NATIVE_V6, Lab

from .conftest import prefix_for, received, tear_down

pytestmark = pytest.mark.system

QUALIFY_TIMEOUT = 40.0
UPNP, PEER_STARTS, UPNP_STARTS, SYMMETRIC = 1, 2, 3, 4
KINDS = [
    NatKind.SYMMETRIC_UPNP,
    NatKind.PORT_RESTRICTED,
    NatKind.PORT_RESTRICTED,
    NatKind.SYMMETRIC,
]
# Bounded: count datagrams 0.05 s apart from a chosen source socket.
SEND = """
import socket, sys, time
bind, port, to, to_port, count = sys.argv[1:6]
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sock.bind((bind, int(port)))
for _ in range(int(count)):
    sock.sendto(b"not teredo", (to, int(to_port)))
    time.sleep(0.05)
"""


@pytest.fixture(scope="module", params=[Impl.MIREDO, Impl.TEREDO], ids=["miredo", "teredo"])
def lab(request: pytest.FixtureRequest) -> Iterator[Lab]:
    infra: Impl = request.param
    lab = Lab(
        prefix_for("j" if infra is Impl.MIREDO else "2"),
        KINDS,
        server_impl=infra,
        relay_impl=infra,
        client_impl=[None, Impl.TEREDO, Impl.TEREDO, Impl.TEREDO],
    )
    try:
        lab.up()
        lab.start(Role.CLIENT, Impl.TEREDO, UPNP, extra=["--upnp"])
        yield lab
    finally:
        tear_down(lab)


def _status(lab: Lab, index: int) -> dict[str, Any]:
    docs = lab.daemon_status(lab.site(index).client_host) or []
    assert docs, f"site {index}: no status"
    status: dict[str, Any] = docs[0]["status"]
    return status


def _in_use(lab: Lab) -> dict[str, Any]:
    """The UPnP client's status once its mapping is in use (bounded wait)."""
    lab.wait_qualified(UPNP, timeout=QUALIFY_TIMEOUT)
    deadline = time.monotonic() + 20.0
    while True:
        st = _status(lab, UPNP)
        if st.get("upnp", {}).get("state") == "in use" or time.monotonic() > deadline:
            return st
        time.sleep(0.3)


def _igd_url(lab: Lab) -> str:
    """The root description of the NAT's miniupnpd (its log says the port it took)."""
    site = lab.site(UPNP)
    log = lab.state_dir / f"{site.nat_host}-miniupnpd.log"
    found = re.search(r"HTTP listening on port (\d+)", log.read_text(errors="replace"))
    assert found, f"no HTTP port in {log}"
    return f"http://{site.nat_inside_ip}:{found.group(1)}/rootDesc.xml"


def _mappings(lab: Lab) -> list[str]:
    """`upnpc -i -l` from inside the NAT: its port mapping lines (`N UDP ext->ip:port ...`).
    -i: upnpc 2.2.4 takes the lab's IGD for "not connected" (its reserved outside address).
    -u: the IGD's description URL, so no SSDP discovery (2 s each time); our client's own
    discovery is what the tests check."""
    argv = ["upnpc", "-i", "-u", _igd_url(lab), "-l"]
    out = lab.exec(lab.site(UPNP).client_host, argv, timeout=30, check=False)
    assert "desc:" in out.stdout or "IGD" in out.stdout, out.stdout + out.stderr
    lines = [line for line in out.stdout.splitlines() if re.match(r"\s*\d+\s+UDP\s", line)]
    assert lines or "GetGenericPortMappingEntry() returned" in out.stdout, out.stdout
    return lines


def test_qualifies_as_cone_with_the_mapping_in_use(lab: Lab) -> None:
    site = lab.site(UPNP)
    st = _in_use(lab)
    port = st["local_port"]
    assert st["upnp"]["state"] == "in use", st.get("upnp")
    assert st["upnp"]["mapping"] == f"{site.public_ip}:{port}"
    assert st["nat"] == "cone", st
    assert st["nat_qualified"] == "restricted"  # to RFC 4380 alone: port-preserving
    assert st["mapping"] == f"{site.public_ip}:{port}"
    listed = _mappings(lab)
    assert any(f"{port}->{site.client_ip}:{port}" in line for line in listed), listed
    shown = lab.exec(site.client_host, [sys.executable, "-m", "teredo", "status"], timeout=20)
    assert "reachable as behind a cone NAT" in shown.stdout, shown.stdout


def test_a_host_never_contacted_gets_through(lab: Lab) -> None:
    # The server host, from a port the client never talked to: the NAT without UPnP drops it
    # (tests/system/test_nat_kinds.py::test_symmetric_upnp); with the mapping it arrives and
    # the client counts it as a drop of its own.
    st = _in_use(lab)
    before = st["drops"].get("too_short", 0)
    public = lab.site(UPNP).public_ip
    argv = [sys.executable, "-c", SEND, "198.51.100.10", "45011", public, str(st["local_port"])]
    lab.exec("server", [*argv, "5"], timeout=20)
    time.sleep(0.5)
    after = _status(lab, UPNP)["drops"]
    assert after.get("too_short", 0) - before == 5, after  # b"not teredo": 10 bytes


def test_native_both_ways(lab: Lab) -> None:
    _in_use(lab)
    info = lab.wait_qualified(UPNP, timeout=QUALIFY_TIMEOUT)
    out = lab.ping(lab.site(UPNP).client_host, NATIVE_V6, count=4, deadline=20)
    assert received(out.stdout) >= 3, out.stdout
    back = lab.ping("native", str(info.address), count=4, deadline=20)
    assert received(back.stdout) >= 3, back.stdout


@pytest.mark.parametrize(
    ("first", "peer"),
    [(UPNP, UPNP_STARTS), (PEER_STARTS, PEER_STARTS), (SYMMETRIC, SYMMETRIC)],
    ids=["upnp-starts-to-port-restricted", "port-restricted-starts", "symmetric-starts"],
)
def test_direct_with_a_peer(lab: Lab, first: int, peer: int) -> None:
    _in_use(lab)
    upnp = lab.wait_qualified(UPNP, timeout=QUALIFY_TIMEOUT)
    other = lab.wait_qualified(peer, timeout=QUALIFY_TIMEOUT)
    dest = other if first == UPNP else upnp
    out = lab.ping(lab.site(first).client_host, str(dest.address), count=5, deadline=20)
    assert received(out.stdout) >= 2, out.stdout
    back_host = lab.site(peer if first == UPNP else UPNP).client_host
    back_dest = upnp if first == UPNP else other
    back = lab.ping(back_host, str(back_dest.address), count=3, deadline=10)
    assert received(back.stdout) >= 2, back.stdout


def test_mapping_removed_after_sigterm(lab: Lab) -> None:
    st = _in_use(lab)
    port = st["local_port"]
    assert any(f"{port}->" in line for line in _mappings(lab))
    host = lab.site(UPNP).client_host
    lab.stop(host)  # SIGTERM (SIGKILL only after 3 s: then this test fails)
    assert not [line for line in _mappings(lab) if f"{port}->" in line]
    assert "removed" in lab.log_tail(host, lines=10)
