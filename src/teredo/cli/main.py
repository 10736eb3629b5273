"""Entry point of the `teredo` command: one sub-command (verb) per module of this package."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from teredo import __version__

# Each module named here defines `register(subparsers)`, which adds its verb and sets the
# parser default `run` to a function taking the parsed arguments and returning an exit status.
VERB_MODULES = (
    "teredo.cli.decode",
    "teredo.cli.checkconf",
    "teredo.cli.lab",
    "teredo.cli.server",
    "teredo.cli.client",
    "teredo.cli.relay",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="teredo",
        description="Teredo (RFC 4380): IPv6 over UDP/IPv4 through NATs.",
    )
    parser.add_argument("--version", action="version", version=f"teredo {__version__}")
    subparsers = parser.add_subparsers(dest="verb", metavar="VERB", required=True)
    for name in VERB_MODULES:
        importlib.import_module(name).register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    status: int = args.run(args)
    return status


if __name__ == "__main__":
    sys.exit(main())
