"""A small ctypes binding of libbpf1, the kernel community's BPF loader (docs/kernel.md).

Only what the kernel data path uses: open/load/close an object, find its programs and maps, map
update/lookup/delete/iterate, attach a program to a device through a BPF link (tcx ingress or
egress, kernel 6.6+; XDP), pin/unpin, and `bpf_prog_test_run_opts` for the tests.

Links, not tc filters or netlink XDP: a link belongs to its file descriptor, so when the daemon
exits, however it exits (SIGTERM, SIGKILL, a crash), the kernel closes the descriptor and detaches
the program; nothing is left on the device. Pinning a link (bpffs) is the one way to make it
outlive the process, and the daemons do not pin (a pinned link would need a clean-up by name).

Debian 12's libbpf is 1.1, which predates `bpf_program__attach_tcx` (libbpf 1.3): tcx links are
made with the generic `bpf_link_create(prog_fd, ifindex, BPF_TCX_INGRESS, NULL)`, the same
BPF_LINK_CREATE system call. Every failure raises `BpfError` naming the operation and the errno
(`EPERM`, `EINVAL`, ...); a failed load carries the tail of libbpf's log (the verifier's words).
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import functools
import os
import threading
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Final

__all__ = [
    "BPF_ANY",
    "BPF_EXIST",
    "BPF_NOEXIST",
    "BPF_TCX_EGRESS",
    "BPF_TCX_INGRESS",
    "BPF_XDP",
    "XDP_FLAGS_DRV_MODE",
    "XDP_FLAGS_SKB_MODE",
    "BpfError",
    "BpfLink",
    "BpfMap",
    "BpfObject",
    "BpfProgram",
    "TestRun",
    "attached_count",
    "libbpf",
    "possible_cpus",
]

# enum bpf_attach_type (include/uapi/linux/bpf.h of kernel 6.6+; Debian 12's uapi header is 6.1's
# and lacks the tcx ones).
BPF_XDP: Final = 37
BPF_TCX_INGRESS: Final = 46
BPF_TCX_EGRESS: Final = 47
# XDP attach modes (include/uapi/linux/if_link.h), the flags of an XDP link.
XDP_FLAGS_SKB_MODE: Final = 1 << 1
XDP_FLAGS_DRV_MODE: Final = 1 << 2
# bpf_map_update_elem flags.
BPF_ANY: Final = 0
BPF_NOEXIST: Final = 1
BPF_EXIST: Final = 2

_LIBBPF_INFO: Final = 1  # enum libbpf_print_level: WARN 0, INFO 1, DEBUG 2
_LOG_LINES: Final = 40  # libbpf log lines kept for the next error message


class BpfError(OSError):
    """A libbpf call failed: `what` names it, `errno` is the kernel's reason."""

    def __init__(self, what: str, err: int, log: str = "") -> None:
        name = errno.errorcode.get(err, f"errno {err}")
        text = f"{what}: {name} ({os.strerror(err)})"
        if log:
            text += f"\n{log}"
        super().__init__(err, text)
        self.what = what
        self.log = log

    def __str__(self) -> str:
        return str(self.strerror)


class _TestRunOpts(ctypes.Structure):
    # struct bpf_test_run_opts (libbpf bpf.h), its `sz` tells libbpf which fields we know.
    _fields_ = (
        ("sz", ctypes.c_size_t),
        ("data_in", ctypes.c_void_p),
        ("data_out", ctypes.c_void_p),
        ("data_size_in", ctypes.c_uint32),
        ("data_size_out", ctypes.c_uint32),
        ("ctx_in", ctypes.c_void_p),
        ("ctx_out", ctypes.c_void_p),
        ("ctx_size_in", ctypes.c_uint32),
        ("ctx_size_out", ctypes.c_uint32),
        ("retval", ctypes.c_uint32),
        ("repeat", ctypes.c_int),
        ("duration", ctypes.c_uint32),
        ("flags", ctypes.c_uint32),
        ("cpu", ctypes.c_uint32),
        ("batch_size", ctypes.c_uint32),
    )


class _LinkCreateOpts(ctypes.Structure):
    """The head of struct bpf_link_create_opts (libbpf checks `sz`; the rest stays zero)."""

    _fields_ = (("sz", ctypes.c_size_t), ("flags", ctypes.c_uint32))


