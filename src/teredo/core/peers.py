"""The Teredo peer list: compact, bounded, O(1), with the RFC 4380 per-peer rules.

A Teredo client (RFC 4380 section 5.2) and a relay (section 5.4, "a peer list shaped like the
client's") keep, per peer: the IPv6 address (the key), the mapped IPv4 address and UDP port, a
trusted flag, a local flag (local discovery, section 5.2.8), the last reception and last
transmission dates, the bubble count (section 5.2.6), and rarely a ping-test nonce (section
5.2.9) and a queue of packets waiting for the peer to become trusted (sections 5.2.4, 5.4.1).

Each peer is one row of fixed-size columns (core/peerrows.py: the columns, the hash index, the
LRU lists and the tick clock, with their sizes); rows are handles, valid until the row is
removed, evicted (by `insert`) or expired (by `expire`): look the address up again after any
of those. Nonces and queues are rare and live in side dicts keyed by row, each with a bound.

Eviction policy (section 5.2 SHOULD "LRU"; section 7.3.5 relays SHOULD limit state kept for new
peers), for an `insert` into a full table (every row in use and the capacity reached):

1. the least recently used *untrusted* peer (a peer still being set up with bubbles, or a
   flooder's address) goes first;
2. else the least recently used trusted peer, but only when it is no longer valid (no
   reception for 30 s, 600 s for local peers, section 5.2.4);
3. else the insert is refused (`None`): a valid trusted peer is never displaced, so a flood of
   new addresses, however fast, cannot take service away from established peers. New peers
   wait until an established one goes quiet or the operator raises the capacity.

Untrusted and trusted peers sit in two separate LRU lists (intrusive, through the prev/next
columns); a row moves between them when its trusted flag changes. Recency has a granularity of
1 s: a row used again less than 1 s after it last moved to the front keeps its place and its
"last use" time (a busy peer costs no list surgery per packet; expiry may come 1 s early).

One API for every caller (the client's machine, the relay's, the kernel map's mirror):

- the data path, one call a packet: `send_row` (sending case 1: a valid trusted peer, or None;
  then `lookup` tells an unknown peer from a known one), `receive_row` (reception case 1);
- entries: `lookup`, `insert` (untrusted, optionally with its mapping), `remove`, `expire`,
  `next_expiry`, `clear`;
- trust: `trust` (the only way in: a direct reception, its mapping, the queue to flush),
  `untrust`, `is_trusted`, `is_valid`; `trusted_peers` and `watch` (a `PeerWatch`, told of
  every change to the trusted set) for a copy kept elsewhere;
- per-peer fields and rules: `mapping`/`mapping_key`/`set_mapping`, `set_local`, `last_rx`,
  `last_tx`, `touch_rx`, `touch_tx`, bubbles (`may_send_bubble`, `record_bubble`,
  `bubble_count`), the nonce, the queues; `stats`, `nbytes`, `allocated`.

Time: every method that needs the time takes `now` (seconds, monotonic, from the driver) and
never reads a clock (core/peerrows.py says how it is stored). Rules are evaluated on times
rounded to 10 ms.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Protocol

from teredo.core.ipv6 import tcp_retransmit_key
from teredo.core.peerrows import (
    _F_LOCAL,
    _F_TRUSTED,
    _F_USED,
    _NONE,
    _REBASE_AT,
    _TICKS,
    _TRUSTED,
    _UNTRUSTED,
    PeerRows,
)

# --- RFC 4380 constants (TEREDO-SPEC.md section 9) -------------------------------------------

#: Section 5.2.4 (and 5.2.3 case 1): an entry is valid while its last reception is less than
#: 30 seconds old.
PEER_VALIDITY = 30.0
#: Section 5.2.4 case 3 speaks of 600 s for local peers (its general text says 30 s; Miredo
#: and TEREDO-SPEC.md section 3.4 take 600 s as intended).
PEER_VALIDITY_LOCAL = 600.0
#: Sections 5.2.3 and 5.2.6: a new entry gets last reception = last transmission = now - 30 s,
#: so it is invalid, and a first bubble may leave at once.
NEW_ENTRY_AGE = 30.0
#: Section 5.2.6: no bubble when the last transmission is less than 2 s old.
BUBBLE_MIN_INTERVAL = 2.0
#: Section 5.2.6: no bubble after 4 bubbles in the last 300 s without a direct response.
BUBBLE_MAX_COUNT = 4
BUBBLE_WINDOW = 300.0
#: Miredo: 1280 bytes of queued packets per peer, inbound and outbound together (section
#: 5.4.1 MAY queue, SHOULD bound the queue).
QUEUE_BYTES_PER_PEER = 1280
#: Miredo's relay limit with libJudy (1024 without): a sensible relay capacity.
MIREDO_MAX_PEERS = 1_048_576
#: Charged to the overall queue budget for each queued packet on top of its length: a
#: `bytes` object's header and its list slot, so a flood of tiny packets stays bounded too.
QUEUE_PACKET_OVERHEAD = 64
#: The longest nonce kept (section 5.2.9 asks for at least 64 bits; an HMAC may be longer).
MAX_NONCE_BYTES = 32

_VALID_TICKS = round(PEER_VALIDITY * _TICKS)
_VALID_LOCAL_TICKS = round(PEER_VALIDITY_LOCAL * _TICKS)
_NEW_AGE_TICKS = round(NEW_ENTRY_AGE * _TICKS)
_GAP_TICKS = round(BUBBLE_MIN_INTERVAL * _TICKS)
_WINDOW_TICKS = round(BUBBLE_WINDOW * _TICKS)


@dataclass(frozen=True, slots=True)
class PeerTableStats:
    """A snapshot of the table's size and counters (read by status and metrics)."""

    capacity: int
    size: int
    trusted: int
    untrusted: int
    queued_peers: int
    queued_bytes: int
    nonces: int
    inserts: int
    evicted_untrusted: int
    evicted_trusted: int
    refused: int
    expired: int
    queue_drops: int
    nbytes: int
    #: Rows allocated so far (the columns grow with the peers up to `capacity`).
    allocated: int = 0
    #: Queued TCP segments replaced by their retransmission (`PeerTable.enqueue`).
    queue_superseded: int = 0


