"""Client faults side by side, Miredo's client and ours (issues 13 and 14).

    sudo .venv/bin/python -m bench.client_faults [--impl both|miredo|teredo] [--prefix tdf-]
        [--scenarios faults,failover]

One lab per implementation (Miredo server and relay, five port-restricted NATs, the client
under test on each site), the scenarios of teredo.lab.clientfaults, one per site:

1. `ip link del teredo` under the client: CPU share over 5 s, time to a Teredo address again;
2. 200 spoofed bubbles through the server from one IPv4, a new source port each: bubbles
   reflected toward that IPv4; 3. the same from one fixed port;
4. a new local IPv4 behind the same NAT: time to a new Teredo address that reaches the native
   host; 5. the uplink down: time until the address is gone; up again: time to a working one;
6. (a lab of its own) the server in use stopped: time to a working address again (ours with a
   second server, `teredo server` next to Miredo's; Miredo's client can name only one).

Prints a table and one JSON line. Nothing leaves the lab's namespaces.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from teredo.lab import clientfaults
from teredo.lab.nat import NatKind
from teredo.lab.roles import Impl
from teredo.lab.topology import SERVER_V4, Lab

SITES = 5
QUALIFY = 60.0
SLOW = 120.0  # Miredo notices some changes only at a refresh, or never


def _address_gone(lab: Lab, index: int, timeout: float) -> float | None:
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if lab.teredo_address(index) is None:
            return time.monotonic() - start
        time.sleep(0.1)
    return None


def run(impl: Impl, prefix: str) -> dict[str, object]:
    lab = Lab(prefix, [NatKind.PORT_RESTRICTED] * SITES, client_impl=impl)
    results: dict[str, object] = {}
    try:
        lab.up()
        for index in range(1, SITES + 1):
            lab.wait_qualified(index, timeout=QUALIFY)
        tun = clientfaults.delete_tun(lab, 1, window=5.0, recover=QUALIFY)
        results["tun_deleted_cpu_share"] = round(tun.cpu_share, 3)
        results["tun_deleted_recovered_s"] = tun.recovered_after and round(tun.recovered_after, 1)
        results["tun_deleted_exited"] = tun.exited
        results["spoofed_200_ports_reflected"] = clientfaults.spoofed_origin_bubbles(lab, 2)
        results["spoofed_200_fixed_port_reflected"] = clientfaults.spoofed_origin_bubbles(
            lab, 3, vary=False
        )
        old = lab.teredo_address(4)
        clientfaults.change_address(lab, 4, 7)
        took = clientfaults.wait_new_address(lab, 4, str(old.address) if old else None, SLOW)
        results["new_local_ipv4_working_after_s"] = took and round(took, 1)
        clientfaults.uplink_down(lab, 5)
        gone = _address_gone(lab, 5, SLOW)
        results["uplink_down_address_gone_s"] = gone and round(gone, 1)
        clientfaults.uplink_up(lab, 5)
        back = clientfaults.wait_new_address(lab, 5, None, SLOW)
        results["uplink_up_working_after_s"] = back and round(back, 1)
    finally:
        lab.down()
    return results


def failover(impl: Impl, prefix: str) -> dict[str, object]:
    """The server in use stops. Ours has a second one (`teredo server`, next to Miredo's);
    Miredo's client can name only one. Default refresh interval (30 s) for both."""
    lab = Lab(prefix, [NatKind.PORT_RESTRICTED], client_impl=impl if impl is Impl.MIREDO else None)
    try:
        lab.up()
        clientfaults.start_second_server(lab)
        if impl is Impl.TEREDO:
            servers = ("--server", SERVER_V4, "--server", clientfaults.SECOND_SERVER_V4)
            clientfaults.start_client(lab, 1, *servers)
        first = lab.wait_qualified(1, timeout=QUALIFY)
        clientfaults.stop_server_of(lab, str(first.server))
        took = clientfaults.wait_new_address(lab, 1, str(first.address), SLOW)
    finally:
        lab.down()
    return {"server_stopped_working_again_after_s": took and round(took, 1)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--impl", choices=("both", "miredo", "teredo"), default="both")
    parser.add_argument("--prefix", default="tdf-")
    parser.add_argument("--scenarios", default="faults,failover", help="faults, failover or both")
    args = parser.parse_args(argv)
    impls = [Impl.MIREDO, Impl.TEREDO] if args.impl == "both" else [Impl(args.impl)]
    wanted = args.scenarios.split(",")
    table: dict[str, dict[str, object]] = {}
    for impl in impls:
        faults = run(impl, args.prefix) if "faults" in wanted else {}
        moved = failover(impl, args.prefix) if "failover" in wanted else {}
        table[impl.value] = {**faults, **moved}
    keys = list(next(iter(table.values())))
    print(f"{'scenario':38} " + " ".join(f"{name:>10}" for name in table))
    for key in keys:
        print(f"{key:38} " + " ".join(f"{table[name][key]!s:>10}" for name in table))
    print(json.dumps({"benchmark": "client_faults", "results": table}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
