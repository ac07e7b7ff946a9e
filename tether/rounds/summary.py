"""What each round gave: ``rounds.jsonl`` (one row per finished round), a plot, and the report
section that shows them (``tether rlhf``'s report.html, and ``tether demo rounds=R``'s).

A row: the labels (the round's and all so far), the reward model's held-out accuracy, and the
evaluation of the round's PPO policy on the held-out prompts at its last iteration (the
``eval/*`` metrics of tether.train.evaluation): its score under the round's reward model and
under ``gold``, next to the SFT policy's under the same functions, its KL to the SFT model and
its win rate over it. Each round's reward model is new, so its scores compare within a round;
the gold score is the one scale shared by all rounds.
"""

from __future__ import annotations

import json
from html import escape
from pathlib import Path
from typing import Any

from tether.reporting.report import PLOTS_DIR, Section

ROUNDS_FILE = "rounds.jsonl"
# row key -> eval/* metric of the round's last PPO iteration
EVAL_KEYS = {
    "rm_score": "eval/score_mean", "sft_rm_score": "eval/reference_score_mean",
    "gold_score": "eval/gold_score_mean", "sft_gold_score": "eval/reference_gold_score_mean",
    "kl": "eval/kl", "win_rate": "eval/win_rate", "eos_fraction": "eval/eos_fraction",
}


def round_row(run: Path, round_: int) -> dict[str, Any] | None:
    """The row of a finished round (its policy and critic saved), else None."""
    from tether.rounds.labels import RoundLabels
    from tether.rounds.paths import STAGES, round_paths

    paths = round_paths(run, round_)
    if paths.next_stage() < len(STAGES):
        return None
    labels = RoundLabels.read(paths.labels)
    row: dict[str, Any] = {"round": round_, "tasks": labels.tasks, "answered": labels.answered,
                           "preferences": labels.preferences, "labels_so_far": labels.labels_so_far,
                           "deadline_passed": labels.deadline_passed}
    verdict_file = paths.rm / "rm_verdict.json"
    if verdict_file.exists():
        verdict = json.loads(verdict_file.read_text(encoding="utf-8"))
        row.update(rm_accuracy=verdict["accuracy"], rm_accuracy_ci95=verdict["ci95"], rm_learned=verdict["learned"])
    last = _last_eval(paths.ppo / "metrics.jsonl")
    row["ppo_iterations"] = last.get("iteration")
    row.update({key: last[metric] for key, metric in EVAL_KEYS.items() if metric in last})
    row.update(reward_model=str(paths.reward_model), policy=str(paths.policy), critic=str(paths.critic))
    return row


def _last_eval(metrics_file: Path) -> dict[str, Any]:
    """The last metrics row with an evaluation in it ({} without one)."""
    last: dict[str, Any] = {}
    for line in metrics_file.read_text(encoding="utf-8").splitlines():
        row = json.loads(line)
        if "eval/score_mean" in row:
            last = row
    return last


def write_rounds_jsonl(run: Path, rounds: int) -> list[dict[str, Any]]:
    """Rewrite ``<run>/rounds.jsonl`` from every finished round; returns its rows."""
    from tether.train.run_dir import write_atomic

    rows = [row for r in range(1, rounds + 1) if (row := round_row(run, r)) is not None]
    write_atomic(run / ROUNDS_FILE, "".join(json.dumps(row) + "\n" for row in rows))
    return rows


def read_rounds(run: Path) -> list[dict[str, Any]]:
    path = run / ROUNDS_FILE
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()] if path.exists() else []


