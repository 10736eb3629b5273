"""`teredo lab demo --relays N [--servers M]`: anycast relays (and servers) with BIRD, a relay
killed and traffic moving, a relay drained, both back (issue 11, docs/scale.md)."""

from __future__ import annotations

import signal
import time
from collections.abc import Callable, Sequence

from teredo.lab import anycast, anycast_failover
from teredo.lab.demo import run_in_lab, summarize
from teredo.lab.nat import NatKind
from teredo.lab.roles import Impl
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
    out: Callable[[str], None] = print,
) -> int:
    """Run the demo; 0 when every step worked. The lab is torn down however it ends."""
    if relays < 2:
        raise LabError("the anycast demo needs at least 2 relays (--relays 3)")
    spec = anycast.AnycastSpec(relays, servers, routing=routing)
    spec.check()
    clients = list(client_impl)[: len(nats)]
    clients += [Impl.TEREDO] * (len(nats) - len(clients))
    server = None if servers else server_impl
    lab = Lab(prefix, nats, server_impl=server, relay_impl=None, client_impl=None)
    results: list[Result] = []

    def steps() -> int:
        out(f"== Teredo anycast demo: {relays} relays, {servers or 1} server(s), prefix {prefix!r}")
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
        if addresses:
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
                drained = anycast_failover.stop_relay_under_ping(
                    lab, target, signal.SIGTERM, seconds=3.0
                )
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
        return summarize(results, out)

    return run_in_lab(lab, steps, out)
