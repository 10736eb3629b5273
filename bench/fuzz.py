"""Fuzz every parser of the core (issue 12, "Hostile input").

    python -m bench.fuzz --target wire --runs 1000000            # atheris, coverage-guided
    python -m bench.fuzz --target wire --runs 20000 --engine random --seed 1   # no atheris
    python -m bench.fuzz --list

A target takes the fuzzer's bytes and feeds them to one family of parsers; a parser must return
a value or a DropReason (configuration: raise ConfigError) and nothing else may come out of it
(docs/robustness.md, "fuzzing"). Any other exception is a crash: atheris (libFuzzer) stops and
writes the input to tests/vectors/fuzz/crashers/; the random engine does the same. Every file
under tests/vectors/fuzz/ is replayed by tests/core/test_fuzz_regress.py on every CI run, with a
short seeded run of the random engine.

Engines: `atheris` (pip install -e '.[fuzz]'; libFuzzer's coverage-guided mutation of the
corpus in tests/vectors/fuzz/<target>/, new inputs go to a scratch directory unless
--update-corpus), `random` (no dependency: a seeded mutator of the same corpus and the built-in
seeds, no coverage feedback; what CI runs). `auto` picks atheris where it imports.
"""

# The core is imported inside the functions on purpose: atheris instruments a module for
# coverage only when it is imported after atheris.instrument_imports (in _run_atheris).
# ruff: noqa: PLC0415

from __future__ import annotations

import argparse
import contextlib
import hashlib
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VECTORS = ROOT / "tests" / "vectors" / "fuzz"
CRASHERS = VECTORS / "crashers"


@dataclass(frozen=True)
class Target:
    name: str
    doc: str
    one_input: Callable[[bytes], None]
    seeds: Callable[[], list[bytes]]


# ---------------------------------------------------------------- targets
# Imports of the core happen inside the functions: atheris must instrument the modules before
# they are first imported (atheris.instrument_imports in _run_atheris).


def _addr_input(data: bytes) -> None:
    from teredo.core import addr

    a16 = (data + bytes(16))[:16]
    addr.TeredoAddress.unpack(a16)
    addr.TeredoAddress.unpack(a16, prefix=None)
    addr.embedded_server(a16)
    addr.embedded_mapping(a16)
    addr.embedded_sockaddr(a16)
    addr.embedded_flags(a16)
    addr.is_cone(a16)
    addr.is_teredo(a16)
    addr.is_link_local(a16)
    addr.is_global_ipv4(int.from_bytes(a16[:4], "big"))
    text = data.decode("utf-8", "replace")
    parsed = addr.TeredoAddress.parse(text)
    if parsed is not None:
        assert addr.TeredoAddress.parse(str(parsed)) == parsed
    parsed = addr.TeredoAddress.parse(text, prefix=None)
    # parse_prefix and ipv4_to_int raise ValueError on bad text by contract (callers turn it
    # into a configuration or command-line error); anything else is a bug.
    with contextlib.suppress(ValueError):
        addr.parse_prefix(text)
    with contextlib.suppress(ValueError):
        addr.ipv4_to_int(text)


def _addr_seeds() -> list[bytes]:
    from teredo.core.addr import TEREDO_PREFIX, pack_address

    a = pack_address(TEREDO_PREFIX, 0xC6336401, 0x8000, 0x1234, 0x5678ABCD)
    return [
        a,
        b"2001:0:c633:6401:8000:edcb:a987:5432",
        b"2001::/32",
        b"3ffe:831f::/32",
        b"198.51.100.1",
        b"fe80::8000:f227:beff:fe9b",
    ]


def _wire_input(data: bytes) -> None:
    from teredo.core.counters import DropReason
    from teredo.core.wire import (
        TeredoPacket,
        parse_auth,
        parse_origin,
        parse_payload,
        parse_trailers,
    )

    parse_auth(data)
    parse_origin(data)
    parse_trailers(data)
    pkt = parse_payload(data)
    if isinstance(pkt, TeredoPacket):
        assert pkt.ip6_offset + pkt.ip6_length <= len(data)
        for value in (pkt.auth, pkt.nonce, pkt.confirmation, pkt.origin):
            assert not isinstance(value, DropReason)
        assert isinstance(pkt.trailers, (tuple, DropReason))
        assert len(pkt.ipv6) == pkt.ip6_length
        assert len(pkt.src) == len(pkt.dst) == 16
        assert pkt.is_bubble in (True, False)
        pkt.trailer_bytes  # noqa: B018  (the accessor is the code under test)
        repr(pkt)
    else:
        assert isinstance(pkt, DropReason)


