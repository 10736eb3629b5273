"""`teredo client`: flags, configuration errors (one line, exit 2) and the options it builds.

The daemon itself (TUN, netlink, sockets) runs in tests/system/test_client_interop.py.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from pathlib import Path

import pytest

from teredo.cli.client import options_from
from teredo.cli.main import build_parser, main
from teredo.cli.options import EXIT_CONFIG, load_settings
from teredo.core.config import ConfigError, Role


def parse(*argv: str) -> argparse.Namespace:
    return build_parser().parse_args(["client", *argv])


def test_help_lists_the_issue_flags() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "teredo", "client", "--help"],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    ).stdout
    for flag in (
        "--server",
        "--server2",
        "--interface",
        "--bind-address",
        "--bind-port",
        "--pidfile",
        "--refresh",
        "--syslog",
        "--hook",
        "-c",
    ):
        assert flag in out, flag


def test_defaults_from_flags_only() -> None:
    args = parse("--server", "198.51.100.10")
    options = options_from(load_settings(args, Role.CLIENT), args)
    assert options.server == "198.51.100.10"
    assert options.server2 is None
    assert options.interface == "teredo"  # issue 3: the client's default interface name
    assert (options.bind_address, options.bind_port) == ("0.0.0.0", 0)
    assert options.prefix == b"\x20\x01\x00\x00"
    assert options.refresh_interval == 30.0
    assert options.local_discovery
    assert options.default_route
    assert options.hook is None
    assert not options.refuse_symmetric  # RFC 6081 Symmetric NAT Support by default
    assert not options.upnp  # no SSDP on the local network unless asked


def test_upnp_from_file_and_flag(tmp_path: Path) -> None:
    conf = tmp_path / "miredo.conf"
    conf.write_text("ServerAddress 198.51.100.10\nUPnP yes\n")
    args = parse("-c", str(conf))
    assert options_from(load_settings(args, Role.CLIENT), args).upnp
    args = parse("-c", str(conf), "--upnp", "no")  # the flag wins
    assert not options_from(load_settings(args, Role.CLIENT), args).upnp
    args = parse("--server", "198.51.100.10", "--upnp")  # bare: yes
    assert options_from(load_settings(args, Role.CLIENT), args).upnp
    with pytest.raises(ConfigError) as caught:
        load_settings(parse("--server", "198.51.100.10", "--upnp", "perhaps"), Role.CLIENT)
    assert str(caught.value) == 'command line: --upnp: invalid value "perhaps" (expected yes|no)'


def test_symmetric_nat_policy_from_file_and_flag(tmp_path: Path) -> None:
    conf = tmp_path / "miredo.conf"
    conf.write_text("ServerAddress 198.51.100.10\nSymmetricNat REFUSE\n")
    args = parse("-c", str(conf))
    assert options_from(load_settings(args, Role.CLIENT), args).refuse_symmetric
    args = parse("-c", str(conf), "--symmetric-nat", "accept")  # the flag wins
    assert not options_from(load_settings(args, Role.CLIENT), args).refuse_symmetric
    conf.write_text("ServerAddress 198.51.100.10\nSymmetricNat maybe\n")
    with pytest.raises(ConfigError) as caught:
        load_settings(parse("-c", str(conf)), Role.CLIENT)
    assert str(caught.value) == (
        f'{conf}:2: SymmetricNat: invalid policy "maybe" (expected accept|refuse)'
    )


def test_file_then_flags(tmp_path: Path) -> None:
    conf = tmp_path / "miredo.conf"
    conf.write_text(
        "RelayType client\nServerAddress teredo.example\nInterfaceName tun-a\nBindPort 3545\n"
    )
    hook = tmp_path / "hook"
    args = parse(
        "-c",
        str(conf),
        "--interface",
        "tun-b",
        "--refresh",
        "5",
        "--server2",
        "198.51.100.11",
        "--hook",
        str(hook),
        "--no-local-discovery",
        "--no-default-route",
    )
    options = options_from(load_settings(args, Role.CLIENT), args)
    assert options.server == "teredo.example"
    assert options.server2 == "198.51.100.11"
    assert options.interface == "tun-b"
    assert options.bind_port == 3545
    assert options.refresh_interval == 5.0
    assert options.hook == str(hook)
    assert not options.local_discovery
    assert not options.default_route


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        ([], "command line: --server: required in client mode (or -c FILE)"),
        (["--server", "198.51.100.10", "--bind-port", "70000"], "--bind-port"),
        (["--server", "bad_name!"], "--server: invalid host name"),
        (["--server", "198.51.100.10", "--hook", "/nonexistent/hook"], "--hook"),
    ],
)
def test_bad_configuration_is_one_line_and_status_2(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["client", *argv]) == EXIT_CONFIG
    err = capsys.readouterr().err
    assert message in err
    assert err.count("\n") == 1, err


def test_bad_file_names_file_and_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    conf = tmp_path / "miredo.conf"
    conf.write_text("ServerAddress 198.51.100.10\nBindPort many\n")
    assert main(["client", "-c", str(conf)]) == EXIT_CONFIG
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"{conf}:2: BindPort: ")


def _modules_after(code: str) -> set[str]:
    out = subprocess.run(
        [sys.executable, "-c", code + "\nimport sys; print(' '.join(sorted(sys.modules)))"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    return set(out.stdout.split())


def test_only_the_verb_being_run_is_imported() -> None:
    # Start-up time is part of the time to qualify (docs/benchmarks.md, "Client").
    client = _modules_after("from teredo.cli.main import build_parser; build_parser(only='client')")
    assert "teredo.cli.client" in client
    assert not {"teredo.cli.lab", "teredo.cli.server", "teredo.cli.relay"} & client
    assert "pyroute2" not in client, "pyroute2 is loaded by the running daemon, not the parser"
    bare = _modules_after("from teredo.cli.main import build_parser; build_parser(only='')")
    assert not {m for m in bare if m.startswith("teredo.cli.") and m != "teredo.cli.main"}


def test_help_without_a_verb_still_lists_every_verb() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "teredo", "--help"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    for verb in ("decode", "checkconf", "lab", "server", "client", "relay"):
        assert re.search(rf"^    {verb}\s", out, re.MULTILINE), out
    # VERB_HELP must say what each module registers: the same help as with every module loaded.
    assert build_parser(only="").format_help() == build_parser().format_help()
