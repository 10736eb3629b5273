"""The data thread (io/datathread.py): feeding, stopping, a failing TUN, faults told apart
by where they were raised (each kind is logged once, later ones only counted)."""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import socket
import threading
import time
from collections.abc import Callable

import pytest

from teredo.core.addr import Address
from teredo.io.datathread import DataThread, Feed, fault_site
from teredo.io.loop import DaemonLoop


class _Recorder:
    """A DataTarget: records what the data thread feeds it, and the batches."""

    def __init__(self, fail_on: bytes | None = None) -> None:
        self.udp: list[tuple[bytes, Address]] = []
        self.tun: list[bytes] = []
        self.batches = 0
        self.fail_on = fail_on
        self.feed = Feed(self.on_udp, self.on_tun, self.after)

    def on_udp(self, data: bytes, source: Address, now: float) -> None:
        if data == self.fail_on:
            raise ValueError("a bug met by one packet")
        self.udp.append((data, source))

    def on_tun(self, packet: bytes, now: float) -> None:
        self.tun.append(packet)

    def after(self) -> None:
        self.batches += 1


def _thread(
    sock: socket.socket, tun_fd: int, target: _Recorder, lost: list[tuple[int, int | None]]
) -> DataThread:
    def fatal(why: str) -> None:
        raise AssertionError(f"not fatal here: {why}")

    return DataThread(
        "test-data",
        sock,
        tun_fd,
        target.feed,
        lock=threading.Lock(),
        clock=time.monotonic,
        on_fatal=fatal,
        on_tun_error=lambda fd, exc: lost.append((fd, exc.errno)),
    )


