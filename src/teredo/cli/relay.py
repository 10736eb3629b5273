"""`teredo relay`: a Teredo relay or host-specific relay (RFC 4380 section 5.4), miredo compatible.

Runs in the foreground; SIGTERM or SIGINT stops it (the interface goes with it), SIGHUP re-reads
the configuration, SIGUSR1 logs its counters (one line, read by benchmarks and operators).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Any

from teredo.cli.options import (
    EXIT_CONFIG,
    PidFile,
    PidFileError,
    add_daemon_arguments,
    configure_logging,
    control_identity,
    load_settings,
    metrics_endpoint,
    privilege_target,
    report_config_error,
    resolve_ipv4,
)
from teredo.core.config import ConfigError, DatapathMode, RelaySettings, RelayType, Role
from teredo.core.directives import MAIN_TABLE
from teredo.core.peers import MIREDO_MAX_PEERS, PEER_VALIDITY
from teredo.core.relay import MAX_PEER_TIMEOUT, SERVER_BUBBLE_RATE, RelayParams
from teredo.io.announce import (
    AnnounceError,
    Announcement,
    announce_while_serving,
    relay_prefixes,
)
from teredo.io.datapath import load_early
from teredo.io.driver import StartError, reload_handler
from teredo.io.health import DEFAULT_INTERVAL, announce_while_server_answers
from teredo.io.krelay import RelayKernelPath
from teredo.io.loop import Daemon, DaemonLoop
from teredo.io.netlink import RTPROT_KERNEL
from teredo.io.relay_driver import (
    RelayDaemon,
    RelayEndpoint,
    ipv6_forwarding_enabled,
)

EXIT_START_FAILED = 1


def register(subparsers: Any) -> None:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "relay",
        help="run a Teredo relay or host-specific relay (miredo compatible)",
        description=(
            "Run a Teredo relay (RFC 4380 section 5.4) between native IPv6 and Teredo clients, "
            "or with --host-specific a relay that serves only this host's own addresses. "
            "Stays in the foreground; SIGTERM stops it, SIGHUP re-reads the configuration, "
            "SIGUSR1 logs its counters."
        ),
    )
    add_daemon_arguments(parser, Role.RELAY)
    parser.add_argument(
        "--peers",
        type=int,
        default=MIREDO_MAX_PEERS,
        metavar="N",
        help=(
            f"peer table capacity (default {MIREDO_MAX_PEERS}, as Miredo); memory grows with "
            "the peers"
        ),
    )
    parser.add_argument(
        "--peer-timeout",
        type=float,
        default=PEER_VALIDITY,
        metavar="SECONDS",
        help=(
            "keep a trusted peer's entry this long after its last use (default "
            f"{PEER_VALIDITY:g}; Miredo keeps them 30 to 60 s); its validity stays 30 s"
        ),
    )
    parser.add_argument(
        "--server-bubble-rate",
        type=float,
        default=SERVER_BUBBLE_RATE,
        metavar="N",
        help=(
            "indirect bubbles a second toward one Teredo server IPv4, twice that in a burst "
            f"(default {SERVER_BUBBLE_RATE:g}): the relay cannot be made to flood an address "
            "named as the server of made-up Teredo destinations"
        ),
    )
    parser.add_argument(
        "--health-server",
        metavar="HOST",
        help="with --announce-table: withdraw while this Teredo server does not answer an RS "
        "(one every --health-interval seconds; 3 misses, or the first, withdraw)",
    )
    parser.add_argument(
        "--health-interval",
        type=float,
        default=DEFAULT_INTERVAL,
        metavar="SECONDS",
        help=f"seconds between two health checks (default {DEFAULT_INTERVAL:g})",
    )
    parser.set_defaults(run=run)


def params_from(settings: RelaySettings, args: argparse.Namespace) -> RelayParams:
    return RelayParams(
        prefix=settings.prefix.network_address.packed[:4],
        host_specific=settings.host_specific,
        direct_bubbles=settings.direct_bubbles,
        peers=args.peers,
        mtu=settings.mtu,
        idle_timeout=args.peer_timeout,
        server_bubble_rate=args.server_bubble_rate,
        # Relays sharing an anycast IPv4: a standby serves the clients another one bubbled.
        serve_unknown=settings.anycast_ipv4 is not None,
    )


def endpoint_from(settings: RelaySettings) -> RelayEndpoint:
    return RelayEndpoint(
        interface=settings.interface_name,
        bind_address=str(settings.bind_address),
        bind_port=settings.bind_port,
        prefix=str(settings.prefix),
        # In the main table (FRR) the forwarding route must be one zebra does not read: with
        # its lower metric zebra would pick it over the announcement, whatever we announce.
        route_protocol=RTPROT_KERNEL if settings.announce_table == MAIN_TABLE else None,
    )


def _advise(log: logging.Logger, settings: RelaySettings, daemon: RelayDaemon) -> None:
    """Say what the operator still has to do (Miredo leaves it to its documentation)."""
    if settings.relay_type is RelayType.RESTRICTED:
        log.warning(
            "RelayType restricted is deprecated (as in Miredo): it only adds direct bubbles "
            "for a relay behind a restricted NAT; a relay should have a public IPv4 (use cone)"
        )
    if settings.host_specific:
        log.info(
            "host-specific relay: Teredo clients reach this host's own addresses directly; "
            "nothing is forwarded for others and %s must not be announced",
            settings.prefix,
        )
        return
    if settings.bind_port == 0:
        log.warning(
            "no BindPort: the relay listens on a random port (%d); clients reach it anyway, "
            "but a fixed port is easier to filter and survives restarts",
            daemon.local[1],
        )
    forwarding = ipv6_forwarding_enabled()
    if forwarding is False:
        log.warning(
            "IPv6 forwarding is disabled: set net.ipv6.conf.all.forwarding=1, or the relay "
            "serves only this host"
        )
    elif forwarding is None:
        log.warning("cannot read net.ipv6.conf.all.forwarding: check that IPv6 forwarding is on")
    log.info(
        "to serve a network, announce (route) %s to this host on its IPv6 side and let UDP "
        "reach %s:%d from Teredo clients",
        settings.prefix,
        daemon.local[0],
        daemon.local[1],
    )


def _watch_server(
    loop: DaemonLoop, announcement: Announcement, args: argparse.Namespace, bind_address: str
) -> None:
    try:
        server = int(resolve_ipv4(args.health_server))
    except (OSError, ValueError) as exc:
        raise StartError(f"--health-server {args.health_server}: {exc}") from None
    try:
        announce_while_server_answers(
            loop,
            announcement,
            server,
            args.health_server,
            bind_address=bind_address,
            interval=args.health_interval,
        )
    except (OSError, ValueError) as exc:
        raise StartError(f"--health-server {args.health_server}: {exc}") from None


def run(args: argparse.Namespace) -> int:
    if not 1 <= args.peers < (1 << 30):
        print("command line: --peers: must be between 1 and 2**30 - 1", file=sys.stderr)
        return EXIT_CONFIG
    if not PEER_VALIDITY <= args.peer_timeout <= MAX_PEER_TIMEOUT:
        print(
            f"command line: --peer-timeout: must be between {PEER_VALIDITY:g} and "
            f"{MAX_PEER_TIMEOUT:g} seconds",
            file=sys.stderr,
        )
        return EXIT_CONFIG
    if not 0 < args.server_bubble_rate <= 1e9:
        print("command line: --server-bubble-rate: must be positive", file=sys.stderr)
        return EXIT_CONFIG
    try:
        settings = load_settings(args, Role.RELAY)
        user = privilege_target(args, settings)
        log = configure_logging(args, settings)
    except ConfigError as err:
        return report_config_error(err)
    if args.health_server is not None and settings.announce_table is None:
        print("command line: --health-server: needs --announce-table", file=sys.stderr)
        return EXIT_CONFIG
    if not 0.1 <= args.health_interval <= 3600:
        print("command line: --health-interval: must be 0.1..3600 seconds", file=sys.stderr)
        return EXIT_CONFIG
    if settings.host_specific and settings.announce_table is not None:
        # RFC 4380 section 5.4: a host-specific relay serves only its own host.
        print(
            "command line: --announce-table: a host-specific relay announces nothing",
            file=sys.stderr,
        )
        return EXIT_CONFIG
    loop = DaemonLoop()
    try:
        with PidFile(args.pidfile):
            params = params_from(settings, args)
            # Loaded before the privilege drop (loading needs CAP_BPF); attached by the daemon
            # with the CAP_NET_ADMIN it keeps (docs/kernel.md).
            kernel_load = load_early(settings.datapath, lambda: RelayKernelPath(params.peers))
            if not loop.drop_privileges(user, log):
                return EXIT_START_FAILED
            daemon = RelayDaemon(
                params,
                endpoint_from(settings),
                loop,
                secret=os.urandom(32),
                datapath=settings.datapath,
                kernel_load=kernel_load,
            )
            kind = "host-specific relay" if settings.host_specific else "relay"
            log.info(
                "Teredo %s (%s) on UDP %s:%d, interface %s, prefix %s, MTU %d",
                kind,
                settings.relay_type.value,
                daemon.local[0],
                daemon.local[1],
                daemon.tun.name,
                settings.prefix,
                settings.mtu,
            )
            log.info(
                "peer table: %d peers at most, %.1f kB now (it grows with the peers)",
                args.peers,
                daemon.machine.nbytes() / 1000,
            )
            _advise(log, settings, daemon)
            served: Daemon = daemon
            if settings.announce_table is not None:
                # Ready to serve (UDP bound, TUN up, data thread running): announce now.
                prefixes = relay_prefixes(str(settings.prefix), settings.anycast_ipv4)
                announcement = Announcement(settings.announce_table, prefixes)
                try:
                    served = announce_while_serving(
                        loop, daemon, announcement, settings.announce_drain
                    )
                except AnnounceError:
                    daemon.close()
                    raise
                if args.health_server is not None:
                    _watch_server(loop, announcement, args, str(settings.bind_address))

            def load() -> tuple[RelayParams, RelayEndpoint, DatapathMode]:
                fresh = load_settings(args, Role.RELAY)
                return params_from(fresh, args), endpoint_from(fresh), fresh.datapath

            reload = reload_handler(log, load, lambda new: daemon.reload(*new))

            interface = settings.interface_name
            control = control_identity(args, "relay", interface)
            metrics = metrics_endpoint(args, settings, "relay", interface)
            ready = f"relaying on UDP {daemon.local[0]}:{daemon.local[1]}, {daemon.tun.name}"
            return loop.serve(
                served, log, reload, control=control, metrics=metrics, ready=ready, user=user
            )
    except (StartError, PidFileError, AnnounceError) as err:
        logging.getLogger("teredo").error("%s", err)
        return EXIT_START_FAILED
    finally:
        loop.close()