# libbpf_print_fn_t: int (*)(enum libbpf_print_level, const char *fmt, va_list ap)
_PRINT_FN = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_void_p)


class _Lib:
    """libbpf.so.1 and libc, with argument types declared once."""

    def __init__(self) -> None:
        path = ctypes.util.find_library("bpf") or "libbpf.so.1"
        try:
            lib = ctypes.CDLL(path, use_errno=True)
        except OSError as exc:
            raise BpfError("load libbpf.so.1 (Debian package libbpf1)", errno.ENOENT) from exc
        self.lib = lib
        self.libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        vp, ci, cu32, cp = ctypes.c_void_p, ctypes.c_int, ctypes.c_uint32, ctypes.c_char_p
        sigs: dict[str, tuple[object, list[object]]] = {
            "bpf_object__open_file": (vp, [cp, vp]),
            "bpf_object__load": (ci, [vp]),
            "bpf_object__close": (None, [vp]),
            "bpf_object__find_program_by_name": (vp, [vp, cp]),
            "bpf_object__find_map_by_name": (vp, [vp, cp]),
            "bpf_program__fd": (ci, [vp]),
            "bpf_map__fd": (ci, [vp]),
            "bpf_map__set_max_entries": (ci, [vp, cu32]),
            "bpf_map__max_entries": (cu32, [vp]),
            "bpf_map__set_map_flags": (ci, [vp, cu32]),
            "bpf_map__map_flags": (cu32, [vp]),
            "bpf_map__key_size": (cu32, [vp]),
            "bpf_map__value_size": (cu32, [vp]),
            "bpf_map_update_elem": (ci, [ci, vp, vp, ctypes.c_uint64]),
            "bpf_map_lookup_elem": (ci, [ci, vp, vp]),
            "bpf_map_delete_elem": (ci, [ci, vp]),
            "bpf_map_get_next_key": (ci, [ci, vp, vp]),
            "bpf_map_lookup_batch": (ci, [ci, vp, vp, vp, vp, ctypes.POINTER(cu32), vp]),
            "bpf_link_create": (ci, [ci, ci, ci, vp]),
            "bpf_obj_pin": (ci, [ci, cp]),
            "bpf_obj_get": (ci, [cp]),
            "bpf_prog_test_run_opts": (ci, [ci, ctypes.POINTER(_TestRunOpts)]),
            "bpf_prog_query": (ci, [ci, ci, cu32, ctypes.POINTER(cu32), vp, ctypes.POINTER(cu32)]),
            "libbpf_num_possible_cpus": (ci, []),
            "libbpf_set_print": (vp, [_PRINT_FN]),
        }
        for name, (restype, argtypes) in sigs.items():
            fn = getattr(lib, name)
            fn.restype = restype
            fn.argtypes = argtypes
        self.libc.vsnprintf.restype = ctypes.c_int
        self.libc.vsnprintf.argtypes = [ctypes.c_char_p, ctypes.c_size_t, cp, vp]
        # libbpf's log (the verifier's messages on a failed load) goes to a ring of lines that the
        # next BpfError carries, not to stderr: a daemon that falls back says why in one line.
        self.log: deque[str] = deque(maxlen=_LOG_LINES)
        self.lock = threading.Lock()
        self._printer = _PRINT_FN(self._print)  # kept alive as long as libbpf may call it
        lib.libbpf_set_print(self._printer)

    def _print(self, level: int, fmt: bytes | None, args: int | None) -> int:
        if level > _LIBBPF_INFO:  # debug lines: every map and relocation, not a reason
            return 0
        buf = ctypes.create_string_buffer(1 << 20)  # a verifier log comes as one message
        n = int(self.libc.vsnprintf(buf, len(buf), fmt, args))
        for line in buf.value.decode("utf-8", "replace").splitlines():
            if line.strip():
                self.log.append(line.rstrip())
        return max(n, 0)

    def take_log(self) -> str:
        lines = list(self.log)
        self.log.clear()
        return "\n".join(lines)

    def check(self, what: str, rc: int) -> int:
        """`rc` of a call that returns a negative errno (libbpf 1.x convention)."""
        if rc < 0:
            raise BpfError(what, -rc, self.take_log())
        return rc

    def check_ptr(self, what: str, ptr: int | None) -> int:
        if not ptr:
            raise BpfError(what, ctypes.get_errno() or errno.ENOENT, self.take_log())
        return ptr


