"""What the client daemon says about each event of its machine: one log line per event.

A failure that repeats (every retry of an unreachable server, every qualification behind a
symmetric NAT) is said once as a warning and again only at debug level until something
changes, so that a client left offline for days does not fill the log.
"""

from __future__ import annotations

import logging

from teredo.core.client import (
    AddressChanged,
    ClientEvent,
    MtuChanged,
    Offline,
    Qualified,
    SymmetricNat,
)
from teredo.io.tunnel import ipv6_text

log = logging.getLogger("teredo.client")


class EventLog:
    """Logs events; `last_offline` is the reason of the last Offline since qualifying."""

    def __init__(self) -> None:
        self.last_offline: str | None = None
        self._symmetric_reported = False

    def say(self, event: ClientEvent) -> None:
        if isinstance(event, Qualified):
            log.info(
                "qualified: address %s, mapping %s:%d, NAT %s, MTU %d",
                ipv6_text(event.address),
                event.mapping[0],
                event.mapping[1],
                event.nat,
                event.mtu,
            )
            self.last_offline = None
        elif isinstance(event, AddressChanged):
            log.info(
                "address changed: %s -> %s, mapping %s:%d, NAT %s",
                ipv6_text(event.old),
                ipv6_text(event.new),
                event.mapping[0],
                event.mapping[1],
                event.nat,
            )
        elif isinstance(event, MtuChanged):
            log.info("MTU changed to %d", event.mtu)
        elif isinstance(event, Offline):
            repeated = event.reason == self.last_offline
            self.last_offline = event.reason
            log.log(
                logging.DEBUG if repeated else logging.WARNING, "not qualified: %s", event.reason
            )
        elif isinstance(event, SymmetricNat):
            self._symmetric(event)

    def _symmetric(self, event: SymmetricNat) -> None:
        first = not self._symmetric_reported
        self._symmetric_reported = True
        level = logging.WARNING if first else logging.DEBUG
        if event.qualified:
            log.log(
                level,
                "symmetric NAT (%s): the server saw mapping %s:%d, its second address "
                "%s:%d; qualifying with the primary server's mapping (RFC 6081 Symmetric "
                "NAT Support: relays work both ways, peers behind port-restricted or "
                "symmetric NATs may not)",
                event.behaviour,
                *event.primary_mapping,
                *event.secondary_mapping,
            )
        else:
            log.log(
                level,
                "symmetric NAT (%s): the server saw mapping %s:%d, its second address "
                "%s:%d; not qualified (RFC 4380 section 5.2.1, SymmetricNat refuse)",
                event.behaviour,
                *event.primary_mapping,
                *event.secondary_mapping,
            )
