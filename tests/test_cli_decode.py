"""`teredo decode`: the RFC 4380 example, JSON output, legacy prefix, and clear errors."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from teredo.cli.main import main

RFC_EXAMPLE = "2001:0:4136:e378:8000:63bf:3fff:fdd2"


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    status = main(argv)
    out, err = capsys.readouterr()
    return status, out, err


def test_rfc_example_text(capsys: pytest.CaptureFixture[str]) -> None:
    status, out, err = run(["decode", RFC_EXAMPLE], capsys)
    assert status == 0
    assert err == ""
    lines = dict(line.split(":", 1) for line in out.splitlines())
    assert lines["server IPv4"].strip() == "65.54.227.120"
    assert lines["cone bit"].strip() == "set"
    assert lines["mapped port"].strip() == "40000"
    assert lines["client IPv4"].strip() == "192.0.2.45"
    assert lines["prefix"].strip() == "2001::/32"
    assert lines["flags"].strip().startswith("0x8000 (cone, random bits 0x000")


def test_json_output_with_random_bits(capsys: pytest.CaptureFixture[str]) -> None:
    status, out, _ = run(["decode", "--json", "2001:0:c633:640a:3459:37dd:34ff:8eb2"], capsys)
    assert status == 0
    info = json.loads(out)
    assert info["server"] == "198.51.100.10"
    assert info["cone"] is False
    assert info["random_bits"] == "0xd59"
    assert info["other_flags"] == "0x0000"
    assert info["port"] == 51234
    assert info["client"] == "203.0.113.77"
    assert info["prefix"] == "2001::/32"


def test_other_flag_bits_are_shown(capsys: pytest.CaptureFixture[str]) -> None:
    # R, U and G set (0x4000 | 0x0200 | 0x0100) on top of the RFC example's C bit.
    status, out, _ = run(["decode", "2001:0:4136:e378:c300:63bf:3fff:fdd2"], capsys)
    assert status == 0
    assert "other bits 0x4300" in out


def test_legacy_prefix(capsys: pytest.CaptureFixture[str]) -> None:
    legacy = "3ffe:831f:4136:e378:8000:63bf:3fff:fdd2"
    status, _, err = run(["decode", legacy], capsys)
    assert status == 2
    assert "not a Teredo address" in err
    status, out, _ = run(["decode", "--json", "--prefix", "3ffe:831f::/32", legacy], capsys)
    assert status == 0
    assert json.loads(out)["client"] == "192.0.2.45"


@pytest.mark.parametrize("bad", ["2001:db8::1", "fe80::1", "192.0.2.1", "nonsense", ""])
def test_non_teredo_address_is_an_error(bad: str, capsys: pytest.CaptureFixture[str]) -> None:
    status, out, err = run(["decode", bad], capsys)
    assert status == 2
    assert out == ""
    assert "not a Teredo address" in err
    assert err.count("\n") == 1


def test_bad_prefix_option(capsys: pytest.CaptureFixture[str]) -> None:
    status, _, err = run(["decode", "--prefix", "2001::/48", RFC_EXAMPLE], capsys)
    assert status == 2
    assert "prefix length must be 32" in err


def test_command_line_entry_point() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "teredo", "decode", "--json", RFC_EXAMPLE],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["server"] == "65.54.227.120"
