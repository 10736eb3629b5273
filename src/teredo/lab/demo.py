"""`teredo lab demo`: build a lab, show Teredo working end to end, print a summary, tear down."""

from __future__ import annotations

import re
import signal
import sys
import time
from collections.abc import Callable, Sequence
from types import FrameType

from teredo.lab import watch
from teredo.lab.nat import NatKind
from teredo.lab.roles import Impl
from teredo.lab.statusline import status_line
from teredo.lab.system import LabError
from teredo.lab.teredoaddr import TeredoInfo
from teredo.lab.topology import (
    NATIVE_V6,
    RELAY_V4,
    SERVER_V4,
    SERVER_V4_2,
    Lab,
    ping_counts,
)

DEFAULT_NATS = (
    NatKind.PORT_RESTRICTED,
    NatKind.PORT_RESTRICTED,
    NatKind.FULL_CONE,
    NatKind.SYMMETRIC,
)
# NATs that the secondary server address shows as symmetric, and those a symmetric client's
# peer may sit behind (RFC 6081 Symmetric NAT Support: cone or address-restricted).
_SYMMETRIC = (NatKind.SYMMETRIC, NatKind.SYMMETRIC_SEQUENTIAL)
_CONE = (NatKind.FULL_CONE, NatKind.ADDRESS_RESTRICTED)
# Our daemons in every role, with one Miredo client among ours to show them talking.
DEFAULT_CLIENTS = (Impl.TEREDO, Impl.MIREDO, Impl.TEREDO, Impl.TEREDO)

TOPOLOGY = """\
                   {p}wan: router, IPv4 + IPv6 forwarding, three bridges
            bs                                 bn                                 b6
  198.51.100.0/24 + 2001:db8:2::/64       203.0.113.0/24                     2001:db8:1::/64
     |                 |                 |                     |                   |
   server            relay             NAT n                 client n (no NAT)   native host
   {srv}     {relay}     203.0.113.(10+n)      203.0.113.(100+n)   {native}
   {srv2}     2001:db8:2::20      | 192.168.n.0/24
   2001:db8:2::10                      client n 192.168.n.2
  2001::/32 is routed to the relay; each client's Teredo interface is called teredo"""

# A lab address on the servers' segment where no host exists: the probe must find it dead.
DEAD_SERVER_V4 = "198.51.100.99"
_LOG_STAMP = re.compile(r"^[\d-]+ [\d:,]+ [A-Z]+ ")  # "2026-11-27 04:37:08,233 WARNING "
_RTT_RE = re.compile(r"= [\d.]+/([\d.]+)/")


def _ping_summary(output: str) -> tuple[int, int, str]:
    sent, got = ping_counts(output) or (0, 0)
    rtt = _RTT_RE.search(output)
    return sent, got, f"avg rtt {rtt.group(1)} ms" if rtt else "no reply"


def _wait_for_log(lab: Lab, host: str, word: str, *, timeout: float) -> str | None:
    """The first line of `host`'s log that mentions `word`, polled for at most `timeout` s."""
    deadline = time.monotonic() + timeout
    while True:
        for line in lab.log_tail(host).splitlines():
            if word in line.lower():
                return _LOG_STAMP.sub("", line.strip())
        if time.monotonic() >= deadline:
            return None
        time.sleep(0.2)


