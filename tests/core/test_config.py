"""core/config.py: every directive parsed and defaulted, every error with its exact text and
line, Debian's shipped files, and a property: any text gives settings or ConfigError."""

from __future__ import annotations

import contextlib
from ipaddress import IPv4Address, IPv6Network

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from teredo.core.config import (
    DIRECTIVES,
    MAX_LINE_LENGTH,
    SYSLOG_FACILITIES,
    ClientSettings,
    ConfigError,
    Directive,
    RelaySettings,
    RelayType,
    Role,
    ServerSettings,
    detect_role,
    parse_client,
    parse_config,
    parse_relay,
    parse_server,
    read_directives,
)

# Provenance: Debian package miredo 1.2.6-7.1 (bookworm), /etc/miredo.conf, verbatim.
DEBIAN_MIREDO_CONF = """\
# Please refer to the miredo.conf(5) man page for details.
InterfaceName	teredo

# Pick a Teredo server:
#ServerAddress	teredo.ipv6.microsoft.com
ServerAddress	teredo-debian.remlab.net

# Some firewall/NAT setups require a specific UDP port number:
#BindPort	3545
"""

# Provenance: Debian package miredo-server 1.2.6-7.1 (bookworm), /etc/miredo-server.conf
# (linked from /etc/miredo/miredo-server.conf), verbatim.
DEBIAN_MIREDO_SERVER_CONF = """\
# Please refer to the miredo-server.conf(5) manpage for details.

# Server primary IPv4 address.
# Miredo will open UDP port 3544 on this IPv4 address and the next one.
ServerBindAddress 192.0.2.221
"""


def error_of(text: str, role: Role | None = None, name: str = "t.conf") -> str:
    with pytest.raises(ConfigError) as info:
        parse_config(text, name, role)
    return str(info.value)


# ----------------------------------------------------------------------------- Debian files


def test_debian_client_file_is_accepted_with_its_values() -> None:
    got = parse_config(DEBIAN_MIREDO_CONF, "/etc/miredo.conf")
    assert got == ClientSettings(server_address="teredo-debian.remlab.net", interface_name="teredo")


def test_debian_server_file_is_accepted_with_its_values() -> None:
    got = parse_config(DEBIAN_MIREDO_SERVER_CONF, "/etc/miredo/miredo-server.conf")
    assert got == ServerSettings(
        server_bind_address=IPv4Address("192.0.2.221"),
        server_bind_address2=IPv4Address("192.0.2.222"),
    )


# ----------------------------------------------------------------------------- defaults


def test_client_defaults_are_miredos() -> None:
    got = parse_client("ServerAddress 198.51.100.1\n", "c.conf")
    assert got.server_address == "198.51.100.1"
    assert got.server_address2 is None
    assert got.relay_type is RelayType.CLIENT
    assert got.interface_name == "teredo"  # Debian's shipped value (issue 3), not "miredo"
    assert got.bind_address == IPv4Address("0.0.0.0")
    assert got.bind_port == 0
    assert got.prefix == IPv6Network("2001::/32")
    assert got.refresh_interval == 30.0
    assert got.syslog_facility == "daemon"
    assert got.role is Role.CLIENT


def test_relay_defaults_are_miredos() -> None:
    got = parse_relay("", "r.conf")
    assert got == RelaySettings(
        relay_type=RelayType.CONE,
        prefix=IPv6Network("2001::/32"),
        mtu=1280,
        interface_name="miredo",
        bind_address=IPv4Address("0.0.0.0"),
        bind_port=0,
        syslog_facility="daemon",
    )
    assert not got.host_specific
    assert not got.direct_bubbles
    assert got.role is Role.RELAY


def test_server_defaults_are_miredos() -> None:
    got = parse_server("ServerBindAddress 203.0.113.255\n", "s.conf")
    assert got.server_bind_address2 == IPv4Address("203.0.114.0")  # + 1, carrying over
    assert got.prefix == IPv6Network("2001::/32")
    assert got.mtu == 1280
    assert got.syslog_facility == "daemon"
    assert got.role is Role.SERVER


