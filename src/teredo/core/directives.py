"""Miredo's "Directive value" configuration syntax: the directives, their lines, their values.

core/config.py turns them into settings. Pure: the caller reads the file and passes its text
with the file name used in messages; no file I/O and no DNS happen here (server names are kept
as given and resolved by the I/O layer).

The format is the one of miredo.conf(5) and miredo-server.conf(5), as implemented by Miredo
1.2.6 (src/conf.c, src/relayd.c, src/serverd.c, src/checkconf.c):

* one directive per line: a name, white space, a value; names are case-insensitive;
* blank lines and lines whose first word starts with '#' are comments;
* the directives are exactly those the Debian 1.2.6 binaries look up (verified with
  `strings /usr/sbin/miredo /usr/sbin/miredo-server`): RelayType, ServerAddress,
  ServerAddress2, Prefix, InterfaceMTU, InterfaceName, BindAddress, BindPort, SyslogFacility
  (miredo) and ServerBindAddress, ServerBindAddress2, Prefix, InterfaceMTU, SyslogFacility
  (miredo-server). Later git-only directives (LocalDiscovery, ...) are not part of 1.2.6.

Miredo only logs "Superfluous directive" for an unknown, repeated or out-of-mode directive and
miredo-checkconf then fails; here each of these is an error. Where this parser is stricter
than Miredo (literal IPv4 bind addresses, MTU range, /32 prefixes, words after the value) the
difference is listed in docs/configuration.md.

Our own directives (not understood by Miredo): RefreshInterval, SymmetricNat and UPnP (client),
`RelayType host` (host-specific relay, RFC 4380 section 5.4 / section 7.3.1 "local relay"),
MetricsAddress (every daemon: where Prometheus metrics are served, off when absent), User (every
daemon: whom it becomes after set-up, root kept when absent); AnnounceTable, AnnounceDrain
(relay, server) and AnycastIPv4 (relay): anycast announcements (issue 11, docs/scale.md).
"""

from __future__ import annotations

import enum
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address, IPv6Network
from typing import Final


class Role(enum.StrEnum):
    """Which daemon a file configures."""

    CLIENT = "client"
    SERVER = "server"
    RELAY = "relay"


class RelayType(enum.StrEnum):
    """Values of the RelayType directive (miredo.conf(5) "MODES")."""

    CLIENT = "client"  # the default in Miredo
    AUTOCLIENT = "autoclient"  # Miredo: client that restarts when the host's IPv4 changes
    RELAY = "relay"  # Miredo: same as cone
    CONE = "cone"  # relay with public, unfiltered IPv4 (RFC 4380 section 5.4)
    RESTRICTED = "restricted"  # deprecated: relay that also sends direct bubbles
    HOST = "host"  # ours: host-specific relay (RFC 4380 section 5.4, section 7.3.1)

    @property
    def role(self) -> Role:
        return Role.CLIENT if self in _CLIENT_TYPES else Role.RELAY


class DatapathMode(enum.StrEnum):
    """Where trusted traffic is forwarded (issue 8, docs/kernel.md): `auto` tries the kernel's
    eBPF programs and falls back to Python with one log line; `kernel` insists; `user` never
    loads a BPF program."""

    AUTO = "auto"
    KERNEL = "kernel"
    USER = "user"


_CLIENT_TYPES: Final = frozenset({RelayType.CLIENT, RelayType.AUTOCLIENT})

