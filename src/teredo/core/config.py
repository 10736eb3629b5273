"""Miredo's "Directive value" configuration files -> typed, validated settings.

Pure: the caller reads the file and passes its text with the file name used in messages; no
file I/O and no DNS happen here. core/directives.py has the syntax (miredo.conf(5) and
miredo-server.conf(5) as Miredo 1.2.6 reads them, the directives and the value of each); this
module decides the role, checks which directives it allows, merges the command line's
overrides and builds the settings of each daemon.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Network
from typing import TypeVar, cast

from teredo.core.directives import (
    ANY_IPV4,
    DEFAULT_ANNOUNCE_DRAIN,
    DEFAULT_CLIENT_INTERFACE_NAME,
    DEFAULT_INTERFACE_NAME,
    DEFAULT_MTU,
    DEFAULT_PREFIX,
    DEFAULT_REFRESH_INTERVAL,
    DEFAULT_SYSLOG_FACILITY,
    DIRECTIVES,
    FLAG_ONLY,
    MAX_LINE_LENGTH,
    PARSERS,
    REPEATABLE,
    SYSLOG_FACILITIES,
    ConfigError,
    DatapathMode,
    Directive,
    MetricsAddress,
    RelayType,
    Role,
    parse_host,
    parse_relay_type,
    read_directives,
)

__all__ = [
    "ANY_IPV4",
    "DEFAULT_ANNOUNCE_DRAIN",
    "DEFAULT_CLIENT_INTERFACE_NAME",
    "DEFAULT_INTERFACE_NAME",
    "DEFAULT_MTU",
    "DEFAULT_PREFIX",
    "DEFAULT_REFRESH_INTERVAL",
    "DEFAULT_SYSLOG_FACILITY",
    "DIRECTIVES",
    "MAX_LINE_LENGTH",
    "REPEATABLE",
    "SYSLOG_FACILITIES",
    "ClientSettings",
    "ConfigError",
    "DatapathMode",
    "Directive",
    "MetricsAddress",
    "RelaySettings",
    "RelayType",
    "Role",
    "ServerSettings",
    "Settings",
    "detect_role",
    "parse_client",
    "parse_config",
    "parse_relay",
    "parse_server",
    "read_directives",
]


@dataclass(frozen=True, slots=True)
class ClientSettings:
    """A Teredo client (RFC 4380 section 5.2; miredo.conf(5) client mode)."""

    server_address: str  # host name or IPv4 literal, as given (resolved by the I/O layer)
    server_address2: str | None = None  # None: primary address + 1 (Miredo, TEREDO-SPEC 3.1)
    relay_type: RelayType = RelayType.CLIENT
    interface_name: str = DEFAULT_CLIENT_INTERFACE_NAME
    bind_address: IPv4Address = ANY_IPV4  # 0.0.0.0: any
    bind_port: int = 0  # 0: the system picks a port (RFC 4380 section 5.2.10 "random")
    prefix: IPv6Network = DEFAULT_PREFIX  # expected in the server's RA (flag only)
    refresh_interval: float = DEFAULT_REFRESH_INTERVAL  # ours: RFC 6081 section 5.1.1
    syslog_facility: str = DEFAULT_SYSLOG_FACILITY
    # ServerAddress given again: more servers, in order, to fail over to (ours; issue 13).
    # ServerAddress2 belongs to the first; each of these uses its own address + 1.
    more_servers: tuple[str, ...] = ()
    metrics_address: MetricsAddress | None = None  # ours: no metrics by default
    user: str | None = None  # ours: stays root when None (io/privileges.py)
    # ours: SymmetricNat refuse = no address behind a symmetric NAT (RFC 4380 5.2.1 strictly)
    refuse_symmetric: bool = False
    # ours: UPnP yes = map the UDP port on a UPnP IGD NAT (RFC 6081 UPnP-Enabled Symmetric NAT)
    upnp: bool = False
    datapath: DatapathMode = DatapathMode.AUTO  # ours: kernel (eBPF) or user (Python)

    @property
    def role(self) -> Role:
        return Role.CLIENT


@dataclass(frozen=True, slots=True)
class ServerSettings:
    """A Teredo server (RFC 4380 section 5.3; miredo-server.conf(5))."""

    server_bind_address: IPv4Address
    server_bind_address2: IPv4Address  # defaults to the primary + 1 (serverd.c)
    prefix: IPv6Network = DEFAULT_PREFIX
    mtu: int = DEFAULT_MTU  # advertised in the RA's MTU option (RFC 4380 section 5.1.2)
    syslog_facility: str = DEFAULT_SYSLOG_FACILITY
    metrics_address: MetricsAddress | None = None  # ours: no metrics by default
    user: str | None = None  # ours: stays root when None (io/privileges.py)
    datapath: DatapathMode = DatapathMode.AUTO  # ours: kernel (eBPF) or user (Python)
    announce_table: int | None = None  # ours: kernel table of the anycast routes (issue 11)
    announce_drain: float = DEFAULT_ANNOUNCE_DRAIN

    @property
    def role(self) -> Role:
        return Role.SERVER


@dataclass(frozen=True, slots=True)
class RelaySettings:
    """A Teredo relay, or with RelayType host a host-specific relay (RFC 4380 section 5.4)."""

    relay_type: RelayType = RelayType.CONE
    prefix: IPv6Network = DEFAULT_PREFIX
    mtu: int = DEFAULT_MTU
    interface_name: str = DEFAULT_INTERFACE_NAME
    bind_address: IPv4Address = ANY_IPV4
    bind_port: int = 0
    syslog_facility: str = DEFAULT_SYSLOG_FACILITY
    metrics_address: MetricsAddress | None = None  # ours: no metrics by default
    user: str | None = None  # ours: stays root when None (io/privileges.py)
    datapath: DatapathMode = DatapathMode.AUTO  # ours: kernel (eBPF) or user (Python)
    announce_table: int | None = None  # ours: kernel table of the anycast routes (issue 11)
    announce_drain: float = DEFAULT_ANNOUNCE_DRAIN
    anycast_ipv4: IPv4Address | None = None  # ours: announced as a /32 with the prefix

    @property
    def role(self) -> Role:
        return Role.RELAY

    @property
    def host_specific(self) -> bool:
        """Serves only this host's own IPv6 addresses (RFC 4380 section 5.4, section 7.3.1)."""
        return self.relay_type is RelayType.HOST

    @property
    def direct_bubbles(self) -> bool:
        """Miredo's deprecated "restricted" relay also sends direct bubbles (section 5.4.1)."""
        return self.relay_type is RelayType.RESTRICTED


