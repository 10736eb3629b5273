"""Issue 14, the relay points: hostile traffic at a relay, ours and Miredo's, in the same lab.

One lab per implementation (Miredo's server, the relay under test, a Miredo client behind a
port-restricted NAT started late, and an attacker host 203.0.113.102 on the public side with no
NAT), then three attacks in a row:

1. Table fill: the attacker sends one IPv6 packet from each of FLOOD_SOURCES UDP ports, each
   with a Teredo source embedding that very port (so it passes the mapping check of section
   5.4.2). None was ever bubbled by the relay: nothing may reach the native host, and a client
   that starts afterwards must be served at once (ours used to make them trusted entries:
   forwarded, and a full table refused the real client for 30 s).
2. Mapping hijack: the attacker learns the relay's keyed link-local bubble source for the
   client (it is on the path to the server, where it captures the indirect bubble) and spoofs
   the client's answer from its NAT's IPv4 with another port. The native host's pings must
   still reach the client (ours used to move the client's mapping to the spoofed port).
3. Reflection: the native host sends REFLECT_PACKETS packets, each to a new Teredo address that
   names the attacker host as its "server"; the bubbles that reach that address are counted
   for 12 s (ours used to send 4 per packet: a bubble and 3 timed repeats).

Our relay must pass all three (asserted). Miredo's relay runs the same steps as a reference:
its figures are printed (one JSON line, `pytest -s`) for docs/robustness.md, and only the
measurements themselves are checked (Miredo's relay is hijackable, as issue 14 says).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

from teredo.core.relay import SERVER_BUBBLE_BURST, SERVER_BUBBLE_RATE
from teredo.lab.nat import NatKind
from teredo.lab.roles import RELAY_PORT, Impl, Role, config_text
from teredo.lab.teredoaddr import TeredoInfo
from teredo.lab.topology import NATIVE_V6, RELAY_V4, SERVER_V4, Lab

from .conftest import prefix_for, received
from .test_relay_interop import _start_our_relay, _summary

pytestmark = pytest.mark.system

ATTACKER_V4 = "203.0.113.102"  # site 2: NatKind.NONE, no client started
NAT_V4 = "203.0.113.11"  # site 1's NAT, outside
OUR_PEERS = 256  # our relay's table capacity here: the flood is 4 times as many sources
FLOOD_SOURCES = 1024
REFLECT_PACKETS = 1000

# The table fill: one packet from each of `count` source ports, Teredo source = that mapping.
FLOOD = """
import socket, sys
server, mine, relay, port0, count = sys.argv[1:4] + [int(a) for a in sys.argv[4:6]]
dst = socket.inet_pton(socket.AF_INET6, sys.argv[6])
ip = int.from_bytes(socket.inet_aton(mine), "big") ^ 0xFFFFFFFF
for i in range(count):
    port = port0 + i
    src = bytes.fromhex("20010000") + socket.inet_aton(server) + bytes(2)
    src += (port ^ 0xFFFF).to_bytes(2, "big") + ip.to_bytes(4, "big")
    packet = bytes((0x60, 0, 0, 0, 0, 8, 59, 64)) + src + dst + bytes(8)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((mine, port))
        sock.sendto(packet, (relay, int(sys.argv[7])))
print(count, flush=True)
"""

# Counting: the packets from Teredo sources that reach the native host (nftables, prerouting).
NFT_COUNT = """
table ip6 hostile {
    counter from_teredo { }
    chain pre {
        type filter hook prerouting priority -300; policy accept;
        ip6 saddr 2001::/32 counter name from_teredo
    }
}
"""

# The relay's indirect bubble toward the client's server, captured there: its source is the
# keyed link-local the client answers to. Prints it (hex); bounded by argv[2] seconds.
SNIFF = """
import socket, sys, time
target, seconds = socket.inet_pton(socket.AF_INET6, sys.argv[1]), float(sys.argv[2])
relay = socket.inet_aton(sys.argv[3])
sock = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(0x0800))
sock.settimeout(0.5)
print("ready", flush=True)
deadline = time.monotonic() + seconds
while time.monotonic() < deadline:
    try:
        b = sock.recv(65535)
    except TimeoutError:
        continue
    ihl = (b[0] & 15) * 4
    if b[9] != 17 or b[12:16] != relay or int.from_bytes(b[ihl + 2 : ihl + 4], "big") != 3544:
        continue
    v6 = b[ihl + 8 :]
    if len(v6) >= 40 and v6[0] >> 4 == 6 and v6[24:40] == target:
        print(v6[8:24].hex(), flush=True)
        break
