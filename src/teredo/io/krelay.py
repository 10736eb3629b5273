"""The relay's kernel data path (issue 8, docs/kernel.md "The relay's programs"): relay_encap on
the TUN's tcx egress, relay_decap on the IPv4 interface's tcx ingress (teredo_relay.bpf.c), and
the core's trusted peers mirrored into `relay_peers` by io/kmirror.py's PeerMapMirror (the
peer table's watch). What is relay-specific lives here: the configuration map, a host-specific
relay's own addresses, the counters and the one-line summary.
"""

from __future__ import annotations

import ipaddress
import struct
from typing import Final

from pyroute2 import IPRoute

from teredo.io.kmirror import (
    SHARED_COUNTERS,
    KernelPrograms,
    PeerMapMirror,
    path_summary,
    read_counters,
)
from teredo.io.libbpf import BPF_TCX_EGRESS, BPF_TCX_INGRESS

__all__ = ["COUNTERS", "OBJECT", "RelayKernelPath", "ipv4_interface"]

OBJECT: Final = "teredo_relay"
#: The programs' counter slots in order: enum teredo_counter (teredo_encap.h), then enum
#: relay_counter of teredo_relay.bpf.c.
COUNTERS: Final = (*SHARED_COUNTERS, "decap_checksum")
CFG_HOST_SPECIFIC: Final = 1
#: relay_peers holds at most this many trusted peers (an LRU hash: the active ones; see
#: teredo_relay.bpf.c and docs/peers.md "Kernel maps"), whatever the peer table's capacity.
MAP_ENTRIES: Final = 16384
#: ... and room for this many in a small table (an LRU hash keeps free entries per CPU).
MIN_MAP_ENTRIES: Final = 1024
_CFG = struct.Struct("=4s2sBBII4s")  # struct relay_config
_ZERO = struct.pack("=I", 0)


_IFF_LOOPBACK: Final = 0x8
_RT_TABLE_LOCAL: Final = 255
_RTN_LOCAL: Final = 2


def ipv4_interface(address: str) -> tuple[int, int]:
    """(ifindex, IPv4 as int) of the interface holding `address`, or for 0.0.0.0 the interface
    of the default IPv4 route and its first address. An address on the loopback (a relay's
    anycast IPv4, docs/scale.md) is sent from through the default route's interface: no
    datagram leaves through lo. So is an address held as a local route on lo (AnyIP, `ip route
    add local A/32 dev lo table local`: how a relay holds its anycast IPv4 for FRR, whose zebra
    would make an address on lo a connected route hiding the announcement, docs/scale.md).
    OSError when there is none."""
    with IPRoute() as ipr:
        if address and int(ipaddress.IPv4Address(address)):
            for msg in ipr.get_addr(family=2):
                if msg.get("IFA_LOCAL") == address or msg.get("IFA_ADDRESS") == address:
                    index = int(msg["index"])
                    if not ipr.get_links(index)[0]["flags"] & _IFF_LOOPBACK:
                        return index, int(ipaddress.IPv4Address(address))
                    return _default_oif(ipr), int(ipaddress.IPv4Address(address))
            if _held_on_loopback(ipr, ipaddress.IPv4Address(address)):
                return _default_oif(ipr), int(ipaddress.IPv4Address(address))
            raise OSError(f"no interface holds {address}")
        for route in ipr.get_routes(family=2):
            if route["dst_len"] == 0 and route.get("RTA_OIF"):
                oif = int(route.get("RTA_OIF"))
                for msg in ipr.get_addr(family=2, index=oif):
                    local = msg.get("IFA_LOCAL") or msg.get("IFA_ADDRESS")
                    if local:
                        return oif, int(ipaddress.IPv4Address(local))
        raise OSError("bound to 0.0.0.0 and no default IPv4 route names an interface")


def _held_on_loopback(ipr: IPRoute, address: ipaddress.IPv4Address) -> bool:
    """A local route of table local on a loopback device covers `address` (AnyIP)."""
    for route in ipr.get_routes(family=2, table=_RT_TABLE_LOCAL):
        if route["type"] != _RTN_LOCAL or not route.get("RTA_OIF") or not route.get("RTA_DST"):
            continue
        network = ipaddress.IPv4Network(
            (str(route.get("RTA_DST")), int(route["dst_len"])), strict=False
        )
        if address in network:
            links = ipr.get_links(int(route.get("RTA_OIF")))
            if links and links[0]["flags"] & _IFF_LOOPBACK:
                return True
    return False


def _default_oif(ipr: IPRoute) -> int:
    for route in ipr.get_routes(family=2):
        if route["dst_len"] == 0 and route.get("RTA_OIF"):
            return int(route.get("RTA_OIF"))
    raise OSError("bound to an address on the loopback and no default IPv4 route")


class RelayKernelPath:
    """The relay's two programs attached, their configuration written, and the mirror of the
    core's trusted peers (`mirror`: set it as the peer table's watch)."""

    def __init__(self, capacity: int) -> None:
        """Open, size and load the object: before the privilege drop, since loading needs
        CAP_BPF and the daemon keeps only CAP_NET_ADMIN (io/privileges.py). BpfError/OSError
        where the kernel cannot. Nothing is attached until `attach`."""
        self._programs = KernelPrograms(
            OBJECT,
            max_entries={"relay_peers": min(MAP_ENTRIES, max(capacity, MIN_MAP_ENTRIES))},
            configure=lambda obj: None,
            attach=(),
        )
        self.interfaces = (0, 0)
        self._own = self._programs.map("relay_own")
        self._counters = self._programs.map("relay_counters")
        self.mirror = PeerMapMirror(self._programs.map("relay_peers"))

    def attach(
        self,
        *,
        tun_ifindex: int,
        v4_ifindex: int,
        ipv4: int,
        port: int,
        prefix: bytes,
        host_specific: bool,
    ) -> None:
        """Write the configuration, then attach both programs (CAP_NET_ADMIN is enough): a
        program never sees an unconfigured map."""
        cfg = _CFG.pack(
            ipv4.to_bytes(4, "big"),
            port.to_bytes(2, "big"),
            0,  # the TUN has no L2 header
            14,  # Ethernet on the IPv4 side
            v4_ifindex,
            CFG_HOST_SPECIFIC if host_specific else 0,
            prefix,
        )
        self._programs.map("relay_cfg").update(_ZERO, cfg)
        self._programs.attach("relay_encap", tun_ifindex, BPF_TCX_EGRESS)
        self._programs.attach("relay_decap", v4_ifindex, BPF_TCX_INGRESS)
        self.interfaces = (tun_ifindex, v4_ifindex)

    def set_own_addresses(self, addresses: frozenset[bytes]) -> None:
        """A host-specific relay's served addresses (the core's own_addresses)."""
        for key in list(self._own.keys()):
            if key not in addresses:
                self._own.delete(key)
        for addr in addresses:
            self._own.update(addr, b"\x01")

    def counters(self) -> dict[str, int]:
        """The programs' counters summed over the CPUs, and the mirror's own."""
        return read_counters(self._counters, COUNTERS) | self.mirror.counters()

    def summary(self) -> str:
        c = self.counters()
        return path_summary(
            c,
            "",
            f"of the above encapsulated {c['encap']}",
            f"bad checksum {c['decap_checksum']}",
        )

    def close(self) -> None:
        """Detach the programs and free the maps (closing descriptors; nothing is pinned)."""
        self._programs.close()
