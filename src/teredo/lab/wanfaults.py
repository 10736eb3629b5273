"""Faults on the lab's wan (issue 12): random loss of the UDP datagrams it forwards, and a TCP
transfer through the tunnel checked byte for byte.

No sch_netem on the lab machine's kernel: loss is an nftables rule in the wan namespace,
`meta l4proto udp numgen random mod 100 < N drop` on the forward hook, so every Teredo
datagram between the NATs, the servers and the relay is dropped with probability N % in each
direction (IPv4 only: the native IPv6 side is not touched). The rule lives in a table of its
own (`teredo_faults`) in the lab's namespace, removed with `clear_loss` or with the namespace.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
import time
from dataclasses import dataclass

from teredo.lab.system import LabError
from teredo.lab.topology import Lab

TABLE = "teredo_faults"
TRANSFER_PORT = 5201

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
    if not 0 <= percent <= 100:
        raise LabError(f"loss {percent} % out of 0..100")
    clear_loss(lab)
    lab.exec("wan", ["nft", "add", "table", "inet", TABLE])
    hook = "{ type filter hook forward priority -300 ; }"
    lab.exec("wan", ["nft", "add", "chain", "inet", TABLE, "forward", hook])
    rule = f"meta l4proto udp numgen random mod 100 < {percent} counter drop"
    lab.exec("wan", ["nft", "add", "rule", "inet", TABLE, "forward", *rule.split()])


def clear_loss(lab: Lab) -> None:
    lab.exec("wan", ["nft", "delete", "table", "inet", TABLE], check=False)


def dropped(lab: Lab) -> int:
    """Datagrams the loss rule dropped so far."""
    out = lab.exec("wan", ["nft", "list", "table", "inet", TABLE], check=False).stdout
    for word, nxt in zip(out.split(), out.split()[1:], strict=False):
        if word == "packets":
            return int(nxt)
    return 0


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
