"""`teredo server`: start-up refusals, SIGTERM, SIGHUP and workers, run for real.

The tests marked `system` run the verb inside a network namespace of their own (its loopback
interface holding 198.51.100.10 and .11, as RFC 4380 section 5.2 wants two consecutive
addresses), talk to it over that loopback and delete the namespace after.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from teredo.cli.main import build_parser
from teredo.core.addr import LINK_LOCAL_RESTRICTED, ipv4_to_int, server_link_local
from teredo.core.ipv6 import build_rs, parse_ra
from teredo.core.server import ServerLimits
from teredo.core.wire import build_auth, parse_payload

PRIMARY = "198.51.100.10"
SECONDARY = "198.51.100.11"
NONCE = b"cliprobe"
START_TIMEOUT = 10.0


def _verb(*args: str, timeout: float = 20.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "teredo", "server", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


# --- without root ------------------------------------------------------------------------------


def test_limit_flags_default_to_the_documented_limits() -> None:
    args = build_parser().parse_args(["server"])
    defaults = ServerLimits()
    for name in ("rs_rate", "rs_burst", "rs_total_rate", "forward_rate", "forward_burst"):
        assert getattr(args, name) == getattr(defaults, name)
    assert args.icmpv6_max_payload == defaults.icmpv6_max_payload
    assert args.workers == 1
    docs = (Path(__file__).resolve().parents[1] / "docs" / "server.md").read_text()
    for flag in ("--rs-rate", "--rs-burst", "--rs-total-rate", "--forward-rate", "--workers"):
        assert f"`{flag}" in docs, f"{flag} is not documented in docs/server.md"


@pytest.mark.parametrize(
    ("flag", "value"), [("--rs-rate", "0"), ("--forward-burst", "-1"), ("--workers", "0")]
)
def test_bad_flag_values_exit_2_with_one_line(flag: str, value: str) -> None:
    done = _verb("--bind", PRIMARY, flag, value)
    assert done.returncode == 2, done
    assert done.stderr.strip() == f"command line: {flag}: " + (
        "must be 1..64" if flag == "--workers" else "must be positive"
    )


def test_bad_configuration_exits_2_naming_file_and_line(tmp_path: Path) -> None:
    conf = tmp_path / "server.conf"
    conf.write_text("# comment\nServerBindAddress 198.51.100.300\n")
    done = _verb("-c", str(conf))
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith(f"{conf}:2: ServerBindAddress: "), lines[0]


@pytest.mark.parametrize(
    ("bind", "bind2", "why"),
    [
        ("192.168.1.10", None, "the primary address 192.168.1.10 is not a global unicast"),
        ("10.0.0.1", None, "the primary address 10.0.0.1 is not a global unicast"),
        (PRIMARY, "127.0.0.1", "the secondary address 127.0.0.1 is not a global unicast"),
    ],
)
def test_non_global_addresses_are_refused(bind: str, bind2: str | None, why: str) -> None:
    args = ["--bind", bind] + (["--bind2", bind2] if bind2 else [])
    done = _verb(*args)
    assert done.returncode == 1, done
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert why in lines[0]


# --- in a namespace of our own (root) ----------------------------------------------------------


def _check_root() -> None:
    if os.geteuid() != 0:
        pytest.fail("needs root to create a network namespace (run as root)", pytrace=False)


@pytest.fixture
def netns() -> Iterator[str]:
    """A namespace with lo up; tests put the server's addresses on lo."""
    _check_root()
    name = f"tdt{os.getpid() % 10000}v-cli"
    subprocess.run(["ip", "netns", "add", name], check=True, capture_output=True)
    try:
        subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False, capture_output=True)


def _add_addresses(ns: str, *addresses: str) -> None:
    for address in addresses:
        subprocess.run(["ip", "-n", ns, "addr", "add", f"{address}/32", "dev", "lo"], check=True)


