"""The server's kernel data path (issue 8, docs/kernel.md "Server"): the XDP program
`server_rs` of src/teredo/bpf/teredo_server.bpf.c answers a plain Router Solicitation with the
Router Advertisement that teredo.core.server sends, under the core's limits; everything else
goes up to the Python path unchanged.

The core stays the single source: `pack_config` writes into the program's `server_cfg` the
two addresses, the limits of core.server.ServerLimits (in the program's integer units), and
the RA the core builds for destination ::, which the program only completes per RS.
"""

from __future__ import annotations

import ipaddress
import math
import struct
from pathlib import Path
from typing import Final

from pyroute2 import IPRoute

from teredo.core.server import ServerParams, router_advertisement
from teredo.io.kmirror import KernelPrograms, read_counters
from teredo.io.libbpf import BPF_XDP, XDP_FLAGS_DRV_MODE, XDP_FLAGS_SKB_MODE, BpfLink, BpfObject

__all__ = [
    "COUNTERS",
    "OBJECT",
    "RA_TEMPLATE_LEN",
    "ServerKernelPath",
    "pack_config",
    "pack_limit",
    "reset_buckets",
    "server_interfaces",
]

OBJECT: Final = "teredo_server"
#: enum of teredo_server.bpf.c's server_counters, in order.
COUNTERS: Final = ("ra", "rs_rate_limited", "passed")
_ZERO: Final = struct.pack("=I", 0)
_DEFAULT_TTL: Final = Path("/proc/sys/net/ipv4/ip_default_ttl")

# struct server_cfg: primary, secondary (network order), ttl, enabled, three struct limit
# {rate, burst, full_ns} (socket, ipv4, total), ra[96]; native order, no padding (184 bytes).
_CFG: Final = struct.Struct("=4s4sII" + "QQQ" * 3 + "96s")
RA_TEMPLATE_LEN: Final = 96
# One token is 10^12 units, so that a rate r per second refills r * 1000 units per ns.
_UNITS: Final = 10**12
_MAX_BURST: Final = 1 << 62  # idle * rate stays below 2^63 in the program


def pack_limit(rate: float, burst: float) -> tuple[int, int, int]:
    """One core.ratelimit bucket kind as the program's struct limit: units per ns, burst in
    units, and after how many ns idle the bucket is full whatever it held."""
    rate_units = max(1, round(rate * _UNITS / 1e9))
    burst_units = min(round(burst * _UNITS), _MAX_BURST)
    full_ns = math.ceil(burst_units / rate_units)
    return rate_units, burst_units, full_ns


def pack_config(params: ServerParams, ttl: int, *, enabled: bool = True) -> bytes:
    """The value of `server_cfg[0]` for `params`; `ttl` is the TTL of the host's own UDP
    datagrams (net.ipv4.ip_default_ttl), so the kernel's RAs look like the socket's."""
    ra = router_advertisement(params, bytes(16))
    if len(ra) != RA_TEMPLATE_LEN:
        raise ValueError(f"the core's RA is {len(ra)} bytes, the program expects 96")
    limits = params.limits
    return _CFG.pack(
        params.primary.to_bytes(4, "big"),
        params.secondary.to_bytes(4, "big"),
        ttl,
        1 if enabled else 0,
        *pack_limit(limits.rs_rate, limits.rs_burst),
        *pack_limit(limits.rs_ipv4_rate, limits.rs_ipv4_burst),
        *pack_limit(limits.rs_total_rate, limits.rs_total_rate),
        ra,
    )


def host_ttl() -> int:
    """The TTL the stack gives this network namespace's UDP datagrams (the Python path's)."""
    try:
        return int(_DEFAULT_TTL.read_text(encoding="ascii").strip())
    except (OSError, ValueError):
        return 64


_IFF_LOOPBACK: Final = 0x8


def _link(ipr: IPRoute, index: int) -> tuple[int, str, str, bool]:
    link = ipr.get_links(index)[0]
    info = link.get("IFLA_LINKINFO")
    kind = str(info.get("IFLA_INFO_KIND") or "") if info is not None else ""
    return index, str(link.get("IFLA_IFNAME")), kind, bool(link["flags"] & _IFF_LOOPBACK)


