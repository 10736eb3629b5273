"""The generic half of a kernel data path (issue 8, docs/kernel.md "The mirror"): a BPF object
loaded and its programs attached through links held by this process (`KernelPrograms`), and a
core PeerTable's trusted peers mirrored into a hash map of `struct teredo_peer`
(src/teredo/bpf/teredo_encap.h) (`PeerMapMirror`). The relay's specifics are in io/krelay.py;
a client reuses both classes with its own object and map.

The core (core/peers.py) decides; the mirror copies, and keeps no per-peer state of its own
(issue 8: at most 100 bytes a peer, user space and kernel together):

- insert / update / delete: the mirror is the table's `PeerWatch`, told synchronously of every
  change to the trusted set (`trusted`: a new peer or a new mapping; `untrusted`: distrusted,
  removed, evicted or expired; `cleared`). The kernel map holds the core's trusted peers at
  their mappings, and nothing else: a peer remapped or expired in the core is never forwarded
  to at the old mapping. It may hold fewer (an LRU hash smaller than the table keeps the active
  ones, the relay's): a peer missing from the map only means the Python path.
- validity (section 5.2.4, 30 s after the last reception): a time, not an event, so the map
  value carries the last reception and the program itself refuses a stale peer. The value's
  `last_rx` is written at trust and kept at the newest reception either path saw: the kernel's
  own, and the Python path's, which `sync` writes down when it is newer. The kernel's view is
  never the newer one, so the kernel is never the one to send to an invalid peer.
- use: `sync` reads the kernel's send and reception stamps back into the core (`touch_tx`,
  `touch_rx`), so that traffic the kernel carries keeps the peer alive as Python's own does.
- re-insert on use: an entry may leave the map without the core's say (the relay's LRU hash
  evicts its least recently used entries when full; an insert may have failed). Such a peer's
  traffic takes the Python path, which moves it to the head of the core's trusted LRU list; so
  `sync` first walks that head, the valid trusted peers used on the Python path since the
  previous sync (at most `REINSERT_BUDGET`), and inserts each one the map lacks
  (BPF_NOEXIST: an entry present is left as it is) with the core's mapping and last reception.
  The kernel carries the peer again from its next packet on.

`sync` walks the map with BPF_MAP_LOOKUP_BATCH, a bounded part each call: the whole map once in
`SYNC_CYCLE` seconds whatever its size, so that the core (idle timeout 30 s) hears of the
kernel's use well before it would expire a peer in use.

Links are held by this process's descriptors only (never pinned): however the daemon ends, the
kernel detaches the programs and frees the maps.
"""

from __future__ import annotations

import errno
import math
import struct
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Final

from teredo.core.peers import PeerTable
from teredo.io.datapath import object_path
from teredo.io.libbpf import BPF_NOEXIST, BpfLink, BpfMap, BpfObject, possible_cpus

__all__ = [
    "PEER_LOCAL",
    "PEER_VALUE",
    "REINSERT_BUDGET",
    "SHARED_COUNTERS",
    "SYNC_CYCLE",
    "SYNC_INTERVAL",
    "KernelPrograms",
    "MirrorTimer",
    "PeerMapMirror",
    "boottime",
    "path_summary",
    "read_counters",
    "stamp",
]