Settings = ClientSettings | ServerSettings | RelaySettings


# --------------------------------------------------------------------------- settings


@dataclass(frozen=True, slots=True)
class _Layers:
    """The file's directives and the command-line ones that override them, for one role."""

    filename: str
    role: Role
    file: Mapping[str, Directive]
    flags: Mapping[str, Directive]
    more_servers: tuple[Directive, ...] = ()  # ServerAddress given again (client)


def _merge(
    filename: str,
    directives: Sequence[Directive],
    overrides: Sequence[Directive],
    role: Role | None,
) -> _Layers:
    by_name: dict[str, Directive] = {}
    over: dict[str, Directive] = {}
    for d in directives:
        by_name.setdefault(d.name, d)  # a repeated ServerAddress: the first is the primary
    for d in overrides:
        over.setdefault(d.name, d)
    # The mode is decided first (an explicit role, else ServerBindAddress, else RelayType)
    # because whether a directive is allowed depends on it (relayd.c reads by mode).
    relay_type: RelayType | None = None
    type_directive = over.get("RelayType") or by_name.get("RelayType")
    if type_directive is not None:
        relay_type = parse_relay_type(type_directive)
    if role is None:
        role = detect_role(directives)
    if (
        type_directive is not None
        and relay_type is not None
        and role is not Role.SERVER
        and relay_type.role is not role
    ):
        raise type_directive.error(
            f"{relay_type.value} is a {relay_type.role.value} mode, not a {role.value} one"
        )
    # Messages name the RelayType when there is one ("not valid in cone mode").
    named = relay_type is not None and role is not Role.SERVER
    mode = f"{relay_type.value if named and relay_type else role.value} mode"
    for d in directives:  # file order, so the first faulty line is the one reported
        if role not in DIRECTIVES[d.name]:
            raise d.error(f"not valid in {mode}")
    for d in overrides:
        if role not in DIRECTIVES[d.name] and d.name not in FLAG_ONLY[role]:
            raise d.error(f"not valid in {mode}")
    # More servers: the flags' own when --server is given, else the file's.
    servers = [d for d in overrides if d.name == "ServerAddress"] or [
        d for d in directives if d.name == "ServerAddress"
    ]
    return _Layers(filename, role, by_name, over, tuple(servers[1:]))


def detect_role(directives: Sequence[Directive]) -> Role:
    """The role of a file (checkconf --role auto): a ServerBindAddress makes it a
    miredo-server file; otherwise RelayType decides, client when absent (miredo.conf(5))."""
    names = {d.name: d for d in directives}
    if "ServerBindAddress" in names or "ServerBindAddress2" in names:
        return Role.SERVER
    relay_type = names.get("RelayType")
    if relay_type is None:
        return Role.CLIENT
    return parse_relay_type(relay_type).role


_T = TypeVar("_T")


class _Values:
    """Parsed values by directive name. The file is checked in line order (so the error
    reported is the first faulty line), even where a flag overrides a value: a faulty file
    stays faulty. Then the flags, whose values win."""

    def __init__(self, layers: _Layers) -> None:
        self.filename = layers.filename
        self.given = {**layers.file, **layers.flags}
        self.parsed = {d.name: PARSERS[d.name](d) for d in layers.file.values()}
        self.parsed.update({d.name: PARSERS[d.name](d) for d in layers.flags.values()})

    def get(self, name: str, default: _T) -> _T:
        return cast(_T, self.parsed.get(name, default))

    def required(self, name: str, kind: type[_T], mode: str) -> _T:
        value = self.parsed.get(name)
        if value is None:
            raise ConfigError(self.filename, 0, name, f"required in {mode} mode")
        return cast(_T, value)


