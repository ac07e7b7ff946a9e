"""``tether demo rounds=R``: the demo's steps 1-4 as R rounds of ``tether rlhf`` in the demo's
own directory, with its simulated labeler, its label and PPO budgets split over the rounds, and
every size field handed over unchanged (``RoundsConfig`` uses the demo's names)."""

from __future__ import annotations

import json
from dataclasses import fields
from pathlib import Path
from typing import Callable

from tether.rounds.config import RoundsConfig


def rounds_config_from_demo(demo) -> RoundsConfig:
    """The demo's fields that ``tether rlhf`` shares, to the same values; the run is the demo's."""
    shared = {f.name for f in fields(RoundsConfig)} & {f.name for f in fields(demo)}
    return RoundsConfig(**{name: getattr(demo, name) for name in shared})


def run_demo_rounds(demo, labeler: Callable, out: Path) -> tuple[Path, Path, float | None, str, dict[str, int]]:
    """The rounds in ``out``; returns what the demo's evaluation and report take from steps 1-4:
    (last reward model, last PPO run, its held-out accuracy, a line on the labels, label counts)."""
    from tether.rounds.labels import RoundLabels, simulated_name
    from tether.rounds.pipeline import round_paths, run_rounds

    config = rounds_config_from_demo(demo)
    run_rounds(config, out, labeler)
    last = round_paths(out, config.rounds)
    per_round = [RoundLabels.read(round_paths(out, r).labels) for r in range(1, config.rounds + 1)]
    counts = {"tasks": sum(r.tasks for r in per_round), "preferences": sum(r.preferences for r in per_round),
              "ties": sum(r.ties for r in per_round), "skips": sum(r.skips for r in per_round)}
    labels = (f"{counts['preferences']} preferences ({counts['ties']} ties, {counts['skips']} skips) from "
              f"{simulated_name(demo.labeler)} over {config.rounds} rounds")
    verdict = last.rm / "rm_verdict.json"
    accuracy = json.loads(verdict.read_text(encoding="utf-8"))["accuracy"] if verdict.exists() else None
    return last.reward_model, last.ppo, accuracy, labels, counts