def _in_ns(ns: str, argv: list[str], *, new_session: bool = False) -> subprocess.Popen[str]:
    return subprocess.Popen(
        ["ip", "netns", "exec", ns, *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=new_session,
    )


def _run_in_ns(ns: str, argv: list[str], timeout: float = 20.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["ip", "netns", "exec", ns, *argv],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


_PROBE = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(2.0)
s.sendto(bytes.fromhex(sys.argv[1]), (sys.argv[2], 3544))
try:
    data, source = s.recvfrom(2048)
    print(data.hex(), source[0], source[1])
except TimeoutError:
    print("timeout")
"""


_SEND = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.sendto(bytes.fromhex(sys.argv[1]), (sys.argv[2], 3544))
"""


def _rs_probe(ns: str) -> tuple[bytes, str]:
    """Send one RS with a nonce to the primary address; the RA payload and its IPv4 source."""
    rs = build_auth(NONCE) + build_rs(LINK_LOCAL_RESTRICTED)
    done = _run_in_ns(ns, [sys.executable, "-c", _PROBE, rs.hex(), PRIMARY])
    fields = done.stdout.split()
    assert len(fields) == 3, f"no RA: {done.stdout!r} {done.stderr!r}"
    return bytes.fromhex(fields[0]), fields[1]


def _ra_mtu(payload: bytes) -> int | None:
    packet = parse_payload(payload)
    assert not isinstance(packet, int), packet
    assert packet.nonce == NONCE, "the RA must echo the RS nonce (RFC 4380 5.2.2)"
    ra = parse_ra(packet.ipv6)
    assert not isinstance(ra, int), ra
    assert packet.ipv6[8:24] == server_link_local(ipv4_to_int(PRIMARY))
    return ra.mtu


def _wait_for(proc: subprocess.Popen[str], lines: list[str], text: str) -> None:
    """Read the server's stderr until `text` appears (bounded by START_TIMEOUT)."""
    assert proc.stderr is not None
    os.set_blocking(proc.stderr.fileno(), False)
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        chunk = proc.stderr.readline()
        if chunk:
            lines.append(chunk)
            if text in chunk:
                return
            continue
        if proc.poll() is not None:
            lines.extend(proc.stderr.readlines())
            pytest.fail(f"the server exited ({proc.returncode}):\n{''.join(lines)}")
        time.sleep(0.05)
    pytest.fail(f"{text!r} not logged within {START_TIMEOUT} s:\n{''.join(lines)}")


def _stop(proc: subprocess.Popen[str]) -> int:
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=5)


@pytest.mark.system
def test_address_not_on_this_host_is_refused(netns: str) -> None:
    # The namespace has no 198.51.100.x at all: bind() fails with EADDRNOTAVAIL.
    done = _run_in_ns(netns, [sys.executable, "-m", "teredo", "server", "--bind", PRIMARY])
    assert done.returncode == 1, done
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].endswith(f"ERROR {PRIMARY} is not an address of this host"), lines[0]
    # Only the secondary missing: named as such.
    _add_addresses(netns, PRIMARY)
    done = _run_in_ns(netns, [sys.executable, "-m", "teredo", "server", "--bind", PRIMARY])
    assert done.returncode == 1, done
    assert done.stderr.strip().endswith(f"{SECONDARY} is not an address of this host")


@pytest.mark.system
@pytest.mark.parametrize("workers", ["1", "2"])
def test_port_taken_is_refused(netns: str, workers: str) -> None:
    _add_addresses(netns, PRIMARY, SECONDARY)
    holder = _in_ns(
        netns,
        [
            sys.executable,
            "-c",
            f"import socket,time; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); "
            f"s.bind(('{SECONDARY}', 3544)); print('bound', flush=True); time.sleep(30)",
        ],
    )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == "bound"
        argv = [sys.executable, "-m", "teredo", "server", "--bind", PRIMARY, "--workers", workers]
        done = _run_in_ns(netns, argv)
    finally:
        holder.kill()
        holder.wait(timeout=5)
    assert done.returncode == 1, done
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].endswith(f"UDP port 3544 of {SECONDARY} is taken"), lines[0]


