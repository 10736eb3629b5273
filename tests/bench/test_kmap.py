"""The kernel map facts the relay's trusted-peer map sizing rests on (docs/peers.md "Kernel
maps", bench/kmap.py): an LRU hash keeps its memory and max_entries entries when inserted past
full, a NO_PREALLOC hash pays its bucket array at creation and 88 B per element, a hash inner
map of another size is accepted. Maps `kb_*`, created and closed here. Needs root/CAP_BPF:
fails with the reason otherwise."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from bench.relay_memory import _memlock

from bench import kmap


@pytest.fixture
def fds() -> Iterator[list[int]]:
    opened: list[int] = []
    yield opened
    for fd in opened:
        os.close(fd)


def _create(fds: list[int], kind: int, entries: int, flags: int = 0, **kw: int) -> int:
    try:
        fd = kmap.create(kind, "kb_test", entries, flags, **kw)
    except OSError as exc:
        pytest.fail(f"cannot create a BPF map (needs root/CAP_BPF): {exc}")
    fds.append(fd)
    return fd


def test_lru_hash_evicts_instead_of_growing(fds: list[int]) -> None:
    fd = _create(fds, kmap.BPF_MAP_TYPE_LRU_HASH, 4096)
    empty = _memlock(fd)
    kmap.fill(fd, 0, 2 * 4096)  # an insert into a full LRU map evicts; it never fails
    assert _memlock(fd) == empty
    assert kmap.count_keys(fd) == 4096


def test_no_prealloc_hash_pays_buckets_then_each_element(fds: list[int]) -> None:
    fd = _create(fds, kmap.BPF_MAP_TYPE_HASH, 16384, kmap.BPF_F_NO_PREALLOC)
    empty = _memlock(fd)
    assert 16 * 16384 <= empty < 16 * 16384 + 4096  # the bucket array, 16 B per max_entries
    kmap.fill(fd, 0, 1000)
    assert (_memlock(fd) - empty) / 1000 == pytest.approx(88, abs=16)


def test_array_of_maps_takes_a_larger_hash_inner_map(fds: list[int]) -> None:
    template = _create(fds, kmap.BPF_MAP_TYPE_HASH, 4096, kmap.BPF_F_NO_PREALLOC)
    outer = _create(fds, kmap.BPF_MAP_TYPE_ARRAY_OF_MAPS, 1, key=4, value=4, inner_fd=template)
    bigger = _create(fds, kmap.BPF_MAP_TYPE_HASH, 65536, kmap.BPF_F_NO_PREALLOC)
    kmap.put_inner(outer, 0, bigger)  # raises OSError if the kernel refused it
