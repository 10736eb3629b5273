"""bench.bench_anycast's parsing of a relay's `teredo status --json`. No root, no lab."""

from __future__ import annotations

from bench.bench_anycast import RelayCounts, parse_relay_status


def _doc(datapath: str, to: int, frm: int, kernel: dict[str, int] | None) -> dict[str, object]:
    return {
        "role": "relay",
        "status": {
            "datapath": datapath,
            "kernel": {"counters": kernel} if kernel is not None else None,
            "counters": {"to_teredo": to, "from_teredo": frm},
        },
    }


def test_kernel_path_counts_split_kernel_and_python() -> None:
    got = parse_relay_status([_doc("kernel", 1000, 40, {"encap": 990, "decap": 30})])
    assert got == RelayCounts("kernel", 990, 30, 1000, 40)
    assert (got.python_encap, got.python_decap) == (10, 10)


def test_python_path_and_the_delta_over_a_run() -> None:
    before = parse_relay_status([_doc("user", 5, 1, None)])
    after = parse_relay_status([_doc("user", 105, 3, None)])
    run = after.since(before)
    assert run == RelayCounts("user", 0, 0, 100, 2)
    assert run.python_encap == 100


def test_no_answer_or_junk_is_unknown_not_a_crash() -> None:
    assert parse_relay_status(None) == RelayCounts("?", 0, 0, 0, 0)
    junk = [{"role": "relay", "status": {"counters": {"to_teredo": "x"}, "kernel": 3}}]
    assert parse_relay_status(junk) == RelayCounts("user", 0, 0, 0, 0)
    assert parse_relay_status([{"role": "server", "status": {}}]).datapath == "?"
