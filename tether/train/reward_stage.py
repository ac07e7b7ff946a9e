"""The reward-model stage of ``tether demo`` and ``tether rlhf``: train-rm with the settings both
share (their ``rm_*`` fields), early-stopped on held-out prompts and normalised on the labeled
responses."""

from __future__ import annotations

import json
from pathlib import Path

__all__ = ["train_reward"]


def train_reward(config, prefs: Path, out: Path) -> tuple[Path, float | None]:
    """``<out>/rm``, trained on ``prefs``; returns the model folder and its held-out accuracy.
    ``config`` is a DemoConfig or a RoundsConfig (both carry the rm_* fields read here)."""
    from tether.train.reward_model import RewardModelConfig, train_reward_model

    rm_config = RewardModelConfig(
        model=config.model, data=str(prefs), eval_fraction=config.rm_eval_fraction, epochs=config.rm_epochs,
        max_steps=config.rm_max_steps, batch_size=config.rm_batch_size, learning_rate=config.rm_learning_rate,
        trainable_layers=config.rm_trainable_layers, keep_best=True,
        skip_bad_rows=True,  # a sampled empty answer cannot be a preference row: counted and skipped
        evals_per_epoch=config.rm_evals_per_epoch,
        # normalised on every labeled response: samples of the SFT policy, which is π_ref
        normalize="responses", seed=config.seed, device=config.device, output_dir=str(out),
        precision=config.precision, run_name="rm", quiet=bool(config.quiet))
    rm_dir = train_reward_model(rm_config)
    verdict = out / "rm" / "rm_verdict.json"
    accuracy = json.loads(verdict.read_text(encoding="utf-8"))["accuracy"] if verdict.exists() else None
    return rm_dir, accuracy
