"""A simulated network for fast, deterministic protocol tests of the Teredo client.

Everything runs on a fake clock driven by an event heap: datagrams take `latency` seconds, may
be lost (seeded RNG), and every machine is woken exactly at its `next_deadline()`. Nodes:

- `ServerNode`: the real `ServerMachine` (core/server.py) on two public IPv4 addresses;
- `RelayNode`: a small RFC 4380 section 5.4 relay model (indirect bubble through the client's
  server from a link-local source, as Miredo's relays do; trust on a matching Teredo source);
- `NativeHost`: an IPv6 host that answers Echo Requests and records everything else;
- `Nat`: RFC 4787 behaviours (full cone, address-restricted, port-restricted, symmetric),
  endpoint mappings with rebinding, no hairpinning; hosts behind one NAT share a LAN on which
  discovery bubbles (224.0.0.253) are delivered to every other client;
- `ClientNode`: the `ClientMachine` under test, behind a NAT or on a public address.

No socket, no thread, no sleep: a scenario of minutes of protocol time runs in milliseconds.
"""

from __future__ import annotations

import enum
import heapq
import ipaddress
import random
from collections.abc import Callable
from dataclasses import dataclass, field

from teredo.core.addr import (
    TEREDO_PORT,
    TEREDO_PREFIX,
    embedded_mapping,
    embedded_server,
    int_to_ipv4,
    ipv4_to_int,
)
from teredo.core.client import ClientEvent, ClientMachine, ClientParams, ResolveServer
from teredo.core.counters import DropReason
from teredo.core.ipv6 import build_bubble, build_echo, parse_echo
from teredo.core.server import ServerMachine, ServerParams
from teredo.core.wire import parse_payload

Address = tuple[str, int]

SERVER = "198.51.100.10"
SERVER2 = "198.51.100.11"
RELAY = ("198.51.100.20", 3545)
NATIVE = ipaddress.IPv6Address("2001:db8:1::100").packed
RELAY_LINK_LOCAL = ipaddress.IPv6Address("fe80::8000:5445:5245:444f").packed


class Sim:
    """The fake clock and the event heap."""

    def __init__(self, *, seed: int = 1, loss: float = 0.0, latency: float = 0.01) -> None:
        self.now = 0.0
        self.rng = random.Random(seed)  # noqa: S311 - a reproducible simulation
        self.loss = loss
        self.latency = latency
        self._heap: list[tuple[float, int, Callable[[], None]]] = []
        self._seq = 0
        self.hosts: dict[str, Callable[[bytes, Address, Address], None]] = {}
        self.native: dict[bytes, Callable[[bytes], None]] = {}
        self.native_teredo: Callable[[bytes], None] | None = None
        self.sent = 0
        self.lost = 0
        self.log: list[tuple[float, Address, Address, bytes]] = []

    def at(self, when: float, action: Callable[[], None]) -> None:
        self._seq += 1
        heapq.heappush(self._heap, (max(when, self.now), self._seq, action))

    def run_until(self, end: float, *, max_steps: int = 1_000_000) -> None:
        steps = 0
        while self._heap and self._heap[0][0] <= end:
            steps += 1
            assert steps <= max_steps, "the simulation does not settle"
            when, _seq, action = heapq.heappop(self._heap)
            self.now = when
            action()
        self.now = max(self.now, end)

    def run_for(self, seconds: float) -> None:
        self.run_until(self.now + seconds)

    def udp(self, source: Address, destination: Address, payload: bytes) -> None:
        """A datagram on the public IPv4 network (after any NAT)."""
        self.sent += 1
        self.log.append((self.now, source, destination, payload))
        if self.loss and self.rng.random() < self.loss:
            self.lost += 1
            return
        deliver = self.hosts.get(destination[0])
        if deliver is not None:
            self.at(self.now + self.latency, lambda: deliver(payload, source, destination))

    def ipv6(self, packet: bytes) -> None:
        """A native IPv6 packet: to a native host, or to the relay for 2001::/32."""
        dst = packet[24:40]
        if dst[:4] == TEREDO_PREFIX:
            relay = self.native_teredo
            if relay is not None:
                self.at(self.now + self.latency, lambda: relay(packet))
            return
        host = self.native.get(dst)
        if host is not None:
            self.at(self.now + self.latency, lambda: host(packet))


class ServerNode:
    """The real ServerMachine on its two addresses."""

    def __init__(self, sim: Sim, primary: str = SERVER, secondary: str = SERVER2) -> None:
        self.sim = sim
        self.primary = primary
        self.secondary = secondary
        self.up = True
        self.machine = ServerMachine(
            ServerParams(ipv4_to_int(primary), ipv4_to_int(secondary)), self
        )
        sim.hosts[primary] = self._receive
        sim.hosts[secondary] = self._receive

    def _receive(self, payload: bytes, source: Address, destination: Address) -> None:
        if self.up and destination[1] == TEREDO_PORT:
            on_secondary = destination[0] == self.secondary
            self.machine.receive(payload, source, on_secondary, self.sim.now)

    def send_udp(self, payload: bytes, destination: Address, from_secondary: bool) -> None:
        host = self.secondary if from_secondary else self.primary
        self.sim.udp((host, TEREDO_PORT), destination, payload)

    def send_ipv6(self, packet: bytes) -> None:
        self.sim.ipv6(packet)


