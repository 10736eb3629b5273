"""Our relay's kernel data path in the lab (issue 8, docs/kernel.md): what the eBPF programs
forward always follows the core, and nothing of them outlives the daemon.

A scripted Teredo peer (FAKE, in client1, no NAT, 203.0.113.101) stands for two clients whose
addresses embed its own IPv4 as their server: it sees the relay's indirect bubbles (they come to
its port 3544), answers them when told to, and records the native host's numbered datagrams
that reach each of its mapping ports.

* Remapping: peer 1 is trusted at its embedded mapping (port 40000) and the kernel carries the
  native host's stream to it. Then the peer goes silent; once the core finds it invalid (30 s
  without reception, RFC 4380 section 5.2.4) it bubbles the peer, which answers from another
  port (40001: a port-symmetric NAT's answer, which the core accepts for a non-valid peer), and
  the core moves its mapping. Every datagram that reached the old mapping must be older than
  every one that reached the new one, and the kernel map must hold the new mapping.
* Expiry: peer 2 (port 40002) is trusted, then left idle past the relay's 30 s idle timeout:
  the core forgets it, so its map entry must be gone and the native host's next datagrams must
  not reach its old mapping (the core starts over with a bubble, which nobody answers).
* Re-insert on use: peer 1's entry is deleted from the map behind the daemon's back (what the
  LRU hash does to its least recently used entry when full); the native host's next datagrams
  take the Python path, which puts the peer back (the mirror's sync), and the kernel carries
  the rest; every datagram arrives.
* Clean-up: SIGTERM, then SIGKILL and the next start: the relay's tcx links, programs and maps
  (their ids read from the daemon's /proc fdinfo) are gone once it has exited, and `bpftool net`
  in its namespace shows nothing attached.

The remapping and expiry check waits 30 s for the core: a module fixture starts it first (in
a lab of its own), the other tests run in theirs meanwhile, and its test, last, checks it.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from teredo.lab.nat import NatKind
from teredo.lab.roles import RELAY_PORT, Role, config_text
from teredo.lab.topology import NATIVE_V6, RELAY_V4, SERVER_V4, Lab

from .conftest import tear_down
from .test_relay_interop import _log, _start_our_relay

pytestmark = pytest.mark.system

PEER_V4 = "203.0.113.101"  # site 1, NatKind.NONE
PORTS = {1: 40000, 2: 40002}
NEW_PORT = 40001
IDLE = 30.0  # the relay's default idle timeout and validity (section 5.2.4)


def teredo(port: int, ip: str = PEER_V4, server: str = PEER_V4) -> str:
    """RFC 4380 section 4: prefix, server, flags 0, obscured port and IPv4."""
    import ipaddress

    raw = bytes.fromhex("20010000") + ipaddress.IPv4Address(server).packed + bytes(2)
    raw += (port ^ 0xFFFF).to_bytes(2, "big")
    raw += bytes(b ^ 0xFF for b in ipaddress.IPv4Address(ip).packed)
    return str(ipaddress.IPv6Address(raw))


PEERS = {n: teredo(port) for n, port in PORTS.items()}

# The scripted peer. stdin commands: "arm N PORT" (answer the next bubble for peer N from
# PORT), "report" (one JSON line), "quit". Bounded by argv[1] seconds.
FAKE = """
import json, select, socket, sys, time
ip, seconds = sys.argv[1], float(sys.argv[2])
peers = {int(n): socket.inet_pton(socket.AF_INET6, a) for n, a in json.loads(sys.argv[3]).items()}
ports = [int(p) for p in sys.argv[4].split(",")]
server = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
server.bind((ip, 3544))
socks = {}
for p in ports:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((ip, p))
    socks[p] = s
armed, seqs, bubbles = {}, {p: [] for p in ports}, {n: 0 for n in peers}
print("ready", flush=True)
deadline = time.monotonic() + seconds
readers = [sys.stdin, server, *socks.values()]
while time.monotonic() < deadline:
    ready, _, _ = select.select(readers, [], [], 0.2)
    for r in ready:
        if r is sys.stdin:
            words = sys.stdin.readline().split()
            if not words or words[0] == "quit":
                sys.exit(0)
            if words[0] == "arm":
                armed[int(words[1])] = int(words[2])
            elif words[0] == "report":
                print(json.dumps({"seqs": seqs, "bubbles": bubbles}), flush=True)
            continue
        data, _ = r.recvfrom(65535)
        if len(data) < 40 or data[0] >> 4 != 6:
            continue
        if r is server:
            # The relay's indirect bubble: IPv6 to one of our peers, from its keyed link-local.
            for n, a in peers.items():
                if data[24:40] == a:
                    bubbles[n] += 1
                    port = armed.pop(n, None)
                    if port is not None:
                        answer = bytes((0x60, 0, 0, 0, 0, 0, 59, 0)) + a + data[8:24]
                        socks[port].sendto(answer, (sys.argv[5], int(sys.argv[6])))
            continue
        # A native datagram the relay forwarded: IPv6 / UDP / b"seq <n>".
        if data[6] == 17 and data[48:52] == b"seq ":
            port = [p for p, s in socks.items() if s is r][0]
            seqs[port].append(int(data[52:].split()[0]))