"""

# The spoofed answer: a bubble from the client's address to the relay's keyed link-local, from
# the NAT's IPv4 and another port (raw socket: the attacker forges the IPv4 source).
SPOOF = """
import socket, sys
src_ip, sport, relay, dport, client, link_local = sys.argv[1:]
bubble = bytes((0x60, 0, 0, 0, 0, 0, 59, 0))
bubble += socket.inet_pton(socket.AF_INET6, client) + bytes.fromhex(link_local)
udp = int(sport).to_bytes(2, "big") + int(dport).to_bytes(2, "big")
udp += (8 + len(bubble)).to_bytes(2, "big") + bytes(2) + bubble
head = bytes((0x45, 0)) + (20 + len(udp)).to_bytes(2, "big") + bytes(4) + bytes((64, 17, 0, 0))
head += socket.inet_aton(src_ip) + socket.inet_aton(relay)
with socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW) as sock:
    for _ in range(3):
        sock.sendto(head + udp, (relay, 0))
print("sent", flush=True)
"""

# The reflection: native packets to `count` Teredo addresses naming `victim` as their server.
REFLECT = """
import socket, sys, time
victim, count = socket.inet_aton(sys.argv[1]), int(sys.argv[2])
sock = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
t0 = time.monotonic()
for i in range(count):
    ip = (0xCB0071C8 + i % 50) ^ 0xFFFFFFFF  # 203.0.113.200-249
    addr = bytes.fromhex("20010000") + victim + bytes(2)
    addr += ((6000 + i) ^ 0xFFFF).to_bytes(2, "big") + ip.to_bytes(4, "big")
    sock.sendto(b"reflect", (socket.inet_ntop(socket.AF_INET6, addr), 9))
print(count, round(time.monotonic() - t0, 3), flush=True)
"""

# The victim's count of datagrams to its port 3544 for argv[1] seconds.
COUNT = """
import socket, sys, time
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sock.bind(("0.0.0.0", 3544))
sock.settimeout(0.2)
print("ready", flush=True)
n = 0
deadline = time.monotonic() + float(sys.argv[1])
while time.monotonic() < deadline:
    try:
        sock.recv(2048)
        n += 1
    except TimeoutError:
        pass
print(n, flush=True)
"""


def _from_teredo(lab: Lab) -> int:
    out = lab.exec("native", ["nft", "list", "counter", "ip6", "hostile", "from_teredo"]).stdout
    words = out.split()
    return int(words[words.index("packets") + 1])


def _ready(proc: subprocess.Popen[str]) -> None:
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "ready"


def _popen(lab: Lab, host: str, script: str, *args: str) -> subprocess.Popen[str]:
    """A helper script in `host`, its output read as text (killed at the end of the test)."""
    argv = ["ip", "netns", "exec", lab.ns(host), sys.executable, "-c", script, *args]
    return subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)


def _finish(proc: subprocess.Popen[str], timeout: float) -> str:
    """What `proc` printed, once it exits (killed after `timeout`: then "")."""
    out = ""
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        pass
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
    return out


def _hijack(lab: Lab, info: TeredoInfo, link_local: str) -> int:
    """Attack 2: the spoofed answer from the client's NAT, another port; then the native
    host's pings to the client (how many of 5 arrive)."""
    spoof_port = info.mapped_port + 1 if info.mapped_port < 65535 else info.mapped_port - 1
    spoof = lab.exec(
        "client2",
        [
            sys.executable,
            "-c",
            SPOOF,
            NAT_V4,
            str(spoof_port),
            RELAY_V4,
            str(RELAY_PORT),
            str(info.address),
            link_local,
        ],
    )
    assert spoof.stdout.strip() == "sent"
    time.sleep(0.5)
    ping = lab.ping("native", str(info.address), count=5, deadline=8)
    return received(ping.stdout)


