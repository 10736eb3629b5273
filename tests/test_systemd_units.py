"""The systemd units of systemd/: checked by `systemd-analyze verify` and `security --offline`,
installed by scripts/install-units.sh into a temporary directory (never enabled, never started).

Running them under a real systemd is tests/system/test_systemd.py (systemd-nspawn): PID 1 of
CI machines and containers is usually not systemd, so `systemctl` cannot be used here.
"""

from __future__ import annotations

import configparser
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
UNITS = ROOT / "systemd"
ROLES = ("client", "relay", "server")
# The capabilities each role needs (the units' comments say why), nothing more.
CAPABILITIES = {
    "client": {"CAP_NET_ADMIN"},
    "relay": {"CAP_NET_ADMIN", "CAP_BPF", "CAP_PERFMON"},
    "server": {"CAP_NET_RAW"},
}
HARDENING = {
    "NoNewPrivileges": "yes",
    "ProtectSystem": "strict",
    "ProtectHome": "yes",
    "PrivateTmp": "yes",
    "RestrictNamespaces": "yes",
    "RestrictSUIDSGID": "yes",
    "ProtectKernelModules": "yes",
    "ProtectControlGroups": "yes",
    "DynamicUser": "yes",
}
MAX_EXPOSURE = 3.0  # systemd-analyze security: below 3.0 is "OK" (2.x here)


def _systemd_analyze() -> str:
    tool = shutil.which("systemd-analyze")
    if tool is None:
        pytest.fail("systemd-analyze not found (apt package systemd; run scripts/setup.sh)")
    return tool


def service(role: str) -> dict[str, str]:
    """The [Service] section of a unit (each key once: the units repeat none)."""
    parser = configparser.ConfigParser(interpolation=None, strict=True)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read(UNITS / f"teredo-{role}.service", encoding="utf-8")
    return dict(parser["Service"])


def installed(tmp_path: Path) -> Path:
    """The units as scripts/install-units.sh installs them, pointing at this venv's teredo
    (verify checks that ExecStart's program exists)."""
    dest = tmp_path / "system"
    env = {**os.environ, "TEREDO": str(Path(sys.executable).parent / "teredo")}
    done = subprocess.run(
        ["bash", str(ROOT / "scripts" / "install-units.sh"), str(dest)],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return dest


@pytest.mark.parametrize("role", ROLES)
def test_unit_contract(role: str) -> None:
    s = service(role)
    assert s["Type"] == "notify"
    assert s["NotifyAccess"] == "main"
    assert s["ExecStartPre"] == (
        f"/usr/local/bin/teredo checkconf --role {role} /etc/teredo/{role}.conf"
    )
    assert s["ExecStart"] == f"/usr/local/bin/teredo {role} -c /etc/teredo/{role}.conf"
    assert s["ExecReload"] == "/bin/kill -HUP $MAINPID"
    assert s["Restart"] == "on-failure"
    assert set(s["CapabilityBoundingSet"].split()) == CAPABILITIES[role]
    assert set(s["AmbientCapabilities"].split()) == CAPABILITIES[role]
    for key, value in HARDENING.items():
        assert s.get(key) == value, f"{role}: {key}"
    assert s["SystemCallFilter"].split()[0] == "@system-service"
    families = set(s["RestrictAddressFamilies"].split())
    assert families <= {"AF_UNIX", "AF_INET", "AF_INET6", "AF_NETLINK"}
    if role != "server":
        assert s["DeviceAllow"] == "/dev/net/tun rw"


def test_install_script_installs_without_enabling(tmp_path: Path) -> None:
    dest = installed(tmp_path)
    assert sorted(p.name for p in dest.iterdir()) == [f"teredo-{r}.service" for r in ROLES]
    text = (dest / "teredo-server.service").read_text(encoding="utf-8")
    assert f"ExecStart={Path(sys.executable).parent / 'teredo'} server" in text
    assert "/usr/local/bin" not in text
    assert oct((dest / "teredo-server.service").stat().st_mode & 0o777) == "0o644"
    # Not enabled: no *.wants directory, no symbolic link anywhere.
    assert not [p for p in dest.rglob("*") if p.is_symlink() or p.name.endswith(".wants")]
    bad = subprocess.run(
        ["bash", str(ROOT / "scripts" / "install-units.sh"), str(tmp_path / "x")],
        env={**os.environ, "TEREDO": "teredo"},
        capture_output=True,
        text=True,
        check=False,
    )
    assert bad.returncode == 2
    assert "absolute path" in bad.stderr


def test_systemd_analyze_verify(tmp_path: Path) -> None:
    tool = _systemd_analyze()
    dest = installed(tmp_path)
    units = [str(dest / f"teredo-{r}.service") for r in ROLES]
    done = subprocess.run(
        [tool, "verify", *units], capture_output=True, text=True, timeout=60, check=False
    )
    # verify prints every unknown key or bad value, even when it only warns: none allowed.
    assert done.returncode == 0, done.stderr
    ours = [line for line in done.stderr.splitlines() if "teredo-" in line]
    assert ours == [], done.stderr


@pytest.mark.parametrize("role", ROLES)
def test_exposure_score(tmp_path: Path, role: str) -> None:
    tool = _systemd_analyze()
    unit = installed(tmp_path) / f"teredo-{role}.service"
    done = subprocess.run(
        [tool, "security", "--offline=yes", "--no-pager", str(unit)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    found = re.search(r"Overall exposure level for \S+: ([0-9.]+)", done.stdout)
    assert found is not None, done.stdout + done.stderr
    assert float(found.group(1)) < MAX_EXPOSURE, done.stdout


@pytest.mark.parametrize(
    ("role", "text"),
    [
        (
            "client",
            "ServerAddress 198.51.100.10\nInterfaceName teredo\nMetricsAddress [::1]:9546\n",
        ),
        ("relay", "RelayType cone\nBindPort 3545\nMetricsAddress 127.0.0.1:9545\n"),
        ("server", "ServerBindAddress 198.51.100.10\nMetricsAddress 127.0.0.1:9544\n"),
    ],
)
def test_exec_start_pre_accepts_the_documented_examples(
    tmp_path: Path, role: str, text: str
) -> None:
    conf = tmp_path / f"{role}.conf"
    conf.write_text(text, encoding="ascii")
    argv = service(role)["ExecStartPre"].split()
    assert argv[1:3] == ["checkconf", "--role"]
    done = subprocess.run(
        [sys.executable, "-m", "teredo", *argv[1:-1], str(conf)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert (done.returncode, done.stderr) == (0, "")
    conf.write_text(text + "MetricsAddress 1.2.3.4:5\n", encoding="ascii")
    done = subprocess.run(
        [sys.executable, "-m", "teredo", *argv[1:-1], str(conf)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 2, "systemd must not start a daemon whose file is wrong"
    assert "MetricsAddress: given twice" in done.stderr
