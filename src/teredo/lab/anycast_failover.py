"""Relay failover under traffic in the anycast lab (issue 11): a stream of echoes through the
relays while one of them is killed or drained, and what it saw (docs/scale.md, failover)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from teredo.lab.anycast import (
    RELAY_ANYCAST_V4,
    carrying_relay,
    daemon_record,
    load_spec,
    relay_link,
    relay_link_v4,
    wait_without,
)
from teredo.lab.system import LabError, ProcRecord
from teredo.lab.topology import TEREDO_PREFIX, Lab, ping_counts


@dataclass(frozen=True)
class Failover:
    """What a stream of echoes from the native host to a client saw while one relay stopped."""

    relay: str
    how: str  # "SIGKILL" or "SIGTERM"
    withdraw_seconds: float  # signal -> up6's kernel route without that relay
    sent: int
    received: int
    max_rtt_ms: float  # echoes held in the new relay's queue while it bubbles the client
    interval: float
    #: Echo replies received twice (ping's "+N duplicates"): two relays both forwarding one
    #: packet during the handover would show here; 0 in every run measured (docs/scale.md).
    duplicates: int = 0
    #: With --anycast-ipv4: signal -> up6's route to the anycast /32 without that relay (its
    #: own BGP session, over IPv4), None otherwise.
    withdraw_v4_seconds: float | None = None

    @property
    def lost(self) -> int:
        return self.sent - self.received

    @property
    def outage_seconds(self) -> float:
        """How long the client was unreachable: lost echoes at `interval` each, plus the
        longest wait of a delivered one (a queued echo arrives late, not never)."""
        return self.lost * self.interval + self.max_rtt_ms / 1000

    def line(self) -> str:
        dup = f", {self.duplicates} DUPLICATED" if self.duplicates else ""
        v4 = self.withdraw_v4_seconds
        v4_part = "" if v4 is None else f" (the anycast IPv4 /32 in {v4 * 1000:.0f} ms)"
        withdrawn = f"withdrawn in {self.withdraw_seconds * 1000:.0f} ms{v4_part}"
        return (
            f"{self.how} {self.relay}: {withdrawn}, "
            f"{self.received}/{self.sent} echoes ({self.lost} lost{dup}), longest round trip "
            f"{self.max_rtt_ms:.1f} ms: client unreachable for {self.outage_seconds:.3f} s"
        )


_RTT = re.compile(r"time=([\d.]+) ms")
_DUPLICATES = re.compile(r"\+(\d+) duplicates")


def ping_duplicates(output: str) -> int:
    """Echo replies ping received more than once ("+N duplicates" in its summary)."""
    found = _DUPLICATES.search(output)
    return int(found.group(1)) if found else 0


def drained_log(record: ProcRecord, *, timeout: float = 30.0) -> str:
    """Wait for a relay or server stopped by SIGTERM to exit after its drain; its log, checked
    to say that it withdrew its routes, then drained, then stopped, in that order (the drain of
    docs/scale.md). LabError when it outlives `timeout` or its log says otherwise."""
    deadline = time.monotonic() + timeout
    while record.alive():
        if time.monotonic() > deadline:
            raise LabError(f"{record.name} still running {timeout:g} s after SIGTERM")
        time.sleep(0.1)
    log = Path(record.log).read_text(encoding="utf-8", errors="replace")
    marks = [log.find(word) for word in ("withdrawn", "draining", "stopping")]
    if -1 in marks or marks != sorted(marks):
        raise LabError(f"{record.name}: not withdrawn, drained, stopped in that order:\n{log}")
    return log


def stop_relay_under_ping(
    lab: Lab,
    target: str,
    how: signal.Signals,
    *,
    relay: str | None = None,
    interval: float = 0.02,
    seconds: float = 4.0,
    lead: float = 1.0,
) -> Failover:
    """Ping `target` from the native host every `interval` for `seconds`; `lead` seconds in,
    send `how` to the relay carrying that traffic (or `relay`), and measure."""
    victim = relay or carrying_relay(lab, target)
    if victim is None:
        raise LabError(f"no running relay carries {target}")
    found = stop_relay_under_pings(
        lab, [("native", target)], how, victim, interval=interval, seconds=seconds, lead=lead
    )
    return found[0]


def stop_relay_under_pings(
    lab: Lab,
    streams: Sequence[tuple[str, str]],
    how: signal.Signals,
    relay: str,
    *,
    interval: float = 0.02,
    seconds: float = 4.0,
    lead: float = 1.0,
) -> list[Failover]:
    """stop_relay_under_ping with several streams of echoes at once, each (source host,
    target address): the native host to clients, or clients to the native host."""
    spec = load_spec(lab)
    if spec is None:
        raise LabError("not an anycast lab")
    record = daemon_record(lab, relay)
    if record is None or not record.alive():
        raise LabError(f"no running {relay}")
    index = int(relay.removeprefix("relay"))
    gateway = relay_link(index)[1]
    count = int(seconds / interval)
    results: dict[tuple[str, str], subprocess.CompletedProcess[str]] = {}

    def ping(stream: tuple[str, str]) -> None:
        argv = ["ping", "-6", "-n", "-i", f"{interval:g}", "-c", str(count)]
        argv += ["-w", str(int(seconds + 15)), stream[1]]
        results[stream] = lab.exec(stream[0], argv, timeout=seconds + 20, check=False)

    threads = [
        threading.Thread(target=ping, args=(s,), name="failover-ping", daemon=True) for s in streams
    ]
    for thread in threads:
        thread.start()
    time.sleep(lead)
    os.kill(record.pid, how)
    signalled = time.monotonic()
    # Its path gone from up6 (one of several ECMP paths, or the active one of active/standby).
    withdraw = wait_without(lab, "up6", TEREDO_PREFIX, gateway, timeout=15.0)
    withdraw_v4 = None
    if spec.anycast_ipv4:
        anycast = f"{RELAY_ANYCAST_V4}/32"
        wait_without(lab, "up6", anycast, relay_link_v4(index)[1], timeout=15.0)
        withdraw_v4 = time.monotonic() - signalled
    for thread in threads:
        thread.join(seconds + 25)
    found = []
    for stream in streams:
        output = results[stream].stdout if stream in results else ""
        counts = ping_counts(output) or (count, 0)
        rtts = [float(t) for t in _RTT.findall(output)]
        found.append(
            Failover(
                relay=relay,
                how=how.name,
                withdraw_seconds=withdraw,
                sent=counts[0],
                received=counts[1],
                max_rtt_ms=max(rtts, default=0.0),
                interval=interval,
                duplicates=ping_duplicates(output),
                withdraw_v4_seconds=withdraw_v4,
            )
        )
    return found
