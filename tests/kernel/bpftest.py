"""Helpers of the kernel data path's tests: load a shipped object and run one of its programs on
a packet given as bytes, with `bpf_prog_test_run_opts` (no device, no namespace).

A machine that cannot load BPF programs (not root, no CAP_BPF, objects not built) FAILS these
tests with the reason, never skips them.
"""

from __future__ import annotations

import re
import shutil
import struct
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass

import pytest

from teredo.io.datapath import object_path
from teredo.io.libbpf import BpfError, BpfObject, BpfProgram, possible_cpus

# Verdicts of a tc (sched_cls) program (include/uapi/linux/pkt_cls.h).
TC_ACT_OK = 0
TC_ACT_SHOT = 2
TC_ACT_REDIRECT = 7


@dataclass(frozen=True, slots=True)
class Verdict:
    """What a program did with one packet."""

    retval: int
    data: bytes


def load(name: str) -> BpfObject:
    """Open and load src/teredo/bpf/`name`.bpf.o; a failure fails the test with libbpf's reason."""
    try:
        obj = BpfObject(object_path(name))
        obj.load()
    except (BpfError, OSError) as exc:
        pytest.fail(
            f"cannot load {name}.bpf.o (kernel data path tests need root/CAP_BPF and the objects "
            f"built by scripts/build-bpf.sh): {exc}"
        )
    return obj


def run(program: BpfProgram, packet: bytes) -> Verdict:
    """Run `program` once on `packet` (from its Ethernet header on)."""
    result = program.test_run(packet)
    return Verdict(result.retval, result.data)


def counters(obj: BpfObject, name: str, slots: Sequence[str]) -> dict[str, int]:
    """The per-CPU counter array `name` of `obj`, summed over the CPUs, by slot name; every
    slot must be there."""
    m = obj.map(name)
    out = {}
    for i, slot in enumerate(slots):
        raw = m.lookup(struct.pack("=I", i), percpu=True)
        assert raw is not None, f"{name}[{i}] ({slot}) missing"
        out[slot] = sum(struct.unpack(f"={possible_cpus()}Q", raw))
    return out


def enumerators(name: str, enum: str) -> list[tuple[str, int]]:
    """The enumerators of `enum` in src/teredo/bpf/`name`.bpf.o, in order, with their values, as
    the compiler saw them: from the object's DWARF (clang -g) with llvm-dwarfdump. Not from its
    BTF: the BPF backend emits only the types that maps, globals and programs use there, and an
    enum of slot numbers is none of them."""
    tool = shutil.which("llvm-dwarfdump")
    if tool is None:
        pytest.fail("llvm-dwarfdump not found (scripts/setup.sh installs llvm)")
    dump = subprocess.run(
        [tool, f"--name={enum}", "--show-children", str(object_path(name))],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    found = re.findall(
        r'DW_TAG_enumerator\s+DW_AT_name\s+\("(\w+)"\)\s+DW_AT_const_value\s+\((\d+)\)', dump
    )
    assert found, f"no enum {enum} in {name}.bpf.o's debug information"
    return [(n, int(v)) for n, v in found]