@pytest.mark.parametrize("relay_impl", ["teredo", "miredo"])
def test_hostile_traffic_at_the_relay(lab_factory: list[Lab], relay_impl: str) -> None:
    lab = Lab(
        prefix_for("h" if relay_impl == "teredo" else "j"),
        [NatKind.PORT_RESTRICTED, NatKind.NONE],
        server_impl="miredo",
        relay_impl=None,
        client_impl=[None, None],
    )
    lab_factory.append(lab)
    lab.up()
    ours = relay_impl == "teredo"
    relay = None
    if ours:
        relay_conf = config_text(Role.RELAY, server=SERVER_V4, relay=RELAY_V4)
        relay = _start_our_relay(lab, "relay", relay_conf, "--peers", str(OUR_PEERS))
    else:
        lab.start(Role.RELAY, Impl.MIREDO)
        time.sleep(1.0)  # Miredo's relay has no readiness signal; its socket is bound at once
    lab.exec("native", ["nft", "-f", "-"], input_text=NFT_COUNT)

    # 1. Table fill by unknown sources, then a new client.
    flood = lab.exec(
        "client2",
        [
            sys.executable,
            "-c",
            FLOOD,
            SERVER_V4,
            ATTACKER_V4,
            RELAY_V4,
            "20000",
            str(FLOOD_SOURCES),
            NATIVE_V6,
            str(RELAY_PORT),
        ],
        timeout=60,
    )
    assert flood.stdout.strip() == str(FLOOD_SOURCES)
    time.sleep(0.5)
    forwarded = _from_teredo(lab)
    lab.start(Role.CLIENT, Impl.MIREDO, 1)
    info = lab.wait_qualified(1, timeout=30)
    sniffer = _popen(lab, "server", SNIFF, str(info.address), "12", RELAY_V4)
    try:
        _ready(sniffer)
        ping = lab.ping("native", str(info.address), count=10, deadline=10)
        after_flood = received(ping.stdout)
        link_local = _finish(sniffer, 15).strip()
    finally:
        _finish(sniffer, 1)
    # No bubble toward the client (its entry refused): no hijack to try.
    after_spoof = _hijack(lab, info, link_local) if link_local else -1

    # 3. Reflection = info.mapped_port + 1 if info.mapped_port < 65535 else info.mapped_port - 1
    # 3. Reflection toward the attacker host named as "server".
    counter = _popen(lab, "client2", COUNT, "12")
    try:
        _ready(counter)
        sent = lab.exec(
            "native", [sys.executable, "-c", REFLECT, ATTACKER_V4, str(REFLECT_PACKETS)]
        )
        bubbles = int(_finish(counter, 20).strip())
    finally:
        _finish(counter, 1)
    figures = {
        "relay": relay_impl,
        "flood_datagrams": FLOOD_SOURCES,
        "flood_forwarded": forwarded,
        "client_pings_after_flood": f"{after_flood}/10",
        "client_pings_after_spoof": f"{after_spoof}/5",
        "reflect_packets": REFLECT_PACKETS,
        "reflect_send_s": float(sent.stdout.split()[1]),
        "reflect_bubbles": bubbles,
        "bubbles_per_packet": round(bubbles / REFLECT_PACKETS, 3),
    }
    print(json.dumps(figures), flush=True)

    if ours:
        assert relay is not None
        assert forwarded == 0, figures
        assert after_flood >= 7, figures
        assert after_spoof >= 4, figures
        # One bubble per packet at most, and the victim's bucket: 2 s of burst then the rate
        # (SERVER_BUBBLE_RATE a second) while the packets came (generous margin: the clocks).
        assert bubbles <= REFLECT_PACKETS, figures
        send_s = float(sent.stdout.split()[1])
        assert bubbles <= SERVER_BUBBLE_RATE * (SERVER_BUBBLE_BURST + send_s + 1), figures
        counters = _summary(lab, "relay", relay)
        assert counters["size"] <= OUR_PEERS, counters
        log = (lab.state_dir / "relay-relay.log").read_text(encoding="utf-8", errors="replace")
        for reason in ("relay_unknown_peer", "relay_mapping_change", "relay_bubble_limit"):
            assert f"'{reason}'" in log, f"{reason} not counted:\n{log[-2000:]}"
    else:
        # The reference run: the measurements happened (the figures go to the docs).
        assert after_flood >= 0
        assert after_spoof >= 0
        assert bubbles >= 0