# Defaults are Miredo's: miredo.conf(5) and relayd.c/serverd.c.
DEFAULT_PREFIX: Final = IPv6Network("2001::/32")  # RFC 4380 section 2.6
DEFAULT_MTU: Final = 1280  # RFC 4380 section 5.1.2; Miredo relayd.c/serverd.c
# miredo.conf(5) "InterfaceName"; Debian's shipped file sets "teredo".
DEFAULT_INTERFACE_NAME: Final = "miredo"
# Our client's default is Debian's shipped value (and issue 3's): `teredo`, the name that the
# Miredo client hook and most documentation use.
DEFAULT_CLIENT_INTERFACE_NAME: Final = "teredo"
ANY_IPV4: Final = IPv4Address(0)  # bind to no particular address
DEFAULT_SYSLOG_FACILITY: Final = "daemon"  # miredo.c openlog(..., LOG_DAEMON)
DEFAULT_REFRESH_INTERVAL: Final = 30.0  # RFC 4380 section 5.2.5; RFC 6081 section 5.1.1 MUST
MIN_REFRESH_INTERVAL: Final = 1.0
MAX_REFRESH_INTERVAL: Final = 3600.0
# Anycast (docs/scale.md): seconds between the withdraw and the exit on SIGTERM, long enough for
# BGP to move traffic elsewhere (milliseconds in a LAN; a WAN's BGP takes longer).
DEFAULT_ANNOUNCE_DRAIN: Final = 2.0
MAX_ANNOUNCE_DRAIN: Final = 600.0
# Routing tables 253 and 255 are the kernel's default and local ones, 0 means "unspecified": an
# announcement there would route real traffic (table N is only read by the routing daemon).
# The main table (254) is allowed: it is the table FRR 8.4's zebra reads and withdraws from
# after a kill -9 (docs/scale.md, FRR). A server's /32 there route nothing (they are local
# addresses: the local table wins). A relay then keeps its forwarding route to the Teredo
# interface invisible to zebra and its announcement below it (io/announce.py ANNOUNCE_METRIC).
_RESERVED_TABLES: Final = frozenset({0, 253, 255})
MAIN_TABLE: Final = 254
MAX_TABLE: Final = 0xFFFFFFFF
MIN_MTU: Final = 1280  # IPv6 minimum link MTU (RFC 8200 section 5)
MAX_MTU: Final = 65535

# Miredo reads lines with fgets() into a 1056-byte buffer and skips longer ones
# (conf.c "Skipped overly long line"): at most 1054 characters before the newline.
MAX_LINE_LENGTH: Final = 1054

# conf.c `facilities[]` (the Linux <syslog.h> names); all are in SysLogHandler.facility_names.
SYSLOG_FACILITIES: Final = frozenset(
    {
        "auth",
        "authpriv",
        "cron",
        "daemon",
        "ftp",
        "kern",
        "lpr",
        "mail",
        "news",
        "syslog",
        "user",
        "uucp",
        *(f"local{n}" for n in range(8)),
    }
)

# Every directive, canonical spelling, and the modes that read it (relayd.c reads Prefix and
# InterfaceMTU only in relay modes, ServerAddress(2) only in client modes; serverd.c reads the
# server ones; miredo.c reads SyslogFacility for every daemon).
_CLIENT_ONLY: Final = frozenset({Role.CLIENT})
_MIREDO: Final = frozenset({Role.CLIENT, Role.RELAY})
_SERVER_ONLY: Final = frozenset({Role.SERVER})
_ALL: Final = frozenset(Role)