# ----------------------------------------------------------------------------- every directive


def test_every_client_directive() -> None:
    text = """
        RelayType      autoclient
        ServerAddress  teredo.example.net.
        ServerAddress2 198.51.100.2
        InterfaceName  ter-0.x_y
        BindAddress    192.168.1.10
        BindPort       3545
        SyslogFacility LOCAL5
        RefreshInterval 12.5
    """
    assert parse_client(text, "c.conf") == ClientSettings(
        server_address="teredo.example.net.",
        server_address2="198.51.100.2",
        relay_type=RelayType.AUTOCLIENT,
        interface_name="ter-0.x_y",
        bind_address=IPv4Address("192.168.1.10"),
        bind_port=3545,
        refresh_interval=12.5,
        syslog_facility="local5",
    )


def test_every_relay_directive() -> None:
    text = (
        "relaytype RESTRICTED\nPrefix 3ffe:831f::\nInterfaceMTU 1400\nInterfaceName rly\n"
        "BindAddress 203.0.113.7\nBindPort 3544\nSyslogFacility user\n"
    )
    got = parse_relay(text, "r.conf")
    assert got == RelaySettings(
        relay_type=RelayType.RESTRICTED,
        prefix=IPv6Network("3ffe:831f::/32"),
        mtu=1400,
        interface_name="rly",
        bind_address=IPv4Address("203.0.113.7"),
        bind_port=3544,
        syslog_facility="user",
    )
    assert got.direct_bubbles


def test_every_server_directive() -> None:
    text = (
        "ServerBindAddress 198.51.100.10\nServerBindAddress2 198.51.100.20\n"
        "Prefix 2001:0000::/32\nInterfaceMTU 65535\nSyslogFacility kern\n"
    )
    assert parse_server(text, "s.conf") == ServerSettings(
        server_bind_address=IPv4Address("198.51.100.10"),
        server_bind_address2=IPv4Address("198.51.100.20"),
        prefix=IPv6Network("2001::/32"),
        mtu=65535,
        syslog_facility="kern",
    )


def test_all_directives_are_covered_by_these_tests() -> None:
    # A directive added to the table without a test here fails this list.
    assert set(DIRECTIVES) == {
        "RelayType",
        "ServerAddress",
        "ServerAddress2",
        "Prefix",
        "InterfaceMTU",
        "InterfaceName",
        "BindAddress",
        "BindPort",
        "SyslogFacility",
        "ServerBindAddress",
        "ServerBindAddress2",
        "RefreshInterval",
        "SymmetricNat",
        "UPnP",  # RFC 6081 UPnP (tests/test_cli_client.py, tests/io/test_upnp.py)
        "MetricsAddress",
        "User",  # tests/io/test_privileges.py too
        # anycast (issue 11): tests/core/test_config_announce.py
        "AnnounceTable",
        "AnnounceDrain",
        "AnycastIPv4",
        "Datapath",  # issue 8: tests/core/test_config_datapath.py
    }


@pytest.mark.parametrize(
    ("value", "relay_type"),
    [("relay", RelayType.RELAY), ("Cone", RelayType.CONE), ("HOST", RelayType.HOST)],
)
def test_relay_types(value: str, relay_type: RelayType) -> None:
    got = parse_relay(f"RelayType {value}\n", "r.conf")
    assert got.relay_type is relay_type
    assert got.host_specific is (relay_type is RelayType.HOST)


@pytest.mark.parametrize("facility", sorted(SYSLOG_FACILITIES))
def test_every_syslog_facility(facility: str) -> None:
    got = parse_relay(f"SyslogFacility {facility.upper()}", "r.conf")
    assert got.syslog_facility == facility


@pytest.mark.parametrize(
    ("value", "port"),
    [("0", 0), ("65535", 65535), ("0x0DEA", 0xDEA), ("010", 8), ("+7", 7), ("00", 0)],
)
def test_ports_follow_strtoul_base_0(value: str, port: int) -> None:
    assert parse_relay(f"BindPort {value}", "r.conf").bind_port == port


