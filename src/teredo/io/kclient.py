"""The client's kernel data path (issue 8, docs/kernel.md "The client's programs"): client_encap
on the TUN's tcx egress, client_decap on the IPv4 interface's tcx ingress (teredo_client.bpf.c),
and the core's trusted peers (Teredo peers at their mapping, native destinations at their relay)
mirrored into `client_peers` by io/kmirror.py's PeerMapMirror, the peer table's watch.

What is client-specific lives here, in the order a daemon meets it:

- `load()`: the object opened and loaded *before* the privilege drop (loading needs CAP_BPF;
  the daemon keeps only CAP_NET_ADMIN, which is enough to attach and to use the maps later).
- `attach_tun(ifindex)`: client_encap on the TUN, once it exists (and again when the interface
  is made anew: its link went with the old one).
- `qualified(address, local)`: the configuration map written for our Teredo address and the
  socket's local IPv4:port, client_decap (re)attached on the interface holding that IPv4 (the
  way to the server: it may change with the network). Until then, and after `offline()`, the
  configuration says "not qualified" and both programs pass everything up.

Links are held by this process's descriptors only (never pinned): however the daemon ends, the
kernel detaches the programs and frees the maps.
"""

from __future__ import annotations

import ctypes
import fcntl
import logging
import socket
import struct
from typing import Final

from teredo.io.kmirror import (
    SHARED_COUNTERS,
    KernelPrograms,
    PeerMapMirror,
    path_summary,
    read_counters,
)
from teredo.io.libbpf import BPF_TCX_EGRESS, BPF_TCX_INGRESS, BpfLink, BpfObject

__all__ = ["COUNTERS", "OBJECT", "ClientKernelPath"]

log = logging.getLogger("teredo.client")

OBJECT: Final = "teredo_client"
#: The programs' counter slots in order: enum teredo_counter (teredo_encap.h), then enum
#: client_counter of teredo_client.bpf.c.
COUNTERS: Final = (*SHARED_COUNTERS, "decap_stale", "encap_gso")
#: The core's peer capacity (ClientParams.peer_capacity's default).
CAPACITY: Final = 65536
_CFG = struct.Struct("=4s2sBBII16sI")  # struct client_config
_ZERO = struct.pack("=I", 0)
_OFF = _CFG.pack(bytes(4), bytes(2), 0, 14, 0, 0, bytes(16), 0)
CFG_DEVICE_CSUM: Final = 1
# SIOCETHTOOL with ETHTOOL_GTXCSUM (linux/ethtool.h): is TX checksum offload on?
_SIOCETHTOOL = 0x8946
_ETHTOOL_GTXCSUM = 0x16
# SIOCGIFADDR (linux/sockios.h) on a struct ifreq: an interface's primary IPv4 address.
_SIOCGIFADDR = 0x8915
_IFREQ = struct.Struct("16s16x")