def _client(layers: _Layers) -> ClientSettings:
    v = _Values(layers)
    # relayd.c: "Server address not specified" (RFC 4380 section 5.2: a client needs one).
    server = v.required("ServerAddress", str, "client")
    more = tuple(parse_host(d) for d in layers.more_servers)
    for d, host in zip(layers.more_servers, more, strict=True):
        if host == server or more.count(host) > 1:
            raise d.error(f"server {host} given twice")
    return ClientSettings(
        more_servers=more,
        server_address=server,
        server_address2=v.get("ServerAddress2", None),
        relay_type=v.get("RelayType", RelayType.CLIENT),
        interface_name=v.get("InterfaceName", DEFAULT_CLIENT_INTERFACE_NAME),
        bind_address=v.get("BindAddress", ANY_IPV4),
        bind_port=v.get("BindPort", 0),
        prefix=v.get("Prefix", DEFAULT_PREFIX),
        refresh_interval=v.get("RefreshInterval", DEFAULT_REFRESH_INTERVAL),
        syslog_facility=v.get("SyslogFacility", DEFAULT_SYSLOG_FACILITY),
        metrics_address=v.get("MetricsAddress", None),
        user=v.get("User", None),
        refuse_symmetric=v.get("SymmetricNat", False),
        upnp=v.get("UPnP", False),
        datapath=v.get("Datapath", DatapathMode.AUTO),
    )


def _relay(layers: _Layers) -> RelaySettings:
    v = _Values(layers)
    return RelaySettings(
        relay_type=v.get("RelayType", RelayType.CONE),
        prefix=v.get("Prefix", DEFAULT_PREFIX),
        mtu=v.get("InterfaceMTU", DEFAULT_MTU),
        interface_name=v.get("InterfaceName", DEFAULT_INTERFACE_NAME),
        bind_address=v.get("BindAddress", ANY_IPV4),
        bind_port=v.get("BindPort", 0),
        syslog_facility=v.get("SyslogFacility", DEFAULT_SYSLOG_FACILITY),
        metrics_address=v.get("MetricsAddress", None),
        user=v.get("User", None),
        datapath=v.get("Datapath", DatapathMode.AUTO),
        announce_table=v.get("AnnounceTable", None),
        announce_drain=v.get("AnnounceDrain", DEFAULT_ANNOUNCE_DRAIN),
        anycast_ipv4=v.get("AnycastIPv4", None),
    )


def _server(layers: _Layers) -> ServerSettings:
    v = _Values(layers)
    # serverd.c: "Server address not specified".
    primary = v.required("ServerBindAddress", IPv4Address, "server")
    secondary: IPv4Address | None = v.get("ServerBindAddress2", None)
    if secondary is None:
        # serverd.c: the secondary address defaults to the primary + 1 (TEREDO-SPEC 4).
        secondary = primary + 1
    elif secondary == primary:
        raise v.given["ServerBindAddress2"].error(
            "must differ from ServerBindAddress (RFC 4380 section 5.3: two addresses)"
        )
    return ServerSettings(
        server_bind_address=primary,
        server_bind_address2=secondary,
        prefix=v.get("Prefix", DEFAULT_PREFIX),
        mtu=v.get("InterfaceMTU", DEFAULT_MTU),
        syslog_facility=v.get("SyslogFacility", DEFAULT_SYSLOG_FACILITY),
        metrics_address=v.get("MetricsAddress", None),
        user=v.get("User", None),
        datapath=v.get("Datapath", DatapathMode.AUTO),
        announce_table=v.get("AnnounceTable", None),
        announce_drain=v.get("AnnounceDrain", DEFAULT_ANNOUNCE_DRAIN),
    )


def parse_config(
    text: str,
    filename: str,
    role: Role | None = None,
    overrides: Sequence[Directive] = (),
) -> Settings:
    """Parse a miredo.conf / miredo-server.conf text into settings for `role`.

    `role` None detects it (`detect_role`). `overrides` are command-line directives
    (`Directive.flag`): they replace the file's values and are checked the same way.
    Raises ConfigError, and nothing else, for any fault of the text or the overrides.
    """
    directives = read_directives(text, filename)
    layers = _merge(filename, directives, overrides, role)
    if layers.role is Role.CLIENT:
        return _client(layers)
    if layers.role is Role.RELAY:
        return _relay(layers)
    return _server(layers)


def parse_client(text: str, filename: str, overrides: Sequence[Directive] = ()) -> ClientSettings:
    return _client(_merge(filename, read_directives(text, filename), overrides, Role.CLIENT))


def parse_server(text: str, filename: str, overrides: Sequence[Directive] = ()) -> ServerSettings:
    return _server(_merge(filename, read_directives(text, filename), overrides, Role.SERVER))


def parse_relay(text: str, filename: str, overrides: Sequence[Directive] = ()) -> RelaySettings:
    return _relay(_merge(filename, read_directives(text, filename), overrides, Role.RELAY))
