"""The probe machine (`teredo probe`, RFC 4380 section 5.2.1 questions) under a fake clock.

RS are checked with the project's own parsers; answers are RAs built with core/ipv6 + core/wire
(and one captured from Miredo); every drop is checked by its reason.
"""

from __future__ import annotations

import json
from itertools import count
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from teredo.core.addr import (
    LINK_LOCAL_CONE,
    LINK_LOCAL_RESTRICTED,
    TEREDO_PREFIX,
    Address,
    ipv4_to_int,
    server_link_local,
)
from teredo.core.client import NatType
from teredo.core.counters import DropReason
from teredo.core.ipv6 import build_ra, parse_rs
from teredo.core.probe import (
    Datagram,
    Phase,
    ProbeMachine,
    ProbeParams,
    ProbeResult,
    choose,
)
from teredo.core.wire import build_auth, build_origin, parse_payload

SERVER = "198.51.100.10"
SERVER2 = "198.51.100.11"
SRV = (SERVER, 3544)
SRV2 = (SERVER2, 3544)
MAPPING = ("203.0.113.77", 51234)
OTHER_MAPPING = ("203.0.113.77", 40000)
LOCAL = ("192.168.1.2", 3545)
T0 = 500.0
VECTORS = Path(__file__).resolve().parent.parent / "vectors" / "miredo_captures.json"


def make(
    *,
    rounds: int = 3,
    timeout: float = 1.0,
    local: tuple[str, int] | None = LOCAL,
    server2: str | None = None,
) -> ProbeMachine:
    seq = count(1)

    def rng(n: int) -> bytes:
        return next(seq).to_bytes(n, "big")

    params = ProbeParams(
        ipv4_to_int(SERVER),
        None if server2 is None else ipv4_to_int(server2),
        rounds=rounds,
        timeout=timeout,
        local_address=None if local is None else (ipv4_to_int(local[0]), local[1]),
    )
    return ProbeMachine(params, rng, "test")


def ra_for(
    rs_payload: bytes,
    mapping: tuple[str, int] = MAPPING,
    *,
    nonce: bytes | None = None,
    origin: bool = True,
    src: bytes | None = None,
    server: str = SERVER,
    mtu: int | None = 1280,
) -> bytes:
    """The RA a server sends for `rs_payload`: Auth with the RS nonce, OI, RA to the RS source."""
    rs = parse_payload(rs_payload)
    assert not isinstance(rs, DropReason)
    assert rs.nonce is not None
    prefix = TEREDO_PREFIX + ipv4_to_int(server).to_bytes(4, "big") + bytes(8)
    router = server_link_local(ipv4_to_int(server)) if src is None else src
    ra = build_ra(router, rs.src, prefix, mtu=mtu)
    auth = build_auth(rs.nonce if nonce is None else nonce)
    oi = build_origin(ipv4_to_int(mapping[0]), mapping[1]) if origin else b""
    return auth + oi + ra


def only(datagrams: list[Datagram]) -> Datagram:
    assert len(datagrams) == 1, datagrams
    return datagrams[0]


def run_answering(
    m: ProbeMachine,
    *,
    primary: tuple[str, int] | None = MAPPING,
    secondary: tuple[str, int] | None = MAPPING,
    cone: bool = False,
    rtt: float = 0.01,
) -> list[Datagram]:
    """Drive `m` to the end with a fake server: answers (or silence) per phase, fake clock."""
    now = T0
    sent: list[Datagram] = []
    out = m.start(now)
    for _ in range(100):
        if m.done:
            break
        if not out:
            d = m.next_deadline()
            assert d is not None
            now = d
            out = m.handle_timer(now)
            continue
        payload, dest = only(out)
        sent.append((payload, dest))
        phase = m.phase
        answer: tuple[bytes, tuple[str, int]] | None = None
        if phase is Phase.PRIMARY and primary is not None:
            answer = ra_for(payload, primary), SRV
        elif phase is Phase.CONE and cone and primary is not None:
            answer = ra_for(payload, primary), SRV2
        elif phase is Phase.SECONDARY and secondary is not None:
            answer = ra_for(payload, secondary), SRV2
        if answer is None:
            out = []
            continue
        now += rtt
        out = m.receive(answer[0], answer[1], now)
    assert m.done
    return sent


# --- what goes out ------------------------------------------------------------------------------


