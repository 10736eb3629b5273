"""What a UPnP IGD on the NAT means for a Teredo client (RFC 6081, UPnP-Enabled Symmetric NAT).

The client (`UPnP yes`, io/upnp.py) maps its UDP port on the NAT with external port = local
port. That helps only when the NAT's outbound flows use that same public address: then the
server's view of the client *is* the UPnP mapping, anyone may send to it, and the client is
reachable as behind a cone NAT. A NAT that picks other ports outbound (random or sequential
ports, or a port it does not keep) gains nothing: inbound would go to a port the client's own
packets never come from (Debian's miniupnpd adds DNAT and filter rules only, no SNAT; measured
in the lab, /work/notes/old/natupnp.md). An IGD whose external IPv4 is not the one the server
saw sits behind another NAT (a CGN) and cannot help either.

Pure: the caller gives what the IGD said and what qualification (or `teredo probe`) saw.
"""

from __future__ import annotations

from dataclasses import dataclass

from teredo.core.addr import Address
from teredo.core.natbehaviour import NatBehaviour, PortAllocation

# Port allocations where a mapping external = local port is the one outbound flows use.
_PORT_KEPT = frozenset({PortAllocation.PRESERVED, PortAllocation.NONE})


@dataclass(frozen=True, slots=True)
class UpnpVerdict:
    cone: bool  # a client with UPnP yes is reachable as behind a cone NAT
    text: str  # one line for `teredo probe`


def upnp_verdict(
    external_ip: str | None, mapping: Address | None, behaviour: NatBehaviour | None
) -> UpnpVerdict:
    """From the IGD's external IPv4 (None: no IGD answered), the server's view of a probe
    socket and what the two server answers showed of the NAT."""
    if external_ip is None:
        return UpnpVerdict(False, "no UPnP IGD answered: the NAT is used as it is")
    said = f"a UPnP IGD answered (external IPv4 {external_ip})"
    if mapping is None:
        return UpnpVerdict(False, f"{said}; no server answered, nothing to compare with")
    if mapping[0] != external_ip:
        return UpnpVerdict(
            False,
            f"{said}, but the server saw {mapping[0]}: another NAT beyond it, UPnP cannot help",
        )
    if behaviour is None or behaviour.ports not in _PORT_KEPT:
        what = "unknown ports" if behaviour is None else behaviour.describe()
        return UpnpVerdict(
            False,
            f"{said}, but the NAT does not keep the local port ({what}): a mapping would not "
            "be used by outbound packets (the client removes it)",
        )
    return UpnpVerdict(
        True,
        f"{said}: with UPnP yes the client maps its port and is reachable as behind a cone "
        "NAT (RFC 6081)",
    )
