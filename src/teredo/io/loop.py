"""The daemons' event loop: machine timers, signals, the status and metrics sockets, readers.

asyncio serves the control side of every daemon: timers, signals, the control socket, netlink
watches and the rare sockets of the control path, drained by teredo.io.udp.drain (`add_socket`
for the relay's health check; the client's local discovery through `add_reader`). Every
daemon's data path runs in a thread of its own instead (io/datathread.py, for the server, the
client and the relay alike), which feeds the machine under a lock and leaves the timers to
this loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

from teredo.io.control import ControlIdentity, ControlServer
from teredo.io.privileges import PrivilegeError, Target, drop, preload
from teredo.io.sdnotify import Notifier
from teredo.io.udp import DatagramHandler, drain

if TYPE_CHECKING:
    from teredo.io.metrics import MetricsEndpoint, MetricsExporter

EXIT_METRICS_FAILED = 1  # the metrics endpoint asked for cannot be opened
EXIT_PRIVILEGES_FAILED = 1  # --user given and the drop failed: never go on as root


def boottime() -> float:
    """Seconds on a clock that never goes back and keeps counting through suspend.

    The protocol timers (refresh, peer validity, bubble limits) are about the outside world's
    time: after a suspend the NAT mapping may be gone, so time spent asleep must count.
    """
    return time.clock_gettime(time.CLOCK_BOOTTIME)


class Daemon(Protocol):
    """What `DaemonLoop.serve` needs of a daemon: a one-line summary (SIGUSR1 log), its
    structured state (JSON-serialisable, for the control socket) and a way to close."""

    def summary(self) -> str: ...

    def status(self) -> dict[str, object]: ...

    def close(self) -> None: ...


class TimedMachine(Protocol):
    """What the loop needs of a protocol machine that has timers."""

    def next_deadline(self) -> float | None: ...

    def handle_timer(self, now: float) -> None: ...


class DaemonLoop:
    """One asyncio loop with readers, a re-armed machine timer and signal handling."""

    # Upper bound between timer checks, so that a deadline is honoured soon after a suspend
    # even though asyncio's own timers run on a clock that stops while suspended.
    MAX_TIMER_WAIT = 1.0

    def __init__(self, clock: Callable[[], float] = boottime) -> None:
        self.loop = asyncio.new_event_loop()
        self.clock = clock
        self._machines: list[TimedMachine] = []
        self._timer: asyncio.TimerHandle | None = None
        self._exit_status = 0
        # systemd's readiness protocol (no-op outside a Type=notify unit): READY=1 comes from
        # serve() once started, or from the daemon through ready() (the client, when qualified).
        self.notifier = Notifier.from_environment()
        self._drain: Callable[[], float] | None = None
        self._draining = False

    def add_socket(self, sock: socket.socket, handler: DatagramHandler) -> None:
        """Serves a control-path UDP socket: `handler` gets each datagram (bounded per wake-up)."""
        self.loop.add_reader(sock.fileno(), drain, sock, handler)

    def add_reader(self, fd: int, callback: Callable[[], None]) -> None:
        self.loop.add_reader(fd, callback)

    def remove_reader(self, fd: int) -> None:
        self.loop.remove_reader(fd)

    def add_machine(self, machine: TimedMachine) -> None:
        self._machines.append(machine)
        self.rearm()

    def rearm(self) -> None:
        """Re-computes the next wake-up; call after feeding a machine an input."""
        now = self.clock()
        deadlines = [d for m in self._machines if (d := m.next_deadline()) is not None]
        wait = self.MAX_TIMER_WAIT
        if deadlines:
            wait = max(0.0, min(wait, min(deadlines) - now))
        if self._timer is not None:
            self._timer.cancel()
        self._timer = self.loop.call_later(wait, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        now = self.clock()
        for machine in self._machines:
            deadline = machine.next_deadline()
            if deadline is not None and deadline <= now:
                machine.handle_timer(now)
        self.rearm()

    def set_drain(self, drain: Callable[[], float]) -> None:
        """On the first SIGTERM or SIGINT, call `drain` (it withdraws the daemon's anycast
        announcement) and keep serving for the seconds it returns, then stop: traffic already
        on its way still arrives while the routers move the rest elsewhere. A second signal
        stops at once."""
        self._drain = drain

    def _on_stop_signal(self) -> None:
        if self._drain is None or self._draining:
            self.stop()
            return
        self._draining = True
        delay = self._drain()
        if delay > 0:
            self.loop.call_later(delay, self.stop)
        else:
            self.stop()

    def stop(self, status: int = 0) -> None:
        self.notifier.notify_stopping()
        self._exit_status = status
        self.loop.stop()

    def fail_soon(self, why: str, logger: logging.Logger) -> None:
        """From any thread (a data thread's `on_fatal`): the daemon cannot go on, so it says
        why in one line and stops with status 1 (EXIT_FAILED) in the loop's thread. The same
        for every daemon (io/datathread.py, "faults")."""
        logger.error("%s: stopping", why)
        with contextlib.suppress(RuntimeError):  # the loop is closed already
            self.loop.call_soon_threadsafe(self.stop, 1)

    def ready(self, status: str) -> None:
        """The daemon serves: READY=1 to systemd the first time, then STATUS only."""
        self.notifier.notify_ready(status)

    def _reload(self, on_reload: Callable[[], None]) -> None:
        self.notifier.notify_reloading()
        try:
            on_reload()
        finally:
            self.notifier.notify_reloaded()

    def run(self, on_reload: Callable[[], None] | None = None) -> int:
        """Runs until SIGTERM or SIGINT; SIGHUP calls on_reload. Returns the exit status."""
        self.loop.add_signal_handler(signal.SIGTERM, self._on_stop_signal)
        self.loop.add_signal_handler(signal.SIGINT, self._on_stop_signal)
        if on_reload is not None:
            self.loop.add_signal_handler(signal.SIGHUP, self._reload, on_reload)
        try:
            if self._timer is None and self._machines:
                self.rearm()
            self.loop.run_forever()
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                self.loop.remove_signal_handler(sig)
            if self._timer is not None:
                self._timer.cancel()
        return self._exit_status

    def serve(
        self,
        daemon: Daemon,
        log: logging.Logger,
        on_reload: Callable[[], None],
        start: Callable[[], None] | None = None,
        control: ControlIdentity | None = None,
        *,
        metrics: MetricsEndpoint | None = None,
        ready: str | None = "running",
        user: Target | None = None,
    ) -> int:
        """The life of every daemon verb: `start`, then `run` with SIGUSR1 logging the
        daemon's summary, then (however it ends) a last summary and `daemon.close()`.

        With `control`, the daemon's status is served on that abstract Unix socket
        (teredo.io.control) while it runs; a name in use costs one warning, never the daemon.
        With `metrics`, the same status is served as Prometheus metrics (teredo.io.metrics);
        an address that cannot be opened stops the daemon (it was asked for explicitly).
        `ready` is the status systemd shows once started; None when the daemon calls
        `ready()` itself later.
        `user` is whom `drop_privileges` made the daemon: its status socket answers root and
        that user.
        """
        self.loop.add_signal_handler(signal.SIGUSR1, lambda: log.info(daemon.summary()))
        server: ControlServer | None = None
        exporter: MetricsExporter | None = None
        try:
            if control is not None:
                allowed = frozenset({0, os.getuid()} | ({user.uid} if user else set()))
                server = ControlServer(control, daemon.status, self.loop, allowed_uids=allowed)
                problem = server.start()
                if problem is not None:
                    log.warning("%s: running without a status socket", problem)
                    server = None
            if metrics is not None:
                from teredo.io.metrics import MetricsError  # noqa: PLC0415 - only when asked

                try:
                    exporter = self.start_metrics(metrics, daemon)
                except MetricsError as err:
                    log.error("%s", err)
                    return EXIT_METRICS_FAILED
            if start is not None:
                start()
            if ready is not None:
                self.ready(ready)
            return self.run(on_reload=on_reload)
        finally:
            if exporter is not None:
                exporter.close()
            if server is not None:
                server.close()
            self.loop.remove_signal_handler(signal.SIGUSR1)
            log.info("stopping: %s", daemon.summary())
            daemon.close()

    def drop_privileges(self, user: Target | None, log: logging.Logger) -> bool:
        """Becomes `user` (io/privileges.py), before the daemon makes any thread: capabilities
        belong to each thread, so threads started later inherit the reduced set and none keeps
        root's. False (logged) when the drop failed: the daemon must stop, never go on as root.
        The notify socket is connected first: its path may be root's alone."""
        if user is None:
            return True
        preload()
        self.notifier.connect()
        try:
            drop(user)
        except PrivilegeError as err:
            log.error("%s", err)
            return False
        return True

    def start_metrics(self, metrics: MetricsEndpoint, daemon: Daemon) -> MetricsExporter:
        """Serves `daemon`'s status as Prometheus metrics; raises MetricsError."""
        # Imported here: prometheus-client is loaded only by a daemon that serves metrics.
        from teredo.io.metrics import MetricsExporter, loop_documents  # noqa: PLC0415

        documents = loop_documents(self.loop, metrics.identity, daemon.status)
        exporter = MetricsExporter(metrics.address, documents)
        logging.getLogger("teredo").info("Prometheus metrics on http://%s/metrics", metrics.address)
        return exporter

    def close(self) -> None:
        self.loop.close()
