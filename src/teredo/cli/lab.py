"""`teredo lab up|down|status|demo`: the network-namespace lab (see docs/lab.md)."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from teredo.lab import anycast
from teredo.lab.anycast_demo import DEFAULT_CLIENTS as ANYCAST_DEMO_CLIENTS
from teredo.lab.anycast_demo import DEFAULT_NATS as ANYCAST_DEMO_NATS
from teredo.lab.anycast_demo import run_anycast_demo
from teredo.lab.demo import DEFAULT_NATS, run_demo
from teredo.lab.nat import NatKind
from teredo.lab.roles import Impl
from teredo.lab.system import LabError, check_prefix, namespaces_with_prefix
from teredo.lab.teardown import cleanup
from teredo.lab.topology import DEFAULT_PREFIX, Lab


def _nat(text: str) -> NatKind:
    try:
        return NatKind.parse(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def _impl(text: str) -> Impl | None:
    try:
        return Impl.parse(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def _impls(text: str) -> Impl | list[Impl | None] | None:
    """One implementation for every client, or a comma-separated list with one per NAT."""
    if "," not in text:
        return _impl(text)
    return [_impl(part.strip()) for part in text.split(",")]


def _prefix(text: str) -> str:
    try:
        return check_prefix(text)
    except LabError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "lab",
        help="build a Teredo lab in network namespaces (root)",
        description="A small Teredo internet in network namespaces: see docs/lab.md.",
    )
    verbs = parser.add_subparsers(dest="lab_verb", metavar="ACTION", required=True)

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--prefix",
            type=_prefix,
            default=DEFAULT_PREFIX,
            help=f"namespace prefix, ending in '-' (default {DEFAULT_PREFIX})",
        )

    def roles(p: argparse.ArgumentParser, none_ok: bool) -> None:
        p.add_argument(
            "--nat",
            dest="nats",
            type=_nat,
            action="append",
            metavar="KIND",
            help="add a client behind a NAT of this kind (none, full-cone, "
            "address-restricted, port-restricted, symmetric, symmetric-port-preserving, "
            "symmetric-sequential, symmetric-upnp); repeatable",
        )
        kinds = "miredo, teredo" + (" or none" if none_ok else "")
        # The demo shows our daemons (with a Miredo client among ours); `up` defaults to Miredo.
        ours = not none_ok
        default = Impl.TEREDO if ours else Impl.MIREDO
        p.add_argument(
            "--server", type=_impl, default=default, help=f"server: {kinds} (default {default})"
        )
        p.add_argument(
            "--relay", type=_impl, default=default, help=f"relay: {kinds} (default {default})"
        )
        p.add_argument(
            "--client",
            type=_impls,
            default=None if ours else Impl.MIREDO,
            help=f"clients: {kinds}, one for all or a comma-separated list, one per NAT "
            + ("(default: teredo, miredo, teredo, ...)" if ours else "(default miredo)"),
        )

    up = verbs.add_parser("up", help="build the lab and start its roles; it keeps running")
    common(up)
    roles(up, none_ok=True)
    up.add_argument(
        "--wait",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="wait this long for each client to qualify (0: do not wait)",
    )
    _anycast_options(up)
    up.set_defaults(run=_up)

    down = verbs.add_parser("down", help="stop the lab's processes and delete its namespaces")
    common(down)
    down.set_defaults(run=_down)

    status = verbs.add_parser("status", help="show namespaces, addresses, processes, clients")
    common(status)
    status.add_argument("--json", action="store_true", help="machine-readable output")
    status.set_defaults(run=_status)

    demo = verbs.add_parser(
        "demo", help="build, qualify, ping across NATs and the relay, tear down"
    )
    common(demo)
    roles(demo, none_ok=False)
    demo.add_argument("--count", type=int, default=3, help="echo requests per ping (default 3)")
    _anycast_options(demo)
    demo.set_defaults(run=_demo)


def _anycast_options(p: argparse.ArgumentParser) -> None:
    group = p.add_argument_group("anycast (issue 11, docs/scale.md)")
    group.add_argument(
        "--relays",
        type=int,
        default=0,
        metavar="N",
        help="N relays of ours behind a BIRD router (BGP, ECMP, BFD) instead of the one relay",
    )
    group.add_argument(
        "--servers",
        type=int,
        default=0,
        metavar="M",
        help="M servers of ours on the same two addresses behind a BIRD router (ECMP)",
    )
    group.add_argument(
        "--routing",
        choices=anycast.ROUTING,
        default="bird",
        help="the relays' and servers' BGP speakers: bird (default) or frr (the daemons "
        "announce in the main table, bgpd redistribute kernel)",
    )
    group.add_argument(
        "--anycast-ipv4",
        action="store_true",
        help=f"the relays share {anycast.RELAY_ANYCAST_V4} as their Teredo-side address "
        "(each binds and announces it, --anycast-ipv4), routed to them by the same BIRD router, "
        "active/standby; with demo: the active relay killed, then drained, both clients moving "
        "to the standby at the same address",
    )


def _client_impls(lab: Lab, client: Impl | list[Impl | None] | None) -> list[Impl | None]:
    if isinstance(client, list):
        return client
    return [client] * len(lab.sites)


def _fail(exc: BaseException) -> int:
    print(f"teredo lab: {exc}", file=sys.stderr)
    return 1


def _up(args: argparse.Namespace) -> int:
    nats = args.nats or [NatKind.PORT_RESTRICTED, NatKind.PORT_RESTRICTED, NatKind.FULL_CONE]
    spec = anycast.AnycastSpec(
        args.relays, args.servers, routing=args.routing, anycast_ipv4=args.anycast_ipv4
    )
    if spec.relays or spec.servers:
        lab = Lab(
            args.prefix,
            nats,
            server_impl=None if spec.servers else args.server,
            relay_impl=None if spec.relays else args.relay,
            client_impl=None,
        )
    else:
        lab = Lab(
            args.prefix,
            nats,
            server_impl=args.server,
            relay_impl=args.relay,
            client_impl=args.client,
        )
    try:
        if spec.relays or spec.servers:
            anycast.up(lab, spec, _client_impls(lab, args.client))
        else:
            lab.up()
        if args.wait > 0 and args.client is not None and args.server is not None:
            for site in lab.sites:
                lab.wait_qualified(site.index, timeout=args.wait)
    except LabError as exc:
        lab.down()
        return _fail(exc)
    except KeyboardInterrupt:
        lab.down()
        return 130
    _print_status(_with_anycast(lab))
    print(f"\nlab {args.prefix!r} is up; `teredo lab down --prefix {args.prefix}` removes it")
    return 0


def _down(args: argparse.Namespace) -> int:
    try:
        before = namespaces_with_prefix(args.prefix)
        leftovers = cleanup(args.prefix)
    except LabError as exc:
        return _fail(exc)
    print(f"removed {len(before)} namespace(s) of prefix {args.prefix!r}")
    if leftovers:
        print(f"could not remove: {', '.join(leftovers)}", file=sys.stderr)
        return 1
    return 0


def _status(args: argparse.Namespace) -> int:
    try:
        lab = Lab.load(args.prefix)
        status = _with_anycast(lab)
    except LabError as exc:
        try:
            stray = namespaces_with_prefix(args.prefix)
        except LabError:
            stray = []
        if stray:
            print(f"namespaces without a recorded lab: {', '.join(stray)}", file=sys.stderr)
        return _fail(exc)
    if args.json:
        print(json.dumps(status, indent=1))
    else:
        _print_status(status)
    return 0


def _with_anycast(lab: Lab) -> dict[str, Any]:
    """The lab's status, with what its BIRD routers announce and select when it has some."""
    status = lab.status()
    view = anycast.status(lab)
    if view is not None:
        status["anycast"] = view
    return status