def raise_interrupt(signum: int, _frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


Results = list[tuple[str, bool, str]]  # (what, passed, detail): one line of the summary


def _demo_nats(nats: Sequence[NatKind]) -> Sequence[NatKind]:
    """The NATs of the demo: `--nat symmetric` alone gets two cone-NAT clients to reach too
    (Miredo's and ours: by default the second client is Miredo's, the third ours)."""
    if any(k in _SYMMETRIC for k in nats) and not any(k in _CONE for k in nats):
        nats = [*nats, NatKind.FULL_CONE, NatKind.FULL_CONE]
    if len(nats) < 2:
        raise LabError("the demo needs at least two clients")
    return nats


def _demo_clients(nats: Sequence[NatKind], client_impl: Impl | Sequence[Impl] | None) -> list[Impl]:
    """The implementation of each client: by default ours with one Miredo among them."""
    if client_impl is None:
        client_impl = (
            DEFAULT_CLIENTS[: len(nats)] if len(nats) <= len(DEFAULT_CLIENTS) else Impl.TEREDO
        )
    return [client_impl] * len(nats) if isinstance(client_impl, Impl) else list(client_impl)


def run_demo(
    prefix: str,
    nats: Sequence[NatKind] = DEFAULT_NATS,
    *,
    server_impl: Impl = Impl.TEREDO,
    relay_impl: Impl = Impl.TEREDO,
    client_impl: Impl | Sequence[Impl] | None = None,
    count: int = 3,
    out: Callable[[str], None] = print,
) -> int:
    """Run the demo; 0 when every step worked. The lab is torn down however it ends."""
    nats = _demo_nats(nats)
    clients = _demo_clients(nats, client_impl)
    lab = Lab(prefix, nats, server_impl=server_impl, relay_impl=relay_impl, client_impl=clients)
    results: Results = []

    def steps() -> int:
        _build(lab, prefix, clients, (server_impl, relay_impl), out)
        infos = _show_qualification(lab, clients, results, out)
        _show_pair(lab, infos, count=count, results=results, out=out)
        _show_native(lab, infos, count=count, results=results, out=out)
        _show_symmetric(lab, infos, count=count, results=results, out=out)
        _show_status(
            lab,
            infos,
            clients=clients,
            impls=(server_impl, relay_impl),
            results=results,
            out=out,
        )
        _show_probe(lab, results, out)
        return summarize(results, out)

    return run_in_lab(lab, steps, out)


def _build(
    lab: Lab,
    prefix: str,
    clients: Sequence[Impl],
    impls: tuple[Impl, Impl],
    out: Callable[[str], None],
) -> None:
    """[1]: the topology, then the lab built and its daemons started."""
    server_impl, relay_impl = impls
    out(f"== Teredo lab demo: prefix {prefix!r} ==")
    out(
        TOPOLOGY.format(p=prefix, srv=SERVER_V4, srv2=SERVER_V4_2, relay=RELAY_V4, native=NATIVE_V6)
    )
    out("")
    kinds = ", ".join(
        f"client{s.index}: {impl.value} behind {s.nat.value}"
        for s, impl in zip(lab.sites, clients, strict=True)
    )
    out(f"[1] building: server={server_impl.value} relay={relay_impl.value} ({kinds})")
    started = time.monotonic()
    lab.up()
    watch.install(lab)
    out(f"    built and started in {time.monotonic() - started:.1f} s")


def _show_qualification(
    lab: Lab, clients: Sequence[Impl], results: Results, out: Callable[[str], None]
) -> dict[int, TeredoInfo]:
    """[2]: each client's Teredo address (RFC 4380 section 5.2.1), by site index."""
    out("[2] qualification (RFC 4380 section 5.2.1): each client learns its Teredo address")
    infos: dict[int, TeredoInfo] = {}
    for site, impl in zip(lab.sites, clients, strict=True):
        if site.nat in _SYMMETRIC:
            # RFC 4380 has no answer behind a symmetric NAT; our client finds it out with
            # the secondary server address, says so once and qualifies with the primary
            # server's mapping (RFC 6081 Symmetric NAT Support), as Miredo does.
            said = _wait_for_log(lab, site.client_host, "symmetric nat", timeout=15)
            out(f"    client{site.index} ({impl.value}) behind a symmetric NAT:")
            out(f"        {said or 'no report of a symmetric NAT in its log'}")
            if impl is Impl.TEREDO:
                results.append(
                    (
                        f"client{site.index} reports symmetric NAT",
                        bool(said),
                        (said or "not reported").split(":")[0],
                    )
                )
        try:
            info = lab.wait_qualified(site.index, timeout=30)
        except LabError as exc:
            out(f"    client{site.index}: NOT qualified: {exc}")
            results.append((f"client{site.index} qualifies", False, str(exc).splitlines()[0]))
            continue
        infos[site.index] = info
        ok = str(info.mapped_ip) == site.public_ip
        where = "with no NAT" if site.nat is NatKind.NONE else f"behind a {site.nat.value} NAT"
        out(f"    client{site.index} ({impl.value}) {where} (public {site.public_ip}):")
        out(f"        {info.address}")
        out(
            f"        server {info.server}, mapped {info.mapped_ip}:{info.mapped_port}"
            f" {'= the public address' if ok else '!= the public address ' + site.public_ip}"
        )
        results.append(
            (
                f"client{site.index} qualifies ({site.nat.value})",
                ok,
                f"{info.mapped_ip}:{info.mapped_port}",
            )
        )
    return infos


def _show_pair(
    lab: Lab,
    infos: dict[int, TeredoInfo],
    *,
    count: int,
    results: Results,
    out: Callable[[str], None],
) -> None:
    """[3]: two clients not behind a symmetric NAT talk directly after bubbles (5.2.4)."""
    pr = [s.index for s in lab.sites if s.nat is NatKind.PORT_RESTRICTED and s.index in infos]
    # RFC 4380 pair: two clients not behind a symmetric NAT ([5c] shows that case).
    plain = sorted(i for i in infos if lab.site(i).nat not in _SYMMETRIC)
    pair = pr[:2] if len(pr) >= 2 else plain[:2]
    if len(pair) != 2:
        return
    a, b = pair
    before = watch.read(lab)
    out(
        f"[3] client{a} -> client{b} ({lab.site(a).nat.value} to {lab.site(b).nat.value}),"
        " directly after bubbles (RFC 4380 section 5.2.4):"
    )
    ping = lab.ping(f"client{a}", str(infos[b].address), count=count)
    after = watch.read(lab)
    sent, got, rtt = _ping_summary(ping.stdout)
    echo = after["echo"] - before["echo"]
    bubbles = after["bubbles"] - before["bubbles"]
    out(
        f"    {got}/{sent} replies, {rtt}; through the server: {bubbles} bubble(s), "
        f"{echo} echo packet(s)"
    )
    results.append(
        (
            f"client{a} <-> client{b} direct",
            got > 0 and echo == 0,
            f"{got}/{sent}, {echo} echo via server",
        )
    )


def _show_native(
    lab: Lab,
    infos: dict[int, TeredoInfo],
    *,
    count: int,
    results: Results,
    out: Callable[[str], None],
) -> None:
    """[4] and [5]: the first client to the native host and the native host to the last one,
    both through the relay."""
    if not infos:
        return
    first = sorted(infos)[0]
    out(f"[4] client{first} -> native host {NATIVE_V6} through the relay:")
    sent, got, rtt = _ping_summary(lab.ping(f"client{first}", NATIVE_V6, count=count).stdout)
    out(f"    {got}/{sent} replies, {rtt}")
    results.append((f"client{first} -> native", got > 0, f"{got}/{sent}"))
    last = sorted(infos)[-1]
    out(f"[5] native host -> client{last} ({infos[last].address}) through the relay:")
    sent, got, rtt = _ping_summary(lab.ping("native", str(infos[last].address), count=count).stdout)
    out(f"    {got}/{sent} replies, {rtt}")
    results.append((f"native -> client{last}", got > 0, f"{got}/{sent}"))


def _show_symmetric(
    lab: Lab,
    infos: dict[int, TeredoInfo],
    *,
    count: int,
    results: Results,
    out: Callable[[str], None],
) -> None:
    """The client behind a symmetric NAT: native IPv6 both ways through the relay (what RFC
    6081's Symmetric NAT Support gives at once), then a client behind a cone NAT."""
    sym = next((s.index for s in lab.sites if s.nat in _SYMMETRIC and s.index in infos), None)
    if sym is None:
        return
    out(f"[5s] client{sym} behind a symmetric NAT <-> native host {NATIVE_V6} through the relay:")
    sent, got, rtt = _ping_summary(lab.ping(f"client{sym}", NATIVE_V6, count=count).stdout)
    back_sent, back_got, back_rtt = _ping_summary(
        lab.ping("native", str(infos[sym].address), count=count).stdout
    )
    out(f"    out {got}/{sent} replies, {rtt}; back {back_got}/{back_sent} replies, {back_rtt}")
    results.append(
        (
            f"client{sym} (symmetric) <-> native",
            got > 0 and back_got > 0,
            f"{got}/{sent}, {back_got}/{back_sent}",
        )
    )
    cones = [s.index for s in lab.sites if s.nat in _CONE and s.index in infos]
    for cone in cones:
        _symmetric_and_cone(lab, infos, sym, cone, count=count, results=results, out=out)


def _symmetric_and_cone(
    lab: Lab,
    infos: dict[int, TeredoInfo],
    sym: int,
    cone: int,
    *,
    count: int,
    results: Results,
    out: Callable[[str], None],
) -> None:
    """[5c]: the symmetric-NAT client and a cone-NAT one, both ways. Our cone client accepts
    the symmetric side's new port (RFC 6081 Symmetric NAT Support, receiving side): counted.
    Miredo's answers at the server mapping only: a failure there is shown, not counted."""
    cone_kind = lab.site(cone).nat.value
    impl = lab.client_impls[cone - 1]
    who = impl.value if impl is not None else "-"
    for a, b in ((sym, cone), (cone, sym)):
        kinds = (
            f"{'symmetric' if a == sym else cone_kind} to {'symmetric' if b == sym else cone_kind}"
        )
        out(f"[5c] client{a} -> client{b} ({kinds}, the cone client is {who}), Teredo to Teredo:")
        sent, got, rtt = _ping_summary(
            lab.ping(f"client{a}", str(infos[b].address), count=count).stdout
        )
        out(f"    {got}/{sent} replies, {rtt}")
        if got or impl is not Impl.MIREDO:
            results.append((f"client{a} -> client{b} ({kinds})", got > 0, f"{got}/{sent}"))
        else:
            out("    (Miredo's client lacks RFC 6081's receiving-side port rule: not counted)")


def summarize(results: Sequence[tuple[str, bool, str]], out: Callable[[str], None]) -> int:
    """The PASS/FAIL table of a demo; 0 when there are results and all passed."""
    out("")
    out("== summary ==")
    width = max(len(name) for name, _, _ in results) if results else 10
    for name, ok, detail in results:
        out(f"  {'PASS' if ok else 'FAIL'}  {name.ljust(width)}  {detail}")
    return 0 if results and all(ok for _, ok, _ in results) else 1


def run_in_lab(lab: Lab, steps: Callable[[], int], out: Callable[[str], None]) -> int:
    """A demo's `steps` run in `lab`, their result the exit status: SIGTERM stops them as Ctrl-C
    does (exit 130), and the lab is torn down however they end."""
    old_term = signal.signal(signal.SIGTERM, raise_interrupt)
    try:
        return steps()
    except KeyboardInterrupt:
        out("interrupted")
        return 130
    finally:
        tear_down(lab, out)
        signal.signal(signal.SIGTERM, old_term)


def tear_down(lab: Lab, out: Callable[[str], None]) -> None:
    out("tearing down ...")
    leftovers = lab.down()
    out("    nothing left behind" if not leftovers else f"    LEFT: {', '.join(leftovers)}")


def _teredo(lab: Lab, host: str, *args: str) -> tuple[int, list[str]]:
    """Runs `teredo ARGS` in `host`'s namespace: exit status and output lines."""
    done = lab.exec(host, [sys.executable, "-m", "teredo", *args], check=False, timeout=30)
    return done.returncode, (done.stdout + done.stderr).rstrip().splitlines()


def _show_status(
    lab: Lab,
    infos: dict[int, TeredoInfo],
    *,
    clients: Sequence[Impl],
    impls: tuple[Impl, Impl],
    results: Results,
    out: Callable[[str], None],
) -> None:
    """`teredo status` in the namespaces of our daemons: what they say of themselves."""
    ours = [i for i in sorted(infos) if clients[i - 1] is Impl.TEREDO]
    hosts = [f"client{ours[0]}"] if ours else []
    server_impl, relay_impl = impls
    hosts += [
        h for h, impl in (("relay", relay_impl), ("server", server_impl)) if impl is Impl.TEREDO
    ]
    if not hosts:
        return
    out("[6] teredo status: each of our daemons tells its state through its control socket")
    for host in hosts:
        code, lines = _teredo(lab, host, "status")
        out(f"    # ip netns exec {lab.ns(host)} teredo status")
        for line in lines:
            out(f"    {line}")
        docs = lab.daemon_status(host) or []
        if host.startswith("client"):
            index = int(host.removeprefix("client"))
            st = docs[0].get("status", {}) if docs else {}
            state, address = st.get("state"), st.get("address")
            ok = code == 0 and state == "qualified" and address == str(infos[index].address)
            results.append((f"{host} status", ok, f"{state}, {address}"))
        else:
            detail = status_line(docs[0]) if docs else f"exit {code}, no answer"
            results.append((f"{host} status", code == 0 and bool(docs), detail))


def _show_probe(lab: Lab, results: Results, out: Callable[[str], None]) -> None:
    """`teredo probe` from behind a cone-type NAT and a symmetric one: reach, RTT, NAT type."""
    cone = next((s for s in lab.sites if s.nat is NatKind.PORT_RESTRICTED), None)
    cone = cone or next((s for s in lab.sites if s.nat is not NatKind.SYMMETRIC), None)
    symmetric = next((s for s in lab.sites if s.nat is NatKind.SYMMETRIC), None)
    sites = [s for s in (cone, symmetric) if s is not None]
    if not sites:
        return
    out(f"[7] teredo probe: which server to use, and what the NAT is ({DEAD_SERVER_V4}: no host)")
    for site in sites:
        args = ("probe", "--rounds", "2", "--timeout", "0.5", SERVER_V4, DEAD_SERVER_V4)
        code, lines = _teredo(lab, site.client_host, *args)
        out(f"    # ip netns exec {lab.ns(site.client_host)} teredo {' '.join(args)}")
        for line in lines:
            out(f"    {line}")
        best = lines[-1] if lines else ""
        ok = code == 0 and best.startswith(f"best: {SERVER_V4} ")
        if site.nat is NatKind.SYMMETRIC:
            ok = ok and "symmetric" in best
        results.append((f"probe from behind {site.nat.value}", ok, best.split(" (")[0]))
