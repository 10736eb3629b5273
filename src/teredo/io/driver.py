"""The driver kit: what the server, client and relay drivers share around their machines.

Each driver (io/server_driver.py, io/client_driver.py, io/relay_driver.py) runs one sans-I/O
machine on real sockets. They start, reload, time and close the same way, with these pieces:

- `StartError` and `bind_udp`: a daemon that cannot start says so in one line, and a bind that
  fails reads the same for all three (the address is not ours, the port is taken, other);
- `Undo`: what was set up is taken down in reverse order (LIFO), each step once, whatever fails;
- `LockedTimer`: the machine's timer as DaemonLoop sees it, under the data path's lock;
- `Reload` and `reload_handler`: what a SIGHUP changed, or why it needs a restart, logged in
  one form by every daemon (docs/operate.md, "Reload").
"""

from __future__ import annotations

import errno
import logging
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Generic, Protocol, TypeVar

from teredo.core.config import ConfigError
from teredo.io.udp import open_udp_socket

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

_T = TypeVar("_T")

log = logging.getLogger("teredo")


class StartError(RuntimeError):
    """The daemon cannot start; the message is the one line the operator reads."""


def bind_udp(address: str, port: int, *, reuse_port: bool = False) -> socket.socket:
    """`open_udp_socket`, with the reason a bind fails said in one line (StartError)."""
    try:
        return open_udp_socket(address, port, reuse_port=reuse_port)
    except OSError as exc:
        raise StartError(bind_error(address, port, exc)) from None


def bind_error(address: str, port: int, exc: OSError) -> str:
    """The one line for a failed bind of UDP `address`:`port`."""
    if exc.errno == errno.EADDRNOTAVAIL:
        return f"{address} is not an address of this host"
    if exc.errno == errno.EADDRINUSE:
        return f"UDP port {port} of {address} is taken"
    return f"cannot bind UDP {address}:{port}: {exc.strerror or exc}"


class Undo:
    """Clean-up steps, run last-in first-out by `close` (each once; a failing step is logged
    at debug level and the others still run). Push a step right after what it undoes."""

    __slots__ = ("_steps",)

    def __init__(self) -> None:
        self._steps: list[Callable[[], object]] = []

    def push(self, step: Callable[[], object]) -> None:
        self._steps.append(step)

    def close(self) -> None:
        while self._steps:
            step = self._steps.pop()
            try:
                step()
            except (OSError, ValueError, RuntimeError):
                log.debug("error while closing", exc_info=True)


class _Timed(Protocol):
    def next_deadline(self) -> float | None: ...

    def handle_timer(self, now: float) -> None: ...


_S = TypeVar("_S")
_M = TypeVar("_M", bound=_Timed)


class LockedTimer(Generic[_M, _T]):
    """A machine's timer as DaemonLoop sees it (a TimedMachine), under the data path's lock.

    `machine()` is the machine now (None while there is none: the client before its server
    resolves). After each expiry `under_lock(machine)` runs with the lock still held (flush the
    output, take the events) and its result goes to `after` once the lock is released (slow
    work: netlink, the hook, freeing memory). `armed` is the deadline the loop last armed for:
    the data path asks the loop to re-arm only for an earlier one.
    """

    __slots__ = ("_after", "_lock", "_machine", "_under_lock", "armed")

    def __init__(
        self,
        machine: Callable[[], _M | None],
        lock: threading.Lock,
        *,
        under_lock: Callable[[_M], _T],
        after: Callable[[_T], None],
    ) -> None:
        self._machine = machine
        self._lock = lock
        self._under_lock = under_lock
        self._after = after
        self.armed: float | None = None

    def next_deadline(self) -> float | None:
        # The loop asks this when it arms its timer: what it answers is what is armed.
        with self._lock:
            machine = self._machine()
            deadline = machine.next_deadline() if machine is not None else None
        self.armed = deadline
        return deadline

    def handle_timer(self, now: float) -> None:
        with self._lock:
            machine = self._machine()
            if machine is None:
                return
            machine.handle_timer(now)
            result = self._under_lock(machine)
        # The loop re-arms itself after this call (and asks next_deadline then).
        self._after(result)


@dataclass(frozen=True, slots=True)
class Reload:
    """What a daemon's `reload` did with new settings (SIGHUP), in one form for all three.

    `applied`: the changes now in force, in words ("MTU 1400"); empty when nothing changed.
    `restart`: set when nothing was applied because a change needs a restart (what it is);
    the daemon runs on as it was. `failed`: set when applying failed (what could not be done,
    and whether the daemon stops for it).
    """

    applied: tuple[str, ...] = ()
    restart: str | None = None
    failed: str | None = None

    def line(self) -> str:
        """The log line (after "configuration ")."""
        if self.failed is not None:
            return f"not reloaded: {self.failed}"
        if self.restart is not None:
            return f"not reloaded: {self.restart} needs a restart"
        return "reloaded: " + (", ".join(self.applied) if self.applied else "nothing changed")


#: What every daemon answers when a SIGHUP brings a new `Datapath`: the kernel programs are
#: loaded before the privilege drop (io/datapath.py load_early), so only a new process can load
#: or unload them.
DATAPATH_RESTART = Reload(restart="a new data path (Datapath)")


def changed(old: DataclassInstance, new: DataclassInstance) -> tuple[str, ...]:
    """The fields of two settings dataclasses of one type that differ, by name."""
    return tuple(f.name for f in fields(old) if getattr(old, f.name) != getattr(new, f.name))


def reload_handler(
    logger: logging.Logger, load: Callable[[], _S], apply: Callable[[_S], Reload]
) -> Callable[[], None]:
    """The SIGHUP handler of a daemon: load the settings again (a broken file keeps the
    running configuration, said in one line) and apply them, logging the Reload."""

    def reload() -> None:
        try:
            fresh = load()
        except ConfigError as err:
            logger.error("configuration not reloaded: %s", err)
            return
        result = apply(fresh)
        level = logging.INFO if result.restart is None and result.failed is None else logging.ERROR
        logger.log(level, "configuration %s", result.line())

    return reload
