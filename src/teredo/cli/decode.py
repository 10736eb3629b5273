"""`teredo decode ADDRESS`: what a Teredo address says (RFC 4380 section 4, RFC 5991 flags)."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from teredo.core.addr import (
    FLAG_CONE,
    FLAG_RANDOM_MASK,
    TEREDO_PREFIX,
    TeredoAddress,
    format_prefix,
    is_global_ipv4,
    parse_prefix,
)


def register(subparsers: Any) -> None:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "decode",
        help="decode a Teredo IPv6 address",
        description="Print the server IPv4, flags, mapped port and mapped IPv4 embedded in a "
        "Teredo address (RFC 4380 section 4).",
    )
    parser.add_argument("address", metavar="ADDRESS", help="a Teredo IPv6 address")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument(
        "--prefix",
        default=None,
        help="Teredo prefix to expect (default 2001::/32; 3ffe:831f::/32 is the legacy one)",
    )
    parser.set_defaults(run=run)


def describe(addr: TeredoAddress) -> dict[str, Any]:
    """The fields of `addr` as plain values (what --json prints)."""
    return {
        "address": str(addr),
        "prefix": format_prefix(addr.prefix),
        "server": str(addr.server_ipv4),
        "flags": f"0x{addr.flags:04x}",
        "cone": addr.cone,
        "random_bits": f"0x{addr.random_bits:03x}",
        "other_flags": f"0x{addr.other_flags:04x}",
        "port": addr.port,
        "client": str(addr.client_ipv4),
        "server_global": is_global_ipv4(addr.server),
        "client_global": is_global_ipv4(addr.client),
    }


def run(args: argparse.Namespace) -> int:
    try:
        prefix = TEREDO_PREFIX if args.prefix is None else parse_prefix(args.prefix)
    except ValueError as exc:
        print(f"teredo decode: --prefix: {exc}", file=sys.stderr)
        return 2
    addr = TeredoAddress.parse(args.address, prefix)
    if addr is None:
        print(
            f"teredo decode: {args.address!r} is not a Teredo address "
            f"(not an IPv6 address inside {format_prefix(prefix)})",
            file=sys.stderr,
        )
        return 2
    info = describe(addr)
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    flags_note = "cone" if addr.cone else "not cone"
    extra = "" if addr.other_flags == 0 else f", other bits 0x{addr.other_flags:04x}"
    print(f"address:      {info['address']}")
    print(f"prefix:       {info['prefix']}")
    print(f"server IPv4:  {info['server']}")
    print(
        f"flags:        {info['flags']} ({flags_note}, random bits {info['random_bits']} "
        f"in mask 0x{FLAG_RANDOM_MASK:04x}{extra})"
    )
    print(f"cone bit:     {'set' if addr.flags & FLAG_CONE else 'clear'}")
    print(f"mapped port:  {info['port']}")
    print(f"client IPv4:  {info['client']}")
    return 0
