"""The peer table's storage (core/peers.py has the Teredo rules): rows, index, LRU, ticks.

A relay holds up to a million peers (Miredo with Judy arrays: 1,048,576), so a dict of objects
(several hundred bytes a peer) will not do. Each peer is one *row* of fixed-size columns in
`array`/`bytearray` buffers. The columns grow with the peers: `INITIAL_ROWS` rows at
construction, an eighth more (up to the capacity) when a new peer finds no free row, so an idle
relay with a million-peer capacity holds about 70 kB, and a busy one about 68 bytes a row with
at most an eighth of its rows not yet used:

    column                       bytes/row
    address (bytearray)          16
    mapped IPv4, port            4 + 2
    flags, bubble count          1 + 1
    last rx, last tx, last use   3 x 4     (uint32 ticks of 10 ms)
    4 most recent bubble times   4 x 4     (exact section 5.2.6 window, see below)
    LRU prev / next row          2 x 4
                                 = 60, plus the hash index: 4 bytes x 2 slots = 8

The index is open addressing with linear probing in an `array('i')` of row+1 (0 = empty), at a
load factor of at most 1/2 (rebuilt at twice the size when the rows pass half of it: O(rows),
amortized O(1) per insert), with backward-shift deletion (no tombstones, so a churn of inserts
and removals never degrades it). Slots come from Python's `hash()` of the address `bytes`,
which is SipHash with a per-process random key: a flood of crafted addresses cannot aim at one
probe chain (RFC 4380 section 7.3.3, cache flooding). Nonces and queues are rare and live in
side dicts keyed by row, each with a bound.

Rows are handles: valid until the row is removed, evicted (by `insert`) or expired (by
`expire`); look the address up again after any of those.

Rows are handles: valid until the row is removed, evicted or expired; look the address up
again after any of those. Untrusted and trusted rows sit in two separate LRU lists (intrusive,
through the prev/next columns); a row moves between them when its trusted flag changes.

Time: every method that needs the time takes `now` (seconds, monotonic, from the driver) and
never reads a clock. Times are stored as uint32 ticks of 10 ms from `epoch - 3600 s` (the hour
of slack makes "now - 30 s" and "now - 600 s" representable from the first call). Rules are
evaluated on times rounded to 10 ms. uint32 ticks would last 497 days; the table rebases all
stored times once `now` passes about 248 days from the base (one O(capacity) pass, about a
second at a million rows, once every 248 days); times that fall before the new base become
"an hour or more ago", which no rule distinguishes from older. `now` should not go backwards:
if it does, nothing breaks, ages are read as zero and expiry is merely delayed.
"""

from __future__ import annotations

from array import array

#: Rows allocated at construction (or the capacity, if smaller); the columns grow from there.
INITIAL_ROWS = 1024
#: Below this many rows the hash index is kept at most a quarter full (16 bytes a row), from
#: there on at most half full (8 bytes a row).
SPARSE_INDEX_ROWS = 65536

_TICKS = 100  # ticks per second (10 ms)
# Recency (LRU position and last use) is kept to 1 s: a row used again within 1 s of its last
# move stays where it is, which spares the list surgery for most packets of a busy peer.
_RECENCY_TICKS = _TICKS
_SLACK = 3600.0  # seconds of representable past before the epoch
_REBASE_AT = 1 << 31  # rebase at half the uint32 range
_F_USED = 1
_F_TRUSTED = 2
_F_LOCAL = 4
_NONE = -1
_UNTRUSTED = 0  # list numbers: the trusted flag's value
_TRUSTED = 1


def _index_slots(rows: int) -> int:
    """Hash index slots for `rows` rows: a power of two, at least 4 times the rows (load <= 1/4,
    short probe chains) while that costs little, at least twice (load <= 1/2) from
    `SPARSE_INDEX_ROWS` rows on, where 8 more bytes a row would matter."""
    want = (4 if rows < SPARSE_INDEX_ROWS else 2) * rows
    slots = 2
    while slots < want:
        slots <<= 1
    return slots


