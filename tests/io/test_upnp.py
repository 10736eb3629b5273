"""io/upnp.py's logic against a recording double of miniupnpc's UPnP object (no IGD needed;
the real library against Debian's miniupnpd: tests/system/test_nat_kinds.py and
tests/system/test_upnp_client.py: our client behind the symmetric-upnp lab kind)."""

from __future__ import annotations

import threading
from typing import Any

from teredo.io.upnp import UpnpMapper, add_mapping, discover_igd, upnp_status


class Recording:
    """Records the calls miniupnpc would get; answers as miniupnpd does."""

    def __init__(self, devices: int = 1, refuse: bool = False) -> None:
        self.discoverdelay = 0
        self.lanaddr = "192.168.1.2"
        self.devices = devices
        self.refuse = refuse
        self.calls: list[tuple[Any, ...]] = []

    def discover(self) -> int:
        self.calls.append(("discover", self.discoverdelay))
        return self.devices

    def selectigd(self) -> str:
        return "http://192.168.1.1:5000/ctl/IPConn"

    def externalipaddress(self) -> str:
        return "203.0.113.11"

    def addportmapping(  # noqa: PLR0917
        self, eport: int, proto: str, iaddr: str, iport: int, desc: str, remote: str, lease: int
    ) -> bool:
        self.calls.append(("add", eport, proto, iaddr, iport, lease))
        if self.refuse:
            raise Exception("ConflictInMappingEntry")  # noqa: TRY002 (what miniupnpc raises)
        return True

    def deleteportmapping(self, eport: int, proto: str) -> bool:
        self.calls.append(("delete", eport, proto))
        return True

    def getspecificportmapping(self, eport: int, proto: str) -> Any:
        return None


def _run(mapper: UpnpMapper) -> None:
    done = threading.Event()
    mapper._on_change = done.set
    mapper.start()
    assert done.wait(5)


def test_maps_the_local_port_to_the_same_external_port() -> None:
    lib = Recording()
    mapping = add_mapping(lib, 40000, lease=600)
    assert mapping is not None
    assert mapping.describe() == "203.0.113.11:40000 -> 192.168.1.2:40000"
    assert ("add", 40000, "UDP", "192.168.1.2", 40000, 600) in lib.calls


def test_no_igd_no_mapping() -> None:
    lib = Recording(devices=0)
    assert add_mapping(lib, 40000) is None
    mapper = UpnpMapper(40000, library=lambda: lib)
    _run(mapper)
    assert mapper.status() == {"state": "no IGD", "cone": False}
    mapper.stop()
    assert not [c for c in lib.calls if c[0] == "delete"]


def test_refused_mapping_is_reported_and_nothing_deleted() -> None:
    lib = Recording(refuse=True)
    mapper = UpnpMapper(40000, library=lambda: lib)
    _run(mapper)
    assert mapper.status()["state"] == "failed"
    mapper.stop()
    assert not [c for c in lib.calls if c[0] == "delete"]


def test_stop_removes_the_mapping_once() -> None:
    lib = Recording()
    mapper = UpnpMapper(40000, library=lambda: lib)
    _run(mapper)
    assert mapper.status()["mapping"] == "203.0.113.11:40000"
    assert mapper.status()["state"] == "mapped"
    mapper.check("203.0.113.11", 40000)  # the server saw the same: kept, in use
    assert mapper.status()["state"] == "in use"
    assert mapper.status()["cone"] is True
    mapper.stop()
    mapper.stop()
    assert [c for c in lib.calls if c[0] == "delete"] == [("delete", 40000, "UDP")]
    assert mapper.status()["state"] == "removed"


def test_a_mapping_outbound_flows_do_not_use_is_removed() -> None:
    lib = Recording()
    mapper = UpnpMapper(40000, library=lambda: lib)
    _run(mapper)
    mapper.check("203.0.113.11", 51234)  # a random-port NAT: the server saw another port
    assert mapper.status()["state"] == "unused"
    assert ("delete", 40000, "UDP") in lib.calls


def test_server_mapping_known_before_the_igd_answered() -> None:
    lib = Recording()
    mapper = UpnpMapper(40000, library=lambda: lib)
    mapper.check("203.0.113.11", 51234)  # qualified first
    # The thread says "mapped" first, then runs the check: wait for the check's outcome.
    done = threading.Event()
    mapper._on_change = lambda: done.set() if mapper.state == "unused" else None
    mapper.start()
    assert done.wait(5)
    assert mapper.status()["state"] == "unused"
    assert ("delete", 40000, "UDP") in lib.calls


def test_server_mapping_matching_before_the_igd_answered_is_in_use() -> None:
    lib = Recording()
    mapper = UpnpMapper(40000, library=lambda: lib)
    mapper.check("203.0.113.11", 40000)  # qualified before the IGD answered
    done = threading.Event()
    mapper._on_change = lambda: done.set() if mapper.state == "in use" else None
    mapper.start()
    assert done.wait(5)
    assert mapper.status() == {
        "state": "in use",
        "mapping": "203.0.113.11:40000",
        "internal": "192.168.1.2:40000",
        "cone": True,
    }
    mapper.stop()
    assert mapper.status()["cone"] is False


def test_client_status_says_cone_only_while_qualified_with_the_mapping_in_use() -> None:
    lib = Recording()
    mapper = UpnpMapper(40000, library=lambda: lib)
    _run(mapper)
    qualified = {"state": "qualified", "nat": "restricted"}
    assert "nat" not in upnp_status(mapper, qualified)  # mapped, not yet seen by the server
    mapper.check("203.0.113.11", 40000)
    doc = upnp_status(mapper, qualified)
    assert doc["nat"] == "cone"
    assert doc["nat_qualified"] == "restricted"
    assert "nat" not in upnp_status(mapper, {"state": "offline", "nat": "unknown"})
    mapper.stop()
    assert "nat" not in upnp_status(mapper, qualified)


def test_a_new_server_view_after_an_address_change_removes_the_mapping() -> None:
    lib = Recording()
    mapper = UpnpMapper(40000, library=lambda: lib)
    _run(mapper)
    mapper.check("203.0.113.11", 40000)
    mapper.check("203.0.113.11", 40007)  # the NAT now uses another port outbound
    assert mapper.status()["state"] == "unused"
    assert [c for c in lib.calls if c[0] == "delete"] == [("delete", 40000, "UDP")]
    mapper.stop()
    assert [c for c in lib.calls if c[0] == "delete"] == [("delete", 40000, "UDP")]


def test_discover_igd_maps_nothing() -> None:
    lib = Recording()
    assert discover_igd(lib) == ("http://192.168.1.1:5000/ctl/IPConn", "203.0.113.11")
    assert [c[0] for c in lib.calls] == ["discover"]
    assert discover_igd(Recording(devices=0)) is None
