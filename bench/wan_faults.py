"""Loss on the wan, our client beside Miredo's (docs/robustness.md, "Loss"). Root; about
3 minutes: for each implementation and loss 0, 10, 30 %: time to qualify and to move 1 MiB
over TCP to the native host (through Miredo's relay), intact or not, and datagrams dropped.

    .venv/bin/python -m bench.wan_faults [--bytes N] [--loss 0 10 30] [--dup P] [--reorder P]
        [--impl both|teredo|miredo] [--runs N] [--prefix pvl-]
"""

from __future__ import annotations

import argparse
import time

from teredo.lab import clientfaults, wanfaults
from teredo.lab.nat import NatKind
from teredo.lab.roles import Impl
from teredo.lab.system import LabError
from teredo.lab.topology import NATIVE_V6, Lab


def one(
    impl: str, percent: int, nbytes: int, prefix: str = "pvl-", *, dup: int = 0, reorder: int = 0
) -> str:
    lab = Lab(prefix, [NatKind.PORT_RESTRICTED], client_impl=None)
    try:
        lab.up()
        wanfaults.set_loss(lab, percent)
        if dup:
            wanfaults.set_duplication(lab, dup)
        if reorder:
            wanfaults.set_reorder(lab, reorder)
        start = time.monotonic()
        if impl == "teredo":
            clientfaults.start_client(lab, 1)
        else:
            lab.start("client", Impl.MIREDO, index=1)
        lab.wait_qualified(1, timeout=120)
        qualified = time.monotonic() - start
        result = wanfaults.tcp_transfer(lab, "client1", ("native", NATIVE_V6), nbytes)
        extra = ""
        if dup or reorder:
            extra = (
                f", {wanfaults.duplicated(lab)} duplicated, {wanfaults.held_back(lab)} held back,"
                f" {wanfaults.out_of_order(lab, 'native')} segments out of order at the receiver"
            )
        return (
            f"{impl} loss {percent} % dup {dup} % reorder {reorder} %: qualified after "
            f"{qualified:.1f} s, {nbytes} B "
            f"{'intact' if result.intact else 'NOT received'} in {result.seconds:.1f} s, "
            f"{wanfaults.dropped(lab)} datagrams dropped{extra}"
        )
    except LabError as err:
        return f"{impl} loss {percent} %: failed: {str(err).splitlines()[0]}"
    finally:
        lab.down()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--bytes", type=int, default=1024 * 1024)
    parser.add_argument("--loss", type=int, nargs="+", default=[0, 10, 30])
    parser.add_argument("--impl", choices=("both", "teredo", "miredo"), default="both")
    parser.add_argument("--runs", type=int, default=1, help="runs of each (loss, client)")
    parser.add_argument("--prefix", default="pvl-")
    parser.add_argument("--dup", type=int, default=0, help="%% of wan datagrams sent twice")
    parser.add_argument("--reorder", type=int, default=0, help="%% of them held back")
    args = parser.parse_args()
    impls = ("teredo", "miredo") if args.impl == "both" else (args.impl,)
    for impl in impls:
        for percent in args.loss:
            for _ in range(args.runs):
                line = one(
                    impl, percent, args.bytes, args.prefix, dup=args.dup, reorder=args.reorder
                )
                print(line, flush=True)


if __name__ == "__main__":
    main()
