"""Our Teredo client (`teredo client`) against Miredo and against our own server, in the lab.

Three labs, each shared by a group of tests:

- `lab` (Miredo server and relay): our client behind no NAT, full-cone, address-restricted and
  port-restricted NATs (qualification, mapping checked against the NAT's conntrack table), a
  Miredo client and a second client of ours behind port-restricted NATs (direct pings), and one
  of ours behind a symmetric NAT (reported, qualified with the primary mapping, the native host
  pinged both ways; and with `--symmetric-nat refuse` not qualified). The native host is reached
  through Miredo's relay, by ping and by TCP in both directions.
- `own_lab` (our server, Miredo relay): qualification and a ping to the native host; the daemon
  contract (pidfile, hook calls, SIGHUP, SIGUSR1, SIGTERM cleanup); two of our clients behind
  the same NAT meet through local discovery.
- `fault_lab` (Miredo server and relay, `--refresh 5`): a flushed NAT table (new mapping), 10 %
  loss on the NAT's outside link, the server stopped and started again, and (issue 13) a client
  with two servers, Miredo's and ours, that moves to the other at once (no 100 s wait) when the
  one in use stops. The last two wait about 23 s each for a client to give its server up (RFC
  4380 5.2.5): they have servers of their own (beside the lab's, on further addresses of the
  server host), and module fixtures start them first, so that both waits run while every other
  test of the module does.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import pytest

from teredo.core.qualify import REFRESH_GIVE_UP
from teredo.lab import clientfaults, system, watch
from teredo.lab.nat import NatKind
from teredo.lab.roles import Impl, Role, command, config_text
from teredo.lab.system import ProcRecord
from teredo.lab.teardown import stop_records
from teredo.lab.teredoaddr import TeredoInfo
from teredo.lab.topology import NATIVE_V6, RELAY_V4, SERVER_V4, Lab

from .conftest import prefix_for, received, tear_down

pytestmark = pytest.mark.system

QUALIFY_TIMEOUT = 30.0
SITES = [
    (NatKind.NONE, Impl.TEREDO),  # 1
    (NatKind.FULL_CONE, Impl.TEREDO),  # 2
    (NatKind.ADDRESS_RESTRICTED, Impl.TEREDO),  # 3
    (NatKind.PORT_RESTRICTED, Impl.TEREDO),  # 4
    (NatKind.PORT_RESTRICTED, Impl.MIREDO),  # 5
    (NatKind.PORT_RESTRICTED, Impl.TEREDO),  # 6
    (NatKind.SYMMETRIC, Impl.TEREDO),  # 7
]
SYMMETRIC_SITE = 7

# A small TCP tool run inside the namespaces: every socket has a timeout, so nothing hangs.
TCP_TOOL = r"""
import hashlib, socket, sys, time
mode = sys.argv[1]
def serve(port):
    s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("::", port)); s.listen(1); s.settimeout(30)
    print("listening", flush=True)
    c, _ = s.accept(); c.settimeout(30)
    return c
def connect(host, port):
    end = time.monotonic() + 10
    while True:
        try:
            return socket.create_connection((host, port), timeout=30)
        except OSError:
            if time.monotonic() > end:
                raise
            time.sleep(0.2)
def sink(c):
    h = hashlib.sha256(); n = 0
    while True:
        d = c.recv(65536)
        if not d:
            break
        h.update(d); n += len(d)
    print(n, h.hexdigest(), flush=True)
def source(c, path):
    with open(path, "rb") as f:
        c.sendall(f.read())
    c.shutdown(socket.SHUT_WR); c.recv(1); c.close()
