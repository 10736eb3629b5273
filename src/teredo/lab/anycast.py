"""The anycast lab (issue 11): several relays and servers behind BIRD routers with BGP, ECMP, BFD.

```
 native v6 -- wan --(bs: 2001:db8:2::5)-- up6 (BIRD, AS 65000, ECMP 2001::/32)
                |                            |-- 2001:db8:10:i::/64 -- relay i (BIRD AS 65100+i)
                |                                  eth0 198.51.100.(20+i) on bs (Teredo side)
                |--(bs: 198.51.100.5)-------- up4 (BIRD, AS 65000, ECMP .10/32 and .11/32)
                                             |-- 198.51.100.(128+4j-4)/30 -- server j
                                                   (BIRD AS 65200+j; .10 and .11 on lo)
```

Each relay and server runs our daemon with `--announce-table 100` and a BIRD "speaker" that
exports kernel table 100 over BGP (with BFD) to its upstream router (with `routing="frr"`:
`--announce-table 254` and FRR, lab/frr.py); the routers install one ECMP
route per prefix. The wan routes 2001::/32 to up6 and the servers' two addresses to up4, so the
native host and the clients reach whichever relay or server the routers pick. The routers hash
on addresses only (no ports, no flow label), so that a client's packets, in either direction,
always meet the same relay while the set of relays stays the same. With `anycast_ipv4` the
relays also share RELAY_ANYCAST_V4 (on lo, over a second BGP session over IPv4 to up6, which
the wan routes it to), active/standby (see RELAY_ANYCAST_V4).

The fixed `relay` and `server` hosts of lab/topology.py stay but are not used: their roles are
not started, and the server's addresses are taken off its interface.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from teredo.lab import frr, system
from teredo.lab.bird import (
    ANNOUNCE_TABLE,
    ROUTER_AS,
    Peer,
    bfd_up,
    bird_command,
    birdc_command,
    check_bird,
    established,
    router_config,
    selected,
    speaker_config,
)
from teredo.lab.roles import RELAY_PORT, TUN_NAME, Impl, Role
from teredo.lab.system import LabError, ProcRecord
from teredo.lab.topology import (
    SERVER_V4,
    SERVER_V4_2,
    TEREDO_PREFIX,
    WAN_V4_SERVERS,
    WAN_V6_SERVERS,
    Lab,
)

MAX_RELAYS = 8
MAX_SERVERS = 8
UP6_V6 = "2001:db8:2::5"
UP4_V4 = "198.51.100.5"
UP4_V6 = "2001:db8:2::6"  # servers send their clients' ping tests out natively (section 5.3.1)
UP6_ROUTER_ID = "198.51.100.6"  # a BGP identifier; up6's IPv4 on bs with --anycast-ipv4
#: The relays' anycast IPv4 (`--anycast-ipv4`): each relay holds it on lo, binds it and
#: announces it; the wan routes it to up6. The relays are then active/standby (relay i
#: prepends its AS i-1 times: up6 picks relay 1 while it announces), not ECMP: with two
#: independent ECMP choices (IPv6 toward the relays, IPv4 back from the clients) a client's
#: direct bubble lands on another relay than the one that queued for it (measured: the other
#: relay drops it as `unknown_peer_bubble`, the first gives up). Failover keeps the client's
#: relay address: the standby relay takes the same A:3545.
RELAY_ANYCAST_V4 = "198.51.100.40"
#: Seconds a relay or server keeps serving after withdrawing on SIGTERM (its --announce-drain).
LAB_DRAIN = 2.0
#: Peer table of each lab relay: the lab has a handful of clients (the default is a million).
LAB_RELAY_PEERS = 4096
STATE_FILE = "anycast.json"
# Fixed ECMP hash seed on the routers, so that a lab run picks the same relay for the same pair
# of addresses every time (the kernel otherwise draws a seed per namespace).
HASH_SEED = 11
#: Routing daemons the speakers next to the relays and servers may run (the routers run BIRD).
ROUTING = ("bird", "frr")


@dataclass(frozen=True)
class AnycastSpec:
    relays: int
    servers: int
    drain: float = LAB_DRAIN
    #: The relays' and servers' speakers: BIRD or FRR (the daemons then announce in the main
    #: table, lab/frr.py).
    routing: str = "bird"
    #: The relays share RELAY_ANYCAST_V4 (their --anycast-ipv4) as their Teredo-side address.
    anycast_ipv4: bool = False
    #: The relays' --datapath (docs/kernel.md): "auto" (their default), "kernel" or "user".
    datapath: str = "auto"

    @property
    def relay_paths(self) -> int:
        """The next hops up6 installs for the relays' prefixes: all (ECMP) or the active one."""
        return 1 if self.anycast_ipv4 else self.relays

    def check(self) -> None:
        if self.routing not in ROUTING:
            raise LabError(f"--routing: {' or '.join(ROUTING)}, not {self.routing!r}")
        if not 0 <= self.relays <= MAX_RELAYS:
            raise LabError(f"--relays: 0..{MAX_RELAYS}, not {self.relays}")
        if not 0 <= self.servers <= MAX_SERVERS:
            raise LabError(f"--servers: 0..{MAX_SERVERS}, not {self.servers}")
        if self.anycast_ipv4 and not self.relays:
            raise LabError("--anycast-ipv4: needs --relays N")
        if self.datapath not in ("auto", "kernel", "user"):
            raise LabError(f"--datapath: auto, kernel or user, not {self.datapath!r}")