class PeerWatch(Protocol):
    """Told of every change to the set of trusted peers and their mappings, synchronously,
    before the call that made the change returns (the kernel data path's map mirror: insert on
    trust, update on a new mapping, delete before the entry can be served again by anyone).

    A trusted peer still needs to be *valid* (a reception less than 30 s ago, section 5.2.4) to
    be sent to; validity passes with time, without an event: a mirror keeps the last reception
    date itself. The calls must not call back into the table."""

    def trusted(self, addr: bytes, ipv4: int, port: int, local: bool) -> None:
        """`addr` became trusted at ipv4:port, or a trusted peer's mapping or local flag changed
        (`local`: found by local discovery, section 5.2.8, valid 600 s instead of 30 s)."""

    def untrusted(self, addr: bytes) -> None:
        """`addr` is no longer a trusted peer: distrusted, removed, evicted or expired."""

    def cleared(self) -> None:
        """Every peer was forgotten (`clear`): no per-peer calls are made."""


class _Queue:
    """Packets held for one peer until it becomes trusted (or its entry goes)."""

    __slots__ = ("cost", "inbound", "nbytes", "outbound")

    def __init__(self) -> None:
        self.outbound: list[bytes] = []
        self.inbound: list[bytes] = []
        self.nbytes = 0  # payload bytes, against the per-peer limit
        self.cost = 0  # payload + overhead, against the overall limit


