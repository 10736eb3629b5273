"""`teredo lab demo --relays N [--servers M]`: anycast relays (and servers) with BIRD, a relay
killed and traffic moving, a relay drained, both back (issue 11, docs/scale.md).

With `--anycast-ipv4` (2 relays or more, active/standby on one IPv4, lab/anycast.py): the active
relay killed while echoes go both ways between the native host and every client, both clients'
traffic moving to the standby at the same IPv4 address (outage measured per stream), the
relay restarted and selected again, then drained (SIGTERM) without loss and back again."""

from __future__ import annotations

import signal
import time
from collections.abc import Callable, Sequence
from typing import Any

from teredo.lab import anycast, anycast_failover
from teredo.lab.demo import run_in_lab, summarize
from teredo.lab.nat import NatKind
from teredo.lab.roles import RELAY_PORT, Impl
from teredo.lab.system import LabError
from teredo.lab.topology import NATIVE_V6, SERVER_V4, SERVER_V4_2, TEREDO_PREFIX, Lab, ping_counts

DEFAULT_NATS = (NatKind.PORT_RESTRICTED, NatKind.PORT_RESTRICTED)
DEFAULT_CLIENTS = (Impl.MIREDO, Impl.TEREDO)

Result = tuple[str, bool, str]


def _routers(lab: Lab, out: Callable[[str], None]) -> None:
    view = anycast.status(lab)
    for line in anycast.status_lines(view) if view else []:
        out(f"    {line}")


def _ping(lab: Lab, source: str, target: str, count: int) -> tuple[int, int]:
    return ping_counts(lab.ping(source, target, count=count).stdout) or (count, 0)


def run_anycast_demo(
    prefix: str,
    relays: int,
    servers: int = 0,
    nats: Sequence[NatKind] = DEFAULT_NATS,
    client_impl: Sequence[Impl] = DEFAULT_CLIENTS,
    *,
    server_impl: Impl = Impl.TEREDO,
    count: int = 3,
    routing: str = "bird",
    anycast_ipv4: bool = False,
    out: Callable[[str], None] = print,
) -> int:
    """Run the demo; 0 when every step worked. The lab is torn down however it ends."""
    if relays < 2:
        raise LabError("the anycast demo needs at least 2 relays (--relays 3)")
    spec = anycast.AnycastSpec(relays, servers, routing=routing, anycast_ipv4=anycast_ipv4)
    spec.check()
    clients = list(client_impl)[: len(nats)]
    clients += [Impl.TEREDO] * (len(nats) - len(clients))
    server = None if servers else server_impl
    lab = Lab(prefix, nats, server_impl=server, relay_impl=None, client_impl=None)
    results: list[Result] = []

    def steps() -> int:
        shared = f", sharing {anycast.RELAY_ANYCAST_V4} (active/standby)" if anycast_ipv4 else ""
        out(
            f"== Teredo anycast demo: {relays} relays{shared}, {servers or 1} server(s), "
            f"prefix {prefix!r}"
        )
        out(anycast.__doc__.split("```")[1] if anycast.__doc__ else "")
        kinds = ", ".join(
            f"client{s.index}: {impl.value} behind {s.nat.value}"
            for s, impl in zip(lab.sites, clients, strict=True)
        )
        out(f"[1] building: routers (BIRD), relays and servers of ours, {kinds}")
        started = time.monotonic()
        anycast.up(lab, spec, clients)
        out(f"    built, every BGP path up, in {time.monotonic() - started:.1f} s")
        addresses: dict[int, str] = {}
        for site in lab.sites:
            try:
                info = lab.wait_qualified(site.index, timeout=30)
            except LabError as exc:
                results.append((f"client{site.index} qualifies", False, str(exc).splitlines()[0]))
                continue
            addresses[site.index] = str(info.address)
            where = ""
            if servers:
                a = anycast.server_for(lab, site.public_ip, SERVER_V4)
                b = anycast.server_for(lab, site.public_ip, SERVER_V4_2)
                where = f" (RS to {SERVER_V4} -> {a}, to {SERVER_V4_2} -> {b})"
            out(f"    client{site.index} qualified: {info.address}{where}")
            results.append((f"client{site.index} qualifies", True, str(info.address)))
        out("[2] what the routers announce and select (birdc, ip route):")
        _routers(lab, out)
        out("[3] native host <-> clients, through whichever relay up6 picks:")
        for index, target in addresses.items():
            relay = anycast.carrying_relay(lab, target)
            sent, got = _ping(lab, "native", target, count)
            back_sent, back = _ping(lab, f"client{index}", NATIVE_V6, count)
            out(f"    client{index} via {relay}: native -> client {got}/{sent},")
            out(f"        client -> native {back}/{back_sent}")
            results.append((f"native <-> client{index}", got > 0 and back > 0, f"via {relay}"))
        if addresses and anycast_ipv4:
            results.extend(_active_standby(lab, spec, addresses, out))
        elif addresses:
            results.extend(_ecmp(lab, spec, addresses, out))
        return summarize(results, out)

    return run_in_lab(lab, steps, out)


