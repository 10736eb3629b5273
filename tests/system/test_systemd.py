"""The units of systemd/ under a real systemd: a throw-away container (systemd-nspawn
--volatile=yes: the host's /usr read-only, everything else a tmpfs; --private-network: its own
network namespace with only lo) boots systemd as its PID 1 into a test target that starts
teredo-server, teredo-client and teredo-relay.service exactly as installed by
scripts/install-units.sh, reloads, scrapes, stops, writes a report and powers off.

PID 1 of the machine running the suite is usually not systemd (CI containers), so `systemctl`
cannot run there; nspawn needs none. Inside, the program path of the units is
/opt/teredo/bin/teredo (TEREDO= of install-units.sh): a launcher of this checkout's sources
with the host's /usr/bin/python3 (same minor version as the venv), since the checkout may live
under /root, which the units' ProtectHome= hides.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

pytestmark = pytest.mark.system

ROOT = Path(__file__).resolve().parents[2]
BOOT_TIMEOUT = 240.0  # boot, two starts, a reload, two stops, power off; generous under load
PRIMARY = "198.51.100.10"

_LAUNCHER = """#!/usr/bin/python3
import sys
sys.path[:0] = ["/opt/teredo/src", "/opt/teredo/site"]
from teredo.cli.main import main
sys.exit(main())
"""

_NET_UNIT = f"""[Unit]
Description=test: the server's two addresses on lo
Before=teredo-server.service teredo-client.service
[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/usr/sbin/ip link set lo up
ExecStart=/usr/sbin/ip addr add {PRIMARY}/32 dev lo
ExecStart=/usr/sbin/ip addr add 198.51.100.11/32 dev lo
"""

_CHECK_UNIT = """[Unit]
Description=test: drive the teredo units and report
Requires=teredo-check-net.service
After=teredo-check-net.service
[Service]
Type=oneshot
ExecStart=/usr/bin/bash /opt/teredo/check.sh
ExecStopPost=/usr/bin/systemctl poweroff --no-block
"""

_TARGET = """[Unit]
Description=test: the teredo units under systemd
Wants=teredo-check.service
After=teredo-check.service
"""

CHECK_SCRIPT = Path(__file__).with_name("systemd_check.sh")


def _prerequisites() -> str:
    if os.geteuid() != 0:
        pytest.fail("needs root for systemd-nspawn (run as root)", pytrace=False)
    nspawn = shutil.which("systemd-nspawn")
    if nspawn is None:
        pytest.fail(
            "systemd-nspawn not found (apt package systemd-container; scripts/setup.sh)",
            pytrace=False,
        )
    host_python = Path("/usr/bin/python3")
    if not host_python.exists():
        pytest.fail("/usr/bin/python3 not found (the container runs the host's)", pytrace=False)
    version = subprocess.run(
        [str(host_python), "-c", "import sys; print(sys.version_info[:2])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert version == str(sys.version_info[:2]), (
        f"/usr/bin/python3 is {version}, the venv {sys.version_info[:2]}: the container "
        "cannot use the venv's packages"
    )
    return nspawn


def _read(path: Path) -> str:
    return path.read_text(encoding="utf-8") if path.exists() else "(none)"


def _interesting(console: str) -> str:
    """The console lines about our units and failures (a boot prints hundreds)."""
    words = ("teredo", "fail", "Fail", "FAIL", "error", "Timed out")
    return "\n".join(line for line in console.splitlines() if any(w in line for w in words))


def _write(path: Path, text: str, mode: int = 0o644) -> Path:
    path.write_text(text, encoding="utf-8")
    path.chmod(mode)
    return path


def test_units_under_systemd(tmp_path: Path) -> None:
    nspawn = _prerequisites()
    tmp_path.chmod(0o755)  # the units' dynamic users must read what is bound from here
    opt = tmp_path / "opt"
    (opt / "bin").mkdir(parents=True)
    _write(opt / "bin" / "teredo", _LAUNCHER, 0o755)
    _write(opt / "check.sh", CHECK_SCRIPT.read_text(encoding="utf-8"))
    for path in (opt, opt / "bin"):
        path.chmod(0o755)
    etc = tmp_path / "etc-teredo"
    etc.mkdir(mode=0o755)
    _write(etc / "server.conf", f"ServerBindAddress {PRIMARY}\nMetricsAddress 127.0.0.1:9544\n")
    _write(etc / "client.conf", f"ServerAddress {PRIMARY}\nMetricsAddress 127.0.0.1:9546\n")
    relay = "RelayType cone\nInterfaceName teredo-relay\nBindPort 3545\n"
    _write(etc / "relay.conf", relay + "MetricsAddress 127.0.0.1:9545\n")
    units = tmp_path / "units"
    done = subprocess.run(
        ["bash", str(ROOT / "scripts" / "install-units.sh"), str(units)],
        env={**os.environ, "TEREDO": "/opt/teredo/bin/teredo"},
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    _write(units / "teredo-check-net.service", _NET_UNIT)
    _write(units / "teredo-check.service", _CHECK_UNIT)
    _write(units / "teredo-check.target", _TARGET)
    results = tmp_path / "results"
    results.mkdir()

    binds = [
        f"--bind-ro={ROOT / 'src'}:/opt/teredo/src",
        f"--bind-ro={sysconfig.get_paths()['purelib']}:/opt/teredo/site",
        f"--bind-ro={opt / 'bin'}:/opt/teredo/bin",
        f"--bind-ro={opt / 'check.sh'}:/opt/teredo/check.sh",
        f"--bind-ro={etc}:/etc/teredo",
        f"--bind={results}:/results",
        # The units want network-online.target; in a container without a network manager the
        # wait would last its 2 minutes: masked (a unit file that is /dev/null).
        "--bind-ro=/dev/null:/etc/systemd/system/systemd-networkd-wait-online.service",
        *(f"--bind-ro={unit}:/etc/systemd/system/{unit.name}" for unit in units.iterdir()),
    ]
    machine = f"tdt{os.getpid() % 10000}sd"
    argv = [
        nspawn,
        "--quiet",
        "--directory=/",
        "--volatile=yes",
        "--private-network",
        "--capability=CAP_BPF,CAP_PERFMON",  # not in nspawn's default set; the relay's unit asks
        "--register=no",
        "--keep-unit",
        f"--machine={machine}",
        *binds,
        "--boot",
        "--",
        "systemd.unit=teredo-check.target",
        "systemd.firstboot=off",  # no wizard waiting for a key on the console
    ]
    proc = subprocess.Popen(
        argv,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    console = ""
    try:
        console, _ = proc.communicate(timeout=BOOT_TIMEOUT)
    except subprocess.TimeoutExpired:
        proc.terminate()  # nspawn asks the container's systemd to halt
        try:
            console, _ = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            console, _ = proc.communicate(timeout=10)
        pytest.fail(
            f"the container did not finish within {BOOT_TIMEOUT} s\n"
            f"report so far: {_read(results / 'report')}\njournal: {_read(results / 'journal')}"
            f"\nconsole:\n{_interesting(console)}"
        )
    finally:
        (results / "console").write_text(console, encoding="utf-8")
        # nspawn leaves an empty propagation directory per machine name.
        shutil.rmtree(f"/run/systemd/nspawn/propagate/{machine}", ignore_errors=True)
    report_file = results / "report"
    assert report_file.exists(), f"no report (nspawn exit {proc.returncode}):\n{console[-4000:]}"
    report = dict(
        line.partition(" ")[::2] for line in report_file.read_text(encoding="utf-8").splitlines()
    )
    context = f"report {report}\njournal:\n{_read(results / 'journal')}"
    assert report.get("done") == "yes", context

    # Type=notify: `systemctl start` returned after READY=1, with our STATUS= line.
    assert report["server_start"] == "0", context
    assert report["server_state"] == "active/running", context
    assert report["server_status"].startswith(f"serving on {PRIMARY}:3544"), context
    # DynamicUser= and the bounding set: not root, only CAP_NET_RAW (bit 13) effective.
    assert report["server_uid"] != "0", context
    assert int(report["server_caps"], 16) == 1 << 13, context
    assert float(report["server_metric_teredo_server_router_advertisements_total"]) == 0, context

    # The client is ready once qualified, and its address is on the interface by then.
    assert report["client_start"] == "0", context
    assert report["client_state"] == "active/running", context
    assert report["client_status"].startswith("qualified: 2001:0:c633:640a:"), context
    address = report["client_status"].split()[1].rstrip(",")
    assert report["client_address"] == f"{address}/32", context
    assert report["client_metric_teredo_client_qualified"] == "1.0", context
    assert report["status_roles"] == "client,server", context

    # The relay: ready once its socket and tunnel are up, with CAP_NET_ADMIN (12), CAP_PERFMON
    # (38) and CAP_BPF (39) only.
    assert report["relay_start"] == "0", context
    assert report["relay_status"] == "relaying on UDP 0.0.0.0:3545, teredo-relay", context
    assert int(report["relay_caps"], 16) == (1 << 12) | (1 << 38) | (1 << 39), context
    assert float(report["relay_metric_teredo_peer_capacity"]) > 0, context

    # ExecReload= is SIGHUP: same process, still active (RELOADING=1 then READY=1).
    assert report["server_reload"] == "0", context
    assert report["server_state_after_reload"] == "active", context
    assert report["server_pid_after_reload"] == "same", context

    # Stopped cleanly (SIGTERM, exit 0: Result=success), the tunnel removed.
    assert report["stop"] == "0", context
    assert report["client_result"] == "success/inactive", context
    assert report["server_result"] == "success/inactive", context
    assert report["relay_result"] == "success/inactive", context
    assert report["tun_left"] == "0", context
