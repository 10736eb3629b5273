"""Taking a lab down, also from another process (`teredo lab down`) or after a crash.

What goes, in order: the recorded processes and their descendants, any process still inside
one of the prefix's namespaces (it can only have been started there through this lab), the
namespaces themselves (which removes their veths and bridges), the state directory. A teardown
that has begun finishes even when Ctrl-C is pressed again.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import signal
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path

from teredo.lab import system
from teredo.lab.system import ProcRecord

STATE_ROOT = Path("/run/teredo-lab")


def stop_records(records: Sequence[ProcRecord]) -> list[int]:
    targets: dict[int, int] = {}
    for rec in records:
        if not rec.alive():
            continue
        targets[rec.pid] = rec.start_time
        # Daemons fork helpers (Miredo: an unprivileged child, miredo-privproc, the client hook);
        # they are ours because they descend from a PID we recorded.
        for pid in system.descendants(rec.pid):
            st = system.start_time(pid)
            if st is not None:
                targets[pid] = st
    return system.kill_pids(targets)


def cleanup(prefix: str, state_root: Path = STATE_ROOT, *, keep_logs: bool = False) -> list[str]:
    """Take down whatever is recorded or exists under `prefix`; returns what could not be removed.

    Order: recorded processes (and their descendants), then any process still inside one of the
    prefix's namespaces (it can only have been started there through this lab), then the
    namespaces themselves (which removes their veths and bridges), then the state directory.
    """
    system.check_prefix(prefix)
    state_dir = state_root / prefix.rstrip("-")
    leftovers: list[str] = []
    records: list[ProcRecord] = []
    with contextlib.suppress(OSError, ValueError, KeyError):
        state = json.loads((state_dir / "state.json").read_text(encoding="utf-8"))
        records = [ProcRecord.from_json(r) for r in state.get("procs", [])]
    leftovers += [f"process {pid}" for pid in stop_records(records)]
    namespaces = system.namespaces_with_prefix(prefix)
    stray: dict[int, int] = {}
    for ns in namespaces:
        for pid in system.namespace_pids(ns):
            st = system.start_time(pid)
            if st is not None:
                stray[pid] = st
    leftovers += [f"process {pid}" for pid in system.kill_pids(stray)]
    for ns in namespaces:
        system.delete_namespace(ns, prefix)
    leftovers += [f"namespace {ns}" for ns in system.namespaces_with_prefix(prefix)]
    if state_dir.exists():
        if keep_logs:
            for path in state_dir.iterdir():
                if path.suffix != ".log":
                    path.unlink(missing_ok=True)
        else:
            shutil.rmtree(state_dir, ignore_errors=True)
    return leftovers


@contextlib.contextmanager
def sigint_deferred() -> Iterator[None]:
    """Let a teardown finish even if Ctrl-C is pressed again meanwhile (re-raised after)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    hit: list[int] = []

    def note(signum: int, _frame: object) -> None:
        hit.append(signum)

    old_int = signal.signal(signal.SIGINT, note)
    old_term = signal.signal(signal.SIGTERM, note)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, old_int)
        signal.signal(signal.SIGTERM, old_term)
    if hit:
        raise KeyboardInterrupt
