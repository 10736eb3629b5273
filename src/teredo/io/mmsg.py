"""Batched UDP/IPv4 I/O: recvmmsg(2) and sendmmsg(2) through ctypes (CPython has neither).

One system call moves up to `batch` datagrams, which saves the per-call cost of the kernel's
entry and exit and of Python's socket method (DESIGN.md, "The hot path"). Buffers, iovecs and
address slots are allocated once; each batch copies its data in or out with a few memmoves.
Linux x86-64/aarch64 layouts (LP64): `struct msghdr` is 56 bytes, `struct mmsghdr` 64.

Measured on the server's RS flood (docs/benchmarks.md, "Server"), batching cost more Python
time per datagram than it saved in the kernel, so the server does not use it.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import socket
import struct
from array import array
from collections.abc import Callable
from itertools import accumulate

from teredo.core.addr import Address

_SOCKADDR_IN = struct.Struct("=H")  # sin_family, host order; then port and address, big-endian
_PORT_ADDR = struct.Struct("!H4s8x")
_U32 = struct.Struct("=I")
_MSG_LEN_AT = 56
_MSG_FLAGS_AT = 48
_MMSGHDR = 64
_NAME = 16  # sizeof(struct sockaddr_in)
_CACHE_LIMIT = 4096
_AGAIN = (errno.EAGAIN, errno.EWOULDBLOCK, errno.EINTR)


class IoVec(ctypes.Structure):
    _fields_ = (("iov_base", ctypes.c_void_p), ("iov_len", ctypes.c_size_t))


class MsgHdr(ctypes.Structure):
    _fields_ = (
        ("msg_name", ctypes.c_void_p),
        ("msg_namelen", ctypes.c_uint32),
        ("msg_iov", ctypes.c_void_p),
        ("msg_iovlen", ctypes.c_size_t),
        ("msg_control", ctypes.c_void_p),
        ("msg_controllen", ctypes.c_size_t),
        ("msg_flags", ctypes.c_int),
    )


class MMsgHdr(ctypes.Structure):
    _fields_ = (("msg_hdr", MsgHdr), ("msg_len", ctypes.c_uint))


def libc() -> ctypes.CDLL:
    return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


def available() -> bool:
    """True where the layouts above hold and libc has both calls."""
    if ctypes.sizeof(MMsgHdr) != _MMSGHDR or ctypes.sizeof(ctypes.c_void_p) != 8:
        return False
    c = libc()
    return hasattr(c, "recvmmsg") and hasattr(c, "sendmmsg")


class _Slots:
    """`batch` message headers, each with one iovec and one sockaddr_in slot."""

    def __init__(self, batch: int, data_bytes: int, slot_size: int) -> None:
        self.data = ctypes.create_string_buffer(data_bytes)
        self.names = ctypes.create_string_buffer(batch * _NAME)
        self.iov = (ctypes.c_uint64 * (2 * batch))()
        self.msgs = (MMsgHdr * batch)()
        base = ctypes.addressof(self.data)
        for i in range(batch):
            self.iov[2 * i] = base + i * slot_size
            self.iov[2 * i + 1] = slot_size
            hdr = self.msgs[i].msg_hdr
            hdr.msg_name = ctypes.addressof(self.names) + i * _NAME
            hdr.msg_namelen = _NAME
            hdr.msg_iov = ctypes.addressof(self.iov) + 16 * i
            hdr.msg_iovlen = 1
        self.msgs_at = ctypes.addressof(self.msgs)
        self.data_at = base
        self.names_at = ctypes.addressof(self.names)
        self.iov_at = ctypes.addressof(self.iov)


class BatchReceiver:
    """Reads up to `batch` datagrams per call into `handler(data, source)`."""

    def __init__(self, sock: socket.socket, batch: int = 64, size: int = 2048) -> None:
        c = libc()
        self._recvmmsg = c.recvmmsg
        self._recvmmsg.argtypes = (
            ctypes.c_int,
            ctypes.c_void_p,
            ctypes.c_uint,
            ctypes.c_int,
            ctypes.c_void_p,
        )
        self._recvmmsg.restype = ctypes.c_int
        self._fd = sock.fileno()
        self._batch = batch
        self._size = size
        self._slots = _Slots(batch, batch * size, size)
        self._view = memoryview(self._slots.data).cast("B")
        self._sources: dict[bytes, Address] = {}

    def receive(
        self, handler: Callable[[bytes, Address], None], oversized: Callable[[], None]
    ) -> int:
        """One recvmmsg call; returns how many datagrams it gave (0: nothing waiting)."""
        slots = self._slots
        n = int(self._recvmmsg(self._fd, slots.msgs_at, self._batch, socket.MSG_DONTWAIT, None))
        if n <= 0:
            if n < 0 and ctypes.get_errno() not in _AGAIN:
                return -1  # an ICMP error about an earlier send: try again
            return 0
        headers = ctypes.string_at(slots.msgs_at, n * _MMSGHDR)
        names = ctypes.string_at(slots.names_at, n * _NAME)
        view = self._view
        size = self._size
        sources = self._sources
        unpack = _U32.unpack_from
        for i in range(n):
            at = i * _MMSGHDR
            if unpack(headers, at + _MSG_FLAGS_AT)[0] & socket.MSG_TRUNC:
                oversized()
                continue
            length = unpack(headers, at + _MSG_LEN_AT)[0]
            key = names[i * _NAME + 2 : i * _NAME + 8]
            source = sources.get(key)
            if source is None:
                source = (socket.inet_ntoa(key[2:]), (key[0] << 8) | key[1])
                if len(sources) >= _CACHE_LIMIT:
                    sources.clear()  # bounded memory whatever the number of sources
                sources[key] = source
            start = i * size
            handler(bytes(view[start : start + length]), source)
        return n


class BatchSender:
    """Queues datagrams and sends them with one sendmmsg call per `flush` (or full batch)."""

    def __init__(self, sock: socket.socket, batch: int = 64, size: int = 4096) -> None:
        c = libc()
        self._sendmmsg = c.sendmmsg
        self._sendmmsg.argtypes = (ctypes.c_int, ctypes.c_void_p, ctypes.c_uint, ctypes.c_int)
        self._sendmmsg.restype = ctypes.c_int
        self._sock = sock
        self._fd = sock.fileno()
        self._batch = batch
        self._capacity = batch * size
        self._slots = _Slots(batch, self._capacity, size)
        self._payloads: list[bytes] = []
        self._names: list[bytes] = []
        self._sockaddrs: dict[Address, bytes] = {}
        self._family = _SOCKADDR_IN.pack(socket.AF_INET)
        self.errors = 0

    def send(self, payload: bytes, destination: Address) -> None:
        name = self._sockaddrs.get(destination)
        if name is None:
            try:
                host, port = destination
                name = self._family + _PORT_ADDR.pack(port, socket.inet_aton(host))
            except (OSError, struct.error, ValueError, TypeError):
                self.errors += 1
                return
            if len(self._sockaddrs) >= _CACHE_LIMIT:
                self._sockaddrs.clear()
            self._sockaddrs[destination] = name
        self._payloads.append(payload)
        self._names.append(name)
        if len(self._payloads) >= self._batch:
            self.flush()

    def flush(self) -> None:
        payloads = self._payloads
        k = len(payloads)
        if k == 0:
            return
        slots = self._slots
        data = b"".join(payloads)
        if len(data) > self._capacity:
            self._send_one_by_one()
            return
        lengths = [len(p) for p in payloads]
        base = slots.data_at
        iov = array("Q", bytes(16 * k))
        iov[0::2] = array("Q", [base + o for o in accumulate(lengths, initial=0)][:k])
        iov[1::2] = array("Q", lengths)
        ctypes.memmove(slots.data_at, data, len(data))
        ctypes.memmove(slots.names_at, b"".join(self._names), k * _NAME)
        ctypes.memmove(slots.iov_at, iov.tobytes(), 16 * k)
        payloads.clear()
        self._names.clear()
        start = 0
        # Bounded: every turn sends at least one datagram or skips the one the kernel refused.
        while start < k:
            sent = self._sendmmsg(
                self._fd, slots.msgs_at + start * _MMSGHDR, k - start, socket.MSG_DONTWAIT
            )
            if sent <= 0:
                # A full socket buffer or an unreachable network loses that datagram, as a
                # wire would; the others are still tried.
                self.errors += 1
                start += 1
            else:
                start += sent

    def _send_one_by_one(self) -> None:
        for payload, name in zip(self._payloads, self._names, strict=True):
            host = socket.inet_ntoa(name[4:8])
            port = (name[2] << 8) | name[3]
            try:
                self._sock.sendto(payload, (host, port))
            except OSError:
                self.errors += 1
        self._payloads.clear()
        self._names.clear()
