"""The control socket (teredo.io.control) on abstract names in the test process (no root).

Each test uses a name unique to this process and test, so parallel runs and other tests'
daemons never collide; the loop runs in a thread and the test queries it as `teredo status`
would.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from teredo import __version__
from teredo.io.control import (
    MAX_NAME_BYTES,
    ControlIdentity,
    ControlServer,
    QueryError,
    check_name,
    default_name,
    listening_names,
    query,
)
from teredo.io.loop import DaemonLoop


def unique_name(tag: str) -> str:
    return f"teredo/test/{os.getpid()}/{tag}-{uuid.uuid4().hex[:8]}"


class LoopThread:
    """An asyncio loop served by a thread; servers are started before and closed after it."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def server(
        self, name: str, status: Callable[[], dict[str, object]], **kwargs: object
    ) -> ControlServer:
        return ControlServer(
            ControlIdentity(name, "client", interface="teredo"),
            status,
            self.loop,
            **kwargs,  # type: ignore[arg-type]
        )

    def call(self, fn: Callable[[], object]) -> object:
        """Runs fn in the loop's thread (add_reader is not thread-safe) and returns its result."""
        if not self._thread.is_alive():
            return fn()
        done = threading.Event()
        box: list[object] = []

        def wrapper() -> None:
            box.append(fn())
            done.set()

        self.loop.call_soon_threadsafe(wrapper)
        assert done.wait(5.0), "the loop thread did not run the call"
        return box[0]

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        if self._thread.is_alive():
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(5.0)
        self.loop.close()


@pytest.fixture
def loop_thread() -> Iterator[LoopThread]:
    lt = LoopThread()
    try:
        yield lt
    finally:
        lt.stop()


def test_names() -> None:
    assert default_name("client", "teredo") == "teredo/client/teredo"
    assert default_name("relay", "tr0") == "teredo/relay/tr0"
    assert default_name("server") == "teredo/server"
    assert default_name("server", worker=3) == "teredo/server/3"
    assert check_name("teredo/client/teredo") is None
    assert check_name("") is not None
    assert check_name("a\0b") is not None
    assert check_name("x" * MAX_NAME_BYTES) is None
    assert check_name("x" * (MAX_NAME_BYTES + 1)) is not None


def test_client_gets_the_document(loop_thread: LoopThread) -> None:
    name = unique_name("doc")
    calls = [0]

    def status() -> dict[str, object]:
        calls[0] += 1
        return {"state": "qualified", "calls": calls[0], "drops": {"loop": 2}}

    server = loop_thread.server(name, status)
    assert server.start() is None
    assert server.listening
    loop_thread.start()
    try:
        before = time.time()
        first = query(name)
        second = query(name)
    finally:
        loop_thread.call(server.close)
    assert first["role"] == "client"
    assert first["interface"] == "teredo"
    assert first["pid"] == os.getpid()
    assert first["version"] == __version__
    assert first["control"] == name
    assert "worker" not in first
    started = first["started"]
    assert isinstance(started, float)
    assert started <= before + 0.01
    assert isinstance(first["uptime"], float)
    assert first["uptime"] >= 0
    # status() is asked at every connection: the document is live.
    assert first["status"] == {"state": "qualified", "calls": 1, "drops": {"loop": 2}}
    second_status = second["status"]
    assert isinstance(second_status, dict)
    assert second_status["calls"] == 2
    assert server.served == 2


def test_second_server_on_the_same_name_reports_in_use(loop_thread: LoopThread) -> None:
    name = unique_name("dup")
    first = loop_thread.server(name, lambda: {"who": "first"})
    second = loop_thread.server(name, lambda: {"who": "second"})
    assert first.start() is None
    problem = second.start()
    assert problem is not None
    assert "in use" in problem
    assert name in problem
    assert not second.listening
    loop_thread.start()
    try:
        assert query(name)["status"] == {"who": "first"}
    finally:
        loop_thread.call(first.close)
        second.close()  # harmless on a server that never listened


def test_failing_status_still_answers_with_an_error(loop_thread: LoopThread) -> None:
    name = unique_name("err")
    calls = [0]

    def status() -> dict[str, object]:
        calls[0] += 1
        if calls[0] == 1:
            raise RuntimeError("peer table on fire")
        return {"calls": calls[0]}

    server = loop_thread.server(name, status)
    assert server.start() is None
    loop_thread.start()
    try:
        broken = query(name)
        healthy = query(name)  # the loop survived the failure
    finally:
        loop_thread.call(server.close)
    error = broken["error"]
    assert isinstance(error, str)
    assert "RuntimeError" in error
    assert "peer table on fire" in error
    assert broken["status"] == {}
    assert broken["role"] == "client"
    assert "error" not in healthy
    assert healthy["status"] == {"calls": 2}


def test_unserialisable_status_still_gives_json(loop_thread: LoopThread) -> None:
    name = unique_name("json")
    server = loop_thread.server(name, lambda: {"odd": {1, 2}})
    assert server.start() is None
    loop_thread.start()
    try:
        doc = query(name)
    finally:
        loop_thread.call(server.close)
    assert "not serialisable" in str(doc["error"])
    assert isinstance(doc["status"], dict)


def test_close_frees_the_name(loop_thread: LoopThread) -> None:
    name = unique_name("close")
    server = loop_thread.server(name, lambda: {"n": 1})
    assert server.start() is None
    assert name in listening_names(prefix=name)
    loop_thread.start()
    assert query(name)["status"] == {"n": 1}
    loop_thread.call(server.close)
    assert not server.listening
    assert name not in listening_names(prefix=name)
    with pytest.raises(QueryError, match="no daemon listening"):
        query(name)
    again = loop_thread.server(name, lambda: {"n": 2})
    assert loop_thread.call(again.start) is None
    try:
        assert query(name)["status"] == {"n": 2}
    finally:
        loop_thread.call(again.close)


