"""Small statistics on Python lists: percentile-bootstrap intervals (Efron & Tibshirani 1993).

Used wherever tether states a measured quantity with its uncertainty: the demo's evaluation,
and the reward model's held-out accuracy judged against chance.
"""

from __future__ import annotations

import random
from typing import Sequence


def bootstrap_ci(values: Sequence[float], resamples: int = 2000, seed: int = 0,
                 level: float = 0.95) -> tuple[float, float, float]:
    """(mean, low, high): the percentile bootstrap interval of the mean."""
    n = len(values)
    if n == 0:
        return float("nan"), float("nan"), float("nan")
    mean = sum(values) / n
    rng = random.Random(seed)
    means = sorted(sum(values[rng.randrange(n)] for _ in range(n)) / n for _ in range(resamples))
    lo_i = int((1 - level) / 2 * resamples)
    hi_i = min(resamples - 1, int((1 + level) / 2 * resamples))
    return mean, means[lo_i], means[hi_i]


def grouped_accuracy_ci(correct: Sequence[float], groups: Sequence[int], weights: Sequence[float] | None = None,
                        resamples: int = 2000, seed: int = 0, level: float = 0.95) -> tuple[float, float, float]:
    """(accuracy, low, high) of weighted per-item correctness, with the interval from
    resampling *groups* (the prompts): the pairs of one prompt share their responses, so they
    are not independent and resampling them singly would make the interval too narrow."""
    weights = [1.0] * len(correct) if weights is None else list(weights)
    if not correct:
        return float("nan"), float("nan"), float("nan")
    by_group: dict[int, list[float]] = {}
    for c, g, w in zip(correct, groups, weights):
        totals = by_group.setdefault(g, [0.0, 0.0])
        totals[0] += c * w
        totals[1] += w
    sums = list(by_group.values())
    accuracy = sum(s for s, _ in sums) / sum(w for _, w in sums)
    rng = random.Random(seed)
    n = len(sums)
    draws = []
    for _ in range(resamples):
        picked = [sums[rng.randrange(n)] for _ in range(n)]
        draws.append(sum(s for s, _ in picked) / sum(w for _, w in picked))
    draws.sort()
    lo_i = int((1 - level) / 2 * resamples)
    hi_i = min(resamples - 1, int((1 + level) / 2 * resamples))
    return accuracy, draws[lo_i], draws[hi_i]
