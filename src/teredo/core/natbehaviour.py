"""What qualification tells about the client's NAT, beyond RFC 4380's cone/restricted/symmetric.

RFC 4380 section 5.2.1 compares the mapping seen by the server's primary address (M1) with the
one seen by its secondary address (M2): equal means the NAT maps one local port to one public
port whatever the destination, different means a symmetric NAT. RFC 6081 (sections on the
Port-Preserving and Sequential Port-Symmetric NAT extensions; ../shared/spec/RFC6081-NOTES.md,
marked [likely]) looks closer at the two ports, and so does this module:

- both server addresses saw the client's own local port: the NAT preserves ports;
- the two ports differ by a small step (M2 - M1 in 1..SEQUENTIAL_MAX_STEP): the NAT hands out
  ports in sequence, so the next one can be predicted;
- otherwise the ports are taken to be random.

Two samples cannot prove a sequence: a random NAT picks a port within the step of the first one
about once in 2,000 qualifications (16 of ~32,000 ports). The verdict is a report; nothing
here changes what the client sends. Pure: no I/O, no clock.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

# [unsure] RFC 6081 does not say (in what the notes keep) how small the step of a sequential
# NAT is; Linux and common CPE NATs step by 1, some by 2 or 4 when other hosts use ports in
# between. 16 keeps the false positive rate of a random NAT low (see the module docstring).
SEQUENTIAL_MAX_STEP = 16


class PortAllocation(enum.StrEnum):
    """How the NAT chose the public ports the two server addresses saw."""

    NONE = "none"  # no NAT: the mapping is the socket's own address
    PRESERVED = "port-preserving"  # both saw the local port
    SEQUENTIAL = "sequential"  # a new port per destination, a small step from the last one
    RANDOM = "random"  # a new port per destination, not predictable from two samples
    SAME = "same"  # one port for every destination (cone or restricted), not the local one
    UNKNOWN = "unknown"  # the secondary address did not answer, or the local port is not known


@dataclass(frozen=True, slots=True)
class NatBehaviour:
    """The NAT as the two server answers showed it (one qualification)."""

    symmetric: bool  # the mapping depends on the destination (M1 != M2)
    ports: PortAllocation
    step: int | None = None  # M2's port - M1's port, for a symmetric NAT on one IPv4
    same_ipv4: bool = True  # M1 and M2 share their IPv4 address

    def describe(self) -> str:
        """One short phrase for logs and `teredo status` ("symmetric, sequential ports +1")."""
        words = ["symmetric" if self.symmetric else "cone or restricted"]
        if self.ports is PortAllocation.NONE:
            return "no NAT"
        if self.ports is PortAllocation.PRESERVED:
            words.append("port-preserving")
        elif self.ports is PortAllocation.SEQUENTIAL:
            words.append(f"sequential ports {self.step:+d}")
        elif self.ports is PortAllocation.RANDOM:
            words.append("random ports")
        if not self.same_ipv4:
            words.append("a new IPv4 per destination")
        return ", ".join(words)

    def reach(self) -> str:
        """What our client reaches behind this NAT (measured: docs/client.md's table)."""
        if not self.symmetric:
            if self.ports is PortAllocation.PRESERVED:
                return "to RFC 4380 a restricted NAT: every peer but random-port symmetric ones"
            return ""
        if not self.same_ipv4:
            return "peers see another IPv4 than the address embeds: relays work, peers may not"
        if self.ports is PortAllocation.SEQUENTIAL:
            return (
                "ports predicted (RFC 6081 Random Port trailers): relays, cone, restricted and "
                "port-restricted peers work; random-port symmetric ones do not"
            )
        return (
            "relays, cone and address-restricted peers work (RFC 6081); port-restricted and "
            "symmetric ones do not, unless UPnP maps the port"
        )

    def as_dict(self) -> dict[str, object]:
        return {
            "symmetric": self.symmetric,
            "ports": str(self.ports),
            "step": self.step,
            "same_ipv4": self.same_ipv4,
            "text": self.describe(),
            "reach": self.reach(),
        }


def classify(
    primary: tuple[int, int],
    secondary: tuple[int, int] | None,
    local: tuple[int, int] | None,
) -> NatBehaviour:
    """The behaviour from M1 (`primary`), M2 (`secondary`, None when it never answered) and the
    socket's local (IPv4, port) (None when unknown). Mappings are (IPv4 int, port)."""
    if local is not None and primary == local:
        return NatBehaviour(symmetric=False, ports=PortAllocation.NONE)
    local_port = None if local is None else local[1]
    if secondary is None:
        ports = PortAllocation.PRESERVED if primary[1] == local_port else PortAllocation.UNKNOWN
        return NatBehaviour(symmetric=False, ports=ports)
    same_ipv4 = primary[0] == secondary[0]
    if primary == secondary:
        ports = PortAllocation.PRESERVED if primary[1] == local_port else PortAllocation.SAME
        if local_port is None:
            ports = PortAllocation.UNKNOWN
        return NatBehaviour(symmetric=False, ports=ports)
    step = (secondary[1] - primary[1]) if same_ipv4 else None
    if local_port is not None and primary[1] == secondary[1] == local_port:
        ports = PortAllocation.PRESERVED  # another IPv4 per destination, the port kept
    elif step is not None and 0 < abs(step) <= SEQUENTIAL_MAX_STEP:
        ports = PortAllocation.SEQUENTIAL
    else:
        ports = PortAllocation.RANDOM
    return NatBehaviour(symmetric=True, ports=ports, step=step, same_ipv4=same_ipv4)