def relay_host(i: int) -> str:
    return f"relay{i}"


def server_host(j: int) -> str:
    return f"server{j}"


def relay_v4(i: int) -> str:
    return f"198.51.100.{20 + i}"


def relay_link(i: int) -> tuple[str, str]:
    """(up6's address, relay i's address) on their link."""
    return f"2001:db8:10:{i}::1", f"2001:db8:10:{i}::2"


def relay_link_v4(i: int) -> tuple[str, str]:
    """(up6's IPv4 address, relay i's) on their link, with --anycast-ipv4: a /30 each."""
    base = 160 + 4 * (i - 1)
    return f"198.51.100.{base + 1}", f"198.51.100.{base + 2}"


def server_link(j: int) -> tuple[str, str]:
    """(up4's address, server j's address) on their /30."""
    base = 128 + 4 * (j - 1)
    return f"198.51.100.{base + 1}", f"198.51.100.{base + 2}"


def server_link_v6(j: int) -> tuple[str, str]:
    """(up4's IPv6 address, server j's) on their link: the server's way to native IPv6."""
    return f"2001:db8:20:{j}::1", f"2001:db8:20:{j}::2"


def register(lab: Lab, spec: AnycastSpec) -> None:
    """Add the anycast hosts to `lab` (before `lab.up()`, which then creates them)."""
    spec.check()
    if spec.relays:
        lab.extra_hosts["up6"] = "au6"
        lab.extra_addresses["up6"] = [UP6_V6]
    if spec.servers:
        lab.extra_hosts["up4"] = "au4"
        lab.extra_addresses["up4"] = [UP4_V4, UP4_V6]
    for i in range(1, spec.relays + 1):
        lab.extra_hosts[relay_host(i)] = f"ar{i}"
        lab.extra_addresses[relay_host(i)] = [relay_v4(i), relay_link(i)[1]]
    for j in range(1, spec.servers + 1):
        lab.extra_hosts[server_host(j)] = f"as{j}"
        lab.extra_addresses[server_host(j)] = [SERVER_V4, SERVER_V4_2, server_link(j)[1]]


