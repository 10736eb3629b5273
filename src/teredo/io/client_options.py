"""What the client daemon needs from the settings and flags (cli/client.py builds it from
core/config.py's ClientSettings); `ClientDaemon.reload` compares two of them (SIGHUP)."""

from __future__ import annotations

from dataclasses import dataclass

from teredo.core.config import DatapathMode


@dataclass(frozen=True, slots=True)
class ClientOptions:
    """What the daemon needs from the settings and flags (cli/client.py builds it)."""

    server: str
    server2: str | None = None
    more_servers: tuple[str, ...] = ()  # to fail over to (core/failover.py)
    interface: str = "teredo"
    bind_address: str = "0.0.0.0"  # noqa: S104 (any local address, as Miredo's default)
    bind_port: int = 0
    prefix: bytes = b"\x20\x01\x00\x00"
    refresh_interval: float = 30.0
    local_discovery: bool = True
    hook: str | None = None
    default_route: bool = True
    refuse_symmetric: bool = False  # SymmetricNat refuse: RFC 4380 5.2.1 strictly
    upnp: bool = False  # UPnP yes: map the port on a UPnP IGD NAT (io/upnp.py, RFC 6081)
    # The kernel data path (io/kclient.py): the daemon is handed the loaded programs; this
    # says what to do when they cannot attach (kernel: no start; auto: the Python path).
    datapath: DatapathMode = DatapathMode.USER
    # sendmmsg when the C library has it. Off: at the rates measured (docs/benchmarks.md,
    # "Client") a wake-up carries one or two datagrams, and filling the batch costs more
    # Python time than the system calls it saves (as the server found).
    batch: bool = False

    @property
    def socket_key(self) -> tuple[str, int]:
        return self.bind_address, self.bind_port
