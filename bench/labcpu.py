"""The CPU time a lab uses, on a machine that others use at the same time (issue 8's "CPU per
packet": the whole machine's CPU time, softirq included, per packet).

The whole machine's /proc/stat delta is not usable on a shared machine: the others' load is as
large as ours and changes from second to second. So a lab's CPU is counted from what it runs:

- **its processes**: utime + stime of every process whose network namespace is one of the
  lab's (/proc/PID/ns/net against /run/netns/NAME): the daemons, Miredo's forked children, the
  iperf3 ends, whatever is alive at the start or at the end of the sample; plus the CPU time of
  this process's children that ended and were reaped in between (getrusage RUSAGE_CHILDREN: the
  one-off iperf3 client and server), less what was already counted of them at the start;
- **softirq outside them**: the CPU time of the ksoftirqd/N threads over the sample, less their
  rate just before it (the others' share, measured over an idle sample);
- **threaded NAPI** (bench.path `--rx threaded`): the CPU time of the napi/DEV-ID kernel threads
  that then run the veths' receive side, counted the same way (by name, less their rate just
  before): they are kernel threads, outside every network namespace.

Why not "processes + the /proc/stat softirq delta": this kernel accounts CPU time by ticks
(CONFIG_TICK_CPU_ACCOUNTING, no CONFIG_IRQ_TIME_ACCOUNTING): a tick that lands in a softirq run
in a task's context (a veth or TUN transmit processes the receive side at local_bh_enable, in
the sender) is charged to that task's stime AND to the machine's softirq counter, so adding the
two counts it twice. The softirq work that no lab process carries runs in ksoftirqd (veth and
TUN raise NET_RX from the sender's context; there is no hardware interrupt in the lab), which
is what the second term counts. The machine's softirq delta is still reported, as context.

Caveats (printed with the figures): ticks are 1/CLK_TCK s (10 ms at 100 Hz), so a sample needs
seconds of traffic; ksoftirqd also serves the others' labs: their rate before the sample is
subtracted, its change during the sample is noise; a lab process that exits during the sample
and is not our child is missed, as is what a process alive at the start used before it ended
(none does either in bench.path); with CONFIG_IRQ_TIME_ACCOUNTING the
softirq run in task context would be missed instead (not this kernel).
"""

from __future__ import annotations

import contextlib
import os
import resource
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

NETNS_DIR = Path("/run/netns")

METHOD = (
    "lab CPU = utime+stime of every process in the lab's namespaces (+ reaped children) "
    "+ ksoftirqd and napi/* kthread time net of their rate before the run; tick accounting "
    "(1/CLK_TCK s), no IRQ time accounting: softirq in a lab process's context is inside its stime"
)


def parse_stat(text: str) -> tuple[int, int, str]:
    """(utime + stime ticks, start time ticks, comm) from the contents of /proc/PID/stat."""
    comm = text[text.find("(") + 1 : text.rfind(")")]
    # The command name (field 2) may hold spaces and parentheses: split after the last ')'.
    rest = text[text.rfind(")") + 2 :].split()
    # rest[0] is field 3 (state): utime, stime are fields 14, 15; starttime is field 22.
    return int(rest[11]) + int(rest[12]), int(rest[19]), comm


def kernel_thread(comm: str) -> str | None:
    """ "ksoftirqd" or "napi" for the kernel threads that carry a lab's receive work outside
    its namespaces (ksoftirqd/N; napi/DEV-ID of a device in threaded NAPI mode), else None."""
    if comm.startswith("ksoftirqd/"):
        return "ksoftirqd"
    if comm.startswith("napi/"):
        return "napi"
    return None


def _read(path: str) -> str | None:
    try:
        return Path(path).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None


def _pids() -> list[int]:
    return [int(p) for p in os.listdir("/proc") if p.isdigit()]


