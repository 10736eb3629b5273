#!/usr/bin/env python3
"""Regenerate tests/vectors/miredo_captures.json from a real Miredo server, clients and relay.

Run as root: `.venv/bin/python tests/vectors/capture_miredo.py [--keep]` (--keep: keep the
pcap and the daemons' logs in a temporary directory). It builds namespaces named `tdc-*` only
(and deletes them again, whatever happens):

    tdc-net  a bridge `br0` standing for the IPv4 Internet; tcpdump listens here
    tdc-srv  miredo-server on 198.51.100.10 and 198.51.100.11 (one veth), 2001:db8:1::10
    tdc-c1   Miredo client on 203.0.113.2 (no NAT: directly reachable)
    tdc-c2   Miredo client on 203.0.113.3
    tdc-rly  Miredo relay (RelayType cone) on 203.0.113.4, 2001:db8:1::4, "native host"
             2001:db8::2 on its loopback

All addresses are on one link with on-link routes, so no packet can leave the lab. The clients
qualify with the server (RS/RA); c1 pings c2 (indirect bubble through the server with an Origin
Indication, direct bubbles, echo request/reply); the native host pings c1 through the relay
(relay bubbles, the client's ping test through the server, relayed echoes); c2 pings an
address nobody answers (ping test only). The UDP payloads seen on the bridge are read back from
the pcap file (classic libpcap format, parsed here) and written to the JSON with provenance.
"""

from __future__ import annotations

import datetime
import functools
import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
OUTPUT = HERE / "miredo_captures.json"

NS_NET = "tdc-net"
NS_SRV = "tdc-srv"
NS_C1 = "tdc-c1"
NS_C2 = "tdc-c2"
NS_RLY = "tdc-rly"
ALL_NS = (NS_NET, NS_SRV, NS_C1, NS_C2, NS_RLY)

SERVER1 = "198.51.100.10"
SERVER2 = "198.51.100.11"
CLIENT1 = "203.0.113.2"
CLIENT2 = "203.0.113.3"
CLIENT1_PORT = 40001
CLIENT2_PORT = 40002
RELAY = "203.0.113.4"
RELAY_PORT = 40004
# Native IPv6 side (documentation prefix): the relay's namespace holds the "native host"
# 2001:db8::2; the server reaches it over the bridge to forward the clients' ping tests.
NATIVE_HOST = "2001:db8::2"
SERVER_V6 = "2001:db8:1::10"
RELAY_V6 = "2001:db8:1::4"

QUALIFY_TIMEOUT = 40.0  # Miredo sends 3 RS 4 s apart (RFC 4380 5.2.1); allow a second round
MAX_PER_NAME = 3  # keep the JSON small: the first few packets of each kind


def run(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, check=check, capture_output=True, text=True, timeout=30)