"""

# The native host's numbered stream: argv source, dest, first seq, count, interval. A raw socket
# with the UDP checksum computed here: a UDP socket's datagrams leave the lab's veth with their
# checksum left to the device, which relay_encap passes up to Python (docs/kernel.md), and this
# test is about what the kernel forwards.
SEND = """
import socket, struct, sys, time
src, dest = sys.argv[1], sys.argv[2]
first, count, gap = int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5])
s = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_UDP)
s.bind((src, 0))
pseudo = socket.inet_pton(socket.AF_INET6, src) + socket.inet_pton(socket.AF_INET6, dest)
for i in range(first, first + count):
    body = b"seq %d " % i
    body += bytes(48 - len(body))
    n = 8 + len(body)
    data = pseudo + struct.pack("!IxxxB", n, 17) + struct.pack("!HHHH", 4000, 9, n, 0) + body
    total = sum(struct.unpack("!%dH" % (len(data) // 2), data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    check = (0xFFFF - total) or 0xFFFF
    s.sendto(struct.pack("!HHHH", 4000, 9, n, check) + body, (dest, 0))
    time.sleep(gap)
"""


class Fake:
    def __init__(self, lab: Lab) -> None:
        argv = ["ip", "netns", "exec", lab.ns("client1"), sys.executable, "-c", FAKE, PEER_V4]
        argv += ["240", json.dumps(PEERS), ",".join(map(str, [*PORTS.values(), NEW_PORT]))]
        argv += [RELAY_V4, str(RELAY_PORT)]
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        assert self.proc.stdout.readline().strip() == "ready"

    def say(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def report(self) -> dict[str, Any]:
        self.say("report")
        assert self.proc.stdout is not None
        got = json.loads(self.proc.stdout.readline())
        return {
            "seqs": {int(p): v for p, v in got["seqs"].items()},
            "bubbles": {int(n): v for n, v in got["bubbles"].items()},
        }

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.say("quit")
                self.proc.wait(5)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait(5)


def _send(lab: Lab, peer: int, first: int, count: int, gap: float = 0.02) -> None:
    argv = [sys.executable, "-c", SEND, NATIVE_V6, PEERS[peer], str(first), str(count), str(gap)]
    lab.exec("native", argv)


def _wait(what: str, check: Any, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, what
        time.sleep(0.2)


def bpf_ids(pid: int) -> dict[str, set[int]]:
    """The ids of the BPF maps, programs and links `pid` holds (its fdinfo)."""
    out: dict[str, set[int]] = {"map": set(), "prog": set(), "link": set()}
    fdinfo = Path(f"/proc/{pid}/fdinfo")
    for entry in fdinfo.iterdir():
        try:
            text = entry.read_text()
        except OSError:
            continue
        for kind, found in out.items():
            m = re.search(rf"^{kind}_id:\s+(\d+)", text, re.M)
            if m:
                found.add(int(m.group(1)))
    return out


def bpftool(*args: str, ns: str | None = None) -> subprocess.CompletedProcess[str]:
    argv = ["bpftool", "-j", *args]
    if ns is not None:
        argv = ["ip", "netns", "exec", ns, *argv]
    return subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)


def peer_map_id(pid: int) -> int:
    """The id of the relay_peers map the relay `pid` holds."""
    for map_id in bpf_ids(pid)["map"]:
        info = bpftool("map", "show", "id", str(map_id))
        if info.returncode == 0 and json.loads(info.stdout).get("name") == "relay_peers":
            return map_id
    raise AssertionError(f"relay {pid} holds no relay_peers map: {bpf_ids(pid)}")


def peer_map(pid: int) -> dict[str, tuple[str, int]]:
    """relay_peers of the relay `pid`: Teredo address -> (IPv4, port), through bpftool."""
    import ipaddress

    dump = bpftool("map", "dump", "id", str(peer_map_id(pid)))
    assert dump.returncode == 0, dump.stderr
    out = {}
    for entry in json.loads(dump.stdout):
        key = bytes(int(b, 16) for b in entry["key"])
        value = bytes(int(b, 16) for b in entry["value"])
        out[str(ipaddress.IPv6Address(key))] = (
            str(ipaddress.IPv4Address(value[:4])),
            int.from_bytes(value[4:6], "big"),
        )
    return out


def _counters(lab: Lab) -> dict[str, Any]:
    """`teredo status --json` of the relay: the datapath and the kernel's counters."""
    got = lab.exec("relay", [sys.executable, "-m", "teredo", "status", "--json"], check=False)
    assert got.returncode == 0, got.stdout + got.stderr
    (doc,) = [d for d in json.loads(got.stdout) if d.get("role") == "relay"]
    return dict(doc["status"])


def _relay_lab(lab_factory: list[Lab], tag: str) -> Lab:
    from .conftest import prefix_for

    lab = Lab(
        prefix_for(tag), [NatKind.NONE], server_impl=None, relay_impl=None, client_impl=[None]
    )
    lab_factory.append(lab)
    lab.up()
    return lab


@dataclass
class Remap:
    """The remapping check under way: its relay, scripted peer and native stream."""

    lab: Lab
    relay: subprocess.Popen[bytes]
    fake: Fake
    stream: subprocess.Popen[bytes]


@pytest.fixture(scope="module", autouse=True)
def remap() -> Iterator[Remap]:
    """First in the module: both peers trusted at their embedded mappings and streamed to
    through the kernel, then peer 1 goes silent with the native host's stream to it going on,
    and peer 2 idles. Their 30 s (section 5.2.4) run out while the module's other tests run
    in labs of their own; test_kernel_never_forwards_to_a_mapping_the_core_left, last, checks
    what happened."""
    labs: list[Lab] = []
    try:
        lab = _relay_lab(labs, "q")
        conf = config_text(Role.RELAY, server=SERVER_V4, relay=RELAY_V4)
        relay = _start_our_relay(lab, "relay", conf, "--datapath", "kernel")
        fake = Fake(lab)
        try:
            # Both peers trusted at their embedded mappings (the relay bubbles through the
            # "server", the peer answers from its mapping: section 5.4.1), then streams
            # through the kernel.
            for n, port in PORTS.items():
                fake.say(f"arm {n} {port}")
                _send(lab, n, 0, 3, gap=0.3)
            _wait(
                "the peers were not set up",
                lambda: all(fake.report()["seqs"][p] for p in PORTS.values()),
                15,
            )
            for n in PORTS:
                _send(lab, n, 100, 50)
            status = _counters(lab)
            assert status["datapath"] == "kernel", status
            assert status["kernel"]["counters"]["encap"] >= 50, status["kernel"]
            table = peer_map(relay.pid)
            assert table[PEERS[1]] == (PEER_V4, PORTS[1]), table
            assert table[PEERS[2]] == (PEER_V4, PORTS[2]), table

            # Peer 1 goes silent and is remapped once invalid; peer 2 idles into expiry. The
            # stream (4 a second, for up to 120 s) is stopped by the test.
            fake.say(f"arm 1 {NEW_PORT}")
            stream = lab.popen(
                "native",
                [sys.executable, "-c", SEND, NATIVE_V6, PEERS[1], "1000", "480", "0.25"],
                name="stream",
            )
            yield Remap(lab, relay, fake, stream)
        finally:
            fake.close()
            relay.send_signal(signal.SIGTERM)
            relay.wait(15)
    finally:
        for lab in labs:
            tear_down(lab)


def _nothing_attached(lab: Lab, ids: dict[str, set[int]]) -> None:
    """None of `ids` exists any more, and nothing is attached in the relay's namespace."""

    def gone() -> bool:
        for kind, found in ids.items():
            for i in found:
                if bpftool(kind, "show", "id", str(i)).returncode == 0:
                    return False
        return True

    # Maps and programs are freed after an RCU grace period: a few seconds at most.
    _wait(f"BPF objects of the relay left: {ids}", gone, 15)
    net = bpftool("net", "show", ns=lab.ns("relay"))
    assert net.returncode == 0, net.stderr
    for section in json.loads(net.stdout):
        for kind in ("xdp", "tc"):
            assert not section.get(kind), f"still attached in the relay's namespace: {net.stdout}"


def test_nothing_outlives_the_relay(lab_factory: list[Lab]) -> None:
    lab = _relay_lab(lab_factory, "w")
    conf = config_text(Role.RELAY, server=SERVER_V4, relay=RELAY_V4)
    for how in (signal.SIGTERM, signal.SIGKILL, signal.SIGTERM):
        relay = _start_our_relay(lab, "relay", conf, "--datapath", "kernel")
        try:
            _wait("the relay has no UDP socket yet", lambda: _counters_ok(lab), 10)
            ids = bpf_ids(relay.pid)
            assert ids["prog"], ids
            assert ids["map"], ids
            links = [_link(i) for i in ids["link"]]
            # BPF_LINK_TYPE_TCX (Debian's bpftool 7.1 prints only the number).
            assert [link["type"] in (11, "tcx") for link in links] == [True, True], links
            names = sorted(_prog_name(link["prog_id"]) for link in links)
            assert names == ["relay_decap", "relay_encap"], links
        finally:
            relay.send_signal(how)
            status = relay.wait(15)
        assert status == (0 if how == signal.SIGTERM else -signal.SIGKILL), _log(lab, "relay")
        _nothing_attached(lab, ids)
        if how == signal.SIGKILL:
            # The TUN went with the killed process's descriptor; the next start must work.
            assert not os.path.exists(f"/proc/{relay.pid}")


def _link(link_id: int) -> dict[str, Any]:
    got = bpftool("link", "show", "id", str(link_id))
    assert got.returncode == 0, got.stderr
    return dict(json.loads(got.stdout))


def _prog_name(prog_id: int) -> str:
    got = bpftool("prog", "show", "id", str(prog_id))
    assert got.returncode == 0, got.stderr
    return str(json.loads(got.stdout)["name"])


def _counters_ok(lab: Lab) -> bool:
    got = lab.exec("relay", [sys.executable, "-m", "teredo", "status", "--json"], check=False)
    return got.returncode == 0


def test_a_peer_gone_from_the_kernel_map_comes_back_on_use(lab_factory: list[Lab]) -> None:
    import ipaddress

    lab = _relay_lab(lab_factory, "e")
    conf = config_text(Role.RELAY, server=SERVER_V4, relay=RELAY_V4)
    relay = _start_our_relay(lab, "relay", conf, "--datapath", "kernel")
    fake = Fake(lab)
    try:
        fake.say(f"arm 1 {PORTS[1]}")
        _send(lab, 1, 0, 3, gap=0.3)
        _wait("peer 1 was not set up", lambda: fake.report()["seqs"][PORTS[1]], 15)
        assert PEERS[1] in peer_map(relay.pid)
        # What the LRU hash does to its least recently used entry when full: no one is told.
        key = [f"{b:02x}" for b in ipaddress.IPv6Address(PEERS[1]).packed]
        gone = bpftool("map", "delete", "id", str(peer_map_id(relay.pid)), "key", "hex", *key)
        assert gone.returncode == 0, gone.stderr
        assert PEERS[1] not in peer_map(relay.pid)
        before = _counters(lab)["kernel"]["counters"]
        _send(lab, 1, 100, 100, gap=0.05)  # 5 s: several of the mirror's syncs
        _wait(
            "not every datagram arrived",
            lambda: len([s for s in fake.report()["seqs"][PORTS[1]] if s >= 100]) >= 100,
            10,
        )
        after = _counters(lab)["kernel"]["counters"]
        assert peer_map(relay.pid).get(PEERS[1]) == (PEER_V4, PORTS[1]), "not put back"
        assert after["mirror_reinserts"] > before["mirror_reinserts"], after
        assert after["encap_no_peer"] > before["encap_no_peer"], "the first ones took Python"
        assert after["encap"] - before["encap"] >= 50, "and the kernel carried the rest"
    finally:
        fake.close()
        relay.send_signal(signal.SIGTERM)
        relay.wait(15)


def test_kernel_never_forwards_to_a_mapping_the_core_left(remap: Remap) -> None:
    """Last in the module: the `remap` fixture set the peers up and started the stream."""
    lab, relay, fake, stream = remap.lab, remap.relay, remap.fake, remap.stream
    try:
        _wait(
            "peer 1 was never remapped",
            lambda: fake.report()["seqs"][NEW_PORT],
            IDLE + 25,
        )
        at_move = _counters(lab)["kernel"]["counters"]["encap"]
        time.sleep(3)  # the stream goes on at the new mapping
    finally:
        stream.kill()
        stream.wait(5)
    got = fake.report()
    old = [s for s in got["seqs"][PORTS[1]] if s >= 1000]
    new = got["seqs"][NEW_PORT]
    assert old, "the stream never reached peer 1 before it fell silent"
    assert max(old) < min(new), f"forwarded to the old mapping after the move: {got}"
    assert len(new) >= 5, got
    assert peer_map(relay.pid)[PEERS[1]] == (PEER_V4, NEW_PORT)
    kernel = _counters(lab)["kernel"]["counters"]
    assert kernel["encap_stale"] >= 1, kernel  # the kernel left the stale peer to Python
    assert kernel["encap"] > at_move, kernel  # and carries it again at its new mapping

    # Peer 2: unused for longer than the idle timeout by now.
    _wait("peer 2 still mapped", lambda: PEERS[2] not in peer_map(relay.pid), 15)
    before = len(got["seqs"][PORTS[2]])
    _send(lab, 2, 5000, 5, gap=0.2)
    _wait("no new bubble for peer 2", lambda: fake.report()["bubbles"][2] >= 2, 10)
    after = fake.report()["seqs"][PORTS[2]]
    assert len(after) == before, f"forwarded to an expired peer: {after[before:]}"
    assert "data path: kernel" in _log(lab, "relay")
