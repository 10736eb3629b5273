"""The driver kit (io/driver.py): start errors, clean-up order, the timer adapter, reloads."""

from __future__ import annotations

import errno
import logging
import socket
import threading
from dataclasses import dataclass

import pytest

from teredo.core.config import ConfigError
from teredo.io.driver import (
    LockedTimer,
    Reload,
    StartError,
    Undo,
    bind_error,
    bind_udp,
    changed,
    reload_handler,
)


def test_bind_errors_read_the_same_for_every_daemon() -> None:
    taken = OSError(errno.EADDRINUSE, "Address already in use")
    assert bind_error("192.0.2.1", 3544, taken) == "UDP port 3544 of 192.0.2.1 is taken"
    absent = OSError(errno.EADDRNOTAVAIL, "Cannot assign requested address")
    assert bind_error("192.0.2.1", 0, absent) == "192.0.2.1 is not an address of this host"
    other = OSError(errno.EACCES, "Permission denied")
    assert bind_error("0.0.0.0", 80, other) == "cannot bind UDP 0.0.0.0:80: Permission denied"


def test_bind_udp_turns_a_taken_port_into_a_start_error() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as holder:
        holder.bind(("127.0.0.1", 0))
        port = holder.getsockname()[1]
        with pytest.raises(StartError, match=f"UDP port {port} of 127.0.0.1 is taken"):
            bind_udp("127.0.0.1", port)
    bind_udp("127.0.0.1", port).close()  # free again


def test_undo_runs_last_first_once_and_past_failures() -> None:
    done: list[str] = []
    undo = Undo()
    undo.push(lambda: done.append("socket"))

    def fails() -> None:
        done.append("interface")
        raise OSError(errno.ENODEV, "gone")

    undo.push(fails)
    undo.push(lambda: done.append("thread"))
    undo.close()
    undo.close()
    assert done == ["thread", "interface", "socket"]


class _Machine:
    def __init__(self) -> None:
        self.deadline: float | None = 5.0
        self.expired: list[float] = []

    def next_deadline(self) -> float | None:
        return self.deadline

    def handle_timer(self, now: float) -> None:
        self.expired.append(now)
        self.deadline = None


def test_locked_timer_runs_the_expiry_under_the_lock_and_the_rest_after() -> None:
    lock = threading.Lock()
    machine: _Machine | None = None
    seen: list[tuple[str, bool]] = []

    def under(m: _Machine) -> int:
        seen.append(("under", lock.locked()))
        return len(m.expired)

    def after(count: int) -> None:
        seen.append((f"after {count}", lock.locked()))

    timer = LockedTimer(lambda: machine, lock, under_lock=under, after=after)
    assert timer.next_deadline() is None  # no machine yet
    timer.handle_timer(1.0)
    assert seen == []
    machine = _Machine()
    assert timer.next_deadline() == 5.0
    assert timer.armed == 5.0
    timer.handle_timer(5.0)
    assert machine.expired == [5.0]
    assert seen == [("under", True), ("after 1", False)]
    assert timer.next_deadline() is None
    assert timer.armed is None


def test_reload_lines() -> None:
    assert Reload().line() == "reloaded: nothing changed"
    assert Reload(applied=("MTU 1400", "RelayType cone")).line() == (
        "reloaded: MTU 1400, RelayType cone"
    )
    assert Reload(restart="a new interface name").line() == (
        "not reloaded: a new interface name needs a restart"
    )
    assert Reload(failed="MTU not changed: EPERM").line() == "not reloaded: MTU not changed: EPERM"


@dataclass(frozen=True)
class _Params:
    mtu: int = 1280
    prefix: bytes = b"\x20\x01\x00\x00"


def test_changed_names_the_fields_that_differ() -> None:
    assert changed(_Params(), _Params()) == ()
    assert changed(_Params(), _Params(mtu=1400)) == ("mtu",)


def test_reload_handler_logs_one_line(caplog: pytest.LogCaptureFixture) -> None:
    logger = logging.getLogger("teredo.test-driver")
    results = iter([Reload(applied=("mtu",)), Reload(restart="a new server address")])

    def load() -> int:
        return 1

    def broken() -> int:
        raise ConfigError("teredo.conf", 3, "ServerAddress", "not an address")

    with caplog.at_level(logging.INFO, logger.name):
        reload_handler(logger, load, lambda _new: next(results))()
        reload_handler(logger, load, lambda _new: next(results))()
        reload_handler(logger, broken, lambda _new: Reload())()
    assert [(r.levelname, r.getMessage()) for r in caplog.records] == [
        ("INFO", "configuration reloaded: mtu"),
        ("ERROR", "configuration not reloaded: a new server address needs a restart"),
        ("ERROR", "configuration not reloaded: teredo.conf:3: ServerAddress: not an address"),
    ]