def up(
    lab: Lab,
    spec: AnycastSpec,
    client_impls: Sequence[Impl | None],
    *,
    route_timeout: float = 30.0,
) -> None:
    """Build `lab` with the anycast hosts, start routers, speakers, relays, servers, then the
    clients (`client_impls`, one per site), once every router has all its paths. `lab` must
    have been made with no server (if spec.servers) and no relay (if spec.relays) and no
    client: they are started here. On failure, the lab is taken down."""
    check_bird()
    register(lab, spec)
    try:
        lab.up()
        _save(lab, spec)
        _wire(lab, spec)
        _start_routers(lab, spec)
        for i in range(1, spec.relays + 1):
            start_relay(lab, i, spec)
        for j in range(1, spec.servers + 1):
            start_server(lab, j, spec)
        if spec.relays:
            wait_paths(lab, "up6", TEREDO_PREFIX, spec.relay_paths, timeout=route_timeout)
        if spec.anycast_ipv4:
            _wait_standby(lab, spec.relays, timeout=route_timeout)
        if spec.servers:
            wait_paths(lab, "up4", f"{SERVER_V4_2}/32", spec.servers, timeout=route_timeout)
        # BGP comes up without BFD; a lab whose BFD is down would notice a dead host only by
        # the hold timer, so it is not up until every router's BFD sessions are.
        for router, neighbours in _bfd_neighbours(spec).items():
            wait_bfd(lab, router, neighbours, timeout=route_timeout)
        for site, impl in zip(lab.sites, client_impls, strict=True):
            if impl is not None:
                lab.start(Role.CLIENT, impl, site.index)
    except BaseException:
        lab.down()
        raise


def _sysctl(lab: Lab, host: str, *settings: str, check: bool = True) -> None:
    lab.exec(host, ["sysctl", "-q", "-w", *settings], check=check)


def _veth(lab: Lab, near: str, near_if: str, far: str, far_if: str) -> None:
    system.ip_batch(
        lab.ns(near),
        [f"link add {near_if} type veth peer name {far_if} netns {lab.ns(far)}"],
    )


def _on_bs(lab: Lab, host: str, wan_if: str, addrs: list[str]) -> None:
    """A veth from the wan's servers' bridge (bs) to `host`'s eth0."""
    _veth(lab, "wan", wan_if, host, "eth0")
    system.ip_batch(lab.ns("wan"), [f"link set {wan_if} master bs", f"link set {wan_if} up"])
    cmds = [f"addr add {a} dev eth0" + (" nodad" if ":" in a else "") for a in addrs]
    system.ip_batch(lab.ns(host), [*cmds, "link set eth0 up"])


def _router_hashing(lab: Lab, host: str) -> None:
    # Addresses only: IPv4 policy 0 is source and destination; IPv6 policy 3 with fields 0x3
    # is the same (policy 0 would add the flow label, which differs per socket).
    # Kernels before 5.12 have no policy 3: they keep policy 0 (tests find the carrying relay
    # from traffic, not from the hash), and before 6.11 no seed (the split check then adapts).
    _sysctl(lab, host, "net.ipv4.fib_multipath_hash_policy=0")
    _sysctl(
        lab,
        host,
        "net.ipv6.fib_multipath_hash_policy=3",
        "net.ipv6.fib_multipath_hash_fields=0x0003",
        check=False,
    )
    _sysctl(lab, host, f"net.ipv4.fib_multipath_hash_seed={HASH_SEED}", check=False)


