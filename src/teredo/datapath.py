"""Which data path this installation can forward with: "kernel" (eBPF) or "user" (Python).

`teredo --version` prints it. The check (io/datapath.py `probe`): the compiled programs are in the
package and this process can load and run the smallest of them (CAP_BPF, a kernel that accepts
tc programs). Each daemon decides again at start with its own programs (`--datapath`).
"""

from __future__ import annotations

from typing import Final, Literal

DataPath = Literal["kernel", "user"]
KERNEL: Final = "kernel"
USER: Final = "user"


def available() -> DataPath:
    """The best data path available here; nothing loaded outlives the call."""
    from teredo.io.datapath import probe  # noqa: PLC0415 - libbpf only when asked

    return KERNEL if probe() is None else USER