def _wait(done: Callable[[], object], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not done() and time.monotonic() < deadline:
        time.sleep(0.01)


def test_feeds_udp_and_tun_input_then_stops() -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    tun_r, tun_w = os.pipe2(os.O_NONBLOCK)  # a pipe stands in for the TUN descriptor
    target = _Recorder()
    lost: list[tuple[int, int | None]] = []
    try:
        sock.bind(("127.0.0.1", 0))
        sock.setblocking(False)
        sender.bind(("127.0.0.1", 0))
        data = _thread(sock, tun_r, target, lost)
        data.start()
        try:
            for n in range(5):
                sender.sendto(b"datagram %d" % n, sock.getsockname())
                os.write(tun_w, b"\x60packet %d" % n)
                time.sleep(0.01)  # pipe writes would merge: one read per write
            _wait(lambda: len(target.udp) >= 5 and len(target.tun) >= 5)
        finally:
            data.stop()
        assert target.udp == [(b"datagram %d" % n, sender.getsockname()) for n in range(5)]
        assert target.tun == [b"\x60packet %d" % n for n in range(5)]
        assert target.batches >= 1
        sender.sendto(b"after stop", sock.getsockname())
        time.sleep(0.05)
        assert len(target.udp) == 5, "the thread has stopped reading"
        assert lost == []
    finally:
        sock.close()
        sender.close()
        os.close(tun_r)
        os.close(tun_w)


def test_a_fault_is_logged_once_and_the_thread_carries_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    tun_r, tun_w = os.pipe2(os.O_NONBLOCK)
    target = _Recorder(fail_on=b"bad")
    lost: list[tuple[int, int | None]] = []
    try:
        sock.bind(("127.0.0.1", 0))
        sock.setblocking(False)
        sender.bind(("127.0.0.1", 0))
        data = _thread(sock, tun_r, target, lost)
        with caplog.at_level(logging.ERROR, "teredo"):
            data.start()
            try:
                for _ in range(3):
                    sender.sendto(b"bad", sock.getsockname())
                    time.sleep(0.01)
                sender.sendto(b"good", sock.getsockname())
                _wait(lambda: target.udp)
            finally:
                data.stop()
        assert target.udp == [(b"good", sender.getsockname())]
        assert data.faults == 3
        logged = [r for r in caplog.records if "data path" in r.getMessage()]
        assert len(logged) == 1, logged
    finally:
        for s in (sock, sender):
            s.close()
        os.close(tun_r)
        os.close(tun_w)


def test_a_failing_tun_leaves_the_poll_set_and_is_reported_once() -> None:
    """Issue 14: a TUN fd that fails (EBADFD after `ip link del`) must leave the poll set:
    level-triggered, it would wake the thread forever. A connected UDP socket whose peer
    refuses stands in for it (each read then fails with ECONNREFUSED)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    failing = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    closed = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    target = _Recorder()
    lost: list[tuple[int, int | None]] = []
    try:
        for s in (sock, sender, closed):
            s.bind(("127.0.0.1", 0))
        sock.setblocking(False)
        failing.setblocking(False)
        failing.connect(closed.getsockname())
        closed.close()  # nobody listens there any more: sends draw ICMP port unreachable
        data = _thread(sock, failing.fileno(), target, lost)
        data.start()
        try:
            for _ in range(3):
                with contextlib.suppress(OSError):  # the error may be pending here too
                    failing.send(b"x")
                time.sleep(0.05)
            sender.sendto(b"still served", sock.getsockname())
            _wait(lambda: target.udp)
        finally:
            data.stop()
        assert lost == [(failing.fileno(), errno.ECONNREFUSED)]
        assert target.udp == [(b"still served", sender.getsockname())]
    finally:
        for s in (sock, sender, failing):
            s.close()


def _raise_here() -> None:
    raise ValueError("boom")


def test_fault_site_names_the_raising_line() -> None:
    sites = set()
    for _ in range(3):
        try:
            _raise_here()
        except ValueError as exc:
            sites.add(fault_site(exc))
    assert len(sites) == 1
    site = sites.pop()
    assert site.startswith(__file__ + ":")
    assert int(site.rsplit(":", 1)[1]) == _raise_here.__code__.co_firstlineno + 1


def test_fault_site_of_an_exception_never_raised() -> None:
    assert fault_site(ValueError("never raised")) == "?"


def test_several_sockets_and_no_tun_each_socket_to_its_own_feed() -> None:
    """The server's shape: two UDP sockets, no TUN; a datagram goes to the feed of the socket
    it reached, cut to `udp_read_size`."""
    socks = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(2)]
    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    got: list[tuple[int, bytes]] = []

    def feed(index: int) -> Callable[[bytes, Address, float], None]:
        return lambda data, source, now: got.append((index, data))

    try:
        for s in (*socks, sender):
            s.bind(("127.0.0.1", 0))
        for s in socks:
            s.setblocking(False)
        data = DataThread(
            "test-data",
            socks,
            None,
            Feed((feed(0), feed(1))),
            lock=threading.Lock(),
            clock=time.monotonic,
            udp_read_size=8,
            on_fatal=lambda why: None,
        )
        data.start()
        try:
            for n in range(3):
                sender.sendto(b"first %d" % n, socks[0].getsockname())
                sender.sendto(b"second %d" % n, socks[1].getsockname())
            sender.sendto(b"far too long", socks[1].getsockname())
            _wait(lambda: len(got) >= 7)
        finally:
            data.stop()
        assert sorted(got) == sorted(
            [(0, b"first %d" % n) for n in range(3)]
            + [(1, (b"second %d" % n)[:8]) for n in range(3)]
            + [(1, b"far too ")]
        )
        assert data.faults == 0
    finally:
        for s in (*socks, sender):
            s.close()


def test_one_feed_per_socket_is_required() -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        with pytest.raises(ValueError, match="feed"):
            DataThread(
                "test-data",
                (sock, sock),
                None,
                Feed(lambda data, source, now: None),
                lock=threading.Lock(),
                on_fatal=lambda why: None,
            )
        with pytest.raises(ValueError, match="on_tun_error"):
            DataThread(
                "test-data",
                sock,
                0,
                Feed(lambda data, source, now: None),
                lock=threading.Lock(),
                on_fatal=lambda why: None,
            )
    finally:
        sock.close()


def test_a_socket_closed_under_the_thread_stops_the_daemon_with_status_1(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The fatal half of the fault policy, as every daemon wires it (DaemonLoop.fail_soon):
    one line saying why, then the loop stops with status 1."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.setblocking(False)
    loop = DaemonLoop()
    logger = logging.getLogger("teredo.test")
    data = DataThread(
        "test-data",
        sock,
        None,
        Feed(lambda data, source, now: None),
        lock=threading.Lock(),
        on_fatal=lambda why: loop.fail_soon(why, logger),
    )
    try:
        data.start()
        # Closed under the thread: its next poll reports POLLNVAL for the descriptor.
        loop.loop.call_later(0.05, sock.close)
        loop.loop.call_later(0.06, os.write, data._wake_w, b"x")  # its wake-up pipe: a new poll
        loop.loop.call_later(10.0, loop.stop, 99)  # bound: the test fails, not hangs
        with caplog.at_level(logging.ERROR, "teredo.test"):
            assert loop.run() == 1
    finally:
        data.stop()
        loop.close()
        sock.close()
    assert any("was closed under the data path: stopping" in r.getMessage() for r in caplog.records)
