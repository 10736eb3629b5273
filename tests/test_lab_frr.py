"""lab/frr.py without namespaces: the FRR configurations (a server's IPv4, a relay's IPv6), the
command lines (every file in the speaker's own directory, never /etc/frr) and the parsing of
`vtysh ... json` (FRR 8.4 shapes)."""

from __future__ import annotations

from pathlib import Path

import pytest

from teredo.io.announce import ANNOUNCE_METRIC
from teredo.lab import anycast
from teredo.lab.bird import Peer
from teredo.lab.frr import (
    Files,
    announced,
    daemon_command,
    established,
    speaker_configs,
    zebra_clients,
)
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


def test_relay_speaker_exports_its_announcement_over_an_ipv6_session() -> None:
    upstream = Peer("2001:db8:10:1::1", 65000, "u")
    configs = speaker_configs("relay1", "198.51.100.21", 65101, upstream, ["2001::/32"])
    bgpd = configs["bgpd"]
    assert "ipv6 prefix-list teredo-announce seq 5 permit 2001::/32\n" in bgpd
    assert " match ipv6 address prefix-list teredo-announce\n" in bgpd
    # Our announcement only (metric 2048 = its MED), not the relay host's other 2001::/32
    # routes zebra reads (an unreachable one, say) once ours is withdrawn.
    assert f" match metric {ANNOUNCE_METRIC}\n" in bgpd
    assert " bgp router-id 198.51.100.21\n" in bgpd
    # MP-BGP: the IPv6 unicast family only on that session.
    assert " no bgp default ipv4-unicast\n" in bgpd
    assert " neighbor 2001:db8:10:1::1 remote-as 65000\n" in bgpd
    assert " neighbor 2001:db8:10:1::1 bfd profile lab\n" in bgpd
    family = bgpd[bgpd.index(" address-family ipv6 unicast\n") :]
    assert "  redistribute kernel route-map teredo-announce\n" in family
    assert "  neighbor 2001:db8:10:1::1 activate\n" in family
    assert "  neighbor 2001:db8:10:1::1 route-map nothing-in in\n" in family
    assert "receive-interval 100" in configs["bfdd"]


def test_relay_with_an_anycast_ipv4_has_a_second_session_over_ipv4_and_standby_prepends() -> None:
    configs = speaker_configs(
        "relay2",
        "198.51.100.22",
        65102,
        Peer("2001:db8:10:2::1", 65000, "u"),
        ["2001::/32"],
        upstream4=Peer("198.51.100.165", 65000, "u4"),
        prefixes4=["198.51.100.40/32"],
        prepend=1,
    )
    bgpd = configs["bgpd"]
    assert "ip prefix-list teredo-announce4 seq 5 permit 198.51.100.40/32\n" in bgpd
    v4_map = bgpd[bgpd.index("route-map teredo-announce4 permit 10\n") :]
    assert v4_map.startswith(
        "route-map teredo-announce4 permit 10\n"
        " match ip address prefix-list teredo-announce4\n"
        " set as-path prepend 65102\n!\n"
    )  # no metric to match: an IPv4 /32 of ours has the kernel's default
    v6_map = bgpd[bgpd.index("route-map teredo-announce permit 10\n") :]
    assert " match metric 2048\n set as-path prepend 65102\n" in v6_map
    ipv4 = bgpd[bgpd.index(" address-family ipv4 unicast\n") : bgpd.index(" address-family ipv6")]
    assert "  redistribute kernel route-map teredo-announce4\n" in ipv4
    assert "  neighbor 198.51.100.165 activate\n" in ipv4
    assert "2001:db8:10:2::1" not in ipv4
    ipv6 = bgpd[bgpd.index(" address-family ipv6 unicast\n") :]
    assert "  redistribute kernel route-map teredo-announce\n" in ipv6
    assert "198.51.100.165" not in ipv6
    assert " neighbor 198.51.100.165 bfd profile lab\n" in bgpd


def test_servers_route_map_does_not_match_a_metric() -> None:
    # A server's /32 are added with the kernel's default metric (0 for IPv4): no match metric.
    upstream = Peer("198.51.100.129", 65000, "u")
    bgpd = speaker_configs("s", "198.51.100.130", 65201, upstream, ["198.51.100.10/32"])["bgpd"]
    assert "match metric" not in bgpd
    assert "no bgp default ipv4-unicast" not in bgpd


def test_one_address_family_per_speaker() -> None:
    upstream = Peer("2001:db8:10:1::1", 65000, "u")
    with pytest.raises(LabError, match="one address family"):
        speaker_configs("relay1", "198.51.100.21", 65101, upstream, ["198.51.100.40/32"])
    with pytest.raises(LabError, match="one address family"):
        speaker_configs("relay1", "198.51.100.21", 65101, upstream, [])


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
    anycast.AnycastSpec(2, 2, routing="frr").check()
    with pytest.raises(LabError, match="--routing"):
        anycast.AnycastSpec(0, 2, routing="quagga").check()
    anycast.AnycastSpec(2, 0, routing="frr", anycast_ipv4=True).check()


def test_lab_relays_announce_in_the_main_table_with_frr() -> None:
    argv = anycast.relay_argv(1, anycast.AnycastSpec(2, 0, routing="frr"))
    assert argv[argv.index("--announce-table") + 1] == "254"
    argv = anycast.relay_argv(1, anycast.AnycastSpec(2, 0))
    assert argv[argv.index("--announce-table") + 1] == "100"


def test_zebra_clients_from_the_client_summary() -> None:
    summary = (
        "Name      Connect Time    Last Read  Last Write      IPv4 Routes           IPv6 Routes\n"
        "------------------------------------------------------------------------------------------\n"
        "bfd           00:10:55     00:10:55    00:10:49          0/0                   0/0\n"
        "bgp           00:10:55     00:10:55    00:10:49          0/0                   0/0\n"
        "\n"
        "Routes column shows (added+updated)/deleted\n"
    )
    assert zebra_clients(summary) == {"bfd", "bgp"}
    assert zebra_clients("") == set()