def _wire(lab: Lab, spec: AnycastSpec) -> None:
    wan = lab.ns("wan")
    if spec.relays:
        _on_bs(lab, "up6", "u6", [f"{UP6_V6}/64"])
        _sysctl(lab, "up6", "net.ipv6.conf.all.forwarding=1")
        _router_hashing(lab, "up6")
        system.ip_batch(lab.ns("up6"), [f"route add ::/0 via {WAN_V6_SERVERS}"])
        system.ip_batch(wan, [f"route replace {TEREDO_PREFIX} via {UP6_V6}"])
    if spec.anycast_ipv4:
        system.ip_batch(
            lab.ns("up6"),
            [f"addr add {UP6_ROUTER_ID}/24 dev eth0", f"route add default via {WAN_V4_SERVERS}"],
        )
        _sysctl(lab, "up6", "net.ipv4.ip_forward=1")
        system.ip_batch(wan, [f"route add {RELAY_ANYCAST_V4}/32 via {UP6_ROUTER_ID}"])
    if spec.servers:
        _on_bs(lab, "up4", "u4", [f"{UP4_V4}/24", f"{UP4_V6}/64"])
        _sysctl(lab, "up4", "net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1")
        _router_hashing(lab, "up4")
        system.ip_batch(
            lab.ns("up4"),
            [f"route add default via {WAN_V4_SERVERS}", f"route add ::/0 via {WAN_V6_SERVERS}"],
        )
        # The servers' addresses live behind up4 now, not on the fixed server host.
        system.ip_batch(lab.ns("server"), [f"addr flush dev eth0 to {SERVER_V4}/31"])
        system.ip_batch(wan, [f"route add {a}/32 via {UP4_V4}" for a in (SERVER_V4, SERVER_V4_2)])
    for i in range(1, spec.relays + 1):
        host = relay_host(i)
        router_side, relay_side = relay_link(i)
        _on_bs(lab, host, f"ar{i}", [f"{relay_v4(i)}/24"])
        _veth(lab, "up6", f"r{i}", host, "up0")
        system.ip_batch(
            lab.ns("up6"), [f"addr add {router_side}/64 dev r{i} nodad", f"link set r{i} up"]
        )
        cmds = [
            f"addr add {relay_side}/64 dev up0 nodad",
            "link set up0 up",
            f"route add ::/0 via {router_side}",
            f"route add default via {WAN_V4_SERVERS}",
            # While the relay is down, what up6 still sends here is refused, not looped back.
            f"route add unreachable {TEREDO_PREFIX} metric 4000",
        ]
        if spec.servers:
            # On the same segment as up4: reach the servers' addresses through it directly.
            cmds += [f"route add {a}/32 via {UP4_V4}" for a in (SERVER_V4, SERVER_V4_2)]
        if spec.anycast_ipv4:
            router_v4, relay_link_side = relay_link_v4(i)
            system.ip_batch(lab.ns("up6"), [f"addr add {router_v4}/30 dev r{i}"])
            # Packets to the anycast address come in on up0; the relay's own go out on eth0.
            cmds += [
                f"addr add {relay_link_side}/30 dev up0",
                "link set lo up",
                _relay_anycast_address(spec),
            ]
        system.ip_batch(lab.ns(host), cmds)
        _sysctl(lab, host, "net.ipv6.conf.all.forwarding=1")
    for j in range(1, spec.servers + 1):
        host = server_host(j)
        router_side, server_side = server_link(j)
        _veth(lab, "up4", f"s{j}", host, "eth0")
        router_v6, server_v6 = server_link_v6(j)
        system.ip_batch(
            lab.ns("up4"),
            [
                f"addr add {router_side}/30 dev s{j}",
                f"addr add {router_v6}/64 dev s{j} nodad",
                f"link set s{j} up",
            ],
        )
        system.ip_batch(
            lab.ns(host),
            [
                f"addr add {server_side}/30 dev eth0",
                f"addr add {server_v6}/64 dev eth0 nodad",
                "link set eth0 up",
                *_server_addresses(spec),
                f"route add default via {router_side}",
                f"route add ::/0 via {router_v6}",
            ],
        )


def _relay_anycast_address(spec: AnycastSpec) -> str:
    """How a relay holds RELAY_ANYCAST_V4: on lo, or for FRR as a local route (AnyIP), for
    the reason _server_addresses gives."""
    if spec.routing == "frr":
        return f"route add local {RELAY_ANYCAST_V4}/32 dev lo table local"
    return f"addr add {RELAY_ANYCAST_V4}/32 dev lo"


def _server_addresses(spec: AnycastSpec) -> list[str]:
    """How a server holds S and S+1: on lo, or for FRR as local routes (AnyIP). zebra makes a
    connected route of an address (distance 0), which beats the kernel route the server keeps
    in the main table (a connected route wins over a kernel one): bgpd would never see the
    announcement. A local route in table local makes the address ours just the same, and zebra
    leaves that table alone."""
    if spec.routing == "frr":
        return [f"route add local {a}/32 dev lo table local" for a in (SERVER_V4, SERVER_V4_2)]
    return [f"addr add {a}/32 dev lo" for a in (SERVER_V4, SERVER_V4_2)]


def _bird_files(lab: Lab, host: str) -> tuple[Any, Any]:
    return lab.state_dir / f"bird-{host}.conf", lab.state_dir / f"bird-{host}.ctl"


def _start_bird(lab: Lab, host: str, config: str) -> None:
    conf, ctl = _bird_files(lab, host)
    conf.write_text(config, encoding="ascii")
    lab.popen(host, bird_command(conf, ctl), name=f"bird-{host}", role="bird", impl="bird")


