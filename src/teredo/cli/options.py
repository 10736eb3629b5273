"""The option contract of every daemon verb (`teredo client|server|relay`).

Fixed early so that tests, benchmarks and the lab can drive any daemon the same way:

    teredo client -c miredo.conf [--server HOST] [--server2 HOST] [--interface NAME]
                  [--bind-address ADDR] [--bind-port PORT] [--refresh SECONDS] [--prefix P]
                  [--symmetric-nat accept|refuse] [--upnp [yes|no]]
    teredo server -c miredo-server.conf [--bind ADDR] [--bind2 ADDR] [--prefix P] [--mtu N]
    teredo relay  -c miredo.conf [--type relay|cone|restricted|host | --host-specific]
                  [--interface NAME] [--bind-address ADDR] [--bind-port PORT] [--prefix P]
                  [--mtu N]
    common:       [-c|--conf|--config FILE] [--pidfile FILE] [-f|--foreground]
                  [--syslog [FACILITY]] [-v|--verbose] [--control NAME | --no-control]
                  [--metrics ADDRESS:PORT] [--user USER] [--datapath auto|kernel|user]

The file is Miredo's, unchanged (core/config.py); each flag stands for one directive and
overrides the file. Without -c no file is read (unlike Miredo, which reads
/etc/miredo/miredo.conf: a lab daemon must never pick up the host's configuration).

A daemon verb does, in this order:

    settings = load_settings(args, Role.CLIENT)   # ConfigError -> report_config_error()
    configure_logging(args, settings)
    with PidFile(args.pidfile): ...               # PidFileError if another one holds it
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import fcntl
import logging
import logging.handlers
import os
import socket
import sys
from dataclasses import dataclass
from ipaddress import IPv4Address
from types import TracebackType
from typing import TYPE_CHECKING, Final, Literal, overload

from teredo.core.config import (
    DEFAULT_SYSLOG_FACILITY,
    REPEATABLE,
    SYSLOG_FACILITIES,
    ClientSettings,
    ConfigError,
    Directive,
    RelaySettings,
    RelayType,
    Role,
    ServerSettings,
    Settings,
    parse_config,
)

if TYPE_CHECKING:
    from teredo.io.control import ControlIdentity
    from teredo.io.metrics import MetricsEndpoint
    from teredo.io.privileges import Target

__all__ = [
    "EXIT_CONFIG",
    "MAX_CONFIG_BYTES",
    "PidFile",
    "PidFileError",
    "add_daemon_arguments",
    "configure_logging",
    "control_identity",
    "control_name",
    "flags_for",
    "load_settings",
    "metrics_endpoint",
    "read_config_text",
    "report_config_error",
    "resolve_ipv4",
]

EXIT_CONFIG: Final = 2  # a bad configuration or command line (like argparse's usage errors)
# A Miredo file is a few hundred bytes; reading at most this much bounds memory whatever the
# path names (a huge file, /dev/zero).
MAX_CONFIG_BYTES: Final = 1 << 20
_COMMAND_LINE: Final = "command line"
_LOG_NAME: Final = "teredo"


@dataclass(frozen=True, slots=True)
class _Flag:
    option: str  # the long option; its dest is derived by argparse
    directive: str  # the core/config.py directive it overrides
    metavar: str
    help: str
    const: str | None = None  # the value of the bare flag (`--upnp` = `--upnp yes`)

    @property
    def dest(self) -> str:
        return self.option.removeprefix("--").replace("-", "_")


_CLIENT_FLAGS: Final = (
    _Flag(
        "--server",
        "ServerAddress",
        "HOST",
        "Teredo server name or IPv4 (ServerAddress); repeat it for more servers to fail over to",
    ),
    _Flag("--server2", "ServerAddress2", "HOST", "secondary server address (ServerAddress2)"),
    _Flag("--interface", "InterfaceName", "NAME", "tunnel interface name (InterfaceName)"),
    _Flag("--bind-address", "BindAddress", "ADDR", "local IPv4 address to bind (BindAddress)"),
    _Flag("--bind-port", "BindPort", "PORT", "local UDP port, 0 = random (BindPort)"),
    _Flag("--refresh", "RefreshInterval", "SECONDS", "refresh interval (RefreshInterval)"),
    _Flag("--prefix", "Prefix", "PREFIX", "expected Teredo /32 prefix (default 2001::)"),
    _Flag(
        "--symmetric-nat",
        "SymmetricNat",
        "accept|refuse",
        "behind a symmetric NAT: qualify with the primary server's mapping (accept, default) "
        "or refuse as RFC 4380 5.2.1 does (SymmetricNat)",
    ),
    _Flag(
        "--upnp",
        "UPnP",
        "yes|no",
        "map the UDP port on a NAT that offers UPnP IGD and so be reachable as behind a cone "
        "NAT (RFC 6081); removed at exit (UPnP; default no, bare --upnp = yes)",
        const="yes",
    ),
)
# Ours (issue 11, docs/scale.md): the relay and the server announce through kernel table N.
_ANNOUNCE_FLAGS: Final = (
    _Flag("--announce-table", "AnnounceTable", "N", "announce in kernel table N (AnnounceTable)"),
    _Flag("--announce-drain", "AnnounceDrain", "SECONDS", "withdraw-to-exit time (AnnounceDrain)"),
)
_SERVER_FLAGS: Final = (
    _Flag("--bind", "ServerBindAddress", "ADDR", "primary server IPv4 (ServerBindAddress)"),
    _Flag("--bind2", "ServerBindAddress2", "ADDR", "secondary IPv4 (ServerBindAddress2)"),
    _Flag("--prefix", "Prefix", "PREFIX", "advertised Teredo /32 prefix (Prefix)"),
    _Flag("--mtu", "InterfaceMTU", "BYTES", "advertised MTU, 1280..65535 (InterfaceMTU)"),
    *_ANNOUNCE_FLAGS,
)
_RELAY_FLAGS: Final = (
    _Flag("--interface", "InterfaceName", "NAME", "tunnel interface name (InterfaceName)"),
    _Flag("--bind-address", "BindAddress", "ADDR", "local IPv4 address to bind (BindAddress)"),
    _Flag("--bind-port", "BindPort", "PORT", "local UDP port, 0 = random (BindPort)"),
    _Flag("--prefix", "Prefix", "PREFIX", "served Teredo /32 prefix (Prefix)"),
    _Flag("--mtu", "InterfaceMTU", "BYTES", "tunnel MTU, 1280..65535 (InterfaceMTU)"),
    *_ANNOUNCE_FLAGS,
    _Flag("--anycast-ipv4", "AnycastIPv4", "ADDR", "IPv4 /32 announced too (AnycastIPv4)"),
)
_FLAGS: Final = {Role.CLIENT: _CLIENT_FLAGS, Role.SERVER: _SERVER_FLAGS, Role.RELAY: _RELAY_FLAGS}
_RELAY_TYPES: Final = tuple(t.value for t in RelayType if t.role is Role.RELAY)


def flags_for(role: Role | str) -> dict[str, str]:
    """Long option -> directive it overrides, for `role` (used by docs and tests)."""
    table = {f.option: f.directive for f in _FLAGS[Role(role)]}
    if Role(role) is Role.RELAY:
        table["--type"] = "RelayType"
        table["--host-specific"] = "RelayType"
    table["--syslog"] = "SyslogFacility"
    table["--metrics"] = "MetricsAddress"
    table["--user"] = "User"
    table["--datapath"] = "Datapath"
    return table


def add_daemon_arguments(parser: argparse.ArgumentParser, role: Role | str) -> None:
    """Add the common options and those of `role` to a daemon verb's parser."""
    role = Role(role)
    common = parser.add_argument_group("common options")
    common.add_argument(
        "-c",
        "--conf",
        "--config",
        dest="conf",
        metavar="FILE",
        help="Miredo configuration file (miredo.conf / miredo-server.conf); no file by default",
    )
    common.add_argument("--pidfile", metavar="FILE", help="write the process id to FILE")
    common.add_argument(
        "-f",
        "--foreground",
        action="store_true",
        help="accepted for Miredo compatibility; the daemon always stays in the foreground",
    )
    common.add_argument(
        "--syslog",
        nargs="?",
        const="",
        default=None,
        metavar="FACILITY",
        help="log to syslog instead of stderr (facility: SyslogFacility, default daemon)",
    )
    common.add_argument("-v", "--verbose", action="count", default=0, help="log debug messages too")
    control = common.add_mutually_exclusive_group()
    control.add_argument(
        "--control",
        type=_control_name,
        metavar="NAME",
        help="abstract Unix socket name for `teredo status` (default teredo/<role>/<interface>,"
        " teredo/server; per network namespace)",
    )
    control.add_argument(
        "--no-control",
        dest="no_control",
        action="store_true",
        help="no status socket (`teredo status` will not see this daemon)",
    )
    common.add_argument(
        "--metrics",
        metavar="ADDRESS:PORT",
        help="serve Prometheus metrics over HTTP on ADDRESS:PORT, e.g. 127.0.0.1:9544 or "
        "[::1]:9544 (MetricsAddress; off by default)",
    )
    common.add_argument(
        "--user",
        metavar="USER",
        help="after set-up run as USER keeping only CAP_NET_ADMIN (User; e.g. teredo, which "
        "scripts/setup.sh creates; root kept by default)",
    )
    common.add_argument(
        "--datapath",
        metavar="auto|kernel|user",  # checked by core/config.py, as the directive
        help="forward trusted traffic in the kernel (eBPF) or in Python; auto (default): the "
        "kernel where its programs load, else Python (Datapath; docs/kernel.md)",
    )
    own = parser.add_argument_group(f"{role.value} options (each overrides its directive)")
    if role is Role.RELAY:
        kind = own.add_mutually_exclusive_group()
        kind.add_argument(
            "--type",
            dest="relay_type",
            choices=_RELAY_TYPES,
            help="relay kind (RelayType; default cone; host = host-specific relay)",
        )
        kind.add_argument(
            "--host-specific",
            dest="relay_type",
            action="store_const",
            const="host",
            help="serve only this host's own IPv6 addresses (same as --type host)",
        )
    for flag in _FLAGS[role]:
        # ServerAddress may be repeated: --server too (more servers to fail over to).
        action = "append" if flag.directive in REPEATABLE else "store"
        if flag.const is not None:
            own.add_argument(
                flag.option,
                dest=flag.dest,
                metavar=flag.metavar,
                help=flag.help,
                nargs="?",
                const=flag.const,
            )
            continue
        own.add_argument(
            flag.option, dest=flag.dest, metavar=flag.metavar, help=flag.help, action=action
        )


