"""The benchmark harness's pure helpers: iperf3 JSON, ratios and tables, /proc parsing, the
fake-peer address generator (bench/lab_bench.py). Nothing here needs root or a lab."""

from __future__ import annotations

import ipaddress
import json
import os

import pytest
from bench.lab_bench import (
    FAKE_SERVER,
    MAPPED_COUNT,
    MAPPED_FIRST,
    MAX_FAKE_PEERS,
    PORT_FIRST,
    BenchError,
    comparison_rows,
    cpu_seconds,
    format_ratio,
    format_table,
    json_line,
    median,
    median_results,
    parse_impls,
    parse_iperf3_tcp,
    parse_iperf3_udp,
    parse_link_drops,
    parse_loadavg,
    parse_snmp6_udp_rcvbuf,
    parse_snmp_udp,
    parse_stat_cpu_ticks,
    parse_vm_rss,
    peer_address,
    peer_index,
    peer_index_of_address,
    peer_mapping,
    ratio,
    rss_bytes,
    run_rounds,
)
from hypothesis import given
from hypothesis import strategies as st

from teredo.core.addr import TeredoAddress
from teredo.lab.system import LabError


def _tcp_json(sent_bps: float, received_bps: float, retransmits: int) -> str:
    """The shape of `iperf3 -J` 3.12 for TCP (only the fields the harness reads, plus noise)."""
    return json.dumps(
        {
            "start": {"version": "iperf 3.12"},
            "intervals": [],
            "end": {
                "sum_sent": {
                    "seconds": 3.0,
                    "bytes": int(sent_bps * 3 / 8),
                    "bits_per_second": sent_bps,
                    "retransmits": retransmits,
                    "sender": True,
                },
                "sum_received": {
                    "seconds": 3.01,
                    "bytes": int(received_bps * 3.01 / 8),
                    "bits_per_second": received_bps,
                    "sender": True,
                },
            },
        }
    )


def _udp_json(sent: int, received: int, payload: int, seconds: float) -> str:
    """`iperf3 -u -J` 3.12: sum_received counts packets as numbered by the sender and the gaps;
    bytes is what arrived."""
    return json.dumps(
        {
            "end": {
                "sum_sent": {"seconds": seconds, "packets": sent, "bytes": sent * payload},
                "sum_received": {
                    "seconds": seconds,
                    "packets": sent,
                    "lost_packets": sent - received,
                    "bytes": received * payload,
                },
            }
        }
    )


def test_tcp_rates_come_from_sender_and_receiver_sums() -> None:
    result = parse_iperf3_tcp(_tcp_json(480e6, 472e6, 21))
    assert result.sender_bps == 480e6
    assert result.receiver_bps == 472e6
    assert result.retransmits == 21
    assert result.seconds == pytest.approx(3.01)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("iperf3: error - unable to connect", "not JSON"),
        (json.dumps({"error": "unable to connect to server"}), "unable to connect"),
        (json.dumps({"end": {"sum_sent": {"bits_per_second": 1.0}}}), "sum_received"),
        (json.dumps([1, 2]), "not a JSON object"),
        (
            json.dumps(
                {"end": {"sum_sent": {"bits_per_second": "fast"}, "sum_received": {"seconds": 1}}}
            ),
            "bits_per_second",
        ),
    ],
)
def test_unusable_iperf3_output_is_a_bench_error(text: str, message: str) -> None:
    with pytest.raises(BenchError, match=message):
        parse_iperf3_tcp(text)


@given(
    sent=st.integers(1, 10**7),
    share=st.floats(0, 1),
    payload=st.sampled_from([16, 64, 1200]),
    seconds=st.floats(0.5, 60),
)
def test_udp_received_count_rate_and_loss(
    sent: int, share: float, payload: int, seconds: float
) -> None:
    received = int(sent * share)
    result = parse_iperf3_udp(_udp_json(sent, received, payload, seconds), payload)
    assert result.sent == sent
    assert result.received == received
    assert result.received_pps == pytest.approx(received / seconds)
    assert result.loss == pytest.approx(1 - received / sent)


def test_udp_more_received_than_sent_is_refused() -> None:
    with pytest.raises(BenchError, match="only 10 sent"):
        parse_iperf3_udp(_udp_json(10, 20, 64, 1.0), 64)


def test_udp_payload_must_be_positive() -> None:
    with pytest.raises(BenchError, match="positive"):
        parse_iperf3_udp(_udp_json(10, 5, 64, 1.0), 0)


def test_ratio_is_ours_over_theirs_and_missing_when_undefined() -> None:
    assert ratio(50.0, 200.0) == 0.25
    assert ratio(None, 1.0) is None
    assert ratio(1.0, None) is None
    assert ratio(1.0, 0.0) is None
    assert format_ratio(0.25) == "0.25x"
    assert format_ratio(None) == "n/a"


