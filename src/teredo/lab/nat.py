"""NAT kinds of the lab and the nftables rulesets that build them.

The kinds are the four classic ones RFC 4380 section 2 (terminology) and section 5.2.1 (cone flag,
qualification) reason about, plus "none" for a client with a global address. Each ruleset is loaded
into the NAT's own namespace, so table names cannot clash with anything else.
"""

from __future__ import annotations

import enum


class NatKind(enum.Enum):
    """How a client reaches the IPv4 "internet" of the lab."""

    NONE = "none"
    FULL_CONE = "full-cone"
    ADDRESS_RESTRICTED = "address-restricted"
    PORT_RESTRICTED = "port-restricted"
    SYMMETRIC = "symmetric"

    @classmethod
    def parse(cls, text: str) -> NatKind:
        """Accept the value ("port-restricted") or the member name ("PORT_RESTRICTED")."""
        key = text.strip().lower().replace("_", "-")
        aliases = {
            "cone": "full-cone",
            "restricted": "address-restricted",
            "port": "port-restricted",
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


def nft_ruleset(kind: NatKind, outside: str) -> str:
    """The nftables ruleset (for `nft -f -`) of a NAT whose public interface is `outside`."""
    if kind is NatKind.NONE:
        return ""
    table = "table ip tlab_nat"
    if kind in (NatKind.PORT_RESTRICTED, NatKind.SYMMETRIC):
        # Linux masquerade keeps the inside source port when it can, so the mapping is endpoint
        # independent (the same public port for every destination). "fully-random" picks a new
        # random port for every new flow: a symmetric NAT, which Teredo cannot traverse
        # (RFC 4380 section 5.2.1 and RFC 6081 section 1).
        random = " fully-random" if kind is NatKind.SYMMETRIC else ""
        return f"""{table} {{
  chain t_snat {{
    type nat hook postrouting priority srcnat; policy accept;
    oifname "{outside}" masquerade{random}
  }}
  chain t_admit {{
    type filter hook prerouting priority {_FILTER_PRIO}; policy accept;
    iifname "{outside}" ct state new drop
  }}
}}
"""
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
