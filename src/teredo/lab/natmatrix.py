"""Which NAT kinds a Teredo client works behind, measured: Miredo's client and ours side by side.

    python -m teredo.lab.natmatrix [--prefix P] [--kind KIND ...] [--infra miredo|teredo]

(root; about 2 minutes per implementation with every kind). For each client implementation,
one lab: two clients behind every NAT kind (side A and side B), the server and relay of
`--infra` (Miredo's by default: the reference both clients meet). Each A pings each B (Teredo to
Teredo: RFC 4380 section 5.2.4 bubbles, then direct), and each A pings the native host through
the relay and is pinged back. A cell works when at least one echo came back. The result is a
Markdown table (docs/client.md, "Behind which NAT"), rows the NAT of the side that starts,
columns the NAT of the other side; each cell is `Miredo / ours`. Every lab is torn down however
the run ends.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from teredo.lab.nat import NatKind
from teredo.lab.roles import Impl
from teredo.lab.system import LabError
from teredo.lab.teredoaddr import TeredoInfo
from teredo.lab.topology import NATIVE_V6, Lab, ping_counts

QUALIFY_TIMEOUT = 40.0
PING_COUNT = 3
PING_DEADLINE = 10.0  # seconds per ping run: bubbles (up to 3 repeats 2 s apart), then echoes
WORKERS = 4  # ping runs at once (each is bounded by PING_DEADLINE)
NATIVE = "native"


@dataclass
class Matrix:
    """works[impl][(a_kind, b_kind or NATIVE)] -> True/False; None: not qualified."""

    kinds: list[NatKind]
    works: dict[Impl, dict[tuple[NatKind, str], bool | None]] = field(default_factory=dict)
    qualified: dict[Impl, dict[NatKind, str]] = field(default_factory=dict)


def _replied(lab: Lab, host: str, dest: str) -> bool:
    done = lab.ping(host, dest, count=PING_COUNT, deadline=PING_DEADLINE)
    counts = ping_counts(done.stdout)
    return counts is not None and counts[1] > 0


def measure(
    prefix: str,
    kinds: Sequence[NatKind],
    impl: Impl,
    infra: Impl,
    out: Callable[[str], None],
) -> tuple[dict[tuple[NatKind, str], bool | None], dict[NatKind, str]]:
    """One lab for client implementation `impl`; the cells and each A side's NAT type."""
    sites = [*kinds, *kinds]  # 1..n side A, n+1..2n side B
    lab = Lab(prefix, sites, server_impl=infra, relay_impl=infra, client_impl=impl)
    cells: dict[tuple[NatKind, str], bool | None] = {}
    nat_types: dict[NatKind, str] = {}
    try:
        lab.up()
        infos: dict[int, TeredoInfo | None] = {}
        for site in lab.sites:
            try:
                infos[site.index] = lab.wait_qualified(site.index, timeout=QUALIFY_TIMEOUT)
            except LabError:
                infos[site.index] = None
        n = len(kinds)
        # (cell, index of A, destination: NATIVE or B's Teredo address)
        jobs: list[tuple[tuple[NatKind, str], int, str]] = []
        for i, a in enumerate(kinds, start=1):
            info_a = infos[i]
            out(f"  {impl.value} A behind {a.value}: {info_a.address if info_a else 'NO address'}")
            if info_a is None:
                cells[(a, NATIVE)] = None
                cells.update({(a, b.value): None for b in kinds})
                continue
            nat_types[a] = str(info_a.address)
            jobs.append(((a, NATIVE), i, NATIVE))
            for j, b in enumerate(kinds, start=n + 1):
                info_b = infos[j]
                if info_b is None:
                    cells[(a, b.value)] = None
                else:
                    jobs.append(((a, b.value), i, str(info_b.address)))

        def run(job: tuple[tuple[NatKind, str], int, str]) -> bool:
            _cell_key, index, dest = job
            host = f"client{index}"
            if dest == NATIVE:
                # Both ways: the client starts, then the native host does.
                info = infos[index]
                if info is None:
                    return False
                return _replied(lab, host, NATIVE_V6) and _replied(lab, NATIVE, str(info.address))
            return _replied(lab, host, dest)

        with ThreadPoolExecutor(max_workers=WORKERS) as pool:
            for job, ok in zip(jobs, pool.map(run, jobs), strict=True):
                cells[job[0]] = ok
    finally:
        left = lab.down()
        if left:
            out(f"  LEFT BEHIND: {', '.join(left)}")
    return cells, nat_types


def _cell(matrix: Matrix, a: NatKind, what: str) -> str:
    words = []
    for impl in (Impl.MIREDO, Impl.TEREDO):
        if impl not in matrix.works:
            words.append("-")
            continue
        ok = matrix.works[impl].get((a, what))
        words.append("no address" if ok is None else ("yes" if ok else "no"))
    return " / ".join(words)


def table(matrix: Matrix) -> str:
    """The Markdown table: rows the starting side's NAT, columns the other side and native."""
    head = ["A's NAT \\ B's NAT", *(k.value for k in matrix.kinds), "native host (both ways)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for a in matrix.kinds:
        cells = [_cell(matrix, a, b.value) for b in matrix.kinds]
        cells.append(_cell(matrix, a, NATIVE))
        lines.append(f"| {a.value} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m teredo.lab.natmatrix", description=__doc__)
    parser.add_argument("--prefix", default="tnm-", help="namespace prefix (default tnm-)")
    parser.add_argument(
        "--kind", dest="kinds", action="append", type=NatKind.parse, help="NAT kinds (all)"
    )
    parser.add_argument(
        "--client",
        dest="clients",
        action="append",
        type=Impl,
        help="client implementations to measure (miredo and teredo)",
    )
    parser.add_argument("--infra", type=Impl, default=Impl.MIREDO, help="server and relay")
    args = parser.parse_args(argv)
    kinds: list[NatKind] = args.kinds or [k for k in NatKind if k is not NatKind.SHARED]
    clients: list[Impl] = args.clients or [Impl.MIREDO, Impl.TEREDO]
    matrix = Matrix(kinds)
    for impl in clients:
        print(f"measuring the {impl.value} client (server and relay: {args.infra.value}) ...")
        # One lab at a time, each down before the next: they can share the prefix.
        cells, qualified = measure(args.prefix, kinds, impl, args.infra, print)
        matrix.works[impl] = cells
        matrix.qualified[impl] = qualified
    print()
    print(table(matrix))
    return 0


if __name__ == "__main__":
    sys.exit(main())