def test_rs_are_valid_with_fresh_nonces_and_cone_flag_only_on_the_cone_rs() -> None:
    m = make()
    sent = run_answering(m, cone=False)
    nonces = []
    for payload, dest in sent:
        pkt = parse_payload(payload)
        assert not isinstance(pkt, DropReason)
        assert pkt.nonce is not None
        assert pkt.origin is None
        assert pkt.confirmation == 0
        rs = parse_rs(pkt.ipv6)
        assert not isinstance(rs, DropReason), rs
        assert rs.hop_limit == 255  # RFC 4861 6.1.1: a server drops anything else
        nonces.append(pkt.nonce)
        assert dest in (SRV, SRV2)
    phases = [(p, d) for p, d in sent]
    # 3 primary RS, 3 unanswered cone RS (to the primary), 1 secondary RS answered at once.
    assert [d for _p, d in phases] == [SRV] * 6 + [SRV2]
    sources = [parse_rs(parse_payload(p).ipv6).src for p, _d in sent]  # type: ignore[union-attr]
    assert sources == [LINK_LOCAL_RESTRICTED] * 3 + [LINK_LOCAL_CONE] * 3 + [LINK_LOCAL_RESTRICTED]
    assert len(set(nonces)) == len(nonces)  # section 5.2.2: one nonce per RS
    assert m.result().sent == 7


def test_rs_count_is_bounded_when_nothing_answers_and_ends_after_rounds_timeouts() -> None:
    m = make(rounds=4, timeout=0.25)
    out = m.start(T0)
    sends = len(out)
    now = T0
    while not m.done:
        d = m.next_deadline()
        assert d is not None
        assert d > now
        now = d
        sends += len(m.handle_timer(now))
    assert sends == 4  # primary only: a dead server is not asked anything else
    assert now == pytest.approx(T0 + 4 * 0.25)
    r = m.result()
    assert not r.reachable
    assert r.loss == 1.0
    assert r.nat is NatType.UNKNOWN
    assert r.secondary is None
    assert r.cone is None
    assert r.errors[0] == "no answer to 4 RS"
    assert m.next_deadline() is None
    assert m.handle_timer(now + 100) == []


def test_at_most_three_rounds_of_rs_in_all() -> None:
    m = make(rounds=2)
    sent = run_answering(m, secondary=None, cone=False)
    assert len(sent) == 2 * 3
    r = m.result()
    assert r.secondary is False
    assert r.cone is False
    assert r.nat is NatType.UNKNOWN


def test_early_timer_does_nothing() -> None:
    m = make()
    m.start(T0)
    assert m.handle_timer(T0 + 0.5) == []
    assert m.result().sent == 1


# --- answers ----------------------------------------------------------------------------------


def test_captured_miredo_ra_completes_a_round() -> None:
    packets = json.loads(VECTORS.read_text())["packets"]
    rs = next(p for p in packets if p["name"] == "rs")
    ra = next(p for p in packets if p["name"] == "ra" and p["dst"] == rs["src"])
    nonce = bytes.fromhex(rs["payload"])[4:12]
    params = ProbeParams(ipv4_to_int(ra["src"]), rounds=1)
    m = ProbeMachine(params, lambda n: nonce[:n])
    payload, dest = only(m.start(T0))
    assert dest == (ra["src"], 3544)
    assert payload == bytes.fromhex(rs["payload"])  # byte for byte what Miredo's client sends
    out = m.receive(bytes.fromhex(ra["payload"]), (ra["src"], ra["sport"]), T0 + 0.002)
    assert m.phase is Phase.CONE
    assert len(out) == 1
    r = m.result()
    assert r.reachable
    assert r.rtts == pytest.approx((0.002,))
    assert r.mapping == (rs["src"], rs["sport"])
    assert r.prefix == "2001:0:c633:640a::/64"
    assert r.mtu == 1280


def test_restricted_nat() -> None:
    m = make()
    run_answering(m, cone=False)
    r = m.result()
    assert r.nat is NatType.RESTRICTED
    assert r.mapping == MAPPING
    assert r.secondary_mapping == MAPPING
    assert r.reachable
    assert r.loss == 0.0
    assert len(r.rtts) == 3
    assert r.rtt_median == pytest.approx(0.01)
    assert r.usable


def test_cone_nat_when_the_other_address_gets_through() -> None:
    m = make()
    sent = run_answering(m, cone=True)
    r = m.result()
    assert r.nat is NatType.CONE
    assert r.cone is True
    assert r.secondary is True
    assert len(sent) == 3 + 1 + 1  # the cone test stops at its first answer