def test_other_users_get_nothing(loop_thread: LoopThread) -> None:
    name = unique_name("uid")
    other_uid = os.getuid() + 4242
    server = loop_thread.server(name, lambda: {"secret": 1}, allowed_uids=frozenset({other_uid}))
    assert server.start() is None
    loop_thread.start()
    try:
        with pytest.raises(QueryError, match="closed without answering"):
            query(name)
    finally:
        loop_thread.call(server.close)
    assert server.refused == 1
    assert server.served == 0


def test_a_reader_that_never_reads_does_not_block_the_daemon(loop_thread: LoopThread) -> None:
    name = unique_name("slow")
    big = "x" * (4 << 20)  # far more than a Unix socket buffer holds
    calls = [0]

    def status() -> dict[str, object]:
        calls[0] += 1
        return {"blob": big} if calls[0] == 1 else {"calls": calls[0]}

    server = loop_thread.server(name, status, send_timeout=0.3)
    assert server.start() is None
    loop_thread.start()
    stalled = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        stalled.connect(b"\0" + name.encode())
        # Answered while the first reply is still stuck in the stalled peer's buffer.
        assert query(name)["status"] == {"calls": 2}
        deadline = time.monotonic() + 10.0
        while server.failed == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert server.failed == 1, "the stalled reply was not dropped"
        # The daemon closed the stalled connection: reading now ends, short of the document.
        stalled.settimeout(5.0)
        received = 0
        while chunk := stalled.recv(1 << 16):
            received += len(chunk)
        assert 0 < received < len(big)
    finally:
        stalled.close()
        loop_thread.call(server.close)


def test_listening_names_reads_only_listening_abstract_stream_sockets(tmp_path: Path) -> None:
    table = tmp_path / "unix"
    table.write_text(
        "Num       RefCount Protocol Flags    Type St Inode Path\n"
        "0000000000000000: 00000002 00000000 00010000 0001 01 1001 @teredo/client/teredo\n"
        "0000000000000000: 00000003 00000000 00000000 0001 03 1002 @teredo/client/teredo\n"
        "0000000000000000: 00000002 00000000 00010000 0001 01 1003 @teredo/server/1\n"
        "0000000000000000: 00000002 00000000 00010000 0001 01 1004 @teredo/server/0\n"
        "0000000000000000: 00000002 00000000 00000000 0002 01 1005 @teredo/dgram\n"
        "0000000000000000: 00000002 00000000 00010000 0001 01 1006 /run/teredo/file\n"
        "0000000000000000: 00000002 00000000 00010000 0001 01 1007 @other/daemon\n"
        "0000000000000000: 00000002 00000000 00010000 0001 01 1008\n"
        "garbage line\n",
        encoding="utf-8",
    )
    assert listening_names(proc_path=str(table)) == [
        "teredo/client/teredo",
        "teredo/server/0",
        "teredo/server/1",
    ]
    assert listening_names(prefix="teredo/server/", proc_path=str(table)) == [
        "teredo/server/0",
        "teredo/server/1",
    ]
    assert listening_names(proc_path=str(tmp_path / "missing")) == []


class FakeDaemon:
    def __init__(self) -> None:
        self.closed = False

    def summary(self) -> str:
        return "fine"

    def status(self) -> dict[str, object]:
        return {"state": "qualified"}

    def close(self) -> None:
        self.closed = True


def _serve_and_query(name: str, log: logging.Logger) -> tuple[int, list[object], FakeDaemon]:
    """DaemonLoop.serve with a control socket; a thread queries it, then stops the loop."""
    dloop = DaemonLoop()
    daemon = FakeDaemon()
    answers: list[object] = []

    def ask() -> None:
        try:
            answers.append(query(name))
        except QueryError as exc:
            answers.append(exc)
        finally:
            dloop.loop.call_soon_threadsafe(dloop.stop)

    def start() -> None:
        threading.Thread(target=ask, daemon=True).start()

    try:
        status = dloop.serve(
            daemon,
            log,
            lambda: None,
            start=start,
            control=ControlIdentity(name, "relay", interface="tr0"),
        )
    finally:
        dloop.close()
    return status, answers, daemon


def test_daemon_loop_serves_the_status_while_it_runs() -> None:
    name = unique_name("serve")
    status, answers, daemon = _serve_and_query(name, logging.getLogger("control_test"))
    assert status == 0
    assert len(answers) == 1
    doc = answers[0]
    assert isinstance(doc, dict)
    assert doc["role"] == "relay"
    assert doc["interface"] == "tr0"
    assert doc["status"] == {"state": "qualified"}
    assert daemon.closed
    assert name not in listening_names(prefix=name), "serve() left the socket listening"


def test_daemon_loop_runs_without_control_when_the_name_is_taken(
    loop_thread: LoopThread, caplog: pytest.LogCaptureFixture
) -> None:
    name = unique_name("taken")
    holder = loop_thread.server(name, lambda: {"who": "holder"})
    assert holder.start() is None
    loop_thread.start()
    try:
        with caplog.at_level(logging.WARNING, logger="control_test"):
            log = logging.getLogger("control_test")
            status, answers, daemon = _serve_and_query(name, log)
    finally:
        loop_thread.call(holder.close)
    assert status == 0
    assert daemon.closed
    warnings = [r for r in caplog.records if "in use" in r.getMessage()]
    assert len(warnings) == 1
    # The query reached the other daemon, the one holding the name.
    doc = answers[0]
    assert isinstance(doc, dict)
    assert doc["status"] == {"who": "holder"}
