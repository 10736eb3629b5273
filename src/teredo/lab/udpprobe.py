"""Tiny UDP probes that show how a lab NAT maps and filters (`python -m teredo.lab.udpprobe`).

Three modes, each bounded in packets and in time:

- `reflect --bind IP:PORT [--bind ...]`: answer every datagram with the text "IP:PORT" of the
  address it came from, i.e. the sender's mapping as seen from outside the NAT.
- `agent --bind IP:PORT`: a client socket driven by lines on stdin; `send IP:PORT` sends a probe
  and prints the reflected mapping (or null), `recv SECONDS` prints what arrived meanwhile.
- `send --bind IP:PORT --to IP:PORT`: one unsolicited datagram.

`ProbeAgent` drives an agent inside a lab namespace.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import select
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

from teredo.lab.system import said_ready

if TYPE_CHECKING:
    from teredo.lab.topology import Lab

MAX_LIFETIME = 120.0  # seconds: no probe process outlives this
MAX_PACKETS = 1000  # datagrams answered or collected per process
MAX_WAIT = 10.0  # seconds a single send or recv may wait
PAYLOAD_MAX = 512


def _addr(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host, int(port)


def _udp(bind: str) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(_addr(bind))
    return sock


def reflect(binds: Sequence[str], lifetime: float) -> int:
    socks = [_udp(b) for b in binds]
    print("ready", flush=True)
    deadline = time.monotonic() + min(lifetime, MAX_LIFETIME)
    answered = 0
    while answered < MAX_PACKETS:
        left = deadline - time.monotonic()
        if left <= 0:
            break
        ready, _, _ = select.select(socks, [], [], left)
        for sock in ready:
            _data, (ip, port) = sock.recvfrom(PAYLOAD_MAX)
            sock.sendto(f"{ip}:{port}".encode(), (ip, port))
            answered += 1
    return 0


def agent(bind: str, lifetime: float) -> int:
    sock = _udp(bind)
    deadline = time.monotonic() + min(lifetime, MAX_LIFETIME)
    print(json.dumps({"ready": bind}), flush=True)
    pending: list[list[str]] = []  # datagrams that arrived while waiting for something else
    handled = 0
    while handled < MAX_PACKETS and time.monotonic() < deadline:
        ready, _, _ = select.select([sys.stdin], [], [], max(0.0, deadline - time.monotonic()))
        if not ready:
            break
        line = sys.stdin.readline()
        if not line or line.strip() == "quit":
            break
        verb, _, arg = line.strip().partition(" ")
        handled += 1
        if verb == "send":
            target = _addr(arg)
            sock.sendto(b"probe", target)
            reply = None
            end = time.monotonic() + 2.0
            while reply is None and time.monotonic() < end:
                r, _, _ = select.select([sock], [], [], max(0.0, end - time.monotonic()))
                if not r:
                    break
                data, src = sock.recvfrom(PAYLOAD_MAX)
                if src == target:
                    reply = data.decode(errors="replace")
                else:
                    pending.append([f"{src[0]}:{src[1]}", data.decode(errors="replace")])
            print(json.dumps({"sent": arg, "mapped": reply}), flush=True)
        elif verb == "recv":
            end = time.monotonic() + min(float(arg or 1.0), MAX_WAIT)
            got = pending
            pending = []
            while len(got) < MAX_PACKETS:
                r, _, _ = select.select([sock], [], [], max(0.0, end - time.monotonic()))
                if not r:
                    break
                data, src = sock.recvfrom(PAYLOAD_MAX)
                got.append([f"{src[0]}:{src[1]}", data.decode(errors="replace")])
            print(json.dumps({"received": got}), flush=True)
        else:
            print(json.dumps({"error": f"unknown command {verb!r}"}), flush=True)
    return 0


def send(bind: str, to: str) -> int:
    with _udp(bind) as sock:
        sock.sendto(b"unsolicited", _addr(to))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m teredo.lab.udpprobe")
    sub = parser.add_subparsers(dest="mode", required=True)
    p = sub.add_parser("reflect")
    p.add_argument("--bind", action="append", required=True)
    p.add_argument("--lifetime", type=float, default=60.0)
    p = sub.add_parser("agent")
    p.add_argument("--bind", required=True)
    p.add_argument("--lifetime", type=float, default=60.0)
    p = sub.add_parser("send")
    p.add_argument("--bind", required=True)
    p.add_argument("--to", required=True)
    args = parser.parse_args(argv)
    if args.mode == "reflect":
        return reflect(args.bind, args.lifetime)
    if args.mode == "agent":
        return agent(args.bind, args.lifetime)
    return send(args.bind, args.to)


class ProbeAgent:
    """An `agent` running in a lab host; its PID is recorded by the lab, so `down` stops it."""

    def __init__(self, lab: Lab, host: str, bind: str, lifetime: float = 60.0) -> None:
        self.bind = bind  # "IP:PORT" of the agent's socket
        self.proc = lab.popen(
            host,
            [
                sys.executable,
                "-m",
                "teredo.lab.udpprobe",
                "agent",
                "--bind",
                bind,
                "--lifetime",
                str(lifetime),
            ],
            name=f"probe-{host}",
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        self._line()  # {"ready": ...}

    def _line(self) -> dict[str, object]:
        if self.proc.stdout is None:
            raise RuntimeError("udp probe agent: no stdout pipe")
        r, _, _ = select.select([self.proc.stdout], [], [], MAX_WAIT + 5)
        if not r:
            raise TimeoutError("udp probe agent: no answer")
        line = self.proc.stdout.readline()
        if not line:
            raise EOFError("udp probe agent exited")
        result: dict[str, object] = json.loads(line)
        return result

    def _ask(self, command: str) -> dict[str, object]:
        if self.proc.stdin is None:
            raise RuntimeError("udp probe agent: no stdin pipe")
        self.proc.stdin.write(command.encode() + b"\n")
        self.proc.stdin.flush()
        return self._line()

    def send(self, to: str) -> str | None:
        """Send a probe to `to` (a reflector); the mapping it saw, or None without an answer."""
        mapped = self._ask(f"send {to}")["mapped"]
        return None if mapped is None else str(mapped)

    def recv(self, seconds: float) -> list[tuple[str, str]]:
        """Datagrams received (source "IP:PORT", payload) within `seconds`."""
        got = self._ask(f"recv {seconds}")["received"]
        if not isinstance(got, list):
            raise TypeError(f"udp probe agent: bad answer {got!r}")
        return [(str(src), str(data)) for src, data in got]

    def close(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(OSError, EOFError, TimeoutError, ValueError):
                self._ask("quit")
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=5)


def start_reflector(
    lab: Lab, host: str, binds: Sequence[str], lifetime: float = 60.0
) -> subprocess.Popen[bytes]:
    """A `reflect` process in `host` (recorded by the lab), once its sockets are bound."""
    argv = [sys.executable, "-m", "teredo.lab.udpprobe", "reflect", "--lifetime", str(lifetime)]
    for bind in binds:
        argv += ["--bind", bind]
    proc = lab.popen(host, argv, name=f"reflect-{host}", stdout=subprocess.PIPE)
    if not said_ready(proc, MAX_WAIT):
        raise RuntimeError(f"udp reflector in {host} did not start")
    return proc


def send_from(lab: Lab, host: str, bind: str, to: str) -> None:
    """One unsolicited datagram from `bind` in `host` to `to`."""
    lab.exec(
        host, [sys.executable, "-m", "teredo.lab.udpprobe", "send", "--bind", bind, "--to", to]
    )


if __name__ == "__main__":
    sys.exit(main())
