"""FRR in the lab (issue 11): the other routing daemon an operator may run next to a relay or a
server, as the speaker of the announce-table contract (docs/scale.md).

The daemon announces in the main table (`--announce-table 254`): bgpd announces the kernel
routes zebra reads there (`redistribute kernel`), filtered by a prefix list of what the daemon
serves, bfdd runs BFD on the session. Not table 100 with `ip import-table 100` (the earlier
configuration for servers): after a kill -9 the kernel flushes the anchor's IPv4 routes without
an RTM_DELROUTE, and zebra 8.4 then drops the kernel route from its copy of table 100 but keeps
the route it imported from it, announced; a kernel route of the main table on a deleted
interface it does drop, and bgpd withdraws it (measured, docs/scale.md). `ip import-table` is
IPv4 only in FRR 8.4 anyway, and this kernel has no VRF device.

A relay: its 2001::/32 in the main table, next to its own forwarding route to its Teredo
interface. The relay makes that one with protocol "kernel", which zebra never reads
(zebra/rt_netlink.c), and the announcement with metric ANNOUNCE_METRIC (io/announce.py). The
route map also matches that metric (bgpd gives a redistributed route its kernel metric as MED):
another route of the prefix that zebra sees, such as the lab relay host's `unreachable
2001::/32 metric 4000`, is then never announced in its place once the relay withdraws. The
session is IPv6 (MP-BGP, the IPv6 unicast family only), as the BIRD relays'. With an anycast
IPv4, a second session over IPv4 carries its /32, which the relay host holds as a local route
(AnyIP), not as an address on lo: zebra would make that a connected route, which hides the
kernel route of the same prefix (the servers' reason too, lab/anycast.py _server_addresses).

Each daemon runs in the speaker's namespace in the foreground (its PID is the one the lab
records), as user frr, with its own config, PID file, zserv socket and vty sockets in a
directory of the lab's state; the host's /etc/frr and its frr service are never used.
`vtysh --vty_socket DIR` asks them.
"""

from __future__ import annotations

import json
import pwd
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from teredo.io.announce import ANNOUNCE_METRIC
from teredo.lab.bird import BFD_INTERVAL_MS, BFD_MULTIPLIER, Peer
from teredo.lab.system import LabError

if TYPE_CHECKING:
    from teredo.lab.topology import Lab

FRR_DIR = Path("/usr/lib/frr")
USER = "frr"
#: Started in this order, each once the one before is ready (start() below). bgpd asks for its
#: BFD sessions through zebra, which hands them to bfdd: a request made before bgpd's zebra
#: connection is up, or before bfdd's, is lost for good in FRR 8.4 ("BFD session ... was not
#: installed" in bgpd's log, no peer in bfdd, the router's BFD session Down; one CI run's
#: relay cut-off then went unnoticed for 20 s).
DAEMONS = ("zebra", "bfdd", "bgpd")
#: The name each daemon's connection has in zebra's `show zebra client summary`.
ZEBRA_CLIENT = {"bfdd": "bfd", "bgpd": "bgp"}
#: The kernel table a relay or server announces in when FRR speaks for it: the main one.
TABLE = 254
#: Route map and prefix list that pick the announced routes among the main table's.
FILTER = "teredo-announce"


@dataclass(frozen=True)
class Files:
    """Where one speaker's FRR keeps everything: a directory of its own."""

    root: Path

    def config(self, daemon: str) -> Path:
        return self.root / f"{daemon}.conf"

    def pid(self, daemon: str) -> Path:
        return self.root / f"{daemon}.pid"

    @property
    def zserv(self) -> Path:
        return self.root / "zserv.api"

    @property
    def bfdctl(self) -> Path:
        return self.root / "bfdd.sock"


def _head(hostname: str) -> str:
    return (
        f"! Written by teredo lab (lab/frr.py).\nfrr defaults traditional\n"
        f"hostname {hostname}\nlog stdout informational\n"
    )


