"""RFC 6081 Hairpinning: two clients behind one NAT that does not hairpin reach each other over
their local network, through Alternate Address trailers (../shared/spec/RFC6081-NOTES.md,
"Hairpinning", [likely]; the trailer per MS-TERE 2.2.2).

Both clients' addresses embed the same mapped IPv4. Our rules (core/client.py applies them):

- **offer**: our bubbles toward a peer whose address embeds our own mapped IPv4 carry an
  Alternate Address trailer with our local IPv4 and port (only there: nothing else needs it,
  though every Miredo role ignores trailers, measured: docs/client.md "RFC 6081 trailers");
- **try**: a bubble relayed by our server from such a peer, carrying its alternate addresses,
  makes us send a direct bubble (with our own trailer) to each of them (at most 4);
- **accept**: a packet from such a peer at a *local* (non-global) IPv4 source is believed, and
  the peer becomes a local peer there, when either that source is one of its alternates we
  bubbled, or the packet is a bubble that lists its own source in its trailer and we offered
  ours to that peer; in both cases within HAIRPIN_WINDOW of our bubble, and once per record.
  A valid trusted peer is never moved. Packets from the internet never have a local source
  behind our NAT, so nobody outside can use this to redirect a peer.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Literal

from teredo.core.addr import is_global_ipv4
from teredo.core.wire import AlternateAddressTrailer, Trailer

# Seconds after our bubble during which an answer from the local network is believed
# [unsure: the notes give no figure]; bubbles repeat every 2 s (RFC 4380 5.2.4).
HAIRPIN_WINDOW = 8.0
HAIRPIN_CAPACITY = 1024
MAX_ALTERNATES = 4  # MS-TERE 2.2.2: at most 4 pairs in a trailer


@dataclass(slots=True)
class _Record:
    offered_at: float | None = None  # we sent our alternates toward the peer
    tried: tuple[tuple[int, int], ...] = ()  # its alternates we bubbled
    tried_at: float | None = None


def alternates(trailers: tuple[Trailer, ...]) -> tuple[tuple[int, int], ...]:
    """The local (non-global) addresses of the Alternate Address trailers, at most 4."""
    found: list[tuple[int, int]] = []
    for t in trailers:
        if isinstance(t, AlternateAddressTrailer):
            found += [a for a in t.addresses if not is_global_ipv4(a[0]) and a[0] != 0]
    return tuple(found[:MAX_ALTERNATES])


class HairpinRecords:
    """Per peer address: our recent offers and tries (bounded, oldest first)."""

    __slots__ = ("_capacity", "_records", "_window", "accepted")

    def __init__(self, capacity: int = HAIRPIN_CAPACITY, window: float = HAIRPIN_WINDOW) -> None:
        if capacity < 1 or window <= 0:
            raise ValueError("capacity and window must be positive")
        self._capacity = capacity
        self._window = window
        self._records: OrderedDict[bytes, _Record] = OrderedDict()
        self.accepted = 0  # peers reached over the local network (status)

    def __len__(self) -> int:
        return len(self._records)

    def _record(self, peer: bytes) -> _Record:
        records = self._records
        rec = records.pop(peer, None)
        if rec is None:
            rec = _Record()
            while len(records) >= self._capacity:
                records.popitem(last=False)
        records[peer] = rec
        return rec

    def offered(self, peer: bytes, now: float) -> None:
        self._record(peer).offered_at = now

    def tried(self, peer: bytes, addresses: tuple[tuple[int, int], ...], now: float) -> None:
        rec = self._record(peer)
        rec.tried = addresses
        rec.tried_at = now

    def _fresh(self, at: float | None, now: float) -> bool:
        return at is not None and 0 <= now - at <= self._window

    def accept(
        self, peer: bytes, source: tuple[int, int], listed: bool, now: float
    ) -> Literal["tried", "listed"] | None:
        """A packet from `peer` at local `source`; `listed`: it is a bubble whose trailer lists
        `source`. Why it is believed ("tried": we bubbled that address; "listed": it answers
        our offer, and waits for a bubble back), the record then used up; None: it is not."""
        rec = self._records.get(peer)
        if rec is None:
            return None
        why: Literal["tried", "listed"]
        if source in rec.tried and self._fresh(rec.tried_at, now):
            rec.tried = ()
            rec.tried_at = None
            why = "tried"
        elif listed and self._fresh(rec.offered_at, now):
            rec.offered_at = None
            why = "listed"
        else:
            return None
        self.accepted += 1
        return why

    def clear(self) -> None:
        self._records.clear()