def _ecmp(
    lab: Lab, spec: anycast.AnycastSpec, addresses: dict[int, str], out: Callable[[str], None]
) -> list[Result]:
    """The ECMP part: kill -9 of the relay carrying a client, SIGTERM of the next (3 relays
    or more), both restarted."""
    results: list[Result] = []
    relays = spec.relays
    target_index = min(addresses)
    target = addresses[target_index]
    out(f"[4] kill -9 the relay carrying client{target_index}, echoes every 20 ms:")
    killed = anycast_failover.stop_relay_under_ping(lab, target, signal.SIGKILL)
    out(f"    {killed.line()}")
    now = anycast.carrying_relay(lab, target)
    out(f"    client{target_index} is now served by {now}")
    results.append(
        (
            "relay killed: traffic moves",
            now not in (None, killed.relay),
            f"{killed.relay} -> {now}, {killed.outage_seconds:.3f} s",
        )
    )
    _routers(lab, out)
    stopped = {killed.relay}
    if relays >= 3:
        out(f"[5] SIGTERM {now}: withdraw, drain {spec.drain:g} s, exit:")
        drained = anycast_failover.stop_relay_under_ping(lab, target, signal.SIGTERM, seconds=3.0)
        out(f"    {drained.line()}")
        results.append(("relay drained: no echo lost", drained.lost == 0, drained.line()))
        stopped.add(drained.relay)
    out("[6] restarted: they announce again")
    for host in sorted(stopped):
        anycast.start_relay(lab, int(host.removeprefix("relay")), spec)
    took = anycast.wait_paths(lab, "up6", TEREDO_PREFIX, relays, timeout=30)
    out(f"    {relays} paths again after {took:.1f} s")
    results.append(("relays back", True, f"{took:.1f} s"))
    _routers(lab, out)
    return results


def _relay_counters(lab: Lab, host: str) -> dict[str, Any]:
    docs = lab.daemon_status(host) or [{}]
    status = docs[0].get("status") or {}
    counters = status.get("counters") or {}
    return {"local": status.get("local"), **counters}


def _active(lab: Lab) -> str | None:
    """The relay up6 routes both the anycast /32 and 2001::/32 to, None if they differ."""
    spec = anycast.load_spec(lab)
    relays = range(1, (spec.relays if spec else 0) + 1)
    v4 = anycast.kernel_nexthops(lab, "up6", f"{anycast.RELAY_ANYCAST_V4}/32")
    v6 = anycast.kernel_nexthops(lab, "up6", TEREDO_PREFIX)
    for i in relays:
        if v4 == [anycast.relay_link_v4(i)[1]] and v6 == [anycast.relay_link(i)[1]]:
            return anycast.relay_host(i)
    return None


def _both_ways(
    lab: Lab, addresses: dict[int, str], how: signal.Signals, relay: str, out: Callable[[str], None]
) -> list[anycast_failover.Failover]:
    """`how` to `relay` while echoes go every 20 ms from the native host to every client and
    from every client to the native host; each stream's figures printed."""
    streams = [("native", t) for t in addresses.values()]
    streams += [(f"client{i}", NATIVE_V6) for i in addresses]
    seconds = 4.0 if how == signal.SIGKILL else 3.0
    found = anycast_failover.stop_relay_under_pings(lab, streams, how, relay, seconds=seconds)
    names = {a: f"client{i}" for i, a in addresses.items()} | {NATIVE_V6: "native"}
    for (source, target), failover in zip(streams, found, strict=True):
        out(f"    {source} -> {names[target]}: {failover.line()}")
    return found


