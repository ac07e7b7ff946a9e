"""Losses. Each returns ``(loss, stats)``: a scalar to minimise and a dict of detached scalar
tensors for logging. Per-token inputs are (B, T) over response tokens with ``response_mask``
True on real tokens.

Aggregation (how per-token terms become one number) is one shared option
(``aggregate_loss``), so PPO, A2C, GRPO, RLOO and REINFORCE++ differ only in their per-token
terms. Passing the full batch's ``num_tokens`` / ``num_sequences`` makes the sum of
micro-batch losses equal the full-batch loss, i.e. gradient accumulation is exact.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

from tether.ops.kl import k3
from tether.ops.masking import masked_mean, masked_var

__all__ = [
    "Aggregation",
    "aggregate_loss",
    "ppo_clip_loss",
    "policy_gradient_loss",
    "value_loss",
    "entropy_bonus_loss",
    "explained_variance",
    "bradley_terry_loss",
    "dpo_loss",
]

Aggregation = Literal["token-mean", "seq-mean-token-mean", "seq-mean-token-sum"]


def aggregate_loss(
    per_token: torch.Tensor,
    response_mask: torch.Tensor,
    mode: Aggregation = "token-mean",
    num_tokens: float | torch.Tensor | None = None,
    num_sequences: float | None = None,
) -> torch.Tensor:
    """Reduce a (B, T) per-token loss to a scalar.

    token-mean:           Σ_b Σ_t l_bt / N_tokens          (every token weighs the same; DAPO)
    seq-mean-token-mean:  Σ_b (mean_t l_bt) / N_seqs        (every response weighs the same; GRPO paper)
    seq-mean-token-sum:   Σ_b (Σ_t l_bt) / N_seqs           (no length normalisation; Dr. GRPO)
    N_tokens / N_seqs default to this batch's; pass the full batch's when accumulating
    gradients over micro-batches.
    """
    mask = response_mask.to(per_token.dtype)
    if mode == "token-mean":
        denom = mask.sum() if num_tokens is None else num_tokens
        return (per_token * mask).sum() / max(float(denom), 1.0)
    n_seq = float(per_token.shape[0] if num_sequences is None else num_sequences)
    per_seq = (per_token * mask).sum(dim=1)
    if mode == "seq-mean-token-mean":
        per_seq = per_seq / mask.sum(dim=1).clamp(min=1.0)
    elif mode != "seq-mean-token-sum":
        raise ValueError(f"unknown loss aggregation {mode!r}: choose token-mean, seq-mean-token-mean, seq-mean-token-sum")
    return per_seq.sum() / max(n_seq, 1.0)


def ppo_clip_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    response_mask: torch.Tensor,
    clip_eps: float = 0.2,
    clip_eps_high: float | None = None,
    aggregation: Aggregation = "token-mean",
    num_tokens: float | None = None,
    num_sequences: float | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """PPO clipped surrogate (Schulman et al. 2017), as a loss:

        ρ_t = exp(logp_t - old_logp_t)     (log ρ_t clamped to ±20 first: MAX_LOG_RATIO)
        l_t = -min(ρ_t A_t, clip(ρ_t, 1-ε, 1+ε_high) A_t)

    logprobs: (B, T) under π_θ (with grad); old_logprobs, advantages: (B, T), no grad.
    When the clipped term is the minimum (A > 0 and ρ > 1+ε, or A < 0 and ρ < 1-ε) the token
    gives zero gradient; ``clipfrac`` is the fraction of real tokens in that state.
    ``approx_kl`` is the k3 estimate of KL(π_old || π_θ), (ρ - 1) - log ρ, exactly 0 when ρ = 1.
    """
    eps_high = clip_eps if clip_eps_high is None else clip_eps_high
    log_ratio, ratio = _importance_ratio(logprobs, old_logprobs)
    advantages = advantages.detach()
    unclipped = ratio * advantages
    clipped = torch.clamp(ratio, 1.0 - clip_eps, 1.0 + eps_high) * advantages
    per_token = -torch.minimum(unclipped, clipped)
    loss = aggregate_loss(per_token, response_mask, aggregation, num_tokens, num_sequences)
    with torch.no_grad():
        is_clipped = (clipped < unclipped).to(logprobs.dtype)
        stats = {"clipfrac": masked_mean(is_clipped, response_mask), **_ratio_stats(log_ratio, ratio, response_mask)}
    return loss, stats


def policy_gradient_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    response_mask: torch.Tensor,
    aggregation: Aggregation = "token-mean",
    num_tokens: float | None = None,
    num_sequences: float | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Unclipped policy gradient: l_t = -ρ_t A_t with ρ = π_θ/π_old (A2C, REINFORCE).

    At ρ = 1 (one step on fresh samples) its gradient is the textbook -A_t ∇log π_θ(y_t|s_t);
    writing it with the ratio keeps the same stats as PPO and stays correct if reused.
    Shapes as ``ppo_clip_loss``.
    """
    log_ratio, ratio = _importance_ratio(logprobs, old_logprobs)
    per_token = -ratio * advantages.detach()
    loss = aggregate_loss(per_token, response_mask, aggregation, num_tokens, num_sequences)
    with torch.no_grad():
        stats = {"clipfrac": torch.zeros((), device=logprobs.device), **_ratio_stats(log_ratio, ratio, response_mask)}
    return loss, stats


