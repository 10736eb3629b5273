"""Runs a Miredo-compatible client hook script on each change of the tunnel's configuration.

Miredo's privileged helper (src/privproc.c, 1.2.x) runs /etc/miredo/client-hook with:

    IFACE, IFINDEX          the tunnel interface (name, index)
    STATE                   "up" (qualified), "down" (not qualified) or "destroy" (last call)
    ADDRESS, LLADDRESS, MTU set only when STATE is up: the Teredo address, the link-local
                            address (fe80::ffff:ffff:ffff for C=0, fe80::8000:5445:5245:444f
                            for C=1), the MTU
    OLD_STATE               the previous STATE ("down" before the first call)
    OLD_ADDRESS, OLD_LLADDRESS, OLD_MTU   the previous values, set only if OLD_STATE is up

with its standard input and output tied to the daemon's standard error. At exit it runs the
script twice more: STATE=down, then STATE=destroy. The same script (e.g. Miredo's own
client-hook) therefore works with this daemon unchanged.

Off the hot path: called at most once per qualification, address change or loss of contact.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from ipaddress import IPv6Address

from teredo.core.addr import LINK_LOCAL_CONE, LINK_LOCAL_RESTRICTED, is_cone

__all__ = ["HOOK_TIMEOUT", "HookError", "HookRunner", "TunnelState", "hook_environment"]

# A hook that hangs must not hang the daemon: it is killed after this long.
HOOK_TIMEOUT = 30.0

# The variables this runner owns: they are removed from the inherited environment first, so a
# stale value from the daemon's own environment cannot leak into a call.
_HOOK_VARIABLES = (
    "IFACE",
    "IFINDEX",
    "STATE",
    "ADDRESS",
    "LLADDRESS",
    "MTU",
    "OLD_STATE",
    "OLD_ADDRESS",
    "OLD_LLADDRESS",
    "OLD_MTU",
)


class HookError(OSError):
    """The hook could not be run, failed, or timed out; the message is one line."""


@dataclass(frozen=True, slots=True)
class TunnelState:
    """What the hook is told: up with an address, or down (address None)."""

    address: bytes | None = None  # 16 bytes when up
    mtu: int = 1280

    @property
    def up(self) -> bool:
        return self.address is not None

    @property
    def link_local(self) -> bytes | None:
        # privproc.c: the link-local address follows the cone bit of the Teredo address
        # (RFC 4380 section 5.2.1: fe80::8000:5445:5245:444f for cone, fe80::ffff:ffff:ffff
        # otherwise; RFC 5991 clients always use C=0).
        if self.address is None:
            return None
        return LINK_LOCAL_CONE if is_cone(self.address) else LINK_LOCAL_RESTRICTED


def _text(address: bytes) -> str:
    return str(IPv6Address(address))


def hook_environment(
    base: Mapping[str, str],
    iface: str,
    ifindex: int,
    state: str,
    *,
    current: TunnelState,
    previous: TunnelState,
) -> dict[str, str]:
    """The environment of one hook call, built as privproc.c builds it."""
    env = {k: v for k, v in base.items() if k not in _HOOK_VARIABLES}
    env["IFACE"] = iface
    env["IFINDEX"] = str(ifindex)
    env["STATE"] = state
    if state == "up" and current.address is not None:
        env["ADDRESS"] = _text(current.address)
        env["LLADDRESS"] = _text(current.link_local or LINK_LOCAL_RESTRICTED)
        env["MTU"] = str(current.mtu)
    env["OLD_STATE"] = "up" if previous.up else "down"
    if previous.address is not None:
        env["OLD_ADDRESS"] = _text(previous.address)
        env["OLD_LLADDRESS"] = _text(previous.link_local or LINK_LOCAL_RESTRICTED)
        env["OLD_MTU"] = str(previous.mtu)
    return env


Runner = Callable[[list[str], dict[str, str], float], int]


def _run_script(argv: list[str], env: dict[str, str], timeout: float) -> int:
    # privproc.c dup2()s stderr onto stdin and stdout: the script's output goes to our log
    # stream and it reads nothing. It runs in its own process group so that a timeout kills
    # whatever it started too.
    err = sys.stderr.fileno() if sys.stderr is not None else subprocess.DEVNULL
    try:
        proc = subprocess.Popen(
            argv,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=err,
            stderr=err,
            start_new_session=True,
            close_fds=True,
        )
    except OSError as exc:
        raise HookError(f"hook {argv[0]}: cannot run: {exc.strerror}") from None
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, 9)
        proc.wait()
        raise HookError(f"hook {argv[0]}: killed after {timeout:g} s") from None


class HookRunner:
    """Calls the hook with up/down/destroy and remembers what it last said (the OLD_ values)."""

    def __init__(
        self,
        path: str,
        iface: str,
        ifindex: int,
        *,
        timeout: float = HOOK_TIMEOUT,
        base_env: Mapping[str, str] | None = None,
        runner: Runner = _run_script,
    ) -> None:
        self.path = path
        self.iface = iface
        self.ifindex = ifindex
        self.timeout = timeout
        self._base = dict(os.environ if base_env is None else base_env)
        self._runner = runner
        self._last = TunnelState()
        self.calls = 0

    def _call(self, state: str, current: TunnelState) -> None:
        env = hook_environment(
            self._base, self.iface, self.ifindex, state, current=current, previous=self._last
        )
        # privproc.c moves the values to OLD_* after every call, whatever its status.
        self._last = current if state == "up" else TunnelState()
        self.calls += 1
        status = self._runner([self.path], env, self.timeout)
        if status != 0:
            raise HookError(f"hook {self.path} ({state}): exit status {status}")

    def up(self, address: bytes, mtu: int) -> None:
        """Qualified, or a new address or MTU."""
        self._call("up", TunnelState(address, mtu))

    def down(self) -> None:
        """Not qualified (contact lost, or stopping)."""
        self._call("down", TunnelState())

    def destroy(self) -> None:
        """The interface is about to go away (last call)."""
        self._call("destroy", TunnelState())
