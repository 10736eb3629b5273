"""io/kclient.py without attaching anything (no interface of this host is touched): the object
loads, starts "not qualified" (both programs pass everything), stays off where the socket's
IPv4 is on no interface, and reports its counters; the interface and offload look-ups."""

from __future__ import annotations

import logging
import socket
import struct

import pytest

from teredo.io.kclient import ClientKernelPath, interface_of, tx_checksum_offload
from teredo.io.libbpf import BpfError

ADDRESS = bytes.fromhex("20010000c633640a0000ffffffffffff")


def test_loads_off_and_stays_off_without_an_interface(caplog: pytest.LogCaptureFixture) -> None:
    try:
        kernel = ClientKernelPath.load()
    except (BpfError, OSError) as exc:
        pytest.fail(f"cannot load teredo_client.bpf.o (needs root/CAP_BPF and the build): {exc}")
    try:
        c = kernel.counters()
        assert c["serving"] == 0
        assert c["encap"] == c["decap"] == c["map_entries"] == 0
        cfg = kernel._cfg.lookup(struct.pack("=I", 0))
        assert cfg is not None
        assert cfg[4:6] == b"\x00\x00", "port 0: both programs pass everything"
        with caplog.at_level(logging.WARNING, logger="teredo.client"):
            kernel.qualified(ADDRESS, None)  # no TUN attached, no local address
            kernel.qualified(ADDRESS, (0xC0000201, 3545))  # 192.0.2.1: on no interface
        assert kernel.serving is None
        assert "kernel programs off" in caplog.text
        assert "off" in kernel.summary()
    finally:
        kernel.close()


def test_interface_and_offload_look_ups() -> None:
    assert interface_of(0x7F000001) == socket.if_nametoindex("lo")
    assert interface_of(0xC0000201) is None
    assert tx_checksum_offload("no-such-if0") is None
    assert isinstance(tx_checksum_offload("lo"), bool)
