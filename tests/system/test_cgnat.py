"""Issue 12: rate limits that do not hurt real users. A carrier-grade NAT puts thousands of
Teredo clients behind one IPv4 address: our server must answer every one of their refreshes.

Lab: our server, our client behind a port-restricted NAT (203.0.113.11), and beside it in the
same namespace CLIENTS simulated clients, one UDP socket each, so that the NAT gives each its
own port of the one public address. Each sends one RS with its own nonce per round (two rounds,
spread over ROUND_S seconds as refreshes are, RFC 4380 section 5.2.7): every RS must get its
RA, and the real client stays qualified. With limits keyed on the IPv4 alone (5 a second, a
burst of 20, before issue 12) at most 20 + 5 x 12 = 80 of the 2,000 could be answered per
round (the limits' arithmetic, not re-measured).
"""

from __future__ import annotations

import json
import sys

import pytest

from teredo.core.ipv6 import build_rs
from teredo.lab.hostile import MANY_CLIENTS as MANY
from teredo.lab.nat import NatKind
from teredo.lab.roles import Impl
from teredo.lab.topology import SERVER_V4, Lab

from .conftest import prefix_for

pytestmark = pytest.mark.system

CLIENTS = 2000
ROUNDS = 2
ROUND_S = 12.0


def test_thousands_of_clients_behind_one_nat_all_refresh(lab_factory: list[Lab]) -> None:
    lab = Lab(
        prefix_for("g"),
        [NatKind.PORT_RESTRICTED],
        server_impl=Impl.TEREDO,
        relay_impl=None,
        client_impl=[Impl.TEREDO],
    )
    lab_factory.append(lab)
    lab.up()
    info = lab.wait_qualified(1, timeout=30)
    host = lab.site(1).client_host
    args = [SERVER_V4, str(CLIENTS), str(ROUNDS), str(ROUND_S), build_rs().hex()]
    run = lab.exec(host, [sys.executable, "-c", MANY, *args], timeout=ROUNDS * (ROUND_S + 10))
    answered = json.loads(run.stdout)
    status = lab.exec("server", [sys.executable, "-m", "teredo", "status", "--json"])
    drops = json.loads(status.stdout)[0]["status"]["drops"]
    figures = {"clients": CLIENTS, "nat": lab.site(1).public_ip, "answered": answered}
    print(json.dumps({**figures, "server_drops": drops}))
    assert answered == [CLIENTS] * ROUNDS, {**figures, "server_drops": drops}
    again = lab.wait_qualified(1, timeout=5)
    assert again.address == info.address