def _start_routers(lab: Lab, spec: AnycastSpec) -> None:
    if spec.relays:
        peers = [
            Peer(relay_link(i)[1], ROUTER_AS + 100 + i, relay_host(i))
            for i in range(1, spec.relays + 1)
        ]
        if spec.anycast_ipv4:
            peers += [
                Peer(relay_link_v4(i)[1], ROUTER_AS + 100 + i, f"{relay_host(i)}v4")
                for i in range(1, spec.relays + 1)
            ]
        _start_bird(lab, "up6", router_config(UP6_ROUTER_ID, peers))
    if spec.servers:
        peers = [
            Peer(server_link(j)[1], ROUTER_AS + 200 + j, server_host(j))
            for j in range(1, spec.servers + 1)
        ]
        _start_bird(lab, "up4", router_config(UP4_V4, peers))
    for i in range(1, spec.relays + 1):
        upstream = Peer(relay_link(i)[0], ROUTER_AS, "upstream")
        upstream4 = Peer(relay_link_v4(i)[0], ROUTER_AS, "upstream4") if spec.anycast_ipv4 else None
        # Active/standby with an anycast IPv4: relay 1 preferred (see RELAY_ANYCAST_V4).
        prepend = i - 1 if spec.anycast_ipv4 else 0
        if spec.routing == "frr":
            # MP-BGP over the IPv6 link, as the BIRD relays' session (and IPv4 for the anycast).
            configs = frr.speaker_configs(
                relay_host(i),
                relay_v4(i),
                ROUTER_AS + 100 + i,
                upstream,
                [TEREDO_PREFIX],
                upstream4=upstream4,
                prefixes4=[f"{RELAY_ANYCAST_V4}/32"],
                prepend=prepend,
            )
            frr.start(lab, relay_host(i), configs)
            continue
        config = speaker_config(
            relay_v4(i),
            ROUTER_AS + 100 + i,
            upstream,
            ANNOUNCE_TABLE,
            upstream4=upstream4,
            prepend=prepend,
        )
        _start_bird(lab, relay_host(i), config)
    for j in range(1, spec.servers + 1):
        upstream = Peer(server_link(j)[0], ROUTER_AS, "upstream")
        router_id, local_as = server_link(j)[1], ROUTER_AS + 200 + j
        if spec.routing == "frr":
            prefixes = [f"{a}/32" for a in (SERVER_V4, SERVER_V4_2)]
            configs = frr.speaker_configs(server_host(j), router_id, local_as, upstream, prefixes)
            frr.start(lab, server_host(j), configs)
        else:
            config = speaker_config(router_id, local_as, upstream, ANNOUNCE_TABLE)
            _start_bird(lab, server_host(j), config)


def relay_argv(i: int, spec: AnycastSpec) -> list[str]:
    bind = RELAY_ANYCAST_V4 if spec.anycast_ipv4 else relay_v4(i)
    anycast = ["--anycast-ipv4", RELAY_ANYCAST_V4] if spec.anycast_ipv4 else []
    return [
        sys.executable,
        "-m",
        "teredo",
        "relay",
        "--type",
        "cone",
        "--interface",
        TUN_NAME,
        "--bind-address",
        bind,
        "--bind-port",
        str(RELAY_PORT),
        "--peers",
        str(LAB_RELAY_PEERS),
        "--announce-table",
        str(frr.TABLE if spec.routing == "frr" else ANNOUNCE_TABLE),
        "--announce-drain",
        f"{spec.drain:g}",
        *anycast,
        *([] if spec.datapath == "auto" else ["--datapath", spec.datapath]),  # auto: default
    ]


def start_relay(lab: Lab, i: int, spec: AnycastSpec) -> ProcRecord:
    host = relay_host(i)
    lab.popen(host, relay_argv(i, spec), name=host, role="relay", impl=Impl.TEREDO.value)
    return lab.procs[-1]


