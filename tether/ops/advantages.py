"""Advantage estimators: GAE (PPO, A2C), group-normalised (GRPO), leave-one-out (RLOO),
and discounted returns (REINFORCE++, which the loop whitens over the global batch). Per-token
tensors are (B, T) over response tokens; per-sequence scores are (B,), with the G samples of
one prompt in consecutive rows.
"""

from __future__ import annotations

import torch

__all__ = ["gae", "group_normalized_advantages", "leave_one_out_advantages", "discounted_returns"]


def gae(
    rewards: torch.Tensor, values: torch.Tensor, response_mask: torch.Tensor, gamma: float = 1.0, lam: float = 0.95
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation (Schulman et al. 2016), backwards over the response.

        δ_t = r_t + γ V(s_{t+1}) - V(s_t),  V past the last real token = 0
        A_t = δ_t + γλ A_{t+1}
        R_t = A_t + V(s_t)

    rewards, values: (B, T); response_mask: (B, T), True on real tokens (a prefix of each row).
    Returns (advantages, returns), both (B, T), zero at padding. Values and rewards at masked
    positions are ignored: they are zeroed before use, so whatever a critic predicts past EOS
    cannot leak into the real tokens' advantages.
    """
    mask = response_mask.to(values.dtype)
    values = values.detach() * mask
    rewards = rewards.detach() * mask
    advantages = torch.zeros_like(values)
    running = torch.zeros_like(values[:, 0])
    T = values.shape[1]
    for t in reversed(range(T)):
        next_value = values[:, t + 1] if t + 1 < T else torch.zeros_like(running)
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        # Multiplying by mask[:, t] resets the recursion at padding, so the first real token
        # before padding starts from A_{T+1} = 0.
        running = (delta + gamma * lam * running) * mask[:, t]
        advantages[:, t] = running
    returns = (advantages + values) * mask
    return advantages, returns


def group_normalized_advantages(
    scores: torch.Tensor, group_size: int, scale_by_std: bool = True, eps: float = 1e-6
) -> torch.Tensor:
    """GRPO (Shao et al. 2024): A_i = (s_i - mean(group)) / (std(group) + eps).

    scores: (B,) with B = n_prompts * group_size, groups in consecutive rows. Returns (B,).
    ``scale_by_std=False`` gives Dr. GRPO (Liu et al. 2025), which drops the std division
    (it over-weights groups whose scores barely differ). A group of equal scores gives 0.
    """
    grouped = _grouped(scores, group_size)
    centred = grouped - grouped.mean(dim=1, keepdim=True)
    if scale_by_std:
        std = grouped.std(dim=1, keepdim=True) if group_size > 1 else torch.zeros_like(centred)
        centred = centred / (std + eps)
    return centred.reshape(-1)


def leave_one_out_advantages(scores: torch.Tensor, group_size: int) -> torch.Tensor:
    """RLOO (Ahmadian et al. 2024): A_i = s_i - mean of the other K-1 samples of the prompt.

    scores: (B,) with K = group_size consecutive samples per prompt. Returns (B,).
    """
    if group_size < 2:
        raise ValueError("RLOO needs at least 2 samples per prompt (group_size >= 2)")
    grouped = _grouped(scores, group_size)
    baseline = (grouped.sum(dim=1, keepdim=True) - grouped) / (group_size - 1)
    return (grouped - baseline).reshape(-1)


def discounted_returns(rewards: torch.Tensor, response_mask: torch.Tensor, gamma: float = 1.0) -> torch.Tensor:
    """G_t = Σ_{l≥t} γ^{l-t} r_l over real tokens. rewards, response_mask: (B, T) -> (B, T)."""
    mask = response_mask.to(rewards.dtype)
    rewards = rewards * mask
    returns = torch.zeros_like(rewards)
    running = torch.zeros_like(rewards[:, 0])
    for t in reversed(range(rewards.shape[1])):
        running = (rewards[:, t] + gamma * running) * mask[:, t]
        returns[:, t] = running
    return returns


def _grouped(scores: torch.Tensor, group_size: int) -> torch.Tensor:
    if scores.dim() != 1 or scores.shape[0] % group_size != 0:
        raise ValueError(f"scores of shape {tuple(scores.shape)} do not split into groups of {group_size}")
    return scores.reshape(-1, group_size)
