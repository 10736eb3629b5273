"""Prometheus metrics of a daemon: `--metrics ADDRESS:PORT` (MetricsAddress), off by default.

The metrics are the status document `teredo status` shows (teredo.io.control), turned into
Prometheus metric families at scrape time by `StatusCollector`: nothing is counted twice, and
a daemon that is never scraped pays nothing. The document is built in the daemon's own loop
thread (`loop_documents`), exactly as for the control socket, so no counter is read while the
data path writes it. A server with `--workers` is scraped in its supervising process, which
asks every worker's control socket (`control_documents`); each sample then has a `worker`
label.

Names follow Prometheus' conventions (https://prometheus.io/docs/practices/naming/): prefix
`teredo_`, counters end in `_total`, units in the name (`_bytes`, `_seconds`), one metric
per meaning and a label where the meaning is the same (`reason`, `socket`, `state`). The
exposition is prometheus-client's; the HTTP server is the standard library's, bounded here
(`MAX_ACTIVE_SCRAPES` at once, `REQUEST_TIMEOUT` per request).

The kernel data path adds its own counters under the status key "kernel" (see
`kernel_families`, the one place that turns them into metrics).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import re
import socket
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final
from wsgiref.simple_server import WSGIRequestHandler, make_server

from prometheus_client import CollectorRegistry, ProcessCollector, make_wsgi_app
from prometheus_client.exposition import ThreadingWSGIServer
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    InfoMetricFamily,
    Metric,
)

from teredo.core.client import ClientState
from teredo.core.config import MetricsAddress
from teredo.core.counters import DropReason
from teredo.io.control import (
    ControlIdentity,
    QueryError,
    listening_names,
    query,
    status_document,
)

log = logging.getLogger("teredo.metrics")

PREFIX: Final = "teredo"
# Scrapes served at once; more connections are closed at once (a flood of scrapers cannot make
# the daemon start threads without bound).
MAX_ACTIVE_SCRAPES: Final = 4
REQUEST_TIMEOUT: Final = 5.0  # seconds a scraper may take to send its request and read
STATUS_TIMEOUT: Final = 2.0  # seconds the daemon's loop may take to build its document
Documents = Callable[[], list[dict[str, object]]]

# The drop reasons every daemon of a role can count, exported as 0 until they happen (so that
# rate() sees the first drop): the codec and common groups, and the role's own group
# (teredo.core.counters numbers each group in its own range).
_ROLE_REASON_RANGES: Final[Mapping[str, tuple[range, ...]]] = {
    "client": (range(100), range(150, 200), range(250, 300)),
    "server": (range(150),),
    "relay": (range(100), range(200, 300)),
}


def _role_reasons(role: str) -> list[str]:
    ranges = _ROLE_REASON_RANGES.get(role, ())
    return [r.name.lower() for r in DropReason if any(r.value in span for span in ranges)]


_NAME_PART: Final = re.compile(r"[a-z_][a-z0-9_]*")


def _number(value: object) -> float | None:
    """A sample value from a status field: ints and floats, never bools or text."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def _mapping(value: object) -> Mapping[str, object]:
    return value if isinstance(value, dict) else {}


@dataclass
class _Families:
    """The metric families of one scrape, created on first use, with the same base labels
    (`worker` for a server's workers, none otherwise) on every sample."""

    base_names: tuple[str, ...]
    families: dict[str, Metric] = field(default_factory=dict)

    def _family(
        self, kind: Callable[..., Metric], name: str, text: str, extra: Sequence[str]
    ) -> Any:
        family = self.families.get(name)
        if family is None:
            family = kind(name, text, labels=[*self.base_names, *extra])
            self.families[name] = family
        return family

    def counter(
        self,
        name: str,
        text: str,
        value: object,
        base: Sequence[str],
        **extra: str,
    ) -> None:
        number = _number(value)
        if number is not None:
            family = self._family(CounterMetricFamily, f"{PREFIX}_{name}_total", text, [*extra])
            family.add_metric([*base, *extra.values()], number)

    def gauge(self, name: str, text: str, value: object, base: Sequence[str], **extra: str) -> None:
        number = _number(value)
        if number is not None:
            family = self._family(GaugeMetricFamily, f"{PREFIX}_{name}", text, [*extra])
            family.add_metric([*base, *extra.values()], number)

    def info(self, name: str, text: str, values: Mapping[str, object], base: Sequence[str]) -> None:
        shown = {k: "" if v is None else str(v) for k, v in values.items()}
        family = self._family(InfoMetricFamily, f"{PREFIX}_{name}", text, [])
        family.add_metric(list(base), shown)


