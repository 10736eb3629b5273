"""systemd's readiness protocol (teredo.io.sdnotify) against a fake $NOTIFY_SOCKET.

The unit tests need nothing; the `system` ones run `teredo server` in a network namespace of
their own (lo holding 198.51.100.10 and .11) with NOTIFY_SOCKET pointing at a datagram socket
of the test, as systemd would for a Type=notify unit, and check that READY=1 comes from the
main process once the server answers, RELOADING=1/READY=1 around SIGHUP and STOPPING=1 at
SIGTERM. The same server serves --metrics, scraped inside the namespace.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import struct
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from teredo.core.addr import LINK_LOCAL_RESTRICTED
from teredo.core.ipv6 import build_rs
from teredo.core.wire import build_auth
from teredo.io.sdnotify import MAX_STATUS_CHARS, Notifier

PRIMARY = "198.51.100.10"
SECONDARY = "198.51.100.11"
METRICS_PORT = 9544
DEADLINE = 20.0  # generous: the machine is shared and loaded
_UCRED = struct.Struct("3i")


class FakeSystemd:
    """A datagram socket where the daemon's notifications arrive, with the sender's pid."""

    def __init__(self, address: str) -> None:
        self.address = address
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        bound = "\0" + address[1:] if address.startswith("@") else address
        self.sock.bind(bound)

    def receive(self, timeout: float = DEADLINE) -> tuple[list[str], int]:
        """The next notification's fields and its sender's pid (SCM_CREDENTIALS)."""
        self.sock.settimeout(timeout)
        data, ancillary, _flags, _addr = self.sock.recvmsg(4096, socket.CMSG_SPACE(_UCRED.size))
        pid = -1
        for level, kind, payload in ancillary:
            if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
                pid = _UCRED.unpack(payload[: _UCRED.size])[0]
        return data.decode("utf-8").split("\n"), pid

    def wait_for(self, field: str, timeout: float = DEADLINE) -> tuple[list[str], list[str], int]:
        """(every field seen on the way, the notification holding `field`, its sender)."""
        seen: list[str] = []
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                pytest.fail(f"{field} not received within {timeout} s; got {seen}")
            try:
                fields, pid = self.receive(left)
            except TimeoutError:
                pytest.fail(f"{field} not received within {timeout} s; got {seen}")
            seen += fields
            if field in fields:
                return seen, fields, pid

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def teredo_logs(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> pytest.LogCaptureFixture:
    """caplog for the "teredo" loggers, which a daemon verb run in this process may have cut
    off from the root logger (configure_logging)."""
    monkeypatch.setattr(logging.getLogger("teredo"), "propagate", True)
    caplog.set_level(logging.WARNING)
    return caplog


@pytest.fixture
def fake_systemd(tmp_path: Path) -> Iterator[FakeSystemd]:
    fake = FakeSystemd(str(tmp_path / "notify"))
    try:
        yield fake
    finally:
        fake.close()


# --- the notifier alone ----------------------------------------------------------------------


def test_without_notify_socket_nothing_is_sent() -> None:
    env: dict[str, str] = {}
    notifier = Notifier.from_environment(env)
    assert not notifier.enabled
    assert notifier.send("READY=1") is False
    notifier.notify_ready("x")  # no error


def test_the_variable_is_taken_out_of_the_environment(fake_systemd: FakeSystemd) -> None:
    env = {"NOTIFY_SOCKET": fake_systemd.address, "OTHER": "1"}
    notifier = Notifier.from_environment(env)
    assert env == {"OTHER": "1"}, "a child (the client hook) must not inherit NOTIFY_SOCKET"
    assert notifier.enabled


def test_relative_address_is_ignored(teredo_logs: pytest.LogCaptureFixture) -> None:
    notifier = Notifier.from_environment({"NOTIFY_SOCKET": "notify"})
    assert not notifier.enabled
    assert "neither a path nor @abstract" in teredo_logs.text


def test_ready_reload_stop_sequence(fake_systemd: FakeSystemd) -> None:
    notifier = Notifier(fake_systemd.address)
    notifier.notify_reloading()  # not ready yet: nothing (systemd would wait for READY=1)
    notifier.notify_ready("serving on 198.51.100.10:3544")
    fields, pid = fake_systemd.receive()
    assert fields == ["READY=1", "STATUS=serving on 198.51.100.10:3544"]
    assert pid == os.getpid()
    notifier.notify_ready("qualified again")  # READY=1 only the first time
    assert fake_systemd.receive()[0] == ["STATUS=qualified again"]
    notifier.notify_reloading()
    fields, _ = fake_systemd.receive()
    assert fields[0] == "RELOADING=1"
    assert fields[1].startswith("MONOTONIC_USEC=")
    assert abs(int(fields[1].split("=")[1]) - time.monotonic_ns() // 1000) < 60_000_000
    notifier.notify_reloaded()
    assert fake_systemd.receive()[0] == ["READY=1"]
    notifier.notify_status("line one\nREADY=1 " + "x" * 500)
    (status,), _ = fake_systemd.receive()
    assert status.startswith("STATUS=line one READY=1 x"), "a newline must not start a field"
    assert len(status) == len("STATUS=") + MAX_STATUS_CHARS
    notifier.notify_stopping()
    assert fake_systemd.receive()[0] == ["STOPPING=1"]


def test_abstract_socket() -> None:
    fake = FakeSystemd(f"@teredo-test/{os.getpid()}/{uuid.uuid4().hex[:8]}")
    try:
        Notifier(fake.address).notify_ready()
        assert fake.receive()[0] == ["READY=1"]
    finally:
        fake.close()


def test_a_missing_socket_is_said_once(
    tmp_path: Path, teredo_logs: pytest.LogCaptureFixture
) -> None:
    notifier = Notifier(str(tmp_path / "gone"))
    assert notifier.send("STATUS=a") is False
    assert notifier.send("STATUS=b") is False
    assert teredo_logs.text.count("cannot notify systemd") == 1


# --- a real server in a namespace (root) -----------------------------------------------------


@pytest.fixture
def netns() -> Iterator[str]:
    if os.geteuid() != 0:
        pytest.fail("needs root to create a network namespace (run as root)", pytrace=False)
    name = f"tdt{os.getpid() % 10000}v-sdn"
    subprocess.run(["ip", "netns", "del", name], check=False, capture_output=True)
    subprocess.run(["ip", "netns", "add", name], check=True, capture_output=True)
    try:
        subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)
        for address in (PRIMARY, SECONDARY):
            subprocess.run(
                ["ip", "-n", name, "addr", "add", f"{address}/32", "dev", "lo"], check=True
            )
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False, capture_output=True)


_RS_PROBE = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(5.0)
s.sendto(bytes.fromhex(sys.argv[1]), (sys.argv[2], 3544))
print(len(s.recvfrom(2048)[0]))
"""