class PeerTable(PeerRows):
    """A bounded peer list whose memory grows with the peers (see the module docstring)."""

    __slots__ = (
        "_idle_ticks",
        "_max_nonces",
        "_nonces",
        "_queue_bytes",
        "_queue_per_peer",
        "_queue_total",
        "_queues",
        "_stat_evicted",
        "_stat_expired",
        "_stat_inserts",
        "_stat_queue_drops",
        "_stat_queue_superseded",
        "_stat_refused",
        "_untrusted_ticks",
        "watch",
    )

    def __init__(
        self,
        capacity: int,
        *,
        epoch: float = 0.0,
        idle_timeout: float = PEER_VALIDITY_LOCAL,
        untrusted_timeout: float | None = None,
        queue_bytes_per_peer: int = QUEUE_BYTES_PER_PEER,
        total_queue_bytes: int = 16 * 1024 * 1024,
        max_nonces: int | None = None,
        watch: PeerWatch | None = None,
    ) -> None:
        """An empty table for up to `capacity` peers; memory grows with the peers.

        `epoch`: a time near the first `now` the table will see (the driver's monotonic clock at
        start). `idle_timeout`: `expire` removes a trusted entry unused (no reception, no
        transmission, no bubble) for that long; Miredo uses 30 s in a relay and 600 s in a
        client (local peers stay valid 600 s). `untrusted_timeout` (default: `idle_timeout`):
        the same for untrusted entries. `queue_bytes_per_peer` / `total_queue_bytes`: queue
        bounds (the total counts `QUEUE_PACKET_OVERHEAD` per packet). `max_nonces`: nonces kept
        at once (default min(capacity, 16384)); beyond it the oldest nonce is forgotten.
        `watch`: told of changes to the trusted peers (`PeerWatch`); may be set later through
        the `watch` attribute (before the first peer is trusted, or it misses the earlier ones:
        `trusted_peers` lists them).
        """
        if not 1 <= capacity < (1 << 30):
            raise ValueError("capacity must be between 1 and 2**30 - 1")
        if idle_timeout <= 0 or (untrusted_timeout is not None and untrusted_timeout <= 0):
            raise ValueError("timeouts must be > 0")
        if queue_bytes_per_peer < 0 or total_queue_bytes < 0:
            raise ValueError("queue limits must be >= 0")
        self._idle_ticks = round(idle_timeout * _TICKS)
        untrusted = idle_timeout if untrusted_timeout is None else untrusted_timeout
        self._untrusted_ticks = round(untrusted * _TICKS)
        self._queue_per_peer = queue_bytes_per_peer
        self._queue_total = total_queue_bytes
        self._max_nonces = min(capacity, 16384) if max_nonces is None else max(0, max_nonces)
        self.watch = watch
        super().__init__(capacity, epoch)
        self._stat_inserts = 0
        self._stat_evicted = [0, 0]
        self._stat_refused = 0
        self._stat_expired = 0
        self._stat_queue_drops = 0
        self._stat_queue_superseded = 0

    def _allocate(self) -> None:
        """(Re)create every column with `INITIAL_ROWS` rows (at most `capacity`), all free,
        and forget the queues and nonces."""
        super()._allocate()
        self._queues: dict[int, _Queue] = {}
        self._queue_bytes = 0
        self._nonces: OrderedDict[int, bytes] = OrderedDict()

    # --- insert, remove, expire ---------------------------------------------------------------

    def insert(
        self,
        addr: bytes,
        now: float,
        *,
        mapping: tuple[int, int] | None = None,
        bubble: bool = False,
    ) -> int | None:
        """Add peer `addr` (absent, 16 bytes), untrusted; its row, or None if the policy
        refuses it. Trust comes later, from a direct reception (`trust`).

        New entries get last reception = last transmission = now - 30 s and no bubbles
        (sections 5.2.3, 5.2.6), `mapping` (IPv4 as an int, port; default 0.0.0.0:0), not
        local. `bubble`: a first bubble goes to the peer now (always allowed for a new entry,
        section 5.2.6), recorded as `record_bubble` would (a relay's new peer, section 5.4.1
        case 3; a third of the cost of a separate call). When the table is full a victim is
        chosen as the module docstring says; its queue and nonce go with it.
        """
        if len(addr) != 16:
            raise ValueError("a peer address is 16 bytes")
        ipv4, port = (0, 0) if mapping is None else mapping
        if not (0 <= ipv4 <= 0xFFFFFFFF and 0 <= port <= 0xFFFF):
            raise ValueError("IPv4 is 32 bits and the port 16 bits")
        # The duplicate check is the probe that finds the new entry's slot (one probe, not two:
        # `lookup` and a second probe for the free slot measured 7 % slower per insert, 1,450
        # -> 1,580 ns, docs/benchmarks.md "Shape, part 3"), so `lookup`'s loop is written again.
        index = self._index
        mask = self._mask
        keys = self._addr
        i = hash(addr) & mask
        while True:
            r = index[i]
            if not r:
                break
            if keys.startswith(addr, (r - 1) << 4):
                raise ValueError("peer already in the table")
            i = (i + 1) & mask
        t = self._tick(now)
        row = self._insert(addr, t, i)
        if row is not None:
            self._ip[row] = ipv4
            self._port[row] = port
            if bubble:
                self._tx[row] = t
                self._bub[row << 2] = t
                self._nbub[row] = 1
        return row

    def _insert(self, addr: bytes, t: int, slot: int) -> int | None:
        """`insert` for an address known to be absent, at tick `t`; `slot`: the free index slot
        that the probe for it ended on (found again when a growth or an eviction moves it)."""
        row = self._free
        if row == _NONE:
            slot = -1
            if self._grow():
                row = self._free
        if row == _NONE:
            row = self._tail[_UNTRUSTED]
            if row == _NONE:
                row = self._tail[_TRUSTED]
                # A valid trusted peer is never displaced (section 7.3.5: new peers must not
                # take state from established ones).
                if self._valid_tick(row, t):
                    self._stat_refused += 1
                    return None
            self._stat_evicted[(self._flags[row] >> 1) & 1] += 1
            self._remove(row)
        self._free = self._next[row]
        o = row << 4
        self._addr[o : o + 16] = addr
        index = self._index
        if slot < 0:
            mask = self._mask
            slot = hash(addr) & mask
            while index[slot]:
                slot = (slot + 1) & mask
        index[slot] = row + 1
        self._flags[row] = _F_USED
        self._nbub[row] = 0
        old = t - _NEW_AGE_TICKS
        self._rx[row] = old if old > 0 else 0
        self._tx[row] = old if old > 0 else 0
        self._used[row] = t
        self._link_head(row, _UNTRUSTED)
        self._count[_UNTRUSTED] += 1
        self._stat_inserts += 1
        return row

    def remove(self, row: int) -> None:
        """Delete the peer in `row` with its queue and nonce (section 5.4.1: the queue goes with
        the entry)."""
        self._check(row)
        self._remove(row)

    def _remove(self, row: int) -> None:
        lst = (self._flags[row] >> 1) & 1
        if lst == _TRUSTED and self.watch is not None:
            self.watch.untrusted(self.address(row))
        self._index_delete(row)
        self._unlink(row, lst)
        self._count[lst] -= 1
        self._flags[row] = 0
        q = self._queues.pop(row, None)
        if q is not None:
            self._queue_bytes -= q.cost
        self._nonces.pop(row, None)
        self._prev[row] = _NONE
        self._next[row] = self._free
        self._free = row

    def expire(self, now: float, budget: int = 256) -> int:
        """Remove at most `budget` entries unused for their timeout (untrusted ones first, as in
        eviction); returns how many went.

        Work is O(budget): each list is walked from its least recently used end and the walk
        stops at the first entry still in use, so a timer may call this often.
        """
        t = self._tick(now)
        removed = 0
        for lst, limit in ((_UNTRUSTED, self._untrusted_ticks), (_TRUSTED, self._idle_ticks)):
            while removed < budget:
                row = self._tail[lst]
                if row == _NONE or t - self._used[row] < limit:
                    break
                self._remove(row)
                removed += 1
        self._stat_expired += removed
        return removed

    def next_expiry(self) -> float | None:
        """When `expire` will next find something to remove (for the driver's timer)."""
        best: float | None = None
        for lst, limit in ((_UNTRUSTED, self._untrusted_ticks), (_TRUSTED, self._idle_ticks)):
            row = self._tail[lst]
            if row != _NONE:
                when = self._time(self._used[row] + limit)
                if best is None or when < best:
                    best = when
        return best

    def clear(self) -> None:
        """Forget every peer (Miredo empties the list when the client's address changes): the
        columns are made anew at their initial size. Counters are kept."""
        self._allocate()
        if self.watch is not None:
            self.watch.cleared()

    # --- fields -------------------------------------------------------------------------------

    def mapping(self, row: int) -> tuple[int, int]:
        """(IPv4 as an int, UDP port): the mapped address, or the local one for a local peer
        (section 5.2.8: packets to a local peer go to its local address)."""
        return self._ip[row], self._port[row]

    def mapping_key(self, row: int) -> int:
        """`(ipv4 << 16) | port` of the mapping: one int, for a cache of socket addresses."""
        return (self._ip[row] << 16) | self._port[row]

    def set_mapping(self, row: int, ipv4: int, port: int) -> None:
        """Record the peer's mapping (for a trusted peer, `trust` says it better: a new mapping
        comes with the direct reception that proves it)."""
        flags = self._check(row)
        if not (0 <= ipv4 <= 0xFFFFFFFF and 0 <= port <= 0xFFFF):
            raise ValueError("IPv4 is 32 bits and the port 16 bits")
        if self._ip[row] == ipv4 and self._port[row] == port:
            return
        self._ip[row] = ipv4
        self._port[row] = port
        if flags & _F_TRUSTED and self.watch is not None:
            self.watch.trusted(self.address(row), ipv4, port, bool(flags & _F_LOCAL))

    def is_trusted(self, row: int) -> bool:
        return bool(self._flags[row] & _F_TRUSTED)

    def untrust(self, row: int) -> None:
        """No longer trusted (a relay's peer that went 30 s without reception, section 5.2.4;
        a client's local peer whose address is not proven, section 5.2.8): it moves to the
        most recently used end of the untrusted list, and must be trusted again by a direct
        reception (`trust`) before anything is sent to it by case 1."""
        flags = self._check(row)
        if not flags & _F_TRUSTED:
            return
        self._unlink(row, _TRUSTED)
        self._count[_TRUSTED] -= 1
        self._flags[row] = flags & ~_F_TRUSTED
        self._link_head(row, _UNTRUSTED)
        self._count[_UNTRUSTED] += 1
        if self.watch is not None:
            self.watch.untrusted(self.address(row))

    def is_local(self, row: int) -> bool:
        return bool(self._flags[row] & _F_LOCAL)

    def set_local(self, row: int, local: bool) -> None:
        """A peer found by local discovery (section 5.2.8): valid 600 s instead of 30 s."""
        flags = self._check(row)
        self._flags[row] = (flags | _F_LOCAL) if local else (flags & ~_F_LOCAL)
        if flags & _F_TRUSTED and bool(flags & _F_LOCAL) != local and self.watch is not None:
            # The validity a copy elsewhere applies changes with it (the kernel's maps).
            self.watch.trusted(self.address(row), self._ip[row], self._port[row], local)

    def last_rx(self, row: int) -> float:
        return self._time(self._rx[row])

    def last_tx(self, row: int) -> float:
        return self._time(self._tx[row])

    def touch_rx(self, row: int, now: float) -> None:
        """A packet or bubble came *directly* from the peer: update the last reception date and
        reset the bubble count (section 5.2.6: "without receiving a direct response")."""
        self._check(row)
        t = self._tick(now)
        self._rx[row] = t
        self._nbub[row] = 0
        self._touch(row, t)

    def touch_tx(self, row: int, now: float) -> None:
        """A packet was sent to the peer: update the last transmission date (section 5.2.4
        case 1)."""
        self._check(row)
        t = self._tick(now)
        self._tx[row] = t
        self._touch(row, t)

    def is_valid(self, row: int, now: float) -> bool:
        """Last reception less than 30 s ago, 600 s for a local peer (section 5.2.4)."""
        return self._valid_tick(row, self._tick(now))

    def _valid_tick(self, row: int, t: int) -> bool:
        limit = _VALID_LOCAL_TICKS if self._flags[row] & _F_LOCAL else _VALID_TICKS
        return t - self._rx[row] < limit

    # --- the data path in one call each --------------------------------------------------------

    def send_row(self, addr: bytes, now: float) -> int | None:
        """Sending case 1 (sections 5.2.4 and 5.4.1): the row of `addr` if it is a valid trusted
        peer, with its last transmission date updated; else None (the caller goes on with the
        other cases). Same as lookup + is_trusted + is_valid + touch_tx, in one call.

        The hottest call of the relay (every native packet): `_tick`'s arithmetic is written
        out here (2 % of the native -> Teredo path); the probe is `lookup`'s, as in
        `receive_row` (written out here it measured the same: docs/benchmarks.md "Shape, part
        3")."""
        row = self.lookup(addr)
        if row is None:
            return None
        flags = self._flags[row]
        if not flags & _F_TRUSTED:
            return None
        t = int((now - self._base) * _TICKS + 0.5)
        if not 0 < t < _REBASE_AT:
            t = self._tick(now)
        limit = _VALID_LOCAL_TICKS if flags & _F_LOCAL else _VALID_TICKS
        if t - self._rx[row] >= limit:
            return None
        self._tx[row] = t
        self._touch(row, t)
        return row

    def receive_row(self, addr: bytes, ipv4: int, port: int, now: float) -> int | None:
        """Reception case 1 (section 5.2.3; section 5.4.2 for a relay's known client): the row
        of `addr` if it is trusted and the packet came from its mapping, with the last reception
        date updated and the bubble count reset; else None. Same as lookup + is_trusted +
        mapping + touch_rx, in one call."""
        row = self.lookup(addr)
        if row is None:
            return None
        if not self._flags[row] & _F_TRUSTED or self._ip[row] != ipv4 or self._port[row] != port:
            return None
        t = int((now - self._base) * _TICKS + 0.5)  # `_tick` written out, as in `send_row`
        if not 0 < t < _REBASE_AT:
            t = self._tick(now)
        self._rx[row] = t
        self._nbub[row] = 0
        self._touch(row, t)
        return row

    def trust(self, row: int, ipv4: int, port: int, now: float) -> list[bytes]:
        """A direct packet from the peer at `ipv4:port` (sections 5.2.3 cases 2, 3, 5; 5.4.2):
        the mapping recorded, the peer trusted, its nonce (section 5.2.9) forgotten, its last
        reception now and its bubble count reset; returns its outbound queue, to be sent now
        (its last transmission is then now). Its inbound queue (a client's, case 6) stays for
        `drain(row, inbound=True)`. The only way into the trusted set."""
        flags = self._check(row)
        if not (0 <= ipv4 <= 0xFFFFFFFF and 0 <= port <= 0xFFFF):
            raise ValueError("IPv4 is 32 bits and the port 16 bits")
        changed = not flags & _F_TRUSTED or self._ip[row] != ipv4 or self._port[row] != port
        self._ip[row] = ipv4
        self._port[row] = port
        t = self._tick(now)
        if self._nonces:
            self._nonces.pop(row, None)
        if not flags & _F_TRUSTED:
            self._unlink(row, _UNTRUSTED)
            self._count[_UNTRUSTED] -= 1
            self._flags[row] = flags | _F_TRUSTED
            self._link_head(row, _TRUSTED)
            self._count[_TRUSTED] += 1
            self._used[row] = t
        self._rx[row] = t
        self._nbub[row] = 0
        self._touch(row, t)
        if changed and self.watch is not None:
            self.watch.trusted(self.address(row), ipv4, port, bool(flags & _F_LOCAL))
        if row not in self._queues:
            return []
        queued = self.drain(row)
        if queued:
            self._tx[row] = t
        return queued

    # --- bubbles (section 5.2.6, MUST) ------------------------------------------------------

    def may_send_bubble(self, row: int, now: float) -> bool:
        """Section 5.2.6: no bubble if the last transmission is less than 2 s old, nor if 4
        bubbles went to the peer in the last 300 s without a direct response.

        The times of the 4 most recent bubbles since the last direct reception are kept, so
        the 300 s window slides exactly: a bubble exactly 300 s old has left the window, as a
        transmission exactly 2 s old no longer blocks.
        """
        t = self._tick(now)
        if t - self._tx[row] < _GAP_TICKS:
            return False
        if self._nbub[row] < BUBBLE_MAX_COUNT:
            return True
        # Four bubbles kept, oldest first: the oldest decides whether four are in the window.
        return t - self._bub[row << 2] >= _WINDOW_TICKS

    def record_bubble(self, row: int, now: float) -> None:
        """A bubble was sent: update the last transmission date and count it (section 5.2.6
        MUST). Call after `may_send_bubble` said yes."""
        self._check(row)
        t = self._tick(now)
        self._tx[row] = t
        b = row << 2
        bub = self._bub
        n = self._nbub[row]
        if n < BUBBLE_MAX_COUNT:
            bub[b + n] = t
            self._nbub[row] = n + 1
        else:
            bub[b] = bub[b + 1]
            bub[b + 1] = bub[b + 2]
            bub[b + 2] = bub[b + 3]
            bub[b + 3] = t
        self._touch(row, t)

    def bubble_count(self, row: int, now: float) -> int:
        """Bubbles sent in the last 300 s since the last direct reception (section 5.2.6)."""
        t = self._tick(now)
        b = row << 2
        return sum(1 for k in range(self._nbub[row]) if t - self._bub[b + k] < _WINDOW_TICKS)

    # --- nonce (section 5.2.9) ---------------------------------------------------------------

    def set_nonce(self, row: int, nonce: bytes) -> None:
        """Keep the ping-test nonce of an untrusted peer (section 5.2.9). At most `max_nonces`
        are kept: beyond that the oldest is forgotten (its test then fails and is retried)."""
        self._check(row)
        if not 8 <= len(nonce) <= MAX_NONCE_BYTES:
            raise ValueError(f"a nonce is 8 to {MAX_NONCE_BYTES} bytes (section 5.2.9)")
        nonces = self._nonces
        nonces.pop(row, None)
        if self._max_nonces == 0:
            return
        while len(nonces) >= self._max_nonces:
            nonces.popitem(last=False)
        nonces[row] = bytes(nonce)

    def nonce(self, row: int) -> bytes | None:
        return self._nonces.get(row)

    def clear_nonce(self, row: int) -> None:
        self._nonces.pop(row, None)

    # --- queue (sections 5.2.4, 5.4.1) ------------------------------------------------------

    def enqueue(self, row: int, packet: bytes, *, inbound: bool = False, ip6_at: int = 0) -> bool:
        """Hold `packet` (its IPv6 header at `ip6_at`: a caller's tag may come first) until the
        peer is trusted; False (packet dropped) when it would pass the per-peer bound (inbound
        and outbound together, as Miredo) or the overall one.

        A TCP retransmission of a segment already queued replaces it in its place (counted in
        `queue_superseded`): the flush then sends each segment once, in the order first
        queued, with its newest timestamp option. Why (issue 12, 30 % loss): a SYN repeated
        every second during a 7 s ping test left 7 copies queued; flushed oldest first, the
        peer answered the first one, and RFC 7323's echoed timestamp made the sender measure a
        7 s round trip, hence a 21 s retransmission timeout, under which a lossy path did not
        deliver the connection's data within 2 minutes. The copies also filled the 1,280 bytes
        the queue may hold."""
        self._check(row)
        size = len(packet)
        q = self._queues.get(row)
        key = tcp_retransmit_key(packet, ip6_at) if q is not None else None
        if key is not None and q is not None:
            held_list = q.inbound if inbound else q.outbound
            for i, old in enumerate(held_list):
                if tcp_retransmit_key(old, ip6_at) == key:
                    return self._replace(q, held_list, i, bytes(packet))
        cost = size + QUEUE_PACKET_OVERHEAD
        held = 0 if q is None else q.nbytes
        if (
            size == 0
            or held + size > self._queue_per_peer
            or self._queue_bytes + cost > self._queue_total
        ):
            self._stat_queue_drops += 1
            return False
        if q is None:
            q = self._queues[row] = _Queue()
        (q.inbound if inbound else q.outbound).append(bytes(packet))
        q.nbytes += size
        q.cost += cost
        self._queue_bytes += cost
        return True

    def _replace(self, q: _Queue, held: list[bytes], i: int, packet: bytes) -> bool:
        """`packet` in place of `held[i]`, within the same bounds as `enqueue`."""
        grow = len(packet) - len(held[i])  # a retransmission's options may differ in length
        if q.nbytes + grow > self._queue_per_peer or self._queue_bytes + grow > self._queue_total:
            self._stat_queue_drops += 1
            return False
        held[i] = packet
        q.nbytes += grow
        q.cost += grow
        self._queue_bytes += grow
        self._stat_queue_superseded += 1
        return True

    def drain(self, row: int, *, inbound: bool = False) -> list[bytes]:
        """Take the queued packets of one direction, oldest first (flush on trust)."""
        q = self._queues.get(row)
        if q is None:
            return []
        packets = q.inbound if inbound else q.outbound
        if not packets:
            return []
        size = sum(len(p) for p in packets)
        cost = size + QUEUE_PACKET_OVERHEAD * len(packets)
        q.nbytes -= size
        q.cost -= cost
        self._queue_bytes -= cost
        if inbound:
            q.inbound = []
        else:
            q.outbound = []
        if not q.inbound and not q.outbound:
            del self._queues[row]
        return packets

    def queued_bytes(self, row: int) -> int:
        """Payload bytes queued for the peer, both directions."""
        q = self._queues.get(row)
        return 0 if q is None else q.nbytes

    # --- statistics ---------------------------------------------------------------------------

    def nbytes(self) -> int:
        """Bytes held by the fixed columns and the index (not the side dicts)."""
        total = len(self._addr) + len(self._flags) + len(self._nbub)
        for col in (
            self._index,
            self._ip,
            self._port,
            self._rx,
            self._tx,
            self._used,
            self._bub,
            self._prev,
            self._next,
        ):
            total += col.itemsize * len(col)
        return total

    def stats(self) -> PeerTableStats:
        return PeerTableStats(
            capacity=self.capacity,
            size=len(self),
            trusted=self._count[_TRUSTED],
            untrusted=self._count[_UNTRUSTED],
            queued_peers=len(self._queues),
            queued_bytes=sum(q.nbytes for q in self._queues.values()),
            nonces=len(self._nonces),
            inserts=self._stat_inserts,
            evicted_untrusted=self._stat_evicted[_UNTRUSTED],
            evicted_trusted=self._stat_evicted[_TRUSTED],
            refused=self._stat_refused,
            expired=self._stat_expired,
            queue_drops=self._stat_queue_drops,
            queue_superseded=self._stat_queue_superseded,
            nbytes=self.nbytes(),
            allocated=self._rows,
        )