# --- one document -> samples -----------------------------------------------------------------


def _common(out: _Families, doc: Mapping[str, object], base: Sequence[str]) -> None:
    role = str(doc.get("role", ""))
    out.info(
        "daemon",
        "the daemon: role, version, control socket and interface",
        {
            "role": role,
            "version": doc.get("version"),
            "control": doc.get("control"),
            "interface": doc.get("interface"),
        },
        base,
    )
    out.gauge("start_time_seconds", "start time of the daemon, Unix time", doc.get("started"), base)
    st = _mapping(doc.get("status"))
    drops = _mapping(st.get("drops"))
    for reason in sorted({*_role_reasons(role), *drops}):
        if _NAME_PART.fullmatch(reason):
            out.counter(
                "drops",
                "packets dropped, by reason (teredo.core.counters.DropReason)",
                drops.get(reason, 0),
                base,
                reason=reason,
            )
    for sock, errors in _mapping(st.get("send_errors")).items():
        out.counter("send_errors", "failed sends, by socket", errors, base, socket=sock)
    out.counter(
        "configuration_errors", "failed interface changes", st.get("configuration_errors"), base
    )
    out.counter("data_path_faults", "unexpected data path errors", st.get("data_path_faults"), base)
    out.gauge("peers", "entries of the peer table", st.get("peers"), base)
    out.gauge("trusted_peers", "trusted peers (direct contact)", st.get("trusted_peers"), base)
    out.gauge("pending_peers", "peers waiting for trust", st.get("pending_peers"), base)
    out.gauge("peer_capacity", "size of the peer table", st.get("capacity"), base)
    out.gauge(
        "queued_bytes", "bytes queued for peers waiting for trust", st.get("queued_bytes"), base
    )
    kernel = st.get("kernel")
    if isinstance(kernel, dict):
        kernel_families(out, kernel, base)


_RFC6081_COUNTERS: Final = {
    "symmetric_ports_adopted": "symmetric-NAT peers' new ports believed (RFC 6081)",
    "hairpin_peers": "peers behind our NAT reached over the local network (RFC 6081)",
    "predicted_peers": "peers met at a port their Random Port trailer announced (RFC 6081)",
    "random_ports_announced": "Random Port trailers sent behind a sequential NAT (RFC 6081)",
}


def _client(out: _Families, st: Mapping[str, object], base: Sequence[str]) -> None:
    state = str(st.get("state", ""))
    for known in sorted({*(s.value for s in ClientState), state}):
        out.gauge(
            "client_state",
            "1 for the client's state (offline, qualifying, qualified, ...), 0 for the others",
            int(known == state),
            base,
            state=known,
        )
    out.gauge(
        "client_qualified",
        "1 when the client has a Teredo address",
        int(state == ClientState.QUALIFIED),
        base,
    )
    out.info(
        "client",
        "the client's Teredo address, NAT, mapping and server",
        {k: st.get(k) for k in ("address", "nat", "mapping", "server")},
        base,
    )
    out.gauge(
        "client_refresh_interval_seconds", "interval of refresh", st.get("refresh_interval"), base
    )
    out.gauge("client_mtu_bytes", "MTU of the tunnel", st.get("mtu"), base)
    out.gauge("client_probes", "bubble and ping procedures running", st.get("probes"), base)
    out.counter("client_suspends", "clock jumps seen (suspend)", st.get("suspends"), base)
    out.counter("client_slow_inputs", "inputs that took too long", st.get("slow_inputs"), base)
    # RFC 6081 extensions at work (core/symmetric.py, core/hairpin.py, core/portpredict.py).
    for key, text in _RFC6081_COUNTERS.items():
        out.counter(f"client_{key}", text, st.get(key), base)
    upnp = _mapping(st.get("upnp"))
    if upnp:
        out.gauge(
            "client_upnp_cone",
            "1 while a UPnP mapping makes the NAT a cone",
            int(upnp.get("cone") is True),
            base,
        )


