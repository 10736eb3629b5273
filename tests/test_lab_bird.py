"""lab/bird.py and lab/anycast.py without namespaces: the BIRD configurations, the parsing of
`birdc` output (captured from BIRD 2.0.12) and the lab's address plan."""

from __future__ import annotations

from pathlib import Path

import pytest

from teredo.lab import anycast, anycast_failover
from teredo.lab.bird import (
    Peer,
    bfd_up,
    established,
    router_config,
    selected,
    speaker_config,
)
from teredo.lab.system import LabError, ProcRecord

SHOW_PROTOCOLS = """\
BIRD 2.0.12 ready.
Name       Proto      Table      State  Since         Info
device1    Device     ---        up     18:00:19.415
bfd1       BFD        ---        up     18:00:19.415
kernel_ipv6 Kernel     master6    up     18:00:19.415
relay1     BGP        ---        up     18:00:20.193  Established
relay2     BGP        ---        start  18:00:20.182  Connect
relay3     BGP        ---        up     18:00:20.312  Established
"""

SHOW_ROUTE = """\
BIRD 2.0.12 ready.
Table master6:
2001::/32            unicast [relay1 18:01:11.198] * (100) [AS65101i]
\tvia 2001:db8:10:1::2 on r1
                     unicast [relay2 18:01:05.736] (100) [AS65102i]
\tvia 2001:db8:10:2::2 on r2
"""

# Captured in a lab whose relay1 bgpd had asked for BFD before its zebra connection was up.
SHOW_BFD_SESSIONS = """\
BIRD 2.0.12 ready.
bfd1:
IP address                Interface  State      Since         Interval  Timeout
2001:db8:10:1::2          r1         Down       20:09:11.106    1.000    0.000
2001:db8:10:2::2          r2         Up         20:09:22.281    0.100    0.300
198.51.100.130            s1         Up         20:09:22.368    0.100    0.300
198.51.100.134            s2         Init       20:09:22.451    0.100    0.300
"""


def test_bfd_sessions_up_only() -> None:
    assert bfd_up(SHOW_BFD_SESSIONS) == {"2001:db8:10:2::2", "198.51.100.130"}
    assert bfd_up("BIRD 2.0.12 ready.\nbfd1:\n") == set()


def test_established_sessions_only() -> None:
    assert established(SHOW_PROTOCOLS) == {"relay1", "relay3"}


def test_selected_routes_best_first() -> None:
    assert selected(SHOW_ROUTE) == {"2001::/32": ["relay1", "relay2"]}
    assert selected("BIRD 2.0.12 ready.\nTable master6:\n") == {}


def test_router_merges_paths_and_runs_bfd() -> None:
    text = router_config("198.51.100.6", [Peer("2001:db8:10:1::2", 65101, "relay1")])
    assert "merge paths on;" in text
    assert "protocol kernel kernel_ipv6" in text
    assert "neighbor 2001:db8:10:1::2 as 65101;" in text
    assert "bfd on;" in text
    assert "ipv4" not in text


def test_speaker_exports_the_announce_table_only() -> None:
    text = speaker_config("198.51.100.21", 65101, Peer("2001:db8:10:1::1", 65000, "up"), 100)
    assert "kernel table 100;" in text
    assert "learn;" in text
    assert 'export filter { if proto = "announced" then { accept; } reject; };' in text
    assert "local as 65101;" in text
    assert "announced4" not in text


def test_speaker_with_an_anycast_ipv4_has_a_second_session_and_may_prepend() -> None:
    up6, up4 = Peer("2001:db8:10:2::1", 65000, "upstream"), Peer("198.51.100.165", 65000, "u4")
    text = speaker_config("198.51.100.22", 65102, up6, 100, upstream4=up4, prepend=1)
    assert "protocol kernel announced4 {\n  kernel table 100;" in text
    assert "  ipv4 { import all; export none; };" in text
    assert "neighbor 198.51.100.165 as 65000;" in text
    # Standby: its AS once more on both sessions, so that up6 prefers relay1.
    assert text.count("bgp_path.prepend(65102);") == 2
    assert 'if proto = "announced4" then { bgp_path.prepend(65102); accept; }' in text


def test_anycast_ipv4_needs_relays_and_makes_them_active_standby() -> None:
    with pytest.raises(LabError, match="--anycast-ipv4"):
        anycast.AnycastSpec(0, 2, anycast_ipv4=True).check()
    assert anycast.AnycastSpec(3, 0, anycast_ipv4=True).relay_paths == 1
    assert anycast.AnycastSpec(3, 0).relay_paths == 3
    argv = anycast.relay_argv(2, anycast.AnycastSpec(2, 0, anycast_ipv4=True))
    assert argv[argv.index("--bind-address") + 1] == anycast.RELAY_ANYCAST_V4
    assert argv[argv.index("--anycast-ipv4") + 1] == anycast.RELAY_ANYCAST_V4
    assert "--anycast-ipv4" not in anycast.relay_argv(2, anycast.AnycastSpec(2, 0))