def _wire_seeds() -> list[bytes]:
    from teredo.core.ipv6 import build_bubble, build_echo, build_rs
    from teredo.core.wire import (
        AlternateAddressTrailer,
        NeighborDiscoveryTrailer,
        NonceTrailer,
        RandomPortTrailer,
        build_auth,
        build_origin,
        build_trailers,
    )

    src = bytes.fromhex("20010000c633640180001234a9875432")
    dst = bytes.fromhex("2001db80000000000000000000000001")
    bubble = build_bubble(src, dst)
    echo = build_echo(src, dst, 1, 2, b"ping")
    rs = build_rs()
    trailers = build_trailers(
        [
            NonceTrailer(b"\x01\x02\x03\x04"),
            AlternateAddressTrailer(((0xC0A80102, 3544),)),
            NeighborDiscoveryTrailer(1),
            RandomPortTrailer(4321),
        ]
    )
    auth = build_auth(b"\x11" * 8)
    origin = build_origin(0xC6336401, 3544)
    return [
        bubble,
        echo,
        auth + rs,
        auth + origin + bubble,
        origin + echo,
        bubble + trailers,
        build_auth(b"\x22" * 8, client_id=b"id", auth_value=b"value", confirmation=1)
        + origin
        + echo
        + trailers,
    ]


def _trailers_input(data: bytes) -> None:
    """The bytes as an RFC 6081 trailer area: alone, then after a peer's bubble and after a
    data packet through a qualified client (which drops malformed areas by reason)."""
    from bench import fuzz_machines
    from teredo.core.counters import DropReason
    from teredo.core.wire import build_trailers, parse_trailers

    got = parse_trailers(data)
    if isinstance(got, DropReason):
        assert got in (
            DropReason.TRUNCATED_TRAILER,
            DropReason.BAD_TRAILER,
            DropReason.TOO_MANY_TRAILERS,
        )
    else:
        # Reserved bytes are not kept, so the encoding may differ; the meaning may not.
        assert parse_trailers(build_trailers(got)) == got
    for packet in fuzz_machines.trailer_carriers():
        fuzz_machines.client_input(bytes((7, 1)) + packet + data)


def _trailers_seeds() -> list[bytes]:
    from teredo.core.wire import (
        AlternateAddressTrailer,
        NeighborDiscoveryTrailer,
        NonceTrailer,
        RandomPortTrailer,
        UnknownTrailer,
        build_trailers,
    )

    return [
        b"",
        build_trailers([NonceTrailer(b"\x01\x02\x03\x04")]),
        build_trailers([AlternateAddressTrailer(((0xC0A80102, 3544), (0xC0A80103, 3545)))]),
        build_trailers([NeighborDiscoveryTrailer(0), RandomPortTrailer(40000)]),
        build_trailers([UnknownTrailer(0x7F, b"abc"), RandomPortTrailer(1)]),
        bytes((3, 8, 0, 0, 192, 168, 1, 2, 0, 0)),  # port 0
        bytes((5, 2, 0x9C)),  # runs past the end
    ]


def _ipv6_parsers(packet: bytes) -> None:
    from teredo.core import ipv6

    ipv6.parse_header(packet)
    ipv6.is_bubble(packet)
    for verify in (True, False):
        ipv6.parse_rs(packet, verify_checksum=verify)
        ipv6.parse_ra(packet, verify_checksum=verify)
        ipv6.parse_echo(packet, verify_checksum=verify)
        ipv6.parse_unreachable(packet, verify_checksum=verify)


def _ipv6_input(data: bytes) -> None:
    from teredo.core.ipv6 import NH_ICMPV6, build_icmpv6

    _ipv6_parsers(data)
    # The same bytes as an ICMPv6 message with a right checksum, so that the fuzzer reaches
    # past the checksum test without having to guess it.
    if len(data) >= 32:
        body = data[32:]
        packet = build_icmpv6(data[:16], data[16:32], body[:4].ljust(4, b"\0") + body[4:])
        assert packet[6] == NH_ICMPV6
        _ipv6_parsers(packet)


