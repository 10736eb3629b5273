"""`teredo probe`: argument errors, candidates, and the table / JSON / choice from results built
here (a server on loopback cannot be probed: 127/8 is not global, servers and probes refuse it).
The probe against real servers runs in tests/system/test_probe.py."""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any

import pytest

from teredo.cli.main import main
from teredo.cli.probe import best_line, format_table, json_document, table_rows
from teredo.core.client import NatType
from teredo.core.probe import ProbeResult, choose
from teredo.io.probe import (
    Candidate,
    CandidateError,
    parse_candidate,
    probe_servers,
    resolve_host,
)


def fail_dns(*_args: Any, **_kwargs: Any) -> Any:
    raise AssertionError("no DNS query may happen here")


@pytest.fixture(autouse=True)
def _no_dns(monkeypatch: pytest.MonkeyPatch) -> None:
    # Every test here: an IPv4 literal never reaches the resolver.
    monkeypatch.setattr(socket, "getaddrinfo", fail_dns)


def one_error_line(capsys: pytest.CaptureFixture[str]) -> str:
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.splitlines()
    assert len(lines) == 1, captured.err
    return lines[0]


# --- usage errors -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["probe"], "no server to probe"),
        (["probe", "--rounds", "0", "198.51.100.10"], "--rounds: must be between 1 and 20"),
        (["probe", "--rounds", "x", "198.51.100.10"], "--rounds: 'x' is not a whole number"),
        (["probe", "--timeout", "nan", "198.51.100.10"], "--timeout: must be between"),
        (["probe", "--timeout", "-1", "198.51.100.10"], "--timeout: must be between"),
        (["probe", "--bind-address", "::1", "198.51.100.10"], "not an IPv4 address"),
        (["probe", "198.51.100.10/"], "bad server '198.51.100.10/'"),
        (["probe", "a/b/c"], "bad server 'a/b/c'"),
    ],
)
def test_usage_errors_exit_2_with_one_line(
    argv: list[str], needle: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(argv) == 2
    line = one_error_line(capsys)
    assert line.startswith("teredo probe: ")
    assert needle in line


def test_bad_config_file_is_one_file_line_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    conf = tmp_path / "miredo.conf"
    conf.write_text("RelayType client\nServerAddress2 198.51.100.11\nBogus 1\n")
    assert main(["probe", "-c", str(conf)]) == 2
    assert one_error_line(capsys).startswith(f"{conf}:3: ")
    assert main(["probe", "-c", str(tmp_path / "missing.conf")]) == 2
    assert "cannot read" in one_error_line(capsys)


def test_config_file_gives_the_candidate_and_its_prefix(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    conf = tmp_path / "miredo.conf"
    # Non-global addresses: the probe refuses them before any socket exists, so nothing is sent.
    conf.write_text("ServerAddress 10.1.2.3\nServerAddress2 10.1.2.9\n")
    assert main(["probe", "--json", "-c", str(conf)]) == 1
    doc = json.loads(capsys.readouterr().out)
    (server,) = doc["servers"]
    assert server["name"] == "10.1.2.3/10.1.2.9"
    assert server["server2"] == "10.1.2.9"
    assert server["rs_sent"] == 0
    assert server["errors"] == ["the primary address 10.1.2.3 is not global unicast"]
    assert doc["best"] is None


# --- candidates ---------------------------------------------------------------------------------


def test_parse_candidate() -> None:
    assert parse_candidate(" 198.51.100.10 ") == Candidate("198.51.100.10", "198.51.100.10")
    assert parse_candidate("teredo.example/198.51.100.50") == Candidate(
        "teredo.example/198.51.100.50", "teredo.example", "198.51.100.50"
    )
    for bad in ("", "/", "a/", "/b", "a b", "a/b/c", "x" * 300):
        with pytest.raises(CandidateError):
            parse_candidate(bad)


def test_names_are_resolved_only_when_given(monkeypatch: pytest.MonkeyPatch) -> None:
    assert resolve_host("198.51.100.10") == 0xC633640A  # the autouse fixture forbids DNS
    asked: list[str] = []

    def fake(host: str, *_a: Any, **_k: Any) -> Any:
        asked.append(host)
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", fake)
    results = probe_servers(
        [parse_candidate("nowhere.example"), parse_candidate("127.0.0.1")],
        rounds=1,
        timeout=0.1,
    )
    assert asked == ["nowhere.example"]
    assert [r.reachable for r in results] == [False, False]
    assert results[0].errors == ("cannot resolve to IPv4: Name or service not known",)
    assert results[1].errors == ("the primary address 127.0.0.1 is not global unicast",)
    assert [r.sent for r in results] == [0, 0]


# --- output from built results -----------------------------------------------------------------


def built(
    name: str,
    rtts: tuple[float, ...],
    *,
    sent: int = 3,
    nat: NatType = NatType.RESTRICTED,
    mapping: tuple[str, int] | None = ("203.0.113.14", 40000),
    secondary: bool | None = True,
    errors: tuple[str, ...] = (),
) -> ProbeResult:
    return ProbeResult(
        server=name,
        server2="198.51.100.11",
        reachable=bool(rtts),
        sent=sent * 3 if rtts else sent,
        rtts=rtts,
        primary_sent=sent,
        prefix="2001:0:c633:640a::/64" if rtts else None,
        mtu=1280 if rtts else None,
        mapping=mapping if rtts else None,
        secondary_mapping=("203.0.113.14", 41000) if nat is NatType.SYMMETRIC else mapping,
        nat=nat,
        cone=False if rtts else None,
        secondary=secondary if rtts else None,
        local=("192.168.1.2", 5000),
        errors=errors,
        name=name,
    )


RESULTS = [
    built("198.51.100.10", (0.004, 0.002, 0.003)),
    built("198.51.100.99", (), nat=NatType.UNKNOWN, errors=("no answer to 3 RS",)),
    built("198.51.100.30", (0.001, 0.001), nat=NatType.SYMMETRIC),
    built("198.51.100.40", (0.010, 0.009, 0.011), secondary=False, nat=NatType.UNKNOWN),
]


def test_table_rows_and_best_line() -> None:
    rows = table_rows(RESULTS)
    assert rows[0] == (
        "198.51.100.10",
        "yes",
        "3.0 ms",
        "0%",
        "restricted",
        "203.0.113.14:40000",
        "answered",
    )
    assert rows[1] == ("198.51.100.99", "no", "-", "100%", "unknown", "-", "not tried")
    assert rows[2][4] == "symmetric"
    assert rows[2][3] == "33%"
    assert rows[3][6] == "silent"
    text = format_table(RESULTS)
    lines = text.splitlines()
    assert lines[0].split() == [
        "server",
        "reach",
        "rtt",
        "median",
        "loss",
        "nat",
        "mapping",
        "secondary",
    ]
    assert "  ! no answer to 3 RS" in lines
    assert "  ! the secondary address saw 203.0.113.14:41000: symmetric NAT" in lines
    # Columns line up: every row's NAT cell starts where the header's does.
    col = lines[0].index("nat")
    for line in lines[1:]:
        if not line.startswith("  !"):
            assert line[col - 2 : col] == "  "
    best, why = choose(RESULTS)
    assert best is RESULTS[0]
    assert best_line(best, why) == (
        "best: 198.51.100.10 (median RTT 3.0 ms, loss 0%, lowest of 3 usable, 1 unusable)"
    )
    assert best_line(None, "no server answered") == "best: none (no server answered)"


def test_json_document_shape() -> None:
    best, why = choose(RESULTS)
    doc = json.loads(json.dumps(json_document(RESULTS, best, why)))
    assert doc["best"] == "198.51.100.10"
    assert doc["why"] == why
    assert [s["name"] for s in doc["servers"]] == [r.server for r in RESULTS]
    first = doc["servers"][0]
    assert set(first) == {
        "name", "server", "server2", "reachable", "usable", "rs_sent", "rtt_ms", "loss", "late",
        "prefix", "mtu", "mapping", "secondary_mapping", "local", "nat", "nat_behaviour", "cone",
        "secondary", "errors", "drops",
    }  # fmt: skip
    assert first["rtt_ms"] == {"min": 2.0, "median": 3.0, "max": 4.0, "samples": [4.0, 2.0, 3.0]}
    assert first["mapping"] == "203.0.113.14:40000"
    assert first["nat"] == "restricted"
    assert first["usable"] is True
    dead = doc["servers"][1]
    assert dead["reachable"] is False
    assert dead["loss"] == 1.0
    assert dead["rtt_ms"]["median"] is None
    assert dead["secondary"] is None
    assert doc["servers"][2]["usable"] is True  # symmetric: qualifies (RFC 6081), ranked last