@pytest.mark.system
def test_sighup_rereads_the_file_and_sigterm_stops_cleanly(netns: str, tmp_path: Path) -> None:
    _add_addresses(netns, PRIMARY, SECONDARY)
    conf = tmp_path / "miredo-server.conf"
    conf.write_text(f"ServerBindAddress {PRIMARY}\nInterfaceMTU 1280\n")
    pidfile = tmp_path / "server.pid"
    argv = [sys.executable, "-m", "teredo", "server", "-c", str(conf), "--pidfile", str(pidfile)]
    proc = _in_ns(netns, argv)
    lines: list[str] = []
    try:
        _wait_for(proc, lines, "Teredo server on")
        assert int(pidfile.read_text()) == proc.pid
        payload, source = _rs_probe(netns)
        # RFC 4380 5.3.2: a restricted RS is answered from the address it was sent to.
        assert source == PRIMARY
        assert _ra_mtu(payload) == 1280
        conf.write_text(f"ServerBindAddress {PRIMARY}\nInterfaceMTU 1400\n")
        proc.send_signal(signal.SIGHUP)
        # One form for every daemon (docs/operate.md, "Reload"): what is now in force.
        _wait_for(proc, lines, "configuration reloaded: MTU 1400")
        assert _ra_mtu(_rs_probe(netns)[0]) == 1400
        conf.write_text(f"ServerBindAddress {PRIMARY}\nInterfaceMTU 1280\nDatapath user\n")
        proc.send_signal(signal.SIGHUP)
        _wait_for(proc, lines, "not reloaded: a new data path (Datapath) needs a restart")
        assert _ra_mtu(_rs_probe(netns)[0]) == 1400, "nothing applied"
        conf.write_text(f"ServerBindAddress {PRIMARY}\nInterfaceMTU 1400\n")
        # A broken file on SIGHUP keeps the running configuration and says why.
        conf.write_text("ServerBindAddress nowhere..\n")
        proc.send_signal(signal.SIGHUP)
        _wait_for(proc, lines, "configuration not reloaded")
        assert _ra_mtu(_rs_probe(netns)[0]) == 1400
        # A datagram larger than anything a server handles is counted, not processed.
        big = (build_auth(NONCE) + build_rs(LINK_LOCAL_RESTRICTED)).ljust(3000, b"\0")
        sent = _run_in_ns(netns, [sys.executable, "-c", _SEND, big.hex(), PRIMARY])
        assert sent.returncode == 0, sent.stderr
    finally:
        status = _stop(proc)
    assert status == 0, "".join(lines)
    assert proc.stderr is not None
    rest = proc.stderr.read()
    assert "stopping: RAs 4," in rest, rest
    assert "'oversized': 1" in rest, rest
    assert not pidfile.exists(), "the pid file must be removed on exit"


@pytest.mark.system
def test_workers_share_the_ports_and_stop_together(netns: str) -> None:
    _add_addresses(netns, PRIMARY, SECONDARY)
    argv = [sys.executable, "-m", "teredo", "server", "--bind", PRIMARY, "--workers", "3"]
    proc = _in_ns(netns, argv, new_session=True)
    lines: list[str] = []
    try:
        _wait_for(proc, lines, "3 worker(s)")
        for _ in range(4):
            payload, source = _rs_probe(netns)
            assert source == PRIMARY
            assert _ra_mtu(payload) == 1280
        sockets = _run_in_ns(netns, ["ss", "-Hunl", "sport", "= :3544"]).stdout
        assert sockets.count(f"{PRIMARY}:3544") == 3, sockets
        assert sockets.count(f"{SECONDARY}:3544") == 3, sockets
    finally:
        status = _stop(proc)
    assert status == 0, "".join(lines)
    assert proc.stderr is not None
    assert proc.stderr.read().count("stopping:") == 3
    left = _run_in_ns(netns, ["ss", "-Hunl", "sport", "= :3544"]).stdout
    assert left.strip() == "", f"a worker is still running: {left}"
