"""bench_relay's command line: the namespace prefix and our relay's options are checked before
anything runs (no root needed: a usage error exits 2 first)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import cast

import pytest
from bench.bench_relay import FAKE_SUFFIX, fake_ns, main

from teredo.lab.topology import Lab


@pytest.mark.parametrize(
    "argv",
    [
        ["--prefix", "TDQ-"],
        ["--prefix", "tdq"],
        ["--prefix", ""],
        ["--teredo-peer-timeout", "10"],
        ["--teredo-peer-timeout", "1e6"],
        ["--datapath", "xdp"],
        ["--offload", "on"],
    ],
)
def test_bad_prefix_or_peer_timeout_is_a_usage_error(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["--tests", "memory", *argv])
    assert exited.value.code == 2
    assert argv[0] in capsys.readouterr().err


def test_fake_clients_live_under_the_lab_prefix() -> None:
    for prefix in ("tdb-", "tdq-"):
        lab = cast(Lab, SimpleNamespace(prefix=prefix))
        assert fake_ns(lab) == prefix + FAKE_SUFFIX
