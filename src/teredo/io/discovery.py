"""Local discovery sockets (RFC 4380 section 5.2.8) and the client's local address.

Which interfaces have a private IPv4 (discovery makes sense on private links only), the
socket that joins 224.0.0.253:3544 on them, and the multicast options of the Teredo socket
that sends discovery bubbles; `local_address_towards` tells whether a NAT is in front of us.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import socket
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from teredo.core.addr import TEREDO_PORT, Address, int_to_ipv4, ipv4_to_int, is_global_ipv4
from teredo.io.udp import drain

if TYPE_CHECKING:
    from teredo.io.loop import DaemonLoop

log = logging.getLogger("teredo.client")

DISCOVERY_GROUP = "224.0.0.253"  # RFC 4380 section 2.17 / 5.2.8: Teredo local discovery


def local_address_towards(server: int, port: int) -> tuple[int, int] | None:
    """The local IPv4 the kernel would use towards `server`, with our `port`; None if no route.

    A connected UDP socket sends nothing: connect() only selects the route and source address.
    The machine compares its mapping with this (NatType.NONE: no NAT in front of us).
    """
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        probe.connect((int_to_ipv4(server), TEREDO_PORT))
        local = probe.getsockname()[0]
    except OSError:
        return None
    finally:
        probe.close()
    return ipv4_to_int(local), port


# SIOCGIFADDR (linux/sockios.h) on a struct ifreq: the interface's primary IPv4 address.
_SIOCGIFADDR = 0x8915
_IFREQ = struct.Struct("16s16x")


def local_address(server: int, port: int, bind_address: str) -> tuple[int, int] | None:
    """The client socket's local IPv4 and `port` towards `server` (the NatType.NONE test of
    RFC 4380 section 5.2.1): the bound address when there is one; None when the kernel has no
    route there (the uplink is gone)."""
    towards = local_address_towards(server, port)
    if towards is not None and bind_address != "0.0.0.0":  # noqa: S104
        return ipv4_to_int(bind_address), port
    return towards


@dataclass(frozen=True, slots=True)
class DiscoveryInterface:
    index: int
    name: str
    address: str


def discovery_interfaces() -> list[DiscoveryInterface]:
    """Interfaces with a private (non-global) IPv4 address, loopback excluded (5.2.8).

    Local discovery finds peers behind the same NAT: it makes sense only on private links.
    The primary IPv4 address of each interface (SIOCGIFADDR), as Miredo sees them too.
    """
    found: list[DiscoveryInterface] = []
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        for index, name in socket.if_nameindex():
            try:
                got = fcntl.ioctl(probe, _SIOCGIFADDR, _IFREQ.pack(name.encode()))
            except OSError:
                continue  # no IPv4 address (EADDRNOTAVAIL), or gone meanwhile
            value = int.from_bytes(got[20:24], "big")  # sockaddr_in: family, port, address
            if value >> 24 == 127 or is_global_ipv4(value):
                continue
            found.append(DiscoveryInterface(index, name, int_to_ipv4(value)))
    return found


class DiscoverySocket:
    """Receives local discovery bubbles sent to 224.0.0.253:3544 (RFC 4380 section 5.2.8)."""

    def __init__(self, interfaces: Sequence[DiscoveryInterface]) -> None:
        self.interfaces = list(interfaces)
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            # Other Teredo clients on this host listen on the same group and port.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind((DISCOVERY_GROUP, TEREDO_PORT))
            joined = 0
            for itf in self.interfaces:
                # struct ip_mreq: the group, then the local address naming the interface.
                mreq = socket.inet_aton(DISCOVERY_GROUP) + socket.inet_aton(itf.address)
                try:
                    sock.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, mreq)
                    joined += 1
                except OSError as exc:
                    log.warning("local discovery: cannot join on %s: %s", itf.name, exc.strerror)
            sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP, 0)
            sock.setblocking(False)
        except OSError:
            sock.close()
            raise
        self.sock = sock
        self.joined = joined

    def close(self) -> None:
        self.sock.close()


class LocalDiscovery:
    """The daemon's local discovery (optional, RFC 4380 section 5.2.8): the group socket on
    the private interfaces of now, read by the asyncio loop; `feed(data, source)` gets each
    datagram, `after()` runs once a burst is read."""

    def __init__(
        self,
        loop: DaemonLoop,
        feed: Callable[[bytes, Address], None],
        after: Callable[[], None],
    ) -> None:
        self.loop = loop
        self._feed = feed
        self._after = after
        self.socket: DiscoverySocket | None = None

    @property
    def active(self) -> bool:
        return self.socket is not None

    def open(self, bind_address: str) -> list[str]:
        """Joins the group on the private interfaces (those of `bind_address` only, when it
        is not 0.0.0.0); returns their addresses, [] when discovery cannot run."""
        try:
            interfaces = discovery_interfaces()
            if bind_address != "0.0.0.0":  # noqa: S104
                interfaces = [i for i in interfaces if i.address == bind_address]
            if not interfaces:
                log.info("local discovery: no interface with a private IPv4 address")
                return []
            self.socket = DiscoverySocket(interfaces)
        except OSError as exc:
            # Discovery is optional (RFC 4380 section 5.2.8): the client runs without it.
            log.warning("local discovery disabled: %s", exc.strerror or exc)
            return []
        self.loop.add_reader(self.socket.sock.fileno(), self._drain)
        log.info("local discovery on %s", ", ".join(f"{i.name} {i.address}" for i in interfaces))
        return [i.address for i in interfaces]

    def _drain(self) -> None:
        if self.socket is not None:
            drain(self.socket.sock, self._feed)
        self._after()

    def close(self) -> None:
        sock, self.socket = self.socket, None
        if sock is not None:
            with contextlib.suppress(ValueError, OSError):
                self.loop.remove_reader(sock.sock.fileno())
            sock.close()


def configure_multicast_sending(sock: socket.socket) -> None:
    """Discovery bubbles leave the Teredo socket itself with TTL 1 and no loop (5.2.8)."""
    sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 1)
    sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP, 0)
