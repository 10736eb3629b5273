"""The lab: an IPv4 "internet", native IPv6, NATs and Teredo roles in network namespaces.

```
                      <p>wan (router; bridges bs, bn, b6)
   bs 198.51.100.0/24 + 2001:db8:2::/64      bn 203.0.113.0/24        b6 2001:db8:1::/64
     |- <p>srv  .10 .11  2001:db8:2::10        |- <p>n1 .11 --NAT-- <p>c1 192.168.1.2
     |- <p>rly  .20      2001:db8:2::20        |- <p>c2 .102 (no NAT)   |- <p>v6 2001:db8:1::100
```

A lab owns exactly the namespaces whose names start with its prefix. Its state (processes started,
configuration files, logs) lives under /run/teredo-lab/<prefix>/ so that another process can list
it (`teredo lab status`) or take it down (`teredo lab down`).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, Any

from teredo.lab import system, upnp
from teredo.lab.nat import NatKind, nft_ruleset
from teredo.lab.roles import TEREDO_PORT, TUN_NAME, Impl, Role, command, config_text
from teredo.lab.site import Site
from teredo.lab.statusline import status_line
from teredo.lab.system import LabError, ProcRecord
from teredo.lab.teardown import STATE_ROOT, cleanup, sigint_deferred, stop_records
from teredo.lab.teredoaddr import TeredoInfo, decode

DEFAULT_PREFIX = "tdo-"
MAX_SITES = 50

# Addresses (documentation ranges only: RFC 5737 for IPv4, RFC 3849 for IPv6).
WAN_V4_SERVERS = "198.51.100.1"
WAN_V4_PUBLIC = "203.0.113.1"
SERVER_V4 = "198.51.100.10"
SERVER_V4_2 = "198.51.100.11"  # RFC 4380 section 5.2: the server's second, consecutive address
RELAY_V4 = "198.51.100.20"
WAN_V6_SERVERS = "2001:db8:2::1"
SERVER_V6 = "2001:db8:2::10"
RELAY_V6 = "2001:db8:2::20"
WAN_V6_NATIVE = "2001:db8:1::1"
NATIVE_V6 = "2001:db8:1::100"
# Only with Lab(native_ipv4=True): the native host is then dual-stack, for a host-specific relay
# (RFC 4380 section 5.4) that needs a global IPv4 of its own.
NATIVE_V4 = "198.51.100.30"
TEREDO_PREFIX = "2001::/32"

# Host name -> namespace suffix for the fixed hosts; sites add nat<i> -> n<i>, client<i> -> c<i>.
_FIXED = {"wan": "wan", "server": "srv", "relay": "rly", "native": "v6"}


_PING_COUNTS = re.compile(r"(\d+) packets transmitted, (\d+) received")


def ping_counts(output: str) -> tuple[int, int] | None:
    """(sent, received) from ping's summary line, or None when there is none."""
    m = _PING_COUNTS.search(output)
    return (int(m.group(1)), int(m.group(2))) if m else None


def _impl_name(impl: Impl | None) -> str:
    return impl.value if impl else "none"


def _as_impl(value: Impl | str | None) -> Impl | None:
    if value is None or isinstance(value, Impl):
        return value
    return Impl.parse(value)


