"""Why packets are dropped, and flat counters of those reasons.

Nothing is logged per packet (a flood would turn into a log flood); every drop names one
`DropReason` and the I/O layer counts it in `DropCounters`, which metrics and `status` read.
Members are grouped by the module that decides the drop; values are stable once released (they
index the counter array), so new members are added inside the gaps left for each group.
"""

from __future__ import annotations

import enum
from array import array


class DropReason(enum.IntEnum):
    """One member per reason a datagram or IPv6 packet can be dropped anywhere."""

    # --- wire codecs (core/wire.py, core/ipv6.py): RFC 4380 5.1.1, 5.2.3, TEREDO-SPEC 2.4 ---
    TOO_SHORT = 1  # fewer than 40 bytes left for the IPv6 header after Teredo headers
    NOT_IPV6 = 2  # first byte after the headers is not version 6 (and no 00 00 / 00 01 marker)
    BAD_AUTH = 3  # Authentication header that cannot be read (reserved for policy checks)
    TRUNCATED_AUTH = 4  # datagram ends inside the Authentication header (< 13 + ID + AU)
    TRUNCATED_ORIGIN = 5  # datagram ends inside the 8-byte Origin Indication
    BAD_PAYLOAD_LENGTH = 6  # IPv6 payload length larger than the bytes that follow
    BAD_CHECKSUM = 7  # ICMPv6 checksum over the pseudo-header does not verify (RFC 4443 2.3)
    NOT_ICMPV6 = 8  # next header is not 58 where an ICMPv6 message is required
    BAD_ICMPV6 = 9  # ICMPv6 message too short for its type, or wrong type/code
    BAD_ND_OPTION = 10  # ND option of length 0 or running past the packet (RFC 4861 4.6)
    BAD_PREFIX_INFO = 11  # not exactly one /64 Prefix Information option (RFC 4380 5.2.1)
    BAD_MTU_OPTION = 12  # MTU option outside 1280..65535 (Miredo teredo_parse_ra)
    NOT_TEREDO_PREFIX = 13  # address or advertised prefix outside the configured Teredo prefix
    BAD_ORIGIN_ORDER = 14  # Origin Indication before Authentication (RFC 4380 5.1.1)
    # 15-49: more codec reasons

    # --- common receive checks (all roles): RFC 4380 5.2.3, 5.3.1, 5.4.2 ---
    NOT_GLOBAL_IPV4 = 50  # IPv4 source or embedded IPv4 is not global unicast (5.2.4)
    MAPPING_MISMATCH = 51  # Teredo source whose embedded mapping differs from the UDP source
    LOOP = 52  # from one of our own addresses with port 3544 (Miredo loop guard)
    # 53-99: more common reasons

    # --- server machine (core/server.py): RFC 4380 5.3.1 acceptance, 5.3.2, abuse limits ---
    NOT_BUBBLE_OR_ICMPV6 = 100  # acceptance check 2: servers carry bubbles and ICMPv6 only
    NOT_ACCEPTED = 101  # acceptance check 7: none of checks 4-6 admitted the packet
    NOT_FOR_SERVER = 102  # sent to ff02::2 or our link-local address but not a valid RS
    BAD_ROUTER_SOLICITATION = 103  # RS failing RFC 4861 6.1.1 (hop limit, checksum, length)
    NON_GLOBAL_DESTINATION = 104  # 5.3.1: never forward to a non-global IPv6 destination
    DESTINATION_NOT_GLOBAL_IPV4 = 105  # 5.3.1: a Teredo destination embeds a non-global IPv4
    ICMPV6_TOO_LARGE = 106  # relayed ICMPv6 over the size cap (Miredo and Microsoft: 88 bytes)
    RS_RATE_LIMITED = 107  # per-source or overall Router Solicitation limit reached
    FORWARD_RATE_LIMITED = 108  # per-source or overall forwarding limit reached
    # 109-149: more server reasons
    # --- client machine (core/client.py): 150-199 ---
    # --- relay machine (core/relay.py): 200-249 ---
    # --- peer table and queues (core/peers.py): 250-299 ---


# The counters are indexed by value, so the array spans the largest member.
_COUNTER_SLOTS = max(DropReason) + 1


class DropCounters:
    """A flat array of counts indexed by `DropReason` value; no dict lookup per drop."""

    __slots__ = ("_counts",)

    def __init__(self) -> None:
        self._counts = array("Q", bytes(8 * _COUNTER_SLOTS))

    def count(self, reason: DropReason, n: int = 1) -> None:
        self._counts[reason] += n

    def get(self, reason: DropReason) -> int:
        return self._counts[reason]

    def total(self) -> int:
        return sum(self._counts)

    def snapshot(self) -> dict[str, int]:
        """Non-zero counts by lower-case reason name (what metrics and `status` print)."""
        return {r.name.lower(): self._counts[r] for r in DropReason if self._counts[r]}

    def reset(self) -> None:
        for i in range(len(self._counts)):
            self._counts[i] = 0
