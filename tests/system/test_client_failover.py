"""Several servers and failover (issue 13): our client with two servers in the lab, Miredo's
server on 198.51.100.10/.11 and ours on 198.51.100.12/.13 (same namespace, other addresses).
The one in use is stopped: the client moves to the other at once (no 100 s wait), qualifies
there and reaches the native host."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator

import pytest

from teredo.lab import clientfaults, system
from teredo.lab.nat import NatKind
from teredo.lab.topology import SERVER_V4, Lab

from .conftest import prefix_for, tear_down
from .test_client_interop import QUALIFY_TIMEOUT, log_text, start_ours

pytestmark = pytest.mark.system

OUR_SERVER_V4 = "198.51.100.12"
REFRESH = 5.0
# Loss of contact: one refresh interval, then three RS 4 s apart (RFC 4380 5.2.1, 5.2.5); then
# the next server at once; slack for a loaded machine.
FAILOVER_TIMEOUT = REFRESH + 3 * 4.0 + 15.0


@pytest.fixture
def two_server_lab() -> Iterator[Lab]:
    lab = Lab(prefix_for("o"), [NatKind.PORT_RESTRICTED], client_impl=None)
    try:
        lab.up()
        system.ip_batch(
            lab.ns("server"),
            [f"addr add {OUR_SERVER_V4}/24 dev eth0", "addr add 198.51.100.13/24 dev eth0"],
        )
        lab.popen(
            "server",
            [sys.executable, "-m", "teredo", "server", "--bind", OUR_SERVER_V4, "--no-control"],
            name="server-ours",
            role="server",
            impl="teredo",
        )
        yield lab
    finally:
        tear_down(lab)


def test_moves_to_the_other_server_when_the_one_in_use_stops(two_server_lab: Lab) -> None:
    lab = two_server_lab
    host = lab.site(1).client_host
    start_ours(lab, 1, "--server", SERVER_V4, "--server", OUR_SERVER_V4, "--refresh", str(REFRESH))
    first = lab.wait_qualified(1, timeout=QUALIFY_TIMEOUT)
    assert "servers by round trip:" in log_text(lab, host)
    in_use = str(first.server)
    other = OUR_SERVER_V4 if in_use == SERVER_V4 else SERVER_V4
    # Stop exactly the server in use (both run in the same namespace).
    victim = [
        r
        for r in lab.procs
        if r.host == "server" and (r.name == "server-ours") == (in_use == OUR_SERVER_V4)
    ]
    assert len(victim) == 1, lab.procs
    stopped = time.monotonic()
    assert system.kill_pids({victim[0].pid: victim[0].start_time}) == []
    took = clientfaults.wait_new_address(lab, 1, str(first.address), timeout=FAILOVER_TIMEOUT)
    assert took is not None, lab.log_tail(host, 30)
    again = lab.teredo_address(1)
    assert again is not None
    assert str(again.server) == other
    log = log_text(lab, host)
    assert f"server {in_use} is not answering: moving to server {other}" in log, log
    # Miredo would wait 100 s before asking the same (dead) server again.
    assert time.monotonic() - stopped < FAILOVER_TIMEOUT
