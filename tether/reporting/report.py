"""``tether report RUN_DIR``: report.html and report.md beside PNG plots of every metric the
run logged, sample tables, the config, and the doctor's findings at the top. ``tether
compare``: the score-vs-KL curves of several runs in one PNG.

Self-contained on purpose: plain HTML with inline CSS and the plots inlined as data URIs (the
PNG files are written beside it too, for report.md), no JavaScript, no CDN, so report.html
alone opens from a laptop, a CI artifact or a cluster's file browser alike.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tether.diagnostics.doctor import diagnose_trace
from tether.diagnostics.findings import Finding
from tether.diagnostics.run import RunData, load_run
from tether.diagnostics.thresholds import DEFAULT_THRESHOLDS, Thresholds
from tether.diagnostics.trace import RunTrace, build_trace
from tether.errors import TetherError
from tether.reporting import plots
from tether.reporting.render import ReportContext, Section, embed_images, render_html, render_markdown

PLOTS_DIR = "report_plots"
# the metrics summarised in the "at a glance" table, when logged
SUMMARY_KEYS = [
    "objective/score_mean", "objective/kl_k3", "objective/kl_k1", "objective/kl_coef", "objective/rlhf_reward",
    "eval/score_mean", "eval/gold_score_mean", "rewards/accuracy", "rewards/margin", "policy/entropy",
    "policy/approx_kl", "policy/clipfrac", "value/explained_variance", "rollout/response_length",
    "rollout/eos_fraction", "time/iteration_s",
]  # fmt: skip


@dataclass(frozen=True)
class ReportFiles:
    html: Path
    markdown: Path
    plots: list[Path]


def write_report(
    run_dir: str | Path,
    out_dir: str | Path | None = None,
    *,
    max_samples: int = 6,
    thresholds: Thresholds = DEFAULT_THRESHOLDS,
    title: str | None = None,
    sections: list[Section] | None = None,
) -> ReportFiles:
    run = load_run(run_dir)
    if not run.metrics:
        raise TetherError(f"{run.run_dir / 'metrics.jsonl'} is empty: nothing to report yet")
    out = Path(out_dir) if out_dir is not None else run.run_dir
    trace = build_trace(run.metrics, run.samples)
    findings = diagnose_trace(trace, thresholds)
    plot_files, plot_list = _plots(trace, findings, out, run.name)
    context = ReportContext(
        title=title or f"tether run report: {run.name}",
        run_dir=run.run_dir,
        n_iterations=trace.n_iterations,
        findings=findings,
        summary=_summary(trace),
        plots=plot_list,
        samples=_sample_tables(run, max_samples),
        config_text=run.config_text,
        eval=run.eval,
        sections=list(sections or []),
    )
    out.mkdir(parents=True, exist_ok=True)
    html_path, md_path = out / "report.html", out / "report.md"
    html_path.write_text(embed_images(render_html(context), out), encoding="utf-8")
    md_path.write_text(render_markdown(context), encoding="utf-8")
    return ReportFiles(html_path, md_path, plot_files)


def _plots(trace: RunTrace, findings: list[Finding], out: Path, label: str) -> tuple[list[Path], list[tuple[str, str]]]:
    marks: dict[str, list[int]] = {}
    for finding in findings:
        for key in finding.metrics:
            marks.setdefault(key, []).extend(finding.iterations)
    files: list[Path] = []
    listed: list[tuple[str, str]] = []
    score, kl = trace.get(plots.SCORE_KEY), trace.get(*plots.KL_KEYS)
    if score is not None and kl is not None:
        path = plots.plot_score_vs_kl([(label, kl, score)], out / PLOTS_DIR / "score_vs_kl.png", f"{trace.key(*plots.KL_KEYS)} (nats/response)")
        files.append(path)
        listed.append(("Score vs KL to the reference", f"{PLOTS_DIR}/{path.name}"))
    eval_kl = trace.get(plots.EVAL_KL_KEY)
    panels = [(title, trace.get(key), trace.get(ref)) for key, ref, title in plots.EVAL_SCORE_KEYS
              if trace.get(key) is not None]
    if eval_kl is not None and panels:
        path = plots.plot_eval_vs_kl(eval_kl, panels, out / PLOTS_DIR / "eval_score_vs_kl.png")
        files.append(path)
        listed.append(("Held-out evaluation: score vs KL to the reference", f"{PLOTS_DIR}/{path.name}"))
    for group, keys in plots.metric_groups(list(trace.series)).items():
        path = plots.plot_group(group, {k: trace.series[k] for k in keys}, out / PLOTS_DIR / f"{group}.png", marks)
        files.append(path)
        listed.append((f"{group}/*", f"{PLOTS_DIR}/{path.name}"))
    return files, listed


def _summary(trace: RunTrace) -> list[tuple[str, float, float, float, float]]:
    rows = []
    for key in SUMMARY_KEYS:
        s = trace.get(key)
        if s is not None:
            rows.append((key, s.values[0], s.values[-1], min(s.values), max(s.values)))
    return rows


def _sample_tables(run: RunData, max_samples: int) -> list[tuple[int, list[dict[str, Any]]]]:
    """The first and the last iteration that logged samples, best-scored first: what the
    policy said before and after training."""
    by_iteration: dict[int, list[dict[str, Any]]] = {}
    for row in run.samples:
        if isinstance(row.get("iteration"), int):
            by_iteration.setdefault(row["iteration"], []).append(row)
    if not by_iteration or max_samples <= 0:
        return []
    its = sorted(by_iteration)
    chosen = sorted({its[0], its[-1]})

    def score(row: dict[str, Any]) -> float:
        value = row.get("score")
        return float(value) if isinstance(value, (int, float)) else float("-inf")

    return [(i, sorted(by_iteration[i], key=score, reverse=True)[:max_samples]) for i in chosen]


def compare_runs(run_dirs: list[str | Path], out: str | Path, labels: list[str] | None = None) -> Path:
    """Compare what each run has. Online runs (PPO, GRPO, ...): their score-vs-KL curves overlaid
    (x = objective/kl_k3, or kl_k1 when a run lacks k3). Preference runs (DPO), which have no
    score or KL: their implicit-reward margin and accuracy per step, in panels beside it."""
    if labels is not None and len(labels) != len(run_dirs):
        raise TetherError(f"--labels gave {len(labels)} names for {len(run_dirs)} runs")
    frontier, preference = [], []
    kl_names = set()
    for k, run_dir in enumerate(run_dirs):
        run = load_run(run_dir)
        trace = build_trace(run.metrics)
        label = labels[k] if labels else run.name
        score, kl = trace.get(plots.SCORE_KEY), trace.get(*plots.KL_KEYS)
        if score is not None and kl is not None:
            kl_names.add(trace.key(*plots.KL_KEYS))
            frontier.append((label, kl, score))
            continue
        series = {key: trace.get(key) for key in plots.PREFERENCE_KEYS}
        if not any(s is not None for s in series.values()):
            raise TetherError(f"{run_dir}: metrics.jsonl has neither {plots.SCORE_KEY} with objective/kl_k3 or "
                              f"kl_k1 (online runs) nor {' or '.join(plots.PREFERENCE_KEYS)} (DPO) to compare")
        preference.append((label, {key: s for key, s in series.items() if s is not None}))
    x_label = (kl_names.pop() if len(kl_names) == 1 else "objective/kl_k3 or kl_k1") + " (nats/response)"
    if not preference:
        return plots.plot_score_vs_kl(frontier, Path(out), x_label)
    return plots.plot_comparison(frontier, preference, Path(out), x_label)
