"""The lab's UPnP IGD: Debian's miniupnpd inside a NAT namespace (NatKind.SYMMETRIC_UPNP).

miniupnpd (2.3.1, nftables backend) refuses to map ports when its outside address is a reserved
one (the lab's 203.0.113.0/24 is, RFC 5737) unless a STUN server tells it that the address is
public and unfiltered (`ext_perform_stun`). So the lab runs a small RFC 3489 STUN responder on
the server host (both server addresses, ports 3478 and 3479: the CHANGE-REQUEST answers come
from the other address or port), for the few seconds miniupnpd's start-up test takes, and
miniupnpd then runs with its own configuration, lease and pid files in the lab's state
directory: nothing of the host's /etc/miniupnpd or /var/run is read or written, and no service
is started on the host (`python -m teredo.lab.upnp stun` is the responder).
"""

from __future__ import annotations

import argparse
import select
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from teredo.lab.nat import (
    UPNP_FORWARD_CHAIN,
    UPNP_NAT_CHAIN,
    UPNP_POSTROUTING_CHAIN,
    UPNP_TABLE,
)
from teredo.lab.system import LabError, said_ready

if TYPE_CHECKING:
    from teredo.lab.site import Site
    from teredo.lab.topology import Lab

STUN_PORTS = (3478, 3479)
STUN_LIFETIME = 30.0  # seconds: miniupnpd asks once at start (4 requests, 3 tries, 3 s each)
STUN_MAX_ANSWERS = 200
MINIUPNPD = "/usr/sbin/miniupnpd"
START_TIMEOUT = 15.0

_BINDING_REQUEST = 0x0001
_BINDING_RESPONSE = 0x0101
_MAPPED_ADDRESS = 0x0001
_CHANGE_REQUEST = 0x0003
_CHANGE_IP = 0x04
_CHANGE_PORT = 0x02


def stun_answer(request: bytes, source: tuple[str, int]) -> tuple[bytes, bool, bool] | None:
    """(response, change IP, change port) for a Binding Request, or None for anything else.

    RFC 3489 section 11: a 20-byte header (type, length, 16-byte transaction id; RFC 5389's magic
    cookie is its first 4 bytes), then attributes; the answer carries MAPPED-ADDRESS = `source`.
    """
    if len(request) < 20 or len(request) > 548:
        return None
    kind, length = struct.unpack_from("!HH", request)
    if kind != _BINDING_REQUEST or 20 + length != len(request):
        return None
    flags = 0
    offset = 20
    while offset + 4 <= len(request):
        attr, alen = struct.unpack_from("!HH", request, offset)
        offset += 4
        if offset + alen > len(request):
            return None
        if attr == _CHANGE_REQUEST and alen == 4:
            (flags,) = struct.unpack_from("!I", request, offset)
        offset += (alen + 3) & ~3
    ip, port = source
    mapped = struct.pack("!HHBBH", _MAPPED_ADDRESS, 8, 0, 1, port) + socket.inet_aton(ip)
    header = struct.pack("!HH", _BINDING_RESPONSE, len(mapped)) + request[4:20]
    return header + mapped, bool(flags & _CHANGE_IP), bool(flags & _CHANGE_PORT)


def serve_stun(addresses: Sequence[str], lifetime: float) -> int:
    """Answer Binding Requests on each address x STUN_PORTS, from the socket the request asks."""
    if len(addresses) != 2:
        raise SystemExit("stun: give exactly two addresses (the answers change between them)")
    socks: dict[tuple[int, int], socket.socket] = {}
    for a, ip in enumerate(addresses):
        for p, port in enumerate(STUN_PORTS):
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sock.bind((ip, port))
            socks[(a, p)] = sock
    where = {sock: key for key, sock in socks.items()}
    print("ready", flush=True)
    deadline = time.monotonic() + min(lifetime, 120.0)
    answered = 0
    while answered < STUN_MAX_ANSWERS:
        left = deadline - time.monotonic()
        if left <= 0:
            break
        ready, _, _ = select.select(list(where), [], [], left)
        for sock in ready:
            data, src = sock.recvfrom(2048)
            got = stun_answer(data, src)
            if got is None:
                continue
            response, change_ip, change_port = got
            a, p = where[sock]
            socks[(a ^ change_ip, p ^ change_port)].sendto(response, src)
            answered += 1
    return 0


