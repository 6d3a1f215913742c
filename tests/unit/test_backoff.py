"""The one backoff rule (`core.backoff`): exponential growth from a base, a cap, equal jitter."""

from __future__ import annotations

import random

import pytest

from core.backoff import Backoff, backoff_ceiling_s, backoff_s, equal_jitter_s


def test_the_ceiling_doubles_from_the_base_up_to_the_cap() -> None:
    ceilings = [backoff_ceiling_s(n, base_s=5.0, cap_s=600.0) for n in range(1, 10)]
    assert ceilings == [5.0, 10.0, 20.0, 40.0, 80.0, 160.0, 320.0, 600.0, 600.0]


def test_a_count_below_one_is_the_first_failure() -> None:
    assert backoff_ceiling_s(0, base_s=0.2, cap_s=5.0) == backoff_ceiling_s(1, base_s=0.2, cap_s=5.0) == 0.2
    assert backoff_ceiling_s(-3, base_s=0.2, cap_s=5.0) == 0.2


def test_a_huge_failure_count_stays_at_the_cap() -> None:
    assert backoff_s(5000, base_s=30.0, cap_s=3600.0, rng=lambda: 0.999) <= 3600.0


@pytest.mark.parametrize("draw", [0.0, 0.25, 0.5, 0.999999])
def test_equal_jitter_keeps_half_and_draws_the_other_half(draw: float) -> None:
    pause = equal_jitter_s(10.0, rng=lambda: draw)
    assert pause == pytest.approx(5.0 + 5.0 * draw)
    assert 5.0 <= pause < 10.0


@pytest.mark.parametrize(("base_s", "cap_s"), [(0.2, 5.0), (0.5, 8.0), (5.0, 600.0), (30.0, 3600.0)])
def test_every_pause_lies_between_half_the_ceiling_and_the_ceiling(base_s: float, cap_s: float) -> None:
    rng = random.Random(7)
    for failures in range(1, 20):
        ceiling = backoff_ceiling_s(failures, base_s=base_s, cap_s=cap_s)
        pauses = {backoff_s(failures, base_s=base_s, cap_s=cap_s, rng=rng.random) for _ in range(50)}
        assert all(ceiling / 2 <= pause <= ceiling for pause in pauses)
        assert len(pauses) > 1, "jittered"


def test_pauses_grow_until_the_cap() -> None:
    # With the random draw fixed, each pause is exactly twice the one before until the cap holds it.
    pauses = [backoff_s(n, base_s=1.0, cap_s=16.0, rng=lambda: 0.5) for n in range(1, 8)]
    assert pauses == [0.75, 1.5, 3.0, 6.0, 12.0, 12.0, 12.0]


def test_a_seeded_random_gives_the_same_pauses() -> None:
    def pauses(seed: int) -> list[float]:
        rng = random.Random(seed)
        return [backoff_s(n, base_s=0.5, cap_s=8.0, rng=rng.random) for n in range(1, 12)]

    assert pauses(42) == pauses(42)
    assert pauses(42) != pauses(43)


def test_the_default_random_matches_random_uniform_over_the_same_range() -> None:
    # The callers used `random.uniform(ceiling / 2, ceiling)` before: the same numbers for the same seed.
    random.seed(11)
    ours = [backoff_s(n, base_s=5.0, cap_s=600.0) for n in range(1, 10)]
    random.seed(11)
    theirs = []
    for n in range(1, 10):
        ceiling = min(600.0, 5.0 * 2 ** (n - 1))
        theirs.append(random.uniform(ceiling / 2, ceiling))
    assert ours == theirs


def test_backoff_counts_failures_and_starts_over_after_a_reset() -> None:
    backoff = Backoff(base_s=0.2, cap_s=5.0, rng=lambda: 0.999999)
    delays = [backoff.next_delay() for _ in range(7)]
    assert delays == sorted(delays)
    assert delays[0] < 0.2 <= delays[1]
    assert delays[-1] == pytest.approx(5.0)
    assert backoff.failures == 7
    backoff.reset()
    assert backoff.failures == 0
    assert backoff.next_delay() < 0.2


def test_backoff_with_a_seeded_random_is_deterministic() -> None:
    def delays(seed: int) -> list[float]:
        backoff = Backoff(base_s=0.2, cap_s=5.0, rng=random.Random(seed).random)
        return [backoff.next_delay() for _ in range(8)]

    assert delays(3) == delays(3)
