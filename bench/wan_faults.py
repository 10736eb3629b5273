"""Loss on the wan, our client beside Miredo's (docs/robustness.md, "Loss"). Root; about
3 minutes: for each implementation and loss 0, 10, 30 %: time to qualify and to move 1 MiB
over TCP to the native host (through Miredo's relay), intact or not, and datagrams dropped.

    .venv/bin/python -m bench.wan_faults [--bytes N] [--loss 0 10 30]
"""

from __future__ import annotations

import argparse
import time

from teredo.lab import clientfaults, wanfaults
from teredo.lab.nat import NatKind
from teredo.lab.roles import Impl
from teredo.lab.system import LabError
from teredo.lab.topology import NATIVE_V6, Lab


def one(impl: str, percent: int, nbytes: int) -> str:
    lab = Lab("pvl-", [NatKind.PORT_RESTRICTED], client_impl=None)
    try:
        lab.up()
        wanfaults.set_loss(lab, percent)
        start = time.monotonic()
        if impl == "teredo":
            clientfaults.start_client(lab, 1)
        else:
            lab.start("client", Impl.MIREDO, index=1)
        lab.wait_qualified(1, timeout=120)
        qualified = time.monotonic() - start
        result = wanfaults.tcp_transfer(lab, "client1", ("native", NATIVE_V6), nbytes)
        return (
            f"{impl} loss {percent} %: qualified after {qualified:.1f} s, {nbytes} B "
            f"{'intact' if result.intact else 'NOT received'} in {result.seconds:.1f} s, "
            f"{wanfaults.dropped(lab)} datagrams dropped"
        )
    except LabError as err:
        return f"{impl} loss {percent} %: failed: {str(err).splitlines()[0]}"
    finally:
        lab.down()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--bytes", type=int, default=1024 * 1024)
    parser.add_argument("--loss", type=int, nargs="+", default=[0, 10, 30])
    args = parser.parse_args()
    for impl in ("teredo", "miredo"):
        for percent in args.loss:
            print(one(impl, percent, args.bytes), flush=True)


if __name__ == "__main__":
    main()
