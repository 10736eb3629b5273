"""io/privileges.py and the User directive: the drop itself runs in a forked child (as root)."""

from __future__ import annotations

import os
import pwd

import pytest

from teredo.core.config import ConfigError, Role, parse_config
from teredo.io import privileges
from teredo.io.privileges import CAP_NET_ADMIN, PrivilegeError, Target, resolve, status_sets

USER = "teredo"  # created by scripts/setup.sh


def _needs_root_and_user() -> Target:
    if os.geteuid() != 0:
        pytest.fail("this test needs root (it drops privileges in a forked child)")
    try:
        return resolve(USER)
    except PrivilegeError as err:
        pytest.fail(f"{err}: run scripts/setup.sh as root")


@pytest.mark.parametrize(
    ("text", "user"),
    [
        ("RelayType cone\n", None),
        ("RelayType cone\nUser teredo\n", "teredo"),
        ("RelayType cone\nUser 108\n", "108"),
        ("ServerAddress 198.51.100.1\nUser nobody\n", "nobody"),
    ],
)
def test_user_directive(text: str, user: str | None) -> None:
    role = Role.CLIENT if "ServerAddress" in text else Role.RELAY
    assert parse_config(text, "t.conf", role).user == user


@pytest.mark.parametrize("value", ["root", "0", "Bad", "-x", "a" * 40, "t\u00e9"])
def test_bad_user_is_a_config_error(value: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_config(f"ServerBindAddress 198.51.100.1\nUser {value}\n", "t.conf", Role.SERVER)
    assert str(err.value).startswith("t.conf:2: User: invalid user"), err.value


def test_resolve_refuses_unknown_and_root() -> None:
    with pytest.raises(PrivilegeError, match="no user"):
        resolve("no-such-user-here")
    with pytest.raises(PrivilegeError, match="root"):
        resolve(pwd.getpwuid(0).pw_name)


def _child_drop(target: Target, write_fd: int) -> None:
    """In the child: drop, then report the sets and what the process can still do."""
    report: list[str] = []
    try:
        privileges.drop(target)
        sets = status_sets()
        report += [f"{k}={sets[k]}" for k in ("Uid", "Gid", "CapEff", "CapPrm", "CapBnd")]
        report.append(f"CapAmb={sets['CapAmb']}")
        report.append(f"NoNewPrivs={sets['NoNewPrivs']}")
        try:
            os.setuid(0)
            report.append("setuid0=ok")
        except PermissionError:
            report.append("setuid0=refused")
        try:
            with open("/etc/shadow", "rb"):
                report.append("shadow=read")
        except PermissionError:
            report.append("shadow=refused")
    except BaseException as exc:  # reported to the parent
        report.append(f"error={exc}")
    os.write(write_fd, "\n".join(report).encode())


def test_drop_keeps_only_net_admin() -> None:
    target = _needs_root_and_user()
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            os.close(read_fd)
            _child_drop(target, write_fd)
        finally:
            os._exit(0)
    os.close(write_fd)
    with os.fdopen(read_fd, "rb") as f:
        text = f.read().decode()
    os.waitpid(pid, 0)
    got = dict(line.split("=", 1) for line in text.splitlines())
    assert "error" not in got, got["error"]
    want = f"{1 << CAP_NET_ADMIN:016x}"
    assert got["Uid"].split() == [str(target.uid)] * 4
    assert got["Gid"].split() == [str(target.gid)] * 4
    assert got["CapEff"] == got["CapPrm"] == got["CapBnd"] == got["CapAmb"] == want, got
    assert got["NoNewPrivs"] == "1"
    assert got["setuid0"] == "refused"
    assert got["shadow"] == "refused"


def test_not_root_drops_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "getuid", lambda: 1000)
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    assert privileges.drop(Target("x", 1000, 1000)) is False