def test_table_aligns_columns_and_formats_numbers() -> None:
    text = format_table(["metric", "a", "b"], [["rate", 61961.3, None], ["share", 0.5, 12]])
    lines = text.splitlines()
    assert lines[0].split() == ["metric", "a", "b"]
    assert set(lines[1].replace(" ", "")) == {"-"}
    assert lines[2].split() == ["rate", "61,961", "-"]
    assert lines[3].split() == ["share", "0.5", "12"]
    # Numbers are right-aligned under their header.
    end = lines[0].index(" a ") + 2
    assert lines[2].index("61,961") + len("61,961") == end
    assert lines[3].index("0.5") + len("0.5") == end


def test_table_refuses_a_short_row() -> None:
    with pytest.raises(ValueError, match="cells"):
        format_table(["a", "b"], [[1]])


def test_comparison_rows_give_the_ratio_and_tolerate_a_missing_implementation() -> None:
    rows = comparison_rows(
        [("pps", "packets/s"), ("mbps", "Mbit/s")],
        {"miredo": {"pps": 1000.0, "mbps": 500.0}, "teredo": {"pps": 250.0}},
    )
    assert rows == [["packets/s", 1000.0, 250.0, "0.25x"], ["Mbit/s", 500.0, None, "n/a"]]
    only_miredo = comparison_rows([("pps", "p")], {"miredo": {"pps": 1.0}})
    assert only_miredo == [["p", 1.0, None, "n/a"]]


def test_json_line_is_one_sorted_line_and_refuses_nan() -> None:
    line = json_line("client", {"z": 1, "a": [1.5, None]})
    assert "\n" not in line
    assert json.loads(line) == {"benchmark": "client", "z": 1, "a": [1.5, None]}
    assert line.index('"a"') < line.index('"benchmark"') < line.index('"z"')
    with pytest.raises(ValueError, match="not JSON compliant"):
        json_line("x", {"v": float("nan")})


def test_median_and_impl_choice() -> None:
    assert median([0.3, 0.1, 0.2]) == 0.2
    assert median([]) is None
    assert parse_impls("both") == ["miredo", "teredo"]
    assert parse_impls(" Teredo ") == ["teredo"]
    with pytest.raises(ValueError, match="choose"):
        parse_impls("windows")


def test_proc_parsers() -> None:
    assert parse_loadavg("0.30 0.40 0.48 1/234 5678\n") == "0.30 0.40 0.48"
    with pytest.raises(ValueError, match="loadavg"):
        parse_loadavg("0.3")
    # A command name with spaces and parentheses must not shift the fields.
    fields = ["S", *[str(n) for n in range(4, 14)], "700", "42", "0", "0"]
    stat = "1234 (odd ) name) " + " ".join(fields)
    assert parse_stat_cpu_ticks(stat) == 742
    status = "Name:\tmiredo\nVmPeak:\t  9000 kB\nVmRSS:\t    4712 kB\nThreads:\t3\n"
    assert parse_vm_rss(status) == 4712 * 1024
    with pytest.raises(ValueError, match="VmRSS"):
        parse_vm_rss("Name:\tkthreadd\n")


def test_proc_readers_see_this_process() -> None:
    assert rss_bytes([os.getpid()]) > 1 << 20
    sum(i * i for i in range(200_000))  # some CPU so the tick count is not zero
    assert cpu_seconds([os.getpid()]) > 0
    assert rss_bytes([]) == 0


@given(st.integers(0, MAX_FAKE_PEERS - 1))
def test_peer_address_embeds_the_fake_server_and_its_own_mapping(index: int) -> None:
    ipv4, port = peer_mapping(index)
    assert PORT_FIRST <= port <= 65535
    first = int(ipaddress.IPv4Address(MAPPED_FIRST))
    assert first <= ipv4 < first + MAPPED_COUNT
    assert peer_index(ipv4, port) == index
    decoded = TeredoAddress.parse(str(ipaddress.IPv6Address(peer_address(index))))
    assert decoded is not None
    assert str(decoded.server_ipv4) == FAKE_SERVER
    assert decoded.flags == 0  # not cone: the relay must send bubbles
    assert (int(decoded.client_ipv4), decoded.port) == (ipv4, port)
    assert peer_index_of_address(peer_address(index)) == index


