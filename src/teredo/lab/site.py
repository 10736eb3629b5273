"""One site of the lab: a client and the NAT in front of it, with the addresses of both.

Addresses are documentation ranges only (RFC 5737): 203.0.113.0/24 outside, 192.168.<n>.0/24
on the site's local network.
"""

from __future__ import annotations

from dataclasses import dataclass

from teredo.lab.nat import NatKind


@dataclass(frozen=True)
class Site:
    """One client and the NAT in front of it (none for NatKind.NONE). A NatKind.SHARED site has
    no NAT of its own: its client sits on the local network of site `host_site`, behind that
    site's NAT (which does not hairpin: nothing in its rules sends a packet for its own public
    address back inside)."""

    index: int
    nat: NatKind
    host_site: int | None = None  # NatKind.SHARED: the site whose NAT and network it shares

    @property
    def client_host(self) -> str:
        return f"client{self.index}"

    @property
    def nat_host(self) -> str | None:
        return None if self.nat in (NatKind.NONE, NatKind.SHARED) else f"nat{self.index}"

    @property
    def lan(self) -> int:
        """The index whose 192.168.<n>.0/24 network the client is on."""
        return self.host_site if self.host_site is not None else self.index

    @property
    def public_ip(self) -> str:
        """The address the IPv4 internet sees: the NAT's outside address, or the client's own."""
        if self.nat is NatKind.NONE:
            return f"203.0.113.{100 + self.index}"
        return f"203.0.113.{10 + self.lan}"

    @property
    def client_ip(self) -> str:
        if self.nat is NatKind.NONE:
            return self.public_ip
        if self.nat is NatKind.SHARED:
            return f"192.168.{self.lan}.{100 + self.index}"
        return f"192.168.{self.index}.2"

    @property
    def nat_inside_ip(self) -> str:
        return f"192.168.{self.lan}.1"
