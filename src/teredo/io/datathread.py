"""The user-space data path of the client and the relay: one thread, one poll, one policy.

A daemon's Teredo UDP socket and its TUN are read by one thread of their own, which waits in
poll(2) for them and a wake-up pipe and feeds the machine through one explicit interface,
`DataTarget` (`feed_udp`, `feed_tun`, `after_batch`), under the daemon's lock. The asyncio
loop of the main thread keeps timers, signals, netlink and the control socket (io/loop.py).
Why a thread rather than `add_reader` callbacks: an asyncio wake-up costs about 5 us of Python
more than a bare poll, at the measured rates nearly every datagram is a wake-up of its own,
and one thread never hands the GIL back and forth between two readers (docs/benchmarks.md,
"Client" and "Relay"). The kernel data path (io/datapath.py) replaces this thread where it
runs; its map mirror sits beside this module.

Policies, the same for every daemon:

- reads per wake-up: each ready descriptor is read `want` times at most; `want` doubles (up
  to READ_BATCH) while every read finds a packet and falls back to 1 at the first EAGAIN. A
  lone packet costs poll + read (no failing read, no exception); a busy descriptor is read in
  batches without polling in between. One clock read and one lock round per wake-up;
- faults: a bug met while handling one packet is logged once per kind (exception type and
  place), counted in `faults`, and the thread carries on; a socket that cannot be read any
  more stops the daemon (`on_fatal`); a TUN that fails (EBADFD once `ip link del` took the
  interface) leaves the poll set at once (level-triggered, it would wake the thread forever)
  and is reported once (`on_tun_error`).
"""

from __future__ import annotations

import contextlib
import errno
import functools
import logging
import os
import select
import socket
import threading
import time
from collections.abc import Callable
from typing import Protocol

from teredo.core.addr import Address
from teredo.io.loop import boottime
from teredo.io.udp import RECEIVE_SIZE

log = logging.getLogger("teredo")

#: Packets read from one descriptor at most before the others get their turn.
READ_BATCH = 256
#: How long `stop` waits for the thread to notice that it must stop.
STOP_TIMEOUT = 5.0
#: Kinds of fault logged with their traceback; later kinds are only counted.
MAX_FAULT_KINDS = 64
#: Errors after which the UDP socket cannot be read any more.
_FATAL_ERRNOS = frozenset((errno.EBADF, errno.EFAULT, errno.ENOTSOCK, errno.EINVAL, errno.EBADFD))


class DataTarget(Protocol):
    """What the data thread drives. Every member is used with the daemon's lock held.

    `feed_udp` and `feed_tun` are read once per wake-up (a daemon may point them at another
    machine between two); `after_batch` (None: nothing to do) runs after each wake-up's reads:
    send what was batched, ask the asyncio thread for events or an earlier timer."""

    feed_udp: Callable[[bytes, Address, float], None]
    feed_tun: Callable[[bytes, float], None]
    after_batch: Callable[[], None] | None


class Feed:
    """A DataTarget made of three callables (a machine's receive_udp and receive_tun)."""

    __slots__ = ("after_batch", "feed_tun", "feed_udp")

    def __init__(
        self,
        feed_udp: Callable[[bytes, Address, float], None],
        feed_tun: Callable[[bytes, float], None],
        after_batch: Callable[[], None] | None = None,
    ) -> None:
        self.feed_udp = feed_udp
        self.feed_tun = feed_tun
        self.after_batch = after_batch


def fault_site(exc: BaseException) -> str:
    """file:line where `exc` was raised: what tells one fault from another."""
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    return f"{tb.tb_frame.f_code.co_filename}:{tb.tb_lineno}" if tb is not None else "?"