def _control_name(text: str) -> str:
    # Imported here: verbs that never run a daemon (checkconf) need not load asyncio.
    from teredo.io.control import check_name  # noqa: PLC0415

    name = text.removeprefix("@")  # as `ss -x` and /proc/net/unix print abstract names
    problem = check_name(name)
    if problem is not None:
        raise argparse.ArgumentTypeError(problem)
    return name


def control_name(args: argparse.Namespace, default: str) -> str | None:
    """The daemon's control socket name: --control, else `default`; None with --no-control."""
    if getattr(args, "no_control", False):
        return None
    given: str | None = getattr(args, "control", None)
    return given if given is not None else default


def control_identity(
    args: argparse.Namespace, role: str, interface: str | None = None, worker: int | None = None
) -> ControlIdentity | None:
    """The status socket of a daemon verb: teredo/<role>[/<interface>] or --control NAME, then
    /<worker> for a server worker; None with --no-control."""
    from teredo.io.control import ControlIdentity, default_name  # noqa: PLC0415
    # (imported here: verbs that never run a daemon need not load asyncio)

    name = control_name(args, default_name(role, interface))
    if name is None:
        return None
    if worker is not None:
        name = f"{name}/{worker}"
    return ControlIdentity(name, role, interface, worker)


def privilege_target(args: argparse.Namespace, settings: Settings) -> Target | None:
    """Whom the daemon becomes after set-up (--user, User); None: it stays as started.
    An unknown user is a configuration error, reported before anything is set up."""
    if settings.user is None:
        return None
    from teredo.io.privileges import PrivilegeError, resolve  # noqa: PLC0415

    try:
        return resolve(settings.user)
    except PrivilegeError as err:
        if getattr(args, "user", None) is not None:
            raise ConfigError("command line", 0, "--user", str(err)) from None
        raise ConfigError(args.conf or "configuration", 0, "User", str(err)) from None