def _ipv6_seeds() -> list[bytes]:
    from teredo.core.ipv6 import build_bubble, build_echo, build_ra, build_rs, build_unreachable

    src = bytes.fromhex("fe800000000000008000f227beff9bfe")
    dst = bytes.fromhex("fe80000000000000ffffffffffffffff")
    prefix = bytes.fromhex("20010000c633640a0000000000000000")
    return [
        build_bubble(src, dst),
        build_rs(dst),
        build_rs(options=bytes([1, 1]) + bytes(6)),
        build_ra(src, dst, prefix),
        build_ra(src, dst, prefix, mtu=None),
        build_echo(src, dst, 7, 9, b"x" * 20, reply=True),
        build_unreachable(src, dst, 3, build_bubble(dst, src)),
    ]


def _ra_input(data: bytes) -> None:
    """The bytes as the options of an RA, in a Teredo packet the client's checks see
    (core/qualify.py check_ra: RFC 4380 section 5.2.1), with the right nonce and checksum."""
    from teredo.core.addr import LINK_LOCAL_RESTRICTED, TEREDO_PREFIX, server_link_local
    from teredo.core.client import check_ra
    from teredo.core.counters import DropReason
    from teredo.core.ipv6 import build_icmpv6
    from teredo.core.wire import TeredoPacket, build_auth, build_origin, parse_payload

    server = 0xC633640A
    nonce = b"\x5a" * 8
    head = data[:12].ljust(12, b"\0")
    # type 134 code 0, the checksum filled in, then the fuzzer's 12 bytes of RA body and the
    # options.
    msg = bytes([134, 0, 0, 0]) + head + data[12:]
    src = server_link_local(server)
    packet = build_icmpv6(src, LINK_LOCAL_RESTRICTED, msg)
    payload = build_auth(nonce) + build_origin(0xCB00710B, 0x1234) + packet
    pkt = parse_payload(payload)
    assert isinstance(pkt, TeredoPacket)
    got = check_ra(
        pkt,
        server,
        expected_source=server,
        nonce=nonce,
        prefix=TEREDO_PREFIX,
        server=server,
        router=src,
    )
    assert isinstance(got, DropReason) or got.mtu >= 1280
    _ipv6_parsers(packet)


def _ra_seeds() -> list[bytes]:
    import struct

    prefix = bytes.fromhex("20010000c633640a0000000000000000")
    body = struct.pack("!BBHII", 0, 0, 0, 0, 2000)
    pio = struct.pack("!BBBBIII16s", 3, 4, 64, 0x40, 0xFFFFFFFF, 0xFFFFFFFF, 0, prefix)
    mtu = struct.pack("!BBHI", 5, 1, 0, 1280)
    return [body + pio + mtu, body + pio, body + mtu + pio, body + pio + pio, body]


def _config_input(data: bytes) -> None:
    from teredo.core.config import ConfigError, Role, parse_config

    text = data.decode("utf-8", "surrogateescape")
    for role in (None, Role.CLIENT, Role.RELAY, Role.SERVER):
        with contextlib.suppress(ConfigError):
            parse_config(text, "fuzz.conf", role)


def _config_seeds() -> list[bytes]:
    return [
        b"RelayType client\nServerAddress 198.51.100.10\nInterfaceName teredo\n",
        b"RelayType cone\nPrefix 2001::\nInterfaceMTU 1280\nBindPort 3545\n",
        b"ServerBindAddress 198.51.100.10\nServerBindAddress2 198.51.100.11\nPrefix 2001:0::\n",
        b"# comment\n\n  RelayType\trestricted\nSyslogFacility local3\n"
        b"MetricsAddress 127.0.0.1:9100\n",
        b"RelayType client\nServerAddress teredo.example\nRefreshInterval 30.5\n",
        b"RelayType cone\nAnnounceTable 100\nAnnounceDrain 5\nAnycastIPv4 198.51.100.100\n",
    ]


def _server_input(data: bytes) -> None:
    from bench import fuzz_machines

    fuzz_machines.server_input(data)


def _relay_input(data: bytes) -> None:
    from bench import fuzz_machines

    fuzz_machines.relay_input(data)


def _client_input(data: bytes) -> None:
    from bench import fuzz_machines

    fuzz_machines.client_input(data)


def _machine_seeds() -> list[bytes]:
    from bench import fuzz_machines

    return fuzz_machines.machine_seeds()


