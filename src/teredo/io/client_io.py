"""The client's output (RFC 4380 5.2): `ClientIO`, the ClientTransmit of a running client.

Datagrams go out of the Teredo socket (one call each, or queued for sendmmsg until the
daemon's flush), discovery bubbles once per private interface (section 5.2.8), packets for the
local stack into the TUN; every failure is counted, never raised into the machine.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from teredo.core.addr import TEREDO_PORT, Address
from teredo.io.discovery import DISCOVERY_GROUP
from teredo.io.udp import UdpSender

if TYPE_CHECKING:
    from teredo.io.mmsg import BatchSender

MMSG_BATCH = 64  # datagrams per sendmmsg call


def send_errors(io: ClientIO | None) -> dict[str, int]:
    """The send errors of `io` by kind (none yet before the daemon opened its sockets)."""
    if io is None:
        return {"udp": 0, "tun": 0, "discovery": 0}
    return {"udp": io.udp_errors, "tun": io.tun_errors, "discovery": io.discovery_errors}


class ClientIO:
    """The ClientTransmit of a running client: the Teredo socket, discovery, the TUN."""

    def __init__(
        self,
        sock: socket.socket,
        tun_fd: int,
        discovery_addresses: Sequence[str] = (),
        *,
        batch: bool = False,
    ) -> None:
        self._sock = sock
        self._send = UdpSender(sock)
        # With sendmmsg, datagrams wait in a queue until the daemon's flush() at the end of
        # each wake-up: one system call for a whole TUN batch (DESIGN.md "The hot path").
        self._batch: BatchSender | None = None
        if batch:
            from teredo.io.mmsg import BatchSender  # noqa: PLC0415 (ctypes: 10 ms at start)

            self._batch = BatchSender(sock, MMSG_BATCH)
        # One Python call per datagram on the data path: the sender itself, not a wrapper
        # method (ClientTransmit.send_udp is this attribute).
        self.send_udp: Callable[[bytes, Address], None] = (
            self._batch.send if self._batch is not None else self._send
        )
        self._tun_fd = tun_fd
        self._write = os.write
        self.discovery_addresses = list(discovery_addresses)
        self.tun_errors = 0
        self.discovery_errors = 0

    def flush(self) -> None:
        """Sends what the batch queue holds (no-op without batching)."""
        if self._batch is not None:
            self._batch.flush()

    def send_discovery(self, payload: bytes) -> None:
        # Sent from the Teredo socket (its port is what peers must learn), once per private
        # interface: IP_MULTICAST_IF picks the link.
        for address in self.discovery_addresses:
            try:
                self._sock.setsockopt(
                    socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton(address)
                )
                self._sock.sendto(payload, (DISCOVERY_GROUP, TEREDO_PORT))
            except OSError:
                self.discovery_errors += 1

    def write_tun(self, packet: bytes) -> None:
        try:
            self._write(self._tun_fd, packet)
        except OSError:
            # A full TUN queue or a packet the kernel refuses is lost like any packet.
            self.tun_errors += 1

    def set_tun_fd(self, fd: int) -> None:
        """The interface was created again: later packets for the stack go to its new fd."""
        self._tun_fd = fd

    @property
    def udp_errors(self) -> int:
        return self._send.errors + (self._batch.errors if self._batch is not None else 0)
