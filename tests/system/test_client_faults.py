"""Our client under hostile traffic and a changing network, in the lab (issues 13 and 14).

One lab (Miredo server and relay, port-restricted NATs, no client started by the lab); each
test starts our client on a site of its own. The scenarios live in teredo.lab.clientfaults,
which bench/client_faults.py also runs against Miredo's client for docs/robustness-client.md
and docs/client.md.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from teredo.lab import clientfaults
from teredo.lab.nat import NatKind
from teredo.lab.topology import NATIVE_V6, Lab

from .conftest import prefix_for, received, tear_down
from .test_client_interop import QUALIFY_TIMEOUT, log_text

pytestmark = pytest.mark.system


@pytest.fixture(scope="module")
def faults_lab() -> Iterator[Lab]:
    lab = Lab(prefix_for("f"), [NatKind.PORT_RESTRICTED] * 4, client_impl=None)
    try:
        lab.up()
        yield lab
    finally:
        tear_down(lab)


def test_tun_deleted_is_created_again_without_spinning(faults_lab: Lab) -> None:
    """Issue 14: `ip link del teredo` under the client. Before: 100 % of a core, silently,
    forever. Now: the failing descriptor leaves the poll set, the interface is created again
    and the client qualifies again."""
    lab = faults_lab
    clientfaults.start_client(lab, 1)
    lab.wait_qualified(1, timeout=QUALIFY_TIMEOUT)
    host = lab.site(1).client_host
    result = clientfaults.delete_tun(lab, 1, window=5.0, recover=QUALIFY_TIMEOUT)
    # A busy loop is ~1.0; qualifying again costs a few tens of milliseconds. Generous for a
    # loaded machine, far from a spinning thread.
    assert result.cpu_share < 0.3, result
    assert not result.exited, lab.log_tail(host, 30)
    assert result.recovered_after is not None, lab.log_tail(host, 30)
    log = log_text(lab, host)
    assert log.count("interface teredo lost") == 1, log
    ping = lab.ping(host, NATIVE_V6, count=3, deadline=10)
    assert received(ping.stdout) >= 2, ping.stdout + lab.log_tail(host, 30)


def test_spoofed_origins_get_few_bubbles_per_ipv4(faults_lab: Lab) -> None:
    """Issue 14: 200 spoofed bubbles through the server, each from a new port of one IPv4.
    Before: 200 direct bubbles toward that IPv4. Now: at most the per-IPv4 burst (8) and its
    refill, and the drops are counted by reason."""
    lab = faults_lab
    clientfaults.start_client(lab, 2)
    lab.wait_qualified(2, timeout=QUALIFY_TIMEOUT)
    reflected = clientfaults.spoofed_origin_bubbles(lab, 2, count=200, vary=True)
    assert 1 <= reflected <= 12, f"{reflected} bubbles toward the spoofed IPv4"
    [doc] = [d for d in lab.daemon_status(lab.site(2).client_host) or [] if d["role"] == "client"]
    drops = doc["status"]["drops"]
    assert drops.get("origin_bubble_limit", 0) >= 200 - reflected - 20, drops


def test_new_local_address_requalifies_at_once(faults_lab: Lab) -> None:
    """Issue 13: a new local IPv4 (a new lease behind the same NAT, so a new mapping): the
    client qualifies again at once instead of at its next refresh, and the new address works."""
    lab = faults_lab
    clientfaults.start_client(lab, 3)
    old = lab.wait_qualified(3, timeout=QUALIFY_TIMEOUT)
    clientfaults.change_address(lab, 3, 7)
    # Without following the network: the next refresh (22-30 s) and an RS (4 s) at best.
    took = clientfaults.wait_new_address(lab, 3, str(old.address), timeout=15.0)
    host = lab.site(3).client_host
    assert took is not None, lab.log_tail(host, 30)
    assert "network changed (local address 192.168.3.7)" in log_text(lab, host)
    assert "local discovery on eth0 192.168.3.7" in log_text(lab, host)
    # Another default route, same local IPv4 (a DHCP renewal, a second uplink): a refresh
    # RS checks the mapping at once, and the address stays.
    kept = lab.teredo_address(3)
    lab.exec(host, ["ip", "route", "add", "default", "via", "192.168.3.1", "metric", "50"])
    wait_for_log = time.monotonic() + 10.0
    while "a new default route): checking the mapping" not in log_text(lab, host):
        assert time.monotonic() < wait_for_log, lab.log_tail(host, 30)
        time.sleep(0.1)
    time.sleep(0.5)  # the refresh RA
    assert lab.teredo_address(3) == kept


def test_uplink_lost_goes_offline_and_comes_back(faults_lab: Lab) -> None:
    """Issue 13: the uplink goes away: address and routes leave the interface at once; it
    comes back: the client qualifies again by itself."""
    lab = faults_lab
    clientfaults.start_client(lab, 4)
    old = lab.wait_qualified(4, timeout=QUALIFY_TIMEOUT)
    host = lab.site(4).client_host
    clientfaults.uplink_down(lab, 4)
    gone = False
    for _ in range(50):
        routes = lab.exec(host, ["ip", "-6", "route", "show", "dev", "teredo"]).stdout
        if lab.teredo_address(4) is None and "default" not in routes:
            gone = True
            break
        time.sleep(0.1)
    assert gone, "address or default route left on the interface\n" + lab.log_tail(host)
    clientfaults.uplink_up(lab, 4)
    took = clientfaults.wait_new_address(lab, 4, None, timeout=15.0)
    assert took is not None, lab.log_tail(host, 30)
    again = lab.teredo_address(4)
    assert again is not None
    assert again.mapped_ip == old.mapped_ip