def plot_rounds(rows: list[dict[str, Any]], out: Path) -> Path:
    """Per round: gold score and reward-model score of its policy (the SFT policy's as a line
    of its own), and the labels so far with the reward model's held-out accuracy."""
    from tether.reporting.plots import _matplotlib, _save

    Figure, Canvas = _matplotlib()
    rounds = [row["round"] for row in rows]
    panels = [("gold score (held-out)", "gold_score", "sft_gold_score"),
              ("reward-model score (that round's model)", "rm_score", "sft_rm_score")]
    panels = [p for p in panels if any(p[1] in row for row in rows)]
    fig = Figure(figsize=(4.2 * (len(panels) + 1), 3.0), layout="constrained")
    fig.suptitle("Rounds of online RLHF", fontweight="bold")
    for k, (title, key, sft_key) in enumerate(panels):
        ax = fig.add_subplot(1, len(panels) + 1, k + 1)
        ax.plot(rounds, [row.get(key) for row in rows], "o-", color="tab:blue", label="round's policy")
        ax.plot(rounds, [row.get(sft_key) for row in rows], "s--", color="tab:gray", label="SFT")
        ax.set_title(title, fontsize=9)
        ax.legend(fontsize=8)
    ax = fig.add_subplot(1, len(panels) + 1, len(panels) + 1)
    ax.bar(rounds, [row["labels_so_far"] for row in rows], color="tab:green", alpha=0.6)
    ax.set_ylabel("preferences so far", fontsize=8)
    if any("rm_accuracy" in row for row in rows):
        twin = ax.twinx()
        twin.plot(rounds, [row.get("rm_accuracy") for row in rows], "o-", color="black")
        twin.axhline(0.5, color="black", lw=0.8, ls=":")
        twin.set_ylim(0, 1)
        twin.set_ylabel("RM held-out accuracy", fontsize=8)
    ax.set_title("labels and reward-model accuracy", fontsize=9)
    for axis in fig.axes:
        axis.set_xticks(rounds)
        axis.tick_params(labelsize=8)
        axis.grid(alpha=0.3)
    return _save(fig, Canvas, out / PLOTS_DIR / "rounds.png")


COLUMNS = [("round", "round"), ("labels_so_far", "preferences so far"), ("rm_accuracy", "RM held-out accuracy"),
           ("sft_rm_score", "RM score SFT"), ("rm_score", "RM score policy"), ("sft_gold_score", "gold SFT"),
           ("gold_score", "gold policy"), ("kl", "KL to SFT"), ("win_rate", "win rate over SFT")]


def _cell(row: dict[str, Any], key: str) -> str:
    value = row.get(key)
    if value is None:
        return "–"
    if key == "rm_accuracy":
        lo, hi = row["rm_accuracy_ci95"]
        return f"{value:.1%} [{lo:.1%}, {hi:.1%}]"
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def rounds_section(rows: list[dict[str, Any]], out: Path, planned: int) -> Section:
    """The rounds table and plot, for the top of a report written to ``out``."""
    plot = plot_rounds(rows, out) if rows else None
    columns = [(key, title) for key, title in COLUMNS if any(key in row for row in rows)]
    head = "".join(f"<th>{escape(title)}</th>" for _, title in columns)
    body = "".join("<tr>" + "".join(f"<td class='num'>{escape(_cell(row, key))}</td>" for key, _ in columns) + "</tr>"
                   for row in rows)
    intro = (f"{len(rows)} of {planned} rounds finished. Each round's policy on the held-out prompts at its last "
             "PPO iteration, next to the SFT policy under the same reward model and gold function; each round's "
             "reward model is trained anew on every label so far, so its scores compare within a round.")
    figure = f'<figure><img src="{PLOTS_DIR}/{plot.name}" alt="rounds"></figure>' if plot else ""
    html = f"<p>{escape(intro)}</p><table><tr>{head}</tr>{body}</table>{figure}"
    md = [intro, "", "| " + " | ".join(title for _, title in columns) + " |", "|" + "---:|" * len(columns)]
    md += ["| " + " | ".join(_cell(row, key) for key, _ in columns) + " |" for row in rows]
    if plot:
        md += ["", f"![rounds]({PLOTS_DIR}/{plot.name})"]
    return Section("Rounds: iterated online RLHF", html, "\n".join(md))


def write_rounds_report(run: Path, rows: list[dict[str, Any]], planned: int) -> Path | None:
    """``<run>/report.html``: the rounds first, then the last round's PPO run report."""
    from tether.reporting.report import write_report
    from tether.rounds.paths import round_paths

    if not rows:
        return None
    last_ppo = round_paths(run, rows[-1]["round"]).ppo
    files = write_report(last_ppo, run, title=f"tether rlhf: {run.name}", sections=[rounds_section(rows, run, planned)])
    return files.html