@pytest.mark.parametrize("value", ["2001::", "2001:0000::", "2001:0:0:0:0:0:0:0", "2001::/32"])
def test_prefix_spellings(value: str) -> None:
    assert parse_relay(f"Prefix {value}", "r.conf").prefix == IPv6Network("2001::/32")


def test_whitespace_comments_and_case() -> None:
    text = (
        "\r\n\t  # a comment\n#ServerAddress 1.2.3.4\n   \n"
        "  sErVeRaDdReSs\t\t198.51.100.1   # trailing comment\r\n"
    )
    assert parse_client(text, "c.conf").server_address == "198.51.100.1"


def test_last_line_without_newline_is_read() -> None:
    # Miredo's fgets() loop skips it as "overly long"; that is a bug, not a rule to copy.
    assert parse_client("ServerAddress 198.51.100.1", "c.conf").server_address == "198.51.100.1"


def test_line_of_maximum_length_is_accepted() -> None:
    line = "#" + "x" * (MAX_LINE_LENGTH - 1)
    assert parse_client(f"{line}\nServerAddress 198.51.100.1\n", "c.conf").bind_port == 0


@pytest.mark.parametrize(
    ("name", "ok"),
    [
        ("a" * 63 + ".example", True),
        ("a" * 64 + ".example", False),  # a label holds at most 63 characters
        (".".join(["a" * 62] * 4) + ".bc", False),  # 254 characters
        (".".join(["a" * 62] * 4) + ".b", True),  # 253
        ("xn--bcher-kva.example", True),
        ("teredo.example.", True),
        ("192.0.2.1", True),
        ("192.0.2.01", False),  # a leading zero reads as octal to inet_aton: ambiguous
        ("1.2.3", False),
    ],
)
def test_server_name_syntax(name: str, ok: bool) -> None:
    text = f"ServerAddress {name}\n"
    if ok:
        assert parse_client(text, "c.conf").server_address == name
    else:
        with pytest.raises(ConfigError, match="ServerAddress: invalid"):
            parse_client(text, "c.conf")


# ----------------------------------------------------------------------------- detection


@pytest.mark.parametrize(
    ("text", "role"),
    [
        ("", Role.CLIENT),
        ("RelayType client", Role.CLIENT),
        ("RelayType autoclient", Role.CLIENT),
        ("RelayType relay", Role.RELAY),
        ("RelayType restricted", Role.RELAY),
        ("RelayType host", Role.RELAY),
        ("ServerBindAddress 198.51.100.1", Role.SERVER),
        ("ServerBindAddress2 198.51.100.1", Role.SERVER),
    ],
)
def test_detect_role(text: str, role: Role) -> None:
    assert detect_role(read_directives(text, "x")) is role


def test_read_directives_keeps_lines_and_spelling() -> None:
    got = read_directives("# c\n\nbindport 5\nPREFIX 2001::\n", "f")
    assert got == (
        Directive("BindPort", "5", "f", 3, "bindport"),
        Directive("Prefix", "2001::", "f", 4, "PREFIX"),
    )


# ----------------------------------------------------------------------------- errors

