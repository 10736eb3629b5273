"""The server's kernel data path (issue 8, docs/kernel.md "Server"): the XDP program
`server_rs` of src/teredo/bpf/teredo_server.bpf.c answers a plain Router Solicitation with the
Router Advertisement that teredo.core.server sends, under the core's limits; everything else
goes up to the Python path unchanged.

The core stays the single source: `pack_config` writes into the program's `server_cfg` the
two addresses, the limits of core.server.ServerLimits (in the program's integer units), and
the RA the core builds for destination ::, which the program only completes per RS.
"""

from __future__ import annotations

import math
import struct
from typing import Final

from teredo.core.server import ServerParams, router_advertisement

__all__ = ["RA_TEMPLATE_LEN", "pack_config", "pack_limit"]

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
