"""The client daemon: a ClientMachine on real sockets and a TUN interface (RFC 4380 5.2).

The machine decides everything about the protocol; the daemon wires it to its helpers, each a
module of its own: the data thread (io/datathread.py, fed through `_feed`; one lock serializes
every use of the machine), the machine's output (io/client_io.py `ClientIO`), the server's
name (io/resolve.py), the choice among several servers (io/servers.py, core/failover.py), the
interface configuration and hook (io/tunnel.py), local discovery (io/discovery.py, served by
an `add_reader` callback of the asyncio loop), network changes (io/netwatch.py) and the log
line of each event (io/client_log.py). The asyncio thread keeps timers, events, signals,
name resolution, network changes and netlink; a lost interface is created again here.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

from teredo.core.addr import (
    format_prefix,
    int_to_ipv4,
)
from teredo.core.client import (
    AddressChanged,
    ClientEvent,
    ClientMachine,
    ClientParams,
    MtuChanged,
    Offline,
    Qualified,
    ResolveServer,
    SymmetricNat,
)
from teredo.core.config import DatapathMode
from teredo.io.client_io import ClientIO, send_errors
from teredo.io.client_log import EventLog
from teredo.io.client_options import ClientOptions
from teredo.io.datathread import DataThread, Feed
from teredo.io.discovery import (
    LocalDiscovery,
    configure_multicast_sending,
    local_address,
)
from teredo.io.driver import (
    DATAPATH_RESTART,
    LockedTimer,
    Reload,
    StartError,
    Undo,
    bind_error,
)
from teredo.io.hook import HookRunner
from teredo.io.kmirror import MirrorTimer
from teredo.io.loop import DaemonLoop
from teredo.io.netwatch import Change, NetworkWatch
from teredo.io.resolve import Resolution, ServerResolver, is_literal, resolve_ipv4
from teredo.io.servers import Names, ServerChoice
from teredo.io.tun import TunDevice, TunError
from teredo.io.tunnel import (
    ThreadedInterface,
    TunnelConfigurator,
    disable_kernel_link_local,
    ipv6_text,
)
from teredo.io.udp import open_udp_socket
from teredo.io.upnp import UpnpMapper, upnp_status

if TYPE_CHECKING:
    from teredo.io.kclient import ClientKernelPath

log = logging.getLogger("teredo.client")


# An interface deleted under the daemon is created again, but not forever: this many times
# within the window, and the daemon exits with EXIT_FAILED for its supervisor (issue 14).
TUN_RECREATE_MAX = 5
TUN_RECREATE_WINDOW = 60.0
EXIT_FAILED = 1  # also: the socket asked for on SIGHUP cannot be opened


class ClientDaemon:
    """A client machine, its sockets, its TUN interface and its loop."""

    def __init__(
        self,
        options: ClientOptions,
        loop: DaemonLoop,
        *,
        random_bytes: Callable[[int], bytes] = os.urandom,
        resolve: Callable[[str], int] = resolve_ipv4,
        kernel: ClientKernelPath | None = None,
    ) -> None:
        self.options = options
        self.loop = loop
        #: The kernel data path (io/kclient.py, loaded before the privilege drop), None on the
        #: Python path. Closed last (LIFO undo): the programs detach with the daemon.
        self.kernel = kernel
        self._random = random_bytes
        self.machine: ClientMachine | None = None
        self.resolution: Resolution | None = None
        self.sock: socket.socket | None = None
        self.discovery = LocalDiscovery(loop, self._on_discovery, self._after_input)
        self.tun: TunDevice | None = None
        self.netlink: ThreadedInterface | None = None
        # Every use of the machine (and of `io`, which it drives) holds this lock: the data
        # thread and the asyncio thread both feed the machine.
        self._lock = threading.Lock()
        self._timed = LockedTimer(
            lambda: self.machine, self._lock, under_lock=self._expired, after=self._handle_all
        )
        self._undo = Undo()
        self._undo.push(self._close_kernel)
        self._data: DataThread | None = None
        # What the data thread feeds (io/datathread.py DataTarget): the machine once it exists.
        self._feed = Feed(_ignore, _ignore_tun, self._after_batch)
        self._slow = 0  # the machine's slow_inputs after the data thread's last batch
        self._notified = False  # an _after_input is already scheduled by the data thread
        self._timer_added = False
        self.events = EventLog()
        self._mirror_timer = False
        self._tun_recreated: list[float] = []  # when the interface was created again
        self.network = NetworkWatch(
            loop,
            interface=lambda: self.tun.name if self.tun is not None else None,
            local_address=self._local_address,
            ready=self._network_ready,
            act=self._network_changed,
        )
        self.upnp: UpnpMapper | None = None  # UPnP yes: the NAT's port mapping (io/upnp.py)
        self._undo.push(self._stop_upnp)
        try:
            self._open()
        except BaseException:
            self.close()
            raise
        self.resolver = ServerResolver(loop, self._resolved, resolve=resolve)
        self._undo.push(self.resolver.cancel)
        # Several servers (issue 13): the choice and the names in use.
        self.servers = ServerChoice(loop, self.resolver.request)
        self._undo.push(self.network.stop)
        self._undo.push(self.servers.cancel)

    # --- set-up -------------------------------------------------------------------------

    def _open(self) -> None:
        opts = self.options
        # The socket first: a wrong bind address or a taken port fails before any interface
        # exists.
        # Each clean-up step is pushed once, right after what it undoes; the steps act on the
        # resource of the moment (a reload opens a new socket, a lost TUN is made again).
        self._undo.push(self._close_socket)
        sock = self._bind()
        try:
            tun = self.tun = TunDevice.open(opts.interface)
        except TunError as exc:
            raise StartError(str(exc.strerror or exc)) from None
        self._undo.push(self._close_tun)
        disable_kernel_link_local(tun.name)
        try:
            self.netlink = ThreadedInterface(tun.name)
            self._undo.push(self._close_netlink)
            hook = HookRunner(opts.hook, tun.name, self.netlink.index()) if opts.hook else None
            self.tunnel = TunnelConfigurator(self.netlink, hook, default_route=opts.default_route)
            self._undo.push(self.tunnel.teardown)
            self.tunnel.prepare()
        except OSError as exc:  # NetlinkConfigError
            raise StartError(str(exc.strerror or exc)) from None
        self._attach_kernel(strict=opts.datapath is DatapathMode.KERNEL)
        self._undo.push(self._stop_data_path)
        self._undo.push(self.discovery.close)
        self._serve_socket(sock, tun)

    def _bind(self) -> socket.socket:
        opts = self.options
        try:
            sock = self.sock = open_udp_socket(opts.bind_address, opts.bind_port)
            configure_multicast_sending(sock)
        except OSError as exc:
            raise StartError(bind_error(opts.bind_address, opts.bind_port, exc)) from None
        return sock

    def _serve_socket(self, sock: socket.socket, tun: TunDevice) -> None:
        addresses: list[str] = []
        if self.options.local_discovery:
            addresses = self.discovery.open(self.options.bind_address)
        batch = self.options.batch
        if batch:
            from teredo.io import mmsg  # noqa: PLC0415 (ctypes: 10 ms at start)

            batch = mmsg.available()
        self.io = ClientIO(sock, tun.fd, addresses, batch=batch)
        self._start_data_path(sock, tun.fd)

    def start(self) -> None:
        """Resolves the server; qualification starts once it has an address."""
        opts = self.options
        log.info(
            "Teredo client on interface %s, UDP %s:%d, server %s%s",
            self.tun.name if self.tun else opts.interface,
            opts.bind_address,
            self.local_port,
            opts.server,
            f" / {opts.server2}" if opts.server2 else "",
        )
        self._start_upnp()
        self._start_servers()
        self.network.start()

    @property
    def local_port(self) -> int:
        return int(self.sock.getsockname()[1]) if self.sock is not None else 0

    def _params(self, resolution: Resolution) -> ClientParams:
        opts = self.options
        server, server2 = resolution
        local = self.network.local = self._local_address(server)
        return ClientParams(
            server=server,
            server2=server2,
            prefix=opts.prefix,
            refresh_interval=opts.refresh_interval,
            local_address=local,
            local_discovery=self.discovery.active,
            refuse_symmetric=opts.refuse_symmetric,
        )

    def _resolved(self, resolution: Resolution) -> None:
        now = self.loop.clock()
        server, server2 = resolution
        shown = int_to_ipv4(server) + (f" / {int_to_ipv4(server2)}" if server2 else "")
        try:
            if self.machine is None:
                machine = ClientMachine(self._params(resolution), self.io, self._random)
                log.info(
                    "qualifying with server %s (prefix %s)",
                    shown,
                    format_prefix(self.options.prefix),
                )
                with self._lock:
                    self._use_machine(machine)
                    machine.start(now)
                if not self._timer_added:
                    self.loop.add_machine(self._timed)
                    self._timer_added = True
            else:
                if resolution != self.resolution and not is_literal(self.servers.active[0]):
                    log.info("server %s is now %s: qualifying again", self.servers.active[0], shown)
                with self._lock:
                    self.machine.set_server(server, server2, now)
                    if self.servers.move_now:  # failover: no back-off wait (core/failover.py)
                        local = self._local_address(server)
                        self.machine.requalify(f"moved to server {shown}", now, local)
        except ValueError as exc:
            # The machine refuses a server it cannot use (not global unicast, RFC 4380 5.2.4):
            # a configuration fault, not a transient one.
            log.error("cannot use the server %s: %s", self.options.server, exc)
            self.loop.stop(EXIT_FAILED)
            return
        self.resolution = resolution
        self.servers.move_now = False
        self._after_input()

    # --- data path ------------------------------------------------------------------------

    def _on_discovery(self, data: bytes, source: tuple[str, int]) -> None:
        with self._lock:
            machine = self.machine
            if machine is not None:
                machine.receive_discovery(data, source, self.loop.clock())

    # --- events and timers ------------------------------------------------------------------

    def _after_input(self) -> None:
        """Sends the batch, handles the events an input caused, re-arms the timer if needed.

        Runs in the asyncio thread. The events are taken under the lock and handled after it
        (netlink and the hook are slow; the data path must not wait for them).
        """
        events: list[ClientEvent] = []
        with self._lock:
            self._notified = False
            self.io.flush()
            machine = self.machine
            if machine is None:
                return
            while (event := machine.next_event()) is not None:
                events.append(event)
            deadline = machine.next_deadline()
        for event in events:
            self._handle(event)
        armed = self._timed.armed
        # A later deadline needs no new timer: the old one fires, finds nothing due, and the
        # loop arms the next one. Only an earlier one must re-arm (a timer less per packet).
        if deadline is not None and (armed is None or deadline < armed):
            self.loop.rearm()

    def _expired(self, machine: ClientMachine) -> list[ClientEvent]:
        """After a timer expiry, lock held: send the batch, take the events."""
        self.io.flush()
        events: list[ClientEvent] = []
        while (event := machine.next_event()) is not None:
            events.append(event)
        return events

    def _handle_all(self, events: list[ClientEvent]) -> None:
        for event in events:
            self._handle(event)

    # --- the data thread's side (io/datathread.py), lock held ---------------------------------

    def _start_data_path(self, sock: socket.socket, tun_fd: int) -> None:
        loop = self.loop.loop

        def tun_error(fd: int, exc: OSError) -> None:
            loop.call_soon_threadsafe(self._tun_lost, fd, exc)

        self._data = DataThread(
            "teredo-data",
            sock,
            tun_fd,
            self._feed,
            lock=self._lock,
            clock=self.loop.clock,
            on_fatal=lambda why: self.loop.fail_soon(why, log),
            on_tun_error=tun_error,
        )
        self._data.start()

    def _use_machine(self, machine: ClientMachine | None) -> None:
        """Lock held: the machine the data thread feeds from its next wake-up on."""
        kernel = self.kernel
        if kernel is not None:
            # The kernel's map mirrors this machine's trusted peers and no other's.
            if self.machine is not None:
                self.machine.peers.watch = None
            kernel.offline()
            kernel.mirror.cleared()
            if machine is not None:
                machine.peers.watch = kernel.mirror
        self.machine = machine
        feed = self._feed
        feed.feed_udp = (machine.receive_udp if machine is not None else _ignore,)
        feed.feed_tun = machine.receive_tun if machine is not None else _ignore_tun
        self._slow = machine.slow_inputs if machine is not None else 0

    def _after_batch(self) -> None:
        """After each wake-up of the data thread: send the batch; when the full path ran
        (`slow_inputs` moved) and left events, or a deadline earlier than the armed timer, ask
        the asyncio thread for an `_after_input` (nothing slow runs in the data thread)."""
        self.io.flush()
        machine = self.machine
        if machine is None or machine.slow_inputs == self._slow:
            return
        self._slow = machine.slow_inputs
        if machine.has_events():
            self._wake_from_data_path()
            return
        deadline = machine.next_deadline()
        armed = self._timed.armed
        if deadline is not None and (armed is None or deadline < armed):
            self._wake_from_data_path()

    @property
    def data_path_faults(self) -> int:
        return self._data.faults if self._data is not None else 0

    def _wake_from_data_path(self) -> None:
        """From the data thread, lock held: ask the asyncio thread for an _after_input."""
        if not self._notified:
            self._notified = True
            self.loop.loop.call_soon_threadsafe(self._after_input)

    def _handle(self, event: ClientEvent) -> None:
        self.events.say(event)  # io/client_log.py
        if isinstance(event, Qualified):
            self.servers.qualified()
            self.tunnel.qualified(event.address, event.link_local, event.mtu)
            if self.kernel is not None:
                self.kernel.qualified(event.address, self._local_address())
            if self.upnp is not None:
                self.upnp.check(*event.mapping)
            self.loop.ready(f"qualified: {ipv6_text(event.address)}, NAT {event.nat}")
        elif isinstance(event, AddressChanged):
            self.tunnel.address_changed(event.old, event.new, event.link_local, event.mtu)
            if self.kernel is not None:
                self.kernel.qualified(event.new, self._local_address())
            if self.upnp is not None:
                self.upnp.check(*event.mapping)
        elif isinstance(event, MtuChanged):
            self.tunnel.mtu_changed(event.mtu)
        elif isinstance(event, Offline):
            self.tunnel.offline()
            if self.kernel is not None:
                self.kernel.offline()
            # systemd: the start ends at the first failed attempt too (a client that waits
            # for its server must not hold the boot); the status says it is not qualified.
            self.loop.ready(f"not qualified: {event.reason}")
        elif isinstance(event, SymmetricNat):
            if not event.qualified:
                self.loop.ready("not qualified: symmetric NAT")
        elif isinstance(event, ResolveServer) and self.servers.failover is not None:
            self.servers.failed()
        elif isinstance(event, ResolveServer):
            # After a loss of contact the name may point elsewhere now (Miredo re-resolves).
            names = (self.options.server, self.options.server2)
            if any(n is not None and not is_literal(n) for n in names):
                log.info("resolving the server name %s again", self.options.server)
            self.resolver.request(*names)

    # --- control ----------------------------------------------------------------------------

    def reload(self, options: ClientOptions) -> Reload:
        """SIGHUP: the hook, the default route, the refresh interval apply at once with the
        address kept; a new server, socket, prefix or symmetric-NAT policy applies by
        qualifying again; a new interface name needs a restart."""
        old = self.options
        if options.interface != old.interface:
            return Reload(restart="a new interface name")
        if options.datapath != old.datapath:
            return DATAPATH_RESTART
        self.options = options
        notes: list[str] = []
        if options.hook != old.hook:
            self._set_hook(options.hook)
            notes.append("new hook")
        if options.default_route != old.default_route:
            self.tunnel.set_default_route(options.default_route)
            notes.append("default route " + ("on" if options.default_route else "off"))
        if options.refuse_symmetric != old.refuse_symmetric:
            notes.append("SymmetricNat " + ("refuse" if options.refuse_symmetric else "accept"))
        if options.upnp != old.upnp:
            self._start_upnp()
            notes.append("UPnP " + ("yes" if options.upnp else "no, mapping removed"))
        if (
            options.socket_key != old.socket_key
            or options.prefix != old.prefix
            or options.refuse_symmetric != old.refuse_symmetric
        ):
            # A new socket (a new mapping) or prefix means a new address anyway.
            try:
                self._restart_machine()
            except StartError as err:
                # Without its socket the daemon is of no use: say why and stop.
                log.error("%s", err)
                self.loop.stop(EXIT_FAILED)
                return Reload(failed="the new socket cannot be opened: stopping")
            what = (
                "new socket or prefix"
                if options.socket_key != old.socket_key or options.prefix != old.prefix
                else "new symmetric NAT policy"
            )
            return Reload(applied=(f"{what}, qualifying again", *notes))
        if options.refresh_interval != old.refresh_interval:
            with self._lock:
                if self.machine is not None:
                    self.machine.set_refresh_interval(options.refresh_interval, self.loop.clock())
            notes.append(f"refresh interval {options.refresh_interval:g} s")
        # Local discovery is set by a flag only (LocalDiscovery is not a Miredo 1.2.6
        # directive), and flags do not change on SIGHUP: nothing to apply here.
        if (options.server, options.server2, options.more_servers) != (
            old.server,
            old.server2,
            old.more_servers,
        ):
            self._start_servers()
            return Reload(applied=(f"new server {options.server}, qualifying again", *notes))
        self._after_input()  # a shorter refresh interval may need an earlier timer
        return Reload(applied=("server unchanged, address kept", *notes))

    def _set_hook(self, path: str | None) -> None:
        if path is None or self.netlink is None:
            self.tunnel.hook = None
            return
        self.tunnel.hook = HookRunner(path, self.netlink.ifname, self.netlink.index())

    def _stop_data_path(self) -> None:
        data, self._data = self._data, None
        if data is not None:
            data.stop()

    def _restart_machine(self) -> None:
        self.resolver.cancel()
        self._stop_data_path()  # the thread uses the socket closed below
        with self._lock:
            machine = self.machine
            self._use_machine(None)
        if machine is not None:
            self.tunnel.offline()
        self._timed.armed = None
        self._close_socket()
        self.discovery.close()
        if self.tun is not None:
            self._serve_socket(self._bind(), self.tun)
        self.start()

    def summary(self) -> str:
        with self._lock:
            machine = self.machine
            status = machine.status() if machine is not None else {"state": "resolving the server"}
            kernel = self.kernel.summary() if self.kernel is not None else "data path: user"
        e = send_errors(getattr(self, "io", None))
        return (
            f"status {status}, send errors udp {e['udp']} tun {e['tun']} "
            f"discovery {e['discovery']}, configuration errors {self.tunnel.errors}; {kernel}"
        )

    def status(self) -> dict[str, object]:
        """The machine's status plus the I/O counters of summary(), for the control socket."""
        with self._lock:
            machine = self.machine
            status: dict[str, object] = (
                machine.status()
                if machine is not None
                else {"state": "resolving the server", "server": self.options.server}
            )
        status["send_errors"] = send_errors(getattr(self, "io", None))
        tunnel = getattr(self, "tunnel", None)
        status["configuration_errors"] = tunnel.errors if tunnel is not None else 0
        status["data_path_faults"] = self.data_path_faults
        with self._lock:
            status["datapath"] = "kernel" if self.kernel is not None else "user"
            status["kernel"] = self.kernel.counters() if self.kernel is not None else None
        status["tun"] = self.tun.name if self.tun is not None else None
        status["local_port"] = self.local_port
        status["local_discovery"] = self.discovery.active
        status["offline_reason"] = self.events.last_offline
        status.update(self.servers.status())
        if self.upnp is not None:
            status.update(upnp_status(self.upnp, status))
        return status

    def _start_upnp(self) -> None:
        """UPnP yes: map the socket's port on the NAT (again after a new socket), in the
        mapper's own thread; UPnP no (a reload): remove the mapping."""
        old = self.upnp
        if old is not None and (not self.options.upnp or old.port != self.local_port):
            self._stop_upnp()
        if self.options.upnp and self.upnp is None and self.sock is not None:
            self.upnp = UpnpMapper(self.local_port)
            self.upnp.start()

    def _stop_upnp(self) -> None:
        upnp, self.upnp = self.upnp, None
        if upnp is not None:
            upnp.stop()

    # --- the kernel data path (io/kclient.py) ------------------------------------------------

    def _attach_kernel(self, *, strict: bool) -> None:
        """client_encap on the TUN (the decapsulation attaches once qualified). Where it cannot:
        `strict` (--datapath kernel at start) no start, otherwise one line and the Python path."""
        kernel = self.kernel
        if kernel is None or self.netlink is None:
            return
        try:
            kernel.attach_tun(self.netlink.index())
        except OSError as exc:
            what = f"kernel data path for client on {self.netlink.ifname}: {exc}"
            if strict:
                raise StartError(what) from None
            log.info("data path: user (%s)", what)
            self._close_kernel()
            return
        if not self._mirror_timer:
            self._mirror_timer = True
            self.loop.add_machine(
                MirrorTimer(
                    lambda: None if self.kernel is None else self.kernel.mirror,
                    lambda: None if self.machine is None else self.machine.peers,
                    self._lock,
                    self.loop.clock,
                )
            )

    def _close_kernel(self) -> None:
        with self._lock:
            kernel, self.kernel = self.kernel, None
            if kernel is not None and self.machine is not None:
                self.machine.peers.watch = None
        if kernel is not None:
            kernel.close()

    def close(self) -> None:
        """Removes what the daemon created, last first: timers, the network watch, the
        resolver, discovery, the data thread, addresses and routes (and the hook's last
        calls), netlink, the interface, the socket."""
        self._undo.close()

    def _close_socket(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None

    def _close_tun(self) -> None:
        if self.tun is not None:
            # A TUN that is not persistent disappears with its last descriptor, and with it
            # every address and route still on it.
            self.tun.close()
            self.tun = None

    def _close_netlink(self) -> None:
        if self.netlink is not None:
            self.netlink.close()
            self.netlink = None

    # --- the interface removed under us (issue 14) ---------------------------------------------

    def _tun_lost(self, fd: int, exc: OSError) -> None:
        """The TUN fd `fd` failed (the interface was deleted): create it again and qualify
        again, or exit with EXIT_FAILED when that is impossible or keeps happening.

        Said once per loss, never per packet. A recreated interface is bare: the machine
        qualifies again at once, and its Qualified event puts the address and routes back.
        """
        tun = self.tun
        if tun is None or tun.fd != fd:
            return  # an old descriptor, already replaced
        now = self.loop.clock()
        recent = [t for t in self._tun_recreated if now - t < TUN_RECREATE_WINDOW]
        self._tun_recreated = [*recent, now]
        reason = exc.strerror or str(exc)
        if len(recent) >= TUN_RECREATE_MAX:
            log.error(
                "interface %s lost again (%s), %d times in %g s: giving up",
                tun.name,
                reason,
                len(self._tun_recreated),
                TUN_RECREATE_WINDOW,
            )
            self.loop.stop(EXIT_FAILED)
            return
        log.error("interface %s lost (%s): creating it again, qualifying again", tun.name, reason)
        self._stop_data_path()
        tun.close()
        self.tun = None
        self.tunnel.forget()
        try:
            new = self.tun = TunDevice.open(self.options.interface)
            disable_kernel_link_local(new.name)
            self._set_hook(self.options.hook)
            self.tunnel.prepare()
        except OSError as err:  # TunError, NetlinkConfigError
            log.error("cannot create the interface again: %s", err.strerror or err)
            self.loop.stop(EXIT_FAILED)
            return
        self.io.set_tun_fd(new.fd)
        self._attach_kernel(strict=False)  # the old link went with the old interface
        if self.sock is not None:
            self._start_data_path(self.sock, new.fd)
        with self._lock:
            if self.machine is not None:
                self.machine.requalify(
                    f"interface {new.name} created again", now, self._local_address()
                )
        self._after_input()

    def _local_address(self, server: int | None = None) -> tuple[int, int] | None:
        """The socket's local IPv4 and port towards the server (io/discovery.py)."""
        if server is None:
            if self.resolution is None:
                return None
            server = self.resolution[0]
        return local_address(server, self.local_port, self.options.bind_address)

    # --- network changes (issue 13, io/netwatch.py) -------------------------------------------

    def _network_ready(self) -> bool:
        return self.resolution is not None and self.sock is not None and self.machine is not None

    def _network_changed(self, change: Change, why: str, local: tuple[int, int] | None) -> None:
        if change is Change.MOVED:
            self._reopen_discovery()  # its group memberships name the old address
        now = self.loop.clock()
        with self._lock:
            machine = self.machine
            if machine is None:
                return
            if change is Change.DOWN:
                machine.network_down("no route to the server", now)
            elif change is Change.MOVED:
                machine.requalify(f"network changed ({why})", now, local)
            else:
                machine.refresh_now(now)
        self._after_input()

    def _reopen_discovery(self) -> None:
        """Local discovery (RFC 4380 5.2.8) on the interfaces and addresses of now."""
        if not self.options.local_discovery:
            return
        self.discovery.close()
        self.io.discovery_addresses = self.discovery.open(self.options.bind_address)

    # --- several servers (issue 13, io/servers.py) ---------------------------------------------

    def _candidates(self) -> list[Names]:
        """The configured servers in order: (name, secondary name); only the first has one."""
        opts = self.options
        return [(opts.server, opts.server2), *((name, None) for name in opts.more_servers)]

    def _start_servers(self) -> None:
        self.servers.start(self._candidates(), self.options.bind_address)


def _ignore(data: bytes, source: tuple[str, int], now: float) -> None:
    """Input that arrives before the machine exists (server name not resolved yet)."""


def _ignore_tun(packet: bytes, now: float) -> None:
    """See _ignore."""