def start_server(lab: Lab, j: int, spec: AnycastSpec) -> ProcRecord:
    host = server_host(j)
    table = frr.TABLE if spec.routing == "frr" else ANNOUNCE_TABLE
    argv = [
        sys.executable,
        "-m",
        "teredo",
        "server",
        "--bind",
        SERVER_V4,
        "--announce-table",
        str(table),
        "--announce-drain",
        f"{spec.drain:g}",
    ]
    lab.popen(host, argv, name=host, role="server", impl=Impl.TEREDO.value)
    return lab.procs[-1]


def daemon_record(lab: Lab, host: str) -> ProcRecord | None:
    """The newest record of our daemon on `host` (a relay or server), if any."""
    found = [r for r in lab.procs if r.host == host and r.impl == Impl.TEREDO.value]
    return found[-1] if found else None


# --- what the routers see ---------------------------------------------------------------------


def kernel_nexthops(lab: Lab, router: str, prefix: str) -> list[str]:
    """The gateways of `router`'s kernel route to `prefix` (several: ECMP), [] when none."""
    family = "-6" if ":" in prefix else "-4"
    out = lab.exec(router, ["ip", "-j", family, "route", "show", prefix], check=False).stdout
    try:
        routes = json.loads(out or "[]")
    except ValueError:
        return []
    gateways: list[str] = []
    for route in routes:
        if route.get("dst") not in (prefix, prefix.removesuffix("/32")):
            continue
        if "gateway" in route:
            gateways.append(str(route["gateway"]))
        for hop in route.get("nexthops", []):
            if "gateway" in hop:
                gateways.append(str(hop["gateway"]))
    return gateways


def wait_paths(lab: Lab, router: str, prefix: str, count: int, *, timeout: float) -> float:
    """Poll until `router`'s kernel route to `prefix` has `count` next hops; the seconds it
    took. Raises LabError with the routers' view after `timeout`."""
    start = time.monotonic()
    while True:
        hops = kernel_nexthops(lab, router, prefix)
        if len(hops) == count:
            return time.monotonic() - start
        if time.monotonic() - start > timeout:
            view = json.dumps(router_view(lab, router), indent=1)
            raise LabError(
                f"{router}: {prefix} has {len(hops)} path(s) {hops}, not {count}, after "
                f"{timeout:g} s\n{view}\n{lab.log_tail('bird-' + router)}"
            )
        time.sleep(0.05)


def wait_without(lab: Lab, router: str, prefix: str, gateway: str, *, timeout: float) -> float:
    """Poll until `router`'s kernel route to `prefix` has a next hop, none of them `gateway`
    (a relay's path withdrawn, whichever takes over); the seconds it took. LabError after
    `timeout`."""
    start = time.monotonic()
    while True:
        hops = kernel_nexthops(lab, router, prefix)
        if hops and gateway not in hops:
            return time.monotonic() - start
        if time.monotonic() - start > timeout:
            raise LabError(f"{router}: {prefix} still via {hops} after {timeout:g} s")
        time.sleep(0.05)


def _wait_standby(lab: Lab, relays: int, *, timeout: float) -> None:
    """Active/standby: up6 has learned both prefixes from every relay (the standbys too) and
    routes them to relay 1."""
    active = {TEREDO_PREFIX: relay_link(1)[1], f"{RELAY_ANYCAST_V4}/32": relay_link_v4(1)[1]}
    deadline = time.monotonic() + timeout
    for prefix, gateway in active.items():
        while len(
            selected(birdc(lab, "up6", "show", "route")).get(prefix, [])
        ) < relays or kernel_nexthops(lab, "up6", prefix) != [gateway]:
            if time.monotonic() > deadline:
                raise LabError(f"up6: {prefix} not from {relays} relays via {gateway}")
            time.sleep(0.1)


def _bfd_neighbours(spec: AnycastSpec) -> dict[str, list[str]]:
    """Each router's BGP neighbours, every one of them with BFD on (lab/bird.py)."""
    up6 = [relay_link(i)[1] for i in range(1, spec.relays + 1)]
    if spec.anycast_ipv4:
        up6 += [relay_link_v4(i)[1] for i in range(1, spec.relays + 1)]
    up4 = [server_link(j)[1] for j in range(1, spec.servers + 1)]
    return {router: hops for router, hops in (("up6", up6), ("up4", up4)) if hops}


