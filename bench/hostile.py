"""Hostile traffic at each daemon, Miredo's beside ours (issue 12, docs/robustness.md).

    sudo .venv/bin/python -m bench.hostile [--impl both|miredo|teredo] [--prefix hst-]

The same datagrams as tests/system/test_hostile.py (teredo.lab.hostile: malformed, truncated,
oversize, spoofed and replayed, each kind from its own forged source), sent by an attacker on
the public side to a running server, client (behind a full-cone NAT, so anyone reaches its
mapping) and relay, one lab each, while a regular user is served: 10 RS from a real socket
(server) or 10 pings to the native host (client, relay). Measured the same way for both:
what the regular user got, resident memory of the daemon and its children before and after,
whether it still runs, and (client) whether it kept its address. Miredo has no drop counters:
ours are in the system test, which checks that they account for every datagram.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

from teredo.core.ipv6 import build_rs
from teredo.lab import system
from teredo.lab.hostile import GOOD_RS, SEND, client_kinds, relay_kinds, server_kinds, to_json
from teredo.lab.nat import NatKind
from teredo.lab.roles import RELAY_PORT, Impl
from teredo.lab.topology import NATIVE_V6, RELAY_V4, SERVER_V4, Lab, ping_counts

ATTACKER = "client2"  # site 2: no NAT (203.0.113.102)
ATTACKER_V4 = "203.0.113.102"


def _rss_kib(lab: Lab, host: str) -> int:
    total = 0
    for record in lab.procs:
        if record.host != host or not record.role or not record.alive():
            continue
        for pid in [record.pid, *system.descendants(record.pid)]:
            try:
                with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as fh:
                    total += next((int(x.split()[1]) for x in fh if x.startswith("VmRSS:")), 0)
            except OSError:
                continue
    return total


def _alive(lab: Lab, host: str) -> bool:
    return any(r.host == host and r.role and r.alive() for r in lab.procs)


def _send(lab: Lab, target: str, port: int, payload: str) -> subprocess.Popen[str]:
    argv = ["ip", "netns", "exec", lab.ns(ATTACKER), sys.executable, "-c", SEND, target, str(port)]
    proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert proc.stdin is not None
    proc.stdin.write(payload)
    proc.stdin.close()
    return proc


def _wait(proc: subprocess.Popen[str], timeout: float) -> str:
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)
    return proc.stdout.read().strip() if proc.stdout is not None else ""


def server(impl: Impl, prefix: str) -> dict[str, object]:
    lab = Lab(
        prefix,
        [NatKind.PORT_RESTRICTED, NatKind.NONE],
        server_impl=impl,
        relay_impl=None,
        client_impl=[Impl.MIREDO, None],
    )
    try:
        lab.up()
        lab.wait_qualified(1, timeout=60)
        before = _rss_kib(lab, "server")
        kinds = server_kinds(SERVER_V4, ATTACKER_V4)
        argv = [sys.executable, "-c", GOOD_RS, SERVER_V4, "10", build_rs().hex()]
        good = lab.popen(ATTACKER, argv, name="good-rs", stdout=subprocess.PIPE)
        assert good.stdout is not None
        good.stdout.readline()  # "ready"
        sent = _wait(_send(lab, SERVER_V4, 3544, to_json(kinds)), 120)
        answered = good.communicate(timeout=30)[0].decode().strip()
        time.sleep(1.0)
        return {
            "datagrams": sent,
            "kinds": len(kinds),
            "regular_rs_answered": f"{answered}/10",
            "rss_kib": [before, _rss_kib(lab, "server")],
            "running": _alive(lab, "server"),
            "client_qualified": lab.teredo_address(1) is not None,
        }
    finally:
        lab.down()


def _pinged(impl: Impl, prefix: str, daemon: str) -> dict[str, object]:
    nat = NatKind.FULL_CONE if daemon == "client" else NatKind.PORT_RESTRICTED
    lab = Lab(
        prefix,
        [nat, NatKind.NONE],
        server_impl=impl,
        relay_impl=impl,
        client_impl=[impl, None],
    )
    try:
        lab.up()
        info = lab.wait_qualified(1, timeout=60)
        lab.ping("client1", NATIVE_V6, count=3, deadline=15)
        host = "client1" if daemon == "client" else "relay"
        before = _rss_kib(lab, host)
        if daemon == "client":
            kinds = client_kinds(info.address.packed, SERVER_V4)
            sender = _send(lab, str(info.mapped_ip), info.mapped_port, to_json(kinds))
        else:
            kinds = relay_kinds(SERVER_V4)
            sender = _send(lab, RELAY_V4, RELAY_PORT, to_json(kinds))
        ping = lab.ping("client1", NATIVE_V6, count=10, deadline=20)
        sent = _wait(sender, 120)
        time.sleep(1.0)
        after = lab.teredo_address(1)
        counts = ping_counts(ping.stdout) or (0, 0)
        result: dict[str, object] = {
            "datagrams": sent,
            "kinds": len(kinds),
            "pings_answered": f"{counts[1]}/10",
            "rss_kib": [before, _rss_kib(lab, host)],
            "running": _alive(lab, host),
        }
        if daemon == "client":
            result["same_address"] = after is not None and after.address == info.address
        return result
    finally:
        lab.down()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--impl", choices=("both", "miredo", "teredo"), default="both")
    parser.add_argument("--prefix", default="hst-")
    args = parser.parse_args(argv)
    impls = [Impl.MIREDO, Impl.TEREDO] if args.impl == "both" else [Impl(args.impl)]
    results: dict[str, dict[str, object]] = {}
    for impl in impls:
        results[impl.value] = {
            "server": server(impl, args.prefix),
            "client": _pinged(impl, args.prefix, "client"),
            "relay": _pinged(impl, args.prefix, "relay"),
        }
        for daemon, figures in results[impl.value].items():
            print(f"{impl.value} {daemon}: {json.dumps(figures)}", flush=True)
    print(json.dumps({"benchmark": "hostile", "results": results}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
