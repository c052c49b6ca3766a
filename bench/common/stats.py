"""Every figure is a median and a p99 over its runs: the summary both tables (the live run's,
bench/live/table.py, and the side-by-side run's, bench/sidebyside/report.py) are made of."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass


def percentile(samples: Sequence[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default), q in [0, 100]."""
    if not samples:
        raise ValueError("no samples")
    xs = sorted(samples)
    pos = (len(xs) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = math.ceil(pos)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def median(samples: Sequence[float]) -> float:
    return percentile(samples, 50)


def p99(samples: Sequence[float]) -> float:
    return percentile(samples, 99)


@dataclass
class Dist:
    """Median and p99 of a sample, in the row's unit."""

    runs: int
    median: float
    p99: float
    min: float
    max: float

    @classmethod
    def of(cls, samples: Sequence[float], scale: float = 1.0) -> Dist:
        xs = [x * scale for x in samples]
        return cls(len(xs), median(xs), p99(xs), min(xs), max(xs))

    @classmethod
    def single(cls, value: float) -> Dist:
        return cls(1, value, value, value, value)
