"""`teredo server`: a Teredo server (RFC 4380 section 5.3), miredo-server compatible."""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import sys
from ipaddress import IPv4Address
from typing import TYPE_CHECKING, Any, NoReturn

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
)
from teredo.core.config import ConfigError, DatapathMode, Role, ServerSettings
from teredo.core.server import ServerLimits, ServerParams
from teredo.io.announce import (
    AnnounceError,
    Announcement,
    announce_while_serving,
    server_prefixes,
)
from teredo.io.control import ControlIdentity
from teredo.io.datapath import start_kernel
from teredo.io.driver import StartError, reload_handler
from teredo.io.loop import Daemon, DaemonLoop
from teredo.io.sdnotify import Notifier
from teredo.io.server_driver import (
    ServerDaemon,
    ServerSockets,
    open_server_sockets,
)

if TYPE_CHECKING:
    from teredo.io.kserver import ServerKernelPath
    from teredo.io.metrics import MetricsExporter
    from teredo.io.privileges import Target

EXIT_START_FAILED = 1
MAX_WORKERS = 64

_DEFAULT_LIMITS = ServerLimits()
_LIMIT_FLAGS = (
    ("--rs-rate", "rs_rate", "Router Solicitations answered per second per source IPv4:port"),
    ("--rs-burst", "rs_burst", "Router Solicitations a source IPv4:port may send at once"),
    ("--rs-ipv4-rate", "rs_ipv4_rate", "Router Solicitations per second per source IPv4 (a NAT)"),
    ("--rs-ipv4-burst", "rs_ipv4_burst", "Router Solicitations a source IPv4 may send at once"),
    ("--rs-total-rate", "rs_total_rate", "Router Advertisements per second in all"),
    ("--forward-rate", "forward_rate", "packets relayed per second per source IPv4"),
    ("--forward-burst", "forward_burst", "packets a source may have relayed at once"),
    ("--forward-total-rate", "forward_total_rate", "packets relayed per second in all"),
    ("--target-rate", "target_rate", "packets relayed per second to one client IPv4:port"),
    ("--target-burst", "target_burst", "packets one client IPv4:port may be sent at once"),
    ("--target-ipv4-rate", "target_ipv4_rate", "packets relayed per second to one IPv4"),
    ("--target-ipv4-burst", "target_ipv4_burst", "packets one IPv4 may be sent at once"),
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
    parser.add_argument(
        "--workers",
        type=int,
        default=1,
        metavar="N",
        help="worker processes sharing the ports by SO_REUSEPORT; limits then apply per "
        "worker (default 1)",
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
        user = privilege_target(args, settings)
        log = configure_logging(args, settings)
    except ConfigError as err:
        return report_config_error(err)
    for flag, name, _ in _LIMIT_FLAGS:
        if getattr(args, name) <= 0:
            print(f"command line: {flag}: must be positive", file=sys.stderr)
            return EXIT_CONFIG
    if not 1 <= args.workers <= MAX_WORKERS:
        print(f"command line: --workers: must be 1..{MAX_WORKERS}", file=sys.stderr)
        return EXIT_CONFIG
    if args.workers > 1 and settings.metrics_address is not None and args.no_control:
        # The supervisor reads its workers' metrics from their status sockets.
        print("command line: --metrics with --workers needs the status sockets", file=sys.stderr)
        return EXIT_CONFIG
    params = params_from(settings, args)
    announcement = None
    if settings.announce_table is not None:
        prefixes = server_prefixes(settings.server_bind_address, settings.server_bind_address2)
        announcement = Announcement(settings.announce_table, prefixes)
    drain = settings.announce_drain
    try:
        with PidFile(args.pidfile):
            # All sockets are opened before any fork, so that a start failure is one line
            # from one process, and each worker owns one set on the shared ports.
            if args.workers == 1:
                sets = [open_server_sockets(params)]
            else:
                sets = [
                    open_server_sockets(params, reuse_port=True, first=i == 0)
                    for i in range(args.workers)
                ]
            log.info(
                "Teredo server on %s and %s, UDP port 3544, prefix %s, MTU %d, %d worker(s)",
                settings.server_bind_address,
                settings.server_bind_address2,
                settings.prefix,
                settings.mtu,
                args.workers,
            )
            # Loaded and attached once, while this process still has CAP_BPF and CAP_NET_ADMIN
            # (the privilege drop keeps only the latter): with --workers, the one program on
            # each interface answers for all of them (its maps and limits are shared).
            kernel = start_kernel(
                settings.datapath,
                f"server on {_addresses(params)}",
                lambda: _start_kernel(params),
            )
            if args.workers == 1:
                control = control_identity(args, "server")
                return _serve(
                    args,
                    params,
                    sets[0],
                    control,
                    datapath=settings.datapath,
                    settings=settings,
                    announcement=announcement,
                    drain=drain,
                    user=user,
                    kernel=kernel,
                )
            try:
                return _supervise(
                    args,
                    params,
                    sets,
                    settings,
                    announcement=announcement,
                    drain=drain,
                    user=user,
                    kernel=kernel,
                )
            finally:
                if kernel is not None:
                    kernel.close()  # after every worker exited: detached now
    except (StartError, PidFileError, AnnounceError) as err:
        logging.getLogger("teredo").error("%s", err)
        return EXIT_START_FAILED


def _start_kernel(params: ServerParams) -> ServerKernelPath:
    # Imported here: a daemon with --datapath user never loads libbpf.
    from teredo.io.kserver import ServerKernelPath  # noqa: PLC0415

    return ServerKernelPath(params)


def _serve(
    args: argparse.Namespace,
    params: ServerParams,
    sockets: ServerSockets,
    control: ControlIdentity | None,
    *,
    datapath: DatapathMode,
    settings: ServerSettings | None = None,
    announcement: Announcement | None = None,
    drain: float = 0.0,
    user: Target | None = None,
    kernel: ServerKernelPath | None = None,
    on_kernel: bool = False,
) -> int:
    """One server process on `sockets` until SIGTERM or SIGINT; SIGHUP re-reads the file.

    With `announcement` (single process), it is made once the sockets are served and withdrawn
    first on SIGTERM, `drain` seconds before the exit. `kernel`: the XDP program this process
    reports and configures; `on_kernel`: it serves in front of this worker, but another one
    (worker 0) reports and configures it."""
    log = logging.getLogger("teredo")
    loop = DaemonLoop()
    try:
        if not loop.drop_privileges(user, log):
            if kernel is not None:
                kernel.close()
            return EXIT_START_FAILED
        daemon = ServerDaemon(params, loop, sockets, kernel, datapath=datapath, on_kernel=on_kernel)
        served: Daemon = daemon
        if announcement is not None:
            try:
                served = announce_while_serving(loop, daemon, announcement, drain)
            except AnnounceError:
                daemon.close()
                raise

        def load() -> tuple[ServerParams, DatapathMode]:
            fresh = load_settings(args, Role.SERVER)
            return params_from(fresh, args), fresh.datapath

        reload = reload_handler(log, load, lambda new: daemon.reload(*new))

        # Workers (settings None) serve no metrics of their own and leave systemd to the
        # supervisor, whose notifier took $NOTIFY_SOCKET out of their environment.
        metrics = metrics_endpoint(args, settings, "server") if settings is not None else None
        ready = f"serving on {_addresses(params)}"
        return loop.serve(
            served, log, reload, control=control, metrics=metrics, ready=ready, user=user
        )
    finally:
        loop.close()


def _addresses(params: ServerParams) -> str:
    return " and ".join(str(IPv4Address(ip)) + ":3544" for ip in (params.primary, params.secondary))


def _supervise(
    args: argparse.Namespace,
    params: ServerParams,
    sets: list[ServerSockets],
    settings: ServerSettings,
    *,
    announcement: Announcement | None = None,
    drain: float = 0.0,
    user: Target | None = None,
    kernel: ServerKernelPath | None = None,
) -> int:
    """Fork one worker per socket set; pass signals on; stop all when one dies.

    The parent holds the anycast announcement (made after the forks, so that no worker holds
    its anchor): on SIGTERM it withdraws, waits `drain` seconds (SIGALRM), then stops them.

    The server keeps no state across datagrams except its rate-limit buckets, so workers need
    not share anything: the kernel spreads datagrams over them by address and port hash
    (SO_REUSEPORT), and each worker has its own buckets (docs/server.md); `kernel`, the XDP
    program, answers for all (attached before the forks, detached by the caller after them).
    """
    log = logging.getLogger("teredo")
    notifier = Notifier.from_environment()  # before any fork: systemd hears the supervisor
    children: dict[int, int] = {}
    stopping = False
    forwarded = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1)

    def forward(signum: int, _frame: object) -> None:
        nonlocal stopping
        if signum in (signal.SIGTERM, signal.SIGINT):
            if not stopping and announcement is not None and announcement.withdraw() and drain:
                log.info("draining for %g s before stopping", drain)
                signal.signal(signal.SIGALRM, forward)
                signal.setitimer(signal.ITIMER_REAL, drain)
                return
            stopping = True
            signum = signal.SIGTERM
        elif signum == signal.SIGALRM:  # the drain is over
            stopping = True
            signum = signal.SIGTERM
        for pid in list(children):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signum)

    # Installed before the first fork, so that a SIGTERM arriving meanwhile still reaches the
    # workers already started instead of killing the parent alone.
    for sig in forwarded:
        signal.signal(sig, forward)
    for index in range(len(sets)):
        if stopping:
            break
        pid = os.fork()
        if pid == 0:  # pragma: no cover - runs in the child, which never returns
            kept = (settings.datapath, kernel)
            _run_worker(args, params, sets, index, forwarded=forwarded, user=user, kernel=kept)
        children[pid] = index
    for sockets in sets:
        for sock in sockets:
            sock.close()
    exporter, problem = _worker_metrics(args, settings)
    if problem is not None:
        log.error("%s: stopping", problem)
        forward(signal.SIGTERM, None)
    status = 0
    if announcement is not None and not stopping:
        try:
            announcement.announce()
        except AnnounceError as err:
            log.error("%s", err)
            stopping = True
            status = EXIT_START_FAILED
            forward(signal.SIGTERM, None)
    if not stopping:
        notifier.notify_ready(f"serving on {_addresses(params)}, {len(children)} workers")
    while children:
        pid, wait_status = os.wait()
        index = children.pop(pid, -1)
        if index < 0:
            continue  # not a worker (nothing else is forked here, but be safe)
        code = os.waitstatus_to_exitcode(wait_status)
        if not stopping:
            log.error("worker %d exited unexpectedly (status %d): stopping", index, code)
            stopping = True
            status = EXIT_START_FAILED
            forward(signal.SIGTERM, None)
        elif code != 0:
            status = EXIT_START_FAILED
    notifier.notify_stopping()
    if exporter is not None:
        exporter.close()
    if announcement is not None:
        announcement.withdraw()
    return EXIT_START_FAILED if problem is not None else status