def interface_of(ipv4: int) -> int | None:
    """The index of the interface whose primary IPv4 address is `ipv4` (ioctls, not pyroute2:
    this runs in the asyncio thread, where pyroute2's own loop cannot run)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        for index, name in socket.if_nameindex():
            try:
                got = fcntl.ioctl(probe, _SIOCGIFADDR, _IFREQ.pack(name.encode()))
            except OSError:
                continue  # no IPv4 address, or gone meanwhile
            if int.from_bytes(got[20:24], "big") == ipv4:
                return index
    return None


def tx_checksum_offload(name: str) -> bool | None:
    """Whether interface `name` leaves checksums to its device (TX checksum offload on); None
    when the interface does not say (then it is taken as on: the safe answer)."""
    value = ctypes.create_string_buffer(struct.pack("=II", _ETHTOOL_GTXCSUM, 0), 8)
    request = struct.pack("16sP16x", name.encode(), ctypes.addressof(value))  # struct ifreq
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            fcntl.ioctl(probe, _SIOCETHTOOL, request)
        except OSError:
            return None
    return bool(struct.unpack("=II", value.raw)[1])  # struct ethtool_value


class ClientKernelPath:
    """The client's two programs, their configuration and the mirror of the core's trusted
    peers (`mirror`: the peer table's watch). Every method runs under the daemon's lock or in
    its asyncio thread before the data thread starts."""

    def __init__(self, capacity: int = CAPACITY) -> None:
        def configure(obj: BpfObject) -> None:
            obj.map("client_cfg").update(_ZERO, _OFF)

        self._programs = KernelPrograms(
            OBJECT, max_entries={"client_peers": capacity}, configure=configure, attach=()
        )
        self._cfg = self._programs.map("client_cfg")
        self._counters = self._programs.map("client_counters")
        self.mirror = PeerMapMirror(self._programs.map("client_peers"))
        self._encap: BpfLink | None = None
        self._decap: BpfLink | None = None
        self.tun_ifindex = 0
        self.v4_ifindex = 0
        #: What the programs serve now: (Teredo address, IPv4, port, flags), None when off.
        self.serving: tuple[bytes, int, int, int] | None = None
        self._why_off: str | None = None

    @classmethod
    def load(cls) -> ClientKernelPath:
        """Open and load the object (before the privilege drop); BpfError/OSError if not here."""
        return cls()

    # --- attachment -------------------------------------------------------------------------

    def attach_tun(self, ifindex: int) -> None:
        """client_encap on the TUN's egress (a TUN made again replaces the old link)."""
        self.offline()
        if self._encap is not None:
            self._encap.destroy()
            self._encap = None
        self._encap = self._programs.obj.program("client_encap").attach(ifindex, BPF_TCX_EGRESS)
        self.tun_ifindex = ifindex

    def _attach_decap(self, ifindex: int) -> None:
        if self._decap is not None and self.v4_ifindex == ifindex:
            return
        if self._decap is not None:
            self._decap.destroy()
            self._decap = None
            self.v4_ifindex = 0
        self._decap = self._programs.obj.program("client_decap").attach(ifindex, BPF_TCX_INGRESS)
        self.v4_ifindex = ifindex

    # --- configuration ----------------------------------------------------------------------

    def qualified(self, address: bytes, local: tuple[int, int] | None) -> None:
        """Serve `address` from the socket's local IPv4:port `local` (towards the server): the
        kernel forwards for the trusted peers the core has from now on. Where that cannot be
        (no route, no interface holds the IPv4, the attach fails) the programs stay off: the
        Python path carries everything (said once per reason)."""
        if local is None or not local[0] or self._encap is None:
            self._off("no local IPv4 towards the server")
            return
        ipv4, port = local
        ifindex = interface_of(ipv4)
        if ifindex is None:
            shown = socket.inet_ntoa(ipv4.to_bytes(4, "big"))
            self._off(f"no interface has {shown} as its primary address")
            return
        try:
            self._attach_decap(ifindex)
        except OSError as exc:
            self._off(f"cannot attach to the IPv4 interface: {exc}")
            return
        # Local TCP (checksum left to the device) in the kernel only where the output interface
        # completes checksums in software before they leave (teredo_client.bpf.c).
        offload = tx_checksum_offload(socket.if_indextoname(ifindex))
        flags = CFG_DEVICE_CSUM if offload is False else 0
        if self.serving == (address, ipv4, port, flags):
            return
        cfg = _CFG.pack(
            ipv4.to_bytes(4, "big"),
            port.to_bytes(2, "big"),
            0,  # the TUN has no L2 header
            14,  # Ethernet on the IPv4 side
            ifindex,
            self.tun_ifindex,
            address,
            flags,
        )
        self._cfg.update(_ZERO, cfg)
        self.serving = (address, ipv4, port, flags)
        if self._why_off is not None:
            log.info("data path: kernel again (interface %d)", ifindex)
        self._why_off = None

    def offline(self) -> None:
        """Not qualified (or about to change): both programs pass everything up."""
        if self.serving is not None:
            self._cfg.update(_ZERO, _OFF)
            self.serving = None

    def _off(self, why: str) -> None:
        self.offline()
        if why != self._why_off:
            log.warning("data path: kernel programs off, Python path for all (%s)", why)
            self._why_off = why

    # --- reporting --------------------------------------------------------------------------

    def counters(self) -> dict[str, int]:
        """The programs' counters summed over the CPUs, and the mirror's own."""
        out = read_counters(self._counters, COUNTERS) | self.mirror.counters()
        out["serving"] = int(self.serving is not None)
        out["device_checksum"] = int(self.serving is not None and bool(self.serving[3]))
        return out

    def summary(self) -> str:
        c = self.counters()
        state = "on" if c["serving"] else f"off ({self._why_off or 'not qualified'})"
        return path_summary(
            c,
            f" {state}",
            f"encapsulated {c['encap']} (GSO {c['encap_gso']})",
            f"stale {c['decap_stale']}",
        )

    def close(self) -> None:
        """Detach the programs and free the maps (closing descriptors; nothing is pinned)."""
        for link in (self._decap, self._encap):
            if link is not None:
                link.destroy()
        self._decap = self._encap = None
        self._programs.close()