_SCRAPE = """
import sys, urllib.request
with urllib.request.urlopen(sys.argv[1], timeout=10) as answer:
    sys.stdout.write(answer.read().decode())
"""


def in_ns(ns: str, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["ip", "netns", "exec", ns, *argv],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def answers_rs(ns: str) -> bool:
    rs = build_auth(b"sdnotify") + build_rs(LINK_LOCAL_RESTRICTED)
    done = in_ns(ns, sys.executable, "-c", _RS_PROBE, rs.hex(), PRIMARY)
    return done.returncode == 0 and int(done.stdout) > 0


def start_server(ns: str, notify: str, *extra: str) -> subprocess.Popen[str]:
    env = {**os.environ, "NOTIFY_SOCKET": notify}
    argv = [sys.executable, "-m", "teredo", "server", "--bind", PRIMARY, *extra]
    return subprocess.Popen(
        ["ip", "netns", "exec", ns, *argv],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def stop(proc: subprocess.Popen[str], *, signalled: bool) -> tuple[int, str]:
    """Waits for the server to exit; SIGTERM first unless the test sent it already (a second
    one during the shutdown, once the handler is gone, would kill it)."""
    if not signalled and proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        _, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=5)
    return proc.returncode, err


@pytest.mark.system
def test_server_is_ready_when_bound_reloads_and_stops(
    netns: str, fake_systemd: FakeSystemd
) -> None:
    metrics = f"127.0.0.1:{METRICS_PORT}"
    proc = start_server(netns, fake_systemd.address, "--metrics", metrics)
    signalled = False
    try:
        seen, fields, pid = fake_systemd.wait_for("READY=1")
        assert seen[0] == "READY=1", f"READY=1 must be the first notification: {seen}"
        assert pid == proc.pid, "READY=1 must come from the main process (NotifyAccess=main)"
        assert "STATUS=serving on 198.51.100.10:3544 and 198.51.100.11:3544" in fields
        # Ready means serving: an RS sent right now is answered.
        assert answers_rs(netns)
        scraped = in_ns(netns, sys.executable, "-c", _SCRAPE, f"http://{metrics}/metrics")
        assert scraped.returncode == 0, scraped.stderr
        assert "teredo_server_router_advertisements_total 1.0" in scraped.stdout
        assert 'teredo_daemon_info{control="teredo/server",interface="",role="server"' in (
            scraped.stdout
        )
        proc.send_signal(signal.SIGHUP)
        seen, _, _ = fake_systemd.wait_for("READY=1")
        assert seen[0] == "RELOADING=1", seen
        proc.send_signal(signal.SIGTERM)
        signalled = True
        fake_systemd.wait_for("STOPPING=1")
    finally:
        status, err = stop(proc, signalled=signalled)
    assert status == 0, err


@pytest.mark.system
def test_workers_supervisor_alone_speaks_to_systemd(netns: str, fake_systemd: FakeSystemd) -> None:
    metrics = f"127.0.0.1:{METRICS_PORT}"
    proc = start_server(netns, fake_systemd.address, "--workers", "2", "--metrics", metrics)
    signalled = False
    try:
        seen, fields, pid = fake_systemd.wait_for("READY=1")
        assert seen[0] == "READY=1", seen
        assert pid == proc.pid, "only the supervisor notifies (NotifyAccess=main)"
        assert any(f.startswith("STATUS=") and "2 workers" in f for f in fields), fields
        assert answers_rs(netns)
        # The supervisor's metrics: one series per worker, read from their status sockets.
        scraped = in_ns(netns, sys.executable, "-c", _SCRAPE, f"http://{metrics}/")
        assert scraped.returncode == 0, scraped.stderr
        for worker in ("0", "1"):
            assert f'teredo_server_router_advertisements_total{{worker="{worker}"}}' in (
                scraped.stdout
            ), scraped.stdout
        proc.send_signal(signal.SIGTERM)
        signalled = True
        seen, _, pid = fake_systemd.wait_for("STOPPING=1")
        assert pid == proc.pid
        assert "READY=1" not in seen, "a worker must not notify"
    finally:
        status, err = stop(proc, signalled=signalled)
    assert status == 0, err