def _filter(name: str, prefixes: Sequence[str], prepend: tuple[int, ...]) -> str:
    """Prefix list and route map `name`: the prefixes of one family, in the main table."""
    ipv6 = ":" in prefixes[0]
    ip = "ipv6" if ipv6 else "ip"
    text = "".join(
        f"{ip} prefix-list {name} seq {5 * n} permit {p}\n" for n, p in enumerate(prefixes, 1)
    )
    text += f"route-map {name} permit 10\n match {ip} address prefix-list {name}\n"
    if ipv6:
        # A relay's announcement only, not another route of its prefix (module docstring).
        text += f" match metric {ANNOUNCE_METRIC}\n"
    if prepend:
        text += f" set as-path prepend {' '.join(map(str, prepend))}\n"
    return text + "!\n"


def speaker_configs(
    hostname: str,
    router_id: str,
    local_as: int,
    upstream: Peer,
    prefixes: Sequence[str],
    *,
    upstream4: Peer | None = None,
    prefixes4: Sequence[str] = (),
    prepend: int = 0,
) -> dict[str, str]:
    """zebra, bfdd and bgpd configuration of a speaker exporting the `prefixes` the daemon
    keeps in the main table (TABLE), over one session in the family of the prefixes: IPv4 (a
    server's two /32) or IPv6 (a relay's 2001::/32). `upstream4`: a second session, over
    IPv4, for `prefixes4` (a relay's anycast IPv4 next to its IPv6 prefix). `prepend`: AS path
    prepending on both, so that the router prefers another speaker (standby)."""
    sessions = [(upstream, prefixes, FILTER)]
    if upstream4 is not None:
        sessions.append((upstream4, prefixes4, f"{FILTER}4"))
    for peer, announced_prefixes, _ in sessions:
        family_v6 = ":" in peer.address
        if not announced_prefixes or any((":" in p) != family_v6 for p in announced_prefixes):
            raise LabError(
                "lab/frr.py: the announced prefixes and the session must be of one address family"
            )
    zebra = _head(hostname)
    bfdd = _head(hostname) + (
        "bfd\n profile lab\n"
        f"  receive-interval {BFD_INTERVAL_MS}\n  transmit-interval {BFD_INTERVAL_MS}\n"
        f"  detect-multiplier {BFD_MULTIPLIER}\n !\n!\n"
    )
    path = (local_as,) * prepend
    bgpd = _head(hostname) + "".join(_filter(n, ps, path) for _, ps, n in sessions)
    # With an IPv6 session, no IPv4 unicast on it: MP-BGP carries the IPv6 family only.
    any_v6 = any(":" in peer.address for peer, _, _ in sessions)
    bgpd += f"router bgp {local_as}\n bgp router-id {router_id}\n no bgp ebgp-requires-policy\n" + (
        " no bgp default ipv4-unicast\n" if any_v6 else ""
    )
    for peer, _, _ in sessions:
        bgpd += (
            f" neighbor {peer.address} remote-as {peer.asn}\n"
            f" neighbor {peer.address} bfd profile lab\n"
            f" neighbor {peer.address} timers connect 1\n"
        )
    for peer, _, name in sorted(sessions, key=lambda s: ":" in s[0].address):
        ipv6 = ":" in peer.address
        bgpd += (
            f" address-family {'ipv6' if ipv6 else 'ipv4'} unicast\n"
            f"  redistribute kernel route-map {name}\n"
            + (f"  neighbor {peer.address} activate\n" if any_v6 else "")
            + f"  neighbor {peer.address} route-map nothing-in in\n"
            " exit-address-family\n"
        )
    bgpd += "route-map nothing-in deny 10\n"
    return {"zebra": zebra, "bfdd": bfdd, "bgpd": bgpd}


def prepare(root: Path, configs: dict[str, str]) -> Files:
    """Write the configurations in a fresh directory owned by user frr (FRR drops to it)."""
    check_frr()
    files = Files(root)
    if root.exists():
        shutil.rmtree(root)
    root.mkdir(parents=True)
    for daemon, text in configs.items():
        files.config(daemon).write_text(text, encoding="ascii")
    for path in (root, *root.iterdir()):
        shutil.chown(path, USER, USER)
    return files


