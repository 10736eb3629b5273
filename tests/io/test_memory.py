"""release_free_memory: glibc's malloc_trim, found and called (this machine runs glibc)."""

from __future__ import annotations

from teredo.io.memory import release_free_memory


def test_free_heap_is_returned_with_glibc() -> None:
    blocks = [bytes(4096) for _ in range(2000)]
    del blocks
    assert release_free_memory() is True