def test_relays_get_the_datapath_asked_for_and_auto_is_left_to_their_default() -> None:
    assert "--datapath" not in anycast.relay_argv(1, anycast.AnycastSpec(2, 0))
    for mode in ("kernel", "user"):
        argv = anycast.relay_argv(1, anycast.AnycastSpec(2, 0, datapath=mode))
        assert argv[argv.index("--datapath") + 1] == mode
    with pytest.raises(LabError, match="--datapath"):
        anycast.AnycastSpec(2, 0, datapath="xdp").check()


def test_address_plan_is_in_lab_ranges() -> None:
    for i in range(1, anycast.MAX_RELAYS + 1):
        assert anycast.relay_v4(i).startswith("198.51.100.")
        assert all(a.startswith("2001:db8:") for a in anycast.relay_link(i))
    links = [anycast.server_link(j) for j in range(1, anycast.MAX_SERVERS + 1)]
    flat = [a for pair in links for a in pair]
    assert len(set(flat)) == len(flat)
    assert all(a.startswith("198.51.100.") and int(a.rsplit(".", 1)[1]) < 255 for a in flat)
    v4 = [a for i in range(1, anycast.MAX_RELAYS + 1) for a in anycast.relay_link_v4(i)]
    taken = {anycast.RELAY_ANYCAST_V4, anycast.UP6_ROUTER_ID, *flat}
    taken |= {anycast.relay_v4(i) for i in range(1, anycast.MAX_RELAYS + 1)}
    assert len(set(v4)) == len(v4)
    assert not taken & set(v4)
    assert all(a.startswith("198.51.100.") and int(a.rsplit(".", 1)[1]) < 255 for a in v4)


def test_failover_outage_counts_lost_echoes_and_the_longest_wait() -> None:
    f = anycast_failover.Failover(
        "relay2", "SIGKILL", 0.07, sent=270, received=200, max_rtt_ms=1983.0, interval=0.02
    )
    assert f.lost == 70
    assert abs(f.outage_seconds - (70 * 0.02 + 1.983)) < 1e-9
    assert f.line().startswith("SIGKILL relay2: withdrawn in 70 ms, 200/270 echoes (70 lost)")


def test_status_lines_show_sessions_routes_and_next_hops() -> None:
    view = {
        "relays": 2,
        "servers": 0,
        "routers": [
            {
                "router": "up6",
                "established": ["relay1", "relay2"],
                "routes": {"2001::/32": ["relay1", "relay2"]},
                "kernel": {"2001::/32": ["2001:db8:10:1::2", "2001:db8:10:2::2"]},
            }
        ],
        "speakers": [
            {"host": "relay1", "established": ["upstream"], "announces": ["2001::/32"]},
            {"host": "relay2", "established": [], "announces": []},
        ],
    }
    lines = anycast.status_lines(view)
    assert lines[1] == "  up6: sessions up: relay1, relay2"
    assert "kernel ECMP via 2001:db8:10:1::2, 2001:db8:10:2::2" in lines[2]
    assert lines[3].split() == ["relay1", "bird", "BGP", "up", "announces", "2001::/32"]
    assert lines[4].split() == ["relay2", "bird", "BGP", "DOWN", "announces"]


def test_ping_duplicates_from_the_summary() -> None:
    dup = "200 packets transmitted, 200 received, +2 duplicates, 0% packet loss, time 4805ms"
    assert anycast_failover.ping_duplicates(dup) == 2
    assert (
        anycast_failover.ping_duplicates("200 packets transmitted, 200 received, 0% packet loss")
        == 0
    )


@pytest.mark.parametrize(
    ("log", "good"),
    [
        ("withdrawn 2001::/32 from routing table 100\ndraining for 2 s\nstopping\n", True),
        ("draining for 2 s\nwithdrawn 2001::/32 from routing table 100\nstopping\n", False),
        ("withdrawn 2001::/32 from routing table 100\nstopping\n", False),
    ],
)
def test_drained_log_wants_withdrawn_draining_stopping_in_order(
    tmp_path: Path, log: str, good: bool
) -> None:
    path = tmp_path / "relay1.log"
    path.write_text(log, encoding="utf-8")
    # No process has start time -1: the record is of a daemon that has exited.
    gone = ProcRecord("relay1", "relay1", 1, -1, ("teredo", "relay"), log=str(path))
    if good:
        assert anycast_failover.drained_log(gone, timeout=0) == log
    else:
        with pytest.raises(LabError, match="in that order"):
            anycast_failover.drained_log(gone, timeout=0)
