"""Means, 95% intervals and verdicts over seeds: one definition for verify and the benchmarks."""

from __future__ import annotations

import math
from collections.abc import Sequence


def mean_ci(values: Sequence[float]) -> tuple[float, float]:
    """Mean and the half-width of its 95% t interval (nan with fewer than two values)."""
    from scipy import stats

    v = [float(x) for x in values if x is not None]
    if not v:
        return math.nan, math.nan
    m = sum(v) / len(v)
    if len(v) < 2:
        return m, math.nan
    sd = math.sqrt(sum((x - m) ** 2 for x in v) / (len(v) - 1))
    return m, float(stats.t.ppf(0.975, len(v) - 1)) * sd / math.sqrt(len(v))


def paired_difference(a: Sequence[float], b: Sequence[float]) -> tuple[float, float]:
    """Mean of a[i] - b[i] (same seed i) with its 95% interval."""
    if len(a) != len(b):
        raise ValueError("paired values need the same seeds on both sides")
    return mean_ci([x - y for x, y in zip(a, b, strict=True)])


def verdict(diff: float, half_width: float) -> str:
    """helps / hurts when the 95% interval of the difference excludes zero, else no measurable effect.

    One seed gives no interval, so no verdict other than "no measurable effect" is possible.
    """
    if math.isnan(diff) or math.isnan(half_width) or abs(diff) <= half_width:
        return "no measurable effect"
    return "helps" if diff > 0 else "hurts"
