"""`teredo checkconf` through teredo.cli.main.main(): exit statuses, the one-line error, and
verdicts compared with Miredo's own miredo-checkconf on the same files."""

from __future__ import annotations

import shutil
import socket
import subprocess
from pathlib import Path

import pytest

from teredo.cli import options
from teredo.cli.main import main
from teredo.core.config import MAX_LINE_LENGTH

# Provenance: Debian miredo 1.2.6-7.1, /etc/miredo.conf, verbatim.
DEBIAN_MIREDO_CONF = (
    "# Please refer to the miredo.conf(5) man page for details.\n"
    "InterfaceName\tteredo\n\n# Pick a Teredo server:\n"
    "#ServerAddress\tteredo.ipv6.microsoft.com\nServerAddress\tteredo-debian.remlab.net\n\n"
    "# Some firewall/NAT setups require a specific UDP port number:\n#BindPort\t3545\n"
)
# Provenance: Debian miredo-server 1.2.6-7.1, /etc/miredo-server.conf, verbatim.
DEBIAN_MIREDO_SERVER_CONF = (
    "# Please refer to the miredo-server.conf(5) manpage for details.\n\n"
    "# Server primary IPv4 address.\n"
    "# Miredo will open UDP port 3544 on this IPv4 address and the next one.\n"
    "ServerBindAddress 192.0.2.221\n"
)