DIRECTIVES: Final[Mapping[str, frozenset[Role]]] = {
    "RelayType": _MIREDO,
    "ServerAddress": _CLIENT_ONLY,
    "ServerAddress2": _CLIENT_ONLY,
    "Prefix": frozenset({Role.RELAY, Role.SERVER}),
    "InterfaceMTU": frozenset({Role.RELAY, Role.SERVER}),
    "InterfaceName": _MIREDO,
    "BindAddress": _MIREDO,
    "BindPort": _MIREDO,
    "SyslogFacility": _ALL,
    "ServerBindAddress": _SERVER_ONLY,
    "ServerBindAddress2": _SERVER_ONLY,
    "RefreshInterval": _CLIENT_ONLY,  # ours
    "SymmetricNat": _CLIENT_ONLY,  # ours: accept (RFC 6081) | refuse (RFC 4380 5.2.1)
    "UPnP": _CLIENT_ONLY,  # ours: yes | no, map the port on a UPnP IGD NAT (RFC 6081)
    "MetricsAddress": _ALL,  # ours: ADDRESS:PORT of the Prometheus metrics (io/metrics.py)
    "User": _ALL,  # ours: the unprivileged user a daemon becomes after set-up (io/privileges.py)
    "AnnounceTable": frozenset({Role.RELAY, Role.SERVER}),  # ours: anycast (issue 11)
    "AnnounceDrain": frozenset({Role.RELAY, Role.SERVER}),  # ours
    "AnycastIPv4": frozenset({Role.RELAY}),  # ours
    "Datapath": _ALL,  # ours: auto|kernel|user (issue 8, docs/kernel.md)
}
_CANONICAL: Final = {name.lower(): name for name in DIRECTIVES}

# Directives that a role accepts from the command line although its file may not carry them:
# the client's expected Teredo prefix (--prefix) is a setting here (TEREDO-SPEC 1.1, legacy
# 3ffe:831f::/32), but miredo.conf(5) forbids Prefix in client mode, so files keep Miredo's rule.
FLAG_ONLY: Final[Mapping[Role, frozenset[str]]] = {
    Role.CLIENT: frozenset({"Prefix"}),
    Role.RELAY: frozenset(),
    Role.SERVER: frozenset(),
}

# sscanf(" %31s %1023s") splits on C isspace(), not on Unicode white space.
_SPACE: Final = re.compile(r"[ \t\n\v\f\r]+")
_UINT: Final = re.compile(r"\+?(?:0[xX][0-9a-fA-F]+|0[0-7]*|[1-9][0-9]*)")
_SECONDS: Final = re.compile(r"[0-9]{1,6}(?:\.[0-9]{1,6})?")
_DOTTED_QUAD: Final = re.compile(r"[0-9]{1,3}(?:\.[0-9]{1,3}){3}")
_HOST_LABEL: Final = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?")
_IFNAME: Final = re.compile(r"[A-Za-z0-9_.-]{1,15}")
_MAX_SHOWN: Final = 60
_COMMAND_LINE: Final = "command line"


def _show(text: str) -> str:
    """Quote `text` for a one-line message: control and non-ASCII characters escaped, cut."""
    escaped = text.encode("unicode_escape").decode("ascii").replace('"', '\\"')
    if len(escaped) > _MAX_SHOWN:
        escaped = escaped[: _MAX_SHOWN - 3] + "..."
    return f'"{escaped}"'


class ConfigError(ValueError):
    """A configuration that cannot be used; `str()` is "FILE:LINE: Directive: what is wrong".

    `line` is 0 when the fault has no line (a missing directive, a command-line flag, an
    unreadable file); the LINE part is then left out. `directive` is None for faults of the
    file as a whole.
    """

    def __init__(self, file: str, line: int, directive: str | None, message: str) -> None:
        self.file = file
        self.line = line
        self.directive = directive
        self.message = message
        super().__init__(str(self))

    def __str__(self) -> str:
        # File names are shown escaped too: the message must stay one line whatever they hold.
        where = self.file.encode("unicode_escape").decode("ascii")
        if self.line > 0:
            where = f"{where}:{self.line}"
        if self.directive is None:
            return f"{where}: {self.message}"
        return f"{where}: {self.directive}: {self.message}"


@dataclass(frozen=True, slots=True)
class Directive:
    """One setting as given: a file line, or a command-line flag (file "command line", line 0)."""

    name: str  # canonical spelling, a key of DIRECTIVES
    value: str
    file: str
    line: int
    spelled: str  # as written: the name in the file, or the flag (e.g. "--bind-port")

    @classmethod
    def flag(cls, name: str, value: str, spelled: str) -> Directive:
        """A directive given by a command-line flag (cli/options.py)."""
        if name not in DIRECTIVES:
            raise KeyError(name)
        return cls(name, value, _COMMAND_LINE, 0, spelled)

    def error(self, message: str) -> ConfigError:
        # Errors name the canonical directive for file lines, the flag for the command line.
        label = self.name if self.line > 0 else self.spelled
        return ConfigError(self.file, self.line, label, message)


