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
from teredo.lab.nat import NatKind
from teredo.lab.roles import Impl
from teredo.lab.topology import SERVER_V4, Lab

from .conftest import prefix_for

pytestmark = pytest.mark.system

CLIENTS = 2000
ROUNDS = 2
ROUND_S = 12.0

# CLIENTS sockets, ROUNDS rounds each spread over ROUND_S s; prints the RAs matched per round.
MANY = """
import json, resource, selectors, socket, sys, time
server, clients, rounds = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
spread = float(sys.argv[4])
rs = bytes.fromhex(sys.argv[5])
resource.setrlimit(resource.RLIMIT_NOFILE, (clients + 100, clients + 100))
socks = []
for _ in range(clients):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("0.0.0.0", 0))
    s.setblocking(False)
    socks.append(s)
sel = selectors.DefaultSelector()
for i, s in enumerate(socks):
    sel.register(s, selectors.EVENT_READ, i)
answered = []
for r in range(rounds):
    got = set()
    t0 = time.monotonic()
    def drain(timeout):
        for key, _ in sel.select(timeout):
            try:
                data = key.fileobj.recv(2048)
            except BlockingIOError:
                continue
            if data[4:12] == (r << 32 | key.data).to_bytes(8, "big"):
                got.add(key.data)
    for i, s in enumerate(socks):
        nonce = (r << 32 | i).to_bytes(8, "big")
        s.sendto(bytes((0, 1, 0, 0)) + nonce + bytes(1) + rs, (server, 3544))
        due = t0 + spread * (i + 1) / clients  # paced: refreshes are spread over time
        while (wait := due - time.monotonic()) > 0:
            drain(wait)
    end = time.monotonic() + 3.0
    while time.monotonic() < end and len(got) < clients:
        drain(0.2)
    answered.append(len(got))
print(json.dumps(answered), flush=True)
"""


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
