"""NAT kinds of the lab and the nftables rulesets that build them.

The kinds are the four classic ones RFC 4380 section 2 (terminology) and section 5.2.1 (cone flag,
qualification) reason about, plus "none" for a client with a global address, plus the symmetric
NATs RFC 6081 tells apart (its Port-Preserving and Sequential Port-Symmetric extensions): one that
keeps the inside port where it can, and one that hands out public ports in sequence. Each ruleset
is loaded into the NAT's own namespace, so table names cannot clash with anything else.
"""

from __future__ import annotations

import enum


class NatKind(enum.Enum):
    """How a client reaches the IPv4 "internet" of the lab."""

    NONE = "none"
    FULL_CONE = "full-cone"
    ADDRESS_RESTRICTED = "address-restricted"
    PORT_RESTRICTED = "port-restricted"
    SYMMETRIC = "symmetric"  # a new random port per destination
    SYMMETRIC_PORT_PRESERVING = "symmetric-port-preserving"  # the inside port where it is free
    SYMMETRIC_SEQUENTIAL = "symmetric-sequential"  # a new port per destination, the next one
    # Not a NAT of its own: one more client on the local network of the site before it, behind
    # the same NAT, which does not hairpin (RFC 6081 Hairpinning; lab.md "NAT kinds").
    SHARED = "shared"
    SYMMETRIC_UPNP = "symmetric-upnp"  # port-preserving symmetric, with a UPnP IGD (miniupnpd)

    @classmethod
    def parse(cls, text: str) -> NatKind:
        """Accept the value ("port-restricted") or the member name ("PORT_RESTRICTED")."""
        key = text.strip().lower().replace("_", "-")
        aliases = {
            "cone": "full-cone",
            "restricted": "address-restricted",
            "port": "port-restricted",
            "symmetric-random": "symmetric",
            "port-preserving": "symmetric-port-preserving",
            "sequential": "symmetric-sequential",
            "upnp": "symmetric-upnp",
        }
        key = aliases.get(key, key)
        for kind in cls:
            if kind.value == key:
                return kind
        choices = ", ".join(k.value for k in cls)
        raise ValueError(f"unknown NAT kind {text!r} (choose from {choices})")


# The inbound filter runs at priority -150: after conntrack (-200) has classified the packet as new
# or established, and before destination NAT (-100) would create a mapping for it. Dropping new
# inbound flows there matters: a packet that got as far as the NAT's own input path would leave a
# conntrack entry behind that changes how later outbound flows are mapped.
_FILTER_PRIO = -150

# Learning chains run after source NAT (priority 100) so that they see the translated source port.
_LEARN_PRIO = 200

# Mappings are forgotten after this long without outbound traffic: longer than any lab run, shorter
# than forever, so a set never grows without bound (each set also has a size limit).
_MAP_TIMEOUT = "10m"
_MAP_SIZE = 4096

# The sequential NAT's public ports: each new UDP flow takes the next one of this range, then it
# starts again (nft `numgen inc`, evaluated once per flow: the nat chain sees only a flow's first
# packet). Through a map, because numgen yields a host-order integer and a port is big-endian.
SEQUENTIAL_FIRST_PORT = 20000
SEQUENTIAL_PORTS = 256

# The port-preserving symmetric NAT's conntrack zones (one per remote address, by hash).
_ZONES = 60000
_ZONE_SEED = "0x7e4ed0"