class PeerRows:
    """The columns, index, LRU lists and clock of a peer table; `PeerTable` (core/peers.py)
    adds the rules. `_allocate` (re)creates the columns; the rest is used by the rules."""

    __slots__ = (
        "_addr",
        "_base",
        "_bub",
        "_count",
        "_flags",
        "_free",
        "_head",
        "_index",
        "_ip",
        "_mask",
        "_nbub",
        "_next",
        "_port",
        "_prev",
        "_rows",
        "_rx",
        "_tail",
        "_tx",
        "_used",
        "capacity",
    )

    def __init__(self, capacity: int, epoch: float) -> None:
        self.capacity = capacity
        self._base = epoch - _SLACK
        self._allocate()

    def _allocate(self) -> None:
        """(Re)create every column with `INITIAL_ROWS` rows (at most `capacity`), all free."""
        rows = self._rows = min(self.capacity, INITIAL_ROWS)
        self._mask = _index_slots(rows) - 1
        self._index = array("i", [0]) * (self._mask + 1)
        self._addr = bytearray(16 * rows)
        self._ip = array("I", [0]) * rows
        self._port = array("H", [0]) * rows
        self._flags = bytearray(rows)
        self._nbub = bytearray(rows)
        self._rx = array("I", [0]) * rows
        self._tx = array("I", [0]) * rows
        self._used = array("I", [0]) * rows
        self._bub = array("I", [0]) * (4 * rows)
        self._prev = array("i", [_NONE]) * rows
        # Free rows are chained through `_next`, lowest row first.
        self._next = array("i", range(1, rows + 1))
        self._next[rows - 1] = _NONE
        self._free = 0
        self._head = [_NONE, _NONE]  # MRU end, per list (untrusted, trusted)
        self._tail = [_NONE, _NONE]  # LRU end
        self._count = [0, 0]

    def _grow(self) -> bool:
        """More rows (an eighth more, up to the capacity) when every row is in use; False at
        capacity.

        The columns are extended in place (at C speed: an eighth more keeps the rows not yet
        used, and the RSS they cost, small), and the index, when the rows pass half its slots,
        rebuilt at twice the size: O(rows) per doubling, so O(1) per insert on average (about
        0.5 s once, from 2**20 to 2**21 slots)."""
        old = self._rows
        rows = min(self.capacity, old + max(old >> 3, INITIAL_ROWS))
        if rows == old:
            return False
        add = rows - old
        zeros = memoryview(bytes(16 * add))  # one temporary for every column
        self._addr += zeros
        self._flags += zeros[:add]
        self._nbub += zeros[:add]
        for col in (self._ip, self._port, self._rx, self._tx, self._used):
            col.frombytes(zeros[: col.itemsize * add])
        self._bub.frombytes(zeros)
        del zeros
        self._prev.frombytes(b"\xff" * (4 * add))  # _NONE (-1) in every new row
        self._next.extend(range(old + 1, rows + 1))
        self._next[rows - 1] = _NONE
        self._free = old  # every old row is in use: the new ones are the free list
        self._rows = rows
        slots = _index_slots(rows)
        if slots > self._mask + 1:
            self._rehash(slots)
        return True

    def _rehash(self, slots: int) -> None:
        """Rebuild the index with `slots` slots (every row in use is indexed again)."""
        mask = slots - 1
        index = array("i", [0]) * slots
        keys = self._addr
        flags = self._flags
        for r in range(self._rows):
            if flags[r] & _F_USED:
                o = r << 4
                i = hash(bytes(keys[o : o + 16])) & mask
                while index[i]:
                    i = (i + 1) & mask
                index[i] = r + 1
        self._index = index
        self._mask = mask

    # --- time ---------------------------------------------------------------------------------

    def _tick(self, now: float) -> int:
        t = int((now - self._base) * _TICKS + 0.5)
        if t >= _REBASE_AT:
            self._rebase(now)
            t = int((now - self._base) * _TICKS + 0.5)
        return t if t > 0 else 0

    def _rebase(self, now: float) -> None:
        """Move the base to `now - 1 h` so that ticks stay far from the uint32 limit."""
        shift = int((now - _SLACK - self._base) * _TICKS)
        if shift <= 0:
            return
        self._base += shift / _TICKS
        for name in ("_rx", "_tx", "_used", "_bub"):
            col: array[int] = getattr(self, name)
            setattr(self, name, array("I", (t - shift if t > shift else 0 for t in col)))

    def _time(self, tick: int) -> float:
        return self._base + tick / _TICKS

    # --- index --------------------------------------------------------------------------------

    def lookup(self, addr: bytes) -> int | None:
        """The row of peer `addr` (16 bytes), or None. Reads only: recency is not changed."""
        if len(addr) != 16:
            return None
        index = self._index
        mask = self._mask
        keys = self._addr
        i = hash(addr) & mask
        while True:
            r = index[i]
            if not r:
                return None
            r -= 1
            # startswith(prefix, start) compares in place: no slice object per probe.
            if keys.startswith(addr, r << 4):
                return r
            i = (i + 1) & mask

    def __contains__(self, addr: object) -> bool:
        return isinstance(addr, bytes) and self.lookup(addr) is not None

    def __len__(self) -> int:
        return self._count[0] + self._count[1]

    @property
    def allocated(self) -> int:
        """Rows allocated so far (the columns grow with the peers, up to `capacity`)."""
        return self._rows

    def address(self, row: int) -> bytes:
        """The IPv6 address of the peer in `row`."""
        o = row << 4
        return bytes(self._addr[o : o + 16])

    def trusted_peers(self) -> list[tuple[bytes, int, int]]:
        """(address, IPv4, port) of every trusted peer, most recently used first (O(trusted)):
        what a `PeerWatch` attached late, or rebuilding its copy, starts from."""
        out: list[tuple[bytes, int, int]] = []
        keys = self._addr
        r = self._head[_TRUSTED]
        while r != _NONE:
            o = r << 4
            out.append((bytes(keys[o : o + 16]), self._ip[r], self._port[r]))
            r = self._next[r]
        return out

    def trusted_used_since(self, since: float, limit: int) -> list[int]:
        """Rows of the trusted peers used (sent to, heard from, trusted) after `since`, most
        recently used first, at most `limit`: the head of the trusted LRU list, O(result).

        A row moves to the head only when used 1 s or more after its last move, so a peer used
        again within a second of its previous use may be listed one call late; the list is
        ordered by the time of the calls that moved the rows, which is what a caller walking
        it once per interval (`since` = the previous call's time) needs."""
        out: list[int] = []
        t = int((since - self._base) * _TICKS + 0.5)
        used = self._used
        nxt = self._next
        r = self._head[_TRUSTED]
        while r != _NONE and len(out) < limit and used[r] > t:
            out.append(r)
            r = nxt[r]
        return out

    def _index_delete(self, row: int) -> None:
        """Linear-probing deletion by backward shift: later entries of the cluster that may
        live in the freed slot move back, so no tombstones accumulate."""
        index = self._index
        mask = self._mask
        keys = self._addr
        o = row << 4
        i = hash(bytes(keys[o : o + 16])) & mask
        while index[i] != row + 1:
            i = (i + 1) & mask
        j = i
        while True:
            j = (j + 1) & mask
            r = index[j]
            if not r:
                break
            o = (r - 1) << 4
            home = hash(bytes(keys[o : o + 16])) & mask
            # Keep r where it is when its home slot lies cyclically in (i, j].
            if (i < home <= j) if i <= j else (home > i or home <= j):
                continue
            index[i] = r
            i = j
        index[i] = 0

    # --- LRU lists ----------------------------------------------------------------------------

    def _link_head(self, row: int, lst: int) -> None:
        head = self._head[lst]
        self._prev[row] = _NONE
        self._next[row] = head
        if head == _NONE:
            self._tail[lst] = row
        else:
            self._prev[head] = row
        self._head[lst] = row

    def _unlink(self, row: int, lst: int) -> None:
        p = self._prev[row]
        n = self._next[row]
        if p == _NONE:
            self._head[lst] = n
        else:
            self._next[p] = n
        if n == _NONE:
            self._tail[lst] = p
        else:
            self._prev[n] = p

    def _touch(self, row: int, t: int) -> None:
        """Mark `row` used at tick `t`: it moves to the most recently used end of its list,
        unless it moved there less than 1 s ago (then nothing changes, so the lists stay sorted
        by last use and expiry is at most 1 s early). On the data path: `_unlink` and
        `_link_head` written out, with locals."""
        used = self._used
        if t - used[row] < _RECENCY_TICKS:
            return
        used[row] = t
        lst = (self._flags[row] >> 1) & 1
        heads = self._head
        head = heads[lst]
        if head == row:
            return
        prev = self._prev
        nxt = self._next
        p = prev[row]  # never _NONE: row is not the head
        n = nxt[row]
        nxt[p] = n
        if n == _NONE:
            self._tail[lst] = p
        else:
            prev[n] = p
        prev[row] = _NONE
        nxt[row] = head
        prev[head] = row
        heads[lst] = row

    def _check(self, row: int) -> int:
        flags = self._flags[row]
        if not flags & _F_USED:
            raise ValueError(f"row {row} is not in use")
        return flags
