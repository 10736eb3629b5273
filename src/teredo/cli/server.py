"""`teredo server`: a Teredo server (RFC 4380 section 5.3), miredo-server compatible."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from typing import Any

from teredo.cli.options import (
    EXIT_CONFIG,
    PidFile,
    PidFileError,
    add_daemon_arguments,
    configure_logging,
    load_settings,
    report_config_error,
)
from teredo.core.config import ConfigError, Role, ServerSettings
from teredo.core.server import ServerLimits, ServerParams
from teredo.io.loop import DaemonLoop
from teredo.io.server_driver import ServerDaemon, ServerStartError

EXIT_START_FAILED = 1

_DEFAULT_LIMITS = ServerLimits()
_LIMIT_FLAGS = (
    ("--rs-rate", "rs_rate", "Router Solicitations answered per second per source IPv4"),
    ("--rs-burst", "rs_burst", "Router Solicitations a source may send at once"),
    ("--rs-total-rate", "rs_total_rate", "Router Advertisements per second in all"),
    ("--forward-rate", "forward_rate", "packets relayed per second per source IPv4"),
    ("--forward-burst", "forward_burst", "packets a source may have relayed at once"),
    ("--forward-total-rate", "forward_total_rate", "packets relayed per second in all"),
    ("--icmpv6-max", "icmpv6_max_payload", "largest relayed ICMPv6 message, bytes"),
)


def register(subparsers: Any) -> None:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "server",
        help="run a Teredo server (miredo-server compatible)",
        description=(
            "Run a Teredo server on UDP port 3544 of two consecutive global IPv4 addresses "
            "(RFC 4380 section 5.3). Stays in the foreground; SIGTERM stops it, SIGHUP "
            "re-reads the configuration, SIGUSR1 logs its counters."
        ),
    )
    add_daemon_arguments(parser, Role.SERVER)
    limits = parser.add_argument_group("abuse limits (see docs/server.md)")
    for flag, field_name, text in _LIMIT_FLAGS:
        default = getattr(_DEFAULT_LIMITS, field_name)
        limits.add_argument(
            flag,
            dest=field_name,
            type=type(default),
            default=default,
            metavar="N",
            help=f"{text} (default {default:g})",
        )
    parser.set_defaults(run=run)


def params_from(settings: ServerSettings, args: argparse.Namespace) -> ServerParams:
    limits = ServerLimits(**{name: getattr(args, name) for _, name, _ in _LIMIT_FLAGS})
    return ServerParams(
        primary=int(settings.server_bind_address),
        secondary=int(settings.server_bind_address2),
        prefix=settings.prefix.network_address.packed[:4],
        mtu=settings.mtu,
        limits=limits,
    )


def run(args: argparse.Namespace) -> int:
    try:
        settings = load_settings(args, Role.SERVER)
        log = configure_logging(args, settings)
    except ConfigError as err:
        return report_config_error(err)
    for flag, name, _ in _LIMIT_FLAGS:
        if getattr(args, name) <= 0:
            print(f"command line: {flag}: must be positive", file=sys.stderr)
            return EXIT_CONFIG
    loop = DaemonLoop()
    try:
        with PidFile(args.pidfile):
            daemon = ServerDaemon(params_from(settings, args), loop)
            log.info(
                "Teredo server on %s and %s, UDP port 3544, prefix %s, MTU %d",
                settings.server_bind_address,
                settings.server_bind_address2,
                settings.prefix,
                settings.mtu,
            )

            def reload() -> None:
                try:
                    fresh = load_settings(args, Role.SERVER)
                except ConfigError as err:
                    log.error("configuration not reloaded: %s", err)
                    return
                if daemon.replace_params(params_from(fresh, args)):
                    log.info("configuration reloaded")
                else:
                    log.error("configuration not reloaded: new addresses need a restart")

            loop.loop.add_signal_handler(signal.SIGUSR1, lambda: log.info(daemon.summary()))
            try:
                status = loop.run(on_reload=reload)
            finally:
                loop.loop.remove_signal_handler(signal.SIGUSR1)
                log.info("stopping: %s", daemon.summary())
                daemon.close()
            return status
    except (ServerStartError, PidFileError) as err:
        logging.getLogger("teredo").error("%s", err)
        return EXIT_START_FAILED
    finally:
        loop.close()
