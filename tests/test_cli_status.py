"""`teredo status` against control servers started in this process (abstract names: no root).

Other tests' or real daemons may listen in this namespace too: each test uses names unique to
this process and test, and names them on the command line where exactness matters.
"""

from __future__ import annotations

import asyncio
import json
import os
import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pytest

from teredo.cli import status as status_verb
from teredo.cli.main import build_parser, main
from teredo.cli.options import EXIT_CONFIG, control_identity, control_name
from teredo.io.control import ControlIdentity, ControlServer

CLIENT_STATUS: dict[str, object] = {
    "state": "qualified",
    "address": "2001:0:c633:640a:0:f227:3c8c:fcf4",
    "nat": "restricted",
    "mtu": 1280,
    "mapping": "203.0.113.11:3339",
    "server": "198.51.100.10",
    "server2": "198.51.100.11",
    "refresh_interval": 30.0,
    "peers": 7,
    "trusted_peers": 5,
    "queued_bytes": 1234,
    "drops": {"not_our_address": 3, "bubble_limit": 11},
    "send_errors": {"udp": 0, "tun": 2, "discovery": 0},
    "configuration_errors": 0,
}


def unique(tag: str) -> str:
    return f"teredo/test/{os.getpid()}/{tag}-{uuid.uuid4().hex[:8]}"


@contextmanager
def serving(*servers: tuple[ControlIdentity, Callable[[], dict[str, object]]]) -> Iterator[None]:
    """Control servers on one asyncio loop in a thread, for the duration of the block."""
    loop = asyncio.new_event_loop()
    started = [ControlServer(ident, fn, loop) for ident, fn in servers]
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    try:
        for server in started:
            assert server.start() is None
        thread.start()
        yield
    finally:
        if thread.is_alive():
            loop.call_soon_threadsafe(loop.stop)
            thread.join(5.0)
        for server in started:
            server.close()
        loop.close()


def test_human_view_of_a_client(capsys: pytest.CaptureFixture[str]) -> None:
    name = unique("client")
    with serving((ControlIdentity(name, "client", "teredo"), lambda: dict(CLIENT_STATUS))):
        assert main(["status", name]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"client @{name}  pid {os.getpid()}  up ")
    lines = out.splitlines()
    assert "  state      qualified" in lines
    assert "  address    2001:0:c633:640a:0:f227:3c8c:fcf4" in lines
    assert "  NAT        restricted, mapping 203.0.113.11:3339" in lines
    assert "  server     198.51.100.10 / 198.51.100.11, refresh 30.0 s" in lines
    assert "  MTU        1280" in lines
    assert "  peers      7 (5 trusted), 1234 B queued" in lines
    # Only non-zero counts, largest first.
    assert "  faults     send tun 2" in lines
    assert "  drops      bubble_limit 11, not_our_address 3" in lines
    assert "udp 0" not in out


@pytest.mark.parametrize(
    ("state", "said"),
    [
        ("qualified", "qualified with the primary server's mapping (RFC 6081)"),
        ("offline", "not qualified (SymmetricNat refuse, RFC 4380 5.2.1)"),
    ],
)
def test_human_view_behind_a_symmetric_nat(
    capsys: pytest.CaptureFixture[str], state: str, said: str
) -> None:
    name = unique("symmetric")
    behaviour = {"symmetric": True, "ports": "sequential", "step": 1, "same_ipv4": True}
    doc = dict(CLIENT_STATUS, state=state, nat="symmetric")
    doc["nat_behaviour"] = dict(behaviour, text="symmetric, sequential ports +1")
    with serving((ControlIdentity(name, "client", "teredo"), lambda: doc)):
        assert main(["status", name]) == 0
    lines = capsys.readouterr().out.splitlines()
    nat = "  NAT        symmetric, mapping 203.0.113.11:3339 (symmetric, sequential ports +1)"
    assert nat in lines
    [line] = [x for x in lines if "symmetric NAT:" in x]
    assert said in line