#: How often the loop calls `sync`.
SYNC_INTERVAL: Final = 1.0
#: The whole map is walked once in this time at most (well under the relay's 30 s idle timeout).
SYNC_CYCLE: Final = 8.0
#: Entries read per BPF_MAP_LOOKUP_BATCH call (32 KiB of keys and values; small enough not to
#: raise the daemon's RSS for good, issue 8).
BATCH: Final = 1024
#: At least this many entries per sync.
MIN_BUDGET: Final = 4096
#: The core's last reception is looked up for an entry whose kernel reception is this old
#: (19 s of validity left in the kernel, more than two walks) ...
RX_CHECK: Final = 10.0
#: ... and written down when it is newer by this much.
RX_PUSH: Final = 1.0
#: Trusted peers used on the Python path that one sync puts back into the map at most (the
#: syscalls of a sync stay bounded when more peers are active than the map holds: the kernel's
#: LRU and ours then take turns, and a peer not put back this time is on its next use). Each
#: try is a map update of about 6 us under the data path's lock, also for a peer the map has
#: (EEXIST: one whose packets Python carried for another reason, GSO, ICMPv6): 1,024 keep a
#: sync's share under 10 ms.
REINSERT_BUDGET: Final = 1024
#: enum teredo_counter of teredo_encap.h, in order: the counter slots the client's and the
#: relay's programs share; each program's own follow (io/kclient.py, io/krelay.py COUNTERS).
SHARED_COUNTERS: Final = (
    "encap",
    "encap_no_peer",
    "encap_partial",
    "encap_other",
    "encap_error",
    "decap",
    "decap_no_peer",
    "decap_mapping",
    "decap_other",
    "decap_error",
    "encap_stale",
)
#: struct teredo_peer's flags: a client's local peer (section 5.2.8, valid 600 s).
PEER_LOCAL: Final = 1
#: struct teredo_peer: be32 ipv4, be16 port, u16 flags, u32 last_tx, u32 last_rx.
PEER_VALUE: Final = struct.Struct("=6sHII")
_STAMP_NS: Final = 1 << 20
_U32: Final = 0xFFFFFFFF


def boottime() -> float:
    """CLOCK_BOOTTIME, the daemons' clock (io/loop.py) and the programs' (bpf_ktime_get_boot_ns)."""
    return time.clock_gettime(time.CLOCK_BOOTTIME)


def stamp(when: float) -> int:
    """A time of CLOCK_BOOTTIME as the programs stamp it: ns >> 20, modulo 2**32."""
    return (int(when * 1e9) >> 20) & _U32


def _age(value: int, now_stamp: int) -> float:
    """Seconds from a stamp to `now_stamp` (u32 arithmetic: right for 52 days)."""
    return ((now_stamp - value) & _U32) * _STAMP_NS / 1e9


def _mapping(ipv4: int, port: int) -> bytes:
    return ipv4.to_bytes(4, "big") + port.to_bytes(2, "big")


def read_counters(counters: BpfMap, names: Sequence[str]) -> dict[str, int]:
    """A per-CPU array of u64 counters, summed over the CPUs, by name (index order)."""
    cpus = possible_cpus()
    out: dict[str, int] = {}
    for i, name in enumerate(names):
        raw = counters.lookup(struct.pack("=I", i), percpu=True)
        out[name] = sum(struct.unpack(f"={cpus}Q", raw)) if raw is not None else 0
    return out


def path_summary(c: Mapping[str, int], state: str, encapsulated: str, decap_own: str) -> str:
    """The one-line summary of the client's or the relay's kernel data path from its counters
    (SHARED_COUNTERS and the mirror's): `state` follows "data path: kernel", `encapsulated` says
    the encapsulated count, `decap_own` the program's own reason to pass a datagram up."""
    return (
        f"data path: kernel{state} (map {c['map_entries']}, {encapsulated} "
        f"(passed up: no peer {c['encap_no_peer']}, stale {c['encap_stale']}, checksum/GSO "
        f"{c['encap_partial']}, other {c['encap_other']}), decapsulated {c['decap']} (passed "
        f"up: no peer {c['decap_no_peer']}, other mapping {c['decap_mapping']}, {decap_own}, "
        f"other {c['decap_other']}))"
    )


class KernelPrograms:
    """A compiled object of the package (scripts/build-bpf.sh) opened, sized, loaded, configured
    and attached; `close` detaches and frees everything (closing descriptors: nothing pinned).

    `max_entries`: map name -> capacity, set before load. `configure(obj)`: writes the
    configuration maps after load, before any program is attached (a program never sees an
    unconfigured map). `attach`: (program, ifindex, BPF_TCX_INGRESS/EGRESS/...) in order."""

    def __init__(
        self,
        name: str,
        *,
        max_entries: dict[str, int],
        configure: Callable[[BpfObject], None],
        attach: Sequence[tuple[str, int, int]],
    ) -> None:
        self._links: list[BpfLink] = []
        self.obj = BpfObject(object_path(name))
        try:
            for map_name, entries in max_entries.items():
                self.obj.map(map_name).set_max_entries(entries)
            self.obj.load()
            configure(self.obj)
            for program, ifindex, kind in attach:
                self.attach(program, ifindex, kind)
        except BaseException:
            self.close()
            raise

    def attach(self, program: str, ifindex: int, kind: int) -> None:
        """Attach `program` at ifindex (`close` detaches it): after load, with CAP_NET_ADMIN."""
        self._links.append(self.obj.program(program).attach(ifindex, kind))

    def map(self, name: str) -> BpfMap:
        return self.obj.map(name)

    def close(self) -> None:
        while self._links:
            self._links.pop().destroy()
        self.obj.close()


