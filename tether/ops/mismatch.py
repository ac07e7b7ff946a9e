"""Rollout-engine vs trainer mismatch: how far apart the two log-probs of the same sampled
token are, and the truncated importance-sampling (TIS) weights that correct for it.

A separate inference engine (vLLM) samples with its own kernels, batching and precision, so
log π_engine(y_t|s_t) differs from the trainer's recomputed log π_old(y_t|s_t) even with
identical weights: the samples are slightly off-policy (Yao et al. 2025, "Your Efficient RL
Framework Secretly Brings You Off-Policy RL Training"). TIS reweights each token's
policy-gradient term by the ratio π_old / π_engine, truncated at a cap C so that a rare token
the engine under-sampled cannot blow up the gradient (verl: ``tis_imp_ratio_cap``).

All per-token tensors are (B, R) with ``response_mask`` True on real tokens.
"""

from __future__ import annotations

import torch

from tether.ops.masking import masked_mean

__all__ = ["logprob_mismatch", "truncated_importance_weights"]


def logprob_mismatch(engine_logprobs: torch.Tensor, trainer_logprobs: torch.Tensor,
                     response_mask: torch.Tensor) -> dict[str, torch.Tensor]:
    """Mean and max of |log π_engine - log π_trainer| over real tokens (scalars).

    0 when the engine and the trainer agree exactly; in fp32 on CPU ~1e-6, in bf16 on GPU
    typically 1e-3..1e-2 per token (larger for MoE models). A rising mean is the early sign
    of the training-inference mismatch that TIS corrects."""
    diff = (engine_logprobs.float() - trainer_logprobs.float()).abs()
    mask = response_mask.bool()
    return {
        "mean": masked_mean(diff, mask),
        "max": diff.masked_fill(~mask, 0.0).max() if diff.numel() else diff.new_zeros(()),
    }


def truncated_importance_weights(old_logprobs: torch.Tensor, engine_logprobs: torch.Tensor, cap: float,
                                 response_mask: torch.Tensor) -> torch.Tensor:
    """w_t = min(π_old(y_t|s_t) / π_engine(y_t|s_t), C) per token, 0 on padding. (B, R), no grad.

    π_old is the trainer's log-prob of the sampled token (the scoring pass), π_engine the
    engine's from the same weights. Only the upper side is truncated (Yao et al. 2025; verl's
    ``tis_imp_ratio_cap``): a weight below 1 just down-weights a token the engine over-sampled.
    Multiply each token's policy-gradient loss by w (equivalently, since w > 0 commutes with
    PPO's min and clip, its advantage)."""
    log_ratio = old_logprobs.detach().float() - engine_logprobs.detach().float()
    weights = torch.exp(log_ratio).clamp(max=cap)
    return weights.masked_fill(~response_mask.bool(), 0.0)