if mode == "serve-sink": sink(serve(int(sys.argv[2])))
elif mode == "serve-source": source(serve(int(sys.argv[2])), sys.argv[3])
elif mode == "sink": sink(connect(sys.argv[2], int(sys.argv[3])))
elif mode == "source": source(connect(sys.argv[2], int(sys.argv[3])), sys.argv[4])
"""


# --------------------------------------------------------------------------- helpers


def start_ours(lab: Lab, index: int, *extra: str, host: str | None = None) -> ProcRecord:
    """Our client on site `index` with extra flags (the lab's own command has none)."""
    return clientfaults.start_client(lab, index, *extra, host=host)


def popen_of(lab: Lab, record: ProcRecord) -> subprocess.Popen[bytes]:
    for proc in lab._popens:
        if proc.pid == record.pid:
            return proc
    raise AssertionError(f"no Popen for {record.name}")


def log_text(lab: Lab, host: str) -> str:
    return "\n".join(
        Path(r.log).read_text(errors="replace") for r in lab.procs if r.host == host and r.log
    )


def wait_for(what: str, check: Callable[[], object], timeout: float, lab: Lab, host: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"{host}: {what} not seen after {timeout} s\n{lab.log_tail(host, 30)}")
        time.sleep(0.2)


def global_addresses(lab: Lab, host: str) -> list[str]:
    out = lab.exec(
        host, ["ip", "-6", "-o", "addr", "show", "dev", "teredo", "scope", "global"], check=False
    ).stdout
    return [f.split("/")[0] for f in re.findall(r"inet6 (\S+)", out)]


def relay_packets(lab: Lab) -> tuple[int, int]:
    base = "/sys/class/net/teredo/statistics"
    out = lab.exec("relay", ["cat", f"{base}/rx_packets", f"{base}/tx_packets"]).stdout.split()
    return int(out[0]), int(out[1])


def nat_outside_tx(lab: Lab, nat_host: str) -> int:
    out = lab.exec(nat_host, ["cat", "/sys/class/net/eth0/statistics/tx_packets"]).stdout
    return int(out)


# --------------------------------------------------------------------------- Miredo lab


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    lab = Lab(
        prefix_for("p"),
        [kind for kind, _ in SITES],
        client_impl=[impl for _, impl in SITES],
    )
    try:
        lab.up()
        watch.install(lab)
        yield lab
    finally:
        tear_down(lab)


@pytest.mark.parametrize("index", [1, 2, 3, 4], ids=[k.value for k, _ in SITES[:4]])
def test_qualifies_behind_cone_nat(lab: Lab, index: int) -> None:
    info = lab.wait_qualified(index, timeout=QUALIFY_TIMEOUT)
    site = lab.site(index)
    assert str(info.server) == SERVER_V4
    assert str(info.mapped_ip) == site.public_ip, "the address embeds the NAT's public IPv4"
    pid = next(r.pid for r in lab.procs if r.host == site.client_host)
    ports = lab.mapped_ports(index, socket_owner=f"pid={pid},")
    assert info.mapped_port in ports, f"mapped port {info.mapped_port}, NAT uses {ports}"
    log = log_text(lab, site.client_host)
    assert f"qualified: address {info.address}" in log
    expected_nat = "none" if site.nat is NatKind.NONE else "restricted"
    assert f"NAT {expected_nat}" in log, log
    # Miredo's client-hook layout: the Teredo /32, the link-local /64, a last-resort default.
    routes = lab.exec(site.client_host, ["ip", "-6", "route", "show", "dev", "teredo"]).stdout
    assert re.search(r"^default .*metric 1029", routes, re.MULTILINE), routes
    assert re.search(r"^2001::/32 ", routes, re.MULTILINE), routes
    links = lab.exec(site.client_host, ["ip", "-6", "addr", "show", "dev", "teredo"]).stdout
    assert "fe80::ffff:ffff:ffff/64" in links, links


def test_symmetric_nat_is_reported_and_qualified(lab: Lab) -> None:
    # RFC 6081 Symmetric NAT Support (the default): the primary server's mapping is kept.
    info = lab.wait_qualified(SYMMETRIC_SITE, timeout=QUALIFY_TIMEOUT)
    site = lab.site(SYMMETRIC_SITE)
    host = site.client_host
    assert str(info.mapped_ip) == site.public_ip
    log = log_text(lab, host)
    assert log.count("symmetric NAT (symmetric, ") == 1, log  # said once
    assert "qualifying with the primary server's mapping" in log, log
    assert "NAT symmetric" in log, log
    assert global_addresses(lab, host) == [str(info.address)]


def test_symmetric_nat_pings_native_host_both_ways_through_relay(lab: Lab) -> None:
    info = lab.wait_qualified(SYMMETRIC_SITE, timeout=QUALIFY_TIMEOUT)
    host = lab.site(SYMMETRIC_SITE).client_host
    out = lab.ping(host, NATIVE_V6, count=4, deadline=15)
    assert received(out.stdout) >= 3, out.stdout
    back = lab.ping("native", str(info.address), count=4, deadline=15)
    assert received(back.stdout) >= 3, back.stdout


def test_symmetric_nat_refused_when_strict(lab: Lab) -> None:
    # SymmetricNat refuse: RFC 4380 section 5.2.1 strictly. A second client on the same site
    # (another port, so another mapping) with the flag.
    host = lab.site(SYMMETRIC_SITE).client_host
    conf = lab.state_dir / f"{host}-strict.conf"
    conf.write_text(config_text(Role.CLIENT, server=SERVER_V4, relay=RELAY_V4), encoding="ascii")
    argv = [sys.executable, "-m", "teredo", "client", "-c", str(conf)]
    argv += ["--symmetric-nat", "refuse", "--interface", "teredo-strict", "--no-control"]
    argv += ["--no-local-discovery"]
    lab.popen(host, argv, name=f"{host}-strict", role="client", impl="teredo")
    record = lab.procs[-1]
    try:
        log = Path(record.log)
        said = lambda: "not qualified (RFC 4380" in log.read_text(errors="replace")  # noqa: E731
        wait_for("refusal", said, 20, lab, host)
        assert "qualified: address" not in log.read_text(errors="replace")
        out = lab.exec(host, ["ip", "-6", "addr", "show", "dev", "teredo-strict"]).stdout
        assert "scope global" not in out, out
    finally:
        assert system.kill_pids({record.pid: record.start_time}) == []


@pytest.mark.parametrize(("a", "b"), [(4, 5), (4, 6)], ids=["ours-miredo", "ours-ours"])
def test_port_restricted_clients_ping_directly(lab: Lab, a: int, b: int) -> None:
    ia: TeredoInfo = lab.wait_qualified(a, timeout=QUALIFY_TIMEOUT)
    ib: TeredoInfo = lab.wait_qualified(b, timeout=QUALIFY_TIMEOUT)
    before = watch.read(lab)
    ping = lab.ping(f"client{a}", str(ib.address), count=5, deadline=15)
    after = watch.read(lab)
    assert received(ping.stdout) >= 4, ping.stdout
    # RFC 4380 section 5.2.4 case 5: bubbles through the server, the data directly.
    assert after["bubbles"] > before["bubbles"], "no indirect bubble went through the server"
    assert after["echo"] == before["echo"], f"echo packets went through the server: {after}"
    back = lab.ping(f"client{b}", str(ia.address), count=4, deadline=10)
    assert received(back.stdout) >= 3, back.stdout
    assert watch.read(lab)["echo"] == before["echo"]


def test_pings_native_host_both_ways_through_relay(lab: Lab) -> None:
    info = lab.wait_qualified(4, timeout=QUALIFY_TIMEOUT)
    rx0, tx0 = relay_packets(lab)
    out = lab.ping("client4", NATIVE_V6, count=4, deadline=15)
    assert received(out.stdout) >= 3, out.stdout
    back = lab.ping("native", str(info.address), count=4, deadline=15)
    assert received(back.stdout) >= 3, back.stdout
    rx, tx = relay_packets(lab)
    assert rx - rx0 >= 6, "requests and replies from the client did not pass the relay"
    assert tx - tx0 >= 6, "packets for the client did not pass the relay"


def _transfer(
    lab: Lab, hosts: tuple[str, str], dest: str, *, upload: bool, data: Path, tool: Path
) -> tuple[int, str]:
    """TCP from hosts[1] to hosts[0] (upload) or back; returns (bytes, sha256) received."""
    server_host, client_host = hosts
    port = "5201"
    serve_mode = "serve-sink" if upload else "serve-source"
    server = lab.popen(
        server_host,
        [sys.executable, str(tool), serve_mode, port, str(data)],
        name=f"tcp-{server_host}",
        stdout=subprocess.PIPE,
    )
    try:
        assert server.stdout is not None
        assert server.stdout.readline().strip() == b"listening"
        mode = ["source", dest, port, str(data)] if upload else ["sink", dest, port]
        client = lab.exec(client_host, [sys.executable, str(tool), *mode], timeout=60)
        out, _ = server.communicate(timeout=60)
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
    text = (out if upload else client.stdout.encode()).decode().split()
    return int(text[0]), text[1]


def test_tcp_transfer_both_ways_with_native_host(lab: Lab, tmp_path: Path) -> None:
    info = lab.wait_qualified(4, timeout=QUALIFY_TIMEOUT)
    data = tmp_path / "data.bin"
    payload = os.urandom(3 * 1024 * 1024)
    data.write_bytes(payload)
    tool = tmp_path / "tcp_tool.py"
    tool.write_text(TCP_TOOL)
    digest = hashlib.sha256(payload).hexdigest()
    # Client -> native host, then native host -> client (connections from either side).
    up = _transfer(lab, ("native", "client4"), NATIVE_V6, upload=True, data=data, tool=tool)
    assert up == (len(payload), digest)
    down = _transfer(lab, ("native", "client4"), NATIVE_V6, upload=False, data=data, tool=tool)
    assert down == (len(payload), digest)
    inbound = _transfer(
        lab, ("client4", "native"), str(info.address), upload=True, data=data, tool=tool
    )
    assert inbound == (len(payload), digest)


def _kernel_counters(lab: Lab, host: str) -> dict[str, int]:
    proc = lab.exec(host, [sys.executable, "-m", "teredo", "status", "--json"])
    docs = json.loads(proc.stdout)
    [doc] = [d for d in docs if d.get("role") == "client"] if isinstance(docs, list) else [docs]
    assert doc["status"]["datapath"] == "kernel", doc["status"]
    counters = doc["status"]["kernel"]
    assert isinstance(counters, dict)
    return counters


def test_kernel_bulk_upload_through_miredos_relay(lab: Lab, tmp_path: Path) -> None:
    """With the IPv4 interface's TX checksum offload off, our client's bulk TCP leaves as GSO
    packets encapsulated in the kernel and segmented by the device (docs/kernel.md, "The
    client daemon"): Miredo's relay takes every segment, the upload arrives intact."""
    lab.exec("client4", ["ethtool", "-K", "eth0", "tx", "off"])
    try:
        lab.stop("client4")
        clientfaults.start_client(lab, 4)
        lab.wait_qualified(4, timeout=QUALIFY_TIMEOUT)
        assert received(lab.ping("client4", NATIVE_V6, count=3, deadline=15).stdout) >= 2
        payload = os.urandom(3 * 1024 * 1024)
        data = tmp_path / "data.bin"
        data.write_bytes(payload)
        tool = tmp_path / "tcp_tool.py"
        tool.write_text(TCP_TOOL)
        before = _kernel_counters(lab, "client4")
        assert before["device_checksum"] == 1, before
        up = _transfer(lab, ("native", "client4"), NATIVE_V6, upload=True, data=data, tool=tool)
        assert up == (len(payload), hashlib.sha256(payload).hexdigest())
        after = _kernel_counters(lab, "client4")
        assert after["encap_gso"] - before["encap_gso"] >= 10, (before, after)
        assert after["encap_partial"] == before["encap_partial"], (before, after)
    finally:
        lab.exec("client4", ["ethtool", "-K", "eth0", "tx", "on"], check=False)
        lab.stop("client4")
        clientfaults.start_client(lab, 4)


# --------------------------------------------------------------------------- our server


@pytest.fixture(scope="module")
def own_lab() -> Iterator[Lab]:
    lab = Lab(
        prefix_for("q"),
        [NatKind.PORT_RESTRICTED, NatKind.PORT_RESTRICTED],
        server_impl=Impl.TEREDO,
        relay_impl=Impl.MIREDO,
        client_impl=[Impl.TEREDO, None],
    )
    try:
        lab.up()
        yield lab
    finally:
        tear_down(lab)


def test_qualifies_with_our_server_and_pings_native(own_lab: Lab) -> None:
    info = own_lab.wait_qualified(1, timeout=QUALIFY_TIMEOUT)
    assert str(info.mapped_ip) == own_lab.site(1).public_ip
    ping = own_lab.ping("client1", NATIVE_V6, count=4, deadline=15)
    assert received(ping.stdout) >= 3, ping.stdout
    back = own_lab.ping("native", str(info.address), count=3, deadline=10)
    assert received(back.stdout) >= 2, back.stdout


HOOK = """#!/bin/sh
echo "$STATE ${ADDRESS:-} ${LLADDRESS:-} ${MTU:-} ${OLD_ADDRESS:-} $IFACE" >> "$0.calls"
"""


def test_daemon_contract_hook_signals_cleanup(own_lab: Lab, tmp_path: Path) -> None:
    hook = tmp_path / "hook.sh"
    hook.write_text(HOOK)
    hook.chmod(0o755)
    calls = Path(f"{hook}.calls")
    pidfile = own_lab.state_dir / "client2-own.pid"
    record = start_ours(own_lab, 2, "--hook", str(hook), "--pidfile", str(pidfile))
    host = record.host
    info = own_lab.wait_qualified(2, timeout=QUALIFY_TIMEOUT)
    assert pidfile.read_text().strip() == str(record.pid)
    wait_for("hook up", calls.exists, 10, own_lab, host)
    first = calls.read_text().splitlines()[0].split()
    assert first == ["up", str(info.address), "fe80::ffff:ffff:ffff", "1280", "teredo"]

    os.kill(record.pid, signal.SIGHUP)
    wait_for("reload", lambda: "address kept" in log_text(own_lab, host), 10, own_lab, host)
    assert own_lab.teredo_address(2) == info, "SIGHUP with the same server keeps the address"
    # A new refresh interval applies at once and keeps the address too.
    conf = own_lab.state_dir / f"{host}.conf"
    plain = conf.read_text()
    conf.write_text(plain + "RefreshInterval 5\n")
    os.kill(record.pid, signal.SIGHUP)
    wait_for("reload", lambda: "refresh interval 5 s" in log_text(own_lab, host), 10, own_lab, host)
    assert own_lab.teredo_address(2) == info, "a new refresh interval keeps the address"
    [doc] = own_lab.daemon_status(host) or [{}]
    assert 3.75 <= doc["status"]["refresh_interval"] <= 5.0, doc
    # A new port in the file: a new socket, hence a new mapping and a new address.
    conf.write_text(plain + "BindPort 3600\n")
    os.kill(record.pid, signal.SIGHUP)
    wait_for(
        "a new address after SIGHUP",
        lambda: (n := own_lab.teredo_address(2)) is not None and n.address != info.address,
        QUALIFY_TIMEOUT,
        own_lab,
        host,
    )
    assert "new socket or prefix" in log_text(own_lab, host)
    os.kill(record.pid, signal.SIGUSR1)
    wait_for("status", lambda: "status {" in log_text(own_lab, host), 10, own_lab, host)

    os.kill(record.pid, signal.SIGTERM)
    assert popen_of(own_lab, record).wait(timeout=15) == 0
    assert not pidfile.exists(), "the pidfile is removed at exit"
    link = own_lab.exec(host, ["ip", "link", "show", "teredo"], check=False)
    assert link.returncode != 0, "the interface is removed at exit"
    states = [line.split()[0] for line in calls.read_text().splitlines()]
    assert states[-2:] == ["down", "destroy"], states


MIREDO_HOOK = "/etc/miredo/client-hook"


def test_miredos_own_hook_works_unchanged(own_lab: Lab) -> None:
    assert Path(MIREDO_HOOK).exists(), "Miredo's client-hook is missing (Debian package miredo)"
    record = start_ours(own_lab, 2, "--hook", MIREDO_HOOK)
    try:
        info = own_lab.wait_qualified(2, timeout=QUALIFY_TIMEOUT)

        # The hook adds the address before the route, so the address alone can be seen first.
        def default_route() -> bool:
            routes = own_lab.exec(record.host, ["ip", "-6", "route", "show", "dev", "teredo"])
            return re.search(r"^default .*metric 1029", routes.stdout, re.MULTILINE) is not None

        wait_for("the hook's default route (metric 1029)", default_route, 10, own_lab, record.host)
        ping = own_lab.ping(record.host, NATIVE_V6, count=3, deadline=10)
        assert received(ping.stdout) >= 2, ping.stdout
        assert global_addresses(own_lab, record.host) == [str(info.address)]
    finally:
        os.kill(record.pid, signal.SIGTERM)
        status = popen_of(own_lab, record).wait(timeout=15)
    assert status == 0, own_lab.log_tail(record.host)
    assert "exit status" not in log_text(own_lab, record.host), "the hook failed"


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--server", SERVER_V4, "--bind-address", "198.51.100.99"], "not an address of this"),
        (["--server", "10.0.0.1"], "not global unicast"),
    ],
    ids=["bind-address", "private-server"],
)
def test_start_refusals_exit_1_and_leave_nothing(
    own_lab: Lab, flags: list[str], message: str
) -> None:
    # In the lab's native host (never the host's own namespace: a TUN would be created there).
    argv = [sys.executable, "-m", "teredo", "client", "--interface", "tdk0", *flags]
    done = own_lab.exec("native", argv, check=False, timeout=30)
    assert done.returncode == 1, done.stderr
    assert message in done.stderr
    # A few lines (the data path, discovery, the start, the error, the summary), no traceback.
    assert len(done.stderr.strip().splitlines()) <= 5, done.stderr
    assert "Traceback" not in done.stderr
    link = own_lab.exec("native", ["ip", "link", "show", "tdk0"], check=False)
    assert link.returncode != 0, "the interface is removed"


