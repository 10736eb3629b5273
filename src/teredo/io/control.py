"""The read-only control socket of every daemon, and the client side `teredo status` uses.

A daemon listens on an abstract Unix stream socket (its name starts with a NUL byte): abstract
names belong to the network namespace, so lab daemons in different namespaces never collide,
nothing is left on disk when a daemon dies, and `ip netns exec NS teredo status` finds the
daemons of NS. Names: `teredo/<role>/<interface>` (client, relay), `teredo/server` and
`teredo/server/<worker>` (see `default_name`).

Protocol: the peer connects; the daemon checks its credentials (SO_PEERCRED: root or the
daemon's own user), writes one JSON document and a newline, and closes. Nothing is ever read
from the peer, so there is nothing to parse and nothing to allocate for it. The status is
auxiliary: a name already taken, a failing `status()` or a slow reader never stops or blocks
the daemon.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import logging
import os
import socket
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from teredo import __version__

log = logging.getLogger("teredo.control")

NAME_PREFIX: Final = "teredo/"
# sockaddr_un.sun_path is 108 bytes; an abstract name uses them all after its leading NUL.
MAX_NAME_BYTES: Final = 107
# A status document is a few hundred bytes; the reader stops here whatever a peer sends.
MAX_DOCUMENT_BYTES: Final = 1 << 20
# Connections answered at once; more are closed at once (a flood of idle peers cannot make
# the daemon hold sockets without bound).
MAX_PENDING_REPLIES: Final = 8
SEND_TIMEOUT: Final = 1.0
# Connections accepted per wake-up of the listening socket: the data path gets its turn.
ACCEPT_BUDGET: Final = 16
_UCRED: Final = struct.Struct("3i")  # struct ucred: pid, uid, gid


def default_name(role: str, interface: str | None = None, worker: int | None = None) -> str:
    """`teredo/<role>/<interface>`, `teredo/server` or `teredo/server/<worker>`."""
    name = NAME_PREFIX + role
    if interface is not None:
        name += "/" + interface
    if worker is not None:
        name += f"/{worker}"
    return name


def check_name(name: str) -> str | None:
    """None for a usable control socket name, else what is wrong with it."""
    if not name:
        return "empty name"
    if "\0" in name or "\n" in name:
        return "contains a NUL or newline character"
    if len(name.encode("utf-8", "surrogateescape")) > MAX_NAME_BYTES:
        return f"longer than {MAX_NAME_BYTES} bytes"
    return None


def _address(name: str) -> bytes:
    # Linux takes a bytes address starting with NUL as an abstract name of exactly that length.
    return b"\0" + name.encode("utf-8", "surrogateescape")


@dataclass(frozen=True, slots=True)
class ControlIdentity:
    """Who answers on a control socket: its name and the fixed fields of its document."""

    name: str
    role: str
    interface: str | None = None
    worker: int | None = None


def status_document(
    identity: ControlIdentity,
    status: Callable[[], dict[str, object]],
    started: float,
    started_monotonic: float,
) -> dict[str, object]:
    """A daemon's status document: its identity, then `status()` in "status" (a failing
    `status()` gives an empty one and an "error"). The control socket and the Prometheus
    metrics (teredo.io.metrics) serve the same document."""
    doc: dict[str, object] = {
        "role": identity.role,
        "pid": os.getpid(),
        "version": __version__,
        "control": identity.name,
        "started": round(started, 3),
        "uptime": round(time.monotonic() - started_monotonic, 3),
    }
    if identity.interface is not None:
        doc["interface"] = identity.interface
    if identity.worker is not None:
        doc["worker"] = identity.worker
    try:
        doc["status"] = status()
    except Exception as exc:  # a status bug must not take the daemon down
        log.debug("status() failed", exc_info=True)
        doc["status"] = {}
        doc["error"] = f"status failed: {type(exc).__name__}: {exc}"
    return doc


class ControlServer:
    """Serves one daemon's status document on an abstract Unix socket in an asyncio loop.

    `status` is called for every accepted connection, in the loop's thread; its result goes in
    the document's "status" field. `allowed_uids` defaults to root and our own user.
    """

    def __init__(
        self,
        identity: ControlIdentity,
        status: Callable[[], dict[str, object]],
        loop: asyncio.AbstractEventLoop,
        *,
        allowed_uids: frozenset[int] | None = None,
        send_timeout: float = SEND_TIMEOUT,
    ) -> None:
        self.identity = identity
        self._status = status
        self._loop = loop
        self._allowed = allowed_uids if allowed_uids is not None else frozenset({0, os.getuid()})
        self._send_timeout = send_timeout
        self._sock: socket.socket | None = None
        self._replies: dict[asyncio.Task[None], socket.socket] = {}
        self.started = time.time()
        self._started_mono = time.monotonic()
        self.served = 0  # documents sent in full
        self.refused = 0  # peers of another user, or over MAX_PENDING_REPLIES
        self.failed = 0  # replies that timed out or failed

    @property
    def listening(self) -> bool:
        return self._sock is not None

    def start(self) -> str | None:
        """Binds and listens; None on success, else why not (the name is in use, ...).

        Never raises for a bind failure: a daemon without a status socket still runs.
        """
        name = self.identity.name
        problem = check_name(name)
        if problem is not None:
            return f"control socket @{name}: {problem}"
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        try:
            sock.bind(_address(name))
            sock.listen(MAX_PENDING_REPLIES)
            sock.setblocking(False)
        except OSError as exc:
            sock.close()
            if exc.errno == errno.EADDRINUSE:
                return f"control socket @{name} is in use (another daemon in this namespace)"
            return f"control socket @{name}: {exc.strerror or exc}"
        self._sock = sock
        self._loop.add_reader(sock.fileno(), self._on_accept)
        return None

    def document(self) -> dict[str, object]:
        """The JSON document a peer receives (also used by tests)."""
        return status_document(self.identity, self._status, self.started, self._started_mono)

    def encode(self) -> bytes:
        doc = self.document()
        try:
            text = json.dumps(doc, separators=(",", ":"))
        except (TypeError, ValueError) as exc:
            # Whatever a status() returns, the peer still gets JSON.
            doc["error"] = f"status not serialisable: {exc}"
            text = json.dumps(doc, separators=(",", ":"), default=repr)
        return text.encode("utf-8") + b"\n"

    def _on_accept(self) -> None:
        sock = self._sock
        if sock is None:
            return
        for _ in range(ACCEPT_BUDGET):
            try:
                conn, _addr = sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return  # ECONNABORTED, EMFILE: try again at the next wake-up
            self._answer(conn)

    def _peer_allowed(self, conn: socket.socket) -> bool:
        try:
            raw = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size)
        except OSError:
            return False
        _pid, uid, _gid = _UCRED.unpack(raw)
        return uid in self._allowed

    def _answer(self, conn: socket.socket) -> None:
        if len(self._replies) >= MAX_PENDING_REPLIES or not self._peer_allowed(conn):
            self.refused += 1
            conn.close()
            return
        conn.setblocking(False)
        data = self.encode()
        try:
            sent = conn.send(data)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError:
            self.failed += 1
            conn.close()
            return
        if sent == len(data):
            self.served += 1
            conn.close()
            return
        # The peer's buffer is full: finish in the background, bounded by the timeout.
        task = self._loop.create_task(self._finish(conn, data[sent:]))
        self._replies[task] = conn
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._replies.pop(task, None)

    async def _finish(self, conn: socket.socket, rest: bytes) -> None:
        try:
            await asyncio.wait_for(self._loop.sock_sendall(conn, rest), self._send_timeout)
            self.served += 1
        except (OSError, TimeoutError):
            self.failed += 1
        finally:
            conn.close()

    def close(self) -> None:
        """Stops listening (the name is free again) and drops unfinished replies."""
        sock, self._sock = self._sock, None
        if sock is not None:
            with contextlib.suppress(ValueError, OSError, RuntimeError):
                self._loop.remove_reader(sock.fileno())
            sock.close()
        replies, self._replies = self._replies, {}
        for task, conn in replies.items():
            task.cancel()
            if conn.fileno() >= 0:
                with contextlib.suppress(ValueError, OSError, RuntimeError):
                    self._loop.remove_writer(conn.fileno())
                conn.close()


# --- the client side (`teredo status`) -------------------------------------------------------

PROC_NET_UNIX: Final = "/proc/net/unix"
_SO_ACCEPTCON: Final = 0x10000  # the Flags column of a listening socket
_SOCK_STREAM_TYPE: Final = 1
MAX_LISTED: Final = 4096  # names read from /proc/net/unix at most


def listening_names(prefix: str = NAME_PREFIX, proc_path: str = PROC_NET_UNIX) -> list[str]:
    """Abstract stream socket names listening in this network namespace, starting with
    `prefix`, sorted (from /proc/net/unix, which shows an abstract name as @name)."""
    names: set[str] = set()
    try:
        with open(proc_path, encoding="utf-8", errors="surrogateescape") as stream:
            next(stream, None)  # the header line
            for line in stream:
                fields = line.split(None, 7)
                if len(fields) < 8:
                    continue
                try:
                    flags = int(fields[3], 16)
                    kind = int(fields[4], 16)
                except ValueError:
                    continue
                path = fields[7].rstrip("\n")
                if not (flags & _SO_ACCEPTCON and kind == _SOCK_STREAM_TYPE):
                    continue
                if path.startswith("@" + prefix):
                    names.add(path[1:])
                    if len(names) >= MAX_LISTED:
                        break
    except OSError:
        return []
    return sorted(names)


class QueryError(Exception):
    """A control socket that does not answer with a document; the message says why."""


def query(name: str, timeout: float = 2.0) -> dict[str, object]:
    """The document of the daemon listening on `name`; raises QueryError."""
    problem = check_name(name)
    if problem is not None:
        raise QueryError(f"@{name}: {problem}")
    deadline = time.monotonic() + timeout
    chunks: list[bytes] = []
    size = 0
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC) as sock:
        sock.settimeout(timeout)
        try:
            sock.connect(_address(name))
            while size <= MAX_DOCUMENT_BYTES:
                sock.settimeout(max(0.01, deadline - time.monotonic()))
                chunk = sock.recv(65536)
                if not chunk:
                    break
                chunks.append(chunk)
                size += len(chunk)
        except (ConnectionRefusedError, FileNotFoundError):
            raise QueryError(f"no daemon listening on @{name}") from None
        except TimeoutError:
            raise QueryError(f"@{name}: no answer within {timeout:g} s") from None
        except OSError as exc:
            raise QueryError(f"@{name}: {exc.strerror or exc}") from None
    if size > MAX_DOCUMENT_BYTES:
        raise QueryError(f"@{name}: answer larger than {MAX_DOCUMENT_BYTES} bytes")
    if size == 0:
        raise QueryError(
            f"@{name}: closed without answering (it answers only root and its own user)"
        )
    try:
        doc = json.loads(b"".join(chunks))
    except ValueError as exc:
        raise QueryError(f"@{name}: not a status document: {exc}") from None
    if not isinstance(doc, dict):
        raise QueryError(f"@{name}: not a status document (a JSON {type(doc).__name__})")
    return doc
