"""Faults and attacks on a running Teredo client in the lab, measured the same way for ours
and Miredo's: the system tests assert on ours, bench/client_faults.py prints both side by side.

- `delete_tun`: `ip link del teredo` under the running client (issue 14): its CPU time in
  the seconds after, and whether (and when) it has a Teredo address again.
- `spoofed_origin_bubbles`: bubbles sent from a spoofed IPv4 to the server for the client,
  each from a new source port (issue 14): how many direct bubbles the client sends back
  toward that IPv4 (counted by the wan router, which forwards them).
- `change_address`, `uplink_down`/`uplink_up`: the client's own network changes (issue 13).
"""

from __future__ import annotations

import ipaddress
import os
import re
import sys
import time
from dataclasses import dataclass

from teredo.core.ipv6 import build_bubble
from teredo.lab import system
from teredo.lab.roles import TEREDO_PORT, TUN_NAME, Role, config_text
from teredo.lab.system import ProcRecord
from teredo.lab.topology import NATIVE_V6, RELAY_V4, SERVER_V4, Lab, ping_counts

# An IPv4 of the servers' segment that no lab host has: the "victim" of a reflection. The wan
# router forwards what is sent there (and counts it) before it fails to resolve it.
VICTIM_V4 = "198.51.100.99"
# A native IPv6 source for the spoofed bubbles: the server forwards a bubble from a native
# source to its client with an origin indication (RFC 4380 5.3.1 check 6).
SPOOFED_V6 = "2001:db8:99::1"
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")

# Sends spoofed UDP/IPv4 datagrams from a raw socket (IPPROTO_RAW: our IPv4 header), a
# bounded number of them: source, destination, first source port, count, vary ports, payload.
_SPOOF = r"""
import socket, struct, sys
src, dst, first, count, vary, payload = sys.argv[1:7]
payload = bytes.fromhex(payload)
s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
for i in range(min(int(count), 10000)):
    sport = int(first) + (i if vary == "1" else 0)
    udp = struct.pack("!HHHH", sport, 3544, 8 + len(payload), 0) + payload
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 0, 0, 64, 17, 0,
                     socket.inet_aton(src), socket.inet_aton(dst))
    s.sendto(ip + udp, (dst, 0))
"""

_COUNT_TABLE = "tlab_victim"


def daemon_pids(lab: Lab, host: str) -> list[int]:
    """The recorded processes of `host` that still run, with their descendants (Miredo forks)."""
    pids: list[int] = []
    for record in lab.procs:
        if record.host == host and record.alive():
            pids.append(record.pid)
            pids.extend(system.descendants(record.pid))
    return pids


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU time of `pids` (all their threads), in seconds."""
    ticks = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as fh:
                data = fh.read()
        except OSError:
            continue
        fields = data[data.rfind(")") + 2 :].split()
        ticks += int(fields[11]) + int(fields[12])
    return ticks / _CLOCK_TICKS


@dataclass(frozen=True)
class TunDeleted:
    cpu_share: float  # CPU time / wall time over the window after the deletion (1.0 = a core)
    recovered_after: float | None  # seconds until a Teredo address was back, None if never
    exited: bool  # the daemon ended (a supervisor would restart it)


def delete_tun(lab: Lab, index: int, *, window: float = 5.0, recover: float = 30.0) -> TunDeleted:
    """Deletes the TUN under client `index`; its CPU share over `window`, then recovery."""
    host = lab.site(index).client_host
    pids = daemon_pids(lab, host)
    before = cpu_seconds(pids)
    start = time.monotonic()
    lab.exec(host, ["ip", "link", "del", TUN_NAME])
    recovered: float | None = None
    share: float | None = None
    deadline = start + window + recover
    while time.monotonic() < deadline:
        elapsed = time.monotonic() - start
        if share is None and elapsed >= window:
            share = (cpu_seconds(pids) - before) / elapsed
        if recovered is None and lab.teredo_address(index) is not None:
            recovered = time.monotonic() - start
        if not any(r.alive() for r in lab.procs if r.host == host):
            break
        if share is not None and recovered is not None:
            break
        time.sleep(0.1)
    if share is None:  # the daemon ended within the window
        share = (cpu_seconds(pids) - before) / (time.monotonic() - start)
    exited = not any(r.alive() for r in lab.procs if r.host == host)
    return TunDeleted(share, recovered, exited)


def spoofed_origin_bubbles(lab: Lab, index: int, *, count: int = 200, vary: bool = True) -> int:
    """`count` bubbles from VICTIM_V4 (new source port each when `vary`) to the server, for
    client `index`'s Teredo address; returns the datagrams that then went to VICTIM_V4."""
    info = lab.teredo_address(index)
    if info is None:
        raise system.LabError(f"client {index} has no Teredo address")
    bubble = build_bubble(ipaddress.IPv6Address(SPOOFED_V6).packed, info.address.packed)
    rules = (
        f"table ip {_COUNT_TABLE} {{\n chain count {{\n"
        "  type filter hook forward priority 0; policy accept;\n"
        f"  ip daddr {VICTIM_V4} udp dport != {TEREDO_PORT} counter\n }}\n}}\n"
    )
    lab.exec("wan", ["nft", "-f", "-"], input_text=rules)
    try:
        lab.exec(
            "wan",
            [
                sys.executable,
                "-c",
                _SPOOF,
                VICTIM_V4,
                SERVER_V4,
                "20000",
                str(count),
                "1" if vary else "0",
                bubble.hex(),
            ],
        )
        time.sleep(2.0)  # the server forwards, the client answers
        out = lab.exec("wan", ["nft", "list", "table", "ip", _COUNT_TABLE]).stdout
    finally:
        lab.exec("wan", ["nft", "delete", "table", "ip", _COUNT_TABLE], check=False)
    found = re.search(r"counter packets (\d+)", out)
    return int(found.group(1)) if found else 0


