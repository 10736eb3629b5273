"""Our relay and host-specific relay (RFC 4380 section 5.4) with Miredo clients, in the lab.

* A Miredo client behind a port-restricted NAT and the native IPv6 host talk through OUR relay:
  the host pings first (the relay bubbles the client through its server), then the client; a
  TCP transfer each way with a sha256-checked file; then a flood of new peers beyond the peer
  table (--peers 8) leaves the established client served without a new set-up. Once with
  Miredo's server, once with ours.
* Our host-specific relay on a dual-stack native host talks to the Miredo client directly:
  no relay runs in the lab, and the NAT sees the client's flows go to the host's own IPv4.
* SIGHUP re-reads the configuration; SIGTERM removes the interface and exits 0.
* The data path: the default (`auto`) must pick the kernel's programs here, and the client's
  traffic must be decapsulated there (issue 8); one relay and one host-specific run use
  `--datapath user`, the Python path.
"""

from __future__ import annotations

import json
import os
import re
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from teredo.lab.nat import NatKind
from teredo.lab.roles import RELAY_PORT, TUN_NAME, Role, config_text
from teredo.lab.system import LabError
from teredo.lab.topology import NATIVE_V4, NATIVE_V6, RELAY_V4, SERVER_V4, Lab

from .conftest import prefix_for, received

pytestmark = pytest.mark.system

QUALIFY_TIMEOUT = 30.0
FLOOD_PEERS = 8
TRANSFER_BYTES = 2 * 1024 * 1024
TCP_PORT = 5001

# The receiving end of a TCP transfer: one connection, everything up to EOF, then its size and
# sha256. Bounded in time by socket timeouts.
RECEIVER = """
import hashlib, socket, sys
srv = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("::", int(sys.argv[1])))
srv.listen(1)
srv.settimeout(60)
print("listening", flush=True)
conn, _ = srv.accept()
conn.settimeout(30)
digest = hashlib.sha256()
size = 0
while True:
    chunk = conn.recv(65536)
    if not chunk:
        break
    digest.update(chunk)
    size += len(chunk)
print(size, digest.hexdigest(), flush=True)
conn.close()
"""

# The sending end: seeded pseudo-random bytes, retried connects for 20 s at most, prints the
# sha256 of what it sent.
SENDER = """
import hashlib, random, socket, sys, time
dest, port, size, seed = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
data = random.Random(seed).randbytes(size)
deadline = time.monotonic() + 20
while True:
    try:
        sock = socket.create_connection((dest, port), timeout=10)
        break
    except OSError:
        if time.monotonic() > deadline:
            raise
        time.sleep(0.3)
sock.settimeout(60)
sock.sendall(data)
sock.shutdown(socket.SHUT_WR)
sock.recv(1)
print(size, hashlib.sha256(data).hexdigest(), flush=True)
"""

# Native packets to `count` Teredo addresses embedding distinct global mappings behind a server
# address nobody uses (198.51.100.99): each needs a new peer entry, none will ever answer.
FLOOD = """
import socket, sys
count = int(sys.argv[1])
sock = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
for i in range(count):
    port = (4000 + i) ^ 0xFFFF
    ipv4 = (0xCB0071C8 + i % 50) ^ 0xFFFFFFFF  # 203.0.113.200-249
    addr = bytes.fromhex("20010000c6336463") + b"\\x00\\x00" + port.to_bytes(2, "big")
    addr += ipv4.to_bytes(4, "big")
    sock.sendto(b"flood", (socket.inet_ntop(socket.AF_INET6, addr), 9))
print(count, flush=True)
"""