@dataclass
class _RelayPeer:
    mapping: Address
    trusted: bool = False
    queue: list[bytes] = field(default_factory=list)
    bubbles: int = 0


class RelayNode:
    """A relay (RFC 4380 section 5.4): native side for 2001::/32, UDP side on RELAY."""

    def __init__(self, sim: Sim, address: Address = RELAY) -> None:
        self.sim = sim
        self.address = address
        self.peers: dict[bytes, _RelayPeer] = {}
        self.forwarded_native = 0
        sim.hosts[address[0]] = self._receive_udp
        sim.native_teredo = self._receive_native

    def _receive_native(self, packet: bytes) -> None:
        dst = packet[24:40]
        peer = self.peers.get(dst)
        if peer is not None and peer.trusted:
            self.sim.udp(self.address, peer.mapping, packet)
            return
        if peer is None:
            peer = _RelayPeer((int_to_ipv4(embedded_mapping(dst)[0]), embedded_mapping(dst)[1]))
            self.peers[dst] = peer
        peer.queue.append(packet)
        self._bubble(dst, peer)

    def _bubble(self, dst: bytes, peer: _RelayPeer) -> None:
        # Section 5.4.1 case 3: an indirect bubble through the client's server, repeated
        # every 2 s, at most 3 repeats; Miredo's relays send it from a link-local source.
        if peer.trusted or peer.bubbles >= 4:
            return
        peer.bubbles += 1
        server = (int_to_ipv4(embedded_server(dst)), TEREDO_PORT)
        self.sim.udp(self.address, server, build_bubble(RELAY_LINK_LOCAL, dst))
        self.sim.at(self.sim.now + 2.0, lambda: self._bubble(dst, peer))

    def _receive_udp(self, payload: bytes, source: Address, destination: Address) -> None:
        if destination != self.address:
            return
        pkt = parse_payload(payload)
        if isinstance(pkt, DropReason):
            return
        src = pkt.src
        # Section 5.4.2: a Teredo source sending from its own mapping.
        if src[:4] != TEREDO_PREFIX:
            return
        ip, port = embedded_mapping(src)
        if (int_to_ipv4(ip), port) != source:
            # Miredo's relay and ours (core/relay.py, "remapped") accept the answer to their
            # bubble from another port of the same IPv4: a client behind a symmetric NAT.
            # Once re-mapped, that port is the peer's mapping.
            known = self.peers.get(src)
            if int_to_ipv4(ip) != source[0] or known is None:
                return
            if known.trusted and known.mapping != source:
                return
            if not known.trusted and not known.bubbles:
                return
        peer = self.peers.setdefault(src, _RelayPeer(source))
        peer.mapping = source
        peer.trusted = True
        for queued in peer.queue:
            self.sim.udp(self.address, source, queued)
        peer.queue.clear()
        if pkt.is_bubble:
            return
        self.forwarded_native += 1
        self.sim.ipv6(pkt.ipv6)


class NativeHost:
    """An IPv6 host on the native side: answers pings, records the rest."""

    def __init__(self, sim: Sim, address: bytes = NATIVE) -> None:
        self.sim = sim
        self.address = address
        self.inbox: list[bytes] = []
        sim.native[address] = self._receive

    def _receive(self, packet: bytes) -> None:
        echo = parse_echo(packet)
        if not isinstance(echo, DropReason) and not echo.reply:
            reply = build_echo(
                self.address, echo.src, echo.identifier, echo.sequence, echo.data, reply=True
            )
            self.sim.ipv6(reply)
            return
        self.inbox.append(packet)

    def send(self, packet: bytes) -> None:
        self.sim.ipv6(packet)


class NatKind(enum.Enum):
    FULL_CONE = "full-cone"  # endpoint-independent mapping and filtering
    RESTRICTED = "restricted"  # EI mapping, address-dependent filtering
    PORT_RESTRICTED = "port-restricted"  # EI mapping, address-and-port-dependent filtering
    SYMMETRIC = "symmetric"  # a new mapping per destination