ERRORS = [
    # syntax
    ("Foo bar\n", None, "t.conf:1: Foo: unknown directive"),
    (
        "ServerAddress 198.51.100.1\nLocalDiscovery on\n",
        None,
        "t.conf:2: LocalDiscovery: unknown directive",
    ),
    ("\n\nBindPort\n", None, "t.conf:3: BindPort: missing value"),
    (
        "ServerAddress a.example b.example\n",
        None,
        't.conf:1: ServerAddress: unexpected text after the value: "b.example"',
    ),
    (
        "ServerAddress 198.51.100.1\n\nbindport 3545\nBindPort 3546\n",
        None,
        "t.conf:4: BindPort: given twice (first at line 3)",
    ),
    (
        "ServerAddress 198.51.100.1\nServerAddress 198.51.100.5\nserveraddress 198.51.100.1\n",
        None,
        "t.conf:3: ServerAddress: server 198.51.100.1 given twice",
    ),
    (
        "ServerAddress 198.51.100.1\n" + "#" * (MAX_LINE_LENGTH + 1),
        None,
        "t.conf:2: line too long (more than 1054 characters)",
    ),
    ("Server\u00e9 x\n", None, "t.conf:1: Server\\xe9: unknown directive"),
    # mode
    (
        "ServerAddress 198.51.100.1\nPrefix 2001::\n",
        None,
        "t.conf:2: Prefix: not valid in client mode",
    ),
    (
        "RelayType client\nServerAddress 198.51.100.1\nInterfaceMTU 1280\n",
        None,
        "t.conf:3: InterfaceMTU: not valid in client mode",
    ),
    (
        "RelayType cone\nServerAddress 198.51.100.1\n",
        None,
        "t.conf:2: ServerAddress: not valid in cone mode",
    ),
    (
        "RelayType host\nRefreshInterval 30\n",
        None,
        "t.conf:2: RefreshInterval: not valid in host mode",
    ),
    (
        "ServerBindAddress 198.51.100.1\nBindPort 3544\n",
        None,
        "t.conf:2: BindPort: not valid in server mode",
    ),
    (
        "ServerBindAddress 198.51.100.1\nRelayType cone\n",
        None,
        "t.conf:2: RelayType: not valid in server mode",
    ),
    (
        "ServerAddress 198.51.100.1\n",
        Role.SERVER,
        "t.conf:1: ServerAddress: not valid in server mode",
    ),
    (
        "RelayType cone\n",
        Role.CLIENT,
        "t.conf:1: RelayType: cone is a relay mode, not a client one",
    ),
    (
        "RelayType autoclient\n",
        Role.RELAY,
        "t.conf:1: RelayType: autoclient is a client mode, not a relay one",
    ),
    # required
    ("# nothing\n", None, "t.conf: ServerAddress: required in client mode"),
    ("Prefix 2001::\n", Role.SERVER, "t.conf: ServerBindAddress: required in server mode"),
    # values
    (
        "RelayType bogus\n",
        None,
        't.conf:1: RelayType: invalid relay type "bogus" '
        "(expected client|autoclient|relay|cone|restricted|host)",
    ),
    (
        "ServerAddress 198.51.100.300\n",
        None,
        't.conf:1: ServerAddress: invalid IPv4 address "198.51.100.300"',
    ),
    (
        "ServerAddress bad_name.example\n",
        None,
        't.conf:1: ServerAddress: invalid host name "bad_name.example"',
    ),
    ("ServerAddress -a.example\n", None, 't.conf:1: ServerAddress: invalid host name "-a.example"'),
    (
        "ServerAddress 198.51.100.1\nServerAddress2 a..b\n",
        None,
        't.conf:2: ServerAddress2: invalid host name "a..b"',
    ),
    (
        "RelayType cone\nBindPort 65536\n",
        None,
        't.conf:2: BindPort: port "65536" out of range 0..65535',
    ),
    (
        "RelayType cone\nBindPort -1\n",
        None,
        't.conf:2: BindPort: invalid port "-1" (expected an integer 0..65535)',
    ),
    (
        "RelayType cone\nBindPort 08\n",
        None,
        't.conf:2: BindPort: invalid port "08" (expected an integer 0..65535)',
    ),
    (
        "RelayType cone\nInterfaceMTU 1279\n",
        None,
        't.conf:2: InterfaceMTU: MTU "1279" out of range 1280..65535',
    ),
    (
        "RelayType cone\nInterfaceMTU 1e3\n",
        None,
        't.conf:2: InterfaceMTU: invalid MTU "1e3" (expected an integer 1280..65535)',
    ),
    (
        "RelayType cone\nPrefix 2001:0:1::\n",
        None,
        "t.conf:2: Prefix: 2001:0:1:: is not a /32 prefix (the last 96 bits must be zero)",
    ),
    (
        "RelayType cone\nPrefix ff02::\n",
        None,
        "t.conf:2: Prefix: ff02::/32 is not a unicast prefix",
    ),
    ("RelayType cone\nPrefix ::\n", None, "t.conf:2: Prefix: ::/32 is not a unicast prefix"),
    (
        "RelayType cone\nPrefix 2001::/48\n",
        None,
        "t.conf:2: Prefix: invalid prefix length /48 (a Teredo prefix is a /32)",
    ),
    (
        "RelayType cone\nPrefix 2001::%eth0\n",
        None,
        't.conf:2: Prefix: invalid IPv6 prefix "2001::%eth0"',
    ),
    (
        "RelayType cone\nPrefix 192.0.2.1\n",
        None,
        't.conf:2: Prefix: invalid IPv6 prefix "192.0.2.1"',
    ),
    (
        "RelayType cone\nBindAddress 127.1\n",
        None,
        't.conf:2: BindAddress: invalid IPv4 address "127.1" (expected a dotted quad)',
    ),
    (
        "RelayType cone\nBindAddress 224.0.0.1\n",
        None,
        "t.conf:2: BindAddress: 224.0.0.1 is not a unicast address",
    ),
    (
        "ServerBindAddress 0.0.0.0\n",
        None,
        "t.conf:1: ServerBindAddress: 0.0.0.0 cannot be a server address",
    ),
    (
        "ServerBindAddress 255.255.255.255\n",
        None,
        "t.conf:1: ServerBindAddress: 255.255.255.255 is not a unicast address",
    ),
    (
        "ServerBindAddress 198.51.100.1\nServerBindAddress2 198.51.100.1\n",
        None,
        "t.conf:2: ServerBindAddress2: must differ from ServerBindAddress "
        "(RFC 4380 section 5.3: two addresses)",
    ),
    (
        "ServerAddress 198.51.100.1\nInterfaceName sixteen-chars-xx\n",
        None,
        't.conf:2: InterfaceName: invalid interface name "sixteen-chars-xx" '
        "(1-15 characters from A-Z a-z 0-9 _ . -)",
    ),
    (
        "ServerAddress 198.51.100.1\nInterfaceName a/b\n",
        None,
        't.conf:2: InterfaceName: invalid interface name "a/b" '
        "(1-15 characters from A-Z a-z 0-9 _ . -)",
    ),
    (
        "ServerAddress 198.51.100.1\nInterfaceName ..\n",
        None,
        't.conf:2: InterfaceName: invalid interface name ".." '
        "(1-15 characters from A-Z a-z 0-9 _ . -)",
    ),
    (
        "ServerAddress 198.51.100.1\nSyslogFacility local8\n",
        None,
        't.conf:2: SyslogFacility: unknown syslog facility "local8"',
    ),
    (
        "ServerAddress 198.51.100.1\nRefreshInterval 0.5\n",
        None,
        't.conf:2: RefreshInterval: interval "0.5" out of range 1..3600 seconds',
    ),
    (
        "ServerAddress 198.51.100.1\nRefreshInterval 30s\n",
        None,
        't.conf:2: RefreshInterval: invalid interval "30s" (expected seconds, e.g. 30)',
    ),
    (
        "ServerAddress 198.51.100.1\nMetricsAddress 9544\n",
        None,
        't.conf:2: MetricsAddress: invalid address "9544" (expected ADDRESS:PORT)',
    ),
    (
        "ServerBindAddress 198.51.100.1\nMetricsAddress localhost:9544\n",
        None,
        't.conf:2: MetricsAddress: invalid address "localhost" '
        "(an IPv4 address or an IPv6 one in [brackets])",
    ),
    (
        "RelayType cone\nMetricsAddress ::1:9544\n",
        None,
        't.conf:2: MetricsAddress: invalid address "::1" '
        "(an IPv4 address or an IPv6 one in [brackets])",
    ),
    (
        "RelayType cone\nMetricsAddress 127.0.0.1:0\n",
        None,
        't.conf:2: MetricsAddress: invalid port "0" (expected 1..65535)',
    ),
    (
        "RelayType cone\nMetricsAddress 127.0.0.1:http\n",
        None,
        't.conf:2: MetricsAddress: invalid port "http" (expected 1..65535)',
    ),
]