def test_symmetric_nat_when_the_secondary_sees_another_mapping() -> None:
    m = make()
    run_answering(m, secondary=OTHER_MAPPING)
    r = m.result()
    assert r.nat is NatType.SYMMETRIC
    assert r.usable  # our client qualifies there (RFC 6081 Symmetric NAT Support)
    assert r.reachable
    assert r.behaviour is not None
    assert r.behaviour.symmetric
    assert r.to_json()["nat_behaviour"] == r.behaviour.as_dict()
    assert r.mapping == MAPPING
    assert r.secondary_mapping == OTHER_MAPPING


def test_no_nat_when_the_mapping_is_our_own_address() -> None:
    m = make(local=MAPPING)
    run_answering(m, cone=True)
    assert m.result().nat is NatType.NONE
    m = make(local=("203.0.113.77", 1))  # same IPv4, other port: a NAT after all
    run_answering(m, cone=True)
    assert m.result().nat is NatType.CONE


def test_explicit_secondary_address_is_used() -> None:
    m = make(server2="198.51.100.50")
    out = m.start(T0)
    now = T0
    for _ in range(3):
        payload, dest = only(out)
        assert dest == SRV
        now += 0.01
        out = m.receive(ra_for(payload), SRV, now)
    for _ in range(3):  # cone RS unanswered
        now = m.next_deadline()  # type: ignore[assignment]
        out = m.handle_timer(now)
    payload, dest = only(out)
    assert dest == ("198.51.100.50", 3544)
    m.receive(ra_for(payload), ("198.51.100.50", 3544), now + 0.01)
    r = m.result()
    assert r.secondary is True
    assert r.server2 == "198.51.100.50"
    assert r.nat is NatType.RESTRICTED


# --- drops --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("build", "source", "reason"),
    [
        (lambda p: ra_for(p, nonce=b"\xee" * 8), SRV, DropReason.RA_BAD_NONCE),
        (lambda p: ra_for(p, origin=False), SRV, DropReason.RA_WITHOUT_ORIGIN),
        (lambda p: ra_for(p)[13:], SRV, DropReason.RA_WITHOUT_AUTH),
        (ra_for, SRV2, DropReason.RA_NOT_FROM_SERVER),  # C=0 RS: same address
        (ra_for, ("198.51.100.12", 3544), DropReason.RA_NOT_FROM_SERVER),
        (ra_for, (SERVER, 3545), DropReason.RA_NOT_FROM_SERVER),
        (lambda p: ra_for(p, src=LINK_LOCAL_CONE), SRV, DropReason.RA_WRONG_SOURCE),
        (
            lambda p: ra_for(p, server="198.51.100.20", src=server_link_local(ipv4_to_int(SERVER))),
            SRV,
            DropReason.RA_WRONG_PREFIX,
        ),
        (lambda p: ra_for(p, ("192.168.1.2", 3545)), SRV, DropReason.NOT_GLOBAL_IPV4),
        (lambda p: b"\x00\x01", SRV, DropReason.TRUNCATED_AUTH),
        (lambda p: p, SRV, DropReason.RA_WITHOUT_ORIGIN),  # our own RS reflected back
        (lambda p: p[:13] + build_origin(1, 2) + p[13:], SRV, DropReason.BAD_ICMPV6),
    ],
)
def test_bad_answers_are_dropped_with_their_reason(build, source, reason) -> None:  # type: ignore[no-untyped-def]
    m = make()
    payload, _dest = only(m.start(T0))
    assert m.receive(build(payload), source, T0 + 0.01) == []
    assert m.drops.get(reason) == 1
    assert m.phase is Phase.PRIMARY
    assert m.result().rtts == ()
    # The round goes on: the right answer still completes it.
    out = m.receive(ra_for(payload), SRV, T0 + 0.02)
    assert len(out) == 1
    assert m.result().rtts == pytest.approx((0.02,))


def test_late_answer_counts_as_late_not_as_a_round() -> None:
    m = make(timeout=1.0)
    first, _ = only(m.start(T0))
    second, _ = only(m.handle_timer(T0 + 1.0))
    assert m.receive(ra_for(first), SRV, T0 + 1.1) == []
    r = m.result()
    assert r.late == 1
    assert r.rtts == ()
    assert r.drops == {"ra_unexpected": 1}
    m.receive(ra_for(second), SRV, T0 + 1.2)
    r = m.result()
    # The third round has started; two answered-or-lost rounds so far, one answer in time.
    assert r.rtts == pytest.approx((0.2,))
    assert r.primary_sent == 3
    assert r.late == 1


