"""RFC 6081 Sequential Port-Symmetric NAT: port prediction through Random Port trailers.

A symmetric NAT that hands out external ports in sequence (qualification saw M2's port a small
step after M1's, core/natbehaviour.py) gives the next new flow the next port. A client behind
it can tell a peer, before the peer's NAT has seen anything from that port, which port its
packets will come from: a Random Port trailer (type 5, ../shared/spec/RFC6081-NOTES.md
"Port-Preserving and Sequential Port-Symmetric NAT", [likely]; the type value [unsure]) in the
bubbles it sends. A port-restricted peer then bubbles that port, which opens its own NAT for it,
and the two meet. Without it a port-restricted peer never sees the new port (the table in
docs/client.md: port-restricted <-> symmetric-sequential "no").

Our rules (core/client.py applies them):

- **predict** (`PortPrediction`, the sender behind the sequential NAT): after qualification the
  NAT's last port is M2's. Every destination our socket sends to for the first time is a new
  flow at the NAT, given the next port (last + step); the transmit wrapper `FlowCounter`
  numbers them in order, so the port the NAT gave (or will give) the flow toward a peer's
  mapping is known. Our bubbles to a Teredo peer, and our answer to its relayed bubble (a
  bubble through its server), carry that port in a Random Port trailer. Other hosts behind the
  NAT, or flows the NAT expired, shift the count: the receiver tries a few ports from the one
  announced (PREDICT_TRIES);
- **try** (`PredictedPorts`, the receiver): a bubble relayed by our server from a Teredo peer
  with a Random Port trailer naming another port than its mapping's makes us send a direct
  bubble to its IPv4 at that port and the next PREDICT_TRIES - 1 ones (rate-limited as origin
  bubbles), which opens our NAT to them;
- **accept**: a packet from the IPv4 the peer's address embeds at one of the ports we tried,
  within PREDICT_WINDOW of the try, is believed once: the peer is trusted at that port. A valid
  trusted peer is never moved. The server relayed the trailer from that very IPv4 (RFC 4380
  5.3: it relays only packets whose source embeds the sender's mapping), so nobody with another
  IPv4 can use this to redirect a peer, as with core/symmetric.py's rule.

Pure: no I/O, no clock; bounded tables.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

from teredo.core.addr import Address, ipv4_to_int
from teredo.core.natbehaviour import NatBehaviour, PortAllocation
from teredo.core.qualify import ClientTransmit
from teredo.core.wire import RandomPortTrailer, Trailer

# Ports a receiver bubbles from the one announced: the announced one, then the next ones
# (another flow of the NAT may have taken the predicted port) [unsure: no figure known].
PREDICT_TRIES = 3
# Seconds after our try during which a packet from a tried port is believed [unsure]; as
# core/symmetric.py's window (bubbles repeat every 2 s, RFC 4380 5.2.4).
PREDICT_WINDOW = 8.0
PREDICT_CAPACITY = 1024
# Destinations numbered at most: beyond, prediction stops (the NAT's count is lost anyway).
MAX_FLOWS = 4096


def random_port(trailers: tuple[Trailer, ...]) -> int | None:
    """The port of the first Random Port trailer, if any."""
    for t in trailers:
        if isinstance(t, RandomPortTrailer):
            return t.port
    return None


def tried_ports(announced: int) -> tuple[int, ...]:
    """The ports a receiver bubbles for an announced port (wrapping past 65535 to 1024)."""
    ports = []
    for i in range(PREDICT_TRIES):
        port = announced + i
        if port > 65535:
            port = 1024 + (port - 65536)
        ports.append(port)
    return tuple(ports)


class PortPrediction:
    """The sender's side: the flows of our socket in the order the NAT saw them."""

    __slots__ = ("_base", "_flows", "_known", "_step", "announced")

    def __init__(self) -> None:
        self._step = 0  # 0: not predicting
        self._base = 0
        self._flows: dict[tuple[int, int], int] = {}
        self._known: frozenset[tuple[int, int]] = frozenset()
        self.announced = 0  # Random Port trailers sent (status)

    @property
    def active(self) -> bool:
        return self._step != 0

    def start(
        self,
        behaviour: NatBehaviour | None,
        mapping: tuple[int, int],
        servers: tuple[tuple[int, int], ...],
    ) -> bool:
        """After qualification with `mapping` (M1): predict for a sequential NAT (True), else
        stop. `servers` are the flows qualification made (the two server addresses); the
        secondary's port, M1's + step, is the NAT's last."""
        self._flows = {}
        self._known = frozenset(servers)
        if (
            behaviour is None
            or behaviour.ports is not PortAllocation.SEQUENTIAL
            or not behaviour.step
        ):
            self._step = 0
            return False
        self._step = behaviour.step
        self._base = mapping[1] + behaviour.step
        return True

    def seen(self, destination: tuple[int, int]) -> None:
        """Our socket sent to `destination` (IPv4 int, port)."""
        if (
            self._step
            and destination not in self._flows
            and destination not in self._known
            and len(self._flows) < MAX_FLOWS
        ):
            self._flows[destination] = len(self._flows) + 1

    def predict(self, destination: tuple[int, int]) -> int | None:
        """The external port of our flow toward `destination` (numbered now if new)."""
        if not self._step:
            return None
        self.seen(destination)
        n = self._flows.get(destination)
        if n is None:
            return None
        port = self._base + self._step * n
        return port if 1024 <= port <= 65535 else None  # no system ports, no wrap guessed

    def trailer(self, destination: tuple[int, int]) -> bytes:
        """A Random Port trailer for our bubbles toward `destination`, or nothing."""
        port = self.predict(destination)
        if port is None:
            return b""
        self.announced += 1
        return RandomPortTrailer(port).pack()


