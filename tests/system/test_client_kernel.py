"""Our client's kernel data path in the lab (issue 8, docs/kernel.md "The client's programs").

One lab: Miredo's server, our relay, four of our clients behind port-restricted NATs (the
default `--datapath auto`, so the kernel programs). Clients 3 and 4 serve the silent-peer check
alone: it starts with the module (a fixture) and its 30 s validity runs out while the other
tests use clients 1 and 2, so that wait costs nothing; its test, last, reads the result.
Checked:

- UDP between the two clients and with the native host (through the relay) is carried by the
  kernel programs both ways (their counters), and arrives;
- a peer whose mapping changes in the core (the native host's relay moves to another port:
  the ping test finds it there, section 5.2.9) is never forwarded to at the old mapping once
  the core has the new one; a peer that goes silent (its client killed) is not forwarded to
  after its validity ends (30 s after its last packet, section 5.2.4);
- `--datapath user` carries the same traffic with no program attached;
- SIGTERM and SIGKILL leave no program attached in the client's namespace, and the next start
  uses the kernel path again.
"""

from __future__ import annotations

import hashlib
import json
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from teredo.lab import clientfaults
from teredo.lab.nat import NatKind
from teredo.lab.roles import RELAY_PORT, Impl, Role
from teredo.lab.system import ProcRecord
from teredo.lab.topology import NATIVE_V6, Lab

from .conftest import prefix_for, received, tear_down

pytestmark = pytest.mark.system

QUALIFY_TIMEOUT = 40.0
PAYLOAD = 300  # bytes of UDP payload: data datagrams are told from bubbles by their size
DATA_LENGTH = 200  # outer IPv4 length above which a datagram is data (a bubble is 68)
OTHER_RELAY_PORT = RELAY_PORT + 7

# A bounded UDP tool run inside the namespaces (every loop ends by count and by time).
UDP_TOOL = r"""
import socket, sys, time
mode = sys.argv[1]
if mode == "send":
    dest, port, count, rate = sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5])
    s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    end = time.monotonic() + count / rate + 5
    for i in range(count):
        try:
            s.sendto(b"k" * int(sys.argv[6]), (dest, port))
        except OSError:
            pass
        time.sleep(1 / rate)
        if time.monotonic() > end:
            break
    print("sent", i + 1, flush=True)
else:
    # Ends once `expect` datagrams arrived, or 3 s after the stop file appears (the
    # sender is done: late datagrams still count), or after `seconds` at the latest.
    import os
    port, seconds, expect = int(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4])
    stop = sys.argv[5]
    s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    s.bind(("::", port)); s.settimeout(0.2)
    print("ready", flush=True)
    n = 0; end = time.monotonic() + seconds; draining = False
    while time.monotonic() < end and n < expect:
        try:
            s.recv(2048); n += 1
        except socket.timeout:
            pass
        if not draining and os.path.exists(stop):
            draining = True
            end = min(end, time.monotonic() + 3.0)
    print("received", n, flush=True)
"""

# A counter of data datagrams (not bubbles) for one UDP destination on a host's eth0.
COUNTER_RULES = """table inet kc_count {{
  counter data {{ }}
  chain count {{
    type filter hook {hook} priority -300; policy accept;
    {match} udp dport {port} meta length > {length} counter name data
  }}
}}
"""


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    lab = Lab(
        prefix_for("k"),
        [NatKind.PORT_RESTRICTED] * 4,
        relay_impl=Impl.TEREDO,
        client_impl=Impl.TEREDO,
    )
    try:
        lab.up()
        yield lab
    finally:
        tear_down(lab)


def status(lab: Lab, host: str) -> dict[str, object]:
    proc = lab.exec(host, [sys.executable, "-m", "teredo", "status", "--json"], check=False)
    assert proc.returncode == 0, f"{host}: teredo status failed: {proc.stderr}"
    docs = json.loads(proc.stdout)
    [client] = [d for d in docs if d.get("role") == "client"] if isinstance(docs, list) else [docs]
    st = client["status"]
    assert isinstance(st, dict)
    return st


def kernel(lab: Lab, host: str) -> dict[str, int]:
    st = status(lab, host)
    assert st["datapath"] == "kernel", f"{host}: data path {st['datapath']}\n{lab.log_tail(host)}"
    counters = st["kernel"]
    assert isinstance(counters, dict)
    return counters


def address(lab: Lab, index: int) -> str:
    return str(lab.wait_qualified(index, timeout=QUALIFY_TIMEOUT).address)


