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
# what a preference run (DPO) has instead: its implicit-reward margin and preference accuracy per step
PREFERENCE_KEYS = ("rewards/margin", "rewards/accuracy")


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
    _draw_score_vs_kl(fig.add_subplot(1, 1, 1), runs, x_label)
    return _save(fig, Canvas, path)


def _draw_score_vs_kl(ax: Any, runs: list[tuple[str, Series, Series]], x_label: str, first_color: int = 0) -> None:
    for k, (label, kl, score) in enumerate(runs):
        color = f"C{(first_color + k) % 10}"
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


EVAL_KL_KEY = "eval/kl"
# (score key, its reference's key, panel title): the held-out scores the online evaluation logs
EVAL_SCORE_KEYS = (("eval/score_mean", "eval/reference_score_mean", "reward score (held-out)"),
                   ("eval/gold_score_mean", "eval/reference_gold_score_mean", "gold score (held-out)"))


def plot_eval_vs_kl(kl: Series, panels: list[tuple[str, Series, Series | None]], path: Path) -> Path:
    """The held-out evaluation's scores against its KL to the reference, a panel per score
    (title, score series, reference-score series or None): each evaluation a point marked with
    its iteration, joined in order from the reference's own answers at KL 0. Gold against KL is
    the over-optimisation curve of Gao et al. 2022: it rises, peaks, and falls once the policy
    exploits the reward."""
    Figure, Canvas = _matplotlib()
    fig = Figure(figsize=(5.2 * len(panels), 4.4), layout="constrained")
    for k, (title, score, reference) in enumerate(panels):
        ax = fig.add_subplot(1, len(panels), k + 1)
        xs, ys, its = paired(kl, score)
        if reference is not None and len(reference):
            xs, ys, its = [0.0, *xs], [reference.values[0], *ys], [0, *its]
        ax.plot(xs, ys, color=f"C{k}", marker="o", lw=1.5)
        for x, y, i in zip(xs, ys, its):
            ax.annotate("ref" if i == 0 else str(i), (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7)
        ax.set_xlabel(f"{EVAL_KL_KEY} (nats/response)")
        ax.set_title(title)
        ax.grid(alpha=0.3)
    return _save(fig, Canvas, path)


def plot_comparison(frontier: list[tuple[str, Series, Series]], preference: list[tuple[str, dict[str, Series]]],
                    path: Path, x_label: str = "KL to reference (nats/response)") -> Path:
    """Runs of both kinds in one PNG. Online runs (label, kl, score) share the score-vs-KL panel;
    preference runs (label, {key: series}), which have no rollouts and so neither score nor KL,
    get a panel per ``PREFERENCE_KEYS`` metric against their step. Each run keeps one colour."""
    Figure, Canvas = _matplotlib()
    panels = (1 if frontier else 0) + len(PREFERENCE_KEYS)
    fig = Figure(figsize=(5.2 * panels, 4.4), layout="constrained")
    if frontier:
        _draw_score_vs_kl(fig.add_subplot(1, panels, 1), frontier, x_label)
    for j, key in enumerate(PREFERENCE_KEYS):
        ax = fig.add_subplot(1, panels, panels - len(PREFERENCE_KEYS) + j + 1)
        for k, (label, series) in enumerate(preference):
            s = series.get(key)
            if s is None or not len(s):
                continue
            color = f"C{(len(frontier) + k) % 10}"
            ax.plot(s.iterations, s.values, color=color, alpha=0.35 if len(s) > 20 else 1.0, lw=1)
            ax.plot(s.iterations, smooth(s.values), color=color, lw=2, label=label)
        ax.set_title(f"{key} (preference runs)")
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return _save(fig, Canvas, path)