def test_two_clients_behind_one_nat_meet(own_lab: Lab) -> None:
    """Client 1 and a second client on the same inside link of NAT 1 (local discovery)."""
    site = own_lab.site(1)
    assert site.nat_host is not None
    second_ns = f"{own_lab.prefix}c1b"
    # Put the NAT's inside interface in a bridge and add a second client to it; the namespace
    # has the lab's prefix, so the lab's teardown removes it and whatever runs in it.
    system.run(["ip", "netns", "add", second_ns])
    ns_exec = ["ip", "netns", "exec", second_ns]
    system.run(
        [
            *ns_exec,
            "sysctl",
            "-q",
            "-w",
            "net.ipv6.conf.all.accept_dad=0",
            "net.ipv6.conf.default.accept_dad=0",
        ]
    )
    own_lab.exec(
        site.nat_host,
        [
            "sh",
            "-ec",
            "ip link add br0 type bridge; ip addr del 192.168.1.1/24 dev in0; "
            "ip link set in0 master br0; ip addr add 192.168.1.1/24 dev br0; ip link set br0 up; "
            f"ip link add in1 type veth peer name eth0 netns {second_ns}; "
            "ip link set in1 master br0; ip link set in1 up",
        ],
    )
    system.ip_batch(
        second_ns,
        [
            "link set lo up",
            "addr add 192.168.1.3/24 dev eth0",
            "link set eth0 up",
            "route add default via 192.168.1.1",
        ],
    )
    first = own_lab.wait_qualified(1, timeout=QUALIFY_TIMEOUT)
    conf = own_lab.state_dir / "client1b.conf"
    conf.write_text(config_text(Role.CLIENT, server=SERVER_V4, relay=RELAY_V4), encoding="ascii")
    log_path = own_lab.state_dir / "client1b.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [*ns_exec, sys.executable, "-m", "teredo", "client", "-c", str(conf)],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        second: list[str] = []

        def qualified() -> bool:
            out = system.run(
                [*ns_exec, "ip", "-6", "-o", "addr", "show", "dev", "teredo", "scope", "global"],
                check=False,
            ).stdout
            second[:] = [f.split("/")[0] for f in re.findall(r"inet6 (\S+)", out)]
            return bool(second)

        deadline = time.monotonic() + QUALIFY_TIMEOUT
        while not qualified():
            assert proc.poll() is None, log_path.read_text()
            assert time.monotonic() < deadline, log_path.read_text()
            time.sleep(0.2)
        outside_before = nat_outside_tx(own_lab, site.nat_host)
        ping = own_lab.ping("client1", second[0], count=6, deadline=15)
        assert received(ping.stdout) >= 5, ping.stdout + log_path.read_text()
        # Local discovery (RFC 4380 section 5.2.8): the echoes stay on the inside link; only
        # the set-up (bubbles through the server) may leave the NAT.
        sent_out = nat_outside_tx(own_lab, site.nat_host) - outside_before
        assert sent_out < 4, f"{sent_out} packets left the NAT: the echoes went outside"
        back = system.run(
            [*ns_exec, "ping", "-6", "-n", "-c", "3", "-i", "0.2", "-w", "10", str(first.address)],
            check=False,
            timeout=15,
        )
        assert received(back.stdout) >= 2, back.stdout
    finally:
        proc.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=10)
        if proc.poll() is None:
            proc.kill()
            proc.wait()


