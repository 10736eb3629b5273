"""Entry point of the `teredo` command: one sub-command (verb) per module of this package.

Start-up time matters (a client's time to qualify starts with the interpreter): only the
module of the verb being run is imported; the others appear in `--help` from VERB_HELP.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from teredo import __version__

# Each module named here defines `register(subparsers)`, which adds its verb and sets the
# parser default `run` to a function taking the parsed arguments and returning an exit status.
# The verb's name is the module's last component.
VERB_MODULES = (
    "teredo.cli.decode",
    "teredo.cli.checkconf",
    "teredo.cli.lab",
    "teredo.cli.server",
    "teredo.cli.client",
    "teredo.cli.relay",
    "teredo.cli.status",
    "teredo.cli.probe",
)

# The one-line help of each verb, shown by `teredo --help` without importing its module (must
# match the module's own; a verb missing here is imported to list it).
VERB_HELP = {
    "decode": "decode a Teredo IPv6 address",
    "checkconf": "check a miredo.conf / miredo-server.conf file",
    "lab": "build a Teredo lab in network namespaces (root)",
    "server": "run a Teredo server (miredo-server compatible)",
    "client": "run a Teredo client (miredo compatible)",
    "relay": "run a Teredo relay or host-specific relay (miredo compatible)",
    "status": "show the state of running teredo daemons",
    "probe": "probe Teredo servers and pick the best",
}


def _verb_name(module: str) -> str:
    return module.rsplit(".", 1)[-1]


def selected_verb(argv: Sequence[str]) -> str | None:
    """The verb `argv` runs (its first word not starting with '-'), if it is one of ours."""
    for word in argv:
        if not word.startswith("-"):
            names = {_verb_name(m) for m in VERB_MODULES}
            return word if word in names else None
    return None


class _VersionAction(argparse.Action):
    """`teredo --version`: "teredo VERSION (data path: kernel|user)"; the data path is
    looked up only when asked (teredo.datapath.available)."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: object,
        option_string: str | None = None,
    ) -> None:
        from teredo.datapath import available  # noqa: PLC0415 - only for --version

        print(f"teredo {__version__} (data path: {available()})")
        parser.exit()


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The whole parser; with `only`, that verb's module alone is imported (the others are
    listed with their help and cannot be parsed further)."""
    parser = argparse.ArgumentParser(
        prog="teredo",
        description="Teredo (RFC 4380): IPv6 over UDP/IPv4 through NATs.",
    )
    parser.add_argument(
        "--version",
        action=_VersionAction,
        nargs=0,
        help="print the version and the data path available (kernel or user) and exit",
    )
    subparsers = parser.add_subparsers(dest="verb", metavar="VERB", required=True)
    for name in VERB_MODULES:
        verb = _verb_name(name)
        if only is not None and verb != only and verb in VERB_HELP:
            subparsers.add_parser(verb, help=VERB_HELP[verb])
        else:
            importlib.import_module(name).register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    words = sys.argv[1:] if argv is None else list(argv)
    verb = selected_verb(words)
    # `teredo --help` and `teredo --version` need no verb module at all.
    parser = build_parser(only=verb if verb is not None else "")
    args = parser.parse_args(words)
    status: int = args.run(args)
    return status


if __name__ == "__main__":
    sys.exit(main())
