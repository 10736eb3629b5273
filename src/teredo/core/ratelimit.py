"""Token-bucket rate limits with memory fixed at construction, whatever arrives.

A Teredo server must not be an amplifier or a free relay (RFC 4380 section 7.4; TEREDO-SPEC.md
section 7): limits apply per source and overall. Sources share a fixed table of buckets by hash,
so a flood from many sources cannot grow state; a source that collides with a flooder shares its
bucket, which a table of a few thousand slots keeps rare.
"""

from __future__ import annotations

from array import array
from collections.abc import Hashable


class TokenBucket:
    """One bucket: `rate` tokens per second, at most `burst` saved up."""

    __slots__ = ("_stamp", "_tokens", "burst", "rate")

    def __init__(self, rate: float, burst: float) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError("rate must be > 0 and burst >= 1")
        self.rate = rate
        self.burst = burst
        self._tokens = burst
        self._stamp: float | None = None

    def allow(self, now: float) -> bool:
        stamp = self._stamp
        tokens = self._tokens
        if stamp is None or now > stamp:
            if stamp is not None:
                tokens = min(self.burst, tokens + (now - stamp) * self.rate)
            self._stamp = now
        if tokens >= 1.0:
            self._tokens = tokens - 1.0
            return True
        self._tokens = tokens
        return False


class BucketTable:
    """Per-key token buckets in `slots` fixed slots (keys hash into them)."""

    __slots__ = ("_mask", "_stamps", "_tokens", "burst", "rate")

    def __init__(self, rate: float, burst: float, slots: int = 4096) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError("rate must be > 0 and burst >= 1")
        if slots < 1 or slots & (slots - 1):
            raise ValueError("slots must be a power of two")
        self.rate = rate
        self.burst = burst
        self._mask = slots - 1
        self._tokens = array("d", [burst]) * slots
        # -1.0: never used. Times are monotonic seconds from the driver, never negative.
        self._stamps = array("d", [-1.0]) * slots

    def allow(self, key: Hashable, now: float) -> bool:
        slot = hash(key) & self._mask
        stamp = self._stamps[slot]
        tokens = self._tokens[slot]
        if now > stamp:
            if stamp >= 0.0:
                tokens = min(self.burst, tokens + (now - stamp) * self.rate)
            self._stamps[slot] = now
        if tokens >= 1.0:
            self._tokens[slot] = tokens - 1.0
            return True
        self._tokens[slot] = tokens
        return False