class FlowCounter:
    """The client's transmit while predicting: tells PortPrediction of each destination."""

    __slots__ = ("_cache", "_inner", "_prediction")

    def __init__(self, inner: ClientTransmit, prediction: PortPrediction) -> None:
        self._inner = inner
        self._prediction = prediction
        self._cache: dict[str, int] = {}

    def send_udp(self, payload: bytes, destination: Address) -> None:
        host = destination[0]
        ipv4 = self._cache.get(host)
        if ipv4 is None:
            if len(self._cache) >= MAX_FLOWS:
                self._cache.clear()
            ipv4 = self._cache[host] = ipv4_to_int(host)
        self._prediction.seen((ipv4, destination[1]))
        self._inner.send_udp(payload, destination)

    def send_discovery(self, payload: bytes) -> None:
        self._inner.send_discovery(payload)  # multicast, TTL 1: never crosses the NAT

    def write_tun(self, packet: bytes) -> None:
        self._inner.write_tun(packet)


@dataclass(slots=True)
class _Try:
    ipv4: int
    ports: tuple[int, ...]
    at: float


class PredictedPorts:
    """The receiver's side: the ports we bubbled after a peer's Random Port trailer."""

    __slots__ = ("_capacity", "_records", "_window", "accepted")

    def __init__(self, capacity: int = PREDICT_CAPACITY, window: float = PREDICT_WINDOW) -> None:
        if capacity < 1 or window <= 0:
            raise ValueError("capacity and window must be positive")
        self._capacity = capacity
        self._window = window
        self._records: OrderedDict[bytes, _Try] = OrderedDict()
        self.accepted = 0  # peers reached at a predicted port (status)

    def __len__(self) -> int:
        return len(self._records)

    def tried(self, peer: bytes, ipv4: int, ports: tuple[int, ...], now: float) -> None:
        records = self._records
        records.pop(peer, None)
        while len(records) >= self._capacity:
            records.popitem(last=False)
        records[peer] = _Try(ipv4, ports, now)

    def accept(self, peer: bytes, ipv4: int, port: int, now: float) -> bool:
        """A packet from `peer` at (ipv4, port): one of our tries, in time? (used up)."""
        rec = self._records.get(peer)
        if rec is None or rec.ipv4 != ipv4 or port not in rec.ports:
            return False
        if not 0 <= now - rec.at <= self._window:
            return False
        del self._records[peer]
        self.accepted += 1
        return True

    def clear(self) -> None:
        self._records.clear()
