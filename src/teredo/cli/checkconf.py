"""`teredo checkconf`: check a Miredo configuration file, like miredo-checkconf(8).

Silent with exit status 0 for a good file; otherwise exactly one line
`FILE:LINE: Directive: what is wrong` on stderr and exit status 2. Unlike miredo-checkconf it
also checks miredo-server files (`--role server`, or detected from ServerBindAddress) and
resolves nothing unless asked (`--resolve`: server names must resolve to IPv4, as Miredo's
client requires at start-up, miredo.conf(5) "ServerAddress").
"""

from __future__ import annotations

import argparse
import socket
from typing import Any

from teredo.cli.options import read_config_text, report_config_error, resolve_ipv4
from teredo.core.config import (
    ClientSettings,
    ConfigError,
    Role,
    Settings,
    parse_config,
    read_directives,
)

_ROLES = ("auto", *(role.value for role in Role))


def register(subparsers: argparse._SubParsersAction[Any]) -> None:
    parser = subparsers.add_parser(
        "checkconf",
        help="check a miredo.conf / miredo-server.conf file",
        description=(
            "Check a Miredo configuration file. Silent with exit status 0 when it is good; "
            "otherwise one line FILE:LINE: Directive: problem on stderr and exit status 2."
        ),
    )
    parser.add_argument(
        "--role",
        choices=_ROLES,
        default="auto",
        help="which daemon the file is for (auto: ServerBindAddress means server, "
        "else RelayType decides; default auto)",
    )
    parser.add_argument(
        "--resolve",
        action="store_true",
        help="also resolve server host names to IPv4 (uses the system resolver)",
    )
    parser.add_argument("file", metavar="FILE", help="the file to check")
    parser.set_defaults(run=run)


def _resolve(settings: Settings, text: str, filename: str) -> None:
    if not isinstance(settings, ClientSettings):
        return  # server and relay files hold IPv4 literals only
    for directive in read_directives(text, filename):  # every ServerAddress (may repeat)
        if directive.name not in ("ServerAddress", "ServerAddress2"):
            continue
        try:
            resolve_ipv4(directive.value)
        except (OSError, UnicodeError) as exc:
            reason = exc.strerror if isinstance(exc, socket.gaierror) else str(exc)
            raise directive.error(f"cannot resolve {directive.value!r} to IPv4: {reason}") from None


def run(args: argparse.Namespace) -> int:
    try:
        text = read_config_text(args.file)
        role = None if args.role == "auto" else Role(args.role)
        settings = parse_config(text, args.file, role)
        if args.resolve:
            _resolve(settings, text, args.file)
    except ConfigError as err:
        return report_config_error(err)
    return 0
