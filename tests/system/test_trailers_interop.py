"""What Miredo (client, server, relay) and ours do with datagrams that carry RFC 6081 trailers,
measured (issue 9: "send trailers only where they cannot hurt an RFC 4380 peer").

A fake Teredo peer in a site without NAT (teredo.lab.trailerprobe) sends a client without NAT,
for each trailer area (none, each kind, an unknown kind, all): data to the client directly, a
bubble through the server, data to the native host out through the server and back through
the relay (answering the relay's bubble with a direct bubble that carries the trailers). The
figures go to docs/client.md ("RFC 6081 trailers"); the test pins them.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator

import pytest

from teredo.lab.nat import NatKind
from teredo.lab.roles import Impl
from teredo.lab.topology import NATIVE_V6, SERVER_V4, Lab

from .conftest import prefix_for, tear_down

pytestmark = pytest.mark.system

QUALIFY_TIMEOUT = 40.0
AREAS = (
    "none",
    "nonce",
    "alternate-address",
    "random-port",
    "neighbor-discovery",
    "unknown-kind",
    "all",
)


@pytest.fixture(scope="module", params=[Impl.MIREDO, Impl.TEREDO], ids=["miredo", "teredo"])
def probed(request: pytest.FixtureRequest) -> Iterator[tuple[Impl, dict[str, dict[str, bool]]]]:
    impl: Impl = request.param
    lab = Lab(
        prefix_for("t" if impl is Impl.MIREDO else "u"),
        [NatKind.NONE, NatKind.NONE],
        server_impl=impl,
        relay_impl=impl,
        client_impl=[impl, None],
    )
    try:
        lab.up()
        info = lab.wait_qualified(1, timeout=QUALIFY_TIMEOUT)
        prober = lab.site(2)
        argv = [sys.executable, "-m", "teredo.lab.trailerprobe", "--bind", prober.public_ip]
        argv += ["--client", str(info.address), "--server", SERVER_V4]
        argv += ["--native", NATIVE_V6]
        done = lab.exec(prober.client_host, argv, timeout=240)
        results = json.loads(done.stdout)
        print(json.dumps({"impl": impl.value, "trailers": results}, sort_keys=True))
        yield impl, results
    finally:
        tear_down(lab)


def test_the_control_works(probed: tuple[Impl, dict[str, dict[str, bool]]]) -> None:
    _impl, results = probed
    assert set(results) == set(AREAS)
    assert results["none"] == {"direct_data": True, "indirect_bubble": True, "relay": True}


def test_trailers_are_ignored_by_every_role(
    probed: tuple[Impl, dict[str, dict[str, bool]]],
) -> None:
    """Measured 2026-12-07: Miredo 1.2.6's client, server and relay, and ours, take every
    datagram with well-formed trailers as if they were not there (RFC6081-NOTES: "an RFC 4380
    peer that honours the payload length ignores them")."""
    _impl, results = probed
    for area in AREAS:
        assert results[area] == results["none"], (area, results)