def wait_bfd(lab: Lab, router: str, neighbours: Sequence[str], *, timeout: float) -> float:
    """Poll until `router`'s BFD sessions with every one of `neighbours` are Up; the seconds it
    took. LabError with the router's view after `timeout`."""
    start = time.monotonic()
    while True:
        missing = set(neighbours) - bfd_up(birdc(lab, router, "show", "bfd", "sessions"))
        if not missing:
            return time.monotonic() - start
        if time.monotonic() - start > timeout:
            view = json.dumps(router_view(lab, router), indent=1)
            raise LabError(
                f"{router}: BFD not up with {sorted(missing)} after {timeout:g} s\n{view}"
            )
        time.sleep(0.05)


def birdc(lab: Lab, host: str, *query: str) -> str:
    _, ctl = _bird_files(lab, host)
    proc = lab.exec(host, birdc_command(ctl, *query), check=False, timeout=10)
    return proc.stdout if proc.returncode == 0 else f"(birdc: {proc.stderr.strip()})"


def router_view(lab: Lab, router: str) -> dict[str, Any]:
    """What `router` has: its Established sessions, the routes BIRD holds (which protocol
    each came from, best first) and the kernel's ECMP next hops per prefix."""
    routes = selected(birdc(lab, router, "show", "route"))
    return {
        "router": router,
        "established": sorted(established(birdc(lab, router, "show", "protocols"))),
        "bfd_up": sorted(bfd_up(birdc(lab, router, "show", "bfd", "sessions"))),
        "routes": routes,
        "kernel": {prefix: kernel_nexthops(lab, router, prefix) for prefix in routes},
    }


def vtysh(lab: Lab, host: str, command: str) -> str:
    argv = frr.vtysh_command(frr.lab_files(lab, host), command)
    proc = lab.exec(host, argv, check=False, timeout=10)
    return proc.stdout if proc.returncode == 0 else ""


def speaker_view(lab: Lab, host: str) -> dict[str, Any]:
    """What a relay's or server's routing daemon exports: its session and the routes it has."""
    if frr.lab_files(lab, host).root.exists():
        # A relay: its 2001::/32 (and its anycast IPv4 /32, if any); a server: its two /32.
        families = ("ipv4", "ipv6") if host.startswith("relay") else ("ipv4",)
        announces = [
            p
            for family in families
            for p in frr.announced(vtysh(lab, host, f"show bgp {family} unicast json"))
        ]
        return {
            "host": host,
            "daemon": "frr",
            "established": sorted(frr.established(vtysh(lab, host, "show bgp summary json"))),
            "announces": sorted(announces),
        }
    return {
        "host": host,
        "daemon": "bird",
        "established": sorted(established(birdc(lab, host, "show", "protocols"))),
        "announces": sorted(selected(birdc(lab, host, "show", "route"))),
    }


def _link_tx(lab: Lab, router: str, links: list[str]) -> dict[str, int]:
    out = lab.exec(router, ["ip", "-j", "-s", "link", "show"], check=False).stdout
    try:
        found = {str(d["ifname"]): int(d["stats64"]["tx"]["packets"]) for d in json.loads(out)}
    except (ValueError, KeyError, TypeError):
        found = {}
    return {link: found.get(link, 0) for link in links}


def carrying_relay(lab: Lab, target: str, *, count: int = 20) -> str | None:
    """The relay that carries native traffic to `target` now: up6's ECMP choice, seen on its
    links' counters while the native host pings `target` (`ip route get` cannot tell: for
    IPv6 it hashes without a packet, and may pick another path than forwarding does)."""
    spec = load_spec(lab)
    if spec is None:
        return None
    links = [f"r{i}" for i in range(1, spec.relays + 1)]
    before = _link_tx(lab, "up6", links)
    lab.exec(
        "native",
        ["ping", "-6", "-n", "-q", "-i", "0.01", "-c", str(count), "-W", "1", target],
        check=False,
        timeout=20,
    )
    after = _link_tx(lab, "up6", links)
    delta = {link: after[link] - before[link] for link in links}
    best = max(links, key=lambda link: delta[link])
    # Each link also carries BFD (10 packets a second): the winner must carry every echo.
    if delta[best] < count:
        return None
    return relay_host(int(best.removeprefix("r")))


