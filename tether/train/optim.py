"""The optimizer every trainer uses (AdamW, fused where torch has the kernel) and its
learning-rate schedule, built from a config's optimisation section (``OptimSettings``): PPO's
roles (tether.train.iteration) and the supervised commands (SFT, reward model, DPO) build them
here."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch

Schedule = Literal["constant", "linear", "cosine"]


@dataclass(frozen=True)
class OptimSettings:
    """The optimisation section of a training config (its ``optim_settings``): the fields of the
    same names, flat in YAML."""

    learning_rate: float
    lr_schedule: Schedule
    warmup_steps: int
    weight_decay: float
    max_grad_norm: float  # clip of the global gradient norm, applied by the trainer's step
    adam_eps: float = 1e-8  # torch's default; PPO's config exposes it
    critic_learning_rate: float | None = None  # PPO's separate critic or value head; None: learning_rate

    @property
    def critic_lr(self) -> float:
        return self.learning_rate if self.critic_learning_rate is None else self.critic_learning_rate


def make_adamw(params, device: torch.device, **kwargs) -> torch.optim.AdamW:
    """AdamW with the fused kernel where torch has one (CUDA, CPU): the default on CPU is the
    one-tensor-at-a-time loop, ~8% of a SmolLM2 PPO iteration (benchmarks/NOTES.md)."""
    fused = device.type in ("cuda", "cpu")
    return torch.optim.AdamW(params, fused=fused, **kwargs)


def make_scheduler(optimizer, schedule: str, warmup_steps: int, total_steps: int):
    """Linear warm-up, then constant, linear decay to 0, or cosine decay to 0."""
    total_steps = max(total_steps, 1)

    def factor(step: int) -> float:
        if warmup_steps and step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = min((step - warmup_steps) / max(total_steps - warmup_steps, 1), 1.0)
        if schedule == "linear":
            return 1.0 - progress
        if schedule == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * progress))
        return 1.0

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def make_optimizer(params, settings: OptimSettings, total_steps: int, device: torch.device | None = None):
    """AdamW (learning rate, weight decay, eps) and its schedule over ``total_steps`` from the
    settings. ``params``: tensors or parameter groups (a group's own ``lr`` wins), all on one
    device: ``device``, or by default the one they are on (the fused kernel runs there)."""
    groups = list(params)
    optimizer = make_adamw(groups, device or _device_of(groups), lr=settings.learning_rate,
                           weight_decay=settings.weight_decay, eps=settings.adam_eps)
    return optimizer, make_scheduler(optimizer, settings.lr_schedule, settings.warmup_steps, total_steps)


def _device_of(groups: list) -> torch.device:
    tensors = (t for g in groups for t in (g["params"] if isinstance(g, dict) else [g]))
    return next(tensors, torch.empty(0)).device  # no tensor at all: AdamW itself says so