@pytest.mark.parametrize(
    ("text", "role", "shown"),
    [
        ("ServerAddress 198.51.100.1\nMetricsAddress 127.0.0.1:9544\n", None, "127.0.0.1:9544"),
        ("RelayType host\nmetricsaddress [::1]:9544\n", None, "[::1]:9544"),
        ("ServerBindAddress 198.51.100.1\nMetricsAddress [0::0]:80\n", None, "[::]:80"),
    ],
)
def test_metrics_address(text: str, role: Role | None, shown: str) -> None:
    settings = parse_config(text, "t.conf", role)
    assert str(settings.metrics_address) == shown


def test_metrics_off_by_default() -> None:
    for text in ("ServerAddress 198.51.100.1\n", "RelayType cone\n", "ServerBindAddress 1.2.3.4\n"):
        assert parse_config(text, "t.conf").metrics_address is None


@pytest.mark.parametrize(("text", "role", "message"), ERRORS)
def test_error_message_and_line(text: str, role: Role | None, message: str) -> None:
    assert error_of(text, role) == message


def test_error_fields() -> None:
    with pytest.raises(ConfigError) as info:
        parse_config("RelayType cone\nBindPort x\n", "/etc/m.conf")
    err = info.value
    assert (err.file, err.line, err.directive) == ("/etc/m.conf", 2, "BindPort")
    assert err.message == 'invalid port "x" (expected an integer 0..65535)'
    assert isinstance(err, ValueError)