def _start_our_relay(lab: Lab, host: str, config: str, *extra: str) -> subprocess.Popen[bytes]:
    """Our relay in `host` with `config`; returns once its interface exists (10 s at most)."""
    conf = lab.state_dir / f"{host}-relay.conf"
    conf.write_text(config, encoding="ascii")
    argv = [sys.executable, "-m", "teredo", "relay", "-c", str(conf), *extra]
    proc = lab.popen(host, argv, name=f"{host}-relay", role="relay", impl="teredo")
    deadline = time.monotonic() + 10
    while True:
        probe = lab.exec(host, ["ip", "-6", "route", "show", "2001::/32"], check=False)
        if TUN_NAME in probe.stdout:
            return proc
        if proc.poll() is not None or time.monotonic() > deadline:
            raise LabError(f"our relay did not start in {host}:\n{lab.log_tail(host, 30)}")
        time.sleep(0.1)


def _log(lab: Lab, host: str) -> str:
    return (lab.state_dir / f"{host}-relay.log").read_text(encoding="utf-8", errors="replace")


def _summary(lab: Lab, host: str, proc: subprocess.Popen[bytes]) -> dict[str, int]:
    """Counters from the relay's SIGUSR1 log line (5 s at most)."""
    before = _log(lab, host).count(" peers ")
    os.kill(proc.pid, signal.SIGUSR1)
    deadline = time.monotonic() + 5
    while True:
        lines = [line for line in _log(lab, host).splitlines() if " peers " in line]
        if len(lines) > before:
            line = lines[-1]
            break
        assert time.monotonic() < deadline, f"no SIGUSR1 summary in the log:\n{_log(lab, host)}"
        time.sleep(0.1)
    fields = {
        "size": r"peers (\d+)/",
        "trusted_now": r"\((\d+) trusted",
        "evicted": r"(\d+) evicted",
        "to_teredo": r"to teredo (\d+)",
        "from_teredo": r"from teredo (\d+)",
        "bubbles": r"bubbles sent (\d+)\+",
        "direct_bubbles": r"bubbles sent \d+\+(\d+)",
        "trusted": r"trusted (\d+), remapped",
    }
    out = {}
    for name, pattern in fields.items():
        m = re.search(pattern, line)
        assert m, f"{name} missing from the summary: {line}"
        out[name] = int(m.group(1))
    return out


def _transfer(lab: Lab, sender: str, receiver: str, dest: str, seed: int) -> None:
    """TRANSFER_BYTES over TCP from `sender` to `receiver` (at `dest`); the sha256 must match."""
    recv = lab.popen(
        receiver,
        [sys.executable, "-c", RECEIVER, str(TCP_PORT)],
        name=f"recv-{seed}",
        stdout=subprocess.PIPE,
    )
    try:
        assert recv.stdout is not None
        ready, _, _ = select.select([recv.stdout], [], [], 10)
        assert ready, "the TCP receiver did not start"
        assert recv.stdout.readline().strip() == b"listening"
        sent = lab.exec(
            sender,
            [sys.executable, "-c", SENDER, dest, str(TCP_PORT), str(TRANSFER_BYTES), str(seed)],
            timeout=90,
            check=False,
        )
        assert sent.returncode == 0, f"sender failed: {sent.stdout}{sent.stderr}"
        out, _ = recv.communicate(timeout=30)
    finally:
        if recv.poll() is None:
            recv.kill()
            recv.wait(5)
    got = out.decode().split()
    expected = sent.stdout.split()
    assert expected[0] == str(TRANSFER_BYTES)
    assert got == expected, f"received {got}, sent {expected}"


def _stop(proc: subprocess.Popen[bytes], lab: Lab, host: str) -> None:
    """SIGTERM: exit status 0 and the interface gone."""
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=15) == 0, lab.log_tail(host, 30)
    link = lab.exec(host, ["ip", "link", "show", TUN_NAME], check=False)
    assert link.returncode != 0, f"{TUN_NAME} still exists after SIGTERM: {link.stdout}"