TARGETS: dict[str, Target] = {
    t.name: t
    for t in (
        Target("addr", "Teredo addresses: bytes and text (core/addr.py)", _addr_input, _addr_seeds),
        Target(
            "wire",
            "UDP payloads: Auth, origin indication, IPv6 framing, trailers (core/wire.py)",
            _wire_input,
            _wire_seeds,
        ),
        Target(
            "trailers",
            "RFC 6081 trailer areas, alone and through a qualified client (core/wire.py)",
            _trailers_input,
            _trailers_seeds,
        ),
        Target(
            "ipv6",
            "IPv6 header, RS, RA, echo, unreachable, bubbles (core/ipv6.py)",
            _ipv6_input,
            _ipv6_seeds,
        ),
        Target("ra", "RA options through the client's RA checks (check_ra)", _ra_input, _ra_seeds),
        Target("server", "datagrams through the server machine", _server_input, _machine_seeds),
        Target(
            "relay",
            "datagrams and TUN packets through the relay machine",
            _relay_input,
            _machine_seeds,
        ),
        Target(
            "client",
            "datagrams and TUN packets through a qualified client",
            _client_input,
            _machine_seeds,
        ),
        Target(
            "config",
            "configuration files, every role (core/config.py)",
            _config_input,
            _config_seeds,
        ),
    )
}


# ---------------------------------------------------------------- corpus and replay


def corpus_files(target: str) -> list[Path]:
    """The stored corpus of `target` and its crashers, in a stable order."""
    files = sorted(p for p in (VECTORS / target).glob("*") if p.is_file())
    files += sorted(CRASHERS.glob(f"{target}-*"))
    return files


def seeds_of(target: str) -> list[bytes]:
    return TARGETS[target].seeds() + [p.read_bytes() for p in corpus_files(target)]


def mutate(rng: random.Random, data: bytes, pool: list[bytes], limit: int = 1500) -> bytes:
    """One to eight byte-level mutations of the libFuzzer kinds, bounded to `limit` bytes."""
    buf = bytearray(data)
    interesting = (0, 1, 0x7F, 0x80, 0xFF)
    for _ in range(rng.randint(1, 8)):
        op = rng.randrange(9)
        n = len(buf)
        if op == 0 and n:  # flip a bit
            i = rng.randrange(n)
            buf[i] ^= 1 << rng.randrange(8)
        elif op == 1 and n:  # set a byte
            buf[rng.randrange(n)] = rng.randrange(256)
        elif op == 2 and n:  # an interesting byte
            buf[rng.randrange(n)] = rng.choice(interesting)
        elif op == 3 and n:  # truncate
            del buf[rng.randrange(n) :]
        elif op == 4:  # insert random bytes
            i = rng.randrange(n + 1)
            buf[i:i] = rng.randbytes(rng.randint(1, 16))
        elif op == 5 and n > 1:  # erase a run
            i = rng.randrange(n)
            del buf[i : i + rng.randint(1, 16)]
        elif op == 6 and n > 1:  # a 16-bit field: 0, max, +-1
            i = rng.randrange(n - 1)
            value = int.from_bytes(buf[i : i + 2], "big")
            value = rng.choice((0, 0xFFFF, (value + 1) & 0xFFFF, (value - 1) & 0xFFFF))
            buf[i : i + 2] = value.to_bytes(2, "big")
        elif op == 7 and pool:  # splice with another input
            other = rng.choice(pool)
            i = rng.randrange(n + 1)
            j = rng.randrange(len(other) + 1)
            buf = buf[:i] + other[j:]
        elif op == 8 and n:  # duplicate a run
            i = rng.randrange(n)
            buf[i:i] = buf[i : i + rng.randint(1, 32)]
    return bytes(buf[:limit])


class FuzzCrashError(Exception):
    def __init__(self, target: str, data: bytes, error: BaseException) -> None:
        super().__init__(f"{target}: {type(error).__name__}: {error}")
        self.data = data
        self.error = error


def save_crasher(target: str, data: bytes) -> Path:
    CRASHERS.mkdir(parents=True, exist_ok=True)
    path = CRASHERS / f"{target}-{hashlib.sha1(data).hexdigest()[:16]}"  # noqa: S324 (a name)
    path.write_bytes(data)
    return path


def random_inputs(target: str, runs: int, seed: int) -> Iterator[bytes]:
    """The random engine's inputs: the seeds and corpus first, then `runs` mutations of them."""
    pool = seeds_of(target)
    yield from pool
    rng = random.Random(seed)
    for i in range(runs):
        if i % 16 == 0:
            yield rng.randbytes(rng.randint(0, 120))
        else:
            yield mutate(rng, rng.choice(pool), pool)