@functools.cache
def libbpf() -> _Lib:
    """The loaded library (BpfError ENOENT where libbpf1 is not installed)."""
    return _Lib()


@functools.cache
def possible_cpus() -> int:
    """How many per-CPU slots a per-CPU map's value has (libbpf_num_possible_cpus)."""
    lib = libbpf()
    return lib.check("libbpf_num_possible_cpus", lib.lib.libbpf_num_possible_cpus())


def attached_count(ifindex: int, attach_type: int) -> int:
    """How many programs are attached at `attach_type` (BPF_TCX_INGRESS, BPF_TCX_EGRESS) of
    interface `ifindex` in this network namespace (BPF_PROG_QUERY): what the clean-up tests
    check, since bpftool 7.1 (Debian 12) does not list tcx links by interface."""
    lib = libbpf()
    flags = ctypes.c_uint32(0)
    count = ctypes.c_uint32(0)
    rc = lib.lib.bpf_prog_query(
        ifindex, attach_type, 0, ctypes.byref(flags), None, ctypes.byref(count)
    )
    lib.check(f"query of interface {ifindex}", rc)
    return int(count.value)


@dataclass(frozen=True, slots=True)
class TestRun:
    """What `bpf_prog_test_run_opts` returned: the program's verdict and the packet it left."""

    retval: int
    data: bytes
    duration_ns: int
    ctx: bytes = b""  # the struct __sk_buff after the run, when one was given


class BpfProgram:
    def __init__(self, obj: BpfObject, name: str, ptr: int) -> None:
        self._obj = obj
        self.name = name
        self._ptr = ptr

    @property
    def fd(self) -> int:
        lib = libbpf()
        return lib.check(f"program {self.name}: fd", lib.lib.bpf_program__fd(self._ptr))

    def attach(self, ifindex: int, attach_type: int, flags: int = 0) -> BpfLink:
        """Attach to device `ifindex` as BPF_TCX_INGRESS/EGRESS or BPF_XDP, through a link;
        `flags`: an XDP link's mode (XDP_FLAGS_SKB_MODE or XDP_FLAGS_DRV_MODE)."""
        lib = libbpf()
        opts = _LinkCreateOpts(ctypes.sizeof(_LinkCreateOpts), flags)
        with lib.lock:
            fd = lib.check(
                f"attach {self.name} to ifindex {ifindex} (type {attach_type}, flags {flags})",
                lib.lib.bpf_link_create(self.fd, ifindex, attach_type, ctypes.byref(opts)),
            )
        return BpfLink(fd, f"{self.name}@{ifindex}")

    def test_run(
        self, data: bytes, *, repeat: int = 1, out_size: int = 4096, ctx: bytes | None = None
    ) -> TestRun:
        """Run the program once (or `repeat` times) on `data`, a packet from its Ethernet
        header on (tc and XDP programs), without a device: the tests' way into the kernel.
        `ctx`: a struct __sk_buff for a tc program (the kernel takes a few fields of it, e.g.
        gso_segs and gso_size), returned as it is after the run in TestRun.ctx."""
        lib = libbpf()
        din = ctypes.create_string_buffer(data, len(data))
        dout = ctypes.create_string_buffer(max(out_size, len(data) + 256))
        opts = _TestRunOpts()
        opts.sz = ctypes.sizeof(_TestRunOpts)
        opts.data_in = ctypes.cast(din, ctypes.c_void_p)
        opts.data_size_in = len(data)
        opts.data_out = ctypes.cast(dout, ctypes.c_void_p)
        opts.data_size_out = len(dout)
        opts.repeat = repeat
        cin = cout = None
        if ctx is not None:
            cin = ctypes.create_string_buffer(ctx, len(ctx))
            cout = ctypes.create_string_buffer(len(ctx))
            opts.ctx_in = ctypes.cast(cin, ctypes.c_void_p)
            opts.ctx_size_in = len(ctx)
            opts.ctx_out = ctypes.cast(cout, ctypes.c_void_p)
            opts.ctx_size_out = len(ctx)
        with lib.lock:
            lib.check(f"test run of {self.name}", lib.lib.bpf_prog_test_run_opts(self.fd, opts))
        ctx_out = cout.raw[: opts.ctx_size_out] if cout is not None else b""
        return TestRun(opts.retval, dout.raw[: opts.data_size_out], opts.duration, ctx_out)


