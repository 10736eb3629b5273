"""Which data path this installation can forward with: "kernel" (eBPF) or "user" (Python).

`teredo --version` prints it. The one place that decides: the kernel data path (io/bpf*)
extends `available()` with its own check (programs shipped in the package and accepted by this
kernel); until then every installation forwards in user space.
"""

from __future__ import annotations

from typing import Final, Literal

DataPath = Literal["kernel", "user"]
USER: Final = "user"


def available() -> DataPath:
    """The best data path available here, decided without side effects (nothing is loaded)."""
    return USER