# --------------------------------------------------------------------------- faults


@pytest.fixture(scope="module")
def fault_lab() -> Iterator[Lab]:
    lab = Lab(
        prefix_for("w"),
        [NatKind.PORT_RESTRICTED] * 5,
        client_impl=None,
    )
    try:
        lab.up()
        yield lab
    finally:
        tear_down(lab)


REFRESH = 5.0
# One refresh interval, then up to six refresh RS in 18 s (RFC 4380 section 5.2.5,
# core/qualify.py REFRESH_GIVE_UP), plus slack.
NEW_MAPPING_TIMEOUT = REFRESH + REFRESH_GIVE_UP + 8.0

BLOCK_PORT = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((sys.argv[1], int(sys.argv[2])))
s.sendto(b"block", (sys.argv[3], 3544))
"""


def test_new_mapping_after_conntrack_flush(fault_lab: Lab) -> None:
    lab = fault_lab
    start_ours(lab, 1, "--refresh", str(REFRESH))
    old = lab.wait_qualified(1, timeout=QUALIFY_TIMEOUT)
    site = lab.site(1)
    assert site.nat_host is not None
    # Forget every mapping, and hold the old public port with a flow of the NAT's own, so that
    # the client's next packet gets a new port (Linux would otherwise reuse the same one).
    lab.exec(site.nat_host, ["conntrack", "-F"])
    lab.exec(
        site.nat_host,
        [sys.executable, "-c", BLOCK_PORT, site.public_ip, str(old.mapped_port), SERVER_V4],
    )
    host = site.client_host
    wait_for(
        "a new address",
        lambda: (n := lab.teredo_address(1)) is not None and n.address != old.address,
        NEW_MAPPING_TIMEOUT,
        lab,
        host,
    )
    new = lab.teredo_address(1)
    assert new is not None
    assert new.mapped_port != old.mapped_port
    assert new.mapped_port in lab.mapped_ports(1, socket_owner="(unused behind a NAT)")
    assert global_addresses(lab, host) == [str(new.address)], "the old address is retired"
    assert "address changed" in log_text(lab, host)
    ping = lab.ping(host, NATIVE_V6, count=3, deadline=10)
    assert received(ping.stdout) >= 2, ping.stdout


# 10 % loss each way on the NAT's outside link. tc netem would do, but the lab kernel may lack
# sch_netem; nftables' random number generator drops the same share without a module.
LOSS_RULES = """table ip tlab_loss {
  chain loss {
    type filter hook forward priority 10; policy accept;
    iifname "eth0" numgen random mod 10 0 counter drop
    oifname "eth0" numgen random mod 10 0 counter drop
  }
}
"""


def test_qualifies_with_ten_percent_loss(fault_lab: Lab) -> None:
    lab = fault_lab
    site = lab.site(2)
    assert site.nat_host is not None
    lab.exec(site.nat_host, ["nft", "-f", "-"], input_text=LOSS_RULES)
    start_ours(lab, 2, "--refresh", str(REFRESH))
    info = lab.wait_qualified(2, timeout=QUALIFY_TIMEOUT)
    assert str(info.mapped_ip) == site.public_ip
    ping = lab.ping(site.client_host, NATIVE_V6, count=20, deadline=15)
    if received(ping.stdout) == 0 and "unreachable" in ping.stdout:
        # Under loss a whole connectivity test (4 echo requests 2 s apart, RFC 4380 section
        # 5.2.4 case 2) can go unanswered, more so as Miredo's relay retries its bubbles only
        # when traffic comes; the client then reports the destination unreachable (ping stops
        # at that error) and runs a new test for the next packet. One more try, and no more.
        ping = lab.ping(site.client_host, NATIVE_V6, count=20, deadline=15)
    assert received(ping.stdout) >= 8, ping.stdout
    rules = lab.exec(site.nat_host, ["nft", "list", "table", "ip", "tlab_loss"]).stdout
    dropped = sum(int(n) for n in re.findall(r"counter packets (\d+)", rules))
    assert dropped > 0, f"the loss rules dropped nothing: {rules}"


SERVER_NAME = "teredo-server.lab"


def test_unresolvable_server_name_is_retried(fault_lab: Lab) -> None:
    """No name resolution at start (no network at boot): the daemon waits, then qualifies."""
    lab = fault_lab
    host = lab.site(4).client_host
    # `ip netns exec` bind-mounts /etc/netns/<ns>/* over /etc: the client resolves through a
    # hosts file of its own and a DNS server on its own loopback (nothing leaves the lab).
    etc = Path("/etc/netns") / lab.ns(host)
    etc.mkdir(parents=True, exist_ok=False)
    try:
        (etc / "resolv.conf").write_text("nameserver 127.0.0.1\noptions timeout:1 attempts:1\n")
        hosts = etc / "hosts"
        hosts.write_text("127.0.0.1 localhost\n")
        record = start_ours(lab, 4, "--server", SERVER_NAME)
        wait_for(
            "a failed resolution",
            lambda: "cannot resolve the Teredo server" in log_text(lab, host),
            15,
            lab,
            host,
        )
        assert record.alive(), "an unresolvable name must not end the daemon"
        assert global_addresses(lab, host) == []
        with hosts.open("a") as stream:  # in place: the bind mount keeps the same inode
            stream.write(f"{SERVER_V4} {SERVER_NAME}\n")
        info = lab.wait_qualified(4, timeout=QUALIFY_TIMEOUT)
        assert str(info.server) == SERVER_V4
        log = log_text(lab, host)
        assert log.index("cannot resolve") < log.index(f"qualifying with server {SERVER_V4}")
    finally:
        lab.stop(host)
        shutil.rmtree(etc, ignore_errors=True)


# test_server_lost_and_back's own Miredo server (the lab's keeps SERVER_V4 for the other tests).
LONE_SERVER_V4 = clientfaults.SECOND_SERVER_V4
LONE_SERVER = "server-lone"
# The failover test's two servers, Miredo's and ours (each with the next address too).
FAILOVER_MIREDO_V4, FAILOVER_OURS_V4 = "198.51.100.14", "198.51.100.16"
FAILOVER_MIREDO, FAILOVER_OURS = "server-fo-miredo", "server-fo-ours"
FAILOVER_SITE = 5
# Loss of contact: one refresh interval, then six refresh RS in 18 s (RFC 4380 5.2.5;
# core/qualify.py REFRESH_GIVE_UP); then the next server at once; slack for a loaded machine.
FAILOVER_TIMEOUT = REFRESH + REFRESH_GIVE_UP + 15.0


def _add_addresses(lab: Lab, *primaries: str) -> None:
    """Each primary and the next address (a server's two, RFC 4380 5.2.1) on the server host."""
    addrs = []
    for primary in primaries:
        a, b, c, d = primary.split(".")
        addrs += [primary, f"{a}.{b}.{c}.{int(d) + 1}"]
    system.ip_batch(lab.ns("server"), [f"addr add {a}/24 dev eth0" for a in addrs])


def _start_miredo_server(lab: Lab, name: str, v4: str) -> None:
    conf = lab.state_dir / f"{name}.conf"
    conf.write_text(config_text(Role.SERVER, server=v4, relay=RELAY_V4))
    argv = command(Role.SERVER, Impl.MIREDO, conf, lab.state_dir / f"{name}.pid")
    lab.popen("server", argv, name=name, role="server", impl="miredo")


def _stop_server(lab: Lab, name: str) -> None:
    records = [r for r in lab.procs if r.name == name and r.alive()]
    assert records, f"no running {name}"
    stop_records(records)


# Run in the server host once the lone server has stopped: waits (bounded) for the client's
# log to say it lost contact, notes the client's global addresses at that moment, then
# becomes the lone server again (exec), as soon as the original test started it.
BACK_AT_LOSS = """
import os, subprocess, sys, time
log, ns, timeout = sys.argv[1], sys.argv[2], float(sys.argv[3])
deadline = time.monotonic() + timeout
while "contact with the server" not in open(log, errors="replace").read():
    if time.monotonic() > deadline:
        print("no loss of contact", flush=True)
        sys.exit(1)
    time.sleep(0.1)
show = ["ip", "netns", "exec", ns, "ip", "-6", "-o", "addr", "show", "dev", "teredo", "scope"]
out = subprocess.run([*show, "global"], capture_output=True, text=True, check=False).stdout
print("addresses at the loss:", len(out.split()), flush=True)
os.execvp(sys.argv[4], sys.argv[4:])
"""


@dataclass(frozen=True)
class LostServer:
    host: str
    info: TeredoInfo  # client 3's address before its server stopped
    back_log: Path  # BACK_AT_LOSS's output, then the server's


@pytest.fixture(scope="module", autouse=True)
def lost_server(fault_lab: Lab) -> LostServer:
    """First in the module: client 3 qualifies with the lone server, which then stops; the
    client's loss of contact (one refresh interval, then six refresh RS in 18 s) comes while
    the module's other tests run, and BACK_AT_LOSS starts the server again at once (later, the
    client's qualification back-off would have grown: core/qualify.py RESTART_FIRST, doubled).
    test_server_lost_and_back, last, checks what happened."""
    lab = fault_lab
    _add_addresses(lab, LONE_SERVER_V4)
    _start_miredo_server(lab, LONE_SERVER, LONE_SERVER_V4)
    host = lab.site(3).client_host
    record = start_ours(lab, 3, "--server", LONE_SERVER_V4, "--refresh", str(REFRESH))
    info = lab.wait_qualified(3, timeout=QUALIFY_TIMEOUT)
    assert str(info.server) == LONE_SERVER_V4, info
    _stop_server(lab, LONE_SERVER)
    conf = lab.state_dir / f"{LONE_SERVER}.conf"
    server = command(Role.SERVER, Impl.MIREDO, conf, lab.state_dir / f"{LONE_SERVER}.pid")
    argv = [sys.executable, "-c", BACK_AT_LOSS, record.log, lab.ns(host)]
    name = f"{LONE_SERVER}-back"
    lab.popen("server", [*argv, str(NEW_MAPPING_TIMEOUT), *server], name=name, role="server")
    return LostServer(host, info, Path(lab.procs[-1].log))


@dataclass(frozen=True)
class Failover:
    host: str
    first: TeredoInfo  # the address with the server in use, before it stopped
    in_use: str
    other: str
    stopped: float  # time.time() of the stop: the client's log has wall-clock times


@pytest.fixture(scope="module", autouse=True)
def failover(fault_lab: Lab) -> Failover:
    """First in the module: client 5 qualifies with the better of its two servers by round
    trip, which then stops (only that one: both share a namespace); its move to the other
    comes while the module's other tests run. The failover test, near the end, checks it."""
    lab = fault_lab
    _add_addresses(lab, FAILOVER_MIREDO_V4, FAILOVER_OURS_V4)
    _start_miredo_server(lab, FAILOVER_MIREDO, FAILOVER_MIREDO_V4)
    ours = [sys.executable, "-m", "teredo", "server", "--bind", FAILOVER_OURS_V4, "--no-control"]
    lab.popen("server", ours, name=FAILOVER_OURS, role="server", impl="teredo")
    host = lab.site(FAILOVER_SITE).client_host
    flags = ("--server", FAILOVER_MIREDO_V4, "--server", FAILOVER_OURS_V4)
    start_ours(lab, FAILOVER_SITE, *flags, "--refresh", str(REFRESH))
    first = lab.wait_qualified(FAILOVER_SITE, timeout=QUALIFY_TIMEOUT)
    assert "servers by round trip:" in log_text(lab, host)
    in_use = str(first.server)
    other = FAILOVER_OURS_V4 if in_use == FAILOVER_MIREDO_V4 else FAILOVER_MIREDO_V4
    stopped = time.time()
    _stop_server(lab, FAILOVER_OURS if in_use == FAILOVER_OURS_V4 else FAILOVER_MIREDO)
    return Failover(host, first, in_use, other, stopped)


def test_moves_to_the_other_server_when_the_one_in_use_stops(
    fault_lab: Lab, failover: Failover
) -> None:
    lab, fo = fault_lab, failover
    took = clientfaults.wait_new_address(
        lab, FAILOVER_SITE, str(fo.first.address), timeout=FAILOVER_TIMEOUT
    )
    assert took is not None, lab.log_tail(fo.host, 30)
    again = lab.teredo_address(FAILOVER_SITE)
    assert again is not None
    assert str(again.server) == fo.other
    log = log_text(lab, fo.host)
    moving = f"server {fo.in_use} is not answering: moving to server {fo.other}"
    assert moving in log, log
    # Miredo would wait 100 s before asking the same (dead) server again. The move is timed
    # by the client's own log line (the test comes later): "YYYY-MM-DD HH:MM:SS,mmm LEVEL ...".
    line = next(line for line in log.splitlines() if moving in line)
    moved = datetime.strptime(" ".join(line.split()[:2]), "%Y-%m-%d %H:%M:%S,%f").timestamp()
    assert moved - fo.stopped < FAILOVER_TIMEOUT, line


def test_server_lost_and_back(fault_lab: Lab, lost_server: LostServer) -> None:
    lab, host, back_log = fault_lab, lost_server.host, lost_server.back_log
    # BACK_AT_LOSS gives up NEW_MAPPING_TIMEOUT after the stop; the slack is for its exit.
    wait_for(
        "loss of contact",
        lambda: re.search("addresses at the loss:|no loss", back_log.read_text(errors="replace")),
        NEW_MAPPING_TIMEOUT + 5,
        lab,
        host,
    )
    assert "contact with the server" in log_text(lab, host), lab.log_tail(host, 30)
    seen = back_log.read_text(errors="replace").split("addresses at the loss:")[1].split()[0]
    assert seen == "0", "no address without a server"
    again = lab.wait_qualified(3, timeout=QUALIFY_TIMEOUT)
    assert again.mapped_ip == lost_server.info.mapped_ip
    ping = lab.ping(host, NATIVE_V6, count=3, deadline=10)
    assert received(ping.stdout) >= 2, ping.stdout
