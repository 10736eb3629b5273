"""Kernel map memory for the relay's trusted-peer mirror: `python -m bench.kmap` (root; issue 8).

Issue 8 counts the kernel maps (`bpftool map show`, bytes_memlock) with the relay's RSS: at
most 40 MiB idle and 100 B per added peer at 10^5 and 10^6 peers. This measures, on this
kernel, the map shapes that could hold the trusted peers (16-byte key, 16-byte value, as
`relay_peers`), each created here and closed again (names `kb_...`, never pinned):

- `hash`: BPF_MAP_TYPE_HASH preallocated (flags 0);
- `hash-lazy`: the same with BPF_F_NO_PREALLOC (the bucket array at creation, each element
  when inserted);
- `lru`: BPF_MAP_TYPE_LRU_HASH (always preallocated; when full, an insert evicts the least
  recently used entry), including an insert of twice max_entries: does it stay within its
  memory and keep max_entries entries;
- `array-of-maps`: a one-slot BPF_MAP_TYPE_ARRAY_OF_MAPS over a NO_PREALLOC hash with
  inner maps of other max_entries (accepted for hashes without BPF_F_INNER_MAP, which only
  arrays take), the growing-map design: the
  outer map's own cost and an inner map swapped for a larger one;
- `slab`: whether bytes_memlock of a NO_PREALLOC hash is what the kernel really allocates:
  /proc/meminfo (Slab + Percpu + KernelStack-free: the kernel's own memory) before and after
  filling 10^6 entries, beside the bytes_memlock change (noisy on a shared machine: the others
  allocate too; the run reports both figures).

Output: one table, then one JSON line.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import struct
import sys
from pathlib import Path
from typing import Any

from bench.relay_memory import _libbpf, _MapCreateOpts, _memlock

BPF_MAP_TYPE_HASH = 1
BPF_MAP_TYPE_LRU_HASH = 9
BPF_MAP_TYPE_ARRAY_OF_MAPS = 12
BPF_F_NO_PREALLOC = 1
KEY = VALUE = 16
MIB = 1 << 20
BATCH = 65536


def create(
    kind: int,
    name: str,
    entries: int,
    flags: int = 0,
    *,
    key: int = KEY,
    value: int = VALUE,
    inner_fd: int = 0,
) -> int:
    """A new map's fd (the caller closes it; the map goes with its last fd)."""
    lib = _libbpf()
    opts = _MapCreateOpts(sz=ctypes.sizeof(_MapCreateOpts), map_flags=flags, inner_map_fd=inner_fd)
    fd: int = lib.bpf_map_create(kind, name.encode(), key, value, entries, ctypes.byref(opts))
    if fd < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"bpf_map_create {name}: {os.strerror(err)}")
    return fd


def fill(fd: int, first: int, count: int) -> None:
    """Insert keys first..first+count-1 (2001:0::<i>), zero values, in batches."""
    lib = _libbpf()
    for start in range(first, first + count, BATCH):
        n = min(BATCH, first + count - start)
        keys = b"".join(struct.pack("!IIQ", 0x20010000, 0, start + k) for k in range(n))
        kbuf = ctypes.create_string_buffer(keys, len(keys))
        vbuf = ctypes.create_string_buffer(bytes(VALUE * n), VALUE * n)
        got = ctypes.c_uint32(n)
        if lib.bpf_map_update_batch(fd, kbuf, vbuf, ctypes.byref(got), None) < 0:
            err = ctypes.get_errno()
            raise OSError(err, f"bpf_map_update_batch: {os.strerror(err)}")


def count_keys(fd: int) -> int:
    """Entries in a map, walked with bpf_map_get_next_key."""
    lib = _libbpf()
    lib.bpf_map_get_next_key.restype = ctypes.c_int
    lib.bpf_map_get_next_key.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p]
    cur, nxt = ctypes.create_string_buffer(KEY), ctypes.create_string_buffer(KEY)
    n, prev = 0, None
    while lib.bpf_map_get_next_key(fd, prev, nxt) == 0:
        n += 1
        ctypes.memmove(cur, nxt, KEY)
        prev = cur
    return n


def put_inner(outer: int, slot: int, inner: int) -> None:
    """Store map `inner` in slot `slot` of the map-of-maps `outer` (the programs see it at once)."""
    lib = _libbpf()
    lib.bpf_map_update_elem.restype = ctypes.c_int
    lib.bpf_map_update_elem.argtypes = [
        ctypes.c_int,
        ctypes.c_void_p,
        ctypes.c_void_p,
        ctypes.c_uint64,
    ]
    k, v = ctypes.c_uint32(slot), ctypes.c_uint32(inner)
    if lib.bpf_map_update_elem(outer, ctypes.byref(k), ctypes.byref(v), 0) < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"map-of-maps update: {os.strerror(err)}")