def udp(lab: Lab, src: str, dst: str, dst_host: str, *, count: int = 400, rate: float = 200) -> int:
    """`count` datagrams from `src` to `dst` (on `dst_host`); how many arrived."""
    port = 40000 + int(time.monotonic() * 10) % 20000
    seconds = count / rate + 20  # the receiver's bound; it ends sooner (UDP_TOOL)
    name = f"{dst_host}-udp-{port}"
    stop = lab.state_dir / f"{name}.stop"
    stop.unlink(missing_ok=True)
    argv = ["recv", str(port), str(seconds), str(count), str(stop)]
    receiver = lab.popen(dst_host, [sys.executable, "-u", "-c", UDP_TOOL, *argv], name=name)
    log = Path(lab.procs[-1].log)
    _wait_for_line(log, "ready", receiver)
    sender = [sys.executable, "-c", UDP_TOOL, "send", dst, str(port), str(count), str(rate)]
    try:
        lab.exec(src, [*sender, str(PAYLOAD)], timeout=count / rate + 15)
    finally:
        stop.touch()
    receiver.wait(timeout=seconds + 10)
    stop.unlink(missing_ok=True)
    text = log.read_text(encoding="utf-8")
    assert "received" in text, text
    return int(text.split("received")[-1].split()[0])


def _wait_for_line(
    log: Path, word: str, proc: subprocess.Popen[bytes], timeout: float = 20
) -> None:
    """Polls `proc`'s log until it holds `word` (its socket is bound), bounded by `timeout`."""
    deadline = time.monotonic() + timeout
    while word not in log.read_text(encoding="utf-8"):
        assert proc.poll() is None, log.read_text(encoding="utf-8")
        assert time.monotonic() < deadline, f"no {word!r} in {log}"
        time.sleep(0.05)


def add_counter(lab: Lab, host: str, port: int, *, inbound: bool) -> None:
    hook, match = ("prerouting", 'iifname "eth0"') if inbound else ("postrouting", 'oifname "eth0"')
    rules = COUNTER_RULES.format(hook=hook, match=match, port=port, length=DATA_LENGTH)
    lab.exec(host, ["nft", "-f", "-"], input_text=rules)


COUNTER_LIST = ["nft", "-j", "list", "counter", "inet", "kc_count", "data"]


def data_count(lab: Lab, host: str) -> int:
    return _packets(lab.exec(host, COUNTER_LIST).stdout, host)


def _packets(out: str, host: str) -> int:
    """The packets of the counter in `nft -j list counter` output."""
    for item in json.loads(out)["nftables"]:
        if "counter" in item:
            return int(item["counter"]["packets"])
    raise AssertionError(f"{host}: no counter in {out}")


def client_record(lab: Lab, host: str) -> ProcRecord:
    [record] = [r for r in lab.procs if r.host == host and r.role == "client" and r.alive()]
    return record


ATTACHED = """
import socket
from teredo.io.libbpf import BPF_TCX_EGRESS, BPF_TCX_INGRESS, attached_count
for index, name in socket.if_nameindex():
    for kind, at in (("ingress", BPF_TCX_INGRESS), ("egress", BPF_TCX_EGRESS)):
        n = attached_count(index, at)
        if n:
            print(f"{name} tcx {kind} {n}")
"""


def attached(lab: Lab, host: str) -> str:
    """The tcx programs attached in `host`'s namespace, one line per interface and direction
    (BPF_PROG_QUERY), '' when none."""
    return lab.exec(host, [sys.executable, "-c", ATTACHED]).stdout.strip()


@dataclass(frozen=True)
class SilentPeer:
    """The silent-peer check under way: client4 killed at `killed`, client3 sending to it."""

    killed: float
    nat_host: str  # client4's NAT, counting the data datagrams to client4's mapping
    before: dict[str, int]  # client3's kernel counters when client4 died
    sender: subprocess.Popen[bytes]
    sample: subprocess.Popen[bytes]  # reads the NAT's count at the validity's end
    sample_log: Path


