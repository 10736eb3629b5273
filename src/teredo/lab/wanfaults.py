"""Faults on the lab's wan (issue 12): random loss, duplication and reordering of the Teredo
datagrams it forwards, and a TCP transfer through the tunnel checked byte for byte.

No sch_netem on the lab machine's kernel (CONFIG_NET_SCH_NETEM is not set; of the qdiscs only
HTB, TBF and FIFO are built; nft has `dup` but no `queue`). So, in the wan namespace, for UDP
over IPv4 only (every Teredo datagram between the NATs, the servers and the relay, each
direction; the native IPv6 side untouched):

- loss: `numgen random mod 100 < N drop` on the forward hook;
- duplication: `numgen random mod 100 < N dup to ip daddr device <bridge>` (the copy leaves
  through the output path, so the loss rule never sees it);
- reordering: the same random choice sets the packet's priority to a slow HTB class on every
  wan port (`REORDER_RATE`, a burst of one datagram), so a chosen datagram waits behind the
  ones before it in that class while the others pass at once: it arrives after datagrams sent
  later. Without a backlog in the slow class it is not delayed at all, so light traffic is
  barely reordered; a TCP transfer is.

The rules live in a table of their own (`teredo_faults`) in the lab's namespace, removed with
`clear_loss` or with the namespace; the qdiscs with `clear_reorder` or the namespace.
"""

from __future__ import annotations

import hashlib
import itertools
import subprocess
import sys
import time
from dataclasses import dataclass

from teredo.lab.system import LabError
from teredo.lab.topology import Lab

TABLE = "teredo_faults"
TRANSFER_PORT = 5201
# The slow class of the reordering: a 1,280-byte datagram takes 10 ms of it.
REORDER_RATE = "1mbit"

# The receiver prints the SHA-256 and byte count of what it read; the sender sends `nbytes`
# of a fixed pattern. Both bounded by socket timeouts.
_RECEIVER = """
import hashlib, socket, sys
s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("::", int(sys.argv[1]))); s.listen(1); s.settimeout(float(sys.argv[2]))
c, _ = s.accept(); c.settimeout(float(sys.argv[2]))
h = hashlib.sha256(); n = 0
while True:
    b = c.recv(65536)
    if not b: break
    h.update(b); n += len(b)
print(n, h.hexdigest())
"""
_SENDER = """
import socket, sys
data = bytes(range(256)) * (int(sys.argv[3]) // 256)
# Connect tries bounded (three, each up to a third of the time): a SYN lost with the client's
# first relay discovery costs TCP's backoff, which can outlast a loaded machine's patience.
for attempt in range(3):
    try:
        c = socket.create_connection((sys.argv[1], int(sys.argv[2])), float(sys.argv[4]) / 3)
        break
    except OSError:
        if attempt == 2: raise
c.settimeout(float(sys.argv[4]))
c.sendall(data); c.shutdown(socket.SHUT_WR); c.recv(1); c.close()
"""


def set_loss(lab: Lab, percent: int) -> None:
    """Drop `percent` % of the UDP datagrams the wan forwards (replaces any earlier rule)."""
    _check_percent(percent)
    _ensure_table(lab)
    lab.exec("wan", ["nft", "flush", "chain", "inet", TABLE, "forward"], check=False)
    lab.exec("wan", ["nft", "delete", "chain", "inet", TABLE, "forward"], check=False)
    hook = "{ type filter hook forward priority -300 ; }"
    lab.exec("wan", ["nft", "add", "chain", "inet", TABLE, "forward", hook])
    # IPv4 only: in an inet table `meta l4proto udp` alone also matches UDP over native IPv6
    # (the soak's echo between the relay and the native host).
    rule = f"meta nfproto ipv4 meta l4proto udp numgen random mod 100 < {percent} counter drop"
    lab.exec("wan", ["nft", "add", "rule", "inet", TABLE, "forward", *rule.split()])


def set_duplication(lab: Lab, percent: int) -> None:
    """Send a second copy of `percent` % of the UDP/IPv4 datagrams the wan forwards."""
    _check_percent(percent)
    # `dup to ADDRESS` exists in the ip family only (not inet): a table of its own.
    lab.exec("wan", ["nft", "add", "table", "ip", TABLE])
    hook = "{ type filter hook forward priority -310 ; }"
    lab.exec("wan", ["nft", "add", "chain", "ip", TABLE, "t_dup", hook])
    for bridge in ("bs", "bn"):
        rule = (
            f"oifname {bridge} meta l4proto udp "
            f"numgen random mod 100 < {percent} counter dup to ip daddr device {bridge}"
        )
        lab.exec("wan", ["nft", "add", "rule", "ip", TABLE, "t_dup", *rule.split()])


