"""BIRD 2 in the lab (issue 11): configurations for an upstream router and for the speaker next to
each relay or server, started and asked through `birdc`, each with its own control socket.

The speaker is the announce-table contract of docs/scale.md in BIRD: its kernel protocol learns
the routes that our daemon keeps in kernel table N (protocol 84, on the daemon's anchor
interface) and its BGP session exports them to the upstream router. The router merges the equal
BGP routes of several speakers into one ECMP route in its kernel (`merge paths`); BFD on each
session notices a speaker host gone in a few hundred milliseconds.
"""

from __future__ import annotations

import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from teredo.lab.system import LabError

ROUTER_AS = 65000
#: BFD: 100 ms intervals, 3 missed = down in about 0.3 s (BIRD's defaults are 10x slower).
BFD_INTERVAL_MS = 100
BFD_MULTIPLIER = 3
#: The kernel table our daemons announce in (their --announce-table).
ANNOUNCE_TABLE = 100


@dataclass(frozen=True)
class Peer:
    """One BGP neighbour: its address and AS."""

    address: str
    asn: int
    name: str


def _family(address: str) -> str:
    return "ipv6" if ":" in address else "ipv4"


def _header(router_id: str) -> str:
    return (
        f"# Written by teredo lab (lab/bird.py).\nlog stderr all;\nrouter id {router_id};\n"
        "protocol device { scan time 2; }\n"
        "protocol bfd {\n"
        f'  interface "*" {{ min rx interval {BFD_INTERVAL_MS} ms; '
        f"min tx interval {BFD_INTERVAL_MS} ms; multiplier {BFD_MULTIPLIER}; }};\n"
        "}\n"
    )


def _session(name: str, local_as: int, peer: Peer, channel: str) -> str:
    return (
        f"protocol bgp {name} {{\n"
        f"  local as {local_as};\n"
        f"  neighbor {peer.address} as {peer.asn};\n"
        "  bfd on;\n"
        "  connect delay time 1;\n"
        "  connect retry time 1;\n"
        "  error wait time 1, 5;\n"
        f"  {channel}\n"
        "}\n"
    )


def router_config(router_id: str, peers: list[Peer]) -> str:
    """An upstream router: learns each speaker's routes, installs them as one ECMP route."""
    families = sorted({_family(p.address) for p in peers}) or ["ipv6"]
    text = _header(router_id)
    for family in families:
        text += (
            f"protocol kernel kernel_{family} {{\n"
            f"  {family} {{ import none; export all; }};\n"
            "  merge paths on;\n"
            "}\n"
        )
    for peer in peers:
        channel = f"{_family(peer.address)} {{ import all; export none; }};"
        text += _session(peer.name, ROUTER_AS, peer, channel)
    return text


def _announced(name: str, table: int, family: str) -> str:
    return (
        f"protocol kernel {name} {{\n"
        f"  kernel table {table};\n"
        "  learn;\n"
        "  scan time 1;\n"
        f"  {family} {{ import all; export none; }};\n"
        "}\n"
    )


def _export(protocol: str, local_as: int, prepend: int) -> str:
    longer = "".join(f" bgp_path.prepend({local_as});" for _ in range(prepend))
    return f'export filter {{ if proto = "{protocol}" then {{{longer} accept; }} reject; }};'


def speaker_config(
    router_id: str,
    local_as: int,
    upstream: Peer,
    table: int,
    *,
    upstream4: Peer | None = None,
    prepend: int = 0,
) -> str:
    """Next to a relay or a server: exports what the daemon keeps in kernel table `table`.
    `upstream4`: a second session, over IPv4, for the table's IPv4 routes (a relay's anycast
    IPv4 next to its IPv6 prefix; one BIRD kernel protocol reads one address family).
    `prepend`: AS path prepending, so that the router prefers another speaker (standby)."""
    family = _family(upstream.address)
    text = (
        _header(router_id)
        + _announced("announced", table, family)
        + _session(
            upstream.name,
            local_as,
            upstream,
            f"{family} {{ import none; {_export('announced', local_as, prepend)} }};",
        )
    )
    if upstream4 is not None:
        text += _announced("announced4", table, "ipv4") + _session(
            upstream4.name,
            local_as,
            upstream4,
            f"ipv4 {{ import none; {_export('announced4', local_as, prepend)} }};",
        )
    return text


def bird_command(config: Path, socket: Path) -> list[str]:
    """BIRD in the foreground (its PID is the one recorded), with its own control socket."""
    return ["bird", "-f", "-c", str(config), "-s", str(socket)]


def birdc_command(socket: Path, *query: str) -> list[str]:
    return ["birdc", "-s", str(socket), *query]


_ESTABLISHED = re.compile(r"^(\S+)\s+BGP\s+\S+\s+up\s+\S+\s+Established", re.MULTILINE)


def established(show_protocols: str) -> set[str]:
    """Names of the BGP sessions that `birdc show protocols` says are Established."""
    return set(_ESTABLISHED.findall(show_protocols))


_BFD_SESSION = re.compile(r"^([0-9A-Fa-f:.]+)\s+\S+\s+(\S+)\s", re.MULTILINE)


def bfd_up(show_bfd_sessions: str) -> set[str]:
    """Neighbour addresses whose session `birdc show bfd sessions` says is Up."""
    return {a for a, state in _BFD_SESSION.findall(show_bfd_sessions) if state == "Up"}


_ROUTE = re.compile(r"^(\S+/\d+)\s+unicast \[(\S+) ", re.MULTILINE)


def selected(show_route: str) -> dict[str, list[str]]:
    """Prefix -> the protocols (BGP sessions) of its routes, best first, from `show route`."""
    result: dict[str, list[str]] = {}
    current: str | None = None
    for line in show_route.splitlines():
        head = _ROUTE.match(line)
        if head:
            current = head.group(1)
            result.setdefault(current, []).append(head.group(2))
            continue
        more = re.match(r"^\s+unicast \[(\S+) ", line)
        if more and current is not None:
            result[current].append(more.group(1))
    return result


def check_bird() -> None:
    for tool in ("bird", "birdc"):
        if shutil.which(tool) is None:
            raise LabError(f"the anycast lab needs `{tool}` (Debian bird2); run scripts/setup.sh")