def server_interfaces(params: ServerParams) -> list[tuple[int, str, str]]:
    """(ifindex, name, link kind) of each interface the server's datagrams arrive on, each
    once: the interface holding a server address; for an address on the loopback or held by a
    local route only (anycast: docs/scale.md), the interfaces of the default IPv4 routes, where
    the router delivers it. OSError when there is none."""
    found: dict[int, tuple[int, str, str]] = {}
    with IPRoute() as ipr:
        addrs = ipr.get_addr(family=2)
        for ipv4 in (params.primary, params.secondary):
            dotted = str(ipaddress.IPv4Address(ipv4))
            index = next(
                (
                    int(m["index"])
                    for m in addrs
                    if dotted in (m.get("IFA_LOCAL"), m.get("IFA_ADDRESS"))
                ),
                None,
            )
            link = _link(ipr, index) if index is not None else None
            if link is not None and not link[3]:
                found.setdefault(link[0], link[:3])
                continue
            routed = [
                int(r.get("RTA_OIF"))
                for r in ipr.get_routes(family=2)
                if r["dst_len"] == 0 and r.get("RTA_OIF")
            ]
            if not routed:
                raise OSError(f"{dotted} is on no interface but the loopback and no default route")
            for oif in routed:
                out = _link(ipr, oif)
                if not out[3]:
                    found.setdefault(out[0], out[:3])
    if not found:
        raise OSError("no interface but the loopback receives the server's datagrams")
    return list(found.values())


def reset_buckets(obj: BpfObject) -> None:
    """Every RS bucket full again: the per-socket and per-IPv4 entries deleted (a bucket never
    seen holds a full burst), the overall one stamped 0 (full at its next RS)."""
    for name in ("rs_socket", "rs_ipv4"):
        buckets = obj.map(name)
        for key in list(buckets.keys()):
            buckets.delete(key)
    obj.map("rs_total").update(_ZERO, bytes(16))


def xdp_mode(kind: str) -> int:
    """Native XDP, except on a veth: there a frame sent back with XDP_TX reaches the peer only
    if the peer runs NAPI (GRO on, or an XDP program of its own), which this host cannot see
    or set from here; in generic (SKB) mode it goes out as any transmitted skb."""
    return XDP_FLAGS_SKB_MODE if kind == "veth" else XDP_FLAGS_DRV_MODE


class ServerKernelPath:
    """server_rs attached to the interfaces of the server's addresses, configured from the core
    (`pack_config`); `close` detaches it (closing descriptors; nothing is pinned)."""

    def __init__(self, params: ServerParams) -> None:
        self.interfaces = server_interfaces(params)
        self.ttl = host_ttl()
        cfg = pack_config(params, self.ttl)
        slots = params.limits.bucket_slots

        def configure(obj: BpfObject) -> None:
            obj.map("server_cfg").update(_ZERO, cfg)

        self._programs = KernelPrograms(
            OBJECT,
            max_entries={"rs_socket": slots, "rs_ipv4": slots},
            configure=configure,
            attach=(),
        )
        # Attached here rather than by KernelPrograms: an XDP link carries its mode.
        self._links: list[BpfLink] = []
        try:
            program = self._programs.obj.program("server_rs")
            for index, _, kind in self.interfaces:
                self._links.append(program.attach(index, BPF_XDP, xdp_mode(kind)))
        except BaseException:
            self.close()
            raise
        self._counters = self._programs.map("server_counters")

    def configure(self, params: ServerParams) -> None:
        """A reload: the new limits (and MTU, prefix) at once; the buckets start afresh, as
        the Python path's do (a new ServerMachine)."""
        self._programs.map("server_cfg").update(_ZERO, pack_config(params, self.ttl))
        reset_buckets(self._programs.obj)

    def counters(self) -> dict[str, int]:
        return read_counters(self._counters, COUNTERS)

    def describe(self) -> str:
        return ", ".join(
            f"{name} ({'generic' if xdp_mode(kind) == XDP_FLAGS_SKB_MODE else 'native'} XDP)"
            for _, name, kind in self.interfaces
        )

    def summary(self) -> str:
        c = self.counters()
        return (
            f"data path: kernel on {self.describe()}: RAs {c['ra']}, rate-limited RS dropped "
            f"{c['rs_rate_limited']}, passed up {c['passed']}"
        )

    def close(self) -> None:
        while self._links:
            self._links.pop().destroy()
        self._programs.close()
