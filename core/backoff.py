"""The one backoff rule for every retry: exponential growth, a cap, and equal jitter.

Equal jitter (the name used in AWS's "Exponential Backoff And Jitter") keeps half of each pause and draws the
other half at random: a retry never comes sooner than half the ceiling, and workers that failed together spread
out instead of retrying in step. Full jitter would draw the whole pause from [0, ceiling]; no caller uses it.
"""

from __future__ import annotations

import random
from collections.abc import Callable

Random = Callable[[], float]
"""A source of uniform numbers in [0, 1): `random.random`, or a seeded `random.Random(n).random` in tests."""


def backoff_ceiling_s(failures: int, *, base_s: float, cap_s: float) -> float:
    """The longest pause after `failures` consecutive failures: `base_s`, doubled per further failure, at most
    `cap_s`. A count below 1 is treated as 1."""
    doublings = min(max(0, failures - 1), 1000)  # 2**1000 passes any cap, and stays clear of float overflow
    return min(cap_s, base_s * 2.0**doublings)


def equal_jitter_s(ceiling_s: float, rng: Random = random.random) -> float:
    """A pause drawn from [ceiling/2, ceiling]: half kept, half random."""
    half = ceiling_s / 2
    return half + rng() * half


def backoff_s(failures: int, *, base_s: float, cap_s: float, rng: Random = random.random) -> float:
    """The pause before the next try, after `failures` consecutive failures (1 = the first): exponential from
    `base_s`, capped at `cap_s`, with equal jitter."""
    return equal_jitter_s(backoff_ceiling_s(failures, base_s=base_s, cap_s=cap_s), rng)


class Backoff:
    """Consecutive failures counted for `backoff_s`: `next_delay()` after each failure, `reset()` after a success."""

    def __init__(self, *, base_s: float, cap_s: float, rng: Random = random.random) -> None:
        self.base_s = base_s
        self.cap_s = cap_s
        self.failures = 0
        self._rng = rng

    def next_delay(self) -> float:
        self.failures += 1
        return backoff_s(self.failures, base_s=self.base_s, cap_s=self.cap_s, rng=self._rng)

    def reset(self) -> None:
        self.failures = 0