def netns_inodes(names: Iterable[str]) -> set[tuple[int, int]]:
    """(device, inode) of the named network namespaces (`ip netns add` bind mounts)."""
    found: set[tuple[int, int]] = set()
    for name in names:
        with contextlib.suppress(OSError):
            st = os.stat(NETNS_DIR / name)
            found.add((st.st_dev, st.st_ino))
    return found


def _in_netns(pid: int, inodes: set[tuple[int, int]]) -> bool:
    try:
        st = os.stat(f"/proc/{pid}/ns/net")
    except OSError:
        return False
    return (st.st_dev, st.st_ino) in inodes


@dataclass(frozen=True)
class CpuSample:
    """One look at the lab's processes and the machine's ksoftirqd threads, in ticks."""

    #: (pid, start time) -> utime + stime of each process in the lab's namespaces.
    lab: Mapping[tuple[int, int], int]
    #: utime + stime of every ksoftirqd/N thread together.
    ksoftirqd: int
    #: CPU seconds of this process's reaped children so far.
    children: float
    #: utime + stime of every napi/DEV-ID thread together (threaded NAPI; 0 when none).
    napi: int = 0


def sample(namespaces: Iterable[str]) -> CpuSample:
    """The CPU counters of the processes in `namespaces` and of ksoftirqd, now."""
    inodes = netns_inodes(namespaces)
    lab: dict[tuple[int, int], int] = {}
    ksoftirqd = napi = 0
    for pid in _pids():
        text = _read(f"/proc/{pid}/stat")
        if text is None:
            continue
        try:
            ticks, start, comm = parse_stat(text)
        except (ValueError, IndexError):
            continue
        kind = kernel_thread(comm)
        if kind == "ksoftirqd":
            ksoftirqd += ticks
        elif kind == "napi":
            napi += ticks
        elif _in_netns(pid, inodes):
            lab[(pid, start)] = ticks
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return CpuSample(
        lab=lab, ksoftirqd=ksoftirqd, children=usage.ru_utime + usage.ru_stime, napi=napi
    )


@dataclass(frozen=True)
class LabCpu:
    """CPU seconds between two samples."""

    processes: float  # the lab's processes (those alive at either end, and reaped children)
    ksoftirqd: float  # the ksoftirqd threads, all of them (the others' share included)
    napi: float = 0.0  # the napi/* threads, all of them (the others' share included)

    def total(self, ksoftirqd_base: float, napi_base: float = 0.0) -> float:
        """The lab's CPU: its processes + ksoftirqd less `ksoftirqd_base` + the napi threads
        less `napi_base` (the others' share over the same time, from their rate before),
        never below the processes'."""
        return (
            self.processes
            + max(0.0, self.ksoftirqd - ksoftirqd_base)
            + max(0.0, self.napi - napi_base)
        )


def between(before: CpuSample, after: CpuSample, *, ended_are_children: bool = False) -> LabCpu:
    """The CPU used between `before` and `after`: the lab's processes alive at the end (less
    what `before` counted of each), this process's children reaped in between (their whole
    lifetime: bench.path starts the iperf3 ends after `before` and reaps them before `after`;
    run nothing else as a child in between), ksoftirqd and the napi threads.

    `ended_are_children`: the lab processes alive at `before` and gone at `after` are such
    reaped children (ends started before the sample so that their interpreter's start-up
    stays out, bench_anycast): what `before` counted of them is taken off the children's
    lifetime, which the reaping reports whole."""
    tick = os.sysconf("SC_CLK_TCK")
    ticks = sum(end - before.lab.get(key, 0) for key, end in after.lab.items())
    children = max(0.0, after.children - before.children)
    if ended_are_children:
        ended = sum(t for key, t in before.lab.items() if key not in after.lab)
        children = max(0.0, children - ended / tick)
    return LabCpu(
        processes=ticks / tick + children,
        ksoftirqd=(after.ksoftirqd - before.ksoftirqd) / tick,
        napi=(after.napi - before.napi) / tick,
    )