def metrics_endpoint(
    args: argparse.Namespace, settings: Settings, role: str, interface: str | None = None
) -> MetricsEndpoint | None:
    """Where the daemon serves Prometheus metrics (--metrics, MetricsAddress); None: nowhere.
    The daemon is named as on its status socket, which it has even with --no-control."""
    if settings.metrics_address is None:
        return None
    # Imported here: prometheus-client is loaded only by a daemon that serves metrics.
    from teredo.io.control import ControlIdentity, default_name  # noqa: PLC0415
    from teredo.io.metrics import MetricsEndpoint  # noqa: PLC0415

    name = control_name(args, default_name(role, interface)) or default_name(role, interface)
    return MetricsEndpoint(settings.metrics_address, ControlIdentity(name, role, interface))


def _overrides(args: argparse.Namespace, role: Role) -> list[Directive]:
    out: list[Directive] = []
    if role is Role.RELAY and args.relay_type is not None:
        spelled = "--host-specific" if args.relay_type == "host" else "--type"
        out.append(Directive.flag("RelayType", args.relay_type, spelled))
    for flag in _FLAGS[role]:
        value = getattr(args, flag.dest)
        for one in value if isinstance(value, list) else () if value is None else (value,):
            out.append(Directive.flag(flag.directive, one, flag.option))
    if args.syslog:  # "" means "--syslog" without a facility: keep the file's
        out.append(Directive.flag("SyslogFacility", args.syslog, "--syslog"))
    if getattr(args, "metrics", None) is not None:
        out.append(Directive.flag("MetricsAddress", args.metrics, "--metrics"))
    if getattr(args, "user", None) is not None:
        out.append(Directive.flag("User", args.user, "--user"))
    if getattr(args, "datapath", None) is not None:
        out.append(Directive.flag("Datapath", args.datapath, "--datapath"))
    return out


