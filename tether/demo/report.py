"""Step 6 of the demo: ``report.html`` with the evaluation first (a table with 95% intervals,
two PNG plots, side-by-side samples), then the PPO run's usual report (doctor, metric plots,
samples, config), through ``tether.reporting.report.write_report``'s ``sections`` hook."""

from __future__ import annotations

from html import escape
from pathlib import Path
from typing import Any

from tether.reporting.plots import _matplotlib, _save
from tether.reporting.report import PLOTS_DIR, ReportFiles, Section, write_report
from tether.rounds.summary import read_rounds, rounds_section

ROWS = [("gold", "gold score (simulated human)"), ("rm", "reward-model score"),
        ("kl", "KL to reference (nats/response)"), ("length", "response length (tokens)")]


def _ci(cell: dict[str, Any]) -> str:
    lo, hi = cell["ci95"]
    return f"{cell['mean']:.3f} [{lo:.3f}, {hi:.3f}]"


def plot_eval(result: dict[str, Any], out: Path) -> list[Path]:
    """Bar charts of the SFT and PPO means with their 95% intervals, one panel per measure,
    and the PPO policy's gold score against its KL per response."""
    Figure, Canvas = _matplotlib()
    policies = result["policies"]
    fig = Figure(figsize=(11, 3.2), layout="constrained")
    fig.suptitle("Held-out evaluation: SFT vs PPO (95% bootstrap intervals)", fontweight="bold")
    for k, (key, label) in enumerate(ROWS):
        ax = fig.add_subplot(1, len(ROWS), k + 1)
        means = [policies[p][key]["mean"] for p in ("sft", "ppo")]
        errs = [[m - policies[p][key]["ci95"][0] for m, p in zip(means, ("sft", "ppo"))],
                [policies[p][key]["ci95"][1] - m for m, p in zip(means, ("sft", "ppo"))]]
        ax.bar(["SFT", "PPO"], means, yerr=errs, capsize=6, color=["tab:gray", "tab:blue"])
        ax.set_title(label, fontsize=9)
        ax.tick_params(labelsize=8)
        ax.grid(alpha=0.3, axis="y")
    bars = _save(fig, Canvas, out / PLOTS_DIR / "eval_means.png")

    fig = Figure(figsize=(6, 2.8), layout="constrained")
    ax = fig.add_subplot(1, 1, 1)
    wr = result["win_rate_ppo_over_sft"]
    lo, hi = wr["ci95"]
    ax.barh(["PPO over SFT"], [wr["mean"]], xerr=[[wr["mean"] - lo], [hi - wr["mean"]]], capsize=6, color="tab:green")
    ax.axvline(0.5, color="black", lw=1, ls="--")
    ax.set_xlim(0, 1)
    ax.set_title("Win rate under the labeler (0.5 = no preference)", fontsize=9)
    ax.grid(alpha=0.3, axis="x")
    win = _save(fig, Canvas, out / PLOTS_DIR / "eval_win_rate.png")
    return [bars, win]


def eval_section(result: dict[str, Any], plots: list[Path], out: Path, extra: dict[str, Any]) -> Section:
    policies = result["policies"]
    rows_html = "".join(
        f"<tr><td>{escape(label)}</td><td class='num'>{_ci(policies['sft'][key])}</td>"
        f"<td class='num'>{_ci(policies['ppo'][key])}</td></tr>"
        for key, label in ROWS
    )
    facts = [
        f"Win rate of PPO over SFT under the labeler: <b>{_ci(result['win_rate_ppo_over_sft'])}</b>",
        f"Gold gain (paired, PPO − SFT): <b>{_ci(result['gold_gain'])}</b>; 95% intervals of the two policies "
        + ("<b>do not overlap</b>" if result["gold_intervals_separate"] else "<b>overlap</b>"),
        f"KL of the PPO policy to the reference: <b>{policies['ppo']['kl']['mean']:.2f} nats per response</b>",
    ] + [escape(f"{k}: {v}") for k, v in extra.items()]
    samples = "".join(
        f"<tr><td class='text'>{escape(s['prompt'])}</td><td class='text'>{escape(s['sft'])}</td>"
        f"<td class='num'>{s['sft_gold']:.2f}</td><td class='text'>{escape(s['ppo'])}</td>"
        f"<td class='num'>{s['ppo_gold']:.2f}</td></tr>"
        for s in result["samples"]
    )
    figures = "".join(
        f'<figure><img src="{escape(str(p.relative_to(out)))}" alt="{escape(p.stem)}"></figure>' for p in plots)
    html = (
        f"<p>{result['prompts']} held-out prompts, {_responses_each(result.get('responses_per_prompt', 1))} "
        "from the SFT policy and the PPO policy; intervals resample prompts.</p>"
        "<ul>" + "".join(f"<li>{f}</li>" for f in facts) + "</ul>"
        "<table><tr><th>measure</th><th>SFT mean [95% CI]</th><th>PPO mean [95% CI]</th></tr>" + rows_html + "</table>"
        + figures
        + "<h3>Side by side</h3><table><tr><th>prompt</th><th>SFT</th><th>gold</th><th>PPO</th><th>gold</th></tr>"
        + samples + "</table>"
    )
    md = [f"{result['prompts']} held-out prompts, {_responses_each(result.get('responses_per_prompt', 1))}.", "",
          f"- win rate PPO over SFT: {_ci(result['win_rate_ppo_over_sft'])}",
          f"- gold gain (paired): {_ci(result['gold_gain'])}; intervals separate: {result['gold_intervals_separate']}",
          f"- KL of PPO to reference: {policies['ppo']['kl']['mean']:.2f} nats/response"]
    md += [f"- {k}: {v}" for k, v in extra.items()]
    md += ["", "| measure | SFT | PPO |", "|---|---:|---:|"]
    md += [f"| {label} | {_ci(policies['sft'][key])} | {_ci(policies['ppo'][key])} |" for key, label in ROWS]
    md += [""] + [f"![{p.stem}]({p.relative_to(out)})" for p in plots]
    return Section("Evaluation: SFT vs PPO on held-out prompts", html, "\n".join(md))


def write_demo_report(out: Path, ppo_dir: Path, result: dict[str, Any], extra: dict[str, Any]) -> ReportFiles:
    plots = plot_eval(result, out)
    sections = [eval_section(result, plots, out, extra)]
    rounds = read_rounds(out)
    if rounds:  # the demo ran in rounds (rounds=R): what each round gave comes next
        sections.append(rounds_section(rounds, out, len(rounds)))
    files = write_report(ppo_dir, out, title=f"tether demo: {out.name}", sections=sections)
    return ReportFiles(files.html, files.markdown, plots + files.plots)


def _responses_each(n: int) -> str:
    return "one sampled response each" if n == 1 else f"{n} sampled responses each (averaged per prompt)"
