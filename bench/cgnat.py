"""Thousands of Teredo clients behind one carrier-grade NAT refreshing at one server, Miredo's
server beside ours (issue 12, docs/robustness.md "carrier-grade NAT").

    sudo .venv/bin/python -m bench.cgnat [--impl both|miredo|teredo] [--clients 2000]

The scenario of tests/system/test_cgnat.py: CLIENTS sockets behind one port-restricted NAT,
one RS each per round, two rounds spread over 12 s each; prints the RAs that came back per
round. Nothing leaves the lab's namespaces.
"""

from __future__ import annotations

import argparse
import json
import sys

from teredo.core.ipv6 import build_rs
from teredo.lab.hostile import MANY_CLIENTS
from teredo.lab.nat import NatKind
from teredo.lab.roles import Impl
from teredo.lab.topology import SERVER_V4, Lab

ROUNDS = 2
ROUND_S = 12.0


def run(impl: Impl, clients: int, prefix: str) -> dict[str, object]:
    lab = Lab(
        prefix, [NatKind.PORT_RESTRICTED], server_impl=impl, relay_impl=None, client_impl=None
    )
    try:
        lab.up()
        args = [SERVER_V4, str(clients), str(ROUNDS), str(ROUND_S), build_rs().hex()]
        argv = [sys.executable, "-c", MANY_CLIENTS, *args]
        out = lab.exec("client1", argv, timeout=ROUNDS * (ROUND_S + 10)).stdout
        answered: list[int] = json.loads(out)
        drops: object = "no counters (Miredo)"
        if impl is Impl.TEREDO:
            docs = lab.daemon_status("server") or [{}]
            drops = docs[0].get("status", {}).get("drops")
        snmp = lab.exec("server", ["cat", "/proc/net/snmp"]).stdout.splitlines()
        udp = [line.split()[1:] for line in snmp if line.startswith("Udp:")]
        kernel = dict(zip(udp[0], map(int, udp[1]), strict=False)) if len(udp) == 2 else {}
        return {
            "answered": answered,
            "server_drops": drops,
            "server_socket_drops": kernel.get("RcvbufErrors", 0),
        }
    finally:
        lab.down()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--impl", choices=("both", "miredo", "teredo"), default="both")
    parser.add_argument("--clients", type=int, default=2000)
    parser.add_argument("--prefix", default="cgn-")
    args = parser.parse_args(argv)
    if not 1 <= args.clients <= 10000:
        parser.error("--clients in 1..10000")
    impls = [Impl.MIREDO, Impl.TEREDO] if args.impl == "both" else [Impl(args.impl)]
    results = {i.value: run(i, args.clients, args.prefix) for i in impls}
    for name, got in results.items():
        print(
            f"{name}: RAs per round {got['answered']} of {args.clients}; drops "
            f"{got['server_drops']}, socket buffer drops {got['server_socket_drops']}"
        )
    print(json.dumps({"benchmark": "cgnat", "clients": args.clients, "results": results}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
