"""The user-space data path of every daemon: one thread, one poll, one policy.

A daemon's Teredo UDP sockets (the client's and the relay's one, the server's two) and its TUN
(none for the server) are read by one thread of their own, which waits in poll(2) for them and
a wake-up pipe and feeds the machine through one explicit interface, `DataTarget` (`feed_udp`:
one feed per socket, `feed_tun`, `after_batch`), under the daemon's lock. The asyncio loop of
the main thread keeps timers, signals, netlink and the control socket (io/loop.py).
Why a thread rather than `add_reader` callbacks: an asyncio wake-up costs about 5 us of Python
more than a bare poll, at the measured rates nearly every datagram is a wake-up of its own,
and one thread never hands the GIL back and forth between two readers (docs/benchmarks.md,
"Client" and "Relay"). The kernel data path (io/datapath.py) replaces this thread where it
runs; its map mirror sits beside this module.

Policies, the same for every daemon:

- reads per wake-up: each ready descriptor is read `want` times at most (its own `want`);
  `want` doubles (up to READ_BATCH) while every read finds a packet and falls back to 1 at the
  first EAGAIN. A
  lone packet costs poll + read (no failing read, no exception); a busy descriptor is read in
  batches without polling in between. One clock read and one lock round per wake-up. A
  datagram longer than `udp_read_size` arrives cut to that size: a daemon that must tell
  (the server) reads one byte more than it handles and its machine drops what fills it;
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
from collections.abc import Callable, Sequence
from typing import Protocol, TypeAlias

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


#: What takes one UDP datagram: (payload, source, now).
FeedUdp: TypeAlias = Callable[[bytes, Address, float], None]
#: What takes one packet read from the TUN: (packet, now).
FeedTun: TypeAlias = Callable[[bytes, float], None]


class DataTarget(Protocol):
    """What the data thread drives. Every member is used with the daemon's lock held.

    `feed_udp[i]` takes the datagrams of the thread's i-th UDP socket, `feed_tun` the TUN's
    packets; both are read once per wake-up (a daemon may point them at another machine
    between two). `after_batch` (None: nothing to do) runs after each wake-up's reads: send
    what was batched, ask the asyncio thread for events or an earlier timer."""

    feed_udp: Sequence[FeedUdp]
    feed_tun: FeedTun
    after_batch: Callable[[], None] | None


def _ignore_tun(packet: bytes, now: float) -> None:
    """The feed_tun of a daemon without a TUN (never called: nothing is read)."""


class Feed:
    """A DataTarget made of callables (a machine's receive_udp and receive_tun); one feed
    for a daemon with one UDP socket, a sequence of them for several."""

    __slots__ = ("after_batch", "feed_tun", "feed_udp")

    def __init__(
        self,
        feed_udp: FeedUdp | Sequence[FeedUdp],
        feed_tun: FeedTun = _ignore_tun,
        after_batch: Callable[[], None] | None = None,
    ) -> None:
        self.feed_udp: Sequence[FeedUdp] = (feed_udp,) if callable(feed_udp) else tuple(feed_udp)
        self.feed_tun = feed_tun
        self.after_batch = after_batch


def fault_site(exc: BaseException) -> str:
    """file:line where `exc` was raised: what tells one fault from another."""
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    return f"{tb.tb_frame.f_code.co_filename}:{tb.tb_lineno}" if tb is not None else "?"


class DataThread:
    """Serves the UDP socket(s) `socks` and `tun_fd` (None: no TUN) for `target` in a thread
    named `name` (see the module docstring); `start` once, `stop` once (it closes the wake-up
    pipe). `on_fatal(why)` and `on_tun_error(fd, exc)` are called in this thread, lock held,
    once each at most: they hand over to the asyncio thread (call_soon_threadsafe) and
    return."""

    def __init__(
        self,
        name: str,
        socks: socket.socket | Sequence[socket.socket],
        tun_fd: int | None,
        target: DataTarget,
        *,
        lock: threading.Lock,
        clock: Callable[[], float] = boottime,
        udp_read_size: int = RECEIVE_SIZE,
        tun_read_size: int = 65535,
        on_fatal: Callable[[str], None],
        on_tun_error: Callable[[int, OSError], None] | None = None,
    ) -> None:
        self._socks = (socks,) if isinstance(socks, socket.socket) else tuple(socks)
        if len(target.feed_udp) != len(self._socks):
            raise ValueError(f"{len(self._socks)} UDP socket(s) and {len(target.feed_udp)} feed(s)")
        if tun_fd is not None and on_tun_error is None:
            raise ValueError("a TUN needs on_tun_error")
        self._tun_fd = -1 if tun_fd is None else tun_fd
        self._udp_read_size = udp_read_size
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
        self._tun_ok = tun_fd is not None  # False once the TUN failed: never polled again
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
        if self._on_tun_error is not None:
            self._on_tun_error(self._tun_fd, exc)

    def _serve(self) -> None:
        """The loop of the module docstring (the hot path, kept flat)."""
        # fd -> (index of the socket and of its feed, its recvfrom); `wants[index]` is its
        # reads-per-wake-up. One dict look-up per ready descriptor, not per datagram.
        udp = {sock.fileno(): (i, sock.recvfrom) for i, sock in enumerate(self._socks)}
        wants = [1] * len(udp)
        tun_fd = self._tun_fd
        wake_fd = self._wake_r
        poller = select.poll()
        for fd in (*udp, tun_fd, wake_fd):
            if fd != tun_fd or self._tun_ok:
                poller.register(fd, select.POLLIN)
        poll = poller.poll
        read = os.read
        udp_size = self._udp_read_size
        tun_size = self._tun_read_size
        clock = self._clock
        lock = self._lock
        target = self._target
        want_tun = 1
        while not self._stopping:
            ready = poll()
            with lock:
                now = clock()
                feeds = target.feed_udp
                feed_tun = target.feed_tun
                for fd, events in ready:
                    got = 0
                    if events & select.POLLNVAL:
                        if fd == tun_fd:
                            self._tun_failed(poller, OSError(errno.EBADF, os.strerror(errno.EBADF)))
                            continue
                        self._fail(f"descriptor {fd} was closed under the data path")
                        return
                    socket_of = udp.get(fd)
                    if socket_of is not None:
                        index, recvfrom = socket_of
                        feed_udp = feeds[index]
                        want = wants[index]
                        while got < want:
                            try:
                                data, source = recvfrom(udp_size)
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
                        wants[index] = min(2 * want, READ_BATCH) if got >= want else 1
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