class DataThread:
    """Serves `sock` and `tun_fd` for `target` in a thread named `name` (see the module
    docstring); `start` once, `stop` once (it closes the wake-up pipe). `on_fatal(why)` and
    `on_tun_error(fd, exc)` are called in this thread, lock held, once each at most: they
    hand over to the asyncio thread (call_soon_threadsafe) and return."""

    def __init__(
        self,
        name: str,
        sock: socket.socket,
        tun_fd: int,
        target: DataTarget,
        *,
        lock: threading.Lock,
        clock: Callable[[], float] = boottime,
        tun_read_size: int = 65535,
        on_fatal: Callable[[str], None],
        on_tun_error: Callable[[int, OSError], None],
    ) -> None:
        self._sock = sock
        self._tun_fd = tun_fd
        self._target = target
        self._lock = lock
        # A partial of the C function: no Python frame per clock read.
        self._clock = (
            functools.partial(time.clock_gettime, time.CLOCK_BOOTTIME)
            if clock is boottime
            else clock
        )
        self._tun_read_size = tun_read_size
        self._on_fatal = on_fatal
        self._on_tun_error = on_tun_error
        self._stopping = False
        self._tun_ok = True  # False once the TUN failed: never polled again
        self.faults = 0
        self._fault_kinds: set[str] = set()
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Wakes the thread through its pipe, waits for it (bounded), closes the pipe."""
        self._stopping = True
        with contextlib.suppress(OSError):
            os.write(self._wake_w, b"x")
        if self._thread.is_alive():
            self._thread.join(STOP_TIMEOUT)
            if self._thread.is_alive():
                log.warning("the data thread %s did not stop", self._thread.name)
        os.close(self._wake_r)
        os.close(self._wake_w)

    def _run(self) -> None:
        while not self._stopping:
            try:
                self._serve()
            except Exception as exc:
                # Logged once per kind of fault, then only counted: a packet that trips a bug
                # must not turn into a log line per packet, nor into a dead daemon.
                self.faults += 1
                kind = f"{type(exc).__name__} at {fault_site(exc)}"
                if kind not in self._fault_kinds and len(self._fault_kinds) < MAX_FAULT_KINDS:
                    self._fault_kinds.add(kind)
                    log.exception("error in the data path (packet dropped; logged once)")

    def _fail(self, why: str) -> None:
        if not self._stopping:
            self._stopping = True
            self._on_fatal(why)

    def _tun_failed(self, poller: select.poll, exc: OSError) -> None:
        self._tun_ok = False
        with contextlib.suppress(KeyError):
            poller.unregister(self._tun_fd)
        self._on_tun_error(self._tun_fd, exc)

    def _serve(self) -> None:
        """The loop of the module docstring (the hot path, kept flat)."""
        udp_fd = self._sock.fileno()
        tun_fd = self._tun_fd
        wake_fd = self._wake_r
        poller = select.poll()
        for fd in (udp_fd, tun_fd, wake_fd):
            if fd != tun_fd or self._tun_ok:
                poller.register(fd, select.POLLIN)
        poll = poller.poll
        recvfrom = self._sock.recvfrom
        read = os.read
        tun_size = self._tun_read_size
        clock = self._clock
        lock = self._lock
        target = self._target
        want_udp = want_tun = 1
        while not self._stopping:
            ready = poll()
            with lock:
                now = clock()
                feed_udp = target.feed_udp
                feed_tun = target.feed_tun
                for fd, events in ready:
                    got = 0
                    if events & select.POLLNVAL:
                        if fd == tun_fd:
                            self._tun_failed(poller, OSError(errno.EBADF, os.strerror(errno.EBADF)))
                            continue
                        self._fail(f"descriptor {fd} was closed under the data path")
                        return
                    if fd == udp_fd:
                        while got < want_udp:
                            try:
                                data, source = recvfrom(RECEIVE_SIZE)
                            except (BlockingIOError, InterruptedError):
                                break
                            except OSError as exc:
                                if exc.errno in _FATAL_ERRNOS:
                                    self._fail(f"cannot read the UDP socket: {exc}")
                                    return
                                got += 1  # a queued ICMP error about an earlier send
                                continue
                            feed_udp(data, source, now)
                            got += 1
                        want_udp = min(2 * want_udp, READ_BATCH) if got >= want_udp else 1
                    elif fd == tun_fd:
                        while got < want_tun:
                            try:
                                packet = read(tun_fd, tun_size)
                            except (BlockingIOError, InterruptedError):
                                break
                            except OSError as exc:
                                self._tun_failed(poller, exc)
                                break
                            feed_tun(packet, now)
                            got += 1
                        want_tun = min(2 * want_tun, READ_BATCH) if got >= want_tun else 1
                    else:
                        with contextlib.suppress(OSError):
                            read(wake_fd, 64)
                        if self._stopping:
                            return
                after = target.after_batch
                if after is not None:
                    after()