def kernel_memory() -> int:
    """Slab + Percpu of /proc/meminfo, bytes: where BPF map elements and buckets live."""
    fields = {}
    for line in Path("/proc/meminfo").read_text().splitlines():
        name, _, rest = line.partition(":")
        fields[name] = int(rest.split()[0]) * 1024
    return fields["Slab"] + fields.get("Percpu", 0) + fields.get("VmallocUsed", 0)


def hash_case(
    entries: int, fill_n: int, flags: int, kind: int = BPF_MAP_TYPE_HASH
) -> dict[str, Any]:
    fd = create(kind, "kb_hash", entries, flags)
    try:
        empty = _memlock(fd)
        fill(fd, 0, fill_n)
        full = _memlock(fd)
        kept = count_keys(fd) if entries <= 1 << 17 else None
    finally:
        os.close(fd)
    return {
        "max_entries": entries,
        "filled": fill_n,
        "kept": kept,
        "memlock_empty": empty,
        "memlock_filled": full,
        "per_entry": (full - empty) / min(fill_n, entries) if fill_n else None,
        "per_max_entry_empty": empty / entries,
    }


def array_of_maps_case() -> dict[str, Any]:
    """One slot of ARRAY_OF_MAPS over growing NO_PREALLOC hashes (a hash inner map may have
    another max_entries than the template: htab's map_meta_equal does not compare it;
    BPF_F_INNER_MAP is for arrays only and a hash rejects it, EINVAL)."""
    flags = BPF_F_NO_PREALLOC
    template = create(BPF_MAP_TYPE_HASH, "kb_inner0", 4096, flags)
    out: dict[str, Any] = {}
    outer = create(BPF_MAP_TYPE_ARRAY_OF_MAPS, "kb_outer", 1, 0, key=4, value=4, inner_fd=template)
    try:
        out["outer_memlock"] = _memlock(outer)
        swapped = []
        for size in (4096, 65536, 1 << 20):
            inner = create(BPF_MAP_TYPE_HASH, "kb_inner", size, flags)
            put_inner(outer, 0, inner)
            swapped.append({"inner_max_entries": size, "inner_memlock_empty": _memlock(inner)})
            os.close(inner)  # the outer map holds it now
        out["swaps"] = swapped
    finally:
        os.close(outer)
        os.close(template)
    return out


def slab_case(entries: int) -> dict[str, Any]:
    fd = create(BPF_MAP_TYPE_HASH, "kb_slab", 1 << 20, BPF_F_NO_PREALLOC)
    try:
        mem0, lock0 = kernel_memory(), _memlock(fd)
        fill(fd, 0, entries)
        mem1, lock1 = kernel_memory(), _memlock(fd)
    finally:
        os.close(fd)
    return {
        "entries": entries,
        "memlock_per_entry": (lock1 - lock0) / entries,
        "kernel_memory_per_entry": (mem1 - mem0) / entries,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.kmap", description=__doc__)
    parser.add_argument("--no-slab", action="store_true", help="skip the /proc/meminfo case")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        print("bench.kmap: needs root (bpf_map_create)", file=sys.stderr)
        return 2
    rows: list[tuple[str, dict[str, Any]]] = []
    for n in (16384, 1 << 20):
        rows.append((f"hash prealloc {n}", hash_case(n, min(n, 100_000), 0)))
    for n in (16384, 65536, 1_000_000, 1 << 20):
        rows.append((f"hash NO_PREALLOC {n}", hash_case(n, min(n, 100_000), BPF_F_NO_PREALLOC)))
    for n in (4096, 16384, 32768, 65536, 1 << 20):
        rows.append(
            (
                f"lru {n} (filled 2x)",
                hash_case(n, 2 * n if n < 1 << 20 else 100_000, 0, BPF_MAP_TYPE_LRU_HASH),
            )
        )
    record: dict[str, Any] = {"maps": dict(rows), "array_of_maps": array_of_maps_case()}
    if not args.no_slab:
        record["slab"] = slab_case(1_000_000)
    print(f"{'map':32} {'memlock empty':>14} {'after fill':>12} {'kept':>8} {'B/entry':>8}")
    for name, r in rows:
        per = r["per_entry"]
        kept = "-" if r["kept"] is None else str(r["kept"])
        per_text = "-" if per is None else f"{per:.1f}"
        print(
            f"{name:32} {r['memlock_empty'] / MIB:11.2f} MiB {r['memlock_filled'] / MIB:8.2f} MiB"
            f" {kept:>8} {per_text:>8}"
        )
    print(json.dumps({"benchmark": "kmap", **record}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
