"""Who each daemon runs as once set up, ours (`--user teredo`) beside Miredo's, from
/proc/PID/status of every daemon of the lab and its children (docs/robustness.md, "Least
privilege"). Root; about 20 s.

    .venv/bin/python -m bench.privileges
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from teredo.lab.nat import NatKind
from teredo.lab.topology import Lab

FIELDS = ("Name", "Uid", "CapEff", "CapPrm", "CapBnd", "CapAmb", "NoNewPrivs")


def status(pid: int) -> dict[str, str]:
    lines = Path(f"/proc/{pid}/status").read_text(encoding="ascii").splitlines()
    return {k: v.strip() for k, _, v in (line.partition(":") for line in lines)}


def show(impl: str, prefix: str) -> None:
    lab = Lab(
        prefix,
        [NatKind.PORT_RESTRICTED],
        server_impl=impl,
        relay_impl=impl,
        client_impl=impl,
        user="teredo" if impl == "teredo" else None,
    )
    try:
        lab.up()
        lab.wait_qualified(1, timeout=40)
        for record in lab.procs:
            children = subprocess.run(
                ["pgrep", "-P", str(record.pid)], capture_output=True, text=True, check=False
            ).stdout.split()
            for pid in [record.pid, *map(int, children)]:
                st = status(pid)
                print(impl, record.host, pid, " ".join(f"{k}={st.get(k, '-')}" for k in FIELDS))
    finally:
        lab.down()


def main() -> None:
    show("teredo", "pvb-")
    show("miredo", "pvm-")


if __name__ == "__main__":
    main()