def set_reorder(lab: Lab, percent: int, rate: str = "") -> None:
    """Hold back `percent` % of the UDP/IPv4 datagrams the wan forwards in a slow HTB class
    of each wan port (see the module's docstring), so that later ones overtake them."""
    _check_percent(percent)
    _ensure_table(lab)
    rate = rate or REORDER_RATE
    for port in _wan_ports(lab):
        for cmd in (
            f"qdisc replace dev {port} root handle 1: htb default 10",
            f"class add dev {port} parent 1: classid 1:10 htb rate 10gbit",
            f"class add dev {port} parent 1: classid 1:20 htb rate {rate} ceil {rate} "
            "burst 1600 cburst 1600",
        ):
            lab.exec("wan", ["tc", *cmd.split()])
    hook = "{ type filter hook forward priority -290 ; }"
    lab.exec("wan", ["nft", "add", "chain", "inet", TABLE, "t_reorder", hook])
    rule = (
        "meta nfproto ipv4 meta l4proto udp "
        f"numgen random mod 100 < {percent} counter meta priority set 1:20"
    )
    lab.exec("wan", ["nft", "add", "rule", "inet", TABLE, "t_reorder", *rule.split()])


def clear_reorder(lab: Lab) -> None:
    for port in _wan_ports(lab):
        lab.exec("wan", ["tc", "qdisc", "del", "dev", port, "root"], check=False)


def _wan_ports(lab: Lab) -> list[str]:
    """The wan's veth ends on its IPv4 bridges (toward servers, relay, NATs, public hosts)."""
    ports: list[str] = []
    for bridge in ("bs", "bn"):
        out = lab.exec("wan", ["ip", "-o", "link", "show", "master", bridge]).stdout
        ports += [line.split(":")[1].strip().split("@")[0] for line in out.splitlines()]
    return ports


def out_of_order(lab: Lab, host: str) -> int:
    """TCP segments `host`'s stack queued out of order so far (TcpExtTCPOFOQueue): proof
    that reordering reached a TCP receiver."""
    text = lab.exec(host, ["cat", "/proc/net/netstat"]).stdout.splitlines()
    for names, values in itertools.pairwise(text):
        if names.startswith("TcpExt:") and values.startswith("TcpExt:"):
            table = dict(zip(names.split()[1:], values.split()[1:], strict=False))
            return int(table.get("TCPOFOQueue", 0))
    return 0


def _check_percent(percent: int) -> None:
    if not 0 <= percent <= 100:
        raise LabError(f"{percent} % out of 0..100")


def _ensure_table(lab: Lab) -> None:
    lab.exec("wan", ["nft", "add", "table", "inet", TABLE])


def clear_loss(lab: Lab) -> None:
    """Removes every rule of ours (loss, duplication, reordering's marks)."""
    lab.exec("wan", ["nft", "delete", "table", "inet", TABLE], check=False)
    lab.exec("wan", ["nft", "delete", "table", "ip", TABLE], check=False)


def dropped(lab: Lab) -> int:
    """Datagrams the loss rule dropped so far."""
    return _counter(lab, "forward")


def duplicated(lab: Lab) -> int:
    return _counter(lab, "t_dup", "ip")


def held_back(lab: Lab) -> int:
    """Datagrams sent to the slow class (each is reordered only if a backlog held it)."""
    return _counter(lab, "t_reorder")


def _counter(lab: Lab, chain: str, family: str = "inet") -> int:
    """The packets counted by the rules of `chain` in our table (0 when there is none)."""
    out = lab.exec("wan", ["nft", "list", "chain", family, TABLE, chain], check=False).stdout
    words = out.split()
    return sum(int(n) for w, n in itertools.pairwise(words) if w == "packets")


@dataclass(frozen=True, slots=True)
class Transfer:
    nbytes: int
    received: int
    intact: bool
    seconds: float
    error: str = ""  # the sender's stderr, when it failed


def tcp_transfer(
    lab: Lab, src: str, dst: tuple[str, str], nbytes: int, *, timeout: float = 120.0
) -> Transfer:
    """Send `nbytes` over TCP from `src` to `dst` = (host, IPv6) (a listener there), bounded by
    `timeout`; intact when the receiver's count and SHA-256 match what was sent."""
    nbytes -= nbytes % 256
    dst_host, dst_v6 = dst
    receiver = lab.popen(
        dst_host,
        [sys.executable, "-c", _RECEIVER, str(TRANSFER_PORT), str(timeout)],
        name=f"{dst_host}-tcp-receiver",
        stdout=subprocess.PIPE,
    )
    time.sleep(0.5)  # the listener binds
    start = time.monotonic()
    sent = lab.exec(
        src,
        [sys.executable, "-c", _SENDER, dst_v6, str(TRANSFER_PORT), str(nbytes), str(timeout)],
        timeout=timeout + 10,
        check=False,
    )
    try:
        out, _ = receiver.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        receiver.kill()
        receiver.communicate()
        return Transfer(nbytes, 0, False, time.monotonic() - start, sent.stderr[-500:])
    seconds = time.monotonic() - start
    text = out.decode() if isinstance(out, bytes) else (out or "")
    words = text.split()
    want = hashlib.sha256(bytes(range(256)) * (nbytes // 256)).hexdigest()
    got = int(words[0]) if words else 0
    intact = len(words) == 2 and words[1] == want and got == nbytes
    return Transfer(nbytes, got, intact, seconds, "" if intact else sent.stderr[-500:])
