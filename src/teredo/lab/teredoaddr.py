"""Teredo addresses as the lab reports them: the decoded fields next to the address itself.

Decoding is the codec's job (teredo.core.addr); this only shapes the result for the lab's
status, demo and tests.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from teredo.core.addr import FLAG_CONE, TeredoAddress


@dataclass(frozen=True)
class TeredoInfo:
    address: ipaddress.IPv6Address
    server: ipaddress.IPv4Address
    flags: int
    mapped_ip: ipaddress.IPv4Address
    mapped_port: int

    @property
    def cone(self) -> bool:
        return bool(self.flags & FLAG_CONE)

    def describe(self) -> str:
        return (
            f"{self.address} = server {self.server}, flags 0x{self.flags:04x}"
            f"{' (cone)' if self.cone else ''}, mapped {self.mapped_ip}:{self.mapped_port}"
        )


def decode(text: str | ipaddress.IPv6Address) -> TeredoInfo | None:
    """The fields of a Teredo address (prefix 2001::/32), or None when `text` is not one."""
    decoded = TeredoAddress.parse(str(text))
    if decoded is None:
        return None
    return TeredoInfo(
        address=ipaddress.IPv6Address(decoded.pack()),
        server=decoded.server_ipv4,
        flags=decoded.flags,
        mapped_ip=decoded.client_ipv4,
        mapped_port=decoded.port,
    )