def test_first_faulty_line_is_reported() -> None:
    # Values are checked in line order whatever the directive.
    text = "RelayType cone\nInterfaceMTU 1\nBindPort 99999\n"
    assert error_of(text) == 't.conf:2: InterfaceMTU: MTU "1" out of range 1280..65535'
    text = "RelayType cone\nBindPort 99999\nInterfaceMTU 1\n"
    assert error_of(text) == 't.conf:2: BindPort: port "99999" out of range 0..65535'


def test_messages_stay_on_one_line_whatever_the_input() -> None:
    message = error_of("ServerAddress a\x1b[2Jb\u2028c\n", name="we\nird")
    assert "\n" not in message
    assert "\x1b" not in message
    assert message == 'we\\nird:1: ServerAddress: invalid host name "a\\x1b[2Jb\\u2028c"'


def test_long_values_are_cut_in_messages() -> None:
    message = error_of("ServerAddress " + "x" * 300 + "\n")
    assert len(message) < 120
    assert message.endswith('..."')


# ----------------------------------------------------------------------------- overrides


def test_overrides_replace_file_values_and_satisfy_requirements() -> None:
    text = "BindPort 3545\nInterfaceName teredo\n"
    got = parse_client(
        text,
        "c.conf",
        [
            Directive.flag("ServerAddress", "198.51.100.1", "--server"),
            Directive.flag("BindPort", "0", "--bind-port"),
            Directive.flag("Prefix", "3ffe:831f::", "--prefix"),  # flag-only for clients
        ],
    )
    assert (got.server_address, got.bind_port, got.interface_name) == ("198.51.100.1", 0, "teredo")
    assert got.prefix == IPv6Network("3ffe:831f::/32")


def test_override_errors_name_the_flag() -> None:
    with pytest.raises(ConfigError) as info:
        parse_relay("", "r.conf", [Directive.flag("BindPort", "x", "--bind-port")])
    assert (
        str(info.value)
        == 'command line: --bind-port: invalid port "x" (expected an integer 0..65535)'
    )
    with pytest.raises(ConfigError) as info:
        parse_relay("", "r.conf", [Directive.flag("ServerAddress", "h", "--server")])
    assert str(info.value) == "command line: --server: not valid in relay mode"


def test_override_relay_type_decides_the_mode_of_the_file() -> None:
    text = "RelayType client\nPrefix 3ffe:831f::\n"
    got = parse_relay(text, "r.conf", [Directive.flag("RelayType", "host", "--type")])
    assert got.relay_type is RelayType.HOST
    assert got.prefix == IPv6Network("3ffe:831f::/32")


