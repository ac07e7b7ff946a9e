"""A run's metrics as per-key series, and the few statistics the rules need.

Plain Python on purpose: a run has at most a few thousand iterations, and the doctor must
import in a blink inside a live training loop.
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

# JsonlSink writes NaN as null and ±inf as ±1e308; both read back as "not finite"
_NONFINITE_MAGNITUDE = 1e300


@dataclass(frozen=True)
class Series:
    """One metric over the iterations that logged it (eval metrics may be sparse)."""

    iterations: tuple[int, ...]
    values: tuple[float, ...]

    def __len__(self) -> int:
        return len(self.values)

    def head(self, n: int) -> "Series":
        return Series(self.iterations[:n], self.values[:n])

    def tail(self, n: int) -> "Series":
        return Series(self.iterations[-n:], self.values[-n:]) if n > 0 else Series((), ())

    def between(self, start: int, stop: int) -> "Series":
        """Points with start <= iteration < stop (iterations are sorted: two bisections)."""
        lo, hi = bisect.bisect_left(self.iterations, start), bisect.bisect_left(self.iterations, stop)
        return Series(self.iterations[lo:hi], self.values[lo:hi])

    def mean(self) -> float:
        return mean(self.values)

    def above(self, limit: float) -> list[tuple[int, float]]:
        """(iteration, value) of the points above ``limit``."""
        return [(i, v) for i, v in zip(self.iterations, self.values) if v > limit]

    def span(self) -> str:
        """'40-49' for evidence strings."""
        if not self.iterations:
            return "-"
        first, last = self.iterations[0], self.iterations[-1]
        return str(first) if first == last else f"{first}-{last}"


@dataclass
class RunTrace:
    """Metrics of one run, finished or live. ``nonfinite`` keeps where a metric was NaN/inf
    (those points are left out of ``series`` so the statistics stay finite)."""

    series: dict[str, Series]
    samples: list[dict[str, Any]] = field(default_factory=list)
    nonfinite: dict[str, list[int]] = field(default_factory=dict)
    n_iterations: int = 0

    def get(self, *keys: str, min_points: int = 1) -> Series | None:
        """The first of ``keys`` the run logged with at least ``min_points`` points; None when
        absent, so that each rule skips silently on runs that do not log its metrics."""
        for key in keys:
            s = self.series.get(key)
            if s is not None and len(s) >= min_points:
                return s
        return None

    def key(self, *keys: str) -> str | None:
        """Which of ``keys`` ``get`` would pick (for evidence strings)."""
        return next((k for k in keys if k in self.series and len(self.series[k])), None)


def build_trace(rows: Iterable[Mapping[str, Any]], samples: Iterable[Mapping[str, Any]] = ()) -> RunTrace:
    """metrics.jsonl rows -> per-key series. Rows without an integer ``iteration`` take the
    next number; non-numeric values (strings, lists) are ignored."""
    points: dict[str, list[tuple[int, float]]] = {}
    nonfinite: dict[str, list[int]] = {}
    iterations: set[int] = set()
    for position, row in enumerate(rows):
        iteration = row.get("iteration", position)
        iteration = int(iteration) if isinstance(iteration, (int, float)) else position
        iterations.add(iteration)
        for key, value in row.items():
            if key == "iteration":
                continue
            if value is None:
                nonfinite.setdefault(key, []).append(iteration)
                continue
            if isinstance(value, bool):
                value = float(value)
            if not isinstance(value, (int, float)):
                continue
            value = float(value)
            if not math.isfinite(value) or abs(value) >= _NONFINITE_MAGNITUDE:
                nonfinite.setdefault(key, []).append(iteration)
                continue
            points.setdefault(key, []).append((iteration, value))
    series = {}
    for key, pairs in points.items():
        pairs.sort(key=lambda p: p[0])
        series[key] = Series(tuple(i for i, _ in pairs), tuple(v for _, v in pairs))
    return RunTrace(series, [dict(s) for s in samples], nonfinite, len(iterations))


# ---- statistics ---------------------------------------------------------------------------


def mean(values: Iterable[float]) -> float:
    values = list(values)
    return sum(values) / len(values) if values else math.nan


def median(values: Iterable[float]) -> float:
    ordered = sorted(values)
    n = len(ordered)
    if n == 0:
        return math.nan
    mid = n // 2
    return ordered[mid] if n % 2 else 0.5 * (ordered[mid - 1] + ordered[mid])


def window_size(n_points: int, window: int) -> int:
    """The configured window, shrunk for short runs so "initial" and "recent" stay apart."""
    return max(1, min(window, n_points // 3))


@dataclass(frozen=True)
class Ends:
    """A metric's first and latest ``width`` points: the start-against-end comparison most
    rules make."""

    series: Series
    width: int  # window_size: the configured window, shrunk for short runs
    start: Series
    end: Series

    @property
    def first(self) -> float:
        return self.start.mean()

    @property
    def recent(self) -> float:
        return self.end.mean()


def ends(s: Series | None, window: int) -> Ends | None:
    """The first and the last ``window_size(len(s), window)`` points of ``s`` (None: None)."""
    if s is None:
        return None
    w = window_size(len(s), window)
    return Ends(s, w, s.head(w), s.tail(w))


def robust_spikes(s: Series, z: float, lookback: int) -> list[tuple[int, float, float]]:
    """(iteration, value, baseline) for points more than ``z`` robust standard deviations
    from the median of the ``lookback`` points before them.

    Robust = median and 1.4826·MAD (a consistent estimator of σ under Gaussian noise), so one
    earlier spike does not hide the next. A few points can have a tiny MAD by chance, so the
    scale is floored by the noise of the whole series (MAD of first differences / √2, blind
    to slow trends) and by 10% of the baseline. For a non-negative metric (value loss, grad
    norm) only upward jumps count: a loss that drops is not a spike."""
    diffs = [b - a for a, b in zip(s.values, s.values[1:])]
    centre_diff = median(diffs)
    series_noise = 1.4826 * median(abs(d - centre_diff) for d in diffs) / math.sqrt(2) if diffs else 0.0
    spikes = []
    for k in range(lookback, len(s)):
        before = s.values[k - lookback : k]
        centre = median(before)
        local = 1.4826 * median(abs(v - centre) for v in before)
        scale = max(local, series_noise, 0.1 * abs(centre), 1e-12)
        jump = s.values[k] - centre
        if (jump if min(before) >= 0 else abs(jump)) > z * scale:
            spikes.append((s.iterations[k], s.values[k], centre))
    return spikes


def fmt(value: float) -> str:
    """Three significant digits, for evidence strings."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "nan"
    return f"{value:.3g}"


def fmt_iterations(iterations: list[int], limit: int = 8) -> str:
    shown = ", ".join(str(i) for i in iterations[:limit])
    return shown + (f" (+{len(iterations) - limit} more)" if len(iterations) > limit else "")
