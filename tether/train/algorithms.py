"""The online algorithms as rows of one table. They share rollout, scoring, reward shaping,
the minibatch loop, metrics and checkpoints, and differ only in the small functions here:
how advantages (and value targets) are estimated, which policy loss is used, whether a critic
exists, and where the KL penalty goes by default (spec: rlhf-ppo.md, "Alternatives").
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Literal

import torch

from tether.ops.advantages import gae, group_normalized_advantages, leave_one_out_advantages, reinforce_pp_advantages
from tether.ops.losses import policy_gradient_loss, ppo_clip_loss
from tether.ops.masking import masked_whiten


@dataclass
class AdvantageInputs:
    scores: torch.Tensor  # (B,) sequence scores
    token_rewards: torch.Tensor  # (B, R) score at the last token, -β·KL per token if KL is in the reward
    values: torch.Tensor | None  # (B, R) V_old(s_t), None without a critic
    response_mask: torch.Tensor  # (B, R)
    group_size: int  # consecutive samples of one prompt
    gamma: float
    lam: float
    whiten: bool  # whiten GAE advantages over the batch


AdvantageFn = Callable[[AdvantageInputs], tuple[torch.Tensor, torch.Tensor | None]]


@dataclass(frozen=True)
class AlgorithmSpec:
    name: str
    uses_critic: bool
    default_kl_penalty: Literal["reward", "loss"]
    single_step: bool  # one unclipped gradient step per batch (A2C): epochs and minibatches forced to 1
    advantages: AdvantageFn  # -> (advantages (B, R), returns (B, R) or None)
    policy_loss: Callable  # (logprobs, old_logprobs, advantages, mask, clip_eps, clip_eps_high, **aggregation)


def gae_advantages(x: AdvantageInputs) -> tuple[torch.Tensor, torch.Tensor]:
    """PPO/A2C: GAE over KL-shaped per-token rewards; returns are the critic's targets."""
    advantages, returns = gae(x.token_rewards, x.values, x.response_mask, x.gamma, x.lam)
    if x.whiten:
        advantages = masked_whiten(advantages, x.response_mask)
    return advantages, returns


def _per_token(sequence_advantages: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return sequence_advantages[:, None] * mask.to(sequence_advantages.dtype)


def _sequence_return(x: AdvantageInputs) -> torch.Tensor:
    """(B,) the response's total reward: its score, minus β·KL summed over its tokens when the
    KL penalty is in the reward (with KL in the loss this is exactly the score)."""
    return (x.token_rewards * x.response_mask).sum(1)


def group_advantages(x: AdvantageInputs) -> tuple[torch.Tensor, None]:
    """GRPO: each response's return normalised within its prompt's group, on every token.
    (The return, not the bare score: with ``kl_penalty=reward`` the KL must not vanish.)"""
    return _per_token(group_normalized_advantages(_sequence_return(x), x.group_size), x.response_mask), None


def group_advantages_no_std(x: AdvantageInputs) -> tuple[torch.Tensor, None]:
    """Dr. GRPO: centred within the group, not divided by the group's std."""
    advantages = group_normalized_advantages(_sequence_return(x), x.group_size, scale_by_std=False)
    return _per_token(advantages, x.response_mask), None


def rloo_advantages(x: AdvantageInputs) -> tuple[torch.Tensor, None]:
    """RLOO: the KL-shaped return of the whole response minus the mean of the other samples'."""
    return _per_token(leave_one_out_advantages(_sequence_return(x), x.group_size), x.response_mask), None


def reinforce_pp(x: AdvantageInputs) -> tuple[torch.Tensor, None]:
    return reinforce_pp_advantages(x.token_rewards, x.response_mask, x.gamma), None


def unclipped_policy_gradient(logprobs, old_logprobs, advantages, response_mask, clip_eps=None, clip_eps_high=None, **agg):
    """A2C's loss with the table's shared signature (the clip range does not apply)."""
    return policy_gradient_loss(logprobs, old_logprobs, advantages, response_mask, **agg)


ALGORITHMS: dict[str, AlgorithmSpec] = {
    "ppo": AlgorithmSpec("ppo", True, "reward", False, gae_advantages, ppo_clip_loss),
    "a2c": AlgorithmSpec("a2c", True, "reward", True, gae_advantages, unclipped_policy_gradient),
    "grpo": AlgorithmSpec("grpo", False, "loss", False, group_advantages, ppo_clip_loss),
    "dr_grpo": AlgorithmSpec("dr_grpo", False, "loss", False, group_advantages_no_std, ppo_clip_loss),
    "rloo": AlgorithmSpec("rloo", False, "reward", False, rloo_advantages, ppo_clip_loss),
    "reinforce_pp": AlgorithmSpec("reinforce_pp", False, "reward", False, reinforce_pp, ppo_clip_loss),
}
