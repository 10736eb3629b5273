"""The toolchain end to end: the probe object builds, loads, runs on bytes, counts in a per-CPU
map, and passes the packet on unchanged (docs/kernel.md)."""

from __future__ import annotations

import struct

import pytest

from teredo.io.libbpf import BpfError, possible_cpus

from .bpftest import TC_ACT_OK, load, run


def test_probe_passes_the_packet_unchanged_and_counts_it() -> None:
    with load("teredo_probe") as obj:
        program = obj.program("probe_pass")
        packet = bytes(range(14)) + b"\x86\xdd" + bytes(60)
        verdicts = [run(program, packet) for _ in range(3)]
        assert all(v.retval == TC_ACT_OK and v.data == packet for v in verdicts)
        raw = obj.map("probe_seen").lookup(struct.pack("=I", 0), percpu=True)
        assert raw is not None
        per_cpu = struct.unpack(f"={possible_cpus()}Q", raw)
        assert sum(per_cpu) == 3


def test_errors_name_the_call_and_the_errno() -> None:
    with load("teredo_probe") as obj:
        with pytest.raises(BpfError, match=r"program nope: ENOENT") as info:
            obj.program("nope")
        assert info.value.errno == 2
        seen = obj.map("probe_seen")
        with pytest.raises(ValueError, match="key of 2 bytes, not 4"):
            seen.lookup(b"xx")
        # An array map has no deletable keys: the kernel says EINVAL, and the error says so.
        with pytest.raises(BpfError, match=r"map probe_seen: delete: EINVAL"):
            seen.delete(struct.pack("=I", 0))