class BpfMap:
    """A map of a loaded object; keys and values are bytes of the map's own sizes (a per-CPU
    map's value is `possible_cpus()` values, each rounded up to 8 bytes, as the kernel wants)."""

    def __init__(self, obj: BpfObject, name: str, ptr: int) -> None:
        self._obj = obj
        self.name = name
        self._ptr = ptr
        lib = libbpf().lib
        self.key_size = int(lib.bpf_map__key_size(ptr))
        self._value_size = int(lib.bpf_map__value_size(ptr))

    @property
    def fd(self) -> int:
        lib = libbpf()
        return lib.check(f"map {self.name}: fd", lib.lib.bpf_map__fd(self._ptr))

    @property
    def max_entries(self) -> int:
        return int(libbpf().lib.bpf_map__max_entries(self._ptr))

    def set_max_entries(self, n: int) -> None:
        """Before load only: the map's capacity."""
        lib = libbpf()
        lib.check(f"map {self.name}: max_entries", lib.lib.bpf_map__set_max_entries(self._ptr, n))

    def set_flags(self, flags: int) -> None:
        """Before load only: BPF_F_* map flags (e.g. BPF_F_NO_PREALLOC)."""
        lib = libbpf()
        lib.check(f"map {self.name}: flags", lib.lib.bpf_map__set_map_flags(self._ptr, flags))

    @property
    def flags(self) -> int:
        return int(libbpf().lib.bpf_map__map_flags(self._ptr))

    def value_buffer_size(self, percpu: bool) -> int:
        if percpu:
            return ((self._value_size + 7) // 8 * 8) * possible_cpus()
        return self._value_size

    def _key(self, key: bytes) -> ctypes.Array[ctypes.c_char]:
        if len(key) != self.key_size:
            raise ValueError(f"map {self.name}: key of {len(key)} bytes, not {self.key_size}")
        return ctypes.create_string_buffer(key, len(key))

    def update(self, key: bytes, value: bytes, flags: int = BPF_ANY) -> None:
        lib = libbpf()
        k = self._key(key)
        v = ctypes.create_string_buffer(value, len(value))
        lib.check(f"map {self.name}: update", lib.lib.bpf_map_update_elem(self.fd, k, v, flags))

    def lookup(self, key: bytes, *, percpu: bool = False) -> bytes | None:
        """The value at `key`, None if there is none."""
        lib = libbpf()
        k = self._key(key)
        v = ctypes.create_string_buffer(self.value_buffer_size(percpu))
        rc = lib.lib.bpf_map_lookup_elem(self.fd, k, v)
        if rc == -errno.ENOENT:
            return None
        lib.check(f"map {self.name}: lookup", rc)
        return v.raw

    def delete(self, key: bytes) -> bool:
        """Remove `key`; False if it was not there."""
        lib = libbpf()
        rc = lib.lib.bpf_map_delete_elem(self.fd, self._key(key))
        if rc == -errno.ENOENT:
            return False
        lib.check(f"map {self.name}: delete", rc)
        return True

    def keys(self) -> Iterator[bytes]:
        """Every key, by bpf_map_get_next_key (a hash map's order; keys deleted meanwhile may
        restart the walk, as the kernel documents)."""
        lib = libbpf()
        fd = self.fd
        nxt = ctypes.create_string_buffer(self.key_size)
        rc = lib.lib.bpf_map_get_next_key(fd, None, nxt)
        while rc == 0:
            key = nxt.raw
            yield key
            cur = ctypes.create_string_buffer(key, self.key_size)
            rc = lib.lib.bpf_map_get_next_key(fd, cur, nxt)
        if rc != -errno.ENOENT:
            lib.check(f"map {self.name}: next key", rc)

    def lookup_batch(
        self, cursor: bytes | None, count: int
    ) -> tuple[int, bytes, bytes, bytes | None]:
        """Up to `count` entries in one BPF_MAP_LOOKUP_BATCH call, starting at `cursor` (None:
        the map's start): (how many, their keys end to end, their values end to end, the
        cursor of the next call or None once the walk is done). Two bytes objects, not one per
        entry: a walk of a large map allocates little. For a hash map the cursor is a bucket
        index: entries added or deleted meanwhile never restart the walk (unlike `keys`), they
        are seen once or not at all. A bucket holding more than `count` entries raises ENOSPC:
        pass a few hundred or more."""
        lib = libbpf()
        ks, vs = self.key_size, self._value_size
        token = 8 if ks < 8 else ks  # a hash map's batch token is a u32; arrays use a key
        in_batch = None if cursor is None else ctypes.create_string_buffer(cursor, token)
        out_batch = ctypes.create_string_buffer(token)
        keys = ctypes.create_string_buffer(ks * count)
        values = ctypes.create_string_buffer(vs * count)
        n = ctypes.c_uint32(count)
        rc = lib.lib.bpf_map_lookup_batch(
            self.fd, in_batch, out_batch, keys, values, ctypes.byref(n), None
        )
        if rc not in (0, -errno.ENOENT):
            lib.check(f"map {self.name}: lookup batch", rc)
        got = n.value
        return (
            got,
            keys.raw[: ks * got],
            values.raw[: vs * got],
            (None if rc == -errno.ENOENT else out_batch.raw),
        )

    def items(self, *, percpu: bool = False) -> Iterator[tuple[bytes, bytes]]:
        for key in self.keys():
            value = self.lookup(key, percpu=percpu)
            if value is not None:
                yield key, value


class BpfLink:
    """An attachment owned by a file descriptor: closing it detaches the program."""

    def __init__(self, fd: int, name: str) -> None:
        self.fd: int | None = fd
        self.name = name
        self.pinned: str | None = None

    def pin(self, path: str) -> None:
        """Make the link outlive this process (bpffs path); `unpin` undoes it."""
        lib = libbpf()
        if self.fd is None:
            raise BpfError(f"pin {self.name}", errno.EBADF)
        lib.check(f"pin {self.name} at {path}", lib.lib.bpf_obj_pin(self.fd, path.encode()))
        self.pinned = path

    def unpin(self) -> None:
        if self.pinned is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.pinned)
            self.pinned = None

    def destroy(self) -> None:
        """Unpin and close: the program is detached once no descriptor or pin holds the link."""
        self.unpin()
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