def netns(ns: str, *argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return run("ip", "netns", "exec", ns, *argv, check=check)


def existing_namespaces() -> set[str]:
    out = run("ip", "netns", "list").stdout
    return {line.split()[0] for line in out.splitlines() if line.strip()}


def delete_namespaces() -> None:
    present = existing_namespaces()
    for ns in ALL_NS:
        if ns in present:
            run("ip", "netns", "del", ns, check=False)


def build_topology() -> None:
    for ns in ALL_NS:
        run("ip", "netns", "add", ns)
        run("ip", "-n", ns, "link", "set", "lo", "up")
    run("ip", "-n", NS_NET, "link", "add", "br0", "type", "bridge")
    run("ip", "-n", NS_NET, "link", "set", "br0", "up")
    hosts = (
        (NS_SRV, (SERVER1, SERVER2)),
        (NS_C1, (CLIENT1,)),
        (NS_C2, (CLIENT2,)),
        (NS_RLY, (RELAY,)),
    )
    for ns, addrs in hosts:
        port = "p-" + ns.removeprefix("tdc-")
        # Both ends are created inside our namespaces: the host's own netns is never touched.
        run("ip", "-n", NS_NET, "link", "add", port, "type", "veth", "peer", "eth0", "netns", ns)
        run("ip", "-n", NS_NET, "link", "set", port, "master", "br0", "up")
        run("ip", "-n", ns, "link", "set", "eth0", "up")
        for a in addrs:
            run("ip", "-n", ns, "addr", "add", a + "/24", "dev", "eth0")
        other = "203.0.113.0/24" if ns == NS_SRV else "198.51.100.0/24"
        run("ip", "-n", ns, "route", "add", other, "dev", "eth0")
    # Native IPv6 between server and relay (nodad: usable at once), and the native host.
    run("ip", "-n", NS_SRV, "addr", "add", SERVER_V6 + "/64", "dev", "eth0", "nodad")
    run("ip", "-n", NS_RLY, "addr", "add", RELAY_V6 + "/64", "dev", "eth0", "nodad")
    run("ip", "-n", NS_RLY, "addr", "add", NATIVE_HOST + "/128", "dev", "lo", "nodad")
    run("ip", "-n", NS_SRV, "-6", "route", "add", NATIVE_HOST + "/128", "via", RELAY_V6)


def wait_for(predicate: Callable[[], bool], timeout: float, step: float = 0.25) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(step)
    return False


def teredo_address(ns: str) -> str | None:
    out = netns(ns, "ip", "-6", "-o", "addr", "show", "dev", "teredo", check=False).stdout
    for line in out.split("\n"):
        fields = line.split()
        if "inet6" in fields:
            addr = fields[fields.index("inet6") + 1].split("/")[0]
            if addr.startswith("2001:0:"):
                return addr
    return None


def is_qualified(ns: str) -> bool:
    return teredo_address(ns) is not None


def stop(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> None:
    """Stop one process we started, by its PID; SIGKILL after 5 s."""
    if proc.poll() is None:
        os.kill(proc.pid, sig)
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=5)


# --- pcap reading (classic libpcap format, Ethernet link type) ---------------------------------


def read_pcap(path: Path) -> list[tuple[float, bytes]]:
    data = path.read_bytes()
    if len(data) < 24:
        return []
    magic = data[:4]
    if magic in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1"):
        endian = "<"
    elif magic in (b"\xa1\xb2\xc3\xd4", b"\xa1\xb2\x3c\x4d"):
        endian = ">"
    else:
        raise ValueError("not a classic pcap file")
    nano = magic in (b"\x4d\x3c\xb2\xa1", b"\xa1\xb2\x3c\x4d")
    (linktype,) = struct.unpack_from(endian + "I", data, 20)
    if linktype != 1:
        raise ValueError(f"unexpected link type {linktype}")
    frames = []
    off = 24
    while off + 16 <= len(data):
        sec, frac, incl, _orig = struct.unpack_from(endian + "IIII", data, off)
        off += 16
        frames.append((sec + frac / (1e9 if nano else 1e6), data[off : off + incl]))
        off += incl
    return frames


def udp_datagrams(frames: list[tuple[float, bytes]]) -> list[dict[str, Any]]:
    out = []
    for stamp, frame in frames:
        if len(frame) < 14 + 20 + 8 or frame[12:14] != b"\x08\x00":
            continue
        ip = frame[14:]
        ihl = (ip[0] & 0x0F) * 4
        total = int.from_bytes(ip[2:4], "big")
        if ip[0] >> 4 != 4 or ip[9] != 17 or (int.from_bytes(ip[6:8], "big") & 0x3FFF):
            continue  # not UDP, or a fragment
        udp = ip[ihl:total]
        sport, dport, ulen = struct.unpack_from("!HHH", udp, 0)
        out.append(
            {
                "time": stamp,
                "src": ".".join(str(b) for b in ip[12:16]),
                "dst": ".".join(str(b) for b in ip[16:20]),
                "sport": sport,
                "dport": dport,
                "ttl": ip[8],
                "payload": udp[8:ulen],
            }
        )
    return out


def classify(d: dict[str, Any]) -> str:
    """Name a datagram; "relay_" when the relay is an end of it (IPv4 or origin indication)."""
    name = classify_payload(d)
    p: bytes = d["payload"]
    relay_oi = bytes(b ^ 0xFF for b in bytes(map(int, RELAY.split("."))))
    if RELAY in (d["src"], d["dst"]) or (p[:2] == b"\x00\x00" and p[4:8] == relay_oi):
        return "relay_" + name
    return name


def classify_payload(d: dict[str, Any]) -> str:
    """Name a Teredo payload from its bytes alone (deliberately independent of teredo.core)."""
    p: bytes = d["payload"]
    off = 0
    auth = origin = False
    if p[off : off + 2] == b"\x00\x01" and len(p) >= off + 4:
        auth = True
        off += 13 + p[off + 2] + p[off + 3]
    if p[off : off + 2] == b"\x00\x00":
        origin = True
        off += 8
    ip6 = p[off:]
    if len(ip6) < 40 or ip6[0] >> 4 != 6:
        return "unknown"
    plen = int.from_bytes(ip6[4:6], "big")
    nxt = ip6[6]
    if nxt == 59 and plen == 0:
        if origin:
            return "bubble_with_origin"
        if d["dport"] == 3544:
            return "bubble_indirect"
        return "bubble_direct"
    if nxt == 58 and len(ip6) >= 41:
        icmp = ip6[40]
        names = {133: "rs", 134: "ra", 128: "echo_request", 129: "echo_reply", 1: "unreach"}
        name = names.get(icmp, f"icmpv6_{icmp}")
        if name in ("echo_request", "echo_reply"):
            if d["dport"] == 3544:
                return name + "_to_server"
            if origin:
                return name + "_with_origin"
            return name + "_direct"
        return name + ("_auth" if auth and name not in ("rs", "ra") else "")
    return f"ipv6_nh{nxt}" + ("_with_origin" if origin else "")


def miredo_version() -> str:
    out = run("miredo", "-V", check=False).stdout
    return out.splitlines()[0].strip() if out else "unknown"


def spawn(
    procs: list[subprocess.Popen[bytes]], ns: str, argv: list[str], log: Path
) -> subprocess.Popen[bytes]:
    """Start one daemon inside a namespace of ours; remember it so that it gets stopped."""
    with log.open("wb") as err:
        proc = subprocess.Popen(
            ["ip", "netns", "exec", ns, *argv], stdout=subprocess.DEVNULL, stderr=err
        )
    procs.append(proc)
    return proc


def exercise(work: Path, procs: list[subprocess.Popen[bytes]]) -> dict[str, str]:
    """Start the daemons, qualify both clients, make the traffic; return the client addresses."""
    tcpdump = ["tcpdump", "-i", "br0", "-U", "-s", "0", "-w", str(work / "teredo.pcap"), "udp"]
    spawn(procs, NS_NET, tcpdump, work / "tcpdump.log")
    pcap = work / "teredo.pcap"
    if not wait_for(lambda: pcap.exists() and pcap.stat().st_size >= 24, 10):
        raise RuntimeError("tcpdump did not start")

    # Miredo refuses to keep root; its packaged user "miredo" exists on Debian.
    (work / "server.conf").write_text(f"ServerBindAddress {SERVER1}\n")
    daemon = ["-f", "-u", "miredo", "-c"]
    spawn(
        procs,
        NS_SRV,
        ["miredo-server", *daemon, str(work / "server.conf"), "-p", str(work / "server.pid")],
        work / "server.log",
    )
    (work / "relay.conf").write_text(
        f"RelayType cone\nInterfaceName teredo\nBindAddress {RELAY}\nBindPort {RELAY_PORT}\n"
    )
    spawn(
        procs,
        NS_RLY,
        ["miredo", *daemon, str(work / "relay.conf"), "-p", str(work / "relay.pid")],
        work / "relay.log",
    )
    time.sleep(0.5)
    for ns, port in ((NS_C1, CLIENT1_PORT), (NS_C2, CLIENT2_PORT)):
        conf = work / f"{ns}.conf"
        conf.write_text(
            f"RelayType client\nServerAddress {SERVER1}\nInterfaceName teredo\nBindPort {port}\n"
        )
        spawn(
            procs,
            ns,
            ["miredo", *daemon, str(conf), "-p", str(work / f"{ns}.pid")],
            work / f"{ns}.log",
        )
    addrs: dict[str, str] = {}
    for ns in (NS_C1, NS_C2):
        if not wait_for(functools.partial(is_qualified, ns), QUALIFY_TIMEOUT):
            raise RuntimeError(f"Miredo client in {ns} did not qualify")
        addrs[ns] = teredo_address(ns) or ""
    print("qualified:", addrs)

    # Client to client: indirect bubble through the server (origin indication), direct
    # bubbles, then echo request/reply straight between the mappings. Bounded: -c, -w.
    ping = ["ping", "-6", "-c", "3", "-i", "1", "-W", "3", "-w", "12"]
    print(netns(NS_C1, *ping, addrs[NS_C2], check=False).stdout.strip())
    # Native host to client through the relay: the relay's indirect bubble, the server's
    # origin indication naming the relay, the client's direct bubble, the client's ping test
    # via its server (RFC 4380 5.2.9) and the packets relayed both ways.
    got = netns(NS_RLY, *ping, "-I", NATIVE_HOST, addrs[NS_C1], check=False)
    print(got.stdout.strip())
    # A destination nobody answers: only the client's ping test through the server.
    netns(NS_C2, "ping", "-6", "-c", "1", "-W", "2", "-w", "4", "2001:db8::99", check=False)
    time.sleep(1.0)
    return addrs


def main() -> int:
    if os.geteuid() != 0:
        print("capture_miredo.py must run as root (it creates network namespaces)", file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix="tdc-capture-"))
    procs: list[subprocess.Popen[bytes]] = []
    delete_namespaces()  # leftovers of an earlier interrupted run, our prefix only
    try:
        build_topology()
        addrs = exercise(work, procs)
    finally:
        for proc in reversed(procs):
            # tcpdump (the first) flushes its file on SIGINT.
            stop(proc, signal.SIGINT if proc is procs[0] else signal.SIGTERM)
        delete_namespaces()

    datagrams = udp_datagrams(read_pcap(work / "teredo.pcap"))
    if "--keep" in sys.argv:
        print(f"pcap and logs kept in {work}")
    else:
        shutil.rmtree(work, ignore_errors=True)
    counts: dict[str, int] = {}
    packets = []
    for d in datagrams:
        name = classify(d)
        counts[name] = counts.get(name, 0) + 1
        if counts[name] > MAX_PER_NAME:
            continue
        packets.append(
            {
                "name": name,
                "src": d["src"],
                "sport": d["sport"],
                "dst": d["dst"],
                "dport": d["dport"],
                "ttl": d["ttl"],
                "payload": d["payload"].hex(),
            }
        )
    doc = {
        "provenance": {
            "miredo_version": miredo_version(),
            "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "command": " ".join([sys.executable, *sys.argv]),
            "kernel": os.uname().release,
            "topology": {
                "server": [SERVER1, SERVER2],
                "clients": {CLIENT1: CLIENT1_PORT, CLIENT2: CLIENT2_PORT},
                "relay": {RELAY: RELAY_PORT},
                "native_host": NATIVE_HOST,
                "teredo_addresses": addrs,
            },
            "counts": counts,
        },
        "packets": packets,
    }
    OUTPUT.write_text(json.dumps(doc, indent=1) + "\n")
    print(f"wrote {len(packets)} packets to {OUTPUT} ({counts})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