@dataclass(frozen=True, slots=True)
class MetricsAddress:
    """Where a daemon serves its Prometheus metrics (MetricsAddress, --metrics)."""

    host: str  # a literal IPv4 or IPv6 address
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


# --------------------------------------------------------------------------- syntax


def read_directives(text: str, filename: str) -> tuple[Directive, ...]:
    """Split `text` into directives, in file order; checks names and syntax, not values.

    Errors: a line longer than Miredo reads, an unknown directive, a directive without a
    value, words after the value (Miredo ignores them silently; here they are a mistake
    unless they start a '#' comment), and a repeated directive (Miredo uses the first and
    reports the second as superfluous). Only `ServerAddress` may come again (ours: more
    servers to fail over to, in file order after the first; Miredo's files have one).
    """
    found: dict[str, Directive] = {}
    repeated: list[Directive] = []  # ServerAddress again: more servers (REPEATABLE)
    for number, raw in enumerate(text.split("\n"), start=1):
        if len(raw) > MAX_LINE_LENGTH:
            raise ConfigError(
                filename, number, None, f"line too long (more than {MAX_LINE_LENGTH} characters)"
            )
        words = _SPACE.split(raw.strip(" \t\n\v\f\r"))
        if not words[0] or words[0].startswith("#"):
            continue  # blank line or comment (conf.c: the first word starts with '#')
        spelled = words[0]
        name = _CANONICAL.get(spelled.lower()) if spelled.isascii() else None
        if name is None:
            raise ConfigError(filename, number, _show(spelled)[1:-1], "unknown directive")
        if len(words) < 2:
            raise ConfigError(filename, number, name, "missing value")
        if len(words) > 2 and not words[2].startswith("#"):
            raise ConfigError(
                filename, number, name, f"unexpected text after the value: {_show(words[2])}"
            )
        first = found.get(name)
        directive = Directive(name, words[1], filename, number, spelled)
        if first is not None:
            if name not in REPEATABLE:
                message = f"given twice (first at line {first.line})"
                raise ConfigError(filename, number, name, message)
            repeated.append(directive)
            continue
        found[name] = directive
    return (*found.values(), *repeated)


# --------------------------------------------------------------------------- values


def parse_relay_type(d: Directive) -> RelayType:
    try:
        return RelayType(d.value.lower())
    except ValueError:
        choices = "|".join(t.value for t in RelayType)
        raise d.error(f"invalid relay type {_show(d.value)} (expected {choices})") from None


def _uint(d: Directive, low: int, high: int, what: str) -> int:
    # conf.c miredo_conf_get_int16: strtoul(value, &end, 0), so 0x hex and 0 octal forms too.
    text = d.value
    if not _UINT.fullmatch(text):
        raise d.error(f"invalid {what} {_show(text)} (expected an integer {low}..{high})")
    digits = text.removeprefix("+")
    if digits[:2] in ("0x", "0X"):
        number = int(digits, 16)
    elif len(digits) > 1 and digits[0] == "0":
        number = int(digits, 8)
    else:
        number = int(digits)
    if not low <= number <= high:
        raise d.error(f"{what} {_show(text)} out of range {low}..{high}")
    return number


def _ipv4_literal(text: str) -> IPv4Address | None:
    if not _DOTTED_QUAD.fullmatch(text):
        return None
    try:
        return IPv4Address(text)
    except ValueError:  # a part above 255, or a leading zero
        return None


