"""Least privilege: after set-up a daemon runs as an unprivileged user with CAP_NET_ADMIN only.

A daemon needs root only to set itself up: create the TUN interface, bind its sockets, attach
kernel programs. What it does afterwards (netlink address and route changes, the client's TUN
created again after its removal, the addr_gen_mode sysctl, map updates through the file
descriptors it already holds, removing its interface at exit) needs CAP_NET_ADMIN alone; the
UDP ports it may bind again (the client after a reload) are unprivileged ones. Miredo does the
same (miredo.c: setuid to its user after set-up, keeping CAP_NET_ADMIN in a privileged child).

`drop(target)`, as root:
- every capability but the kept ones leaves the bounding set (no exec can regain one);
- PR_SET_KEEPCAPS across setgroups/setresgid/setresuid to the user's ids (all three of each,
  so that no saved root id lets the process return to root);
- capset: permitted = effective = inheritable = the kept set, and each kept capability raised
  in the ambient set, so that the client's hook script (an exec of `ip`) inherits
  CAP_NET_ADMIN and nothing else: the hook runs as the user, not as root (docs/robustness.md);
- PR_SET_NO_NEW_PRIVS: no set-uid program or file capability adds to that;
- then checked: setuid(0) must fail, and /proc/self/status must show the kept set.

python-prctl is not in this environment's package lists, so ctypes calls libc's capset(2) and
prctl(2) directly (both are exported by glibc).

Not root (for example under systemd with DynamicUser=, which already gives the unit its user
and AmbientCapabilities=CAP_NET_ADMIN): nothing to drop, one log line.
"""

from __future__ import annotations

import ctypes
import grp
import importlib
import logging
import os
import pwd
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

log = logging.getLogger("teredo.privileges")

CAP_NET_ADMIN: Final = 12  # linux/capability.h
CAP_NAMES: Final = {CAP_NET_ADMIN: "cap_net_admin"}
DEFAULT_KEEP: Final = frozenset({CAP_NET_ADMIN})

_PR_SET_KEEPCAPS: Final = 8
_PR_CAPBSET_DROP: Final = 24
_PR_SET_NO_NEW_PRIVS: Final = 38
_PR_CAP_AMBIENT: Final = 47
_PR_CAP_AMBIENT_RAISE: Final = 2
_PR_CAP_AMBIENT_CLEAR_ALL: Final = 4
_LINUX_CAPABILITY_VERSION_3: Final = 0x20080522
_CAP_LAST_CAP_PATH: Final = "/proc/sys/kernel/cap_last_cap"


class PrivilegeError(Exception):
    """The user cannot be found, or the drop failed (the daemon must not go on as root)."""


@dataclass(frozen=True, slots=True)
class Target:
    """Whom the daemon becomes after set-up."""

    name: str
    uid: int
    gid: int


def resolve(name: str) -> Target:
    """The user `name` (or a numeric uid); PrivilegeError when the system has no such user."""
    try:
        entry = pwd.getpwuid(int(name)) if name.isdigit() else pwd.getpwnam(name)
    except (KeyError, OverflowError) as exc:
        hint = "scripts/setup.sh creates teredo"
        raise PrivilegeError(f"no user {name!r} on this system ({hint})") from exc
    if entry.pw_uid == 0:
        raise PrivilegeError(f"user {name!r} is root: nothing would be dropped")
    return Target(entry.pw_name, entry.pw_uid, entry.pw_gid)


class _CapHeader(ctypes.Structure):
    _fields_ = (("version", ctypes.c_uint32), ("pid", ctypes.c_int))


class _CapData(ctypes.Structure):
    _fields_ = (
        ("effective", ctypes.c_uint32),
        ("permitted", ctypes.c_uint32),
        ("inheritable", ctypes.c_uint32),
    )


_libc = ctypes.CDLL(None, use_errno=True)


def _prctl(option: int, arg2: int = 0, arg3: int = 0) -> None:
    result = _libc.prctl(
        ctypes.c_int(option), ctypes.c_ulong(arg2), ctypes.c_ulong(arg3), ctypes.c_ulong(0),
        ctypes.c_ulong(0),
    )  # fmt: skip
    if result != 0:
        errno = ctypes.get_errno()
        raise PrivilegeError(f"prctl({option}): {os.strerror(errno)}")


