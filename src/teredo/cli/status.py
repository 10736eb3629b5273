"""`teredo status [NAME...] [--json] [--watch [SECONDS]] [--count N]`: running daemons' state.

Every daemon (client, relay, server, server worker) answers on an abstract Unix socket of its
network namespace (teredo.io.control) with one JSON document. Without NAME, every listening
`@teredo/...` socket of this namespace (/proc/net/unix) is asked; `ip netns exec NS teredo
status` shows the daemons of NS.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Final

from teredo.io.control import QueryError, listening_names, query

EXIT_NONE: Final = 1  # no daemon answered
DEFAULT_INTERVAL: Final = 1.0
MIN_INTERVAL: Final = 0.1
_CLEAR: Final = "\x1b[H\x1b[2J"  # cursor home, clear screen


def register(subparsers: Any) -> None:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "status",
        help="show the state of running teredo daemons",
        description=(
            "Ask the teredo daemons (client, relay, server) of this network namespace for "
            "their state, through their control sockets (@teredo/<role>/<interface>, "
            "@teredo/server[/<worker>]). Root or the daemons' own user only."
        ),
    )
    parser.add_argument(
        "names",
        nargs="*",
        metavar="NAME",
        help="control socket name (e.g. teredo/client/teredo; NAME also selects NAME/*, "
        "such as a server's workers); default: every @teredo/... socket here",
    )
    parser.add_argument("--json", action="store_true", help="print the JSON documents (a list)")
    parser.add_argument(
        "--watch",
        nargs="?",
        type=float,
        const=DEFAULT_INTERVAL,
        default=None,
        metavar="SECONDS",
        help=f"redraw every SECONDS (default {DEFAULT_INTERVAL:g}) until Ctrl-C",
    )
    parser.add_argument(
        "--count", type=int, default=None, metavar="N", help="with --watch: stop after N views"
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=2.0,
        metavar="SECONDS",
        help="wait this long for each daemon's answer (default 2)",
    )
    parser.set_defaults(run=run)


# --- collecting ------------------------------------------------------------------------------


def _names_for(given: Sequence[str]) -> list[str]:
    if not given:
        return listening_names()
    return [name.removeprefix("@") for name in given]


def collect(given: Sequence[str], timeout: float = 2.0) -> tuple[list[dict[str, Any]], list[str]]:
    """The documents of the daemons `given` names (every @teredo/... one when empty), and one
    message per name that did not answer."""
    docs: list[dict[str, Any]] = []
    errors: list[str] = []
    for name in _names_for(given):
        try:
            docs.append(query(name, timeout))
        except QueryError as exc:
            # A server with workers has NAME/0, NAME/1, ...: NAME stands for them all.
            under = listening_names(prefix=name.rstrip("/") + "/") if given else []
            if not under:
                errors.append(str(exc))
            for sub in under:
                try:
                    docs.append(query(sub, timeout))
                except QueryError as sub_exc:
                    errors.append(str(sub_exc))
    return docs, errors


# --- the human view --------------------------------------------------------------------------


def _duration(seconds: object) -> str:
    if not isinstance(seconds, (int, float)) or seconds < 0:
        return "?"
    s = int(seconds)
    days, s = divmod(s, 86400)
    hours, s = divmod(s, 3600)
    minutes, s = divmod(s, 60)
    if days:
        return f"{days}d{hours:02d}h{minutes:02d}m"
    if hours:
        return f"{hours}h{minutes:02d}m{s:02d}s"
    if minutes:
        return f"{minutes}m{s:02d}s"
    return f"{s}s"


def _map(value: object) -> Mapping[str, object]:
    return value if isinstance(value, Mapping) else {}


def _int(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _text(value: object) -> str:
    return "-" if value is None else str(value)


def _counts(values: Mapping[str, object]) -> str:
    """`name n, ...` for the non-zero counts, largest first."""
    items = [(k, _int(v)) for k, v in values.items() if _int(v)]
    items.sort(key=lambda kv: (-kv[1], kv[0]))
    return ", ".join(f"{k} {v}" for k, v in items)


def _client_lines(st: Mapping[str, object]) -> list[str]:
    lines = [f"state      {_text(st.get('state'))}"]
    if st.get("offline_reason") and st.get("state") != "qualified":
        lines[0] += f" ({st['offline_reason']})"
    lines.append(f"address    {_text(st.get('address'))}")
    lines.append(f"NAT        {_text(st.get('nat'))}, mapping {_text(st.get('mapping'))}")
    behaviour = _map(st.get("nat_behaviour"))
    if behaviour.get("text"):
        # What qualification saw of the NAT (core/natbehaviour.py), also when refused.
        lines[-1] += f" ({behaviour['text']})"
    if st.get("nat") == "symmetric":
        reach = behaviour.get("reach") or "relays work, peers may not"
        lines.append(
            "           symmetric NAT: "
            + (
                f"qualified with the primary server's mapping (RFC 6081); {reach}"
                if st.get("state") == "qualified"
                else "not qualified (SymmetricNat refuse, RFC 4380 5.2.1)"
            )
        )
    upnp = _map(st.get("upnp"))
    if upnp:
        lines.append(_upnp_line(upnp, st.get("nat_qualified")))
    server = _text(st.get("server"))
    if st.get("server2"):
        server += f" / {st['server2']}"
    lines.append(f"server     {server}, refresh {_text(st.get('refresh_interval'))} s")
    servers, failover = st.get("servers"), _map(st.get("failover"))
    if isinstance(servers, list) and failover:  # several servers (core/failover.py)
        tags = [
            ", ".join(
                t for t, k in (("in use", "current"), ("best", "preferred")) if failover.get(k) == i
            )
            for i in range(len(servers))
        ]
        shown = ", ".join(f"{n} ({t})" if t else str(n) for n, t in zip(servers, tags, strict=True))
        lines.append(f"servers    {shown}; moves {_int(failover.get('moves'))}")
    lines.append(f"MTU        {_text(st.get('mtu'))}")
    extensions = [
        f"{what} {_int(st.get(key))}"
        for key, what in (
            ("symmetric_ports_adopted", "ports adopted"),
            ("hairpin_peers", "hairpin peers"),
            ("predicted_peers", "predicted peers"),
            ("random_ports_announced", "ports announced"),
        )
        if _int(st.get(key))
    ]
    if extensions:  # RFC 6081 at work (docs/client.md)
        lines.append("RFC 6081   " + ", ".join(extensions))
    lines.append(
        f"peers      {_int(st.get('peers'))} ({_int(st.get('trusted_peers'))} trusted), "
        f"{_int(st.get('queued_bytes'))} B queued"
    )
    return lines


def _upnp_line(upnp: Mapping[str, object], qualified_as: object) -> str:
    """UPnP yes (io/upnp.py): what the NAT's IGD did with the client's port."""
    state = _text(upnp.get("state"))
    mapping = upnp.get("mapping")
    if upnp.get("cone") is True:
        return (
            f"UPnP       {mapping} mapped on the NAT: reachable as behind a cone NAT "
            f"(RFC 6081; qualification saw {_text(qualified_as)})"
        )
    if state == "mapped":
        return f"UPnP       {mapping} mapped on the NAT, not yet seen by the server"
    detail = upnp.get("detail")
    return f"UPnP       {state}" + (f" ({detail})" if detail else "")


def _server_lines(st: Mapping[str, object]) -> list[str]:
    addresses = st.get("addresses")
    shown = ", ".join(map(str, addresses)) if isinstance(addresses, list) else "-"
    return [
        f"addresses  {shown} (prefix {_text(st.get('prefix'))}, MTU {_text(st.get('mtu'))})",
        f"RAs        {_int(st.get('router_advertisements'))}",
        f"forwarded  bubbles {_int(st.get('bubbles_forwarded'))}, packets "
        f"{_int(st.get('packets_forwarded'))}, native {_int(st.get('native_forwarded'))}",
    ]


def _relay_lines(st: Mapping[str, object]) -> list[str]:
    kind = "host-specific relay" if st.get("host_specific") is True else "relay"
    c = _map(st.get("counters"))
    return [
        f"endpoint   UDP {_text(st.get('local'))}, {_text(st.get('tun'))}, "
        f"prefix {_text(st.get('prefix'))} ({kind})",
        f"peers      {_int(st.get('peers'))}/{_int(st.get('capacity'))} "
        f"({_int(st.get('trusted_peers'))} trusted, {_int(st.get('pending_peers'))} pending), "
        f"{_int(st.get('queued_bytes'))} B queued",
        f"packets    to teredo {_int(c.get('to_teredo'))}, from teredo "
        f"{_int(c.get('from_teredo'))}, queued {_int(c.get('queued'))}",
        f"bubbles    sent {_int(c.get('indirect_bubbles'))}+{_int(c.get('direct_bubbles'))}, "
        f"received {_int(c.get('bubbles_received'))}",
        _datapath_line(st),
    ]


def _datapath_line(st: Mapping[str, object]) -> str:
    """The data path (issue 8, docs/kernel.md) and what the kernel's programs did."""
    k = _map(_map(st.get("kernel")).get("counters"))
    if st.get("datapath") != "kernel" or not k:
        return f"datapath   {_text(st.get('datapath') or 'user')}"
    up_encap = _int(k.get("encap_no_peer")) + _int(k.get("encap_stale"))
    up_encap += _int(k.get("encap_partial")) + _int(k.get("encap_other"))
    up_decap = _int(k.get("decap_no_peer")) + _int(k.get("decap_mapping"))
    up_decap += _int(k.get("decap_other")) + _int(k.get("decap_checksum"))
    return (
        f"datapath   kernel: map {_int(k.get('map_entries'))}, encapsulated "
        f"{_int(k.get('encap'))} (passed up {up_encap}), decapsulated {_int(k.get('decap'))} "
        f"(passed up {up_decap})"
    )