def _bind_address(d: Directive) -> IPv4Address:
    address = _ipv4_literal(d.value)
    if address is None:
        raise d.error(f"invalid IPv4 address {_show(d.value)} (expected a dotted quad)")
    if address.is_multicast or address == IPv4Address("255.255.255.255"):
        raise d.error(f"{address} is not a unicast address")
    return address


def _specific_address(d: Directive, role: str) -> IPv4Address:
    address = _bind_address(d)
    if address == ANY_IPV4:
        raise d.error(f"0.0.0.0 cannot be {role}")
    return address


def _server_bind_address(d: Directive) -> IPv4Address:
    # serverd.c: INADDR_ANY means "Server address not specified"; a server needs a real one.
    return _specific_address(d, "a server address")


def parse_host(d: Directive) -> str:
    """A host name (RFC 1123 section 2.1 syntax) or an IPv4 literal, kept as given."""
    text = d.value
    labels = text.removesuffix(".").split(".")
    if all(label.isdigit() for label in labels if label) and any(labels):
        if _ipv4_literal(text) is None:
            raise d.error(f"invalid IPv4 address {_show(text)}")
        return text
    if len(text) > 253 or not all(_HOST_LABEL.fullmatch(label) for label in labels):
        raise d.error(f"invalid host name {_show(text)}")
    return text


def _prefix(d: Directive) -> IPv6Network:
    # conf.c parses an IPv6 address and keeps its first 32 bits (RFC 4380 section 2.6: the
    # Teredo prefix is a /32); here the rest must be zero so that a typo cannot hide in it.
    text, slash, length = d.value.partition("/")
    if slash and length != "32":
        raise d.error(f"invalid prefix length /{_show(length)[1:-1]} (a Teredo prefix is a /32)")
    try:
        address = IPv6Address(text)
    except ValueError:
        address = None
    if address is None or address.scope_id is not None:
        raise d.error(f"invalid IPv6 prefix {_show(d.value)}")
    if int(address) & ((1 << 96) - 1):
        raise d.error(f"{address} is not a /32 prefix (the last 96 bits must be zero)")
    if address.is_multicast or int(address) == 0:
        raise d.error(f"{address}/32 is not a unicast prefix")
    return IPv6Network((address, 32))


def _mtu(d: Directive) -> int:
    # Miredo takes any 16-bit value; below 1280 an IPv6 link is invalid (RFC 8200 section 5).
    return _uint(d, MIN_MTU, MAX_MTU, "MTU")


def _port(d: Directive) -> int:
    return _uint(d, 0, 65535, "port")


def _interface_name(d: Directive) -> str:
    # Linux: fewer than IFNAMSIZ (16) bytes, not "." or "..", no '/', ':' or white space
    # (dev_valid_name); we also keep to characters that every tool quotes safely.
    name = d.value
    if not _IFNAME.fullmatch(name) or name in (".", ".."):
        raise d.error(
            f"invalid interface name {_show(name)} (1-15 characters from A-Z a-z 0-9 _ . -)"
        )
    return name


def _facility(d: Directive) -> str:
    name = d.value.lower()
    if name not in SYSLOG_FACILITIES:
        raise d.error(f"unknown syslog facility {_show(d.value)}")
    return name


def _seconds(d: Directive, what: str, example: str, low: float, high: float) -> float:
    if not _SECONDS.fullmatch(d.value):
        raise d.error(f"invalid {what} {_show(d.value)} (expected seconds, e.g. {example})")
    seconds = float(d.value)
    if not low <= seconds <= high:
        raise d.error(f"{what} {_show(d.value)} out of range {low:g}..{high:g} seconds")
    return seconds


