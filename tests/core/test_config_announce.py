"""core/config.py, anycast directives (issue 11): AnnounceTable, AnnounceDrain (relay, server)
and AnycastIPv4 (relay); their values, defaults, flags and every error with its text."""

from __future__ import annotations

import argparse
import subprocess
import sys
from ipaddress import IPv4Address

import pytest

from teredo.cli.options import add_daemon_arguments, flags_for, load_settings
from teredo.core.config import (
    DEFAULT_ANNOUNCE_DRAIN,
    ConfigError,
    Role,
    parse_config,
    parse_relay,
    parse_server,
)


def test_defaults_announce_nothing() -> None:
    relay = parse_relay("RelayType cone\n", "r.conf")
    assert (relay.announce_table, relay.anycast_ipv4) == (None, None)
    assert relay.announce_drain == DEFAULT_ANNOUNCE_DRAIN
    server = parse_server("ServerBindAddress 198.51.100.10\n", "s.conf")
    assert server.announce_table is None


def test_relay_directives() -> None:
    text = "RelayType cone\nAnnounceTable 100\nAnnounceDrain 0.5\nAnycastIPv4 198.51.100.40\n"
    got = parse_relay(text, "r.conf")
    assert got.announce_table == 100
    assert got.announce_drain == 0.5
    assert got.anycast_ipv4 == IPv4Address("198.51.100.40")


def test_server_directives_and_large_table() -> None:
    text = "ServerBindAddress 198.51.100.10\nannouncetable 0x10000\nAnnounceDrain 0\n"
    got = parse_server(text, "s.conf")
    assert (got.announce_table, got.announce_drain) == (65536, 0.0)


def test_server_may_announce_in_the_main_table() -> None:
    # Its /32 are local addresses (the local table wins): FRR 8.4's `redistribute kernel`
    # reads the main table only, and withdraws after a kill -9 there (docs/scale.md, FRR).
    got = parse_server("ServerBindAddress 198.51.100.10\nAnnounceTable 254\n", "s.conf")
    assert got.announce_table == 254


def test_relay_may_announce_in_the_main_table() -> None:
    # For FRR: the forwarding route is then made invisible to zebra and the announcement goes
    # below it (io/announce.py; the relay's test in tests/io/test_announce.py).
    got = parse_relay("RelayType cone\nAnnounceTable 254\n", "r.conf")
    assert got.announce_table == 254


@pytest.mark.parametrize(
    ("text", "role", "message"),
    [
        (
            "RelayType cone\nAnnounceTable 255\n",
            None,
            "t.conf:2: AnnounceTable: table 255 is the kernel's own (default or local): "
            "pick another",
        ),
        (
            "RelayType cone\nAnnounceTable 0\n",
            None,
            't.conf:2: AnnounceTable: routing table "0" out of range 1..4294967295',
        ),
        (
            "RelayType cone\nAnnounceTable main\n",
            None,
            "t.conf:2: AnnounceTable: invalid routing "
            'table "main" (expected an integer 1..4294967295)',
        ),
        (
            "RelayType cone\nAnnounceDrain 601\n",
            None,
            't.conf:2: AnnounceDrain: drain time "601" out of range 0..600 seconds',
        ),
        (
            "RelayType cone\nAnnounceDrain -1\n",
            None,
            't.conf:2: AnnounceDrain: invalid drain time "-1" (expected seconds, e.g. 2)',
        ),
        (
            "RelayType cone\nAnycastIPv4 0.0.0.0\n",
            None,
            "t.conf:2: AnycastIPv4: 0.0.0.0 cannot be announced",
        ),
        (
            "ServerBindAddress 198.51.100.10\nAnycastIPv4 198.51.100.40\n",
            None,
            "t.conf:2: AnycastIPv4: not valid in server mode",
        ),
        (
            "ServerAddress 198.51.100.10\nAnnounceTable 100\n",
            None,
            "t.conf:2: AnnounceTable: not valid in client mode",
        ),
    ],
)
def test_errors(text: str, role: Role | None, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(text, "t.conf", role)
    assert str(info.value) == message


def _args(role: Role, argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_daemon_arguments(parser, role)
    return parser.parse_args(argv)


def test_flags_override_and_are_named_in_errors() -> None:
    assert flags_for(Role.RELAY)["--announce-table"] == "AnnounceTable"
    assert flags_for(Role.RELAY)["--anycast-ipv4"] == "AnycastIPv4"
    assert flags_for(Role.SERVER)["--announce-drain"] == "AnnounceDrain"
    assert "--anycast-ipv4" not in flags_for(Role.SERVER)
    relay = load_settings(
        _args(Role.RELAY, ["--announce-table", "100", "--anycast-ipv4", "198.51.100.40"]),
        Role.RELAY,
    )
    assert (relay.announce_table, relay.anycast_ipv4) == (100, IPv4Address("198.51.100.40"))
    args = _args(Role.SERVER, ["--bind", "198.51.100.10", "--announce-table", "255"])
    with pytest.raises(ConfigError) as info:
        load_settings(args, Role.SERVER)
    assert str(info.value).startswith("command line: --announce-table: table 255 is the kernel")


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--host-specific", "--announce-table", "100"], "a host-specific relay announces nothing"),
        (["--health-server", "198.51.100.10"], "--health-server: needs --announce-table"),
        (["--announce-table", "100", "--health-interval", "0"], "--health-interval: must be"),
    ],
)
def test_relay_command_line_errors(argv: list[str], message: str) -> None:
    # A process of its own: the verb configures the "teredo" logger.
    proc = subprocess.run(
        [sys.executable, "-m", "teredo", "relay", *argv],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 2
    assert message in proc.stderr
