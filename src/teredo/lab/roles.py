"""The one place where the command line and configuration file of each Teredo role are built.

Both implementations read the same configuration format (Miredo's "Directive value" lines, see
miredo.conf(5) and miredo-server.conf(5)), so only the command differs.
"""

from __future__ import annotations

import enum
import sys
from pathlib import Path


class Role(enum.Enum):
    SERVER = "server"
    RELAY = "relay"
    CLIENT = "client"


class Impl(enum.Enum):
    MIREDO = "miredo"
    TEREDO = "teredo"  # this project: `teredo server|relay|client -c FILE`

    @classmethod
    def parse(cls, text: str) -> Impl | None:
        """'miredo', 'teredo', or 'none' (role not started)."""
        key = text.strip().lower()
        if key in ("none", ""):
            return None
        for impl in cls:
            if impl.value == key:
                return impl
        raise ValueError(f"unknown implementation {text!r} (choose miredo, teredo or none)")


TEREDO_PORT = 3544  # RFC 4380 section 4: the Teredo server's UDP port
RELAY_PORT = 3545  # any fixed port: a relay must be reachable unsolicited (RFC 4380 section 5.4)
TUN_NAME = "teredo"


def config_text(role: Role, *, server: str, relay: str) -> str:
    """The configuration of `role`; `server` is the primary server IPv4, `relay` the relay's."""
    if role is Role.SERVER:
        # The secondary address is the primary + 1 (RFC 4380 section 5.2.1 needs two addresses
        # for the cone test); Miredo infers it, so one directive suffices.
        return f"ServerBindAddress {server}\n"
    if role is Role.RELAY:
        return (
            f"RelayType cone\nInterfaceName {TUN_NAME}\n"
            f"BindAddress {relay}\nBindPort {RELAY_PORT}\n"
        )
    return f"RelayType client\nInterfaceName {TUN_NAME}\nServerAddress {server}\n"


def command(
    role: Role, impl: Impl, config: Path, pidfile: Path, user: str | None = None
) -> list[str]:
    """The command line that runs `role` with `impl` in the foreground; ours becomes `user`
    after set-up when given (--user; Miredo's user is fixed when it is built)."""
    if impl is Impl.MIREDO:
        # -f: stay in the foreground, so the PID we record is the daemon's own and its log goes to
        # stderr (our log file); -p: a pidfile per instance, so several run at once.
        program = "miredo-server" if role is Role.SERVER else "miredo"
        return [program, "-f", "-c", str(config), "-p", str(pidfile)]
    argv = [sys.executable, "-m", "teredo", role.value, "-c", str(config)]
    return [*argv, "--user", user] if user else argv
