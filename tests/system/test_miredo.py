"""Miredo in every role (server, relay, clients) in one lab.

Clients sit behind each cone-type NAT (none, full-cone, address-restricted, port-restricted) and one
more port-restricted NAT, for a client-to-client ping between two port-restricted NATs.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from teredo.lab import watch
from teredo.lab.nat import NatKind
from teredo.lab.teredoaddr import TeredoInfo
from teredo.lab.topology import NATIVE_V6, SERVER_V4, Lab

from .conftest import prefix_for, received, tear_down

pytestmark = pytest.mark.system

KINDS = [
    NatKind.NONE,
    NatKind.FULL_CONE,
    NatKind.ADDRESS_RESTRICTED,
    NatKind.PORT_RESTRICTED,
    NatKind.PORT_RESTRICTED,
]
QUALIFY_TIMEOUT = 30.0


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    lab = Lab(prefix_for("m"), KINDS)
    try:
        lab.up()
        watch.install(lab)
        yield lab
    finally:
        tear_down(lab)


@pytest.mark.parametrize("index", [1, 2, 3, 4], ids=[k.value for k in KINDS[:4]])
def test_client_qualifies_behind_cone_nat(lab: Lab, index: int) -> None:
    info = lab.wait_qualified(index, timeout=QUALIFY_TIMEOUT)
    site = lab.site(index)
    assert str(info.server) == SERVER_V4
    assert str(info.mapped_ip) == site.public_ip, "the Teredo address embeds the NAT public IPv4"
    ports = lab.mapped_ports(index, socket_owner='"miredo"')
    assert info.mapped_port in ports, (
        f"mapped port {info.mapped_port} is not what the NAT really uses ({sorted(ports)})"
    )


def test_port_restricted_clients_ping_directly(lab: Lab) -> None:
    a: TeredoInfo = lab.wait_qualified(4, timeout=QUALIFY_TIMEOUT)
    b: TeredoInfo = lab.wait_qualified(5, timeout=QUALIFY_TIMEOUT)
    assert a.mapped_ip != b.mapped_ip
    before = watch.read(lab)
    ping = lab.ping("client4", str(b.address), count=5, deadline=15)
    after = watch.read(lab)
    assert received(ping.stdout) >= 4, ping.stdout
    # Direct path (RFC 4380 section 5.2.4): bubbles go through the server, echo packets do not.
    assert after["bubbles"] > before["bubbles"], "the connection set-up used no indirect bubble"
    assert after["echo"] == before["echo"], f"echo packets went through the server: {after}"
    # And the reply path too: client5 -> client4 is now direct in both directions.
    ping_back = lab.ping("client5", str(a.address), count=3)
    assert received(ping_back.stdout) >= 2, ping_back.stdout
    assert watch.read(lab)["echo"] == before["echo"]


@pytest.mark.parametrize("index", [4, 2], ids=["port-restricted", "full-cone"])
def test_client_pings_native_host_through_relay(lab: Lab, index: int) -> None:
    lab.wait_qualified(index, timeout=QUALIFY_TIMEOUT)
    before = _relay_tunnel_packets(lab)
    ping = lab.ping(f"client{index}", NATIVE_V6, count=4, deadline=15)
    assert received(ping.stdout) >= 3, ping.stdout
    rx, tx = (n - b for n, b in zip(_relay_tunnel_packets(lab), before, strict=True))
    # Requests come out of the relay's Teredo interface (rx), replies go into it (tx). The first
    # request may travel through the server instead (RFC 4380 section 5.2.4, the echo test).
    assert rx >= 3, f"requests did not pass the relay (rx {rx})"
    assert tx >= 3, f"replies did not pass the relay (tx {tx})"


@pytest.mark.parametrize("index", [3, 5], ids=["address-restricted", "port-restricted"])
def test_native_host_pings_client_through_relay(lab: Lab, index: int) -> None:
    info = lab.wait_qualified(index, timeout=QUALIFY_TIMEOUT)
    before = _relay_tunnel_packets(lab)
    ping = lab.ping("native", str(info.address), count=4, deadline=15)
    assert received(ping.stdout) >= 3, ping.stdout
    rx, tx = (n - b for n, b in zip(_relay_tunnel_packets(lab), before, strict=True))
    assert tx >= 3, f"requests did not pass the relay (tx {tx})"
    assert rx >= 3, f"replies did not pass the relay (rx {rx})"


def _relay_tunnel_packets(lab: Lab) -> tuple[int, int]:
    """(rx, tx) packet counts of the relay's Teredo interface."""
    base = "/sys/class/net/teredo/statistics"
    out = lab.exec("relay", ["cat", f"{base}/rx_packets", f"{base}/tx_packets"]).stdout.split()
    return int(out[0]), int(out[1])