@pytest.fixture(scope="module", autouse=True)
def silent_peer(lab: Lab) -> SilentPeer:
    """Fresh contact between clients 3 and 4 both ways, then client4 dies: its last packet
    reaches client3 now. client3 sends 10 datagrams a second for 40 s to the dead peer's
    mapping, and the NAT's count is read 31 s after the death (section 5.2.4: 30 s), while
    the module's other tests run."""
    a3, a4 = address(lab, 3), address(lab, 4)
    site4 = lab.site(4)
    assert site4.nat_host is not None
    mapped = lab.wait_qualified(4).mapped_port
    add_counter(lab, site4.nat_host, mapped, inbound=True)
    assert received(lab.ping("client4", a3, count=3, deadline=10).stdout) >= 2
    assert received(lab.ping("client3", a4, count=3, deadline=10).stdout) >= 2
    record = client_record(lab, "client4")
    killed = time.monotonic()
    lab._popens[[p.pid for p in lab._popens].index(record.pid)].send_signal(signal.SIGKILL)
    before = kernel(lab, "client3")
    sender = [sys.executable, "-c", UDP_TOOL, "send", a4, "9", "400", "10", str(PAYLOAD)]
    proc = lab.popen("client3", sender, name="client3-to-dead")
    delay = max(0.0, killed + 31 - time.monotonic())
    at_end = ["sh", "-c", f"sleep {delay:.3f}; exec {' '.join(COUNTER_LIST)}"]
    sample = lab.popen(site4.nat_host, at_end, name="validity-end")
    log = Path(lab.procs[-1].log)
    return SilentPeer(killed, site4.nat_host, before, proc, sample, log)


def test_udp_is_carried_by_the_kernel_both_ways(lab: Lab) -> None:
    a1, a2 = address(lab, 1), address(lab, 2)
    # The first packets set up trust on the Python path (bubbles, the ping test).
    for src, dst in (("client1", a2), ("client2", a1), ("client1", NATIVE_V6)):
        assert received(lab.ping(src, dst, count=4, deadline=15).stdout) >= 2, (src, dst)
    assert received(lab.ping("native", a1, count=4, deadline=15).stdout) >= 2
    before1, before2 = kernel(lab, "client1"), kernel(lab, "client2")
    assert udp(lab, "client1", a2, "client2") >= 360
    assert udp(lab, "client2", a1, "client1") >= 360
    assert udp(lab, "client1", NATIVE_V6, "native") >= 360
    assert udp(lab, "native", a1, "client1") >= 360
    after1, after2 = kernel(lab, "client1"), kernel(lab, "client2")
    # Each client sent its datagrams in the kernel and received the other's there.
    assert after1["encap"] - before1["encap"] >= 720, (before1, after1)
    assert after1["decap"] - before1["decap"] >= 720, (before1, after1)
    assert after2["encap"] - before2["encap"] >= 360, (before2, after2)
    assert after2["decap"] - before2["decap"] >= 360, (before2, after2)
    assert after1["serving"] == 1
    assert after1["mirror_errors"] == 0


def test_remapped_native_peer_is_never_sent_to_at_the_old_mapping(lab: Lab) -> None:
    """The relay moves to another port: the native host's packets arrive from the new one, the
    client's ping test (section 5.2.9) trusts it there, and from then on nothing goes to the
    old port, in the kernel or in Python."""
    a1 = address(lab, 1)
    assert received(lab.ping("client1", NATIVE_V6, count=4, deadline=15).stdout) >= 2
    assert udp(lab, "client1", NATIVE_V6, "native", count=100) >= 80
    add_counter(lab, "relay", RELAY_PORT, inbound=True)
    lab.stop("relay")
    lab.start(Role.RELAY, Impl.TEREDO, extra=["--bind-port", str(OTHER_RELAY_PORT)])
    time.sleep(2)
    inserts = kernel(lab, "client1")["mirror_inserts"]
    # The native host talks first (through the relay, now at the other port): the client
    # checks that relay with its ping test and trusts the native host at the new mapping.
    deadline = time.monotonic() + 30
    while kernel(lab, "client1")["mirror_inserts"] == inserts:
        assert time.monotonic() < deadline, lab.log_tail("client1", 30)
        lab.ping("native", a1, count=2, deadline=3)
    old_port = data_count(lab, "relay")
    assert udp(lab, "client1", NATIVE_V6, "native", count=200) >= 160
    assert udp(lab, "native", a1, "client1", count=200) >= 160
    assert data_count(lab, "relay") == old_port, "data went to the relay's old port"


def test_user_datapath_carries_the_same_traffic(lab: Lab) -> None:
    lab.stop("client1")
    clientfaults.start_client(lab, 1, "--datapath", "user")
    a1, a2 = address(lab, 1), address(lab, 2)
    try:
        assert status(lab, "client1")["datapath"] == "user"
        assert status(lab, "client1")["kernel"] is None
        assert attached(lab, "client1") == ""
        for src, dst in (("client1", a2), ("client2", a1), ("client1", NATIVE_V6)):
            assert received(lab.ping(src, dst, count=4, deadline=15).stdout) >= 2, (src, dst)
        assert received(lab.ping("native", a1, count=4, deadline=15).stdout) >= 2
        assert udp(lab, "client1", a2, "client2", count=200) >= 160
        assert udp(lab, "native", a1, "client1", count=200) >= 160
    finally:
        lab.stop("client1")