def check(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    status = main(["checkconf", *argv])
    out, err = capsys.readouterr()
    return status, out, err


def write(tmp_path: Path, text: str | bytes, name: str = "m.conf") -> str:
    path = tmp_path / name
    if isinstance(text, str):
        path.write_text(text, encoding="utf-8")
    else:
        path.write_bytes(text)
    return str(path)


@pytest.mark.parametrize("text", [DEBIAN_MIREDO_CONF, DEBIAN_MIREDO_SERVER_CONF])
def test_debian_files_pass_silently(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str
) -> None:
    assert check(capsys, write(tmp_path, text)) == (0, "", "")


def test_bad_file_gives_one_line_and_status_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(tmp_path, "ServerAddress 198.51.100.1\nRelayType client\nBindPort 70000\n")
    status, out, err = check(capsys, path)
    assert (status, out) == (2, "")
    assert err == f'{path}:3: BindPort: port "70000" out of range 0..65535\n'


def test_missing_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = str(tmp_path / "absent.conf")
    assert check(capsys, path) == (2, "", f"{path}: cannot read: No such file or directory\n")


def test_directory_instead_of_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert check(capsys, str(tmp_path)) == (2, "", f"{tmp_path}: cannot read: Is a directory\n")


def test_oversized_file_is_refused_without_reading_it_all(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(tmp_path, b"#" * (options.MAX_CONFIG_BYTES + 1))
    assert check(capsys, path) == (2, "", f"{path}: larger than 1048576 bytes\n")


def test_non_utf8_bytes_pass_in_comments_and_fail_in_values(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    good = write(tmp_path, b"# caf\xe9\nServerAddress 198.51.100.1\n", "good.conf")
    assert check(capsys, good) == (0, "", "")
    bad = write(tmp_path, b"ServerAddress caf\xe9.example\n", "bad.conf")
    status, _, err = check(capsys, bad)
    assert status == 2
    assert err == f'{bad}:1: ServerAddress: invalid host name "caf\\ufffd.example"\n'


@pytest.mark.parametrize(
    ("role", "text", "message"),
    [
        ("auto", "RelayType cone\nServerAddress 198.51.100.1\n",
         "2: ServerAddress: not valid in cone mode"),
        ("server", DEBIAN_MIREDO_CONF, "2: InterfaceName: not valid in server mode"),
        ("relay", DEBIAN_MIREDO_CONF, "6: ServerAddress: not valid in relay mode"),
        ("client", DEBIAN_MIREDO_SERVER_CONF, "5: ServerBindAddress: not valid in client mode"),
        ("relay", "RelayType autoclient\n",
         "1: RelayType: autoclient is a client mode, not a relay one"),
    ],
)  # fmt: skip
def test_roles(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], role: str, text: str, message: str
) -> None:
    path = write(tmp_path, text)
    assert check(capsys, "--role", role, path) == (2, "", f"{path}:{message}\n")


@pytest.mark.parametrize(
    ("role", "text"),
    [
        ("client", "ServerAddress 198.51.100.1\n"),
        ("relay", "RelayType host\nPrefix 3ffe:831f::\n"),
        ("relay", ""),
        ("server", "ServerBindAddress 198.51.100.1\nInterfaceMTU 1400\n"),
        ("auto", "RelayType restricted\nInterfaceMTU 1400\n"),
    ],
)
def test_good_files_per_role(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], role: str, text: str
) -> None:
    assert check(capsys, "--role", role, write(tmp_path, text)) == (0, "", "")


def test_resolve_accepts_localhost_and_literals(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # "localhost" comes from /etc/hosts: no DNS server is contacted.
    path = write(tmp_path, "ServerAddress localhost\nServerAddress2 127.0.0.2\n")
    assert check(capsys, "--resolve", path) == (0, "", "")


def no_dns(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Stands in for the system resolver so that no DNS server is ever asked: IPv4 literals
    resolve to themselves, names fail. Returns the list of what was asked."""
    asked: list[str] = []

    def resolve(host: str, *args: object) -> object:
        asked.append(host)
        if host[0].isdigit():
            return [(socket.AF_INET, socket.SOCK_DGRAM, 17, "", (host, 0))]
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", resolve)
    return asked


def test_resolve_failure_names_the_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    asked = no_dns(monkeypatch)
    path = write(tmp_path, "# x\nServerAddress teredo.example.net\n")
    status, out, err = check(capsys, "--resolve", path)
    assert asked == ["teredo.example.net"]
    assert (status, out) == (2, "")
    assert err == (
        f"{path}:2: ServerAddress: cannot resolve 'teredo.example.net' to IPv4: "
        "Name or service not known\n"
    )


def test_resolve_checks_every_server_of_a_repeated_server_address(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    asked = no_dns(monkeypatch)
    path = write(tmp_path, "ServerAddress 198.51.100.1\nServerAddress b.example.net\n")
    status, _out, err = check(capsys, "--resolve", path)
    assert asked == ["198.51.100.1", "b.example.net"]
    assert status == 2
    assert err.startswith(f"{path}:2: ServerAddress: cannot resolve 'b.example.net'")


def test_no_resolution_without_the_flag(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    def forbidden(*args: object) -> object:
        raise AssertionError("checkconf resolved a name without --resolve")

    monkeypatch.setattr(socket, "getaddrinfo", forbidden)
    path = write(tmp_path, "ServerAddress teredo.example.net\n")
    assert check(capsys, path) == (0, "", "")


def test_bad_role_is_a_usage_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["checkconf", "--role", "nat", write(tmp_path, "")])
    assert info.value.code == 2
    assert "invalid choice: 'nat'" in capsys.readouterr().err


# ----------------------------------------------------------------------------- vs Miredo

# Files both programs accept. IPv4 literals only: miredo-checkconf resolves ServerAddress,
# and a literal needs no DNS.
BOTH_ACCEPT = [
    "ServerAddress 198.51.100.1\n",
    "serveraddress 198.51.100.1\nSERVERADDRESS2 198.51.100.9\nBindPort 0x0dea\n",
    "ServerAddress 198.51.100.1 # comment\nInterfaceName teredo\nSyslogFacility local3\n",
    "  # indented comment\n\n\tServerAddress\t198.51.100.1\r\nBindAddress 192.168.1.2\n",
    "RelayType autoclient\nServerAddress 198.51.100.1\nBindPort 010\n",
    "RelayType cone\nPrefix 3ffe:831f::\nInterfaceMTU 1400\n",
    "RelayType relay\nPrefix 2001:0000::\nBindAddress 203.0.113.1\nBindPort 3545\n",
    "RelayType restricted\n",
]
# Files both reject (the second program's reason is not compared, only the verdict).
BOTH_REJECT = [
    "",  # client without a server
    "ServerAddress 198.51.100.1\nBindPort 1\nBindPort 2\n",  # repeated
    "ServerAddress 198.51.100.1\nFoo bar\n",  # unknown
    "ServerAddress 198.51.100.1\nPrefix 2001::\n",  # Prefix in client mode
    "ServerAddress 198.51.100.1\nInterfaceMTU 1280\n",  # MTU in client mode
    "RelayType cone\nServerAddress 198.51.100.1\n",  # server in relay mode
    "ServerAddress 198.51.100.1\nBindPort\n",  # no value
    "ServerAddress 198.51.100.1\nBindPort 65536\n",
    "ServerAddress 198.51.100.1\nBindPort -1\n",
    "RelayType cone\nInterfaceMTU 70000\n",
    "RelayType bogus\nServerAddress 198.51.100.1\n",
    "ServerAddress 198.51.100.1\nSyslogFacility local8\n",
    "ServerAddress 198.51.100.1\n#" + "x" * MAX_LINE_LENGTH + "\n",  # overly long line
]
# Files we accept and Miredo refuses: ServerAddress repeated (more servers to fail over to).
ONLY_OURS_ACCEPTS = ["ServerAddress 198.51.100.1\nServerAddress 198.51.100.2\n"]
# Files Miredo accepts and we refuse on purpose (docs/configuration.md, "Differences").
ONLY_MIREDO_ACCEPTS = [
    "RelayType cone\nBindAddress 127.1\n",  # inet_aton short form
    "RelayType cone\nInterfaceMTU 1000\n",  # below the IPv6 minimum MTU
    "RelayType cone\nPrefix 2001:0:1::\n",  # bits after the /32 silently dropped
    "RelayType cone\nPrefix ff02::\n",  # multicast prefix
    "ServerAddress 198.51.100.1 198.51.100.2\n",  # second word silently ignored
    "RelayType cone\nBindPort -0\n",  # strtoul negates, -0 == 0
    "RelayType cone\nInterfaceMTU 0\n",
]


def miredo_checkconf_accepts(tmp_path: Path, text: str) -> bool:
    program = shutil.which("miredo-checkconf") or "/usr/sbin/miredo-checkconf"
    if not Path(program).exists():
        pytest.fail("miredo-checkconf is missing: install the Debian package miredo "
                    "(bash scripts/setup.sh does)")  # fmt: skip
    path = write(tmp_path, text, "miredo.conf")
    done = subprocess.run([program, path], capture_output=True, timeout=10, check=False)
    return done.returncode == 0


def ours_accepts(tmp_path: Path, text: str, capsys: pytest.CaptureFixture[str]) -> bool:
    status, _, err = check(capsys, "--role", "auto", write(tmp_path, text, "ours.conf"))
    assert status in (0, 2)
    assert (status == 0) == (err == "")
    return status == 0


@pytest.mark.parametrize("text", BOTH_ACCEPT)
def test_same_verdict_as_miredo_good(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str
) -> None:
    assert miredo_checkconf_accepts(tmp_path, text)
    assert ours_accepts(tmp_path, text, capsys)


@pytest.mark.parametrize("text", BOTH_REJECT)
def test_same_verdict_as_miredo_bad(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str
) -> None:
    assert not miredo_checkconf_accepts(tmp_path, text)
    assert not ours_accepts(tmp_path, text, capsys)


@pytest.mark.parametrize("text", ONLY_MIREDO_ACCEPTS)
def test_documented_differences_from_miredo(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str
) -> None:
    assert miredo_checkconf_accepts(tmp_path, text)
    assert not ours_accepts(tmp_path, text, capsys)


@pytest.mark.parametrize("text", ONLY_OURS_ACCEPTS)
def test_our_extensions_miredo_refuses(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str
) -> None:
    assert not miredo_checkconf_accepts(tmp_path, text)
    assert ours_accepts(tmp_path, text, capsys)
