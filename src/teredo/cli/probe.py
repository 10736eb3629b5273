"""`teredo probe SERVER [SERVER ...]`: ask Teredo servers what qualification asks, pick the best.

No interface, no address, no route is created: per server, one UDP socket on an ephemeral port
sends Router Solicitations (RFC 4380 section 5.2.1) to that server's two addresses only, a
bounded number of times, and reads the answers. docs/probe.md describes what is sent and how
the NAT type is derived. Exit status: 0 a usable server was found, 1 none, 2 usage error.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import sys
from collections.abc import Sequence
from typing import Any

from teredo.cli.options import read_config_text
from teredo.core.addr import TEREDO_PREFIX
from teredo.core.client import NatType
from teredo.core.config import ConfigError, parse_client
from teredo.core.natbehaviour import PortAllocation
from teredo.core.probe import (
    DEFAULT_ROUNDS,
    DEFAULT_TIMEOUT,
    MAX_ROUNDS,
    MAX_TIMEOUT,
    MIN_TIMEOUT,
    ProbeResult,
    choose,
)
from teredo.core.upnpnat import upnp_verdict
from teredo.io.probe import Candidate, CandidateError, parse_candidate, probe_servers

EXIT_FOUND = 0
EXIT_NONE = 1
EXIT_USAGE = 2

_COLUMNS = ("server", "reach", "rtt median", "loss", "nat", "mapping", "secondary")


def register(subparsers: argparse._SubParsersAction[Any]) -> None:
    parser = subparsers.add_parser(
        "probe",
        help="probe Teredo servers and pick the best",
        description=(
            "Send Router Solicitations to each Teredo server as a qualifying client would "
            "(RFC 4380 section 5.2.1) -- ROUNDS to the primary address, up to ROUNDS with the "
            "cone flag, up to ROUNDS to the secondary address -- from one ephemeral UDP port "
            "per server, and report reachability, round-trip time, loss, mapping and NAT type. "
            "Nothing is configured and nothing is sent to any other address. Exit status 0 "
            "when a usable server was found, 1 when none, 2 on a usage error."
        ),
    )
    parser.add_argument(
        "servers",
        nargs="*",
        metavar="SERVER",
        help="a server name or IPv4 address, optionally PRIMARY/SECONDARY "
        "(the secondary defaults to the primary + 1)",
    )
    parser.add_argument(
        "-c",
        "--config",
        metavar="FILE",
        help="also probe the ServerAddress (and ServerAddress2) of this miredo.conf",
    )
    parser.add_argument(
        "--rounds",
        metavar="N",
        default=str(DEFAULT_ROUNDS),
        help=f"RS to the primary address per server, and the tries of each other test "
        f"(1-{MAX_ROUNDS}, default {DEFAULT_ROUNDS}; at most 3*N RS per server)",
    )
    parser.add_argument(
        "--timeout",
        metavar="S",
        default=str(DEFAULT_TIMEOUT),
        help=f"seconds to wait for each answer ({MIN_TIMEOUT}-{MAX_TIMEOUT}, "
        f"default {DEFAULT_TIMEOUT:g}); the whole run takes at most 3*N*S + 1 s",
    )
    parser.add_argument(
        "--bind-address",
        metavar="IPV4",
        default=None,
        help="local IPv4 address to send from (default: what routing picks)",
    )
    parser.add_argument(
        "--upnp",
        action="store_true",
        help="also ask the local network for a UPnP IGD (SSDP, no mapping made) and say what "
        "a client with UPnP yes would gain behind this NAT (RFC 6081)",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.set_defaults(run=run)


class UsageError(ValueError):
    """A bad command line: one line on stderr, exit status 2."""


def _rounds(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise UsageError(f"--rounds: {text!r} is not a whole number") from None
    if not 1 <= value <= MAX_ROUNDS:
        raise UsageError(f"--rounds: must be between 1 and {MAX_ROUNDS}, not {value}")
    return value


def _timeout(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise UsageError(f"--timeout: {text!r} is not a number of seconds") from None
    if not MIN_TIMEOUT <= value <= MAX_TIMEOUT:  # also rejects nan
        raise UsageError(f"--timeout: must be between {MIN_TIMEOUT} and {MAX_TIMEOUT} s")
    return value


def _bind(text: str | None) -> str | None:
    if text is None:
        return None
    try:
        return str(ipaddress.IPv4Address(text))
    except ValueError:
        raise UsageError(f"--bind-address: {text!r} is not an IPv4 address") from None


def candidates_from_config(path: str) -> tuple[list[str], bytes]:
    """SERVER arguments from a miredo.conf (ServerAddress[/ServerAddress2]) and the Teredo
    prefix it expects. Raises ConfigError (FILE:LINE: directive: problem)."""
    settings = parse_client(read_config_text(path), path)
    text = settings.server_address
    if settings.server_address2 is not None:
        text += "/" + settings.server_address2
    return [text], settings.prefix.network_address.packed[:4]


# --- output --------------------------------------------------------------------------------


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value * 1000.0:.1f} ms"


def _yes_no(value: bool | None) -> str:
    return "not tried" if value is None else ("answered" if value else "silent")


def table_rows(results: Sequence[ProbeResult]) -> list[tuple[str, ...]]:
    """One row of text cells per result, in _COLUMNS order."""
    rows: list[tuple[str, ...]] = []
    for r in results:
        server = r.name or r.server
        mapping = "-" if r.mapping is None else f"{r.mapping[0]}:{r.mapping[1]}"
        loss = f"{r.loss:.0%}" if r.primary_sent else "-"
        rows.append(
            (
                server,
                "yes" if r.reachable else "no",
                _ms(r.rtt_median),
                loss,
                str(r.nat),
                mapping,
                _yes_no(r.secondary),
            )
        )
    return rows


def format_table(results: Sequence[ProbeResult]) -> str:
    """The table, one line per server, plus an indented line per error."""
    rows = [_COLUMNS, *table_rows(results)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(_COLUMNS))]
    lines = []
    for n, row in enumerate(rows):
        lines.append("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
        if n:
            result = results[n - 1]
            lines.extend(f"  ! {error}" for error in result.errors)
            behaviour = result.behaviour
            if result.nat is NatType.SYMMETRIC and result.secondary_mapping is not None:
                host, port = result.secondary_mapping
                lines.append(f"  ! the secondary address saw {host}:{port}: symmetric NAT")
                what = behaviour.describe() if behaviour is not None else "symmetric"
                lines.append(f"  ! NAT {what}: a client qualifies with the primary mapping")
                if behaviour is not None:
                    lines.append(f"  ! {behaviour.reach()}")
            elif behaviour is not None and behaviour.ports is PortAllocation.PRESERVED:
                lines.append(f"  ! NAT {behaviour.describe()}: {behaviour.reach()}")
    return "\n".join(lines)


def best_line(best: ProbeResult | None, why: str) -> str:
    """The last line: `best: SERVER (why)` or `best: none (why)`."""
    if best is None:
        return f"best: none ({why})"
    return f"best: {best.name or best.server} ({why})"


def json_document(
    results: Sequence[ProbeResult], best: ProbeResult | None, why: str
) -> dict[str, Any]:
    return {
        "servers": [r.to_json() for r in results],
        "best": None if best is None else (best.name or best.server),
        "why": why,
    }


# --- the verb ------------------------------------------------------------------------------


def _candidates(args: argparse.Namespace) -> tuple[list[Candidate], bytes]:
    texts = list(args.servers)
    prefix = TEREDO_PREFIX
    if args.config is not None:
        more, prefix = candidates_from_config(args.config)
        texts += more
    if not texts:
        raise UsageError("no server to probe: give SERVER arguments or -c FILE")
    return [parse_candidate(t) for t in texts], prefix


def run(args: argparse.Namespace) -> int:
    try:
        rounds = _rounds(args.rounds)
        timeout = _timeout(args.timeout)
        bind = _bind(args.bind_address)
        candidates, prefix = _candidates(args)
    except ConfigError as err:
        print(err, file=sys.stderr)
        return EXIT_USAGE
    except (UsageError, CandidateError) as err:
        print(f"teredo probe: {err}", file=sys.stderr)
        return EXIT_USAGE
    results = probe_servers(
        candidates, rounds=rounds, timeout=timeout, bind_address=bind, prefix=prefix
    )
    best, why = choose(results)
    verdict = None
    if args.upnp:
        from teredo.io.upnp import probe_igd  # noqa: PLC0415 (miniupnpc only when asked)

        igd = probe_igd()
        seen = best if best is not None else (results[0] if results else None)
        verdict = upnp_verdict(
            None if igd is None else igd[1],
            None if seen is None else seen.mapping,
            None if seen is None else seen.behaviour,
        )
    if args.json:
        doc = json_document(results, best, why)
        if verdict is not None:
            doc["upnp"] = {"cone": verdict.cone, "text": verdict.text}
        print(json.dumps(doc, indent=1))
    else:
        print(format_table(results))
        if verdict is not None:
            print(f"upnp: {verdict.text}")
        print(best_line(best, why))
    return EXIT_FOUND if best is not None else EXIT_NONE