@pytest.mark.parametrize("how", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "sigkill"])
def test_stopping_leaves_no_program_attached(lab: Lab, how: signal.Signals) -> None:
    lab.stop("client1")
    clientfaults.start_client(lab, 1)
    a1 = address(lab, 1)
    assert received(lab.ping("client1", NATIVE_V6, count=3, deadline=15).stdout) >= 2
    running = attached(lab, "client1")
    assert "teredo tcx egress 1" in running, running
    assert "eth0 tcx ingress 1" in running, running
    record = client_record(lab, "client1")
    popen = lab._popens[[p.pid for p in lab._popens].index(record.pid)]
    popen.send_signal(how)
    popen.wait(timeout=20)
    # The TUN goes with the process; the IPv4 side must be bare too.
    assert attached(lab, "client1") == "", "a program is still attached"
    # The next start finds nothing in its way and uses the kernel path again.
    clientfaults.start_client(lab, 1)
    a1 = address(lab, 1)
    assert received(lab.ping("native", a1, count=3, deadline=15).stdout) >= 2
    assert kernel(lab, "client1")["serving"] == 1


TCP_SINK = r"""
import hashlib, socket, sys
s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("::", int(sys.argv[1]))); s.listen(1); s.settimeout(30)
print("listening", flush=True)
c, _ = s.accept(); c.settimeout(30)
h = hashlib.sha256(); n = 0
while True:
    d = c.recv(65536)
    if not d:
        break
    h.update(d); n += len(d)
print("got", n, h.hexdigest(), flush=True)
"""
TCP_SOURCE = r"""
import socket, sys, time
data = bytes(range(256)) * (int(sys.argv[3]) // 256)
end = time.monotonic() + 10
while True:
    try:
        c = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=30)
        break
    except OSError:
        if time.monotonic() > end:
            raise
        time.sleep(0.2)
c.sendall(data); c.shutdown(socket.SHUT_WR); c.recv(1); c.close()
"""