def daemon_command(files: Files, daemon: str) -> list[str]:
    """`daemon` in the foreground with every file in `files.root`."""
    argv = [
        str(FRR_DIR / daemon),
        "-f",
        str(files.config(daemon)),
        "-i",
        str(files.pid(daemon)),
        "-z",
        str(files.zserv),
        "--vty_socket",
        str(files.root),
        "-u",
        USER,
        "-g",
        USER,
        "--log",
        "stdout",
    ]
    if daemon == "bfdd":
        argv += ["--bfdctl", str(files.bfdctl)]
    return argv


def lab_files(lab: Lab, host: str) -> Files:
    """The directory of the speaker next to `host`'s daemon in `lab`."""
    return Files(lab.state_dir / f"frr-{host}")


def start(lab: Lab, host: str, configs: dict[str, str], *, timeout: float = 15.0) -> None:
    """zebra, then bfdd once zebra listens, then bgpd once bfdd is zebra's client (DAEMONS says
    why the order matters), in `host`'s namespace."""
    files = prepare(lab_files(lab, host).root, configs)
    for daemon in DAEMONS:
        name = f"frr-{daemon}-{host}"
        lab.popen(host, daemon_command(files, daemon), name=name, role="frr", impl="frr")
        deadline = time.monotonic() + timeout
        while not _ready(lab, host, files, daemon):
            if time.monotonic() > deadline:
                raise LabError(
                    f"{host}: FRR {daemon} not ready after {timeout:g} s\n{lab.log_tail(name)}"
                )
            time.sleep(0.05)


def _ready(lab: Lab, host: str, files: Files, daemon: str) -> bool:
    if daemon == "zebra":
        return files.zserv.exists()
    argv = vtysh_command(files, "show zebra client summary")
    summary = lab.exec(host, argv, check=False, timeout=10).stdout
    return ZEBRA_CLIENT[daemon] in zebra_clients(summary)


def vtysh_command(files: Files, *commands: str) -> list[str]:
    argv = ["vtysh", "--vty_socket", str(files.root)]
    for command in commands:
        argv += ["-c", command]
    return argv


def zebra_clients(client_summary: str) -> set[str]:
    """Client names in zebra's `show zebra client summary` (bfd, bgp, ...)."""
    lines = client_summary.splitlines()
    return {line.split()[0] for line in lines[2:] if line.strip() and not line.startswith("Routes")}


def established(bgp_summary_json: str) -> set[str]:
    """Neighbours that `show bgp summary json` says are Established."""
    try:
        data: Any = json.loads(bgp_summary_json or "{}")
    except ValueError:
        return set()
    found: set[str] = set()
    for family in data.values() if isinstance(data, dict) else []:
        peers = family.get("peers", {}) if isinstance(family, dict) else {}
        found |= {str(p) for p, v in peers.items() if v.get("state") == "Established"}
    return found


def announced(bgp_routes_json: str) -> list[str]:
    """Prefixes in `show bgp ipv4 unicast json` or `show bgp ipv6 unicast json` (what bgpd
    has and, as a speaker, exports)."""
    try:
        data: Any = json.loads(bgp_routes_json or "{}")
    except ValueError:
        return []
    routes = data.get("routes", {}) if isinstance(data, dict) else {}
    return sorted(str(p) for p in routes)


def check_frr() -> None:
    for daemon in DAEMONS:
        if not (FRR_DIR / daemon).exists():
            raise LabError(f"--routing frr needs {FRR_DIR / daemon} (Debian frr); run setup.sh")
    if shutil.which("vtysh") is None:
        raise LabError("--routing frr needs `vtysh` (Debian frr); run scripts/setup.sh")
    try:
        pwd.getpwnam(USER)
    except KeyError:
        raise LabError(f"--routing frr needs the user {USER} (Debian frr makes it)") from None
