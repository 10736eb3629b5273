"""teredo.io.mmsg over the loopback interface: what goes in a batch comes out intact."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator

import pytest

from teredo.io import mmsg

Received = list[tuple[bytes, tuple[str, int]]]


def test_available_on_linux() -> None:
    assert mmsg.available(), "recvmmsg/sendmmsg or the LP64 layouts are missing"


def _udp() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.setblocking(False)
    return sock


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    a, b = _udp(), _udp()
    try:
        yield a, b
    finally:
        a.close()
        b.close()


def _receive_all(receiver: mmsg.BatchReceiver, want: int) -> tuple[Received, int]:
    got: Received = []
    oversized = [0]

    def too_big() -> None:
        oversized[0] += 1

    deadline = time.monotonic() + 5.0
    while len(got) + oversized[0] < want and time.monotonic() < deadline:
        if receiver.receive(lambda d, s: got.append((d, s)), too_big) == 0:
            time.sleep(0.01)
    return got, oversized[0]


def test_a_batch_arrives_whole_and_in_order(pair: tuple[socket.socket, socket.socket]) -> None:
    a, b = pair
    sender = mmsg.BatchSender(a, batch=16)
    payloads = [bytes([i]) * (1 + i * 7) for i in range(40)]  # more than two full batches
    for p in payloads:
        sender.send(p, b.getsockname())
    sender.flush()
    assert sender.errors == 0
    got, oversized = _receive_all(mmsg.BatchReceiver(b, batch=8, size=512), len(payloads))
    assert oversized == 0
    assert [d for d, _ in got] == payloads
    assert {s for _, s in got} == {a.getsockname()}


def test_oversized_datagrams_are_reported_not_delivered(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    a, b = pair
    a.sendto(b"x" * 600, b.getsockname())
    a.sendto(b"small", b.getsockname())
    got, oversized = _receive_all(mmsg.BatchReceiver(b, batch=4, size=512), 2)
    assert oversized == 1
    assert [d for d, _ in got] == [b"small"]


def test_bad_destination_is_counted_and_the_rest_still_sent(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    a, b = pair
    sender = mmsg.BatchSender(a, batch=8)
    sender.send(b"one", b.getsockname())
    sender.send(b"lost", ("not-an-address", 1))
    sender.send(b"two", b.getsockname())
    sender.flush()
    assert sender.errors == 1
    got, _ = _receive_all(mmsg.BatchReceiver(b), 2)
    assert [d for d, _ in got] == [b"one", b"two"]


def test_payloads_larger_than_the_buffer_go_one_by_one(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    a, b = pair
    sender = mmsg.BatchSender(a, batch=4, size=64)  # 256 bytes of batch buffer
    payloads = [b"a" * 200, b"b" * 200]
    for p in payloads:
        sender.send(p, b.getsockname())
    sender.flush()
    got, _ = _receive_all(mmsg.BatchReceiver(b, size=1024), 2)
    assert [d for d, _ in got] == payloads