def test_local_tcp_in_the_kernel_where_the_device_completes_checksums(lab: Lab) -> None:
    """A local socket's TCP leaves its checksum to the device (CHECKSUM_PARTIAL): with the IPv4
    interface's TX checksum offload off, the kernel completes it after encapsulation, so the
    client sends its single TCP segments (here the ACKs of a download) in the kernel too
    (docs/kernel.md); the bytes arrive intact both ways."""
    lab.exec("client1", ["ethtool", "-K", "eth0", "tx", "off"])
    try:
        lab.stop("client1")
        clientfaults.start_client(lab, 1)
        a1 = address(lab, 1)
        assert received(lab.ping("client2", a1, count=3, deadline=15).stdout) >= 2
        before = kernel(lab, "client1")
        assert before["device_checksum"] == 1, before
        size = 4 << 20
        sink = lab.popen("client1", [sys.executable, "-u", "-c", TCP_SINK, "5001"], name="sink")
        log = Path(lab.procs[-1].log)
        time.sleep(0.5)
        lab.exec("client2", [sys.executable, "-c", TCP_SOURCE, a1, "5001", str(size)], timeout=60)
        sink.wait(timeout=40)
        got = log.read_text(encoding="utf-8").split()
        want = hashlib.sha256(bytes(range(256)) * (size // 256)).hexdigest()
        assert got[-2:] == [str(size), want], got
        after = kernel(lab, "client1")
        # About 3,400 segments of 1,220 bytes came in, decapsulated in the kernel; the ACKs
        # (single segments, checksum left to the device) went out in the kernel.
        assert after["decap"] - before["decap"] >= 3000, (before, after)
        assert after["encap"] - before["encap"] >= 300, (before, after)
    finally:
        lab.exec("client1", ["ethtool", "-K", "eth0", "tx", "on"], check=False)
        lab.stop("client1")
        clientfaults.start_client(lab, 1)


# Datagrams leaving the client's host, as the NAT receives them: all of them, and those longer
# than the link's MTU (a GSO packet that crossed the veth whole, unsegmented).
NAT_RULES = """table inet kc_nat {
  counter teredo { }
  counter oversize { }
  chain count {
    type filter hook prerouting priority -300; policy accept;
    iifname "in0" meta l4proto udp meta length > 1000 counter name teredo
    iifname "in0" meta l4proto udp meta length > 1500 counter name oversize
  }
}
"""


def nat_count(lab: Lab, name: str) -> int:
    out = lab.exec("nat1", ["nft", "-j", "list", "counter", "inet", "kc_nat", name]).stdout
    for item in json.loads(out)["nftables"]:
        if "counter" in item:
            return int(item["counter"]["packets"])
    raise AssertionError(f"nat1: no counter {name} in {out}")


def upload(lab: Lab, dst_host: str, dst: str, size: int, port: int) -> list[str]:
    """`size` bytes by TCP from client1 to `dst` (on `dst_host`): the sink's "got N sha256"."""
    sink = lab.popen(dst_host, [sys.executable, "-u", "-c", TCP_SINK, str(port)], name="sink")
    log = Path(lab.procs[-1].log)
    time.sleep(0.5)
    lab.exec("client1", [sys.executable, "-c", TCP_SOURCE, dst, str(port), str(size)], timeout=90)
    sink.wait(timeout=60)
    return log.read_text(encoding="utf-8").split()[-2:]


def test_bulk_tcp_upload_is_segmented_after_encapsulation_in_the_kernel(lab: Lab) -> None:
    """The client host's own bulk TCP reaches client_encap as GSO packets of up to 64 KiB
    (tcp_sendmsg builds them whatever the TUN's features; the stack segments them only after
    tc egress). With the IPv4 interface's TX checksum offload off, the program encapsulates
    them whole as UDP tunnel packets and the device segments them in software, each segment
    with the outer header and a complete inner checksum (docs/kernel.md): 4 MiB uploads to
    the other client and to the native host (through our relay) arrive intact, the GSO
    packets counted in encap_gso, none passed up, and no datagram longer than the link's MTU
    reaches the NAT."""
    lab.exec("client1", ["ethtool", "-K", "eth0", "tx", "off"])
    lab.exec("nat1", ["nft", "-f", "-"], input_text=NAT_RULES)
    try:
        lab.stop("client1")
        clientfaults.start_client(lab, 1)
        a1, a2 = address(lab, 1), address(lab, 2)
        for src, dst in (("client1", a2), ("client2", a1), ("client1", NATIVE_V6)):
            assert received(lab.ping(src, dst, count=3, deadline=15).stdout) >= 2, (src, dst)
        size = 4 << 20
        want = [str(size), hashlib.sha256(bytes(range(256)) * (size // 256)).hexdigest()]
        for dst_host, dst, port in (("client2", a2, 5002), ("native", NATIVE_V6, 5003)):
            before, sent0 = kernel(lab, "client1"), nat_count(lab, "teredo")
            assert before["device_checksum"] == 1, before
            assert upload(lab, dst_host, dst, size, port) == want, dst_host
            after = kernel(lab, "client1")
            gso = after["encap_gso"] - before["encap_gso"]
            # 4 MiB is about 3,500 segments of 1,208 bytes; a GSO packet carries 2 to 45.
            assert gso >= 20, (dst_host, before, after)
            assert after["encap_partial"] == before["encap_partial"], (dst_host, before, after)
            assert nat_count(lab, "teredo") - sent0 >= 3400, dst_host
        assert nat_count(lab, "oversize") == 0
    finally:
        lab.exec("nat1", ["nft", "delete", "table", "inet", "kc_nat"], check=False)
        lab.exec("client1", ["ethtool", "-K", "eth0", "tx", "on"], check=False)
        lab.stop("client1")
        clientfaults.start_client(lab, 1)


def test_silent_peer_is_not_forwarded_to_after_its_validity(
    lab: Lab, silent_peer: SilentPeer
) -> None:
    """Last in the module: the check the `silent_peer` fixture started has run its course
    while the other tests ran (clients 3 and 4 are used by nothing else)."""
    peer = silent_peer
    peer.sample.wait(timeout=max(0.0, peer.killed + 31 - time.monotonic()) + 30)
    at_validity_end = _packets(peer.sample_log.read_text(encoding="utf-8"), peer.nat_host)
    peer.sender.wait(timeout=60)
    after = kernel(lab, "client3")
    assert at_validity_end >= 100, "the valid peer was sent to before"
    assert data_count(lab, peer.nat_host) == at_validity_end, "sent to an invalid peer"
    assert after["encap"] - peer.before["encap"] >= 100, "forwarded in the kernel while valid"
    assert after["encap_stale"] > peer.before["encap_stale"], "the kernel refused the stale peer"