def test_a_flag_does_not_excuse_a_directive_invalid_in_the_file() -> None:
    with pytest.raises(ConfigError) as info:
        parse_client("ServerAddress h\nPrefix 2001::\n", "c.conf",
                     [Directive.flag("Prefix", "2001::", "--prefix")])  # fmt: skip
    assert str(info.value) == "c.conf:2: Prefix: not valid in client mode"


def test_flag_for_unknown_directive_is_a_programming_error() -> None:
    with pytest.raises(KeyError):
        Directive.flag("NoSuchThing", "x", "--x")


# ----------------------------------------------------------------------------- property

_WORDS = st.sampled_from(
    [*DIRECTIVES, "relaytype", "#", "client", "cone", "host", "2001::", "0x10", "65536",
     "198.51.100.1", "0.0.0.0", "teredo", "local7", "\t", " ", "\r", "\x00", "\u00e9", "30"]
)  # fmt: skip
_LINES = st.lists(st.one_of(_WORDS, st.text(max_size=12)), max_size=4).map(" ".join)


@settings(max_examples=300, deadline=None)
@given(lines=st.lists(_LINES, max_size=12), role=st.sampled_from([None, *Role]))
def test_any_text_gives_settings_or_config_error(lines: list[str], role: Role | None) -> None:
    text = "\n".join(lines)
    try:
        got = parse_config(text, "p.conf", role)
    except ConfigError as err:
        message = str(err)
    else:
        assert isinstance(got, ClientSettings | ServerSettings | RelaySettings)
        if role is not None:
            assert got.role is role
        return
    assert "\n" not in message
    assert message.startswith("p.conf")


@settings(max_examples=200, deadline=None)
@given(text=st.text(max_size=300))
def test_arbitrary_unicode_never_raises_anything_else(text: str) -> None:
    with contextlib.suppress(ConfigError):
        parse_config(text, "u.conf")


def test_server_address_repeated_gives_more_servers_in_order() -> None:
    text = "ServerAddress 198.51.100.1\nServerAddress2 198.51.100.9\nServerAddress b.example\n"
    text += "ServerAddress 203.0.113.5\n"
    settings = parse_client(text, "t.conf")
    assert settings.server_address == "198.51.100.1"
    assert settings.server_address2 == "198.51.100.9"
    assert settings.more_servers == ("b.example", "203.0.113.5")
    # --server given (once or more) replaces the file's whole list.
    flags = [
        Directive.flag("ServerAddress", "198.51.100.7", "--server"),
        Directive.flag("ServerAddress", "198.51.100.8", "--server"),
    ]
    over = parse_client(text, "t.conf", flags)
    assert (over.server_address, over.more_servers) == ("198.51.100.7", ("198.51.100.8",))
    one = parse_client(text, "t.conf", flags[:1])
    assert (one.server_address, one.more_servers) == ("198.51.100.7", ())


@pytest.mark.parametrize(("value", "upnp"), [("yes", True), ("On", True), ("no", False)])
def test_upnp_is_a_client_boolean(value: str, upnp: bool) -> None:
    text = f"ServerAddress 198.51.100.10\nUPnP {value}\n"
    assert parse_client(text, "c.conf").upnp is upnp
    assert not parse_client("ServerAddress 198.51.100.10\n", "c.conf").upnp  # off by default


def test_upnp_bad_value_names_file_line_and_directive() -> None:
    with pytest.raises(ConfigError) as caught:
        parse_client("ServerAddress 198.51.100.10\n\nupnp maybe\n", "c.conf")
    assert str(caught.value) == 'c.conf:3: UPnP: invalid value "maybe" (expected yes|no)'


def test_upnp_is_not_a_server_directive() -> None:
    with pytest.raises(ConfigError) as caught:
        parse_server("ServerBindAddress 198.51.100.10\nUPnP yes\n", "s.conf")
    assert caught.value.line == 2
