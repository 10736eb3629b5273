"""Recovery without operator action (issue 12, "Faults"): our server, relay and clients in the
lab; each fault of teredo.lab.recovery breaks a working path, and pings must work both ways
again by themselves within a generous bound (no timed assert below it: the measured times,
beside Miredo's, come from `python -m bench.recovery`, docs/robustness.md).

The two NAT faults touch one site each (two clients, each behind its own NAT), so they run at
the same time: their recoveries wait out the same kind of protocol timer (the refresh, the
validity), and one wait serves both instead of two in a row.
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest

from teredo.lab import recovery
from teredo.lab.nat import NatKind
from teredo.lab.roles import Impl, Role
from teredo.lab.topology import Lab

from .conftest import prefix_for, tear_down

pytestmark = pytest.mark.system

OURS = {Role.SERVER: Impl.TEREDO, Role.RELAY: Impl.TEREDO, Role.CLIENT: Impl.TEREDO}
# A changed mapping is seen at the next refresh (RFC 4380 5.2.5: 22-30 s with the default
# interval); a restarted relay forgets its peers, which come back once the client's entry for
# the native host is no longer valid (30 s) and its ping test runs again. Twice that and more.
BOUND = 150.0


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    lab = Lab(
        prefix_for("z"),
        [NatKind.PORT_RESTRICTED, NatKind.PORT_RESTRICTED],
        server_impl=Impl.TEREDO,
        relay_impl=Impl.TEREDO,
        client_impl=Impl.TEREDO,
    )
    try:
        lab.up()
        lab.wait_qualified(1, timeout=90)
        lab.wait_qualified(2, timeout=90)
        yield lab
    finally:
        tear_down(lab)


def test_the_path_recovers_by_itself_from_nat_faults(lab: Lab) -> None:
    """nat_mapping_change at site 1 and nat_reboot at site 2, at once (separate NATs, separate
    clients; the server and relay they share are not touched by either fault)."""
    scenarios = {1: "nat_mapping_change", 2: "nat_reboot"}
    with ThreadPoolExecutor(max_workers=len(scenarios)) as pool:
        futures = {
            index: pool.submit(
                recovery.run_scenario, lab, scenario, index=index, impls=OURS, timeout=BOUND
            )
            for index, scenario in scenarios.items()
        }
        got = {index: future.result() for index, future in futures.items()}
    for index, result in got.items():
        assert result.seconds is not None, (result, lab.log_tail(lab.site(index).client_host, 40))
    assert got[1].address_changed, got[1]  # the new public port is in the address (section 4)


@pytest.mark.parametrize("scenario", ["relay_restart", "client_restart"])
def test_the_path_recovers_by_itself(lab: Lab, scenario: str) -> None:
    got = recovery.run_scenario(lab, scenario, impls=OURS, timeout=BOUND)
    assert got.seconds is not None, (got, lab.log_tail("client1", 40))