def _datapath_used(lab: Lab, host: str, datapath: str) -> dict[str, int] | None:
    """The data path the relay says it runs (SIGUSR1 line; `auto`, the default, must pick the
    kernel on this machine) and, for the kernel, its counters (`teredo status`)."""
    log = _log(lab, host)
    want = "user" if datapath == "user" else "kernel"
    assert f"data path: {want}" in log, log
    got = lab.exec(host, [sys.executable, "-m", "teredo", "status", "--json"], check=False)
    assert got.returncode == 0, got.stdout + got.stderr
    (doc,) = [d for d in json.loads(got.stdout) if d.get("role") == "relay"]
    status = doc["status"]
    assert status["datapath"] == want, status
    return None if want == "user" else dict(status["kernel"]["counters"])


@pytest.mark.parametrize(
    ("server_impl", "datapath"), [("miredo", "auto"), ("teredo", "auto"), ("miredo", "user")]
)
def test_miredo_client_through_our_relay(
    lab_factory: list[Lab], server_impl: str, datapath: str
) -> None:
    tag = "y" if server_impl == "miredo" else "z"
    lab = Lab(
        prefix_for(tag if datapath == "auto" else "l"),
        [NatKind.PORT_RESTRICTED],
        server_impl=server_impl,
        relay_impl=None,
    )
    lab_factory.append(lab)
    lab.up()
    relay_conf = config_text(Role.RELAY, server=SERVER_V4, relay=RELAY_V4)
    flags = () if datapath == "auto" else ("--datapath", datapath)
    relay = _start_our_relay(lab, "relay", relay_conf, "--peers", str(FLOOD_PEERS), *flags)
    info = lab.wait_qualified(1, timeout=QUALIFY_TIMEOUT)

    # The native host first: the relay has no entry, bubbles through the client's server and
    # waits for the client's direct bubble (RFC 4380 section 5.4.1).
    ping = lab.ping("native", str(info.address), count=4, deadline=15)
    assert received(ping.stdout) >= 3, ping.stdout
    first = _summary(lab, "relay", relay)
    assert first["bubbles"] >= 1, first
    assert first["trusted"] == 1, first
    assert first["from_teredo"] >= 3, first

    ping = lab.ping("client1", NATIVE_V6, count=4, deadline=15)
    assert received(ping.stdout) >= 3, ping.stdout

    _transfer(lab, "native", "client1", str(info.address), seed=1)
    _transfer(lab, "client1", "native", NATIVE_V6, seed=2)
    established = _summary(lab, "relay", relay)
    assert established["to_teredo"] > TRANSFER_BYTES // 1280, established
    assert established["from_teredo"] > TRANSFER_BYTES // 1280, established
    kernel = _datapath_used(lab, "relay", datapath)
    if kernel is not None:
        # The client's TCP segments were decapsulated in the kernel (docs/kernel.md).
        assert kernel["decap"] > 0, kernel

    # A burst of new peers, far beyond the table, while the client is being served.
    flood_count = 40 * FLOOD_PEERS
    ping_argv = ["ping", "-6", "-n", "-c", "10", "-i", "0.2", "-w", "15", str(info.address)]
    pinger = subprocess.Popen(
        ["ip", "netns", "exec", lab.ns("native"), *ping_argv],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        flood = lab.exec("native", [sys.executable, "-c", FLOOD, str(flood_count)], timeout=30)
        assert flood.stdout.strip() == str(flood_count)
        out, _ = pinger.communicate(timeout=25)
    finally:
        if pinger.poll() is None:
            pinger.kill()
            pinger.wait(5)
    assert received(out) >= 9, out
    after = _summary(lab, "relay", relay)
    assert after["evicted"] > 0, f"the flood did not fill the table: {after}"
    assert after["size"] <= FLOOD_PEERS, after
    # The client was never set up again: its entry stayed trusted throughout.
    assert after["trusted"] == established["trusted"], (established, after)

    # SIGHUP: the deprecated restricted relay now adds direct bubbles; a new MTU is applied.
    conf = lab.state_dir / "relay-relay.conf"
    restricted = relay_conf.replace("RelayType cone", "RelayType restricted")
    conf.write_text(restricted + "InterfaceMTU 1400\n")
    relay.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 5
    while "configuration reloaded: MTU 1400, RelayType restricted" not in _log(lab, "relay"):
        assert time.monotonic() < deadline, _log(lab, "relay")
        time.sleep(0.1)
    link = lab.exec("relay", ["ip", "link", "show", TUN_NAME]).stdout
    assert "mtu 1400" in link, link
    # A bubble now also goes straight to the client's mapping (section 5.4.1).
    lab.exec("native", [sys.executable, "-c", FLOOD, "1"])
    deadline = time.monotonic() + 5
    while _summary(lab, "relay", relay)["direct_bubbles"] == 0:
        assert time.monotonic() < deadline, _log(lab, "relay")
        time.sleep(0.2)
    _stop(relay, lab, "relay")


@pytest.mark.parametrize("datapath", ["auto", "user"])
def test_host_specific_relay_talks_to_miredo_client_directly(
    lab_factory: list[Lab], datapath: str
) -> None:
    lab = Lab(
        prefix_for("k" if datapath == "auto" else "1"),
        [NatKind.PORT_RESTRICTED],
        server_impl="miredo",
        relay_impl=None,
        native_ipv4=True,
    )
    lab_factory.append(lab)
    lab.up()
    conf = f"RelayType host\nInterfaceName {TUN_NAME}\nBindAddress {NATIVE_V4}\n"
    conf += f"BindPort {RELAY_PORT}\n"
    flags = () if datapath == "auto" else ("--datapath", datapath)
    host = _start_our_relay(lab, "native", conf, "--peers", "1024", *flags)
    info = lab.wait_qualified(1, timeout=QUALIFY_TIMEOUT)
    # The driver reads the host's addresses off its loop after the route exists (relay_driver
    # refresh_addresses): on a loaded machine the line can come after the client qualified.
    deadline = time.monotonic() + 10
    while not (served := re.search(r"serving \d+ own addresses: (.*)", _log(lab, "native"))):
        assert time.monotonic() < deadline, f"no own addresses served:\n{_log(lab, 'native')}"
        time.sleep(0.1)
    assert f"'{NATIVE_V6}'" in served.group(1), served.group(0)

    ping = lab.ping("native", str(info.address), count=4, deadline=15)
    assert received(ping.stdout) >= 3, ping.stdout
    ping = lab.ping("client1", NATIVE_V6, count=4, deadline=15)
    assert received(ping.stdout) >= 3, ping.stdout
    _transfer(lab, "client1", "native", NATIVE_V6, seed=3)
    _transfer(lab, "native", "client1", str(info.address), seed=4)

    # A new address of the host is learnt from netlink and served at once.
    extra = "2001:db8:1::101"
    lab.exec("native", ["ip", "-6", "addr", "add", f"{extra}/64", "dev", "eth0", "nodad"])
    deadline = time.monotonic() + 10
    while f"'{extra}'" not in _log(lab, "native"):
        assert time.monotonic() < deadline, f"{extra} not learnt:\n{_log(lab, 'native')}"
        time.sleep(0.1)
    ping = lab.ping("client1", extra, count=3, deadline=15)
    assert received(ping.stdout) >= 2, ping.stdout

    counters = _summary(lab, "native", host)
    assert counters["from_teredo"] > TRANSFER_BYTES // 1280, counters
    assert counters["to_teredo"] > TRANSFER_BYTES // 1280, counters
    kernel = _datapath_used(lab, "native", datapath)
    if kernel is not None:
        assert kernel["decap"] > 0, kernel
    # No relay in between: the client's NAT holds a flow straight to the host's own IPv4.
    flows = lab.exec("nat1", ["conntrack", "-L", "-p", "udp", "--orig-dst", NATIVE_V4]).stdout
    assert f"dport={RELAY_PORT}" in flows, f"no direct flow to {NATIVE_V4}: {flows!r}"
    assert not Path(lab.state_dir / "relay-relay.log").exists()
    _stop(host, lab, "native")
