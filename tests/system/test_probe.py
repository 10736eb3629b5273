"""`teredo probe` in the lab, against Miredo's server and then ours, from behind each NAT kind.

One lab (no relay, no client daemon): five sites (no NAT, full-cone, address-restricted,
port-restricted, symmetric). From each client namespace the probe asks the lab's server
(198.51.100.10/.11) and 198.51.100.99, a lab address where no host exists. The NAT type it
reports must match the site, the mapping must be the site's public IPv4 and a port the NAT's
conntrack table really holds, the dead address must be unreachable after exactly `rounds` RS,
and `best:` must name the live server (also behind the symmetric NAT, where our client
qualifies with the primary mapping, RFC 6081).
"""

from __future__ import annotations

import json
import re
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from teredo.lab.nat import NatKind
from teredo.lab.roles import Impl, Role
from teredo.lab.topology import SERVER_V4, SERVER_V4_2, Lab

from .conftest import prefix_for, tear_down

pytestmark = pytest.mark.system

DEAD = "198.51.100.99"  # on the servers' lab segment, but no host has it: nothing answers
ROUNDS = 2
TIMEOUT = 0.5
EXPECTED = {
    NatKind.NONE: "none",
    NatKind.FULL_CONE: "cone",
    NatKind.ADDRESS_RESTRICTED: "restricted",
    NatKind.PORT_RESTRICTED: "restricted",
    NatKind.SYMMETRIC: "symmetric",
}
KINDS = list(EXPECTED)


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    lab = Lab(prefix_for("r"), KINDS, server_impl=Impl.MIREDO, relay_impl=None, client_impl=None)
    try:
        lab.up()
        yield lab
    finally:
        tear_down(lab)


def wait_server_listening(lab: Lab, timeout: float = 10.0) -> None:
    """Until UDP port 3544 is bound on both server addresses (bounded)."""
    end = time.monotonic() + timeout
    while True:
        out = lab.exec("server", ["ss", "-Hulnp"], check=False).stdout
        bound = set(re.findall(r"([\d.]+):3544\s", out))
        if {SERVER_V4, SERVER_V4_2} <= bound or "0.0.0.0" in bound:
            return
        if time.monotonic() > end:
            pytest.fail(f"the server does not listen on 3544 after {timeout} s:\n{out}")
        time.sleep(0.1)


def probe(lab: Lab, index: int) -> tuple[int, dict[str, Any], str]:
    proc = lab.exec(
        lab.site(index).client_host,
        [
            sys.executable,
            "-m",
            "teredo",
            "probe",
            "--json",
            "--rounds",
            str(ROUNDS),
            "--timeout",
            str(TIMEOUT),
            SERVER_V4,
            DEAD,
        ],
        check=False,
        timeout=30.0,
    )
    try:
        doc = json.loads(proc.stdout)
    except ValueError:
        pytest.fail(f"client{index}: no JSON (exit {proc.returncode}): {proc.stdout}{proc.stderr}")
    return proc.returncode, doc, proc.stderr


def check_site(lab: Lab, index: int, code: int, doc: dict[str, Any], stderr: str) -> None:
    site = lab.site(index)
    live, dead = doc["servers"]
    where = f"{site.nat.value} ({lab.site(index).client_host}): {json.dumps(doc)} {stderr}"
    # The live server.
    assert live["reachable"], where
    assert live["nat"] == EXPECTED[site.nat], where
    assert live["prefix"] == "2001:0:c633:640a::/64", where
    assert live["mtu"] == 1280, where
    assert live["drops"] == {}, where
    assert len(live["rtt_ms"]["samples"]) == ROUNDS, where
    host, port = live["mapping"].rsplit(":", 1)
    assert host == site.public_ip, where
    if site.nat is NatKind.NONE:
        assert live["mapping"] == live["local"], where
    else:
        # The NAT's own table: the server answered this very public port.
        ports = lab.mapped_ports(index, socket_owner="(unused behind a NAT)")
        assert int(port) in ports, f"{where}; conntrack ports {sorted(ports)}"
        assert live["mapping"] != live["local"], where
    assert live["secondary"] is True, where
    if site.nat is NatKind.SYMMETRIC:
        other_host, other_port = live["secondary_mapping"].rsplit(":", 1)
        assert other_host == site.public_ip, where
        assert other_port != port, where
    else:
        assert live["secondary_mapping"] == live["mapping"], where
    # Section 5.3.2: the cone RS is answered from the other address; only a NAT that lets it
    # in (full cone, or none) shows it.
    assert live["cone"] is (site.nat in (NatKind.NONE, NatKind.FULL_CONE)), where
    # The dead address: unreachable, after exactly ROUNDS RS and nothing else (bounded).
    assert dead["reachable"] is False, where
    assert dead["rs_sent"] == ROUNDS, where
    assert dead["loss"] == 1.0, where
    assert dead["secondary"] is None, where
    # The choice.
    # Behind the symmetric NAT too: our client qualifies there (RFC 6081), and says so.
    assert (code, doc["best"]) == (0, SERVER_V4), where
    assert "the only usable server" in doc["why"], where
    behaviour = live["nat_behaviour"]
    assert behaviour["symmetric"] is (site.nat is NatKind.SYMMETRIC), where
    if site.nat is NatKind.SYMMETRIC:
        assert "symmetric NAT: our client qualifies" in doc["why"], where
        assert behaviour["ports"] in ("random", "sequential"), where


@pytest.mark.parametrize("impl", [Impl.MIREDO, Impl.TEREDO], ids=["miredo", "teredo"])
def test_probe_reports_each_nat_kind(lab: Lab, impl: Impl) -> None:
    if not any(r.host == "server" and r.impl == impl.value and r.alive() for r in lab.procs):
        lab.stop("server")
        lab.start(Role.SERVER, impl)
    wait_server_listening(lab)
    indexes = [s.index for s in lab.sites]
    # The sites are independent: probe them all at once (each exec is bounded by its timeout).
    with ThreadPoolExecutor(max_workers=len(indexes)) as pool:
        runs = list(pool.map(lambda i: probe(lab, i), indexes))
    for index, (code, doc, stderr) in zip(indexes, runs, strict=True):
        check_site(lab, index, code, doc, stderr)


def test_probe_table_output(lab: Lab) -> None:
    """The human table from behind the port-restricted NAT (whichever server runs now)."""
    index = KINDS.index(NatKind.PORT_RESTRICTED) + 1
    proc = lab.exec(
        lab.site(index).client_host,
        [sys.executable, "-m", "teredo", "probe", "--rounds", "1", "--timeout", "0.3", DEAD],
        check=False,
        timeout=30.0,
    )
    assert proc.returncode == 1, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].split()[:2] == ["server", "reach"]
    assert lines[1].split()[:2] == [DEAD, "no"]
    assert lines[-1] == "best: none (no server answered)"