def _capset(caps: Iterable[int]) -> None:
    masks = [0, 0]  # version 3: two 32-bit words
    for cap in caps:
        masks[cap // 32] |= 1 << (cap % 32)
    header = _CapHeader(_LINUX_CAPABILITY_VERSION_3, 0)
    data = (_CapData * 2)(*(_CapData(m, m, m) for m in masks))
    if _libc.capset(ctypes.byref(header), data) != 0:
        raise PrivilegeError(f"capset: {os.strerror(ctypes.get_errno())}")


def last_cap() -> int:
    try:
        with open(_CAP_LAST_CAP_PATH, encoding="ascii") as f:
            return int(f.read())
    except (OSError, ValueError):
        return 40  # CAP_CHECKPOINT_RESTORE, the last one of Linux 5.9..6.x


def status_sets(path: str = "/proc/self/status") -> dict[str, str]:
    """Uid, Gid and the Cap* lines of a /proc/PID/status (the test's and the check's view)."""
    out: dict[str, str] = {}
    with open(path, encoding="ascii") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("Uid", "Gid", "Groups", "NoNewPrivs") or key.startswith("Cap"):
                out[key] = value.strip()
    return out


# Modules the daemons import lazily (after the drop), loaded while the interpreter's own files
# can still be read: a Python installed under a root-only home (/root/.pyenv, as on the lab
# machine) could no longer import them as the user. A Debian python3 is world-readable.
PRELOAD: Final = (
    "multiprocessing",
    "concurrent.futures.thread",
    "encodings.idna",
    "pyroute2",
    "teredo.io.netlink",
    "teredo.io.hook",
    "teredo.io.metrics",
    # The kernel data path, started after the drop by the relay and the server: its object
    # is found with importlib.resources, whose readers module is imported on first use (the
    # interpreter's own files may be unreadable for the user), and libbpf through ctypes.
    "importlib.readers",
    "teredo.io.datapath",
    "teredo.io.libbpf",
    "teredo.io.kmirror",
)


def preload(modules: Iterable[str] = PRELOAD) -> None:
    for name in modules:
        try:
            importlib.import_module(name)
        except ImportError as exc:  # an optional part missing here: it fails later, as before
            log.debug("not preloaded: %s: %s", name, exc)


def mask(caps: Iterable[int]) -> int:
    return sum(1 << cap for cap in set(caps))


def drop(target: Target, keep: frozenset[int] = DEFAULT_KEEP) -> bool:
    """Become `target` keeping only `keep`; False (nothing done) when not root. Raises
    PrivilegeError on failure: the caller stops rather than go on as root."""
    if os.getuid() != 0 and os.geteuid() != 0:
        log.info("not root: running as uid %d with the capabilities given", os.getuid())
        return False
    if threading.active_count() > 1:
        # capset(2) and prctl(2) change the calling thread only: another thread would keep
        # root's capabilities (and glibc's setresuid, applied to every thread, would leave
        # it with none of those it needs).
        raise PrivilegeError(f"{threading.active_count()} threads running: drop before any starts")
    try:
        for cap in range(last_cap() + 1):
            if cap not in keep:
                _prctl(_PR_CAPBSET_DROP, cap)
        _prctl(_PR_SET_KEEPCAPS, 1)
        groups = [g.gr_gid for g in grp.getgrall() if target.name in g.gr_mem]
        os.setgroups(sorted({target.gid, *groups}))
        os.setresgid(target.gid, target.gid, target.gid)
        os.setresuid(target.uid, target.uid, target.uid)
        _prctl(_PR_SET_KEEPCAPS, 0)
        _capset(keep)
        _prctl(_PR_CAP_AMBIENT, _PR_CAP_AMBIENT_CLEAR_ALL)
        for cap in sorted(keep):
            _prctl(_PR_CAP_AMBIENT, _PR_CAP_AMBIENT_RAISE, cap)
        _prctl(_PR_SET_NO_NEW_PRIVS, 1)
    except OSError as exc:
        raise PrivilegeError(f"cannot become user {target.name}: {exc}") from exc
    _check(target, keep)
    names = ",".join(CAP_NAMES.get(c, str(c)) for c in sorted(keep)) or "none"
    log.info("running as user %s (uid %d), capabilities %s", target.name, target.uid, names)
    return True


def _check(target: Target, keep: frozenset[int]) -> None:
    """Trust but verify (as Miredo's "setuid(0) must fail" check)."""
    try:
        os.setuid(0)
    except PermissionError:
        pass
    else:
        raise PrivilegeError("setuid(0) succeeded after the drop")
    sets = status_sets()
    want = mask(keep)
    for key in ("CapEff", "CapPrm"):
        if int(sets[key], 16) != want:
            raise PrivilegeError(f"{key} is {sets[key]} after the drop, expected {want:016x}")
    if sets["Uid"].split() != [str(target.uid)] * 4:
        raise PrivilegeError(f"Uid is {sets['Uid']} after the drop")
