"""Faults that break a working Teredo path, and the time until it works again by itself
(issue 12, "Faults"). The system test asserts on ours; bench/recovery.py runs the same
scenarios against Miredo's server, relay and client for docs/robustness.md.

"Working" is one probe round that succeeds both ways: a ping from the client to the native
host, then a ping from the native host to the client's Teredo address of the moment (it may
have changed). Rounds follow each other at once (a failed ping waits `PROBE_WAIT`), so the
figures are good to about one round (up to 2 s while failing, about 0.1 s once working).

Each scenario starts from a working path, applies its fault, and counts from the moment the
fault is over (the NAT's state gone, the daemon started again) until the first working round:

- `nat_mapping_change`: the NAT's public port changes (its masquerade rule gets a port range
  that excludes the port in use, and its conntrack table is flushed), so the client's mapping,
  hence its Teredo address (RFC 4380 section 4), must change;
- `nat_reboot`: the NAT's conntrack table flushed (a NAT that restarts forgets every mapping;
  Linux masquerade may give the same public port back);
- `server_restart`, `relay_restart`: the daemon stopped, `outage` seconds without it, started
  again with empty state;
- `client_restart`: the client stopped and started again (it qualifies from scratch);
- `tun_removed`: `ip link del teredo` under the running client.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass

from teredo.lab.roles import TUN_NAME, Impl, Role
from teredo.lab.system import LabError
from teredo.lab.topology import NATIVE_V6, Lab

PROBE_WAIT = 1  # seconds a probe ping waits for its answer
NAT_OUTSIDE = "eth0"  # the NAT's public interface (Lab._build_site)

SCENARIOS = (
    "nat_mapping_change",
    "nat_reboot",
    "server_restart",
    "relay_restart",
    "client_restart",
    "tun_removed",
)


@dataclass(frozen=True, slots=True)
class Recovery:
    scenario: str
    seconds: float | None  # from the fault's end to the first working round; None: never
    address_changed: bool  # the client has a Teredo address after, not the one before
    rounds: int  # probe rounds until working (or until given up)


def _pinged(lab: Lab, host: str, dest: str) -> bool:
    proc = lab.exec(
        host,
        ["ping", "-6", "-n", "-q", "-c", "1", "-W", str(PROBE_WAIT), dest],
        timeout=PROBE_WAIT + 10,
        check=False,
    )
    return proc.returncode == 0


def probe_round(lab: Lab, index: int) -> bool:
    """One round: client -> native, then native -> the client's current Teredo address."""
    host = lab.site(index).client_host
    if not _pinged(lab, host, NATIVE_V6):
        return False
    info = lab.teredo_address(index)
    return info is not None and _pinged(lab, "native", str(info.address))


def wait_working(lab: Lab, index: int, timeout: float) -> tuple[float | None, int]:
    """Probe rounds until one works or `timeout` passes: (seconds, rounds), seconds None
    when none worked."""
    start = time.monotonic()
    rounds = 0
    while time.monotonic() - start < timeout:
        rounds += 1
        if probe_round(lab, index):
            return time.monotonic() - start, rounds
        time.sleep(0.05)
    return None, rounds


def change_nat_port(lab: Lab, index: int) -> None:
    """Gives NAT `index` another public port for the client: a masquerade port range that
    excludes every port in use, then the conntrack table flushed."""
    site = lab.site(index)
    if site.nat_host is None:
        raise LabError(f"site {index} has no NAT")
    out = lab.exec(site.nat_host, ["conntrack", "-L", "-p", "udp"], check=False).stdout
    used = {int(p) for p in re.findall(r"dport=(\d+)", out)}
    first = next(p for p in range(40000, 60000, 1000) if not used & set(range(p, p + 1000)))
    rules = (
        "flush chain ip tlab_nat t_snat\n"
        f'add rule ip tlab_nat t_snat oifname "{NAT_OUTSIDE}" meta l4proto udp '
        f"masquerade to :{first}-{first + 999}\n"
        f'add rule ip tlab_nat t_snat oifname "{NAT_OUTSIDE}" masquerade\n'
    )
    lab.exec(site.nat_host, ["nft", "-f", "-"], input_text=rules)
    flush_conntrack(lab, index)


def flush_conntrack(lab: Lab, index: int) -> None:
    nat = lab.site(index).nat_host
    if nat is None:
        raise LabError(f"site {index} has no NAT")
    lab.exec(nat, ["conntrack", "-F"], check=False)


def restart(lab: Lab, role: Role, impl: Impl, index: int | None, outage: float) -> None:
    """Stops `role` (client `index`), waits `outage` seconds, starts it again."""
    host = lab.role_host(role, index)
    lab.stop(host)
    time.sleep(outage)
    lab.start(role, impl, index)


def remove_tun(lab: Lab, index: int) -> None:
    lab.exec(lab.site(index).client_host, ["ip", "link", "del", TUN_NAME])


def run_scenario(
    lab: Lab,
    scenario: str,
    *,
    index: int = 1,
    impls: dict[Role, Impl],
    outage: float = 5.0,
    timeout: float = 120.0,
    ready: float = 60.0,
) -> Recovery:
    """Applies `scenario` to a working path (waits up to `ready` for it first) and measures
    the recovery, bounded by `timeout`. `impls`: which implementation runs each role (to
    start it again)."""
    took, _ = wait_working(lab, index, ready)
    if took is None:
        raise LabError(
            f"{scenario}: the path did not work before the fault\n{lab.log_tail('client1')}"
        )
    before = lab.teredo_address(index)
    faults: dict[str, Callable[[], None]] = {
        "nat_mapping_change": lambda: change_nat_port(lab, index),
        "nat_reboot": lambda: flush_conntrack(lab, index),
        "server_restart": lambda: restart(lab, Role.SERVER, impls[Role.SERVER], None, outage),
        "relay_restart": lambda: restart(lab, Role.RELAY, impls[Role.RELAY], None, outage),
        "client_restart": lambda: restart(lab, Role.CLIENT, impls[Role.CLIENT], index, 0.0),
        "tun_removed": lambda: remove_tun(lab, index),
    }
    if scenario not in faults:
        raise LabError(f"unknown scenario {scenario!r} (choose from {', '.join(SCENARIOS)})")
    faults[scenario]()
    seconds, rounds = wait_working(lab, index, timeout)
    after = lab.teredo_address(index)
    changed = after is not None and (before is None or before.address != after.address)
    return Recovery(scenario, seconds, changed, rounds)
