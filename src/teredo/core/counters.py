"""Why packets are dropped, and flat counters of those reasons.

Nothing is logged per packet (a flood would turn into a log flood); every drop names one
`DropReason` and the I/O layer counts it in `DropCounters`, which metrics and `status` read.
Members are grouped by the module that decides the drop; a value only indexes the counter array,
the lower-case name is what status and metrics show. One kind of fault has one name in every
role (the common and peer-table groups), so a dashboard reads the same for client and relay.
Each group keeps gaps for new members; metrics (io/metrics.py) export a role's groups by range.
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
    TRUNCATED_TRAILER = 15  # RFC 6081 trailer that runs past the end of the datagram
    BAD_TRAILER = 16  # known RFC 6081 trailer with a wrong length or a zero port
    TOO_MANY_TRAILERS = 17  # more trailers than MAX_TRAILERS (nobody sends more than a few)
    # 18-49: more codec reasons

    # --- common receive checks (all roles): RFC 4380 5.2.3, 5.3.1, 5.4.2 ---
    NOT_GLOBAL_IPV4 = 50  # IPv4 source or embedded IPv4 is not global unicast (5.2.4)
    MAPPING_MISMATCH = 51  # Teredo source whose embedded mapping differs from the UDP source
    LOOP = 52  # from one of our own addresses with port 3544 (Miredo loop guard)
    BAD_UDP_SOURCE = 53  # the UDP source is not an IPv4 socket address
    NOT_GLOBAL_DESTINATION = 54  # 5.3.1, 5.2.4, 5.4.2: the IPv6 destination is not global unicast
    MULTICAST_DESTINATION = 55  # multicast destination (client: outside local discovery; Miredo)
    # 56-99: more common reasons

    # --- server machine (core/server.py): RFC 4380 5.3.1 acceptance, 5.3.2, abuse limits ---
    NOT_BUBBLE_OR_ICMPV6 = 100  # acceptance check 2: servers carry bubbles and ICMPv6 only
    NOT_ACCEPTED = 101  # acceptance check 7: none of checks 4-6 admitted the packet
    NOT_FOR_SERVER = 102  # sent to ff02::2 or our link-local address but not a valid RS
    BAD_ROUTER_SOLICITATION = 103  # RS failing RFC 4861 6.1.1 (hop limit, checksum, length)
    # 104: merged into NOT_GLOBAL_DESTINATION
    DESTINATION_NOT_GLOBAL_IPV4 = 105  # 5.3.1: a Teredo destination embeds a non-global IPv4
    ICMPV6_TOO_LARGE = 106  # relayed ICMPv6 over the size cap (Miredo and Microsoft: 88 bytes)
    RS_RATE_LIMITED = 107  # per-source or overall Router Solicitation limit reached
    FORWARD_RATE_LIMITED = 108  # per-source or overall forwarding limit reached
    OVERSIZED = 109  # datagram larger than anything a server handles (its 2 KiB read buffer)
    # 110-149: more server reasons
    # --- client machine (core/client.py): 150-199, RFC 4380 5.2 ---
    NOT_QUALIFIED = 150  # packet to send or receive before qualification (5.2: qualify first)
    # 151: BAD_UDP_SOURCE, now common
    RA_NOT_FROM_SERVER = 152  # RA from another IPv4/port than the server's 3544 (5.2.1)
    RA_WITHOUT_AUTH = 153  # RA without Authentication header (5.2.2; Miredo drops it too)
    RA_BAD_NONCE = 154  # RA nonce is not the one of our pending RS (5.2.2)
    RA_BAD_CONFIRMATION = 155  # RA confirmation byte not 0 (5.2.2: key no longer valid)
    RA_WITHOUT_ORIGIN = 156  # RA without Origin Indication: no mapping to learn (5.2.1)
    RA_WRONG_DESTINATION = 157  # RA not sent to our RS source address (5.2.1)
    RA_WRONG_PREFIX = 158  # PIO is not Teredo prefix + our server's IPv4 (5.2.1)
    RA_UNEXPECTED = 159  # RA while no RS is pending (qualification already done)
    NOT_OUR_ADDRESS = 160  # IPv6 destination is not our Teredo address (5.2.3)
    # 161: MULTICAST_DESTINATION, now common
    LINK_LOCAL_SOURCE = 162  # link-local IPv6 source on the data path (forged RA/redirect guard)
    INVALID_SOURCE = 163  # multicast, unspecified or loopback IPv6 source
    UNKNOWN_BUBBLE = 164  # bubble from a peer that neither matches its mapping nor is local
    PING_NONCE_MISMATCH = 165  # Echo Reply whose data is not our ping-test nonce (5.2.9)
    # 166, 167: QUEUE_FULL, PEER_TABLE_FULL, now in the peer-table group
    BUBBLE_LIMIT = 168  # 4 bubbles or pings in 300 s without answer (5.2.6 MUST)
    # 169: PEER_UNREACHABLE, now in the peer-table group
    LINK_LOCAL_DESTINATION = 170  # packet from the local stack to a link-local destination
    WRONG_SOURCE = 171  # packet from the local stack whose source is not our address
    OWN_ADDRESS = 172  # to our own address, or our own discovery bubble looped back
    BAD_DISCOVERY = 173  # discovery datagram that is not a bubble from Teredo to ff02::1
    DISCOVERY_OTHER_NAT = 174  # discovery bubble embedding another mapped IPv4 (5.2.8 MAY)
    DISCOVERY_DISABLED = 175  # discovery bubble while local discovery is off
    PING_RATE_LIMITED = 176  # case 6 ping tests over the global limit (CVE-2006-6266)
    PROBES_FULL = 177  # too many bubble/ping procedures running at once
    SUSPENDED = 178  # queued packets dropped after a clock jump (suspend/resume)
    RA_WRONG_SOURCE = 179  # RA not from the server's link-local address (5.3.2; `teredo probe`)
    # From the local stack to a multicast destination (the kernel's own MLD and ND on the TUN):
    # nothing to send on a Teredo link; kept apart from the MULTICAST_DESTINATION of received
    # datagrams (5.2.3), which an operator watches for forgeries.
    LOCAL_MULTICAST = 180
    # 181-199: more client reasons
    ORIGIN_BUBBLE_LIMIT = 190  # direct bubbles answering origin indications: per mapping/IPv4
    # --- relay machine (core/relay.py): RFC 4380 5.4.1, 5.4.2; 200-249 ---
    NOT_TEREDO_DESTINATION = 200  # 5.4.1: native packet for an address outside the Teredo prefix
    NOT_TEREDO_SOURCE = 201  # 5.4.2: a relay accepts only Teredo sources over UDP
    UNKNOWN_PEER_BUBBLE = 202  # a bubble from a client the relay never bubbled (nothing to do)
    TEREDO_DESTINATION = 203  # 5.4.2: a client's packet for a Teredo address (not served)
    # 204, 205: merged into MULTICAST_DESTINATION, NOT_GLOBAL_DESTINATION
    NOT_OWN_ADDRESS = 206  # 5.4 host-specific relay: destination is not one of our addresses
    # 207-209: merged into PEER_TABLE_FULL, QUEUE_FULL, PEER_UNREACHABLE
    SERVER_NOT_GLOBAL_IPV4 = 210  # 5.4.1: the embedded server IPv4 is not global (no bubble)
    RELAY_UNKNOWN_PEER = 211  # 5.4.2 MAY: a client packet from a peer the relay never bubbled
    RELAY_BUBBLE_LIMIT = 212  # 5.2.6, 7.4: bubbles toward one server IPv4 over its rate limit
    RELAY_MAPPING_CHANGE = 213  # a valid trusted peer heard from another mapping (spoofed)
    # --- peer table and queues (core/peers.py; client and relay): 250-299 ---
    PEER_TABLE_FULL = 250  # no row for a new peer without evicting a valid one (7.3.5)
    QUEUE_FULL = 251  # the bounded queue of a peer waiting for trust is full (5.2.4, 5.4.1)
    PEER_UNREACHABLE = 252  # bubbles/pings repeated 3 times unanswered: queue dropped (5.2.4)


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