class PeerMapMirror:
    """A PeerTable's trusted peers in a BPF hash map (16-byte address -> struct teredo_peer).

    Set it as the table's `watch` before the first peer is trusted. Every method runs under the
    lock that guards the table (the data path's); none calls back into the table but `sync`."""

    def __init__(self, peer_map: BpfMap, clock: Callable[[], float] = boottime) -> None:
        self._map = peer_map
        self._clock = clock
        self._cursor: bytes | None = None
        #: Entries seen by the walk under way, and by the last complete walk.
        self._walked = 0
        self.entries = 0
        #: The stamp when the walk under way began, and when the one before began: an entry whose
        #: kernel stamps are older than the latter was read back already.
        self._walk_start = 0
        self._read_back_to = 0
        self.next_sync: float | None = None
        #: When the previous sync ran (the re-insert walk looks at the uses since).
        self._last_sync: float | None = None
        self.inserted = 0
        #: Trusted peers missing from the map (evicted by the kernel's LRU, a failed insert)
        #: put back on their use by the Python path.
        self.reinserted = 0
        self.deleted = 0
        #: Map entries the walk found that the core does not trust at that mapping (a failed
        #: delete; the events make none otherwise), deleted then.
        self.repaired = 0
        #: Map updates or deletes the kernel refused (a full map, no memory): the peer keeps the
        #: Python path.
        self.errors = 0

    # --- PeerWatch ----------------------------------------------------------------------------

    def trusted(self, addr: bytes, ipv4: int, port: int, local: bool) -> None:
        """Trusted at ipv4:port, remapped, or its local flag changed: the core trusts on a
        direct reception (section 5.4.2), so the entry starts valid, received now. A local peer
        (a client's, section 5.2.8) is flagged so, and the program gives it the core's 600 s of
        validity instead of 30 s (section 5.2.4)."""
        flags = PEER_LOCAL if local else 0
        value = PEER_VALUE.pack(_mapping(ipv4, port), flags, 0, stamp(self._clock()))
        try:
            self._map.update(addr, value)
        except OSError:
            self.errors += 1
            # A remapped peer must not stay at its old mapping (E2BIG never hits an update of
            # an existing key, but no memory could).
            self._delete(addr)
            return
        self.inserted += 1

    def untrusted(self, addr: bytes) -> None:
        self._delete(addr)

    def cleared(self) -> None:
        for key in list(self._map.keys()):
            self._delete(key)

    def _delete(self, addr: bytes) -> None:
        try:
            if self._map.delete(addr):
                self.deleted += 1
        except OSError:
            self.errors += 1

    # --- reconciliation -------------------------------------------------------------------------

    def sync(self, peers: PeerTable, now: float) -> None:
        """Read the kernel's use back into the core and write the core's newer receptions down,
        for a part of the map: at least MIN_BUDGET entries, and enough that the whole map is walked
        once in SYNC_CYCLE seconds."""
        self.next_sync = now + SYNC_INTERVAL
        # Before the walk below, whose read-back moves the rows the kernel used to the head of
        # the core's list too: the rows at the head now are the Python path's since last time.
        self._reinsert(peers, now)
        now_stamp = stamp(now)
        if self._cursor is None and self._walked == 0:
            self._read_back_to, self._walk_start = self._walk_start, now_stamp
        budget = max(MIN_BUDGET, math.ceil(self.entries * SYNC_INTERVAL / SYNC_CYCLE))
        done = 0
        unpack = PEER_VALUE.unpack_from
        since = self._read_back_to
        while done < budget:
            n, keys, values, self._cursor = self._map.lookup_batch(self._cursor, BATCH)
            for i in range(n):
                _, _, tx, rx = unpack(values, i << 4)
                rx_age = _age(rx, now_stamp)
                fresh_tx = tx != 0 and (tx - since) & _U32 < 1 << 31
                fresh_rx = (rx - since) & _U32 < 1 << 31
                if fresh_tx or fresh_rx or rx_age >= RX_CHECK:
                    o = i << 4
                    self._visit(peers, keys[o : o + 16], values[o : o + 16], now)
            done += n
            self._walked += n
            if self._cursor is None:
                self.entries, self._walked = self._walked, 0
                break

    def _reinsert(self, peers: PeerTable, now: float) -> None:
        """Put back the valid trusted peers used since the previous sync that the map lacks."""
        since = self._last_sync
        self._last_sync = now
        if since is None:
            return  # every peer trusted until now was inserted on trust
        for row in peers.trusted_used_since(since, REINSERT_BUDGET):
            if not peers.is_valid(row, now):
                continue  # the kernel would pass it up as stale: Python's ping test decides
            flags = PEER_LOCAL if peers.is_local(row) else 0
            value = PEER_VALUE.pack(
                _mapping(*peers.mapping(row)), flags, 0, stamp(peers.last_rx(row))
            )
            try:
                self._map.update(peers.address(row), value, BPF_NOEXIST)
            except OSError as exc:
                if exc.errno != errno.EEXIST:
                    self.errors += 1
                continue
            self.reinserted += 1

    def _visit(self, peers: PeerTable, key: bytes, value: bytes, now: float) -> None:
        """One entry with news (a kernel stamp since the last walk) or an old kernel reception
        (the core's may be newer)."""
        mapping, flags, tx, rx = PEER_VALUE.unpack(value)
        since = self._read_back_to
        fresh_tx = tx != 0 and (tx - since) & _U32 < 1 << 31
        fresh_rx = (rx - since) & _U32 < 1 << 31
        now_stamp = stamp(now)
        row = peers.lookup(key)
        if row is None or not peers.is_trusted(row) or _mapping(*peers.mapping(row)) != mapping:
            self.repaired += 1
            self._delete(key)
            return
        if fresh_tx:
            when = now - _age(tx, now_stamp)
            if when > peers.last_tx(row):
                peers.touch_tx(row, when)
        kernel_rx = now - _age(rx, now_stamp)
        if fresh_rx and kernel_rx > peers.last_rx(row):
            peers.touch_rx(row, kernel_rx)
        core_rx = peers.last_rx(row)
        if core_rx - kernel_rx >= RX_PUSH:
            # Heard on the Python path since: the kernel may send to the peer for longer.
            try:
                self._map.update(key, PEER_VALUE.pack(mapping, flags, tx, stamp(core_rx)))
            except OSError:
                self.errors += 1

    def counters(self) -> dict[str, int]:
        return {
            "map_entries": self.entries,
            "mirror_inserts": self.inserted,
            "mirror_reinserts": self.reinserted,
            "mirror_deletes": self.deleted,
            "mirror_repairs": self.repaired,
            "mirror_errors": self.errors,
        }


