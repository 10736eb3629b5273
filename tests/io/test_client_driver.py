"""The client daemon's adapters: tunnel configuration per event, name resolution, transmit."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
from pathlib import Path

import pytest

from teredo.core.addr import LINK_LOCAL_RESTRICTED, ipv4_to_int, is_global_ipv4, pack_address
from teredo.io.client_io import ClientIO
from teredo.io.discovery import discovery_interfaces
from teredo.io.hook import HookRunner
from teredo.io.loop import DaemonLoop
from teredo.io.netlink import NetlinkConfigError
from teredo.io.resolve import ServerResolver, resolve_ipv4
from teredo.io.tunnel import TunnelConfigurator

FIRST = pack_address(b"\x20\x01\x00\x00", 0xC6336410, 0x0100, 0x5678, 0x34567890)
SECOND = pack_address(b"\x20\x01\x00\x00", 0xC6336410, 0x0200, 0x1111, 0x34567890)
LL = "fe80::ffff:ffff:ffff"


class FakeInterface:
    """Records the configuration as the kernel would hold it (addresses and routes)."""

    def __init__(self, fail_on: str | None = None) -> None:
        self.up = False
        self.mtu = 0
        self.addresses: set[tuple[str, int]] = set()
        self.routes: set[tuple[str, int | None]] = set()
        self.fail_on = fail_on

    def _maybe_fail(self, what: str) -> None:
        if what == self.fail_on:
            raise NetlinkConfigError(f"fake: {what} failed")

    def index(self) -> int:
        return 9

    def set_up(self, mtu: int | None = None) -> None:
        self.up = True
        if mtu is not None:
            self.mtu = mtu

    def set_down(self) -> None:
        self.up = False

    def set_mtu(self, mtu: int) -> None:
        self._maybe_fail("mtu")
        self.mtu = mtu

    def add_address(self, address: str, prefixlen: int) -> None:
        self._maybe_fail("add_address")
        self.addresses.add((address, prefixlen))

    def remove_address(self, address: str, prefixlen: int) -> None:
        self.addresses.discard((address, prefixlen))

    def add_route(self, destination: str, metric: int | None = None) -> None:
        self.routes.add((destination, metric))

    def remove_route(self, destination: str, metric: int | None = None) -> None:
        self.routes.discard((destination, metric))


def v6(address: bytes) -> str:
    return str(socket.inet_ntop(socket.AF_INET6, address))


def test_no_global_address_until_qualified() -> None:
    itf = FakeInterface()
    tunnel = TunnelConfigurator(itf)
    tunnel.prepare()
    assert itf.up
    assert itf.mtu == 1280
    assert itf.addresses == set()
    assert itf.routes == set()


def test_qualified_configures_like_miredos_hook() -> None:
    itf = FakeInterface()
    tunnel = TunnelConfigurator(itf)
    tunnel.prepare()
    tunnel.qualified(FIRST, LINK_LOCAL_RESTRICTED, 1400)
    assert itf.mtu == 1400
    assert itf.addresses == {(LL, 64), (v6(FIRST), 32)}
    assert itf.routes == {("::/0", 1029)}


def test_address_change_retires_the_old_address() -> None:
    itf = FakeInterface()
    tunnel = TunnelConfigurator(itf)
    tunnel.qualified(FIRST, LINK_LOCAL_RESTRICTED, 1280)
    tunnel.address_changed(FIRST, SECOND, LINK_LOCAL_RESTRICTED, 1280)
    assert itf.addresses == {(LL, 64), (v6(SECOND), 32)}
    assert itf.routes == {("::/0", 1029)}


def test_offline_takes_everything_away_and_teardown_downs_the_link() -> None:
    itf = FakeInterface()
    tunnel = TunnelConfigurator(itf)
    tunnel.prepare()
    tunnel.qualified(FIRST, LINK_LOCAL_RESTRICTED, 1280)
    tunnel.offline()
    assert itf.addresses == set()
    assert itf.routes == set()
    assert itf.up
    tunnel.qualified(SECOND, LINK_LOCAL_RESTRICTED, 1280)
    tunnel.teardown()
    assert (itf.addresses, itf.routes, itf.up) == (set(), set(), False)


def test_without_default_route_only_addresses() -> None:
    itf = FakeInterface()
    TunnelConfigurator(itf, default_route=False).qualified(FIRST, LINK_LOCAL_RESTRICTED, 1280)
    assert itf.routes == set()
    assert (v6(FIRST), 32) in itf.addresses


def test_default_route_switched_on_reload() -> None:
    itf = FakeInterface()
    tunnel = TunnelConfigurator(itf)
    tunnel.set_default_route(False)  # not qualified: nothing to remove, remembered
    tunnel.qualified(FIRST, LINK_LOCAL_RESTRICTED, 1280)
    assert itf.routes == set()
    tunnel.set_default_route(True)
    assert itf.routes == {("::/0", 1029)}
    tunnel.set_default_route(False)
    assert itf.routes == set()


def test_netlink_failure_is_counted_not_raised() -> None:
    itf = FakeInterface(fail_on="add_address")
    tunnel = TunnelConfigurator(itf)
    tunnel.qualified(FIRST, LINK_LOCAL_RESTRICTED, 1280)
    assert tunnel.errors == 1
    assert tunnel.address == FIRST  # the state follows the machine; the next event retries


def test_hook_calls_follow_the_events(tmp_path: Path) -> None:
    calls: list[tuple[str, str | None]] = []

    def runner(argv: list[str], env: dict[str, str], timeout: float) -> int:
        calls.append((env["STATE"], env.get("ADDRESS")))
        return 0

    hook = HookRunner("/hook", "teredo", 9, base_env={}, runner=runner)
    tunnel = TunnelConfigurator(FakeInterface(), hook)
    tunnel.prepare()
    tunnel.offline()  # not qualified yet: nothing to tell
    tunnel.qualified(FIRST, LINK_LOCAL_RESTRICTED, 1280)
    tunnel.address_changed(FIRST, SECOND, LINK_LOCAL_RESTRICTED, 1280)
    tunnel.mtu_changed(1400)
    tunnel.offline()
    tunnel.teardown()
    assert calls == [
        ("up", v6(FIRST)),
        ("up", v6(SECOND)),
        ("up", v6(SECOND)),
        ("down", None),
        ("down", None),
        ("destroy", None),
    ]


def test_resolve_ipv4_literal_needs_no_lookup() -> None:
    assert resolve_ipv4("198.51.100.10") == 0xC633640A
    assert resolve_ipv4("localhost") >> 24 == 127


def _run_until(loop: DaemonLoop, done: list[object], limit: float = 5.0) -> None:
    def check() -> None:
        if done:
            loop.loop.stop()
        else:
            loop.loop.call_later(0.01, check)

    loop.loop.call_later(limit, loop.loop.stop)
    loop.loop.call_soon(check)
    loop.loop.run_forever()


def test_resolver_retries_with_backoff_until_the_name_resolves() -> None:
    attempts: list[str] = []

    def flaky(name: str) -> int:
        attempts.append(name)
        if len(attempts) < 3:
            raise OSError(-2, "Name or service not known")
        return 0xC6336410

    loop = DaemonLoop()
    got: list[object] = []
    try:
        resolver = ServerResolver(loop, got.append, resolve=flaky, first_delay=0.01)
        resolver.request("teredo.example", None)
        _run_until(loop, got)
    finally:
        loop.close()
    assert got == [(0xC6336410, None)]
    assert attempts == ["teredo.example"] * 3
    assert resolver.failures == 2
    assert not resolver.pending


def test_resolver_request_replaces_a_pending_one() -> None:
    def slow_then_fast(name: str) -> int:
        if name == "old.example":
            raise OSError(-2, "not yet")
        return 0xC6336420

    loop = DaemonLoop()
    got: list[object] = []
    try:
        resolver = ServerResolver(loop, got.append, resolve=slow_then_fast, first_delay=0.05)
        resolver.request("old.example", None)
        resolver.request("new.example", "new2.example")
        _run_until(loop, got)
        loop.loop.run_until_complete(_sleep(loop, 0.2))  # the old request's retries are dead
    finally:
        loop.close()
    assert got == [(0xC6336420, 0xC6336420)]


async def _sleep(loop: DaemonLoop, seconds: float) -> None:

    await asyncio.sleep(seconds)


def test_client_io_moves_bytes_and_counts_failures() -> None:
    receiver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    read_fd, write_fd = os.pipe()
    try:
        receiver.bind(("127.0.0.1", 0))
        receiver.settimeout(2.0)
        sender.bind(("127.0.0.1", 0))
        io = ClientIO(sender, write_fd)
        io.send_udp(b"teredo", receiver.getsockname())
        data, source = receiver.recvfrom(100)
        assert (data, source) == (b"teredo", sender.getsockname())
        io.write_tun(b"\x60packet")
        assert os.read(read_fd, 100) == b"\x60packet"
        os.close(read_fd)
        read_fd = -1
        io.write_tun(b"\x60lost")  # EPIPE: counted, not raised
        assert io.tun_errors == 1
        io.send_udp(b"x" * 70000, receiver.getsockname())  # EMSGSIZE
        assert io.udp_errors == 1
    finally:
        receiver.close()
        sender.close()
        os.close(write_fd)
        if read_fd >= 0:
            os.close(read_fd)


def test_client_io_batches_until_flush() -> None:
    receiver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        receiver.bind(("127.0.0.1", 0))
        receiver.setblocking(False)
        sender.bind(("127.0.0.1", 0))
        io = ClientIO(sender, -1, batch=True)
        for n in range(3):
            io.send_udp(b"datagram %d" % n, receiver.getsockname())
        with pytest.raises(BlockingIOError):
            receiver.recvfrom(100)  # queued, not sent yet
        io.flush()
        receiver.settimeout(2.0)
        got = [receiver.recvfrom(100)[0] for _ in range(3)]
        assert got == [b"datagram 0", b"datagram 1", b"datagram 2"]
        assert io.udp_errors == 0
    finally:
        receiver.close()
        sender.close()


def test_discovery_interfaces_are_private_and_not_loopback() -> None:
    found = discovery_interfaces()
    for itf in found:
        assert not itf.address.startswith("127."), itf
        assert not is_global_ipv4(ipv4_to_int(itf.address)), itf
        # Independent check of the ioctl decoding: iproute2 shows the same address there.
        shown = subprocess.run(
            ["ip", "-o", "-4", "addr", "show", "dev", itf.name],
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        ).stdout
        assert f" {itf.address}/" in shown, (itf, shown)
        assert socket.if_nametoindex(itf.name) == itf.index
    # And the other way: each interface's first private IPv4 address (iproute2) is found.
    listed = subprocess.run(
        ["ip", "-o", "-4", "addr", "show"], capture_output=True, text=True, check=True, timeout=10
    ).stdout
    first: dict[str, str] = {}
    for line in listed.splitlines():
        words = line.split()
        first.setdefault(words[1].split("@")[0], words[3].split("/")[0])  # veth0@if3
    expected = {
        (name, address)
        for name, address in first.items()
        if not address.startswith("127.") and not is_global_ipv4(ipv4_to_int(address))
    }
    assert {(i.name, i.address) for i in found} == expected
