"""nftables counters that show which Teredo packets pass through a host (normally the server).

They count UDP datagrams arriving on port 3544 by what the encapsulated IPv6 packet carries (the
IPv6 header starts right after the UDP header for everything a client or relay sends to the
server: RFC 4380 section 5.2.3 puts Authentication only on router solicitations):

- bubbles: IPv6 next header 59 ("no next header", RFC 4380 section 2.8),
- echo: ICMPv6 echo request or reply (types 128, 129), i.e. ping data,
- teredo: every datagram to port 3544.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from teredo.lab.topology import Lab

# Bit offsets from the start of the UDP header: UDP is 8 bytes, IPv6 version is the first nibble,
# next header is IPv6 byte 6, and the ICMPv6 type is the first byte after the 40-byte IPv6 header.
_V6_VERSION = "@th,64,4"
_NEXT_HEADER = "@th,112,8"
_ICMP6_TYPE = "@th,384,8"
_ECHO = "{ 128, 129 }"

COUNTERS = ("teredo", "bubbles", "echo")


def install(lab: Lab, host: str = "server") -> None:
    ruleset = f"""table inet tlab_watch {{
  counter teredo {{ }}
  counter bubbles {{ }}
  counter echo {{ }}
  chain w_in {{
    type filter hook prerouting priority -300; policy accept;
    udp dport 3544 counter name "teredo"
    udp dport 3544 {_V6_VERSION} 6 {_NEXT_HEADER} 59 counter name "bubbles"
    udp dport 3544 {_V6_VERSION} 6 {_NEXT_HEADER} 58 {_ICMP6_TYPE} {_ECHO} counter name "echo"
  }}
}}
"""
    lab.exec(host, ["nft", "-f", "-"], input_text=ruleset)


def read(lab: Lab, host: str = "server") -> dict[str, int]:
    """Packets counted so far, by counter name."""
    out = lab.exec(host, ["nft", "-j", "list", "counters", "table", "inet", "tlab_watch"]).stdout
    result = dict.fromkeys(COUNTERS, 0)
    for item in json.loads(out).get("nftables", []):
        counter = item.get("counter")
        if isinstance(counter, dict) and counter.get("name") in result:
            result[str(counter["name"])] = int(counter.get("packets", 0))
    return result