class MirrorTimer:
    """The mirror's reconciliation (`PeerMapMirror.sync`: the kernel's use read back into the
    core, the core's receptions written down) as a timer of a daemon's loop, under the lock of
    its data path. One for every daemon: `mirror()` and `peers()` say what there is now (None:
    no kernel path any more, or no machine yet)."""

    __slots__ = ("_clock", "_lock", "_mirror", "_peers")

    def __init__(
        self,
        mirror: Callable[[], PeerMapMirror | None],
        peers: Callable[[], PeerTable | None],
        lock: threading.Lock,
        clock: Callable[[], float],
    ) -> None:
        self._mirror = mirror
        self._peers = peers
        self._lock = lock
        self._clock = clock

    def next_deadline(self) -> float | None:
        mirror = self._mirror()
        if mirror is None:
            return None
        if mirror.next_sync is None:
            mirror.next_sync = self._clock() + SYNC_INTERVAL
        return mirror.next_sync

    def handle_timer(self, now: float) -> None:
        with self._lock:
            mirror = self._mirror()
            if mirror is None or (mirror.next_sync is not None and now < mirror.next_sync):
                return
            peers = self._peers()
            if peers is None:
                mirror.next_sync = now + SYNC_INTERVAL
                return
            mirror.sync(peers, now)