def _metrics_address(d: Directive) -> MetricsAddress:
    # IPv4:PORT or [IPv6]:PORT, literal only: a listening address needs no DNS.
    host, colon, port_text = d.value.rpartition(":")
    if not colon or not host:
        raise d.error(f"invalid address {_show(d.value)} (expected ADDRESS:PORT)")
    bracketed = host.startswith("[") and host.endswith("]")
    address: IPv4Address | IPv6Address | None
    if bracketed:
        try:
            address = IPv6Address(host[1:-1])
        except ValueError:
            address = None
    else:
        address = _ipv4_literal(host)
    if address is None or address.is_multicast:
        raise d.error(
            f"invalid address {_show(host)} (an IPv4 address or an IPv6 one in [brackets])"
        )
    if not port_text.isascii() or not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        raise d.error(f"invalid port {_show(port_text)} (expected 1..65535)")
    return MetricsAddress(str(address), int(port_text))


_USER_NAME: Final = re.compile(r"[a-z_][a-z0-9_-]{0,31}\$?|[0-9]{1,10}")


def _user(d: Directive) -> str:
    # useradd's portable names (and a numeric uid); whether the user exists is checked at
    # start (io/privileges.py), where the daemon would become it.
    if not _USER_NAME.fullmatch(d.value) or d.value in ("root", "0"):
        raise d.error(f"invalid user {_show(d.value)} (an unprivileged user name or uid)")
    return d.value


def _refresh(d: Directive) -> float:
    return _seconds(d, "interval", "30", MIN_REFRESH_INTERVAL, MAX_REFRESH_INTERVAL)


def _symmetric_nat(d: Directive) -> bool:
    """SymmetricNat accept|refuse -> True when refused (RFC 4380 section 5.2.1 strictly)."""
    value = d.value.lower()
    if value not in ("accept", "refuse"):
        raise d.error(f"invalid policy {_show(d.value)} (expected accept|refuse)")
    return value == "refuse"


_TRUE: Final = frozenset({"yes", "true", "on", "enabled"})
_FALSE: Final = frozenset({"no", "false", "off", "disabled"})


def _yes_no(d: Directive) -> bool:
    """A boolean, with the words of Miredo's conf.c miredo_conf_parse_bool (any case)."""
    value = d.value.lower()
    if value not in _TRUE | _FALSE:
        raise d.error(f"invalid value {_show(d.value)} (expected yes|no)")
    return value in _TRUE


def _table(d: Directive) -> int:
    table = _uint(d, 1, MAX_TABLE, "routing table")
    if table in _RESERVED_TABLES:
        raise d.error(f"table {table} is the kernel's own (default or local): pick another")
    return table


def _drain(d: Directive) -> float:
    return _seconds(d, "drain time", "2", 0.0, MAX_ANNOUNCE_DRAIN)


def _anycast(d: Directive) -> IPv4Address:
    return _specific_address(d, "announced")


def _datapath(d: Directive) -> DatapathMode:
    try:
        return DatapathMode(d.value.lower())
    except ValueError:
        choices = ", ".join(m.value for m in DatapathMode)
        raise d.error(f"unknown data path {_show(d.value)} (expected {choices})") from None


# Directives that may be given more than once (ours: several servers, issue 13).
REPEATABLE: Final = frozenset({"ServerAddress"})

PARSERS: Final[Mapping[str, Callable[[Directive], object]]] = {
    "RelayType": parse_relay_type,
    "ServerAddress": parse_host,
    "ServerAddress2": parse_host,
    "Prefix": _prefix,
    "InterfaceMTU": _mtu,
    "InterfaceName": _interface_name,
    "BindAddress": _bind_address,
    "BindPort": _port,
    "SyslogFacility": _facility,
    "ServerBindAddress": _server_bind_address,
    "ServerBindAddress2": _server_bind_address,
    "RefreshInterval": _refresh,
    "SymmetricNat": _symmetric_nat,
    "UPnP": _yes_no,
    "MetricsAddress": _metrics_address,
    "User": _user,
    "AnnounceTable": _table,
    "AnnounceDrain": _drain,
    "AnycastIPv4": _anycast,
    "Datapath": _datapath,
}