def read_config_text(path: str) -> str:
    """Read a configuration file, bounded; any failure is a ConfigError naming the file."""
    try:
        with open(path, "rb") as stream:
            data = stream.read(MAX_CONFIG_BYTES + 1)
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise ConfigError(path, 0, None, f"cannot read: {reason}") from None
    if len(data) > MAX_CONFIG_BYTES:
        raise ConfigError(path, 0, None, f"larger than {MAX_CONFIG_BYTES} bytes")
    # Miredo reads bytes; non-UTF-8 bytes in comments are harmless, and in a value they
    # become U+FFFD, which every value check rejects.
    return data.decode("utf-8", errors="replace")


_REQUIRED_FLAG: Final = {"ServerAddress": "--server", "ServerBindAddress": "--bind"}


@overload
def load_settings(args: argparse.Namespace, role: Literal[Role.CLIENT]) -> ClientSettings: ...
@overload
def load_settings(args: argparse.Namespace, role: Literal[Role.SERVER]) -> ServerSettings: ...
@overload
def load_settings(args: argparse.Namespace, role: Literal[Role.RELAY]) -> RelaySettings: ...
@overload
def load_settings(args: argparse.Namespace, role: Role | str) -> Settings: ...
def load_settings(args: argparse.Namespace, role: Role | str) -> Settings:
    """The settings of a daemon verb: its file (if -c) overlaid by its flags.

    Raises ConfigError (print it with `report_config_error`).
    """
    role = Role(role)
    overrides = _overrides(args, role)
    if args.conf is None:
        try:
            return parse_config("", _COMMAND_LINE, role, overrides)
        except ConfigError as err:
            flag = _REQUIRED_FLAG.get(err.directive or "")
            if err.line == 0 and err.file == _COMMAND_LINE and flag is not None:
                raise ConfigError(
                    _COMMAND_LINE, 0, flag, f"required in {role.value} mode (or -c FILE)"
                ) from None
            raise
    return parse_config(read_config_text(args.conf), args.conf, role, overrides)


def report_config_error(err: ConfigError) -> int:
    """Print the one-line error on stderr; returns the exit status (2)."""
    print(err, file=sys.stderr)
    return EXIT_CONFIG