def _run_worker(
    args: argparse.Namespace,
    params: ServerParams,
    sets: list[ServerSockets],
    index: int,
    *,
    forwarded: tuple[signal.Signals, ...],
    user: Target | None,
    kernel: tuple[DatapathMode, ServerKernelPath | None],
) -> NoReturn:  # pragma: no cover - runs in a forked child
    """A worker, in the child of a fork: serves socket set `index` until stopped, then exits
    (never returns into the supervisor's code). `kernel`: the Datapath setting and the shared
    XDP program's handle, inherited: worker 0 keeps it (it reports and configures the program
    for all), the others close their copies of its descriptors (the supervisor's keep the
    program attached)."""
    status = 1
    sockets = sets[index]
    datapath, shared = kernel
    owned = shared if index == 0 else None
    try:
        if shared is not None and owned is None:
            shared.close()
        for sig in forwarded:
            signal.signal(sig, signal.SIG_DFL)  # the worker's loop installs its own
        for other in sets:
            if other is not sockets:
                for sock in other:
                    sock.close()
        status = _serve(
            args,
            params,
            sockets,
            control_identity(args, "server", worker=index),
            datapath=datapath,
            user=user,
            kernel=owned,
            on_kernel=shared is not None,
        )
    except BaseException:
        logging.getLogger("teredo").exception("worker %d failed", index)
    finally:
        logging.shutdown()
        os._exit(status)


def _worker_metrics(
    args: argparse.Namespace, settings: ServerSettings
) -> tuple[MetricsExporter | None, str | None]:
    """The supervisor's metrics, read from every worker's status socket at each scrape
    (opened after the forks: no worker inherits its thread); (None, why) when it fails."""
    endpoint = metrics_endpoint(args, settings, "server")
    if endpoint is None:
        return None, None
    # Imported here: prometheus-client is loaded only by a daemon that serves metrics.
    from teredo.io.metrics import MetricsError, MetricsExporter, control_documents  # noqa: PLC0415

    try:
        exporter = MetricsExporter(endpoint.address, control_documents(endpoint.identity.name))
    except MetricsError as err:
        return None, str(err)
    logging.getLogger("teredo").info("Prometheus metrics on http://%s/metrics", endpoint.address)
    return exporter, None
