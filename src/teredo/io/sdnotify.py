"""systemd's readiness protocol (sd_notify(3)) for `Type=notify` units, without libsystemd.

systemd passes a datagram socket in $NOTIFY_SOCKET (a path, or an abstract name written with
a leading '@'); the daemon sends newline-separated KEY=VALUE fields: READY=1 once it serves
(the server and relay when bound, the client when qualified), RELOADING=1 and READY=1 around
a SIGHUP reload, STOPPING=1 when it stops, STATUS=... for `systemctl status`. Outside systemd
(no $NOTIFY_SOCKET) every call does nothing.

The variable is taken out of the environment when read (sd_notify's unset_environment), so
that no child (the client's hook) can speak for the daemon.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import MutableMapping
from typing import Final

log = logging.getLogger("teredo.sdnotify")

ENVIRONMENT_VARIABLE: Final = "NOTIFY_SOCKET"
MAX_STATUS_CHARS: Final = 200  # systemctl shows one line; a long summary is cut


class Notifier:
    """Sends state changes to systemd; a no-op when not started by systemd."""

    def __init__(self, address: str | None) -> None:
        self.address = address
        self.ready = False
        self._failed = False
        self._sock: socket.socket | None = None  # connected by connect(), before a drop

    @classmethod
    def from_environment(cls, environ: MutableMapping[str, str] | None = None) -> Notifier:
        """Takes $NOTIFY_SOCKET out of the environment (os.environ by default)."""
        env = os.environ if environ is None else environ
        address = env.pop(ENVIRONMENT_VARIABLE, None)
        if address is not None and not address.startswith(("/", "@")):
            log.warning(
                "%s=%r is neither a path nor @abstract: ignored", ENVIRONMENT_VARIABLE, address
            )
            address = None
        return cls(address or None)

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def _target(self) -> str:
        address = self.address or ""
        return "\0" + address[1:] if address.startswith("@") else address

    def connect(self) -> None:
        """Connects a socket to systemd's now, while the daemon may still reach its path: after
        the drop to an unprivileged user (io/privileges.py) a path in a root-only directory
        could no longer be opened, a connected socket still sends. No-op outside systemd."""
        if self.address is None or self._sock is not None:
            return
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        try:
            sock.connect(self._target())
        except OSError as exc:
            sock.close()
            log.warning("cannot connect to systemd's %s: %s", self.address, exc)
            return
        self._sock = sock

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def send(self, *fields: str) -> bool:
        """Sends one datagram of KEY=VALUE `fields`; False when it could not be sent."""
        if self.address is None:
            return False
        payload = "\n".join(fields).encode("utf-8", "replace")
        try:
            if self._sock is not None:
                self._sock.send(payload)
                return True
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.sendto(payload, self._target())
        except OSError as exc:
            if not self._failed:  # said once, not at every status change
                log.warning("cannot notify systemd on %s: %s", self.address, exc)
            self._failed = True
            return False
        return True

    def notify_ready(self, status: str | None = None) -> None:
        """READY=1 the first time (with STATUS), STATUS alone afterwards."""
        fields = [] if self.ready else ["READY=1"]
        self.ready = True
        if status is not None:
            fields.append(_status(status))
        if fields:
            self.send(*fields)

    def notify_status(self, status: str) -> None:
        self.send(_status(status))

    def notify_reloading(self) -> None:
        """RELOADING=1 before a reload (only once ready: systemd waits for READY=1 again)."""
        if self.ready:
            usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
            self.send("RELOADING=1", f"MONOTONIC_USEC={usec}")

    def notify_reloaded(self, status: str | None = None) -> None:
        if self.ready:
            fields = ["READY=1"]
            if status is not None:
                fields.append(_status(status))
            self.send(*fields)

    def notify_stopping(self) -> None:
        self.send("STOPPING=1")


def _status(text: str) -> str:
    line = " ".join(text.split())  # one line: a newline would start another field
    if len(line) > MAX_STATUS_CHARS:
        line = line[: MAX_STATUS_CHARS - 3] + "..."
    return f"STATUS={line}"