_ROLE_LINES: Final[dict[str, Callable[[Mapping[str, object]], list[str]]]] = {
    "client": _client_lines,
    "server": _server_lines,
    "relay": _relay_lines,
}


def _fault_line(st: Mapping[str, object]) -> str:
    faults = {f"send {k}": v for k, v in _map(st.get("send_errors")).items()}
    for key in ("configuration_errors", "data_path_faults"):
        faults[key.replace("_", " ")] = st.get(key)
    return _counts(faults)


def render_one(doc: Mapping[str, object]) -> list[str]:
    """The block of one daemon: a title line, then indented lines (non-zero counts only)."""
    role = _text(doc.get("role"))
    title = f"{role} @{_text(doc.get('control'))}  pid {_text(doc.get('pid'))}"
    title += f"  up {_duration(doc.get('uptime'))}"
    if doc.get("version"):
        title += f"  (teredo {doc['version']})"
    lines = [title]
    body: list[str] = []
    if doc.get("error"):
        body.append(f"ERROR      {doc['error']}")
    st = _map(doc.get("status"))
    role_lines = _ROLE_LINES.get(role)
    if role_lines is not None:
        body += role_lines(st)
    announce = _map(st.get("announce"))
    if announce:  # --announce-table (docs/scale.md)
        state = "announced" if announce.get("announced") else "WITHDRAWN"
        raw = announce.get("prefixes")
        prefixes = ", ".join(map(str, raw)) if isinstance(raw, list) else ""
        body.append(
            f"announce   {prefixes} in table {_text(announce.get('table'))} "
            f"({_text(announce.get('interface'))}): {state}"
        )
    faults = _fault_line(st)
    if faults:
        body.append(f"faults     {faults}")
    drops = _counts(_map(st.get("drops")))
    body.append(f"drops      {drops or 'none'}")
    lines += ["  " + line for line in body]
    return lines