def test_cone_answer_from_the_primary_address_is_not_a_cone_answer() -> None:
    m = make(rounds=1)
    payload, _ = only(m.start(T0))
    cone_rs, dest = only(m.receive(ra_for(payload), SRV, T0 + 0.01))
    assert m.phase is Phase.CONE
    assert dest == SRV
    assert m.receive(ra_for(cone_rs), SRV, T0 + 0.02) == []
    assert m.drops.get(DropReason.RA_NOT_FROM_SERVER) == 1
    assert any("cone RS was answered from the primary" in e for e in m.result().errors)


def test_answer_after_the_end_is_dropped() -> None:
    m = make(rounds=1)
    sent = run_answering(m)
    assert m.receive(ra_for(sent[-1][0]), SRV2, T0 + 99) == []
    assert m.drops.get(DropReason.RA_UNEXPECTED) == 1


def test_abort_keeps_what_was_learnt() -> None:
    m = make()
    payload, _ = only(m.start(T0))
    m.receive(ra_for(payload), SRV, T0 + 0.01)
    m.abort("total time limit")
    r = m.result()
    assert m.done
    assert r.reachable
    assert r.mapping == MAPPING
    assert any("stopped in the primary phase" in e for e in r.errors)


def test_parameters_are_checked() -> None:
    rng = bytes
    with pytest.raises(ValueError, match="not global"):
        ProbeMachine(ProbeParams(ipv4_to_int("127.0.0.1")), rng)
    with pytest.raises(ValueError, match="not global"):
        ProbeMachine(ProbeParams(ipv4_to_int(SERVER), ipv4_to_int("10.0.0.1")), rng)
    with pytest.raises(ValueError, match="same"):
        ProbeMachine(ProbeParams(ipv4_to_int(SERVER), ipv4_to_int(SERVER)), rng)
    with pytest.raises(ValueError, match="rounds"):
        ProbeMachine(ProbeParams(ipv4_to_int(SERVER), rounds=0), rng)
    with pytest.raises(ValueError, match="timeout"):
        ProbeMachine(ProbeParams(ipv4_to_int(SERVER), timeout=float("nan")), rng)


# --- the choice ---------------------------------------------------------------------------------


def result(
    name: str, rtts: tuple[float, ...], sent: int, nat: NatType = NatType.RESTRICTED
) -> ProbeResult:
    return ProbeResult(
        server=name,
        server2=name,
        reachable=bool(rtts),
        rtts=rtts,
        primary_sent=sent,
        nat=nat if rtts else NatType.UNKNOWN,
        name=name,
    )


def test_choice_lowest_median_then_loss_symmetric_last() -> None:
    fast_sym = result("a", (0.001, 0.001, 0.001), 3, NatType.SYMMETRIC)
    slow = result("b", (0.5, 0.75, 0.5), 3)
    mid_lossy = result("c", (0.125, 0.375), 3)  # binary fractions: equal medians exactly
    mid = result("d", (0.375, 0.125, 0.25), 3)
    dead = result("e", (), 3)
    best, why = choose([fast_sym, slow, mid_lossy, dead])
    assert best is mid_lossy  # a symmetric NAT only when no server sees another kind
    assert "median RTT 250.0 ms" in why
    assert "1 unusable" in why
    best, why = choose([mid_lossy, mid])  # equal medians (250 ms): the lower loss wins
    assert best is mid
    assert "loss 0%" in why
    best, why = choose([dead, fast_sym])
    assert best is fast_sym
    assert "symmetric NAT: our client qualifies with its primary mapping" in why
    assert choose([dead]) == (None, "no server answered")
    assert choose([]) == (None, "no server probed")


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200), st.sampled_from([SRV, SRV2, ("198.51.100.12", 3544)]))
def test_any_datagram_is_dropped_or_handled_never_raises(data: bytes, source: Address) -> None:
    m = make()
    m.start(T0)
    out = m.receive(data, source, T0 + 0.01)
    # Without the right nonce (random bytes cannot guess 8 bytes here) nothing completes a round.
    assert out == []
    assert m.drops.total() == 1
    assert m.result().rtts == ()