# Bound on |log ρ| before exp. e^20 ≈ 4.9e8 is far outside any clip range, while exp of a larger
# log-ratio (a token sampled at log-prob -100, say) overflows to inf, and inf·0 at a padding
# position or a zero advantage turns the whole loss into NaN. verl's compute_policy_loss clamps
# at the same ±20. Past the bound the token gives no gradient, like a clipped one.
MAX_LOG_RATIO = 20.0


def _importance_ratio(logprobs: torch.Tensor, old_logprobs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(log ρ, ρ) with ρ = π_θ/π_old, log ρ clamped to ±MAX_LOG_RATIO. (B, T) -> two (B, T)."""
    log_ratio = (logprobs - old_logprobs.detach()).clamp(-MAX_LOG_RATIO, MAX_LOG_RATIO)
    return log_ratio, torch.exp(log_ratio)


def _ratio_stats(log_ratio: torch.Tensor, ratio: torch.Tensor, response_mask: torch.Tensor) -> dict[str, torch.Tensor]:
    """approx_kl, ratio_mean, ratio_max over real tokens.

    approx_kl is Schulman's k3 ("Approximating KL Divergence", 2020; cleanrl's approx_kl) of
    KL(π_old || π_θ) from tokens sampled by π_old: (ρ - 1) - log ρ, unbiased because
    E_old[ρ] = 1, never negative, exactly 0 at ρ = 1.
    """
    return {
        "approx_kl": masked_mean(k3(log_ratio), response_mask),
        "ratio_mean": masked_mean(ratio, response_mask),
        "ratio_max": (ratio * response_mask + (~response_mask.bool()) * 1.0).max(),
    }


def value_loss(
    values: torch.Tensor,
    old_values: torch.Tensor,
    returns: torch.Tensor,
    response_mask: torch.Tensor,
    clip_eps: float = 0.2,
    aggregation: Aggregation = "token-mean",
    num_tokens: float | None = None,
    num_sequences: float | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Clipped value loss, ½ max((V - R)², (clip(V, V_old ± ε_v) - R)²) per token.

    values: (B, T) with grad; old_values, returns: (B, T). ``clip_eps=None`` or 0 disables the
    clip. ``clipfrac`` is the fraction of tokens where the clipped error is the larger one.
    """
    returns = returns.detach()
    old_values = old_values.detach()
    unclipped_err = (values - returns) ** 2
    if clip_eps:
        v_clipped = old_values + torch.clamp(values - old_values, -clip_eps, clip_eps)
        clipped_err = (v_clipped - returns) ** 2
        per_token = 0.5 * torch.maximum(unclipped_err, clipped_err)
    else:
        clipped_err = unclipped_err
        per_token = 0.5 * unclipped_err
    loss = aggregate_loss(per_token, response_mask, aggregation, num_tokens, num_sequences)
    with torch.no_grad():
        stats = {"clipfrac": masked_mean((clipped_err > unclipped_err).to(values.dtype), response_mask)}
    return loss, stats


