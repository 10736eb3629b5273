"""RFC 6081 Symmetric NAT Support, receiving side: when to believe a Teredo peer's new port.

A peer behind a symmetric NAT gets a new external port for every destination: its address
embeds the mapping its NAT chose toward its server, and its packets to us come from another
port of the same IPv4. RFC 4380 (section 5.2.3) drops them as spoofed. RFC 6081 lets the
receiver record the real port instead, within bounds (../shared/spec/RFC6081-NOTES.md,
"Symmetric NAT Support", [likely]); ours are:

- the packet is a bubble whose Teredo source embeds the very IPv4 it came from (only the
  port differs);
- the peer is not trusted at another mapping (a trusted peer is never redirected), nor a local
  peer (local discovery has its own rules);
- we sent a bubble to that peer, at that IPv4, at most ADOPT_WINDOW seconds earlier (a direct
  bubble of our own bubble procedure, or the one answering its indirect bubble);
- each of our bubbles lets at most one port be adopted (the record is consumed), so one
  bubble of ours never buys more than one answer.

Anything else from a wrong mapping stays dropped and counted (MAPPING_MISMATCH,
UNKNOWN_BUBBLE). This module only keeps the records; core/client.py applies the rule.
"""

from __future__ import annotations

from collections import OrderedDict

# Seconds after our bubble during which a peer's bubble from another port of the same IPv4 is
# believed [unsure: RFC6081-NOTES gives no figure]. Our bubble procedure repeats every 2 s
# (RFC 4380 5.2.4), a peer's too: 8 s cover a few rounds on a slow path and no more.
ADOPT_WINDOW = 8.0
# Records kept at most (the oldest go first): bounded whatever number of peers we bubble.
ADOPT_CAPACITY = 1024


class PortAdoption:
    """The bubbles we sent lately, by peer address: (IPv4 bubbled, time)."""

    __slots__ = ("_capacity", "_records", "_window", "adopted")

    def __init__(self, capacity: int = ADOPT_CAPACITY, window: float = ADOPT_WINDOW) -> None:
        if capacity < 1 or window <= 0:
            raise ValueError("capacity and window must be positive")
        self._capacity = capacity
        self._window = window
        self._records: OrderedDict[bytes, tuple[int, float]] = OrderedDict()
        self.adopted = 0  # ports adopted since start (status)

    def __len__(self) -> int:
        return len(self._records)

    def bubbled(self, peer: bytes, ipv4: int, now: float) -> None:
        """We sent a bubble for Teredo peer `peer` to an address of IPv4 `ipv4`."""
        records = self._records
        records.pop(peer, None)
        while len(records) >= self._capacity:
            records.popitem(last=False)
        records[peer] = (ipv4, now)

    def claim(self, peer: bytes, ipv4: int, now: float) -> bool:
        """A bubble from `peer` at IPv4 `ipv4` but another port: True if one of our bubbles to
        that IPv4 went out within the window (the record is then used up)."""
        got = self._records.get(peer)
        if got is None:
            return False
        bubbled_ipv4, at = got
        if bubbled_ipv4 != ipv4 or not 0 <= now - at <= self._window:
            return False
        del self._records[peer]
        self.adopted += 1
        return True

    def clear(self) -> None:
        self._records.clear()