def test_peer_addresses_are_distinct_and_in_the_lab_ranges() -> None:
    sample = [*range(70_000), *range(MAX_FAKE_PEERS - 1000, MAX_FAKE_PEERS)]
    assert len({peer_address(i) for i in sample}) == len(sample)
    lab_v4 = ipaddress.IPv4Network("198.51.100.0/24")
    for i in (0, 64511, 64512, MAX_FAKE_PEERS - 1):
        assert ipaddress.IPv4Address(peer_mapping(i)[0]) in lab_v4
    assert MAX_FAKE_PEERS >= 1_000_000


@pytest.mark.parametrize("index", [-1, MAX_FAKE_PEERS])
def test_peer_index_outside_the_range_is_refused(index: int) -> None:
    with pytest.raises(ValueError, match="outside"):
        peer_mapping(index)


def test_mappings_of_no_fake_peer() -> None:
    first = int(ipaddress.IPv4Address(MAPPED_FIRST))
    assert peer_index(first - 1, 5000) is None
    assert peer_index(first + MAPPED_COUNT, 5000) is None
    assert peer_index(first, PORT_FIRST - 1) is None
    assert peer_index_of_address(b"\x20\x01\x0d\xb8" + bytes(12)) is None
    assert peer_index_of_address(b"short") is None


def test_median_results_per_key_ignoring_rounds_that_missed_it() -> None:
    samples: list[dict[str, float | None]] = [
        {"pps": 10.0, "cpu": None},
        {"pps": 30.0, "cpu": 5.0},
        {"pps": 20.0, "new": 1.0},
    ]
    assert median_results(samples) == {"pps": 20.0, "cpu": 5.0, "new": 1.0}
    assert median_results([]) == {}


def test_rounds_alternate_implementations_and_a_failure_becomes_a_note() -> None:
    calls: list[str] = []

    def measure(impl: str) -> dict[str, float | None]:
        calls.append(impl)
        if impl == "teredo" and len(calls) == 2:
            raise BenchError("not qualified")
        if impl == "miredo" and len(calls) == 5:
            raise LabError("client1: the Teredo client exited")
        return {"rate": float(len(calls))}

    notes: list[str] = []
    results = run_rounds(["miredo", "teredo"], 3, measure, notes)
    assert calls == ["miredo", "teredo"] * 3
    assert results == {"miredo": {"rate": 2.0}, "teredo": {"rate": 5.0}}
    assert notes == [
        "teredo, round 1: not qualified",
        "miredo, round 3: client1: the Teredo client exited",
    ]


def test_load_is_shown_but_never_given_a_ratio() -> None:
    rows = comparison_rows(
        [("load1", "load")], {"miredo": {"load1": 1.0}, "teredo": {"load1": 2.0}}
    )
    assert rows == [["load", 1.0, 2.0, "n/a"]]


def test_udp_counters_of_a_namespace() -> None:
    text = (
        "Ip: Forwarding DefaultTTL\nIp: 1 64\n"
        "Udp: InDatagrams NoPorts InErrors OutDatagrams RcvbufErrors SndbufErrors\n"
        "Udp: 944328 0 55672 944328 55672 0\n"
        "UdpLite: InDatagrams NoPorts\nUdpLite: 0 0\n"
    )
    counters = parse_snmp_udp(text)
    assert counters["RcvbufErrors"] == 55672
    assert counters["InDatagrams"] == 944328
    with pytest.raises(ValueError, match="Udp"):
        parse_snmp_udp("Ip: Forwarding\nIp: 1\n")


def test_udp6_socket_buffer_drops_of_a_namespace() -> None:
    text = "Udp6InDatagrams                 \t298674\nUdp6RcvbufErrors                \t166\n"
    assert parse_snmp6_udp_rcvbuf(text) == 166
    with pytest.raises(ValueError, match="Udp6RcvbufErrors"):
        parse_snmp6_udp_rcvbuf("Ip6InReceives 5\n")


def test_link_drops_from_ip_json() -> None:
    link = {"ifname": "teredo", "stats64": {"rx": {"dropped": 3}, "tx": {"dropped": 52000}}}
    assert parse_link_drops(json.dumps([link])) == (3, 52000)
    with pytest.raises(ValueError, match="ip -s -j link"):
        parse_link_drops(json.dumps([{"ifname": "teredo"}]))
    with pytest.raises(ValueError, match="ip -s -j link"):
        parse_link_drops("Device does not exist")


def test_proc_stat_busy_counts_softirq_and_not_idle() -> None:
    from bench.lab_bench import parse_proc_stat

    cpu = parse_proc_stat("cpu  10 1 5 1000 7 2 3 4 0 0\ncpu0 5 0 2 500 3 1 1 2 0 0\n")
    assert (cpu.busy, cpu.softirq, cpu.total) == (25, 3, 1032)
    with pytest.raises(ValueError, match="cpu line"):
        parse_proc_stat("cpu0 1 2 3\n")