def miniupnpd_config(site: Site, outside: str, inside: str, state: Path, stun: str) -> str:
    """miniupnpd.conf(5) for the NAT of `site`: only its own files, only the lab's STUN server."""
    return f"""# written by teredo.lab.upnp for the lab NAT {site.nat_host}
ext_ifname={outside}
listening_ip={inside}
http_port=0
enable_natpmp=no
enable_upnp=yes
secure_mode=yes
system_uptime=no
notify_interval=60
clean_ruleset_interval=0
ext_perform_stun=yes
ext_stun_host={stun}
ext_stun_port={STUN_PORTS[0]}
uuid=3f1d7c2e-0b7a-4a55-9d8e-7e4ed00000{site.index:02x}
lease_file={state / "leases"}
upnp_table_name={UPNP_TABLE}
upnp_nat_table_name={UPNP_TABLE}
upnp_forward_chain={UPNP_FORWARD_CHAIN}
upnp_nat_chain={UPNP_NAT_CHAIN}
upnp_nat_postrouting_chain={UPNP_POSTROUTING_CHAIN}
allow 1024-65535 192.168.0.0/16 1024-65535
deny 0-65535 0.0.0.0/0 0-65535
"""


def start(lab: Lab, site: Site, inside: str, stun_host: str, stun_addresses: Sequence[str]) -> None:
    """The STUN responder, then miniupnpd in `site`'s NAT (listening on its `inside`
    interface); returns once miniupnpd has port forwarding enabled."""
    if site.nat_host is None:
        raise LabError("a UPnP NAT needs a NAT host")
    state = lab.state_dir / f"{site.nat_host}-upnp"
    state.mkdir(parents=True, exist_ok=True)
    argv = [sys.executable, "-m", "teredo.lab.upnp", "stun", "--lifetime", str(STUN_LIFETIME)]
    for ip in stun_addresses:
        argv += ["--address", ip]
    stun = lab.popen(stun_host, argv, name=f"stun-{site.nat_host}", stdout=subprocess.PIPE)
    if not said_ready(stun, START_TIMEOUT):
        raise LabError(f"the STUN responder in {stun_host} did not start")
    conf = state / "miniupnpd.conf"
    conf.write_text(
        miniupnpd_config(site, "eth0", inside, state, stun_addresses[0]), encoding="ascii"
    )
    name = f"{site.nat_host}-miniupnpd"
    # -d: foreground, log to stderr (the lab's log file); -P: a pid file of its own.
    argv = [MINIUPNPD, "-d", "-f", str(conf), "-P", str(state / "pid")]
    lab.popen(site.nat_host, argv, name=name)
    log = lab.state_dir / f"{name}.log"
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        text = log.read_text(encoding="utf-8", errors="replace") if log.exists() else ""
        if "does not support port forwarding" in text or "filters incoming" in text:
            raise LabError(f"miniupnpd in {site.nat_host} disabled port forwarding:\n{text}")
        if "HTTP listening" in text and "Port forwarding is now enabled" in text:
            # Its test is done: free the STUN ports for the next UPnP site of the lab.
            stun.terminate()
            stun.wait(5)
            return
        if "EXITING" in text or "Performing STUN failed" in text:
            raise LabError(f"miniupnpd in {site.nat_host} failed:\n{text}")
        time.sleep(0.1)
    text = log.read_text(encoding="utf-8", errors="replace") if log.exists() else ""
    raise LabError(f"miniupnpd in {site.nat_host} did not start in {START_TIMEOUT:.0f} s:\n{text}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m teredo.lab.upnp")
    sub = parser.add_subparsers(dest="mode", required=True)
    p = sub.add_parser("stun", help="a bounded RFC 3489 STUN responder for miniupnpd's test")
    p.add_argument("--address", action="append", required=True)
    p.add_argument("--lifetime", type=float, default=STUN_LIFETIME)
    args = parser.parse_args(argv)
    return serve_stun(args.address, args.lifetime)


if __name__ == "__main__":
    sys.exit(main())