def test_human_view_of_a_client_with_several_servers(capsys: pytest.CaptureFixture[str]) -> None:
    name = unique("failover")
    status = {
        **CLIENT_STATUS,
        "servers": ["198.51.100.10", "198.51.100.12", "b.example"],
        "failover": {"current": 1, "preferred": 0, "ranking": [0, 1, 2], "moves": 1},
    }
    with serving((ControlIdentity(name, "client", "teredo"), lambda: dict(status))):
        assert main(["status", name]) == 0
    lines = capsys.readouterr().out.splitlines()
    shown = "198.51.100.10 (best), 198.51.100.12 (in use), b.example; moves 1"
    assert f"  servers    {shown}" in lines
    status["failover"] = {"current": 0, "preferred": 0, "moves": 2}
    with serving((ControlIdentity(name, "client", "teredo"), lambda: dict(status))):
        assert main(["status", name]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "  servers    198.51.100.10 (in use, best), 198.51.100.12, b.example; moves 2" in lines


def test_json_is_a_list_of_the_documents(capsys: pytest.CaptureFixture[str]) -> None:
    name = unique("json")
    with serving((ControlIdentity(name, "client", "teredo"), lambda: dict(CLIENT_STATUS))):
        assert main(["status", "--json", "@" + name]) == 0
    docs = json.loads(capsys.readouterr().out)
    assert isinstance(docs, list)
    assert len(docs) == 1
    assert docs[0]["control"] == name
    assert docs[0]["role"] == "client"
    assert docs[0]["interface"] == "teredo"
    assert docs[0]["pid"] == os.getpid()
    assert docs[0]["status"] == CLIENT_STATUS


def test_without_names_every_teredo_daemon_is_shown(capsys: pytest.CaptureFixture[str]) -> None:
    name = unique("discover")
    with serving((ControlIdentity(name, "relay", "tr0"), lambda: {"peers": 4, "capacity": 9})):
        assert main(["status", "--json"]) == 0
    docs = json.loads(capsys.readouterr().out)
    ours = [d for d in docs if d.get("control") == name]
    assert len(ours) == 1
    assert ours[0]["status"] == {"peers": 4, "capacity": 9}


def test_no_daemon_is_exit_1_with_a_message(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    name = unique("absent")
    assert main(["status", name]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert f"no daemon listening on @{name}" in captured.err
    # Nothing listening at all (as in a fresh namespace).
    monkeypatch.setattr(status_verb, "listening_names", lambda prefix="teredo/": [])
    assert main(["status"]) == 1
    captured = capsys.readouterr()
    assert "no teredo daemon found" in captured.err
    assert "ip netns exec" in captured.err


def test_watch_redraws_count_times(capsys: pytest.CaptureFixture[str]) -> None:
    name = unique("watch")
    calls = [0]

    def server_status() -> dict[str, object]:
        calls[0] += 1
        return {"router_advertisements": calls[0] * 10, "addresses": ["198.51.100.10"]}

    with serving((ControlIdentity(name, "server"), server_status)):
        assert main(["status", name, "--watch", "0.1", "--count", "2"]) == 0
    out = capsys.readouterr().out
    assert out.count("teredo status  ") == 2
    assert "  RAs        10" in out
    assert "  RAs        20" in out
    assert calls[0] == 2


def test_watch_json_prints_one_list_per_view(capsys: pytest.CaptureFixture[str]) -> None:
    name = unique("watchjson")
    with serving((ControlIdentity(name, "server"), lambda: {"router_advertisements": 1})):
        assert main(["status", name, "--json", "--watch", "0.1", "--count", "3"]) == 0
    views = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(views) == 3
    assert all(v[0]["control"] == name for v in views)


def test_server_workers_one_block_each_and_a_total(capsys: pytest.CaptureFixture[str]) -> None:
    base = unique("workers")
    workers = [
        (
            ControlIdentity(f"{base}/{i}", "server", worker=i),
            (lambda i=i: {"router_advertisements": 3 + i, "drops": {"loop": 1}}),
        )
        for i in range(2)
    ]
    with serving(*workers):
        assert main(["status", base]) == 0
    out = capsys.readouterr().out
    assert out.count("server @") == 2
    assert f"@{base}/0" in out
    assert f"@{base}/1" in out
    assert "server total (2 workers): RAs 7, bubbles 0, packets 0, native 0, drops loop 2" in out


def test_relay_block(capsys: pytest.CaptureFixture[str]) -> None:
    name = unique("relay")
    relay_status: dict[str, object] = {
        "local": "198.51.100.20:3545",
        "tun": "teredo",
        "prefix": "2001::/32",
        "peers": 3,
        "capacity": 1024,
        "trusted_peers": 2,
        "pending_peers": 1,
        "queued_bytes": 0,
        "counters": {"to_teredo": 5, "from_teredo": 6, "indirect_bubbles": 1},
        "data_path_faults": 1,
        "drops": {},
    }
    with serving((ControlIdentity(name, "relay", "teredo"), lambda: relay_status)):
        assert main(["status", name]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "  peers      3/1024 (2 trusted, 1 pending), 0 B queued" in lines
    assert "  packets    to teredo 5, from teredo 6, queued 0" in lines
    assert "  faults     data path faults 1" in lines
    assert "  drops      none" in lines
    assert "  datapath   user" in lines


def test_relay_block_kernel_datapath(capsys: pytest.CaptureFixture[str]) -> None:
    name = unique("relay")
    kernel = {"map_entries": 2, "encap": 40, "encap_partial": 3, "encap_stale": 1, "decap": 50}
    kernel |= {"decap_no_peer": 2, "decap_other": 5}
    relay_status: dict[str, object] = {"datapath": "kernel", "kernel": {"counters": kernel}}
    with serving((ControlIdentity(name, "relay", "teredo"), lambda: relay_status)):
        assert main(["status", name]) == 0
    lines = capsys.readouterr().out.splitlines()
    expected = (
        "  datapath   kernel: map 2, encapsulated 40 (passed up 4), decapsulated 50 (passed up 7)"
    )
    assert expected in lines


def test_a_status_error_is_shown(capsys: pytest.CaptureFixture[str]) -> None:
    name = unique("broken")

    def broken() -> dict[str, object]:
        raise KeyError("machine")

    with serving((ControlIdentity(name, "client", "teredo"), broken)):
        assert main(["status", name]) == 0
    assert "ERROR      status failed: KeyError" in capsys.readouterr().out


def test_bad_command_lines(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["status", "--count", "2"]) == EXIT_CONFIG
    assert main(["status", "--watch", "0", "--count", "1"]) == EXIT_CONFIG
    assert main(["status", "--watch", "1", "--count", "0"]) == EXIT_CONFIG
    err = capsys.readouterr().err
    assert "--count: only with --watch" in err
    assert "--watch: at least" in err


@pytest.mark.parametrize("verb", ["client", "relay", "server"])
def test_daemon_verbs_take_control_flags(verb: str) -> None:
    parser = build_parser()
    args = parser.parse_args([verb])
    assert control_name(args, "teredo/x") == "teredo/x"
    args = parser.parse_args([verb, "--control", "@lab/one"])
    assert control_name(args, "teredo/x") == "lab/one"
    args = parser.parse_args([verb, "--no-control"])
    assert control_name(args, "teredo/x") is None
    with pytest.raises(SystemExit) as both:
        parser.parse_args([verb, "--control", "a", "--no-control"])
    assert both.value.code == EXIT_CONFIG
    with pytest.raises(SystemExit) as empty:
        parser.parse_args([verb, "--control", ""])
    assert empty.value.code == EXIT_CONFIG


def test_server_workers_get_one_name_each() -> None:
    parser = build_parser()
    plain = parser.parse_args(["server", "--workers", "2"])
    one = control_identity(plain, "server")
    assert one is not None
    assert (one.name, one.role, one.worker) == ("teredo/server", "server", None)
    second = control_identity(plain, "server", worker=1)
    assert second is not None
    assert (second.name, second.worker) == ("teredo/server/1", 1)
    named = parser.parse_args(["server", "--workers", "2", "--control", "lab/srv"])
    worker = control_identity(named, "server", worker=0)
    assert worker is not None
    assert worker.name == "lab/srv/0"
    assert (
        control_identity(parser.parse_args(["server", "--no-control"]), "server", worker=0) is None
    )


def test_announcement_line(capsys: pytest.CaptureFixture[str]) -> None:
    name = unique("server")
    announce = {"table": 100, "interface": "announce42", "prefixes": ["198.51.100.10/32"]}
    server_status: dict[str, object] = {"drops": {}, "announce": {**announce, "announced": True}}
    with serving((ControlIdentity(name, "server", None), lambda: server_status)):
        assert main(["status", name]) == 0
    out = capsys.readouterr().out
    assert "  announce   198.51.100.10/32 in table 100 (announce42): announced" in out
    server_status["announce"] = {**announce, "announced": False}
    with serving((ControlIdentity(name, "server", None), lambda: server_status)):
        assert main(["status", name]) == 0
    assert "(announce42): WITHDRAWN" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("upnp", "said"),
    [
        (
            {"state": "in use", "mapping": "203.0.113.11:3339", "cone": True},
            "  UPnP       203.0.113.11:3339 mapped on the NAT: reachable as behind a cone NAT "
            "(RFC 6081; qualification saw restricted)",
        ),
        (
            {"state": "mapped", "mapping": "203.0.113.11:3339", "cone": False},
            "  UPnP       203.0.113.11:3339 mapped on the NAT, not yet seen by the server",
        ),
        (
            {"state": "unused", "detail": "server saw 203.0.113.11:5000", "cone": False},
            "  UPnP       unused (server saw 203.0.113.11:5000)",
        ),
        ({"state": "no IGD", "cone": False}, "  UPnP       no IGD"),
    ],
)
def test_human_view_with_upnp(
    capsys: pytest.CaptureFixture[str], upnp: dict[str, object], said: str
) -> None:
    name = unique("upnp")
    doc = dict(CLIENT_STATUS, upnp=upnp)
    if upnp["cone"]:
        doc.update(nat="cone", nat_qualified="restricted")
    with serving((ControlIdentity(name, "client", "teredo"), lambda: doc)):
        assert main(["status", name]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert said in lines
    if upnp["cone"]:
        assert "  NAT        cone, mapping 203.0.113.11:3339" in lines


def test_human_view_counts_rfc6081_extensions(capsys: pytest.CaptureFixture[str]) -> None:
    name = unique("rfc6081")
    doc = dict(CLIENT_STATUS, symmetric_ports_adopted=2, predicted_peers=1, hairpin_peers=0)
    with serving((ControlIdentity(name, "client", "teredo"), lambda: doc)):
        assert main(["status", name]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "  RFC 6081   ports adopted 2, predicted peers 1" in lines
    with serving((ControlIdentity(name, "client", "teredo"), lambda: dict(CLIENT_STATUS))):
        assert main(["status", name]) == 0
    assert "RFC 6081" not in capsys.readouterr().out  # nothing at work: no line