class BpfObject:
    """An object file's programs and maps, loaded into the kernel by `load()`."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        lib = libbpf()
        self.path = os.fspath(path)
        with lib.lock:
            lib.take_log()
            self._ptr: int | None = lib.check_ptr(
                f"open {self.path}", lib.lib.bpf_object__open_file(self.path.encode(), None)
            )
            lib.take_log()
        self.loaded = False

    def _live(self) -> int:
        if self._ptr is None:
            raise BpfError(f"{self.path}: closed", errno.EBADF)
        return self._ptr

    def load(self) -> None:
        lib = libbpf()
        with lib.lock:
            lib.take_log()
            lib.check(f"load {self.path}", lib.lib.bpf_object__load(self._live()))
            lib.take_log()  # a successful load's warnings belong to no later error
        self.loaded = True

    def program(self, name: str) -> BpfProgram:
        lib = libbpf()
        ptr = lib.check_ptr(
            f"{self.path}: program {name}",
            lib.lib.bpf_object__find_program_by_name(self._live(), name.encode()),
        )
        return BpfProgram(self, name, ptr)

    def map(self, name: str) -> BpfMap:
        lib = libbpf()
        ptr = lib.check_ptr(
            f"{self.path}: map {name}",
            lib.lib.bpf_object__find_map_by_name(self._live(), name.encode()),
        )
        return BpfMap(self, name, ptr)

    def close(self) -> None:
        """Unload: the maps and programs go once no link or pin holds them."""
        if self._ptr is not None:
            libbpf().lib.bpf_object__close(self._ptr)
            self._ptr = None

    def __enter__(self) -> BpfObject:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
