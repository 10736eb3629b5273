"""Choosing the data path of a daemon: the kernel's eBPF programs or Python (issue 8,
docs/kernel.md).

`--datapath auto|kernel|user` (directive `Datapath`):

- `user`: no BPF program is loaded; every packet goes the Python path.
- `kernel`: the daemon's programs are loaded and attached, or the daemon does not start (its
  start error names the libbpf call and errno that failed).
- `auto` (default): as `kernel` where that works; otherwise one log line saying why, and the
  Python path.

`start_kernel(mode, what, start)` is the one place each daemon calls: `start` loads and attaches
its programs and returns the handle the driver keeps (closing it detaches everything), or raises
`BpfError`/`OSError`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from importlib import resources
from pathlib import Path
from typing import Final, TypeVar

from teredo.core.config import DatapathMode
from teredo.io.driver import StartError

__all__ = ["DatapathError", "load_early", "object_path", "probe", "start_kernel"]

_log = logging.getLogger("teredo.datapath")
_T = TypeVar("_T")
PROBE_OBJECT: Final = "teredo_probe"


class DatapathError(StartError):
    """`--datapath kernel` and the kernel data path cannot start here (a start error like
    any other: one line, exit status 1)."""


def object_path(name: str) -> Path:
    """The compiled object `name`.bpf.o shipped in the package (scripts/build-bpf.sh)."""
    path = Path(str(resources.files("teredo") / "bpf" / f"{name}.bpf.o"))
    if not path.exists():
        raise FileNotFoundError(
            f"{path}: not built (scripts/build-bpf.sh, run by scripts/setup.sh, needs clang)"
        )
    return path


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def probe() -> str | None:
    """None where this process can load and run a tc program (the probe object); else why not,
    in a few words. Loads nothing that outlives the call."""
    # Imported here: a daemon with --datapath user never loads libbpf.
    from teredo.io.libbpf import BpfError, BpfObject  # noqa: PLC0415

    try:
        with BpfObject(object_path(PROBE_OBJECT)) as obj:
            obj.load()
            obj.program("probe_pass").test_run(bytes(64))
    except (BpfError, OSError) as exc:
        return _first_line(exc)
    return None


def start_kernel(mode: DatapathMode, what: str, start: Callable[[], _T]) -> _T | None:
    """Start the kernel data path of `what` (e.g. "relay on eth0") as `mode` says.

    Returns `start()`'s handle, or None for the Python path (`user`, or `auto` where the kernel
    cannot: then one INFO line says why). Raises DatapathError for `kernel` where it cannot.
    """
    if mode is DatapathMode.USER:
        _log.info("data path: user (--datapath user)")
        return None
    from teredo.io.libbpf import BpfError  # noqa: PLC0415

    try:
        handle = start()
    except (BpfError, OSError) as exc:
        reason = _first_line(exc)
        if mode is DatapathMode.KERNEL:
            raise DatapathError(f"kernel data path for {what}: {reason}") from exc
        if isinstance(exc, BpfError) and exc.log and _log.isEnabledFor(logging.DEBUG):
            _log.debug("libbpf said:%s%s", os.linesep, exc.log)
        _log.info("data path: user (kernel data path unavailable for %s: %s)", what, reason)
        return None
    _log.info("data path: kernel (eBPF) for %s", what)
    return handle


def load_early(mode: DatapathMode, load: Callable[[], _T]) -> Callable[[], _T] | None:
    """Run `load` now, before the privilege drop (loading needs CAP_BPF, and after the drop the
    daemon may no longer even read its interpreter's own modules); None for `user`.

    Returns what `start_kernel`'s `start` gets later, once the daemon knows its interfaces: a
    function that gives the loaded handle or raises the load's error, so that the one log line
    (or the start error of `kernel`) comes from `start_kernel` as for every daemon."""
    if mode is DatapathMode.USER:
        return None
    from teredo.io.libbpf import BpfError  # noqa: PLC0415

    try:
        handle = load()
    except (BpfError, OSError) as exc:
        failure = exc

        def failed() -> _T:
            raise failure

        return failed
    return lambda: handle
