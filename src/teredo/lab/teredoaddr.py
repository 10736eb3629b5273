"""Decode a Teredo address for display (RFC 4380 section 4), with `ipaddress` only.

The lab keeps its own small decoder so that it depends on nothing but the standard library; the
protocol code has its own codec in teredo.core.addr.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

TEREDO_NET = ipaddress.IPv6Network("2001::/32")  # RFC 4380 section 2.6: the Teredo prefix
CONE_FLAG = 0x8000  # RFC 4380 section 4: the "C" bit of the flags field


@dataclass(frozen=True)
class TeredoInfo:
    address: ipaddress.IPv6Address
    server: ipaddress.IPv4Address
    flags: int
    mapped_ip: ipaddress.IPv4Address
    mapped_port: int

    @property
    def cone(self) -> bool:
        return bool(self.flags & CONE_FLAG)

    def describe(self) -> str:
        return (
            f"{self.address} = server {self.server}, flags 0x{self.flags:04x}"
            f"{' (cone)' if self.cone else ''}, mapped {self.mapped_ip}:{self.mapped_port}"
        )


def decode(text: str | ipaddress.IPv6Address) -> TeredoInfo | None:
    """The fields of a Teredo address, or None when `text` is not one."""
    try:
        addr = ipaddress.IPv6Address(text)
    except ValueError:
        return None
    if addr not in TEREDO_NET:
        return None
    value = int(addr)
    # Layout (RFC 4380 section 4): prefix(32) | server IPv4(32) | flags(16) | port(16) | client(32);
    # the port and the client address are stored with all their bits inverted ("obfuscated").
    return TeredoInfo(
        address=addr,
        server=ipaddress.IPv4Address((value >> 64) & 0xFFFFFFFF),
        flags=(value >> 48) & 0xFFFF,
        mapped_port=((value >> 32) & 0xFFFF) ^ 0xFFFF,
        mapped_ip=ipaddress.IPv4Address((value & 0xFFFFFFFF) ^ 0xFFFFFFFF),
    )
