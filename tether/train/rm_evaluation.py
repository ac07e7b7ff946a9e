"""``tether eval-rm``: a saved reward model's accuracy, margin and calibration on preference data."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from tether.data.batching import tokenize_pairs
from tether.data.preferences import load_preferences, without_ties
from tether.data.templates import ChatTemplateMode
from tether.errors import TetherError
from tether.models.loading import load_tokenizer, resolve_device
from tether.models.scalar_head import ScalarHeadModel
from tether.ops.losses import bradley_terry_loss
from tether.train.reward_model import score_all_pairs


@dataclass
class RewardEvaluation:
    chosen: torch.Tensor  # (N,) normalised scores r(x, y_w)
    rejected: torch.Tensor  # (N,) normalised scores r(x, y_l)
    raw_gap: torch.Tensor  # (N,) r_w - r_l before normalisation: the Bradley-Terry logit
    metrics: dict[str, float]  # accuracy, margin, loss, ece, pairs, ...
    calibration: list[dict[str, float]]  # per confidence bin: lo, hi, count, confidence, accuracy


def evaluate_reward_model(model_dir: str | Path, data: str | Path, split: str | None = None,
                          skip_bad_rows: bool = False, batch_size: int = 16, max_length: int = 1024,
                          chat_template: ChatTemplateMode = "auto", device: str = "auto",
                          bins: int = 10) -> RewardEvaluation:
    """Accuracy, mean margin and calibration of a saved reward model on preference data."""
    tokenizer = load_tokenizer(model_dir)
    model = ScalarHeadModel.from_pretrained(model_dir, resolve_device(device))
    model.eval()
    prefs = without_ties(load_preferences(data, split, skip_bad_rows))  # accuracy is over preferences
    items, truncated = tokenize_pairs(prefs.pairs, tokenizer, max_length, None, chat_template)
    if not items:
        raise TetherError(f"{prefs.source}: no pairs left after truncation to max_length={max_length}")
    chosen, rejected = score_all_pairs(model, items, tokenizer.pad_token_id, batch_size)
    raw_gap = (chosen - rejected) / model.gain
    loss, stats = bradley_terry_loss(raw_gap, torch.zeros_like(raw_gap))
    table, ece = calibration(raw_gap, bins)
    metrics = {"pairs": float(len(items)), "accuracy": stats["accuracy"].item(),
               "margin": stats["margin"].item() * model.gain, "raw_margin": stats["margin"].item(),
               "loss": loss.item(), "ece": ece,
               "dropped": float(prefs.dropped.bad_rows + prefs.dropped.duplicates + prefs.dropped.identical
                                + prefs.dropped.ties + truncated)}
    return RewardEvaluation(chosen, rejected, raw_gap, metrics, table)


def calibration(raw_gap: torch.Tensor, bins: int = 10) -> tuple[list[dict[str, float]], float]:
    """Reliability of the Bradley-Terry probability P(y_w ≻ y_l) = σ(r_w - r_l) (raw scores:
    the model was trained on that scale). Each pair is read from the side the model favours:
    confidence c = max(p, 1 - p) in [0.5, 1], correct when it favours y_w. Bins split [0.5, 1]
    evenly; ECE = Σ_b (n_b / N) · |accuracy_b - confidence_b| (Guo et al. 2017)."""
    p = torch.sigmoid(raw_gap.float())
    confidence = torch.maximum(p, 1 - p)
    correct = (raw_gap > 0).float() + 0.5 * (raw_gap == 0).float()
    edges = torch.linspace(0.5, 1.0, bins + 1)
    index = torch.clamp(torch.bucketize(confidence, edges, right=True) - 1, 0, bins - 1)
    table, ece = [], 0.0
    for b in range(bins):
        in_bin = index == b
        n = int(in_bin.sum())
        row = {"lo": edges[b].item(), "hi": edges[b + 1].item(), "count": float(n),
               "confidence": confidence[in_bin].mean().item() if n else float("nan"),
               "accuracy": correct[in_bin].mean().item() if n else float("nan")}
        if n:
            ece += n / len(raw_gap) * abs(row["accuracy"] - row["confidence"])
        table.append(row)
    return table, ece