def server_for(lab: Lab, source: str, destination: str) -> str | None:
    """The server up4 sends `source` -> `destination` to now (the kernel's ECMP choice: for
    IPv4, `ip route get ... iif` builds a packet and takes the forwarding path)."""
    out = lab.exec(
        "up4", ["ip", "route", "get", destination, "from", source, "iif", "eth0"], check=False
    ).stdout
    for host, addresses in lab.extra_addresses.items():
        if host.startswith("server") and f"via {addresses[2]} " in out:
            return host
    return None


# --- a relay host cut off without a word -------------------------------------------------------

_CUT = "teredo_lab_cut"


def cut_relay(lab: Lab, i: int) -> None:
    """Drop everything on relay i's upstream link, as a dead host or a dead link would: no
    BGP goodbye, only BFD (and, much later, the BGP hold timer) can tell; so first BFD must be
    up with it."""
    wait_bfd(lab, "up6", [relay_link(i)[1]], timeout=15)
    ruleset = (
        f"table inet {_CUT} {{\n"
        '  chain pre { type filter hook prerouting priority -300; iifname "up0" drop; }\n'
        '  chain post { type filter hook postrouting priority -300; oifname "up0" drop; }\n'
        "}\n"
    )
    lab.exec(relay_host(i), ["nft", "-f", "-"], input_text=ruleset)


def heal_relay(lab: Lab, i: int) -> None:
    lab.exec(relay_host(i), ["nft", "delete", "table", "inet", _CUT])


# --- state ------------------------------------------------------------------------------------


def _save(lab: Lab, spec: AnycastSpec) -> None:
    (lab.state_dir / STATE_FILE).write_text(json.dumps(asdict(spec)), encoding="utf-8")


def load_spec(lab: Lab) -> AnycastSpec | None:
    """The anycast part of a recorded lab, or None for a lab without one."""
    try:
        data = json.loads((lab.state_dir / STATE_FILE).read_text(encoding="utf-8"))
        return AnycastSpec(
            int(data["relays"]),
            int(data["servers"]),
            float(data["drain"]),
            str(data.get("routing", "bird")),
            bool(data.get("anycast_ipv4", False)),
            str(data.get("datapath", "auto")),
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None


def status(lab: Lab) -> dict[str, Any] | None:
    """The routers' and speakers' view, for `teredo lab status` (None: no anycast part)."""
    spec = load_spec(lab)
    if spec is None:
        return None
    existing = set(system.namespaces_with_prefix(lab.prefix))
    routers = [
        router_view(lab, r)
        for r in ("up6", "up4")
        if r in lab.extra_hosts and lab.ns(r) in existing
    ]
    speakers = [
        speaker_view(lab, h)
        for h in [relay_host(i) for i in range(1, spec.relays + 1)]
        + [server_host(j) for j in range(1, spec.servers + 1)]
        if lab.ns(h) in existing
    ]
    return {
        "relays": spec.relays,
        "servers": spec.servers,
        "routing": spec.routing,
        "routers": routers,
        "speakers": speakers,
    }


def status_lines(view: dict[str, Any]) -> list[str]:
    """`teredo lab status` text for the anycast part."""
    speakers = "BIRD" if view.get("routing", "bird") == "bird" else "FRR"
    lines = [
        f"anycast: {view['relays']} relay(s), {view['servers']} server(s), BGP + BFD "
        f"(routers BIRD, speakers {speakers})"
    ]
    for router in view["routers"]:
        lines.append(f"  {router['router']}: sessions up: {', '.join(router['established'])}")
        for prefix, protocols in router["routes"].items():
            hops = router["kernel"].get(prefix, [])
            lines.append(
                f"    {prefix:<18} from {', '.join(protocols)}; kernel ECMP via {', '.join(hops)}"
            )
    for speaker in view["speakers"]:
        state = "up" if speaker["established"] else "DOWN"
        lines.append(
            f"  {speaker['host']:<8} {speaker.get('daemon', 'bird'):<4} BGP {state:<4} "
            f"announces {', '.join(speaker['announces'])}"
        )
    return lines
