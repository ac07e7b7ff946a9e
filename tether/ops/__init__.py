"""Pure tensor math for RLHF: tensors in, tensors out; imports torch only."""

from tether.ops.advantages import (
    discounted_returns,
    gae,
    group_normalized_advantages,
    leave_one_out_advantages,
)
from tether.ops.kl import AdaptiveKLController, FixedKLController, k3, kl_estimate
from tether.ops.logprobs import entropy_from_logits, token_logprobs
from tether.ops.losses import (
    aggregate_loss,
    bradley_terry_loss,
    dpo_loss,
    entropy_bonus_loss,
    explained_variance,
    policy_gradient_loss,
    ppo_clip_loss,
    value_loss,
)
from tether.ops.masking import mask_after_first_eos, masked_mean, masked_sum, masked_var, masked_whiten, real_width
from tether.ops.mismatch import logprob_mismatch, truncated_importance_weights

__all__ = [
    "AdaptiveKLController",
    "FixedKLController",
    "aggregate_loss",
    "bradley_terry_loss",
    "discounted_returns",
    "dpo_loss",
    "entropy_bonus_loss",
    "entropy_from_logits",
    "explained_variance",
    "gae",
    "group_normalized_advantages",
    "k3",
    "kl_estimate",
    "leave_one_out_advantages",
    "logprob_mismatch",
    "mask_after_first_eos",
    "masked_mean",
    "masked_sum",
    "masked_var",
    "masked_whiten",
    "policy_gradient_loss",
    "ppo_clip_loss",
    "real_width",
    "token_logprobs",
    "truncated_importance_weights",
    "value_loss",
]
