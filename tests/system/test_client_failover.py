"""Several servers and failover (issue 13): our client with two servers in the lab, Miredo's
server on 198.51.100.10/.11 and ours on 198.51.100.12/.13 (same namespace, other addresses).
The one in use is stopped: the client moves to the other at once (no 100 s wait), qualifies
there and reaches the native host."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from teredo.core.qualify import REFRESH_GIVE_UP
from teredo.lab import clientfaults
from teredo.lab.nat import NatKind
from teredo.lab.topology import SERVER_V4, Lab

from .conftest import prefix_for, tear_down
from .test_client_interop import QUALIFY_TIMEOUT, log_text

pytestmark = pytest.mark.system

REFRESH = 5.0
# Loss of contact: one refresh interval, then six refresh RS in 18 s (RFC 4380 5.2.5;
# core/qualify.py REFRESH_GIVE_UP); then the next server at once; slack for a loaded machine.
FAILOVER_TIMEOUT = REFRESH + REFRESH_GIVE_UP + 15.0
OURS = clientfaults.SECOND_SERVER_V4


@pytest.fixture
def two_server_lab() -> Iterator[Lab]:
    lab = Lab(prefix_for("o"), [NatKind.PORT_RESTRICTED], client_impl=None)
    try:
        lab.up()
        clientfaults.start_second_server(lab)
        yield lab
    finally:
        tear_down(lab)


def test_moves_to_the_other_server_when_the_one_in_use_stops(two_server_lab: Lab) -> None:
    lab = two_server_lab
    host = lab.site(1).client_host
    flags = ("--server", SERVER_V4, "--server", OURS, "--refresh", str(REFRESH))
    clientfaults.start_client(lab, 1, *flags)
    first = lab.wait_qualified(1, timeout=QUALIFY_TIMEOUT)
    assert "servers by round trip:" in log_text(lab, host)
    in_use = str(first.server)
    other = OURS if in_use == SERVER_V4 else SERVER_V4
    stopped = time.monotonic()
    clientfaults.stop_server_of(lab, in_use)  # only that one: both share a namespace
    took = clientfaults.wait_new_address(lab, 1, str(first.address), timeout=FAILOVER_TIMEOUT)
    assert took is not None, lab.log_tail(host, 30)
    again = lab.teredo_address(1)
    assert again is not None
    assert str(again.server) == other
    log = log_text(lab, host)
    assert f"server {in_use} is not answering: moving to server {other}" in log, log
    # Miredo would wait 100 s before asking the same (dead) server again.
    assert time.monotonic() - stopped < FAILOVER_TIMEOUT
