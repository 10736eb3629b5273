"""cli/options.py: the daemon option contract (flags over Miredo's file), logging set-up and
the pid file."""

from __future__ import annotations

import argparse
import logging
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from ipaddress import IPv4Address, IPv6Network
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from teredo.cli.options import (
    EXIT_CONFIG,
    PidFile,
    PidFileError,
    add_daemon_arguments,
    configure_logging,
    flags_for,
    load_settings,
    report_config_error,
)
from teredo.core.config import (
    DIRECTIVES,
    ClientSettings,
    ConfigError,
    RelaySettings,
    RelayType,
    Role,
    ServerSettings,
)


def parse(role: Role, *argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=f"teredo {role.value}")
    add_daemon_arguments(parser, role)
    return parser.parse_args(argv)


def conf(tmp_path: Path, text: str) -> str:
    path = tmp_path / "miredo.conf"
    path.write_text(text, encoding="utf-8")
    return str(path)


def load_error(role: Role, *argv: str) -> str:
    with pytest.raises(ConfigError) as info:
        load_settings(parse(role, *argv), role)
    return str(info.value)


# ----------------------------------------------------------------------------- settings


def test_client_file_unchanged_then_flags_override(tmp_path: Path) -> None:
    path = conf(tmp_path, "InterfaceName teredo\nServerAddress 198.51.100.1\nBindPort 3545\n")
    assert load_settings(parse(Role.CLIENT, "-c", path), Role.CLIENT) == ClientSettings(
        server_address="198.51.100.1", interface_name="teredo", bind_port=3545
    )
    args = parse(
        Role.CLIENT,
        "--conf", path,
        "--server", "203.0.113.1",
        "--server2", "203.0.113.9",
        "--interface", "tun-lab",
        "--bind-address", "192.168.0.2",
        "--bind-port", "0",
        "--refresh", "5",
        "--prefix", "3ffe:831f::",
    )  # fmt: skip
    assert load_settings(args, Role.CLIENT) == ClientSettings(
        server_address="203.0.113.1",
        server_address2="203.0.113.9",
        interface_name="tun-lab",
        bind_address=IPv4Address("192.168.0.2"),
        bind_port=0,
        refresh_interval=5.0,
        prefix=IPv6Network("3ffe:831f::/32"),
    )


def test_client_without_file_needs_server_flag() -> None:
    got = load_settings(parse(Role.CLIENT, "--server", "198.51.100.1"), Role.CLIENT)
    assert got == ClientSettings(server_address="198.51.100.1")
    message = load_error(Role.CLIENT)
    assert message == "command line: --server: required in client mode (or -c FILE)"


def test_client_file_without_server_names_the_file(tmp_path: Path) -> None:
    path = conf(tmp_path, "BindPort 1\n")
    assert load_error(Role.CLIENT, "-c", path) == f"{path}: ServerAddress: required in client mode"


def test_server_flags(tmp_path: Path) -> None:
    path = conf(tmp_path, "ServerBindAddress 192.0.2.221\nInterfaceMTU 1400\n")
    args = parse(Role.SERVER, "--config", path, "--bind2", "192.0.2.1", "--prefix", "2001::")
    assert load_settings(args, Role.SERVER) == ServerSettings(
        server_bind_address=IPv4Address("192.0.2.221"),
        server_bind_address2=IPv4Address("192.0.2.1"),
        mtu=1400,
    )
    args = parse(Role.SERVER, "--bind", "198.51.100.10", "--mtu", "1500")
    assert load_settings(args, Role.SERVER) == ServerSettings(
        server_bind_address=IPv4Address("198.51.100.10"),
        server_bind_address2=IPv4Address("198.51.100.11"),
        mtu=1500,
    )
    assert load_error(Role.SERVER) == "command line: --bind: required in server mode (or -c FILE)"


def test_relay_flags(tmp_path: Path) -> None:
    path = conf(tmp_path, "RelayType cone\nInterfaceMTU 1400\nBindPort 3545\n")
    args = parse(
        Role.RELAY,
        "-c", path,
        "--type", "restricted",
        "--interface", "rly0",
        "--bind-address", "203.0.113.5",
        "--bind-port", "3544",
        "--prefix", "3ffe:831f::",
        "--mtu", "1280",
    )  # fmt: skip
    assert load_settings(args, Role.RELAY) == RelaySettings(
        relay_type=RelayType.RESTRICTED,
        prefix=IPv6Network("3ffe:831f::/32"),
        mtu=1280,
        interface_name="rly0",
        bind_address=IPv4Address("203.0.113.5"),
        bind_port=3544,
    )
    host = load_settings(parse(Role.RELAY, "--host-specific"), Role.RELAY)
    assert host.relay_type is RelayType.HOST
    assert host.host_specific
    assert load_settings(parse(Role.RELAY, "--type", "host"), Role.RELAY) == host
    assert load_settings(parse(Role.RELAY), Role.RELAY) == RelaySettings()