def nft_ruleset(kind: NatKind, outside: str) -> str:
    """The nftables ruleset (for `nft -f -`) of a NAT whose public interface is `outside`."""
    if kind in (NatKind.NONE, NatKind.SHARED):
        return ""
    table = "table ip tlab_nat"
    if kind in (
        NatKind.PORT_RESTRICTED,
        NatKind.SYMMETRIC,
        NatKind.SYMMETRIC_PORT_PRESERVING,
        NatKind.SYMMETRIC_SEQUENTIAL,
    ):
        # Linux masquerade keeps the inside source port when it is free toward that
        # destination, so one client socket sees the same public port everywhere: a
        # port-restricted NAT to RFC 4380. It is a mapping per destination all the same: the
        # port-preserving symmetric kind is that very rule, told apart only when two inside
        # sockets share a port (tests/system/test_nat_kinds.py shows it). "fully-random"
        # picks a new random port for every new flow: a symmetric NAT, which RFC 4380
        # cannot traverse (section 5.2.1, RFC 6081 section 1). The sequential kind gives every
        # new UDP flow the next port of its range (other protocols: plain masquerade).
        if kind is NatKind.SYMMETRIC:
            snat = f'oifname "{outside}" masquerade fully-random'
        elif kind is NatKind.SYMMETRIC_SEQUENTIAL:
            ports = ", ".join(f"{n} : {SEQUENTIAL_FIRST_PORT + n}" for n in range(SEQUENTIAL_PORTS))
            snat = (
                f'oifname "{outside}" meta l4proto udp masquerade to '
                f":numgen inc mod {SEQUENTIAL_PORTS} map {{ {ports} }}\n"
                f'    oifname "{outside}" masquerade'
            )
        else:
            snat = f'oifname "{outside}" masquerade'
        zones = ""
        if kind is NatKind.SYMMETRIC_PORT_PRESERVING:
            # A conntrack zone per remote address (a hash of it, both ways the same): Linux
            # reuses a socket's existing public port for a new flow of the same zone only, so
            # the port is kept where it is free toward that address and chosen afresh where
            # another inside socket holds it, independently per destination.
            zone = f"mod {_ZONES} seed {_ZONE_SEED} offset 1"
            zones = f"""
  chain t_zone {{
    type filter hook prerouting priority raw; policy accept;
    iifname != "{outside}" ct zone set jhash ip daddr {zone}
    iifname "{outside}" ct zone set jhash ip saddr {zone}
  }}"""
        return f"""{table} {{{zones}
  chain t_snat {{
    type nat hook postrouting priority srcnat; policy accept;
    {snat}
  }}
  chain t_admit {{
    type filter hook prerouting priority {_FILTER_PRIO}; policy accept;
    iifname "{outside}" ct state new drop
  }}
}}
"""
    if kind is NatKind.SYMMETRIC_UPNP:
        return _upnp_ruleset(outside)
    # Full cone and address-restricted: conntrack alone only admits replies from the exact remote
    # address and port, so the mapping (public port -> inside address and port) is learnt from
    # outbound packets into a map, and inbound new flows are admitted and translated from it.
    if kind is NatKind.FULL_CONE:
        admit = f'iifname "{outside}" ct state new udp dport @t_ports accept'
    else:
        admit = f'iifname "{outside}" ct state new ip saddr . udp dport @t_peers accept'
    return f"""{table} {{
  map t_map {{
    type inet_service : ipv4_addr . inet_service; flags dynamic,timeout;
    timeout {_MAP_TIMEOUT}; size {_MAP_SIZE};
  }}
  set t_ports {{
    type inet_service; flags dynamic,timeout; timeout {_MAP_TIMEOUT}; size {_MAP_SIZE};
  }}
  set t_peers {{
    type ipv4_addr . inet_service; flags dynamic,timeout; timeout {_MAP_TIMEOUT}; size {_MAP_SIZE};
  }}
  chain t_snat {{
    type nat hook postrouting priority srcnat; policy accept;
    oifname "{outside}" masquerade
  }}
  chain t_learn {{
    type filter hook postrouting priority {_LEARN_PRIO}; policy accept;
    oifname "{outside}" update @t_map {{ udp sport : ct original ip saddr . ct original proto-src }}
    oifname "{outside}" update @t_ports {{ udp sport }}
    oifname "{outside}" update @t_peers {{ ip daddr . udp sport }}
  }}
  chain t_admit {{
    type filter hook prerouting priority {_FILTER_PRIO}; policy accept;
    {admit}
    iifname "{outside}" ct state new drop
  }}
  chain t_dnat {{
    type nat hook prerouting priority dstnat; policy accept;
    iifname "{outside}" ct state new udp dport @t_ports dnat ip to udp dport map @t_map
  }}
}}
"""


# The chains miniupnpd fills (its upnp_table_name, upnp_forward_chain, upnp_nat_chain and
# upnp_nat_postrouting_chain settings; lab/upnp.py writes the same names into its configuration).
UPNP_TABLE = "tlab_upnp"
UPNP_FORWARD_CHAIN = "miniupnpd"
UPNP_NAT_CHAIN = "prerouting_miniupnpd"
UPNP_POSTROUTING_CHAIN = "postrouting_miniupnpd"


def _upnp_ruleset(outside: str) -> str:
    """A port-preserving symmetric NAT whose inbound filter lets through what miniupnpd maps.

    Outbound: Linux masquerade with a conntrack zone per remote address, as
    NatKind.SYMMETRIC_PORT_PRESERVING (the inside port where it is free toward that address, a
    new one where another inside socket holds it): what a Linux router running miniupnpd does.
    Only inside sources are translated (the NAT's own sockets, miniupnpd's STUN test, keep
    their ports). Inbound: miniupnpd's DNAT rules (in UPNP_NAT_CHAIN, at dstnat) translate a
    mapped port and its filter rules (UPNP_FORWARD_CHAIN, consulted for the NAT's own input too:
    the STUN test's sockets) accept the flow; every other new inbound flow is dropped. The drop
    is at the forward and input hooks, after DNAT, not at -150 as for the other kinds: a packet
    dropped there is never confirmed by conntrack, so it leaves no entry behind either.
    """
    zone = f"mod {_ZONES} seed {_ZONE_SEED} offset 1"
    return f"""table ip tlab_nat {{
  chain t_zone {{
    type filter hook prerouting priority raw; policy accept;
    iifname != "{outside}" ct zone set jhash ip daddr {zone}
    iifname "{outside}" ct zone set jhash ip saddr {zone}
  }}
  chain t_snat {{
    type nat hook postrouting priority srcnat; policy accept;
    oifname "{outside}" ip saddr 192.168.0.0/16 masquerade
  }}
}}
table inet {UPNP_TABLE} {{
  chain forward {{
    type filter hook forward priority filter; policy accept;
    iifname "{outside}" ct state new jump {UPNP_FORWARD_CHAIN}
    iifname "{outside}" ct state new drop
  }}
  chain input {{
    type filter hook input priority filter; policy accept;
    iifname "{outside}" ct state new jump {UPNP_FORWARD_CHAIN}
    iifname "{outside}" ct state new drop
  }}
  chain {UPNP_FORWARD_CHAIN} {{
  }}
  chain prerouting {{
    type nat hook prerouting priority dstnat; policy accept;
    jump {UPNP_NAT_CHAIN}
  }}
  chain postrouting {{
    type nat hook postrouting priority srcnat - 1; policy accept;
    jump {UPNP_POSTROUTING_CHAIN}
  }}
  chain {UPNP_NAT_CHAIN} {{
  }}
  chain {UPNP_POSTROUTING_CHAIN} {{
  }}
}}
"""