def change_address(lab: Lab, index: int, last_byte: int) -> None:
    """Gives client `index` another address on its NAT's inside link (a new DHCP lease):
    the old one and its routes go, the new one and a default route come."""
    site = lab.site(index)
    host = site.client_host
    out = lab.exec(host, ["ip", "-4", "-o", "addr", "show", "dev", "eth0"]).stdout
    old = re.findall(r"inet (\S+)", out)
    new = re.sub(r"\.\d+$", f".{last_byte}", site.client_ip)
    system.ip_batch(
        lab.ns(host),
        [
            *[f"addr del {a} dev eth0" for a in old],
            f"addr add {new}/24 dev eth0",
            f"route replace default via {site.nat_inside_ip}",
        ],
    )


def uplink_down(lab: Lab, index: int) -> None:
    lab.exec(lab.site(index).client_host, ["ip", "link", "set", "eth0", "down"])


def uplink_up(lab: Lab, index: int) -> None:
    site = lab.site(index)
    system.ip_batch(
        lab.ns(site.client_host),
        ["link set eth0 up", f"route replace default via {site.nat_inside_ip}"],
    )


def wait_new_address(lab: Lab, index: int, old: str | None, timeout: float) -> float | None:
    """Seconds until client `index` has a Teredo address other than `old` and reaches the
    native host with it (one ping answered), or None after `timeout`."""
    host = lab.site(index).client_host
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        info = lab.teredo_address(index)
        if info is not None and str(info.address) != old:
            ping = lab.ping(host, NATIVE_V6, count=1, deadline=2)
            counts = ping_counts(ping.stdout)
            if counts is not None and counts[1] >= 1:
                return time.monotonic() - start
            continue
        time.sleep(0.1)
    return None


# --- several servers (issue 13) -----------------------------------------------------------------

# Our server next to Miredo's in the server namespace, on the next two addresses.
SECOND_SERVER_V4 = "198.51.100.12"
SECOND_SERVER_V4_2 = "198.51.100.13"


def start_second_server(lab: Lab) -> ProcRecord:
    """`teredo server` on SECOND_SERVER_V4 (and + 1) in the server namespace, named
    "server-ours" (Miredo's, if any, keeps SERVER_V4 and its record "server")."""
    system.ip_batch(
        lab.ns("server"),
        [f"addr add {SECOND_SERVER_V4}/24 dev eth0", f"addr add {SECOND_SERVER_V4_2}/24 dev eth0"],
    )
    argv = [sys.executable, "-m", "teredo", "server", "--bind", SECOND_SERVER_V4, "--no-control"]
    lab.popen("server", argv, name="server-ours", role="server", impl="teredo")
    return lab.procs[-1]


def start_client(lab: Lab, index: int, *flags: str, host: str | None = None) -> ProcRecord:
    """Our client on site `index` (or in `host`) with the lab's configuration file and
    `flags` on top (the lab's own command has none)."""
    host = host or lab.site(index).client_host
    conf = lab.state_dir / f"{host}.conf"
    conf.write_text(config_text(Role.CLIENT, server=SERVER_V4, relay=RELAY_V4), encoding="ascii")
    argv = [sys.executable, "-m", "teredo", "client", "-c", str(conf), *flags]
    lab.popen(host, argv, name=host, role="client", impl="teredo")
    return lab.procs[-1]


def stop_server_of(lab: Lab, server_v4: str) -> None:
    """Stops the server process that serves `server_v4` (Miredo's or ours), not the other."""
    name = "server-ours" if server_v4 == SECOND_SERVER_V4 else "server"
    records = [r for r in lab.procs if r.host == "server" and r.name == name and r.alive()]
    if not records:
        raise system.LabError(f"no running server for {server_v4}")
    left = system.kill_pids({r.pid: r.start_time for r in records})
    if left:
        raise system.LabError(f"server processes {left} did not stop")