def test_relay_type_flag_overrides_a_client_file(tmp_path: Path) -> None:
    path = conf(tmp_path, "RelayType client\nInterfaceName teredo\n")
    got = load_settings(parse(Role.RELAY, "-c", path, "--type", "cone"), Role.RELAY)
    assert (got.relay_type, got.interface_name) == (RelayType.CONE, "teredo")
    message = load_error(Role.RELAY, "-c", path)
    assert message == f"{path}:1: RelayType: client is a client mode, not a relay one"


def test_type_and_host_specific_exclude_each_other(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        parse(Role.RELAY, "--type", "cone", "--host-specific")
    assert info.value.code == 2
    assert "not allowed with argument" in capsys.readouterr().err


def test_flag_errors_name_the_flag() -> None:
    assert load_error(Role.RELAY, "--bind-port", "port") == (
        'command line: --bind-port: invalid port "port" (expected an integer 0..65535)'
    )
    assert load_error(Role.SERVER, "--bind", "198.51.100.1", "--mtu", "9") == (
        'command line: --mtu: MTU "9" out of range 1280..65535'
    )
    assert load_error(Role.CLIENT, "--server", "h", "--refresh", "0") == (
        'command line: --refresh: interval "0" out of range 1..3600 seconds'
    )


def test_file_errors_win_over_flags_and_keep_their_line(tmp_path: Path) -> None:
    path = conf(tmp_path, "ServerAddress 198.51.100.1\n\nBindPort x\n")
    message = load_error(Role.CLIENT, "-c", path, "--bind-port", "1")
    assert message == f'{path}:3: BindPort: invalid port "x" (expected an integer 0..65535)'


def test_unreadable_file(tmp_path: Path) -> None:
    path = str(tmp_path / "none.conf")
    assert load_error(Role.RELAY, "-c", path) == f"{path}: cannot read: No such file or directory"


def test_common_flags_are_accepted(tmp_path: Path) -> None:
    args = parse(Role.RELAY, "-f", "--foreground", "-v", "-v", "--pidfile", "/run/x.pid")
    assert (args.foreground, args.verbose, args.pidfile, args.syslog) == (
        True, 2, "/run/x.pid", None
    )  # fmt: skip
    assert parse(Role.RELAY, "--syslog").syslog == ""
    assert parse(Role.RELAY, "--syslog", "local2").syslog == "local2"


def test_syslog_flag_overrides_the_facility_directive(tmp_path: Path) -> None:
    path = conf(tmp_path, "RelayType cone\nSyslogFacility local1\n")
    plain = load_settings(parse(Role.RELAY, "-c", path, "--syslog"), Role.RELAY)
    assert plain.syslog_facility == "local1"
    chosen = load_settings(parse(Role.RELAY, "-c", path, "--syslog", "USER"), Role.RELAY)
    assert chosen.syslog_facility == "user"
    assert load_error(Role.RELAY, "--syslog", "nope") == (
        'command line: --syslog: unknown syslog facility "nope"'
    )


def test_every_directive_of_a_role_has_a_flag() -> None:
    for role in Role:
        wanted = {name for name, roles in DIRECTIVES.items() if role in roles}
        if role is Role.CLIENT:
            wanted.discard("RelayType")  # client vs autoclient: same machine here
        assert wanted <= set(flags_for(role).values()), role


def test_docs_list_every_directive_and_flag() -> None:
    text = (Path(__file__).parents[1] / "docs" / "configuration.md").read_text(encoding="utf-8")
    for name in DIRECTIVES:
        assert f"| `{name}` |" in text, name
    for role in Role:
        for flag in flags_for(role):
            assert f"`{flag}" in text, flag


def test_report_config_error(capsys: pytest.CaptureFixture[str]) -> None:
    status = report_config_error(ConfigError("f.conf", 4, "BindPort", "bad"))
    assert status == EXIT_CONFIG == 2
    assert capsys.readouterr().err == "f.conf:4: BindPort: bad\n"


_FLAG_VALUES = st.one_of(
    st.sampled_from(["0", "65535", "1280", "2001::", "198.51.100.1", "host", "cone", "x"]),
    st.text(max_size=20),
)


@settings(max_examples=150, deadline=None)
@given(
    role=st.sampled_from(list(Role)),
    picks=st.lists(st.tuples(st.integers(0, 20), _FLAG_VALUES), max_size=5),
)
def test_any_flag_values_give_settings_or_config_error(
    role: Role, picks: list[tuple[int, str]]
) -> None:
    flags = sorted(f for f in flags_for(role) if f not in ("--type", "--host-specific"))
    argv: list[str] = []
    for index, value in picks:
        argv.append(f"{flags[index % len(flags)]}={value}")
    try:
        load_settings(parse(role, *argv), role)
    except ConfigError as err:
        assert str(err).startswith("command line: --")  # noqa: PT017
        assert "\n" not in str(err)  # noqa: PT017


# ----------------------------------------------------------------------------- logging


@pytest.fixture
def restore_teredo_logger() -> Iterator[None]:
    logger = logging.getLogger("teredo")
    saved = (list(logger.handlers), logger.level, logger.propagate)
    yield
    for handler in list(logger.handlers):
        if handler not in saved[0]:
            logger.removeHandler(handler)
            handler.close()
    logger.setLevel(saved[1])
    logger.propagate = saved[2]


@pytest.mark.usefixtures("restore_teredo_logger")
def test_logging_to_stderr_and_verbosity(capsys: pytest.CaptureFixture[str]) -> None:
    logger = configure_logging(parse(Role.RELAY))
    logging.getLogger("teredo.relay").debug("hidden")
    logging.getLogger("teredo.relay").info("shown %d", 1)
    err = capsys.readouterr().err
    assert "shown 1" in err
    assert "hidden" not in err
    configure_logging(parse(Role.RELAY, "-v"))
    logging.getLogger("teredo.relay").debug("now shown")
    assert "now shown" in capsys.readouterr().err
    assert len(logger.handlers) == 1  # the second call replaced the first handler


@pytest.mark.usefixtures("restore_teredo_logger")
def test_logging_to_syslog_uses_the_facility(tmp_path: Path) -> None:
    address = str(tmp_path / "log")
    sink = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        sink.bind(address)
        sink.settimeout(5)
        path = conf(tmp_path, "RelayType cone\nSyslogFacility local3\n")
        args = parse(Role.RELAY, "-c", path, "--syslog")
        args.verb = "relay"
        settings = load_settings(args, Role.RELAY)
        configure_logging(args, settings, syslog_address=address)
        logging.getLogger("teredo.relay").warning("relay up")
        datagram = sink.recv(4096).decode()
    finally:
        sink.close()
    # PRI = facility * 8 + severity: local3 = 19, warning = 4 (RFC 5424 section 6.2.1).
    assert datagram.startswith(f"<{19 * 8 + 4}>teredo-relay[{os.getpid()}]: relay up")


@pytest.mark.usefixtures("restore_teredo_logger")
def test_logging_falls_back_to_stderr_without_syslog(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    configure_logging(parse(Role.RELAY, "--syslog"), syslog_address=str(tmp_path / "none"))
    logging.getLogger("teredo").info("still logged")
    err = capsys.readouterr().err
    assert "syslog unavailable" in err
    assert "still logged" in err


# ----------------------------------------------------------------------------- pid file


def test_pidfile_written_and_removed(tmp_path: Path) -> None:
    path = tmp_path / "teredo.pid"
    with PidFile(path):
        assert path.read_text() == f"{os.getpid()}\n"
    assert not path.exists()


def test_pidfile_removed_on_error(tmp_path: Path) -> None:
    path = tmp_path / "teredo.pid"
    with pytest.raises(RuntimeError, match="boom"), PidFile(str(path)):
        raise RuntimeError("boom")
    assert not path.exists()


def test_pidfile_none_is_a_no_op(tmp_path: Path) -> None:
    with PidFile(None) as pidfile:
        assert pidfile.path is None
    assert list(tmp_path.iterdir()) == []


def test_pidfile_in_missing_directory(tmp_path: Path) -> None:
    path = tmp_path / "no" / "x.pid"
    with pytest.raises(PidFileError, match=r"x\.pid: No such file or directory"), PidFile(path):
        pass


def test_pidfile_held_by_another_process(tmp_path: Path) -> None:
    path = tmp_path / "held.pid"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys; from teredo.cli.options import PidFile\n"
            f"with PidFile({str(path)!r}):\n"
            "    print('held', flush=True); sys.stdin.read()\n",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline() == "held\n"
        with pytest.raises(PidFileError, match=f"in use by process {holder.pid}"), PidFile(path):
            pass
        assert path.read_text() == f"{holder.pid}\n"  # left alone
    finally:
        assert holder.stdin is not None
        holder.stdin.close()
        holder.wait(timeout=10)
    assert holder.returncode == 0
    assert not path.exists()


def test_metrics_flag_overrides_the_file_for_every_role(tmp_path: Path) -> None:
    from teredo.cli.options import metrics_endpoint

    files = {
        Role.CLIENT: "ServerAddress 198.51.100.1\nMetricsAddress 127.0.0.1:9544\n",
        Role.RELAY: "RelayType cone\nMetricsAddress 127.0.0.1:9544\n",
        Role.SERVER: "ServerBindAddress 198.51.100.1\nMetricsAddress 127.0.0.1:9544\n",
    }
    for role, text in files.items():
        path = conf(tmp_path, text)
        assert str(load_settings(parse(role, "-c", path), role).metrics_address) == (
            "127.0.0.1:9544"
        )
        args = parse(role, "-c", path, "--metrics", "[::1]:9100", "--no-control")
        settings = load_settings(args, role)
        endpoint = metrics_endpoint(args, settings, role.value, "tr0")
        assert endpoint is not None
        assert str(endpoint.address) == "[::1]:9100"
        # Named as on the status socket, even when that socket is off.
        assert endpoint.identity.name == f"teredo/{role.value}/tr0"
        assert endpoint.identity.role == role.value
    assert load_error(Role.RELAY, "--metrics", "9544") == (
        'command line: --metrics: invalid address "9544" (expected ADDRESS:PORT)'
    )
    args = parse(Role.RELAY)
    assert metrics_endpoint(args, load_settings(args, Role.RELAY), "relay") is None
