"""Recovery from faults without operator action, all-Miredo beside all-ours (issue 12).

    sudo .venv/bin/python -m bench.recovery [--impl both|miredo|teredo] [--prefix rcv-]
        [--scenarios nat_mapping_change,...] [--outage 5] [--timeout 120]

One lab per implementation: its server, relay and client (behind a port-restricted NAT) and
the native host. The scenarios of teredo.lab.recovery run one after the other on the same
lab, each from a working path: the seconds from the fault's end until a ping works both ways
again (client -> native host, native host -> the client's address of the moment), and whether
the client's address changed. Prints a table and one JSON line; nothing leaves the lab.
"""

from __future__ import annotations

import argparse
import json
import sys

from teredo.lab import recovery
from teredo.lab.nat import NatKind
from teredo.lab.roles import Impl, Role
from teredo.lab.system import LabError
from teredo.lab.topology import Lab


def run(
    impl: Impl, prefix: str, scenarios: list[str], outage: float, timeout: float
) -> dict[str, object]:
    lab = Lab(
        prefix, [NatKind.PORT_RESTRICTED], server_impl=impl, relay_impl=impl, client_impl=impl
    )
    impls = {Role.SERVER: impl, Role.RELAY: impl, Role.CLIENT: impl}
    results: dict[str, object] = {}
    try:
        lab.up()
        lab.wait_qualified(1, timeout=90)
        for name in scenarios:
            try:
                got = recovery.run_scenario(lab, name, impls=impls, outage=outage, timeout=timeout)
            except LabError as err:
                results[name] = f"error: {str(err).splitlines()[0]}"
                continue
            seconds = "never" if got.seconds is None else f"{got.seconds:.1f} s"
            results[name] = f"{seconds}{' (new address)' if got.address_changed else ''}"
            print(f"{impl.value} {name}: {results[name]} ({got.rounds} rounds)", flush=True)
    finally:
        lab.down()
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--impl", choices=("both", "miredo", "teredo"), default="both")
    parser.add_argument("--prefix", default="rcv-")
    parser.add_argument("--scenarios", default=",".join(recovery.SCENARIOS))
    parser.add_argument("--outage", type=float, default=5.0, help="seconds a daemon stays down")
    parser.add_argument("--timeout", type=float, default=120.0, help="give up after (s)")
    args = parser.parse_args(argv)
    impls = [Impl.MIREDO, Impl.TEREDO] if args.impl == "both" else [Impl(args.impl)]
    wanted = [s for s in args.scenarios.split(",") if s]
    table = {i.value: run(i, args.prefix, wanted, args.outage, args.timeout) for i in impls}
    print(f"{'scenario':22} " + " ".join(f"{name:>26}" for name in table))
    for key in wanted:
        print(f"{key:22} " + " ".join(f"{table[name].get(key)!s:>26}" for name in table))
    print(json.dumps({"benchmark": "recovery", "outage_s": args.outage, "results": table}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
