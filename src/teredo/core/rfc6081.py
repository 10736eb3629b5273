"""The client's RFC 6081 peer rules, a part of `ClientMachine` (core/client.py), sans I/O.

Symmetric NAT Support, receiving side (the bounds are in core/symmetric.py): a peer behind a
symmetric NAT answers our bubble from another port of the IPv4 it embeds. Port prediction
behind a sequential-port symmetric NAT (core/portpredict.py): our new flows announced in a
Random Port trailer, a peer's announced ports tried. Hairpinning (the rules are in
core/hairpin.py): two clients behind one NAT that does not hairpin reach each other at their
local addresses, offered in Alternate Address trailers. All apply only to peers that are not
valid trusted ones: one forged packet never moves a working peer.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from teredo.core.addr import (
    TEREDO_PORT,
    EndpointCache,
    embedded_mapping,
    int_to_ipv4,
    is_global_ipv4,
)
from teredo.core.counters import DropReason
from teredo.core.hairpin import HairpinRecords, alternates
from teredo.core.ipv6 import build_bubble
from teredo.core.natbehaviour import NatBehaviour
from teredo.core.peers import PeerTable
from teredo.core.portpredict import (
    FlowCounter,
    PortPrediction,
    PredictedPorts,
    random_port,
    tried_ports,
)
from teredo.core.procedure import Procedure
from teredo.core.qualify import ClientTransmit
from teredo.core.ratelimit import BucketTable
from teredo.core.symmetric import PortAdoption
from teredo.core.wire import AlternateAddressTrailer, TeredoPacket


class Rfc6081Peers:
    """Port adoption, port prediction and hairpinning for `ClientMachine`."""

    # Owned by the other parts of ClientMachine, used here.
    out: ClientTransmit
    address: bytes | None
    _prefix: bytes
    _mapping: tuple[int, int] | None
    _local: tuple[int, int] | None
    _peers: PeerTable
    _probes: dict[bytes, Procedure]
    _adoption: PortAdoption
    _hairpin: HairpinRecords
    _origin_bubbles: BucketTable
    _endpoints: EndpointCache
    _raw_out: ClientTransmit
    _prediction: PortPrediction
    _predicted: PredictedPorts
    _server: int
    _server2: int
    nat_behaviour: NatBehaviour | None

    if TYPE_CHECKING:

        def _trust(self, row: int, addr: bytes, ipv4: int, port: int, now: float) -> None: ...

    def _trust_at(
        self, row: int | None, src: bytes, ipv4: int, port: int, now: float
    ) -> int | None:
        """A peer believed at ipv4:port by one of the rules below: trusted there, with an entry
        made first when it has none; None when the table is full (the peer stays unknown)."""
        if row is None:
            row = self._peers.insert(src, now)
            if row is None:
                return None
        self._trust(row, src, ipv4, port, now)
        return row

    def _adopt_port(self, row: int | None, src: bytes, ipv4: int, port: int, now: float) -> bool:
        """RFC 6081 Symmetric NAT Support, receiving side (core/symmetric.py has the bounds):
        a bubble from the IPv4 that `src` embeds but another port, for a peer that is new,
        untrusted, or trusted but no longer valid and being bubbled again (never a valid
        trusted peer, never a local one), within the window after our own bubble to it: the
        port is the peer's real mapping. The peer is trusted there, what waited goes out, and
        one bubble goes back to that port (the peer's own procedure waits for it)."""
        address = self.address
        if address is None or embedded_mapping(src)[0] != ipv4 or not is_global_ipv4(ipv4):
            return False
        peers = self._peers
        if row is not None and (
            peers.is_local(row)
            or (peers.is_trusted(row) and (peers.is_valid(row, now) or src not in self._probes))
        ):
            return False
        if not self._adoption.claim(src, ipv4, now):
            return False
        row = self._trust_at(row, src, ipv4, port, now)
        if row is None:
            return False
        self.out.send_udp(build_bubble(address, src), self._endpoints.sockaddr_of(ipv4, port))
        peers.touch_tx(row, now)
        return True

    # --- RFC 6081 port prediction (core/portpredict.py has the rules) ---------------------------

    def _start_prediction(self) -> None:
        """After qualification: behind a sequential NAT our transmit numbers new flows."""
        mapping = self._mapping
        servers = ((self._server, TEREDO_PORT), (self._server2, TEREDO_PORT))
        if mapping is not None and self._prediction.start(self.nat_behaviour, mapping, servers):
            self.out = FlowCounter(self._raw_out, self._prediction)
        else:
            self.out = self._raw_out

    def _predicted_try(self, pkt: TeredoPacket, now: float) -> None:
        """A bubble relayed by our server with a Random Port trailer: the peer's NAT will use
        that port toward us; bubbling it (and the next ones) opens our NAT to it."""
        address, src = self.address, pkt.src
        trailers = pkt.trailers
        if address is None or isinstance(trailers, DropReason) or src[:4] != self._prefix:
            return
        announced = random_port(trailers)
        ipv4, port = embedded_mapping(src)
        if announced is None or announced == port or src == address or not is_global_ipv4(ipv4):
            return
        peers = self._peers
        row = peers.lookup(src)
        if row is not None and peers.is_trusted(row) and peers.is_valid(row, now):
            return
        ports = tried_ports(announced)
        bubble = build_bubble(address, src)
        host = int_to_ipv4(ipv4)
        for p in ports:
            if self._origin_bubbles.allow((ipv4, p), now):
                self.out.send_udp(bubble, (host, p))
        self._predicted.tried(src, ipv4, ports, now)

    def _predicted_accept(
        self, pkt: TeredoPacket, row: int | None, src: bytes, source: tuple[int, int], now: float
    ) -> bool:
        """A packet from a port we tried after the peer's Random Port trailer, from the IPv4
        its address embeds, in time: the peer is trusted there (never a valid trusted one)."""
        ipv4, port = source
        if self.address is None or embedded_mapping(src)[0] != ipv4:
            return False
        peers = self._peers
        if row is not None and (
            peers.is_local(row) or (peers.is_trusted(row) and peers.is_valid(row, now))
        ):
            return False
        if not self._predicted.accept(src, ipv4, port, now):
            return False
        if self._trust_at(row, src, ipv4, port, now) is None:
            return False
        if not pkt.is_bubble:
            self.out.write_tun(pkt.ipv6)
        return True

    # --- RFC 6081 Hairpinning (core/hairpin.py has the rules) ----------------------------------

    def _hairpin_trailer(self, peer: bytes, now: float) -> bytes:
        """Our Alternate Address trailer (local IPv4 and port) for a peer whose address embeds
        our own mapped IPv4, i.e. behind our NAT; nothing for any other peer."""
        mapping, local = self._mapping, self._local
        if (
            mapping is None
            or local is None
            or local == mapping
            or is_global_ipv4(local[0])
            or embedded_mapping(peer)[0] != mapping[0]
        ):
            return b""
        self._hairpin.offered(peer, now)
        return AlternateAddressTrailer((local,)).pack()

    def _hairpin_try(self, pkt: TeredoPacket, now: float) -> None:
        """A packet relayed by our server with trailers: a peer behind our NAT that lists its
        local addresses gets a direct bubble at each of them (rate-limited as origin bubbles)."""
        address, mapping, src = self.address, self._mapping, pkt.src
        trailers = pkt.trailers
        if (
            address is None
            or mapping is None
            or isinstance(trailers, DropReason)
            or src[:4] != self._prefix
            or src == address
            or embedded_mapping(src)[0] != mapping[0]
        ):
            return
        found = tuple(a for a in alternates(trailers) if a != self._local)
        if not found:
            return
        bubble = build_bubble(address, src) + self._hairpin_trailer(src, now)
        for alt in found:
            if self._origin_bubbles.allow(alt, now):
                self.out.send_udp(bubble, self._endpoints.sockaddr_of(*alt))
        self._hairpin.tried(src, found, now)

    def _hairpin_accept(
        self,
        pkt: TeredoPacket,
        row: int | None,
        src: bytes,
        source: tuple[int, int],
        now: float,
    ) -> bool:
        """A packet from a peer behind our NAT at a local source: believed within the rules
        of core/hairpin.py; the peer becomes a local peer there (never a valid trusted one)."""
        address, mapping = self.address, self._mapping
        if (
            address is None
            or mapping is None
            or is_global_ipv4(source[0])
            or embedded_mapping(src)[0] != mapping[0]
        ):
            return False
        peers = self._peers
        if row is not None and peers.is_trusted(row) and peers.is_valid(row, now):
            return False
        trailers = pkt.trailers
        bubble = pkt.is_bubble
        listed = bubble and not isinstance(trailers, DropReason) and source in alternates(trailers)
        why = self._hairpin.accept(src, source, listed, now)
        if why is None:
            return False
        if row is None:
            row = peers.insert(src, now)  # trusted just below
            if row is None:
                return False
        peers.set_local(row, True)
        if why == "listed":
            # It answered our offer from its local address and waits for a bubble from ours.
            reply = build_bubble(address, src) + self._hairpin_trailer(src, now)
            self.out.send_udp(reply, self._endpoints.sockaddr_of(*source))
        self._trust(row, src, source[0], source[1], now)
        if not bubble:
            self.out.write_tun(pkt.ipv6)
        return True