def _server_total(docs: Sequence[Mapping[str, object]]) -> str | None:
    workers = [d for d in docs if d.get("role") == "server" and d.get("worker") is not None]
    if len(workers) < 2:
        return None
    total: dict[str, int] = {}
    drops: dict[str, object] = {}
    for doc in workers:
        st = _map(doc.get("status"))
        for key in (
            "router_advertisements",
            "bubbles_forwarded",
            "packets_forwarded",
            "native_forwarded",
        ):
            total[key] = total.get(key, 0) + _int(st.get(key))
        for reason, n in _map(st.get("drops")).items():
            drops[reason] = _int(drops.get(reason)) + _int(n)
    return (
        f"server total ({len(workers)} workers): RAs {total['router_advertisements']}, bubbles "
        f"{total['bubbles_forwarded']}, packets {total['packets_forwarded']}, native "
        f"{total['native_forwarded']}, drops {_counts(drops) or 'none'}"
    )


def render(docs: Sequence[Mapping[str, object]], errors: Iterable[str] = ()) -> str:
    """The human view of every daemon found."""
    blocks = ["\n".join(render_one(doc)) for doc in docs]
    total = _server_total(docs)
    if total is not None:
        blocks.append(total)
    blocks += [f"no answer: {message}" for message in errors]
    return "\n\n".join(blocks)