def _worst(found: list[anycast_failover.Failover]) -> str:
    lost = sum(f.lost for f in found)
    sent = sum(f.sent for f in found)
    worst = max(f.outage_seconds for f in found)
    return f"{lost} of {sent} echoes lost, longest outage {worst:.3f} s"


def _restart_active(
    lab: Lab, spec: anycast.AnycastSpec, host: str, standby: str, out: Callable[[str], None]
) -> Result:
    """Start `host` again; it is back when up6 routes both prefixes to it again (the standby
    prepends its AS)."""
    i = int(host.removeprefix("relay"))
    j = int(standby.removeprefix("relay"))
    started = time.monotonic()
    anycast.start_relay(lab, i, spec)
    v4 = f"{anycast.RELAY_ANYCAST_V4}/32"
    try:
        anycast.wait_without(lab, "up6", v4, anycast.relay_link_v4(j)[1], timeout=30)
        anycast.wait_without(lab, "up6", TEREDO_PREFIX, anycast.relay_link(j)[1], timeout=30)
    except LabError as exc:
        return (f"{host} restarted: active again", False, str(exc))
    took = time.monotonic() - started
    now = _active(lab)
    out(
        f"    {host} announced and selected again after {took:.1f} s (up6: both prefixes via {now})"
    )
    return (f"{host} restarted: active again", now == host, f"{took:.1f} s")


def _carries(
    lab: Lab, relay: str, addresses: dict[int, str], count: int, out: Callable[[str], None]
) -> bool:
    """Every client <-> native host through `relay`: its counters grow by the echoes."""
    ok = True
    for index, target in addresses.items():
        before = _relay_counters(lab, relay)
        got = _ping(lab, "native", target, count)[1]
        back = _ping(lab, f"client{index}", NATIVE_V6, count)[1]
        after = _relay_counters(lab, relay)
        from_teredo = after.get("from_teredo", 0) - before.get("from_teredo", 0)
        to_teredo = after.get("to_teredo", 0) - before.get("to_teredo", 0)
        out(
            f"    client{index}: native -> client {got}/{count}, client -> native {back}/{count}; "
            f"{relay} (local {after.get('local')}) forwarded {from_teredo} from and "
            f"{to_teredo} to Teredo"
        )
        ok = ok and got > 0 and back > 0 and from_teredo >= back and to_teredo >= got
    return ok


def _active_standby(
    lab: Lab, spec: anycast.AnycastSpec, addresses: dict[int, str], out: Callable[[str], None]
) -> list[Result]:
    """The --anycast-ipv4 part: kill -9 of the active relay, restart, SIGTERM, restart."""
    results: list[Result] = []
    active = _active(lab) or anycast.relay_host(1)
    standby = anycast.relay_host(2 if active != anycast.relay_host(2) else 1)
    where = f"{anycast.RELAY_ANYCAST_V4}:{RELAY_PORT}"
    out(f"[4] kill -9 the active {active} ({where}), echoes every 20 ms both ways, every client:")
    killed = _both_ways(lab, addresses, signal.SIGKILL, active, out)
    now = _active(lab)
    out(f"    up6 now routes {anycast.RELAY_ANYCAST_V4}/32 and {TEREDO_PREFIX} via {now}:")
    moved = _carries(lab, str(now), addresses, 3, out)
    every = all(f.received > 0 for f in killed)
    results.append(
        (
            "relay killed: both clients move to the standby",
            every and moved and now == standby,
            f"{active} -> {now} at {where}, {_worst(killed)}",
        )
    )
    _routers(lab, out)
    out(f"[5] restart {active}: it announces again, up6 selects it again")
    results.append(_restart_active(lab, spec, active, standby, out))
    out(f"[6] SIGTERM {active}: withdraw both prefixes, drain {spec.drain:g} s, exit:")
    drained = _both_ways(lab, addresses, signal.SIGTERM, active, out)
    lost = sum(f.lost for f in drained)
    results.append(("relay drained: no echo lost", lost == 0, _worst(drained)))
    out(f"[7] restart {active} again; traffic through it:")
    back = _restart_active(lab, spec, active, standby, out)
    carried = _carries(lab, active, addresses, 3, out)
    results.append(("relays back: it takes traffic again", back[1] and carried, back[2]))
    _routers(lab, out)
    return results