class Lab:
    """Build, drive and take down a Teredo lab under one namespace prefix.

    `client_impl` is one implementation for every client or one per NAT. An implementation of None
    (or "none") means the role is not started by `up()`; `start()` can still start it later.
    """

    def __init__(
        self,
        prefix: str = DEFAULT_PREFIX,
        nats: Sequence[NatKind | str] = (NatKind.PORT_RESTRICTED,),
        *,
        server_impl: Impl | str | None = Impl.MIREDO,
        relay_impl: Impl | str | None = Impl.MIREDO,
        client_impl: Impl | str | Sequence[Impl | str | None] | None = Impl.MIREDO,
        state_root: Path = STATE_ROOT,
        native_ipv4: bool = False,
        user: str | None = None,
    ) -> None:
        self.prefix = system.check_prefix(prefix)
        # Our daemons become this user after set-up (--user; docs/robustness.md); None: the
        # lab's default, $TEREDO_LAB_USER when set (the whole suite can run them dropped).
        self.user = user if user is not None else os.environ.get("TEREDO_LAB_USER") or None
        kinds = [k if isinstance(k, NatKind) else NatKind.parse(k) for k in nats]
        if len(kinds) > MAX_SITES:
            raise LabError(f"at most {MAX_SITES} NAT + client pairs, not {len(kinds)}")
        self.sites: list[Site] = []
        for i, kind in enumerate(kinds):
            host_site = None
            if kind is NatKind.SHARED:
                # Behind the NAT of the nearest site before it that has one.
                host_site = next(
                    (s.index for s in reversed(self.sites) if s.nat_host is not None), None
                )
                if host_site is None:
                    raise LabError("a shared site needs a site with a NAT before it")
            self.sites.append(Site(i + 1, kind, host_site))
        self.server_impl = _as_impl(server_impl)
        self.relay_impl = _as_impl(relay_impl)
        if isinstance(client_impl, (Impl, str)) or client_impl is None:
            self.client_impls = [_as_impl(client_impl)] * len(kinds)
        else:
            self.client_impls = [_as_impl(c) for c in client_impl]
            if len(self.client_impls) != len(kinds):
                raise LabError("client_impl: give one implementation, or one per NAT")
        self.native_ipv4 = native_ipv4
        # Hosts added by lab/anycast.py (routers, relays, servers): name -> namespace suffix,
        # and their addresses. Registered before `up()`, they are built like the fixed ones.
        self.extra_hosts: dict[str, str] = {}
        self.extra_addresses: dict[str, list[str]] = {}
        self.state_dir = state_root / prefix.rstrip("-")
        self.procs: list[ProcRecord] = []
        self._popens: list[subprocess.Popen[bytes]] = []
        self._lock = threading.Lock()

    # --- names and addresses ---------------------------------------------------------------

    def hosts(self) -> list[str]:
        names = list(_FIXED)
        for site in self.sites:
            if site.nat_host:
                names.append(site.nat_host)
            names.append(site.client_host)
        return names + list(self.extra_hosts)

    def ns(self, host: str) -> str:
        """The namespace of a host ("server", "relay", "native", "wan", "nat1", "client1", ...)."""
        if host in _FIXED:
            return self.prefix + _FIXED[host]
        if host in self.extra_hosts:
            return self.prefix + self.extra_hosts[host]
        for site in self.sites:
            if host == site.client_host:
                return f"{self.prefix}c{site.index}"
            if host == site.nat_host:
                return f"{self.prefix}n{site.index}"
        raise LabError(f"no host {host!r} in this lab (hosts: {', '.join(self.hosts())})")

    def site(self, index: int) -> Site:
        if not 1 <= index <= len(self.sites):
            raise LabError(f"no client {index}: this lab has {len(self.sites)}")
        return self.sites[index - 1]

    def addresses(self) -> dict[str, list[str]]:
        """Each host's addresses, as built."""
        result: dict[str, list[str]] = {
            "wan": [WAN_V4_SERVERS, WAN_V4_PUBLIC, WAN_V6_SERVERS, WAN_V6_NATIVE],
            "server": [SERVER_V4, SERVER_V4_2, SERVER_V6],
            "relay": [RELAY_V4, RELAY_V6],
            "native": [NATIVE_V6],
        }
        for site in self.sites:
            if site.nat_host:
                result[site.nat_host] = [site.public_ip, site.nat_inside_ip]
            result[site.client_host] = [site.client_ip]
        return {**result, **self.extra_addresses}

    # --- building ---------------------------------------------------------------------------

    def __enter__(self) -> Lab:
        self.up()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.down()

    def up(self) -> None:
        """Build the whole lab and start the configured roles; on any failure, tear it down."""
        _check_tools()
        try:
            self._build()
            if self.server_impl:
                self.start(Role.SERVER, self.server_impl)
                # Whoever sends right after up() (bench.cgnat's 2,000 RS) must find the
                # server's socket bound: our Python server binds ~0.5 s after its start,
                # Miredo's at once, and RS sent before that were lost (UdpNoPorts, issue 12).
                self.wait_udp_port("server", TEREDO_PORT)
            if self.relay_impl:
                self.start(Role.RELAY, self.relay_impl)
            for site, impl in zip(self.sites, self.client_impls, strict=True):
                if impl:
                    self.start(Role.CLIENT, impl, site.index)
        except BaseException:
            self.down()
            raise

    def _build(self) -> None:
        cleanup(self.prefix, self.state_dir.parent)
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self._save()  # before any namespace exists: a crash from here on is cleaned up by `down`
        for host in self.hosts():
            system.run(["ip", "netns", "add", self.ns(host)])
        for host in self.hosts():
            # No duplicate address detection: the lab picks unique addresses itself, and DAD would
            # keep link-local addresses tentative (so IPv6 unusable) for about two seconds.
            system.run(
                [
                    "ip",
                    "netns",
                    "exec",
                    self.ns(host),
                    "sysctl",
                    "-q",
                    "-w",
                    "net.ipv6.conf.all.accept_dad=0",
                    "net.ipv6.conf.default.accept_dad=0",
                ]
            )
            system.ip_batch(self.ns(host), ["link set lo up"])
        wan = self.ns("wan")
        self._sysctl(wan, ipv4_forward=True, ipv6_forward=True)
        system.ip_batch(
            wan,
            [
                "link add bs type bridge",
                "link add bn type bridge",
                "link add b6 type bridge",
                f"addr add {WAN_V4_SERVERS}/24 dev bs",
                f"addr add {WAN_V6_SERVERS}/64 dev bs nodad",
                f"addr add {WAN_V4_PUBLIC}/24 dev bn",
                f"addr add {WAN_V6_NATIVE}/64 dev b6 nodad",
                "link set bs up",
                "link set bn up",
                "link set b6 up",
            ],
        )
        self._attach(
            "server", "s", "bs", [f"{SERVER_V4}/24", f"{SERVER_V4_2}/24", f"{SERVER_V6}/64"]
        )
        self._attach("relay", "r", "bs", [f"{RELAY_V4}/24", f"{RELAY_V6}/64"])
        self._attach("native", "v6", "b6", [f"{NATIVE_V6}/64"])
        if self.native_ipv4:
            # A second link, on the servers' IPv4 segment: a dual-stack native host.
            self._attach("native", "v4", "bs", [f"{NATIVE_V4}/24"], host_if="eth1")
            system.ip_batch(self.ns("native"), [f"route add default via {WAN_V4_SERVERS}"])
        # The Teredo prefix is routed to the relay (RFC 4380 section 5.4: a relay advertises it).
        system.ip_batch(wan, [f"route add {TEREDO_PREFIX} via {RELAY_V6}"])
        for host in ("server", "relay"):
            system.ip_batch(
                self.ns(host),
                [f"route add default via {WAN_V4_SERVERS}", f"route add ::/0 via {WAN_V6_SERVERS}"],
            )
        # A relay forwards between its Teredo interface and native IPv6.
        self._sysctl(self.ns("relay"), ipv6_forward=True)
        system.ip_batch(self.ns("native"), [f"route add ::/0 via {WAN_V6_NATIVE}"])
        for site in self.sites:
            self._build_site(site)

    def _attach(
        self, host: str, wan_if: str, bridge: str, addrs: list[str], host_if: str = "eth0"
    ) -> None:
        """A veth from the wan's `bridge` to `host` (`host_if`), with `addrs` on the host's end."""
        wan, ns = self.ns("wan"), self.ns(host)
        system.ip_batch(
            wan,
            [
                f"link add {wan_if} type veth peer name {host_if} netns {ns}",
                f"link set {wan_if} master {bridge}",
                f"link set {wan_if} up",
            ],
        )
        cmds = [f"addr add {a} dev {host_if}" + (" nodad" if ":" in a else "") for a in addrs]
        system.ip_batch(ns, [*cmds, f"link set {host_if} up"])

    def _build_site(self, site: Site) -> None:
        client = self.ns(site.client_host)
        if site.host_site is not None:
            # One more veth into the host site's LAN bridge (built with that site, before).
            port = f"in{site.index}"
            system.ip_batch(
                self.ns(f"nat{site.host_site}"),
                [
                    f"link add {port} type veth peer name eth0 netns {client}",
                    f"link set {port} master lan0",
                    f"link set {port} up",
                ],
            )
            system.ip_batch(
                client,
                [
                    f"addr add {site.client_ip}/24 dev eth0",
                    "link set eth0 up",
                    f"route add default via {site.nat_inside_ip}",
                ],
            )
            return
        if site.nat_host is None:
            self._attach(site.client_host, f"c{site.index}", "bn", [f"{site.public_ip}/24"])
            system.ip_batch(client, [f"route add default via {WAN_V4_PUBLIC}"])
            return
        nat = self.ns(site.nat_host)
        self._attach(site.nat_host, f"n{site.index}", "bn", [f"{site.public_ip}/24"])
        self._sysctl(nat, ipv4_forward=True)
        inside = [
            f"route add default via {WAN_V4_PUBLIC}",
            f"link add in0 type veth peer name eth0 netns {client}",
        ]
        shared = any(s.host_site == site.index for s in self.sites)
        if shared:
            # Shared by more clients: the inside is a bridge, the local network they share.
            inside += [
                "link add lan0 type bridge",
                f"addr add {site.nat_inside_ip}/24 dev lan0",
                "link set lan0 up",
                "link set in0 master lan0",
            ]
        else:
            inside.append(f"addr add {site.nat_inside_ip}/24 dev in0")
        system.ip_batch(nat, [*inside, "link set in0 up"])
        system.ip_batch(
            client,
            [
                f"addr add {site.client_ip}/24 dev eth0",
                "link set eth0 up",
                f"route add default via {site.nat_inside_ip}",
            ],
        )
        self.exec(site.nat_host, ["nft", "-f", "-"], input_text=nft_ruleset(site.nat, "eth0"))
        if site.nat is NatKind.SYMMETRIC_UPNP:
            inside_if = "lan0" if shared else "in0"
            upnp.start(self, site, inside_if, "server", [SERVER_V4, SERVER_V4_2])

    def _sysctl(self, ns: str, *, ipv4_forward: bool = False, ipv6_forward: bool = False) -> None:
        settings = []
        if ipv4_forward:
            settings.append("net.ipv4.ip_forward=1")
        if ipv6_forward:
            settings.append("net.ipv6.conf.all.forwarding=1")
        system.run(["ip", "netns", "exec", ns, "sysctl", "-q", "-w", *settings])

    # --- running things ---------------------------------------------------------------------

    def exec(
        self,
        host: str,
        argv: Sequence[str],
        *,
        timeout: float = 30.0,
        check: bool = True,
        input_text: str | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run `argv` in `host`'s namespace to completion (bounded by `timeout`)."""
        return system.run(
            ["ip", "netns", "exec", self.ns(host), *argv],
            timeout=timeout,
            check=check,
            input_text=input_text,
        )

    def popen(
        self,
        host: str,
        argv: Sequence[str],
        *,
        name: str | None = None,
        role: str = "",
        impl: str = "",
        stdin: int | IO[Any] | None = subprocess.DEVNULL,
        stdout: int | IO[Any] | None = None,
    ) -> subprocess.Popen[bytes]:
        """Start `argv` in `host`'s namespace and record its PID (so `down` stops it).

        Output goes to `stdout` when given, else to <state>/<name>.log.
        """
        name = name or f"{host}-{len(self.procs)}"
        log = self.state_dir / f"{name}.log"
        log_fh = None
        if stdout is None:
            self.state_dir.mkdir(parents=True, exist_ok=True)
            log_fh = log.open("wb")
        try:
            # `ip netns exec` execs the command after entering the namespace: the PID we get is
            # the command's own. A new session keeps a terminal's Ctrl-C from reaching it
            # directly: the lab stops its processes itself, in order.
            proc = subprocess.Popen(
                ["ip", "netns", "exec", self.ns(host), *argv],
                stdin=stdin,
                stdout=log_fh if log_fh else stdout,
                stderr=subprocess.STDOUT if log_fh else None,
                start_new_session=True,
            )
        finally:
            if log_fh:
                log_fh.close()
        st = system.start_time(proc.pid)
        record = ProcRecord(
            name=name,
            host=host,
            pid=proc.pid,
            start_time=st if st is not None else -1,
            argv=tuple(argv),
            log=str(log) if log_fh else "",
            role=role,
            impl=impl,
        )
        with self._lock:
            self.procs.append(record)
            self._popens.append(proc)
        self._save()
        return proc

    def role_host(self, role: Role, index: int | None = None) -> str:
        if role is Role.CLIENT:
            if index is None:
                raise LabError("a client role needs the site index")
            return self.site(index).client_host
        return str(role.value)

    def start(
        self,
        role: Role | str,
        impl: Impl | str = Impl.MIREDO,
        index: int | None = None,
        extra: Sequence[str] = (),
    ) -> ProcRecord:
        """Start `role` (client `index`) with `impl`; its config file goes to the state dir."""
        role = role if isinstance(role, Role) else Role(role)
        impl_value = _as_impl(impl)
        if impl_value is None:
            raise LabError("start: an implementation is needed (miredo or teredo)")
        host = self.role_host(role, index)
        conf = self.state_dir / f"{host}.conf"
        conf.write_text(config_text(role, server=SERVER_V4, relay=RELAY_V4), encoding="ascii")
        pidfile = self.state_dir / f"{host}.pid"
        argv = command(role, impl_value, conf, pidfile, self.user) + list(extra)
        # Behind the UPnP-enabled NAT ours maps its port (RFC 6081; Miredo cannot).
        if (
            role is Role.CLIENT
            and impl_value is Impl.TEREDO
            and index is not None
            and self.site(index).nat is NatKind.SYMMETRIC_UPNP
            and "--upnp" not in extra
        ):
            argv.append("--upnp")
        self.popen(host, argv, name=host, role=role.value, impl=impl_value.value)
        return self.procs[-1]

    def stop(self, host: str) -> None:
        """Stop every recorded process of `host` (and their descendants)."""
        stop_records([r for r in self.procs if r.host == host])

    def log_tail(self, host: str, lines: int = 20) -> str:
        out = []
        for rec in self.procs:
            if rec.host == host and rec.log:
                with contextlib.suppress(OSError):
                    text = Path(rec.log).read_text(encoding="utf-8", errors="replace")
                    out.append(f"--- {rec.log}\n" + "\n".join(text.splitlines()[-lines:]))
        return "\n".join(out)

    # --- Teredo-level helpers -------------------------------------------------------------

    def teredo_address(self, index: int) -> TeredoInfo | None:
        """The Teredo address of client `index`, decoded, or None before it has qualified."""
        proc = self.exec(
            self.site(index).client_host,
            ["ip", "-6", "-o", "addr", "show", "dev", TUN_NAME, "scope", "global"],
            check=False,
        )
        for line in proc.stdout.splitlines():
            fields = line.split()
            if "inet6" in fields:
                info = decode(fields[fields.index("inet6") + 1].split("/")[0])
                if info:
                    return info
        return None

    def wait_qualified(self, index: int, timeout: float = 30.0) -> TeredoInfo:
        """Poll until client `index` has a Teredo address (bounded by `timeout`)."""
        host = self.site(index).client_host
        deadline = time.monotonic() + timeout
        while True:
            info = self.teredo_address(index)
            if info:
                return info
            recs = [r for r in self.procs if r.host == host]
            if recs and not any(r.alive() for r in recs):
                raise LabError(f"{host}: the Teredo client exited\n{self.log_tail(host)}")
            if time.monotonic() > deadline:
                raise LabError(f"{host}: not qualified after {timeout} s\n{self.log_tail(host)}")
            time.sleep(0.2)

    def wait_udp_port(self, host: str, port: int, timeout: float = 30.0) -> None:
        """Poll until a UDP socket is bound to `port` in `host`'s namespace (/proc/net/udp;
        bounded by `timeout`); raises LabError with the daemon's log when none is."""
        want = f":{port:04X}"
        deadline = time.monotonic() + timeout
        while True:
            table = self.exec(host, ["cat", "/proc/net/udp"], check=False).stdout
            locals_ = [line.split()[1] for line in table.splitlines()[1:] if line.split()]
            if any(local.endswith(want) for local in locals_):
                return
            recs = [r for r in self.procs if r.host == host]
            if recs and not any(r.alive() for r in recs):
                raise LabError(f"{host}: exited before binding UDP {port}\n{self.log_tail(host)}")
            if time.monotonic() > deadline:
                raise LabError(
                    f"{host}: nothing bound UDP {port} in {timeout} s\n{self.log_tail(host)}"
                )
            time.sleep(0.05)

    def ping(
        self, host: str, dest: str, *, count: int = 3, deadline: float = 10.0
    ) -> subprocess.CompletedProcess[str]:
        """ping -6 from `host` to `dest`: `count` echoes, within `deadline` seconds."""
        return self.exec(
            host,
            ["ping", "-6", "-n", "-c", str(count), "-i", "0.2", "-w", str(int(deadline)), dest],
            timeout=deadline + 5,
            check=False,
        )

    def mapped_ports(self, index: int, socket_owner: str) -> set[int]:
        """The public UDP ports client `index` really uses towards the server.

        Behind a NAT: the reply tuples of the NAT's conntrack entries towards the server (the
        server answers to the NAT's public address and port). Without a NAT: the client's own
        socket, picked from `ss -Hunap` by `socket_owner`, a regular expression matching the
        process part of the line (e.g. '"miredo"' or 'pid=1234,').
        """
        site = self.site(index)
        if site.nat_host is None:
            out = self.exec(site.client_host, ["ss", "-Hunap"]).stdout
            pattern = re.compile(rf":(\d+)\s.*{socket_owner}")
            return {int(m.group(1)) for m in pattern.finditer(out)}
        out = self.exec(
            site.nat_host, ["conntrack", "-L", "-p", "udp", "--orig-dst", SERVER_V4]
        ).stdout
        ports = set()
        for line in out.splitlines():
            dports = re.findall(r"dport=(\d+)", line)
            dsts = re.findall(r"dst=([\d.]+)", line)
            if len(dports) == 2 and len(dsts) == 2 and dsts[1] == site.public_ip:
                ports.add(int(dports[1]))
        return ports

    # --- tearing down -------------------------------------------------------------------------

    def down(self, *, keep_logs: bool = False) -> list[str]:
        """Stop every process, delete every namespace of the prefix; returns what was left."""
        with sigint_deferred():
            # What this object started, first (the state file may lag behind by one process).
            stop_records(self.procs)
            leftovers = cleanup(self.prefix, self.state_dir.parent, keep_logs=keep_logs)
            for proc in self._popens:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=1.0)
            self._popens.clear()
            self.procs.clear()
            return leftovers

    # --- state ------------------------------------------------------------------------------

    def _save(self) -> None:
        state = {
            "prefix": self.prefix,
            "nats": [s.nat.value for s in self.sites],
            "server_impl": _impl_name(self.server_impl),
            "relay_impl": _impl_name(self.relay_impl),
            "client_impl": [_impl_name(i) for i in self.client_impls],
            "namespaces": [self.ns(h) for h in self.hosts()],
            "procs": [r.to_json() for r in self.procs],
            "extra_hosts": self.extra_hosts,
            "extra_addresses": self.extra_addresses,
        }
        self.state_dir.mkdir(parents=True, exist_ok=True)
        tmp = self.state_dir / "state.json.tmp"
        tmp.write_text(json.dumps(state, indent=1), encoding="utf-8")
        os.replace(tmp, self.state_dir / "state.json")

    @classmethod
    def load(cls, prefix: str = DEFAULT_PREFIX, state_root: Path = STATE_ROOT) -> Lab:
        """The lab recorded under `prefix` (to inspect it or take it down from another process)."""
        system.check_prefix(prefix)
        path = state_root / prefix.rstrip("-") / "state.json"
        try:
            state = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise LabError(f"no lab recorded under prefix {prefix!r} ({path}: {exc})") from exc
        try:
            lab = cls(
                prefix,
                state.get("nats", []),
                server_impl=state.get("server_impl"),
                relay_impl=state.get("relay_impl"),
                client_impl=state.get("client_impl", []),
                state_root=state_root,
            )
            lab.procs = [ProcRecord.from_json(r) for r in state.get("procs", [])]
            lab.extra_hosts = dict(state.get("extra_hosts", {}))
            lab.extra_addresses = dict(state.get("extra_addresses", {}))
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise LabError(f"{path}: unreadable lab state: {exc}") from exc
        return lab

    def status(self) -> dict[str, Any]:
        """What exists now: namespaces, addresses, processes, NAT kinds, Teredo addresses."""
        existing = set(system.namespaces_with_prefix(self.prefix))
        hosts = []
        addrs = self.addresses()
        for host in self.hosts():
            hosts.append(
                {
                    "host": host,
                    "namespace": self.ns(host),
                    "up": self.ns(host) in existing,
                    "addresses": addrs[host],
                }
            )
        sites = []
        for site in self.sites:
            info = (
                self.teredo_address(site.index) if self.ns(site.client_host) in existing else None
            )
            sites.append(
                {
                    "client": site.client_host,
                    "nat": site.nat.value,
                    "public_ip": site.public_ip,
                    "client_ip": site.client_ip,
                    "teredo": str(info.address) if info else None,
                    "mapped": f"{info.mapped_ip}:{info.mapped_port}" if info else None,
                    "teredo_server": str(info.server) if info else None,
                    "cone_flag": info.cone if info else None,
                }
            )
        procs = [{**r.to_json(), "alive": r.alive()} for r in self.procs]
        daemons = []
        for host in self.hosts():
            if self.ns(host) in existing and self._runs_our_daemon(host):
                docs = self.daemon_status(host)
                if docs is not None:
                    daemons.append(
                        {"host": host, "summary": "; ".join(map(status_line, docs)), "docs": docs}
                    )
        return {
            "prefix": self.prefix,
            "hosts": hosts,
            "sites": sites,
            "procs": procs,
            "daemons": daemons,
            "stray_namespaces": sorted(existing - {self.ns(h) for h in self.hosts()}),
        }

    def _runs_our_daemon(self, host: str) -> bool:
        return any(r.host == host and r.impl == Impl.TEREDO.value and r.alive() for r in self.procs)

    def daemon_status(self, host: str, timeout: float = 5.0) -> list[dict[str, Any]] | None:
        """What `teredo status --json` says in `host`'s namespace (our daemons' control
        sockets), or None when nothing answers there (a Miredo host, a daemon starting)."""
        try:
            proc = self.exec(
                host,
                [sys.executable, "-m", "teredo", "status", "--json", "--timeout", "1"],
                timeout=timeout,
                check=False,
            )
        except (LabError, OSError, subprocess.SubprocessError):
            return None
        if proc.returncode != 0:
            return None
        try:
            docs = json.loads(proc.stdout)
        except ValueError:
            return None
        if not isinstance(docs, list):
            return None
        return [d for d in docs if isinstance(d, dict)]


def _check_tools() -> None:
    if os.geteuid() != 0:
        raise LabError("the lab needs root (network namespaces, nftables); run it as root")
    for tool in ("ip", "nft", "sysctl"):
        if shutil.which(tool) is None:
            raise LabError(f"the lab needs `{tool}`; run scripts/setup.sh")
