"""Helpers of the kernel data path's tests: load a shipped object and run one of its programs on
a packet given as bytes, with `bpf_prog_test_run_opts` (no device, no namespace).

A machine that cannot load BPF programs (not root, no CAP_BPF, objects not built) FAILS these
tests with the reason, never skips them.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from teredo.io.datapath import object_path
from teredo.io.libbpf import BpfError, BpfObject, BpfProgram

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