NO_DAEMON: Final = (
    "no teredo daemon found in this network namespace (no listening @teredo/... socket in "
    "/proc/net/unix); for a daemon in namespace NS: ip netns exec NS teredo status"
)


# --- the verb --------------------------------------------------------------------------------


def _once(args: argparse.Namespace, *, compact: bool) -> tuple[str, str, int]:
    """(stdout text, stderr text, exit status) of one view."""
    docs, errors = collect(args.names, args.timeout)
    status = 0 if docs else EXIT_NONE
    err = "\n".join(errors)
    if args.json:
        out = json.dumps(docs, separators=(",", ":")) if compact else json.dumps(docs, indent=1)
        return out, err, status
    if not docs:
        return "", err or NO_DAEMON, status
    return render(docs, errors), "", status


def run(args: argparse.Namespace) -> int:
    if args.timeout <= 0:
        print("command line: --timeout: must be positive", file=sys.stderr)
        return 2
    if args.watch is None:
        if args.count is not None:
            print("command line: --count: only with --watch", file=sys.stderr)
            return 2
        out, err, status = _once(args, compact=False)
        if out:
            print(out)
        if err:
            print(err, file=sys.stderr)
        return status
    if args.watch < MIN_INTERVAL:
        print(f"command line: --watch: at least {MIN_INTERVAL:g} s", file=sys.stderr)
        return 2
    if args.count is not None and args.count < 1:
        print("command line: --count: must be at least 1", file=sys.stderr)
        return 2
    return _watch(args)


def _watch(args: argparse.Namespace) -> int:
    clear = sys.stdout.isatty() and not args.json
    views = 0
    status = EXIT_NONE
    try:
        while args.count is None or views < args.count:
            if views:
                time.sleep(args.watch)
            out, err, status = _once(args, compact=True)
            views += 1
            if args.json:
                print(out, flush=True)  # one JSON list per line (JSON Lines)
                if err:
                    print(err, file=sys.stderr, flush=True)
                continue
            stamp = time.strftime("%H:%M:%S")
            header = f"teredo status  {stamp}  every {args.watch:g} s, Ctrl-C to stop"
            body = out or err
            print(f"{_CLEAR if clear else ''}{header}\n\n{body}\n", flush=True)
    except KeyboardInterrupt:
        return 0  # Ctrl-C is how a watch ends
    return status