_SERVER_COUNTERS: Final = {
    "router_advertisements": "Router Advertisements sent",
    "bubbles_forwarded": "bubbles forwarded to clients",
    "packets_forwarded": "packets forwarded between Teredo clients",
    "native_forwarded": "packets forwarded to native IPv6",
}


def _server(out: _Families, st: Mapping[str, object], base: Sequence[str]) -> None:
    for key, text in _SERVER_COUNTERS.items():
        out.counter(f"server_{key}", text, st.get(key), base)
    addresses = st.get("addresses")
    shown = addresses if isinstance(addresses, list) else []
    out.info(
        "server",
        "the server's addresses and prefix",
        {
            "primary": shown[0] if shown else None,
            "secondary": shown[1] if len(shown) > 1 else None,
            "prefix": st.get("prefix"),
        },
        base,
    )
    kernel = st.get("kernel")
    if isinstance(kernel, dict):
        kernel_families(out, kernel, base)


_RELAY_COUNTERS: Final = {
    "to_teredo": "native packets sent to trusted Teredo peers",
    "from_teredo": "Teredo packets handed to the native side",
    "queued": "native packets queued for a peer waiting for trust",
    "indirect_bubbles": "indirect bubbles sent (through the peer's server)",
    "direct_bubbles": "direct bubbles sent",
    "bubbles_received": "bubbles received",
    "trusted": "peers that became trusted",
    "remapped": "peers remapped to another port",
    "given_up": "peers given up after unanswered bubbles",
    "unreachables": "ICMPv6 errors written to the tunnel",
    "unknown_served": "client packets forwarded with no peer entry (anycast relay)",
}


def _relay(out: _Families, st: Mapping[str, object], base: Sequence[str]) -> None:
    # Every counter of the relay machine appears, with a generic help for new ones.
    for key, value in _mapping(st.get("counters")).items():
        if _NAME_PART.fullmatch(key):
            text = _RELAY_COUNTERS.get(key, f"relay counter {key}")
            out.counter(f"relay_{key}", text, value, base)
    out.counter("relay_peers_evicted", "peers evicted from a full table", st.get("evicted"), base)
    out.counter("relay_peers_refused", "new peers refused by a full table", st.get("refused"), base)
    out.info(
        "relay",
        "the relay's endpoint, prefix and kind",
        {
            "local": st.get("local"),
            "prefix": st.get("prefix"),
            "host_specific": str(st.get("host_specific") is True).lower(),
        },
        base,
    )


_ROLES: Final[Mapping[str, Callable[[_Families, Mapping[str, object], Sequence[str]], None]]] = {
    "client": _client,
    "server": _server,
    "relay": _relay,
}


def kernel_families(out: _Families, kernel: Mapping[str, object], base: Sequence[str]) -> None:
    """The kernel data path's counters, from the status key "kernel" of a daemon.

    The hook for the eBPF data path: its driver puts in its status document
    `"kernel": {"counters": {NAME: N, ...}, "drops": {REASON: N, ...}}` (NAME and REASON in
    lower_snake_case); they appear as `teredo_kernel_<NAME>_total` and
    `teredo_kernel_drops_total{reason=...}`, next to the Python data path's metrics.
    """
    for name, value in _mapping(kernel.get("counters")).items():
        if _NAME_PART.fullmatch(name):
            out.counter(f"kernel_{name}", f"kernel data path: {name}", value, base)
    for reason, value in _mapping(kernel.get("drops")).items():
        if _NAME_PART.fullmatch(reason):
            out.counter(
                "kernel_drops",
                "packets dropped by the kernel data path",
                value,
                base,
                reason=reason,
            )


def families(docs: Iterable[Mapping[str, object]]) -> list[Metric]:
    """The metric families of status documents (one daemon, or a server's workers)."""
    docs = list(docs)
    with_worker = any(doc.get("worker") is not None for doc in docs)
    out = _Families(("worker",) if with_worker else ())
    for doc in docs:
        base = [str(doc.get("worker", ""))] if with_worker else []
        _common(out, doc, base)
        role_samples = _ROLES.get(str(doc.get("role")))
        if role_samples is not None:
            role_samples(out, _mapping(doc.get("status")), base)
    return list(out.families.values())