def _print_status(status: dict[str, Any]) -> None:
    print(f"lab {status['prefix']!r}")
    print("hosts:")
    for host in status["hosts"]:
        state = "up" if host["up"] else "MISSING"
        print(
            f"  {host['host']:<9} {host['namespace']:<12} {state:<7} {', '.join(host['addresses'])}"
        )
    print("clients:")
    for site in status["sites"]:
        line = f"  {site['client']:<9} NAT {site['nat']:<18} public {site['public_ip']:<14}"
        if site["teredo"]:
            line += (
                f" {site['teredo']}\n{'':12}= server {site['teredo_server']}, mapped "
                f"{site['mapped']}{', cone flag' if site['cone_flag'] else ''}"
            )
        else:
            line += " (not qualified)"
        print(line)
    print("processes:")
    for proc in status["procs"]:
        alive = "alive" if proc["alive"] else "dead"
        print(f"  {proc['name']:<16} pid {proc['pid']:<7} {alive:<5} {' '.join(proc['argv'])}")
    daemons = status.get("daemons", [])
    if daemons:
        print("our daemons (teredo status):")
        for daemon in daemons:
            print(f"  {daemon['host']:<9} {daemon['summary']}")
    if "anycast" in status:
        print("\n".join(anycast.status_lines(status["anycast"])))
    if status["stray_namespaces"]:
        print(f"stray namespaces of this prefix: {', '.join(status['stray_namespaces'])}")


def _demo(args: argparse.Namespace) -> int:
    # No --client: the demo's own mix; a given list must name an implementation for each.
    if args.relays or args.servers:
        return _anycast_demo(args)
    clients = args.client if isinstance(args.client, list) else [args.client or Impl.TEREDO]
    if args.server is None or args.relay is None or None in clients:
        return _fail(LabError("the demo needs every role (miredo or teredo)"))
    try:
        return run_demo(
            args.prefix,
            args.nats or DEFAULT_NATS,
            server_impl=args.server,
            relay_impl=args.relay,
            client_impl=args.client,
            count=args.count,
        )
    except LabError as exc:
        return _fail(exc)
    except KeyboardInterrupt:
        return 130


def _anycast_demo(args: argparse.Namespace) -> int:
    nats = args.nats or list(ANYCAST_DEMO_NATS)
    clients = args.client if isinstance(args.client, list) else None
    if clients is None:
        clients = [args.client] * len(nats) if args.client else list(ANYCAST_DEMO_CLIENTS)
    if None in clients:
        return _fail(LabError("the demo needs an implementation for every client"))
    try:
        return run_anycast_demo(
            args.prefix,
            args.relays,
            args.servers,
            nats,
            [c for c in clients if c is not None],
            server_impl=args.server or Impl.TEREDO,
            count=args.count,
            routing=args.routing,
            anycast_ipv4=args.anycast_ipv4,
        )
    except LabError as exc:
        return _fail(exc)
    except KeyboardInterrupt:
        return 130


def main(argv: list[str] | None = None) -> int:
    """`python -m teredo.cli.lab ACTION ...`: the lab verb on its own."""
    parser = argparse.ArgumentParser(prog="teredo")
    register(parser.add_subparsers(dest="verb", required=True))
    args = parser.parse_args(["lab", *(sys.argv[1:] if argv is None else argv)])
    status: int = args.run(args)
    return status


if __name__ == "__main__":
    sys.exit(main())
