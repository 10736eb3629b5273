"""The fake clients' answer to an indirect bubble (bench/fakeclients.py), checked field by field
as the relay will parse it. Nothing is sent: only the bytes are built."""

from __future__ import annotations

import ipaddress
import socket
import struct

from bench.fakeclients import Answerer
from bench.lab_bench import peer_address, peer_mapping

from teredo.core.ipv6 import build_bubble, is_bubble

RELAY = ("198.51.100.20", 3545)
RELAY_V6 = ipaddress.IPv6Address("fe80::8000:ffff:ffff:fffe").packed


def test_an_indirect_bubble_gets_a_direct_bubble_from_the_mapping() -> None:
    state = Answerer()
    peer = peer_address(70_000)
    reply = state.reply_for(build_bubble(RELAY_V6, peer), RELAY)
    assert reply is not None
    ver_ihl, _tos, total, _id, frag, ttl, proto, _ck, src, dst = struct.unpack_from(
        "!BBHHHBBH4s4s", reply
    )
    assert (ver_ihl, total, frag, ttl, proto) == (0x45, len(reply), 0x4000, 64, 17)
    ipv4, port = peer_mapping(70_000)
    assert src == ipv4.to_bytes(4, "big")
    assert dst == socket.inet_aton(RELAY[0])
    sport, dport, length, checksum = struct.unpack_from("!HHHH", reply, 20)
    assert (sport, dport, length, checksum) == (port, RELAY[1], len(reply) - 20, 0)
    bubble = reply[28:]
    assert is_bubble(bubble)
    assert bubble[8:24] == peer  # the client's Teredo address, matching the UDP source
    assert bubble[24:40] == RELAY_V6  # back to whoever sent the indirect bubble
    assert state.stats()["unique"] == 1


def test_repeated_bubbles_count_one_peer_and_strangers_are_ignored() -> None:
    state = Answerer()
    bubble = build_bubble(RELAY_V6, peer_address(5))
    assert state.reply_for(bubble, RELAY) is not None
    assert state.reply_for(bubble, RELAY) is not None
    stranger = build_bubble(RELAY_V6, ipaddress.IPv6Address("2001:db8:1::100").packed)
    assert state.reply_for(stranger, RELAY) is None
    assert state.reply_for(b"\x45" + bytes(60), RELAY) is None
    assert state.reply_for(b"", RELAY) is None
    stats = state.stats()
    assert (stats["received"], stats["unique"], stats["ignored"]) == (5, 1, 3)