class _OurHandler:
    """Marks the handlers configure_logging installed, so that a second call replaces them."""


def configure_logging(
    args: argparse.Namespace,
    settings: Settings | None = None,
    *,
    syslog_address: str = "/dev/log",
) -> logging.Logger:
    """Send the "teredo" loggers to stderr, or to syslog with --syslog.

    The facility is --syslog's value, else the file's SyslogFacility, else daemon (Miredo's
    default). -v lowers the level from INFO to DEBUG. Returns the "teredo" logger.
    """
    logger = logging.getLogger(_LOG_NAME)
    for old in list(logger.handlers):
        if isinstance(old, _OurHandler):
            logger.removeHandler(old)
            old.close()
    logger.setLevel(logging.DEBUG if args.verbose else logging.INFO)
    logger.propagate = False  # a daemon's root logger has no handlers of its own
    handler: logging.Handler
    if args.syslog is not None:
        facility = args.syslog.lower() or (
            settings.syslog_facility if settings is not None else DEFAULT_SYSLOG_FACILITY
        )
        if facility not in SYSLOG_FACILITIES:
            raise ConfigError(_COMMAND_LINE, 0, "--syslog", f"unknown syslog facility {facility!r}")
        code = logging.handlers.SysLogHandler.facility_names[facility]
        try:
            # SysLogHandler hides a missing syslog socket until the first message is lost;
            # probe it so that the daemon says so once and logs to stderr instead.
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as probe:
                probe.connect(syslog_address)
            handler = _SyslogHandler(address=syslog_address, facility=code)
        except OSError as exc:
            handler = _StderrHandler(sys.stderr)
            handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
            logger.addHandler(handler)
            logger.warning("syslog unavailable (%s): logging to stderr", exc)
            return logger
        verb = getattr(args, "verb", None) or "daemon"
        handler.ident = f"teredo-{verb}[{os.getpid()}]: "
        handler.setFormatter(logging.Formatter("%(message)s"))
    else:
        handler = _StderrHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    logger.addHandler(handler)
    return logger


class _SyslogHandler(logging.handlers.SysLogHandler, _OurHandler):
    pass


class _StderrHandler(logging.StreamHandler, _OurHandler):  # type: ignore[type-arg]
    pass


def resolve_ipv4(host: str) -> IPv4Address:
    """The first IPv4 address of `host` (a literal or a name: getaddrinfo, as conf.c does).

    Raises socket.gaierror. I/O: may query DNS; never called from the core.
    """
    infos = socket.getaddrinfo(host, None, socket.AF_INET, socket.SOCK_DGRAM)
    return IPv4Address(infos[0][4][0])


class PidFileError(RuntimeError):
    """The pid file cannot be written, or another live process holds it."""


class PidFile:
    """Write our pid to `path` for the duration of a `with` block; remove it afterwards.

    The file stays locked (lockf, as Miredo does) while we run, so a second daemon with the
    same pid file fails instead of overwriting it. `path` None makes it a no-op.
    """

    def __init__(self, path: str | os.PathLike[str] | None) -> None:
        self.path = None if path is None else os.fspath(path)
        self._fd: int | None = None

    def __enter__(self) -> PidFile:
        if self.path is None:
            return self
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise PidFileError(f"{self.path}: {exc.strerror}") from None
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            held = exc.errno in (errno.EACCES, errno.EAGAIN)
            other = os.read(fd, 32).decode("ascii", "replace").strip() if held else ""
            os.close(fd)
            if held:
                raise PidFileError(f"{self.path}: in use by process {other or '?'}") from None
            raise PidFileError(f"{self.path}: {exc.strerror}") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode("ascii"))
        self._fd = fd
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._fd is None or self.path is None:
            return
        # Unlink while still holding the lock, so no other daemon's fresh file is removed.
        # After a drop to --user the directory (/run) may refuse: the stale file is harmless,
        # the lock (released with the descriptor) is what keeps a second daemon out.
        with contextlib.suppress(FileNotFoundError, PermissionError):
            os.unlink(self.path)
        os.close(self._fd)
        self._fd = None
