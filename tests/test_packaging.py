"""Packaging: `python -m build` makes an sdist and a wheel (the wheel built from the sdist, so
the sdist is complete), and the wheel installs into a clean virtual environment where `teredo`
runs with its pinned dependencies.

The build runs without isolation (hatchling is a pinned test dependency, so no download);
installing the wheel's dependencies uses pip's configured index, as any user's install would.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tarfile
import tomllib
import zipfile
from pathlib import Path

import pytest

from teredo import __version__
from teredo.datapath import available

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    done = subprocess.run(
        [sys.executable, "-m", "build", "--no-isolation", "--outdir", str(out), str(ROOT)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return out


def _in_venv(*argv: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """`argv` run with nothing of this checkout in its environment (no PYTHONPATH)."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    return subprocess.run(
        [str(a) for a in argv],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        cwd=cwd,
        check=False,
    )


def test_wheel_and_sdist_contents(dist: Path) -> None:
    wheel = dist / f"teredo-{__version__}-py3-none-any.whl"
    sdist = dist / f"teredo-{__version__}.tar.gz"
    assert wheel.exists(), sorted(p.name for p in dist.iterdir())
    assert sdist.exists(), sorted(p.name for p in dist.iterdir())
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        metadata = zf.read(f"teredo-{__version__}.dist-info/METADATA").decode()
    sources = {
        str(p.relative_to(ROOT / "src"))
        for p in (ROOT / "src" / "teredo").rglob("*")
        if p.is_file() and p.suffix in (".py", ".typed")
    }
    assert sources <= names, f"missing from the wheel: {sorted(sources - names)}"
    assert not [n for n in names if n.startswith(("tests/", "bench/"))]
    assert f"Version: {__version__}" in metadata
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    for requirement in pyproject["project"]["dependencies"]:
        assert f"Requires-Dist: {requirement}" in metadata, requirement
    with tarfile.open(sdist) as tf:
        members = {m.name.split("/", 1)[1] for m in tf.getmembers() if "/" in m.name}
    for needed in (
        "pyproject.toml",
        "README.md",
        "docs/operate.md",
        "scripts/install-units.sh",
        "systemd/teredo-client.service",
        "systemd/teredo-relay.service",
        "systemd/teredo-server.service",
    ):
        assert needed in members, needed


def test_wheel_installs_into_a_clean_venv(dist: Path, tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    wheel = dist / f"teredo-{__version__}-py3-none-any.whl"
    done = _in_venv(venv / "bin" / "python", "-m", "pip", "install", "-q", wheel)
    assert done.returncode == 0, done.stderr
    version = _in_venv(venv / "bin" / "teredo", "--version")
    assert (version.returncode, version.stdout) == (
        0,
        f"teredo {__version__} (data path: {available()})\n",
    ), version.stderr
    # The installed package, not this checkout, with its dependencies importable.
    imports = "teredo, teredo.io.metrics, teredo.io.client_driver, teredo.io.relay_driver"
    probe = _in_venv(
        venv / "bin" / "python", "-c", f"import {imports}; print(teredo.__file__)", cwd=tmp_path
    )
    assert probe.returncode == 0, probe.stderr
    assert probe.stdout.startswith(str(venv)), probe.stdout
    decoded = _in_venv(venv / "bin" / "teredo", "decode", "2001:0:4136:e378:8000:63bf:3fff:fdd2")
    assert decoded.returncode == 0, decoded.stderr
    assert "65.54.227.120" in decoded.stdout


def test_version_names_the_data_path() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "teredo", "--version"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0
    assert done.stdout == f"teredo {__version__} (data path: {available()})\n"
    assert available() in ("kernel", "user")
