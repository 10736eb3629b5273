"""The fuzzers' short CI run (issue 12): every stored corpus input and crasher of every target
(tests/vectors/fuzz/), then a seeded run of the random engine. The million-input runs are
separate commands (docs/robustness.md, "Fuzzing")."""

from __future__ import annotations

import pytest
from bench.fuzz import CRASHERS, TARGETS, FuzzCrashError, corpus_files, main, mutate, run_random

# A few thousand inputs per target: about a second each on a loaded machine.
CI_RUNS = 3000


@pytest.mark.parametrize("target", sorted(TARGETS))
def test_stored_corpus_and_crashers_replay_clean(target: str) -> None:
    one = TARGETS[target].one_input
    for data in TARGETS[target].seeds():
        one(data)
    for path in corpus_files(target):
        one(path.read_bytes())


@pytest.mark.parametrize("target", sorted(TARGETS))
def test_seeded_random_run(target: str) -> None:
    count, _secs = run_random(target, CI_RUNS, seed=12)
    assert count >= CI_RUNS


def test_every_crasher_names_a_target() -> None:
    for path in CRASHERS.glob("[!.]*"):
        assert path.name.split("-", 1)[0] in TARGETS, path


def test_a_raising_parser_is_reported_as_a_crash(monkeypatch: pytest.MonkeyPatch) -> None:
    """The harness can fail: a target that raises is a Crash carrying its input."""
    target = TARGETS["wire"]

    def boom(data: bytes) -> None:
        if len(data) > 3:
            raise IndexError("planted")

    monkeypatch.setitem(TARGETS, "wire", type(target)("wire", "x", boom, target.seeds))
    with pytest.raises(FuzzCrashError) as info:
        run_random("wire", 10, seed=1)
    assert len(info.value.data) > 3
    assert isinstance(info.value.error, IndexError)


def test_mutations_are_bounded_and_seeded() -> None:
    import random

    pool = [bytes(range(200))]
    a = [mutate(random.Random(5), pool[0], pool, limit=300) for _ in range(50)]  # noqa: S311
    b = [mutate(random.Random(5), pool[0], pool, limit=300) for _ in range(50)]  # noqa: S311
    assert a == b
    assert all(len(x) <= 300 for x in a)


def test_list_and_usage(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--list"]) == 0
    assert "wire" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main([])
