"""The counter names of io/kclient.py and io/krelay.py against the C enums of the programs'
counter slots, read from the compiled objects (teredo_encap.h's shared enum teredo_counter, then
each program's own): a slot added, moved or renamed in C without Python, or the other way round,
fails here instead of shifting every name of `teredo status` by one."""

from __future__ import annotations

import pytest

from teredo.io import kclient, krelay
from teredo.io.kmirror import SHARED_COUNTERS

from .bpftest import enumerators


def names(slots: list[tuple[str, int]]) -> tuple[str, ...]:
    return tuple(name.removeprefix("C_").lower() for name, _ in slots)


@pytest.mark.parametrize(
    ("obj", "enum", "counters"),
    [
        (kclient.OBJECT, "client_counter", kclient.COUNTERS),
        (krelay.OBJECT, "relay_counter", krelay.COUNTERS),
    ],
)
def test_counter_names_are_the_c_enums_in_order(
    obj: str, enum: str, counters: tuple[str, ...]
) -> None:
    shared = enumerators(obj, "teredo_counter")
    own = enumerators(obj, enum)
    assert shared[-1] == ("C_SHARED", len(SHARED_COUNTERS))
    assert own[-1][0] == "C_MAX"
    slots = shared[:-1] + own[:-1]
    assert [value for _, value in slots] == list(range(len(slots))), "slots 0, 1, 2... in order"
    assert names(shared[:-1]) == SHARED_COUNTERS
    assert names(slots) == counters
    assert own[-1][1] == len(counters), "the counter map has one slot a name"
