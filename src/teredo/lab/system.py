"""Thin wrappers over `ip netns`, `ip` and process control, used by the lab only.

Everything here acts on namespaces whose names start with a validated prefix, and on processes by
PID (checked against the start time recorded with it, so a recycled PID is never signalled).
"""

from __future__ import annotations

import os
import re
import select
import signal
import subprocess
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

IFNAMSIZ = 15  # Linux interface names: at most 15 bytes


class LabError(Exception):
    """The lab could not be built, driven or taken down; the message says what and where."""


_PREFIX_RE = re.compile(r"^[a-z][a-z0-9]{0,7}-$")


def check_prefix(prefix: str) -> str:
    """A lab prefix: short, lowercase, ending in '-' (so 'tdo-' never owns 'tdox...')."""
    if not prefix or not prefix.endswith("-"):
        raise LabError(f"lab prefix {prefix!r} must be non-empty and end in '-'")
    if not _PREFIX_RE.match(prefix):
        raise LabError(
            f"lab prefix {prefix!r} must be a lowercase letter, up to 7 letters or digits, then '-'"
        )
    return prefix


def run(
    argv: Sequence[str],
    *,
    timeout: float = 30.0,
    check: bool = True,
    input_text: str | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run a command to completion (bounded by `timeout`) and capture its output."""
    try:
        proc = subprocess.run(
            list(argv),
            input=input_text,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise LabError(f"{' '.join(argv)}: no answer after {timeout} s") from exc
    except FileNotFoundError as exc:
        raise LabError(f"{argv[0]}: command not found") from exc
    if check and proc.returncode != 0:
        detail = (proc.stderr or proc.stdout).strip()
        raise LabError(f"{' '.join(argv)}: exit status {proc.returncode}: {detail}")
    return proc


def list_namespaces() -> list[str]:
    """Names of all network namespaces known to `ip netns`."""
    out = run(["ip", "netns", "list"]).stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def namespaces_with_prefix(prefix: str) -> list[str]:
    check_prefix(prefix)
    return sorted(ns for ns in list_namespaces() if ns.startswith(prefix))


def namespace_pids(ns: str) -> list[int]:
    """PIDs of the processes living in namespace `ns` (empty when it does not exist)."""
    proc = run(["ip", "netns", "pids", ns], check=False)
    if proc.returncode != 0:
        return []
    return [int(tok) for tok in proc.stdout.split() if tok.isdigit()]


def delete_namespace(ns: str, prefix: str) -> None:
    if not ns.startswith(check_prefix(prefix)):
        raise LabError(f"refusing to delete namespace {ns!r}: not under prefix {prefix!r}")
    run(["ip", "netns", "delete", ns], check=False)


def ip_batch(ns: str, commands: Iterable[str]) -> None:
    """Run several `ip` commands inside `ns` in one process (fast: one fork for many changes)."""
    text = "\n".join(commands) + "\n"
    run(["ip", "-n", ns, "-batch", "-"], input_text=text)


# --- processes ---------------------------------------------------------------------------------


def said_ready(proc: subprocess.Popen[bytes], timeout: float) -> bool:
    """True once `proc` (started with stdout=PIPE) prints its "ready" line within `timeout`
    seconds: the lab's helper processes print it after binding their sockets."""
    if proc.stdout is None:
        return False
    r, _, _ = select.select([proc.stdout], [], [], timeout)
    return bool(r) and proc.stdout.readline().strip() == b"ready"


def start_time(pid: int) -> int | None:
    """The kernel start time of `pid` (clock ticks since boot), or None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as fh:
            data = fh.read()
    except OSError:
        return None
    # The command name (field 2) may contain spaces and parentheses: split after the last ')'.
    fields = data[data.rfind(")") + 2 :].split()
    if fields and fields[0] == "Z":
        return None  # a zombie has exited; only its parent can reap it
    try:
        return int(fields[19])
    except (IndexError, ValueError):
        return None


def children(pid: int) -> list[int]:
    """Direct children of `pid` (all threads), from /proc."""
    result: list[int] = []
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return result
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/children", encoding="ascii") as fh:
                result.extend(int(tok) for tok in fh.read().split())
        except (OSError, ValueError):
            continue
    return result


def descendants(pid: int, limit: int = 256) -> list[int]:
    """All descendants of `pid`, breadth first, at most `limit` of them."""
    seen: list[int] = []
    todo = [pid]
    while todo and len(seen) < limit:
        for child in children(todo.pop(0)):
            if child not in seen:
                seen.append(child)
                todo.append(child)
    return seen


@dataclass(frozen=True)
class ProcRecord:
    """A process the lab started: enough to find it again from another process and stop it."""

    name: str
    host: str
    pid: int
    start_time: int
    argv: tuple[str, ...]
    log: str = ""
    role: str = ""
    impl: str = ""

    def alive(self) -> bool:
        return start_time(self.pid) == self.start_time

    def to_json(self) -> dict[str, object]:
        return {
            "name": self.name,
            "host": self.host,
            "pid": self.pid,
            "start_time": self.start_time,
            "argv": list(self.argv),
            "log": self.log,
            "role": self.role,
            "impl": self.impl,
        }

    @classmethod
    def from_json(cls, data: dict[str, object]) -> ProcRecord:
        argv = data.get("argv", [])
        return cls(
            name=str(data["name"]),
            host=str(data["host"]),
            pid=int(str(data["pid"])),
            start_time=int(str(data["start_time"])),
            argv=tuple(str(a) for a in argv) if isinstance(argv, list) else (),
            log=str(data.get("log", "")),
            role=str(data.get("role", "")),
            impl=str(data.get("impl", "")),
        )


def kill_pids(pids: dict[int, int], grace: float = 3.0) -> list[int]:
    """Stop processes given as {pid: start_time}: SIGTERM, then SIGKILL after `grace` seconds.

    Only a process whose start time still matches is signalled. Returns the PIDs still alive at
    the end (normally none).
    """

    def live() -> list[int]:
        return [pid for pid, st in pids.items() if start_time(pid) == st]

    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 2.0)):
        targets = live()
        if not targets:
            return []
        for pid in targets:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                continue
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline and live():
            time.sleep(0.05)
    return live()
