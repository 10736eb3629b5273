"""UPnP IGD port mapping for the client (RFC 6081 UPnP-Enabled Symmetric NAT extension).

Where the NAT in front of the client is a UPnP Internet Gateway Device, the client asks it to
map its Teredo UDP port (SSDP discovery, then the WANIPConnection SOAP action AddPortMapping,
through the miniupnpc library: a well-kept C client, PyPI `miniupnpc`), external port = the local
port. A NAT that keeps the inside port (a Linux router running miniupnpd) then forwards what
anyone sends to that port: the client is behind what acts as a full-cone NAT, and every peer,
port-restricted or symmetric, can reach it at the mapping the server saw. The mapping is removed
when the daemon stops (SIGTERM, SIGINT) and renewed meanwhile (a lease, so a crashed client's
mapping expires by itself).

A NAT whose outbound mapping is not the UPnP one (the server saw another port) gains nothing
from it: `check()` then removes the mapping again and says so (inbound to a port that outbound
flows never use would only open a hole).

miniupnpc blocks (SSDP waits, HTTP requests): every call runs in this module's worker thread,
never on the event loop, bounded by its own timeouts. `python -m teredo.io.upnp` maps, shows and
removes a mapping by hand (the lab's NAT-kind test uses it).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

log = logging.getLogger("teredo.upnp")

DISCOVER_DELAY_MS = 1500  # SSDP wait (miniupnpc's discoverdelay); an IGD answers within ms
LEASE_SECONDS = 3600  # asked for; renewed at half of it
DESCRIPTION = "teredo client"


class UpnpLibrary(Protocol):
    """What is used of miniupnpc.UPnP (a protocol, so tests can check the logic without an IGD)."""

    discoverdelay: int
    lanaddr: str

    def discover(self) -> int: ...
    def selectigd(self) -> str: ...
    def externalipaddress(self) -> str: ...
    def addportmapping(  # noqa: PLR0917 (miniupnpc's own signature)
        self, eport: int, proto: str, iaddr: str, iport: int, desc: str, remote: str, lease: int
    ) -> bool: ...
    def deleteportmapping(self, eport: int, proto: str) -> bool: ...
    def getspecificportmapping(self, eport: int, proto: str) -> Any: ...


def _library() -> UpnpLibrary:
    # Imported here: a client without UPnP yes never loads the C library.
    import miniupnpc  # type: ignore[import-not-found,unused-ignore]  # noqa: PLC0415

    upnp: UpnpLibrary = miniupnpc.UPnP()
    return upnp


@dataclass(frozen=True)
class UpnpMapping:
    """A mapping the IGD accepted: external (IPv4, port) -> internal (IPv4, port)."""

    igd: str  # control URL
    external_ip: str
    external_port: int
    internal_ip: str
    internal_port: int

    def describe(self) -> str:
        return f"{self.external_ip}:{self.external_port} -> {self.internal_ip}:{self.internal_port}"


def add_mapping(upnp: UpnpLibrary, port: int, lease: int = LEASE_SECONDS) -> UpnpMapping | None:
    """Discover an IGD and map UDP `port` (external = internal); None when there is no IGD.

    Raises OSError/Exception from the library for an IGD that refuses (the caller logs it).
    """
    upnp.discoverdelay = DISCOVER_DELAY_MS
    if upnp.discover() <= 0:
        return None
    igd = upnp.selectigd()  # raises when no IGD answered with a usable description
    external = upnp.externalipaddress()
    if not upnp.addportmapping(port, "UDP", upnp.lanaddr, port, DESCRIPTION, "", lease):
        raise OSError(f"the IGD refused to map UDP port {port}")
    return UpnpMapping(igd, external, port, upnp.lanaddr, port)


def discover_igd(upnp: UpnpLibrary) -> tuple[str, str] | None:
    """(control URL, external IPv4) of the IGD that answers, without mapping anything; None
    when none answers or it cannot tell its external address (`teredo probe --upnp`)."""
    upnp.discoverdelay = DISCOVER_DELAY_MS
    try:
        if upnp.discover() <= 0:
            return None
        return upnp.selectigd(), upnp.externalipaddress()
    except Exception as err:  # the library raises plain Exception
        log.debug("UPnP: no usable IGD: %s", err)
        return None


def probe_igd() -> tuple[str, str] | None:
    """discover_igd() with the real library."""
    return discover_igd(_library())


class UpnpMapper:
    """The daemon's mapping: made, renewed and removed in one worker thread."""

    def __init__(
        self,
        port: int,
        *,
        library: Callable[[], UpnpLibrary] = _library,
        lease: int = LEASE_SECONDS,
        on_change: Callable[[], None] | None = None,
    ) -> None:
        self.port = port
        self.lease = lease
        self._library = library
        self._on_change = on_change
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._upnp: UpnpLibrary | None = None
        self.mapping: UpnpMapping | None = None
        # starting | no IGD | failed | mapped (not compared with the server's view yet) |
        # in use (the server saw the mapping: cone) | unused (removed: the NAT does not use it)
        # | removed (at exit)
        self.state = "starting"
        self.detail = ""
        self._server: tuple[str, int] | None = None  # the server's view of us, last told
        self._thread = threading.Thread(target=self._run, name="teredo-upnp", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _set(self, state: str, detail: str = "") -> None:
        with self._lock:
            self.state, self.detail = state, detail
        if self._on_change is not None:
            self._on_change()

    def _run(self) -> None:
        try:
            upnp = self._library()
            mapping = add_mapping(upnp, self.port, self.lease)
        except Exception as err:  # the library raises plain Exception for SOAP errors
            log.warning("UPnP: no port mapping for UDP %d: %s", self.port, err)
            self._set("failed", str(err))
            return
        if mapping is None:
            log.info("UPnP: no Internet Gateway Device answered; the NAT is used as it is")
            self._set("no IGD")
            return
        with self._lock:
            self._upnp, self.mapping = upnp, mapping
        log.info(
            "UPnP: the NAT maps %s (RFC 6081 UPnP-enabled NAT); in use once the server sees it",
            mapping.describe(),
        )
        self._set("mapped", mapping.describe())
        with self._lock:
            server = self._server
        if server is not None:  # qualified before the IGD answered
            self.check(*server)
        while not self._stop.wait(self.lease / 2):
            with self._lock:
                if self._upnp is None or self.mapping is None:
                    return
                try:
                    self._upnp.addportmapping(
                        self.port,
                        "UDP",
                        mapping.internal_ip,
                        self.port,
                        DESCRIPTION,
                        "",
                        self.lease,
                    )
                except Exception as err:
                    log.warning("UPnP: renewing the mapping failed: %s", err)

    def check(self, mapped_ip: str, mapped_port: int) -> None:
        """After qualification: is the server's mapping the UPnP one? Then the NAT forwards
        what anyone sends to it: the client is reachable as behind a cone NAT (state "in
        use"). If not, the mapping is removed. Told before the IGD answered, the check runs
        when it does."""
        with self._lock:
            self._server = (mapped_ip, mapped_port)
            mapping = self.mapping
        if mapping is None or self.state not in ("mapped", "in use"):
            return
        if (mapped_ip, mapped_port) == (mapping.external_ip, mapping.external_port):
            if self.state != "in use":
                log.info(
                    "UPnP: the server sees the mapping %s:%d: reachable as behind a cone NAT "
                    "(RFC 6081 UPnP-enabled NAT)",
                    mapped_ip,
                    mapped_port,
                )
                self._set("in use", mapping.describe())
            return
        log.warning(
            "UPnP: the server saw mapping %s:%d, not the UPnP one %s: the NAT does not use it "
            "for outbound flows; mapping removed",
            mapped_ip,
            mapped_port,
            mapping.describe(),
        )
        self._remove("unused", f"server saw {mapped_ip}:{mapped_port}")

    def _remove(self, state: str, detail: str) -> None:
        with self._lock:
            upnp, mapping = self._upnp, self.mapping
            self._upnp, self.mapping = None, None
        if upnp is None or mapping is None:
            return
        try:
            upnp.deleteportmapping(mapping.external_port, "UDP")
        except Exception as err:
            log.warning("UPnP: removing the mapping %s failed: %s", mapping.describe(), err)
        else:
            log.info("UPnP: mapping %s removed", mapping.describe())
        self._set(state, detail)

    def stop(self, timeout: float = 5.0) -> None:
        """Remove the mapping (at exit); waits for a discovery still running at most `timeout`."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout)
        self._remove("removed", "")

    def status(self) -> dict[str, object]:
        with self._lock:
            doc: dict[str, object] = {"state": self.state}
            if self.mapping is not None:
                doc["mapping"] = f"{self.mapping.external_ip}:{self.mapping.external_port}"
                doc["internal"] = f"{self.mapping.internal_ip}:{self.mapping.internal_port}"
            if self.detail and self.mapping is None:
                doc["detail"] = self.detail
            doc["cone"] = self.state == "in use"
            return doc


def upnp_status(mapper: UpnpMapper, status: Mapping[str, object]) -> dict[str, object]:
    """The client status fields for UPnP: `upnp` (the mapper's state) and, once the server
    sees the UPnP mapping, `nat` "cone" (what peers find: anyone may send to the mapping)
    with `nat_qualified` the NAT type qualification found."""
    doc: dict[str, object] = {"upnp": mapper.status()}
    if mapper.state == "in use" and status.get("state") == "qualified":
        doc["nat"] = "cone"
        doc["nat_qualified"] = status.get("nat")
    return doc


def main(argv: Sequence[str] | None = None) -> int:
    """`add PORT`, `show PORT`, `delete PORT`: one JSON line each (for the lab and by hand)."""
    parser = argparse.ArgumentParser(prog="python -m teredo.io.upnp")
    parser.add_argument("action", choices=("add", "show", "delete"))
    parser.add_argument("port", type=int)
    args = parser.parse_args(argv)
    upnp = _library()
    result: dict[str, object] = {"action": args.action, "port": args.port}
    try:
        if args.action == "add":
            mapping = add_mapping(upnp, args.port)
            result["mapping"] = None if mapping is None else mapping.describe()
        else:
            upnp.discoverdelay = DISCOVER_DELAY_MS
            if upnp.discover() <= 0:
                result["error"] = "no IGD"
            else:
                upnp.selectigd()
                if args.action == "show":
                    found = upnp.getspecificportmapping(args.port, "UDP")
                    result["mapping"] = None if found is None else list(found)
                else:
                    result["deleted"] = bool(upnp.deleteportmapping(args.port, "UDP"))
    except Exception as err:
        result["error"] = str(err)
    print(json.dumps(result), flush=True)
    return 1 if "error" in result else 0


if __name__ == "__main__":
    sys.exit(main())