class Nat:
    """A NAT with one public IPv4; inside hosts are 192.168.x.y on one LAN."""

    def __init__(self, sim: Sim, public: str, kind: NatKind, *, first_port: int = 20000) -> None:
        self.sim = sim
        self.public = public
        self.kind = kind
        self._next_port = first_port
        self._out: dict[tuple[Address, Address | None], int] = {}
        self._in: dict[int, Address] = {}
        self._allowed: dict[int, set[Address] | set[str]] = {}
        self.lan: dict[Address, ClientNode] = {}
        sim.hosts[public] = self._receive

    def _key(self, inside: Address, destination: Address) -> tuple[Address, Address | None]:
        return (inside, destination if self.kind is NatKind.SYMMETRIC else None)

    def outbound(self, inside: Address, destination: Address, payload: bytes) -> None:
        if destination[0] == self.public:
            return  # no hairpinning (RFC 4787 REQ-9 is often not met)
        neighbour = self.lan.get(destination)
        if neighbour is not None:  # on the LAN: straight there, no translation
            self.sim.sent += 1
            self.sim.log.append((self.sim.now, inside, destination, payload))
            self.sim.at(self.sim.now + self.sim.latency, lambda: neighbour.deliver(payload, inside))
            return
        key = self._key(inside, destination)
        port = self._out.get(key)
        if port is None:
            port = self._next_port
            self._next_port += 1
            self._out[key] = port
            self._in[port] = inside
            self._allowed[port] = set()
        allowed = self._allowed[port]
        if self.kind is NatKind.RESTRICTED:
            allowed.add(destination[0])  # type: ignore[arg-type]
        else:
            allowed.add(destination)  # type: ignore[arg-type]
        self.sim.udp((self.public, port), destination, payload)

    def _receive(self, payload: bytes, source: Address, destination: Address) -> None:
        inside = self._in.get(destination[1])
        if inside is None:
            return
        allowed = self._allowed[destination[1]]
        if self.kind is NatKind.RESTRICTED:
            if source[0] not in allowed:
                return
        elif self.kind is not NatKind.FULL_CONE and source not in allowed:
            return
        node = self.lan.get(inside)
        if node is not None:
            node.deliver(payload, source)

    def rebind(self) -> None:
        """Forget every mapping (a NAT reboot or timeout); new ones get new ports."""
        self._out.clear()
        self._in.clear()
        self._allowed.clear()
        self._next_port += 1000

    def multicast(self, sender: Address, payload: bytes) -> None:
        """A discovery bubble on the LAN: every other client hears it (TTL 1)."""
        for inside, node in self.lan.items():
            if inside != sender:
                self.sim.at(
                    self.sim.now + self.sim.latency,
                    lambda node=node: node.deliver_discovery(payload, sender),  # type: ignore[misc]
                )


class ClientNode:
    """The client machine under test, behind `nat` (or on the public address `inside`)."""

    def __init__(
        self,
        sim: Sim,
        inside: Address,
        *,
        nat: Nat | None = None,
        server: str = SERVER,
        local_discovery: bool = True,
        seed: int = 7,
        peer_capacity: int = 256,
        refresh_interval: float = 30.0,
        refuse_symmetric: bool = False,
    ) -> None:
        self.sim = sim
        self.inside = inside
        self.nat = nat
        self.rng = random.Random(seed)  # noqa: S311 - a reproducible simulation
        self.events: list[tuple[float, ClientEvent]] = []
        self.inbox: list[bytes] = []
        self.sent_udp: list[tuple[float, bytes, Address]] = []
        self._armed: float | None = None
        params = ClientParams(
            ipv4_to_int(server),
            local_address=(ipv4_to_int(inside[0]), inside[1]),
            peer_capacity=peer_capacity,
            local_discovery=local_discovery,
            refresh_interval=refresh_interval,
            refuse_symmetric=refuse_symmetric,
        )
        self.machine = ClientMachine(params, self, self.rng.randbytes)
        if nat is not None:
            nat.lan[inside] = self
        else:
            sim.hosts[inside[0]] = lambda payload, source, _dst: self.deliver(payload, source)

    # ClientTransmit
    def send_udp(self, payload: bytes, destination: Address) -> None:
        self.sent_udp.append((self.sim.now, payload, destination))
        if self.nat is not None:
            self.nat.outbound(self.inside, destination, payload)
        else:
            self.sim.udp(self.inside, destination, payload)

    def send_discovery(self, payload: bytes) -> None:
        if self.nat is not None:
            self.nat.multicast(self.inside, payload)

    def write_tun(self, packet: bytes) -> None:
        self.inbox.append(packet)

    # driving
    def start(self) -> None:
        self.machine.start(self.sim.now)
        self._settle()

    def deliver(self, payload: bytes, source: Address) -> None:
        self.machine.receive_udp(payload, source, self.sim.now)
        self._settle()

    def deliver_discovery(self, payload: bytes, source: Address) -> None:
        self.machine.receive_discovery(payload, source, self.sim.now)
        self._settle()

    def send(self, packet: bytes) -> None:
        """A packet from the local IPv6 stack."""
        self.machine.receive_tun(packet, self.sim.now)
        self._settle()

    def _settle(self) -> None:
        machine = self.machine
        while (event := machine.next_event()) is not None:
            self.events.append((self.sim.now, event))
            if isinstance(event, ResolveServer):
                # The daemon re-resolves the name; here it resolves to the same addresses.
                machine.set_server(machine.params.server, machine.params.server2, self.sim.now)
        deadline = machine.next_deadline()
        if deadline is not None and deadline != self._armed:
            when = max(deadline, self.sim.now + 1e-6)
            self._armed = when
            self.sim.at(when, lambda: self._fire(when))

    def _fire(self, when: float) -> None:
        if self._armed != when:
            return
        self._armed = None
        self.machine.handle_timer(self.sim.now)
        self._settle()

    @property
    def address(self) -> bytes | None:
        return self.machine.address

    def event_types(self) -> list[str]:
        return [type(e).__name__ for _t, e in self.events]
