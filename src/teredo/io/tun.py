"""The Linux TUN device: one file descriptor that reads and writes raw IPv6 packets.

pytun configures IPv4 only and pyroute2's tuntap helper closes the descriptor once the device
exists, so the device is opened here with the TUNSETIFF ioctl and the daemon keeps the fd.
Addresses, routes and MTU are set through netlink (teredo.io.netlink), not here.
"""

from __future__ import annotations

import fcntl
import os
import struct

TUN_DEVICE = "/dev/net/tun"
TUNSETIFF = 0x400454CA
IFF_TUN = 0x0001
IFF_NO_PI = 0x1000
IFNAMSIZ = 16

# Large enough for any IPv6 packet the kernel can hand us on a TUN of MTU <= 65535.
MAX_PACKET = 65535


class TunError(OSError):
    """The TUN device could not be created or used."""


class TunDevice:
    """An open TUN interface without packet information headers (IFF_NO_PI): raw IP packets only."""

    def __init__(self, fd: int, name: str) -> None:
        self.fd = fd
        self.name = name

    @classmethod
    def open(cls, name: str) -> TunDevice:
        if not name or len(name.encode()) >= IFNAMSIZ:
            raise TunError(f"invalid interface name {name!r} (1 to {IFNAMSIZ - 1} bytes)")
        try:
            fd = os.open(TUN_DEVICE, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError as exc:
            raise TunError(exc.errno, f"cannot open {TUN_DEVICE}: {exc.strerror}") from exc
        request = struct.pack("16sH22x", name.encode(), IFF_TUN | IFF_NO_PI)
        try:
            answer = fcntl.ioctl(fd, TUNSETIFF, request)
        except OSError as exc:
            os.close(fd)
            raise TunError(exc.errno, f"cannot create TUN {name!r}: {exc.strerror}") from exc
        actual = answer[:IFNAMSIZ].rstrip(b"\0").decode()
        return cls(fd, actual)

    def read(self) -> bytes | None:
        """One packet, or None when nothing is waiting (the fd is non-blocking)."""
        try:
            return os.read(self.fd, MAX_PACKET)
        except BlockingIOError:
            return None

    def write(self, packet: bytes | bytearray | memoryview) -> None:
        # A full TUN queue or a packet the kernel refuses is dropped like any lost packet: the
        # caller counts it, the daemon carries on.
        os.write(self.fd, packet)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> TunDevice:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
