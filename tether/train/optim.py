"""The optimizer every trainer uses (AdamW, fused where torch has the kernel) and its
learning-rate schedule: PPO's roles (tether.train.iteration) and the supervised commands
(SFT, reward model, DPO) build them here."""

from __future__ import annotations

import math

import torch


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


def make_optimizer(params, config, total_steps: int):
    """AdamW and its schedule from a supervised config's ``learning_rate``, ``weight_decay``,
    ``lr_schedule`` and ``warmup_steps``. ``params``: tensors or parameter groups, all on one
    device (the fused kernel runs on the device they are on)."""
    groups = list(params)
    optimizer = make_adamw(groups, _device_of(groups), lr=config.learning_rate, weight_decay=config.weight_decay)
    return optimizer, make_scheduler(optimizer, config.lr_schedule, config.warmup_steps, total_steps)


def _device_of(groups: list) -> torch.device:
    tensors = (t for g in groups for t in (g["params"] if isinstance(g, dict) else [g]))
    return next(tensors, torch.empty(0)).device  # no tensor at all: AdamW itself says so