def entropy_bonus_loss(
    entropy: torch.Tensor,
    response_mask: torch.Tensor,
    aggregation: Aggregation = "token-mean",
    num_tokens: float | None = None,
    num_sequences: float | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The entropy bonus S[π_θ] of PPO's objective, L = L^CLIP - c1·L^VF + c2·S (Schulman et al.
    2017, eq. 9), as a loss to minimise: -H̄, where H̄ is the policy's per-token entropy aggregated
    like the other terms (cleanrl's ppo.py: ``loss = pg_loss - ent_coef * entropy_loss + ...``).
    The caller weighs it by its coefficient c2.

    entropy: (B, T) nats of π_θ(.|s_t), with grad. Stats: ``entropy``, the aggregated H̄.
    """
    mean_entropy = aggregate_loss(entropy, response_mask, aggregation, num_tokens, num_sequences)
    return -mean_entropy, {"entropy": mean_entropy.detach()}


def explained_variance(values: torch.Tensor, returns: torch.Tensor, response_mask: torch.Tensor) -> torch.Tensor:
    """1 - Var(R - V) / Var(R) over real tokens: 1 is a perfect critic, ≤ 0 no better than a
    constant. values, returns, response_mask: (B, T) -> scalar."""
    var_returns = masked_var(returns, response_mask)
    if var_returns <= 0:
        return torch.zeros((), device=values.device)
    return 1.0 - masked_var(returns - values, response_mask) / var_returns


def bradley_terry_loss(
    chosen_scores: torch.Tensor,
    rejected_scores: torch.Tensor,
    margin: torch.Tensor | None = None,
    weights: torch.Tensor | None = None,
    ties: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Bradley-Terry reward-model loss, -log σ(r_w - r_l - m), weighted mean over pairs.

    chosen_scores, rejected_scores: (N,); margin: (N,) or None (Llama 2's margin term);
    weights: (N,) or None, e.g. 1/C(K,2) per pair so every ranked prompt weighs the same
    (InstructGPT). ties: (N,) bool or None: a tied pair (the labeler saw no difference; its
    "chosen" and "rejected" are just its two responses) is the cross-entropy of σ(r_a - r_b)
    against an even target, -½·log σ(g) - ½·log σ(-g): ln 2 at equal scores, and its gradient
    σ(g) - ½ pulls the gap back to 0, so the labeler's "no difference" is learned, not dropped
    (the soft-label form of a tie; margins do not apply to it).
    Stats over the preference (non-tie) pairs: accuracy (r_w > r_l; equal scores count half)
    and mean score gap.
    """
    gap = chosen_scores - rejected_scores
    logits = gap - margin if margin is not None else gap
    per_pair = -F.logsigmoid(logits)
    if ties is not None:
        per_pair = torch.where(ties, -0.5 * (F.logsigmoid(gap) + F.logsigmoid(-gap)), per_pair)
    if weights is None:
        loss = per_pair.mean()
    else:
        loss = (per_pair * weights).sum() / weights.sum()
    with torch.no_grad():
        preference = gap if ties is None else gap[~ties]
        if preference.numel() == 0:  # ties only: nothing to be right about, so chance and no gap
            preference = gap.new_zeros(1)
        accuracy = ((preference > 0).float() + 0.5 * (preference == 0).float()).mean()
        stats = {"accuracy": accuracy, "margin": preference.mean()}
    return loss, stats


def dpo_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    beta: float = 0.1,
    label_smoothing: float = 0.0,
    loss_type: Literal["sigmoid", "ipo"] = "sigmoid",
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """DPO (Rafailov et al. 2023) and its variants. Inputs: (N,) summed response log-probs.

    h = (log π_θ(y_w) - log π_ref(y_w)) - (log π_θ(y_l) - log π_ref(y_l))
    sigmoid: -(1-s)·log σ(βh) - s·log σ(-βh)   (s = label_smoothing: conservative DPO, Mitchell 2023)
    ipo:     (h - 1/(2β))²                      (Azar et al. 2023)
    Stats: implicit rewards β·(log π_θ - log π_ref) for chosen and rejected, their accuracy and
    margin, and the policy's chosen/rejected log-probs (watch for chosen log-probs falling).
    """
    chosen_logratio = policy_chosen_logps - ref_chosen_logps
    rejected_logratio = policy_rejected_logps - ref_rejected_logps
    h = chosen_logratio - rejected_logratio
    if loss_type == "sigmoid":
        losses = -(1 - label_smoothing) * F.logsigmoid(beta * h) - label_smoothing * F.logsigmoid(-beta * h)
    elif loss_type == "ipo":
        losses = (h - 1.0 / (2.0 * beta)) ** 2
    else:
        raise ValueError(f"unknown DPO loss_type {loss_type!r}: choose sigmoid or ipo")
    with torch.no_grad():
        chosen_rewards = beta * chosen_logratio
        rejected_rewards = beta * rejected_logratio
        stats = {
            "rewards/chosen": chosen_rewards.mean(),
            "rewards/rejected": rejected_rewards.mean(),
            "rewards/accuracy": (chosen_rewards > rejected_rewards).float().mean(),
            "rewards/margin": (chosen_rewards - rejected_rewards).mean(),
            "logps/chosen": policy_chosen_logps.mean(),
            "logps/rejected": policy_rejected_logps.mean(),
        }
    return losses.mean(), stats