class StatusCollector:
    """A prometheus-client collector reading the daemon's status documents at each scrape."""

    def __init__(self, documents: Documents) -> None:
        self._documents = documents
        self._failed = False  # logged once per outage, not per scrape

    def collect(self) -> Iterator[Metric]:
        try:
            docs = self._documents()
        except (QueryError, TimeoutError, OSError, RuntimeError) as exc:
            if not self._failed:
                log.warning("metrics: the daemon's status could not be read: %s", exc)
            self._failed = True
            docs = []
        else:
            self._failed = False
        available = GaugeMetricFamily(
            f"{PREFIX}_status_available",
            "1 when the daemon's status was read for this scrape",
            value=1 if docs else 0,
        )
        yield available
        yield from families(docs)


# --- where the documents come from -----------------------------------------------------------


def loop_documents(
    loop: asyncio.AbstractEventLoop,
    identity: ControlIdentity,
    status: Callable[[], dict[str, object]],
    timeout: float = STATUS_TIMEOUT,
) -> Documents:
    """Documents built by `status` in `loop`'s thread (called from the HTTP server's)."""
    started, started_mono = time.time(), time.monotonic()

    def documents() -> list[dict[str, object]]:
        future: concurrent.futures.Future[list[dict[str, object]]] = concurrent.futures.Future()

        def build() -> None:  # in the loop's thread
            if future.set_running_or_notify_cancel():
                future.set_result([status_document(identity, status, started, started_mono)])

        loop.call_soon_threadsafe(build)  # RuntimeError once the loop is closed
        try:
            return future.result(timeout)
        except TimeoutError:
            future.cancel()
            raise TimeoutError(f"no status within {timeout:g} s") from None

    return documents


def control_documents(name: str, timeout: float = STATUS_TIMEOUT) -> Documents:
    """Documents of the daemons listening on control sockets `name/...` (a server's workers),
    asked as `teredo status` does."""

    def documents() -> list[dict[str, object]]:
        docs: list[dict[str, object]] = []
        for worker in listening_names(prefix=name + "/"):
            with contextlib.suppress(QueryError):
                docs.append(query(worker, timeout))
        return docs

    return documents


# --- the HTTP endpoint -----------------------------------------------------------------------


class MetricsError(Exception):
    """The metrics endpoint cannot be opened; the message names the address and why."""


class _QuietHandler(WSGIRequestHandler):
    timeout = REQUEST_TIMEOUT  # a scraper that stalls loses its connection, not a thread

    def log_message(self, format: str, *args: Any) -> None:
        """No line per scrape."""


class _BoundedServer(ThreadingWSGIServer):
    """prometheus-client's threading WSGI server, with at most MAX_ACTIVE_SCRAPES threads."""

    daemon_threads = True

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.slots = threading.BoundedSemaphore(MAX_ACTIVE_SCRAPES)
        self.refused = 0
        super().__init__(*args, **kwargs)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self.slots.acquire(blocking=False):
            self.refused += 1
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self.slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.slots.release()


class _BoundedServer4(_BoundedServer):
    address_family = socket.AF_INET


class _BoundedServer6(_BoundedServer):
    address_family = socket.AF_INET6


class MetricsExporter:
    """Serves `documents` as Prometheus metrics on `address` from a thread of its own.

    GET / and GET /metrics (any path) answer the exposition format; the process' CPU and
    memory (process_*) come with it. `close()` stops the thread and frees the port.
    """

    def __init__(self, address: MetricsAddress, documents: Documents) -> None:
        self.address = address
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(StatusCollector(documents))
        ProcessCollector(registry=self.registry)
        server_class = _BoundedServer6 if ":" in address.host else _BoundedServer4
        try:
            self._httpd = make_server(
                address.host,
                address.port,
                make_wsgi_app(self.registry),
                server_class,
                handler_class=_QuietHandler,
            )
        except OSError as exc:
            raise MetricsError(f"metrics on {address}: {exc.strerror or exc}") from None
        self.port = int(self._httpd.server_address[1])
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, name="teredo-metrics", daemon=True
        )
        self._thread.start()

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=REQUEST_TIMEOUT)


@dataclass(frozen=True, slots=True)
class MetricsEndpoint:
    """What a daemon verb asks of the loop: where to serve, and who the daemon is."""

    address: MetricsAddress
    identity: ControlIdentity
