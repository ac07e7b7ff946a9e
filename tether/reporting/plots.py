"""PNG plots of a run's metrics, with matplotlib's Agg canvas (no display, no global backend
switch: Figure + FigureCanvasAgg leave pyplot's state alone, so a notebook that imported
tether keeps its own backend)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from tether.diagnostics.trace import Series
from tether.errors import TetherError

# namespaces in the order a reader wants them; anything else follows alphabetically
GROUP_ORDER = ["objective", "eval", "rewards", "logps", "policy", "losses", "value", "rollout", "optim", "guard", "time"]
SCORE_KEY = "objective/score_mean"
KL_KEYS = ("objective/kl_k3", "objective/kl_k1")


def _matplotlib() -> tuple[Any, Any]:
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise TetherError("plots need matplotlib: pip install 'tether[report]'") from None
    return Figure, FigureCanvasAgg


def metric_groups(keys: list[str]) -> dict[str, list[str]]:
    """{"objective": ["objective/kl_k1", ...], ...} in reading order."""
    groups: dict[str, list[str]] = {}
    for key in sorted(keys):
        groups.setdefault(key.split("/", 1)[0] if "/" in key else "other", []).append(key)
    rank = {name: k for k, name in enumerate(GROUP_ORDER)}
    return dict(sorted(groups.items(), key=lambda item: (rank.get(item[0], len(rank)), item[0])))


def smooth(values: tuple[float, ...] | list[float], window: int | None = None) -> list[float]:
    """Centred moving average (the window shrinks at the ends). Centred rather than an EMA:
    an EMA lags, which bends a score-vs-KL curve and hides where a drop really starts."""
    n = len(values)
    if window is None:
        window = max(1, n // 25)  # half-width: ~4% of the run
    prefix = [0.0]
    for v in values:
        prefix.append(prefix[-1] + v)
    out = []
    for k in range(n):
        lo, hi = max(0, k - window), min(n, k + window + 1)
        out.append((prefix[hi] - prefix[lo]) / (hi - lo))
    return out


def _save(fig: Any, canvas_cls: Any, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas_cls(fig)
    fig.savefig(path, dpi=90, format="png")
    return path


def plot_group(title: str, series: dict[str, Series], path: Path, marks: dict[str, list[int]] | None = None) -> Path:
    """One PNG with a small panel per metric of a namespace. ``marks`` draws the doctor's
    finding iterations as red bands on the panels of the metrics they cite."""
    Figure, Canvas = _matplotlib()
    keys = [k for k in series if len(series[k])]
    ncols = min(3, max(1, len(keys)))
    nrows = max(1, math.ceil(len(keys) / ncols))
    fig = Figure(figsize=(4.4 * ncols, 2.7 * nrows), layout="constrained")
    fig.suptitle(title, fontweight="bold")
    for k, key in enumerate(keys):
        ax = fig.add_subplot(nrows, ncols, k + 1)
        s = series[key]
        smoothed = len(s) > 20
        ax.plot(s.iterations, s.values, color="tab:blue", alpha=0.35 if smoothed else 1.0, lw=1, marker="" if len(s) > 1 else "o")
        if smoothed:
            ax.plot(s.iterations, smooth(s.values), color="tab:blue", lw=1.6)
        for i in (marks or {}).get(key, [])[:60]:
            ax.axvspan(i - 0.5, i + 0.5, color="tab:red", alpha=0.18, lw=0)
        low, high = min(s.values), max(s.values)
        if high - low <= 1e-9 * max(1.0, abs(high)):  # flat: centre it instead of a "1e-13+5e-2" offset axis
            pad = max(0.1 * abs(high), 1e-3)
            ax.set_ylim(low - pad, high + pad)
        ax.ticklabel_format(axis="y", useOffset=False)
        ax.set_title(key.split("/", 1)[-1], fontsize=9)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
        if k >= len(keys) - ncols:
            ax.set_xlabel("iteration", fontsize=8)
    return _save(fig, Canvas, path)


def paired(x: Series, y: Series) -> tuple[list[float], list[float], list[int]]:
    """(x values, y values, iterations) at the iterations both series logged."""
    ys = dict(zip(y.iterations, y.values))
    pairs = [(xv, ys[i], i) for i, xv in zip(x.iterations, x.values) if i in ys]
    return [p[0] for p in pairs], [p[1] for p in pairs], [p[2] for p in pairs]


def plot_score_vs_kl(runs: list[tuple[str, Series, Series]], path: Path, x_label: str = "KL to reference (nats/response)") -> Path:
    """Score against KL, one curve per run (label, kl series, score series): the reward/KL
    frontier that compares β settings and algorithms (Gao et al. 2022 plot gold score against
    √KL; raw KL keeps the axis readable here). Faint points are iterations, the line their centred moving average,
    the dot where the run ended."""
    Figure, Canvas = _matplotlib()
    fig = Figure(figsize=(7.5, 5), layout="constrained")
    ax = fig.add_subplot(1, 1, 1)
    colors = [f"C{k % 10}" for k in range(len(runs))]
    for (label, kl, score), color in zip(runs, colors):
        xs, ys, _ = paired(kl, score)
        if not xs:
            continue
        ax.scatter(xs, ys, s=8, alpha=0.25, color=color)
        sx, sy = smooth(xs), smooth(ys)
        ax.plot(sx, sy, color=color, lw=2, label=label)
        ax.scatter([sx[-1]], [sy[-1]], s=45, color=color, edgecolor="black", zorder=3)
    ax.set_xlabel(x_label)
    ax.set_ylabel("score (objective/score_mean)")
    ax.set_title("Score vs KL")
    ax.grid(alpha=0.3)
    if runs:
        ax.legend(fontsize=8)
    return _save(fig, Canvas, path)
