"""`teredo client`: a Teredo client (RFC 4380 section 5.2), Miredo compatible."""

from __future__ import annotations

import argparse
import logging
import os
from typing import TYPE_CHECKING, Any

from teredo.cli.options import (
    PidFile,
    PidFileError,
    add_daemon_arguments,
    configure_logging,
    control_identity,
    load_settings,
    metrics_endpoint,
    privilege_target,
    report_config_error,
)
from teredo.core.config import ClientSettings, ConfigError, Role
from teredo.io.client_driver import ClientDaemon
from teredo.io.client_options import ClientOptions
from teredo.io.datapath import start_kernel
from teredo.io.driver import StartError, reload_handler
from teredo.io.loop import DaemonLoop

if TYPE_CHECKING:
    from teredo.io.kclient import ClientKernelPath

EXIT_START_FAILED = 1


def register(subparsers: Any) -> None:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "client",
        help="run a Teredo client (miredo compatible)",
        description=(
            "Run a Teredo client: qualify with a Teredo server, then carry IPv6 over UDP/IPv4 "
            "through a TUN interface (default name teredo). Stays in the foreground; SIGTERM "
            "or SIGINT stops it and removes the interface, SIGHUP re-reads the configuration "
            "(the address is kept when the server is unchanged), SIGUSR1 logs its status."
        ),
    )
    add_daemon_arguments(parser, Role.CLIENT)
    extra = parser.add_argument_group("client extras")
    extra.add_argument(
        "--hook",
        metavar="FILE",
        help=(
            "script run on up/down/destroy with Miredo's client-hook environment "
            "(IFACE, STATE, ADDRESS, LLADDRESS, MTU, OLD_*), e.g. /etc/miredo/client-hook"
        ),
    )
    extra.add_argument(
        "--no-local-discovery",
        dest="local_discovery",
        action="store_false",
        help="do not send or listen for local discovery bubbles (RFC 4380 section 5.2.8)",
    )
    extra.add_argument(
        "--no-default-route",
        dest="default_route",
        action="store_false",
        help="no last-resort IPv6 default route through the tunnel (only the Teredo prefix)",
    )
    parser.set_defaults(run=run)


def options_from(settings: ClientSettings, args: argparse.Namespace) -> ClientOptions:
    hook = os.path.abspath(args.hook) if args.hook else None
    return ClientOptions(
        server=settings.server_address,
        server2=settings.server_address2,
        more_servers=settings.more_servers,
        interface=settings.interface_name,
        bind_address=str(settings.bind_address),
        bind_port=settings.bind_port,
        prefix=settings.prefix.network_address.packed[:4],
        refresh_interval=settings.refresh_interval,
        local_discovery=args.local_discovery,
        hook=hook,
        default_route=args.default_route,
        refuse_symmetric=settings.refuse_symmetric,
        datapath=settings.datapath,
        upnp=settings.upnp,
    )


def _check_hook(path: str | None) -> ConfigError | None:
    if path is not None and not (os.path.isfile(path) and os.access(path, os.X_OK)):
        return ConfigError("command line", 0, "--hook", f"{path} is not an executable file")
    return None


def _load_kernel() -> ClientKernelPath:
    # Imported here: a client with --datapath user never loads libbpf.
    from teredo.io.kclient import ClientKernelPath  # noqa: PLC0415

    return ClientKernelPath.load()


def run(args: argparse.Namespace) -> int:
    try:
        settings = load_settings(args, Role.CLIENT)
        user = privilege_target(args, settings)
        options = options_from(settings, args)
        problem = _check_hook(options.hook)
        if problem is not None:
            raise problem
        log = configure_logging(args, settings)
    except ConfigError as err:
        return report_config_error(err)
    loop = DaemonLoop()
    try:
        with PidFile(args.pidfile):
            # Loaded before the privilege drop (loading needs CAP_BPF); attached by the daemon
            # with the CAP_NET_ADMIN it keeps (docs/kernel.md).
            kernel = start_kernel(options.datapath, f"client on {options.interface}", _load_kernel)
            if not loop.drop_privileges(user, log):
                if kernel is not None:
                    kernel.close()
                return EXIT_START_FAILED
            daemon = ClientDaemon(options, loop, kernel=kernel)

            reload = reload_handler(
                log, lambda: options_from(load_settings(args, Role.CLIENT), args), daemon.reload
            )

            control = control_identity(args, "client", options.interface)
            metrics = metrics_endpoint(args, settings, "client", options.interface)
            # Ready for systemd once qualified (or the first attempt failed): ClientDaemon.
            start = daemon.start
            return loop.serve(
                daemon,
                log,
                reload,
                start=start,
                control=control,
                metrics=metrics,
                ready=None,
                user=user,
            )
    except (StartError, PidFileError) as err:
        logging.getLogger("teredo").error("%s", err)
        return EXIT_START_FAILED
    finally:
        loop.close()