def run_random(target: str, runs: int, seed: int) -> tuple[int, float]:
    """Run the random engine; FuzzCrashError on the first failing input. Returns (inputs, s)."""
    one = TARGETS[target].one_input
    count = 0
    start = time.perf_counter()
    for data in random_inputs(target, runs, seed):
        try:
            one(data)
        except Exception as exc:
            raise FuzzCrashError(target, data, exc) from exc
        count += 1
    return count, time.perf_counter() - start


def _run_atheris(target: str, runs: int, seed: int, out: Path, extra: list[str]) -> None:
    """In the child process: hand the target to libFuzzer (which exits the process)."""
    import atheris

    with atheris.instrument_imports(include=["teredo"]):
        import teredo.core.addr
        import teredo.core.client
        import teredo.core.config
        import teredo.core.ipv6
        import teredo.core.peers
        import teredo.core.procedure
        import teredo.core.qualify
        import teredo.core.ratelimit
        import teredo.core.relay
        import teredo.core.server
        import teredo.core.wire  # noqa: F401

    one = TARGETS[target].one_input
    corpus = VECTORS / target
    corpus.mkdir(parents=True, exist_ok=True)
    # libFuzzer only reads its seeds from directories: the built-in seeds go to the scratch one.
    for data in TARGETS[target].seeds():
        (out / hashlib.sha1(data).hexdigest()).write_bytes(data)  # noqa: S324
    CRASHERS.mkdir(parents=True, exist_ok=True)
    argv = [
        sys.argv[0],
        f"-runs={runs}",
        f"-seed={seed}",
        "-max_len=1500",
        f"-artifact_prefix={CRASHERS}/{target}-",
        "-print_final_stats=1",
        *extra,
        str(out),
        str(corpus),
    ]
    atheris.Setup(argv, one)
    atheris.Fuzz()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.fuzz", description=__doc__.splitlines()[0])
    ap.add_argument("--target", choices=sorted(TARGETS))
    ap.add_argument("--runs", type=int, default=1_000_000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--engine", choices=("auto", "atheris", "random"), default="auto")
    ap.add_argument(
        "--update-corpus",
        action="store_true",
        help="atheris: store the corpus that gave coverage in tests/vectors/fuzz/<target>/",
    )
    ap.add_argument("--list", action="store_true")
    ap.add_argument("--atheris-child", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.list:
        for t in TARGETS.values():
            print(f"{t.name:8} {t.doc}")
        return 0
    if args.atheris_child:
        _run_atheris(args.target, args.runs, args.seed, Path(args.atheris_child), [])
        return 0
    if args.target is None:
        ap.error("--target is needed (or --list)")
    engine = args.engine
    if engine == "auto":
        try:
            import atheris  # noqa: F401
        except ImportError:
            engine = "random"
        else:
            engine = "atheris"
    if engine == "random":
        try:
            count, secs = run_random(args.target, args.runs, args.seed)
        except FuzzCrashError as crash:
            path = save_crasher(args.target, crash.data)
            print(f"CRASH {crash} (input saved to {path})", file=sys.stderr)
            return 1
        print(
            f"fuzz {args.target}: engine random, seed {args.seed}: {count} inputs in {secs:.1f} s "
            f"({count / secs:,.0f}/s), no crash"
        )
        return 0
    with tempfile.TemporaryDirectory(prefix=f"fuzz-{args.target}-") as scratch:
        cmd = [sys.executable, "-m", "bench.fuzz", "--target", args.target]
        cmd += ["--runs", str(args.runs), "--seed", str(args.seed), "--atheris-child", scratch]
        start = time.perf_counter()
        rc = subprocess.call(cmd, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT / "src")})
        secs = time.perf_counter() - start
        if rc == 0 and args.update_corpus:
            # libFuzzer keeps only inputs that added coverage (and reduces them): its scratch
            # corpus is small enough to store as it is.
            (VECTORS / args.target).mkdir(parents=True, exist_ok=True)
            for path in Path(scratch).iterdir():
                shutil.copyfile(path, VECTORS / args.target / path.name)
    verdict = "no crash" if rc == 0 else f"CRASH (exit {rc}; see {CRASHERS})"
    print(
        f"fuzz {args.target}: engine atheris, seed {args.seed}: {args.runs} runs in {secs:.1f} s "
        f"({args.runs / secs:,.0f}/s with start-up), {verdict}"
    )
    return 0 if rc == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
