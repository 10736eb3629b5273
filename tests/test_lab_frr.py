"""lab/frr.py without namespaces: the FRR configurations, the command lines (every file in the
speaker's own directory, never /etc/frr) and the parsing of `vtysh ... json` (FRR 8.4 shapes)."""

from __future__ import annotations

from pathlib import Path

import pytest

from teredo.lab import anycast
from teredo.lab.bird import Peer
from teredo.lab.frr import Files, announced, daemon_command, established, speaker_configs
from teredo.lab.system import LabError

SUMMARY = """{"ipv4Unicast": {"routerId": "198.51.100.130", "as": 65201, "peers": {
 "198.51.100.129": {"remoteAs": 65000, "state": "Established", "pfxSnt": 2},
 "198.51.100.133": {"remoteAs": 65000, "state": "Active"}}}}"""
ROUTES = """{"vrfId": 0, "routerId": "198.51.100.130", "routes": {
 "198.51.100.10/32": [{"valid": true, "bestpath": true}],
 "198.51.100.11/32": [{"valid": true, "bestpath": true}]}}"""


def test_speaker_redistributes_the_main_tables_announced_routes_with_bfd() -> None:
    prefixes = ["198.51.100.10/32", "198.51.100.11/32"]
    configs = speaker_configs(
        "server1", "198.51.100.130", 65201, Peer("198.51.100.129", 65000, "u"), prefixes
    )
    # Not `ip import-table`: its imported copy outlives a kill -9 (docs/scale.md, FRR).
    assert "import-table" not in configs["zebra"]
    bgpd = configs["bgpd"]
    assert "router bgp 65201\n" in bgpd
    assert " neighbor 198.51.100.129 remote-as 65000\n" in bgpd
    assert " neighbor 198.51.100.129 bfd profile lab\n" in bgpd
    assert "  redistribute kernel route-map teredo-announce\n" in bgpd
    # Only the announced prefixes of the main table (not its default route).
    assert "ip prefix-list teredo-announce seq 5 permit 198.51.100.10/32\n" in bgpd
    assert "ip prefix-list teredo-announce seq 10 permit 198.51.100.11/32\n" in bgpd
    assert " match ip address prefix-list teredo-announce\n" in bgpd
    # Nothing learned from upstream: the speaker only announces.
    assert "route-map nothing-in deny 10" in bgpd
    assert "receive-interval 100" in configs["bfdd"]


def test_ipv6_refused_frr_84_cannot_export_a_relays_prefix() -> None:
    upstream = Peer("2001:db8:10:1::1", 65000, "u")
    with pytest.raises(LabError, match="IPv4 announcements only"):
        speaker_configs("relay1", "198.51.100.21", 65101, upstream, ["2001::/32"])


def test_daemons_keep_every_file_in_their_own_directory() -> None:
    files = Files(Path("/run/teredo-lab/x/frr-server1"))
    for daemon in ("zebra", "bgpd", "bfdd"):
        argv = daemon_command(files, daemon)
        assert argv[0] == f"/usr/lib/frr/{daemon}"
        assert "-d" not in argv  # foreground: the lab records its PID
        paths = [a for a in argv if a.startswith("/") and a != argv[0]]
        assert paths
        assert all(p.startswith(str(files.root)) for p in paths), argv
    assert "--bfdctl" in daemon_command(files, "bfdd")


def test_parsing_vtysh_json() -> None:
    assert established(SUMMARY) == {"198.51.100.129"}
    assert established("") == set()
    assert established("not json") == set()
    assert announced(ROUTES) == ["198.51.100.10/32", "198.51.100.11/32"]
    assert announced("{}") == []


def test_routing_option_checked() -> None:
    anycast.AnycastSpec(0, 2, routing="frr").check()
    with pytest.raises(LabError, match="--routing"):
        anycast.AnycastSpec(0, 2, routing="quagga").check()
