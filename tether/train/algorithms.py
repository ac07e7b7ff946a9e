"""The online algorithms as rows of one table. They share rollout, scoring, reward shaping,
the minibatch loop, metrics and checkpoints; a row owns everything else: its name and CLI
command, whether it trains a critic or compares the samples of one prompt, how advantages
(and value targets) are estimated and whether they are whitened, where β·KL goes by default,
and the terms of its loss. The config's ``algorithm`` choices, the CLI's commands and the
checks of a config against its algorithm all derive from ``ALGORITHMS``; a new method is one
row (verl keeps its advantage estimators in a registry the same way).

The math (tether.ops) is imported inside the functions: ``tether <command>`` registers one
command per row, and building the CLI's parser must not import torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Literal

from tether.errors import ConfigError

if TYPE_CHECKING:
    import torch

    from tether.types import TrainBatch

# ---- advantage estimators ------------------------------------------------------------------


@dataclass
class AdvantageInputs:
    scores: torch.Tensor  # (B,) sequence scores
    token_rewards: torch.Tensor  # (B, R) score at the last token, -β·KL per token if KL is in the reward
    values: torch.Tensor | None  # (B, R) V_old(s_t), None without a critic
    response_mask: torch.Tensor  # (B, R)
    group_size: int  # consecutive samples of one prompt
    gamma: float
    lam: float


AdvantageFn = Callable[[AdvantageInputs], "tuple[torch.Tensor, torch.Tensor | None]"]


def gae_advantages(x: AdvantageInputs) -> tuple[torch.Tensor, torch.Tensor]:
    """PPO/A2C: GAE over KL-shaped per-token rewards; returns are the critic's targets."""
    from tether.ops.advantages import gae

    return gae(x.token_rewards, x.values, x.response_mask, x.gamma, x.lam)


def _per_token(sequence_advantages: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return sequence_advantages[:, None] * mask.to(sequence_advantages.dtype)


def _sequence_return(x: AdvantageInputs) -> torch.Tensor:
    """(B,) the response's total reward: its score, minus β·KL summed over its tokens when the
    KL penalty is in the reward (with KL in the loss this is exactly the score)."""
    return (x.token_rewards * x.response_mask).sum(1)


def group_advantages(x: AdvantageInputs) -> tuple[torch.Tensor, None]:
    """GRPO: each response's return normalised within its prompt's group, on every token.
    (The return, not the bare score: with ``kl_penalty=reward`` the KL must not vanish.)"""
    from tether.ops.advantages import group_normalized_advantages

    return _per_token(group_normalized_advantages(_sequence_return(x), x.group_size), x.response_mask), None


def group_advantages_no_std(x: AdvantageInputs) -> tuple[torch.Tensor, None]:
    """Dr. GRPO: centred within the group, not divided by the group's std."""
    from tether.ops.advantages import group_normalized_advantages

    advantages = group_normalized_advantages(_sequence_return(x), x.group_size, scale_by_std=False)
    return _per_token(advantages, x.response_mask), None


def rloo_advantages(x: AdvantageInputs) -> tuple[torch.Tensor, None]:
    """RLOO: the KL-shaped return of the whole response minus the mean of the other samples'."""
    from tether.ops.advantages import leave_one_out_advantages

    return _per_token(leave_one_out_advantages(_sequence_return(x), x.group_size), x.response_mask), None


def reinforce_pp_returns(x: AdvantageInputs) -> tuple[torch.Tensor, None]:
    """REINFORCE++ (Hu 2025): per-token discounted returns of the KL-shaped rewards; the row's
    whitening over the whole batch is its baseline (no critic, no group)."""
    from tether.ops.advantages import discounted_returns

    return discounted_returns(x.token_rewards, x.response_mask, x.gamma), None


# ---- loss terms ------------------------------------------------------------------------------


@dataclass(frozen=True)
class LossSettings:
    """The loss section of an online run's config (``PPOConfig.loss_settings``): what the loss
    terms read besides the batch."""

    clip_eps: float  # PPO ratio clip ε
    clip_eps_high: float | None  # upper clip; None: ε
    value_clip_eps: float  # value clip ε_v; 0 disables
    vf_coef: float  # weight of the value loss
    entropy_coef: float  # weight of the entropy bonus; 0: off (no entropy computed in the update)
    loss_aggregation: str  # how per-token losses become one number (tether.ops.losses.aggregate_loss)


@dataclass
class LossInputs:
    """One micro-batch after the training forward pass: what every loss term reads."""

    batch: TrainBatch  # the micro-batch's rows
    logprobs: torch.Tensor | None  # (b, R) log π_θ(y_t|s_t), with grad; None when only the critic runs
    values: torch.Tensor | None  # (b, R) V_θ(s_t) in fp32, with grad; None without a critic
    algorithm: "AlgorithmSpec"
    settings: LossSettings
    kl_coef: float  # β
    kl_in_loss: bool
    num_tokens: torch.Tensor  # real tokens of the whole (global) minibatch: exact accumulation
    num_sequences: int  # responses of the whole (global) minibatch
    entropy: torch.Tensor | None = None  # (b, R) entropy of π_θ(.|s_t), with grad; None unless entropy_coef > 0


@dataclass
class LossPart:
    loss: torch.Tensor  # weighted contribution to the minibatch loss
    stats: dict[str, torch.Tensor]  # logged as metrics (means over the iteration's steps)
    trains_critic: bool = False  # critic warm-up keeps these parts and weighs the others 0


# None: the term does not apply to this run or step (no KL in the loss, no critic, or only the
# critic ran: LossInputs.logprobs is None)
LossTerm = Callable[[LossInputs], LossPart | None]


def _aggregation(x: LossInputs) -> dict:
    return dict(aggregation=x.settings.loss_aggregation, num_tokens=x.num_tokens, num_sequences=x.num_sequences)


def policy_term(x: LossInputs) -> LossPart | None:
    """The row's policy loss on the (possibly TIS-weighted) advantages."""
    if x.logprobs is None:
        return None
    mb = x.batch
    loss, stats = x.algorithm.policy_loss(x.logprobs, mb.old_logprobs, mb.advantages, mb.response_mask,
                                          clip_eps=x.settings.clip_eps, clip_eps_high=x.settings.clip_eps_high,
                                          **_aggregation(x))
    return LossPart(loss, {"losses/policy_loss": loss, **{f"policy/{name}": v for name, v in stats.items()}})


def kl_term(x: LossInputs) -> LossPart | None:
    """β·KL in the loss (GRPO): k3 of π_θ against π_ref, unbiased and ≥ 0 (Shao et al. 2024)."""
    if not x.kl_in_loss or x.logprobs is None:
        return None
    from tether.ops.kl import kl_estimate
    from tether.ops.losses import aggregate_loss

    kl = aggregate_loss(kl_estimate(x.logprobs, x.batch.ref_logprobs, "k3"), x.batch.response_mask,
                        mode=x.settings.loss_aggregation, num_tokens=x.num_tokens, num_sequences=x.num_sequences)
    return LossPart(x.kl_coef * kl, {"losses/kl_loss": kl})


def value_term(x: LossInputs) -> LossPart | None:
    """The critic's clipped value loss against the GAE returns, weighted by vf_coef."""
    mb = x.batch
    if x.values is None or mb.returns is None:
        return None
    from tether.ops.losses import value_loss

    loss, stats = value_loss(x.values, mb.old_values, mb.returns, mb.response_mask, x.settings.value_clip_eps,
                             **_aggregation(x))
    return LossPart(x.settings.vf_coef * loss, {"losses/value_loss": loss, "value/clipfrac": stats["clipfrac"]},
                    trains_critic=True)


def entropy_term(x: LossInputs) -> LossPart | None:
    """The entropy bonus, -c·H̄ of π_θ over the response tokens (PPO's c2·S, Schulman et al. 2017
    eq. 9; cleanrl's ``ent_coef``): keeps the policy from collapsing onto one answer early.
    Absent at ``entropy_coef`` 0, so the loss stays bitwise that of the other terms."""
    if x.settings.entropy_coef == 0 or x.logprobs is None:
        return None
    from tether.ops.losses import entropy_bonus_loss

    loss, stats = entropy_bonus_loss(x.entropy, x.batch.response_mask, **_aggregation(x))
    return LossPart(x.settings.entropy_coef * loss, {"losses/entropy": stats["entropy"]})


STANDARD_TERMS: tuple[LossTerm, ...] = (policy_term, kl_term, value_term, entropy_term)


def clipped_surrogate(*args, **kwargs):
    """PPO's clipped surrogate (tether.ops.losses.ppo_clip_loss), the policy loss of most rows."""
    from tether.ops.losses import ppo_clip_loss

    return ppo_clip_loss(*args, **kwargs)


def unclipped_policy_gradient(logprobs, old_logprobs, advantages, response_mask, clip_eps=None, clip_eps_high=None, **agg):
    """A2C's loss with the table's shared signature (the clip range does not apply)."""
    from tether.ops.losses import policy_gradient_loss

    return policy_gradient_loss(logprobs, old_logprobs, advantages, response_mask, **agg)


# ---- the table -------------------------------------------------------------------------------

# How a row's advantages are whitened (mean 0, std 1 over the real tokens of the global batch):
#   optional  whiten_advantages decides, on unless set false (GAE: Huang et al. 2024)
#   always    the whitening is the algorithm (REINFORCE++'s baseline): whiten_advantages=false is refused
#   never     advantages are normalised within each prompt's group: whiten_advantages=true is refused
Whitening = Literal["optional", "always", "never"]


@dataclass(frozen=True)
class AlgorithmSpec:
    """A row: what makes one online method differ from the others. Defaults are a critic-free
    PPO-style method: clipped surrogate, β·KL in the reward, the standard loss terms."""

    name: str  # the config's `algorithm`
    command: str  # `tether <command>`
    summary: str  # the command's help line
    advantages: AdvantageFn  # -> (advantages (B, R), returns (B, R) or None), never whitened here
    whitening: Whitening
    needs_critic: bool = False  # a value model trained beside the policy (its GAE needs V)
    needs_groups: bool = False  # compares the samples of one prompt: samples_per_prompt >= 2
    default_kl_penalty: Literal["reward", "loss"] = "reward"  # where β·KL goes when kl_penalty is auto
    # (logprobs, old_logprobs, advantages, mask, clip_eps, clip_eps_high, **aggregation) -> (loss, stats)
    policy_loss: Callable = clipped_surrogate
    single_step: bool = False  # one unclipped gradient step per batch (A2C): epochs and minibatches forced to 1
    loss_terms: tuple[LossTerm, ...] = STANDARD_TERMS  # summed in this order

    def whitens(self, requested: bool | None) -> bool:
        """Whether advantages are whitened, given the config's ``whiten_advantages`` (None: the
        row's rule); a request the row cannot honour is a ConfigError."""
        if self.whitening == "optional":
            return True if requested is None else requested
        fixed = self.whitening == "always"
        if requested is not None and requested != fixed:
            why = ("its batch whitening is the baseline that replaces a critic" if fixed else
                   "it normalises advantages within each prompt's group")
            raise ConfigError(f'field "whiten_advantages": {self.name} cannot run with whiten_advantages='
                              f"{str(requested).lower()}: {why}; leave it unset")
        return fixed

    def kl_in_loss(self, kl_penalty: str) -> bool:
        return (kl_penalty if kl_penalty != "auto" else self.default_kl_penalty) == "loss"


ALGORITHMS: dict[str, AlgorithmSpec] = {spec.name: spec for spec in (
    AlgorithmSpec("ppo", "ppo", "PPO: clipped surrogate, critic, KL-shaped rewards (the default)",
                  gae_advantages, "optional", needs_critic=True),
    AlgorithmSpec("a2c", "a2c", "advantage actor-critic: GAE advantages, one unclipped step per batch",
                  gae_advantages, "optional", needs_critic=True, policy_loss=unclipped_policy_gradient,
                  single_step=True),
    AlgorithmSpec("grpo", "grpo", "GRPO: group-normalised advantages, KL in the loss, no critic",
                  group_advantages, "never", needs_groups=True, default_kl_penalty="loss"),
    AlgorithmSpec("dr_grpo", "dr-grpo", "Dr. GRPO: GRPO without the std division (advantages centred in the group)",
                  group_advantages_no_std, "never", needs_groups=True, default_kl_penalty="loss"),
    AlgorithmSpec("rloo", "rloo", "RLOO: leave-one-out baseline over K samples per prompt, no critic",
                  rloo_advantages, "never", needs_groups=True),
    AlgorithmSpec("reinforce_pp", "reinforce-pp", "REINFORCE++: batch-normalised returns with per-token KL, no critic",
                  reinforce_pp_returns, "always"),
)}


def algorithm_for(config) -> AlgorithmSpec:
    """The config's row, after the checks the row makes of a config (one line each)."""
    spec = ALGORITHMS.get(config.algorithm)
    if spec is None:
        raise ConfigError(f'field "algorithm": unknown algorithm {config.algorithm!r}; choose one of '
                          f"{', '.join(ALGORITHMS)}")
    if spec.needs_groups and config.samples_per_prompt < 2:
        raise ConfigError(f"{spec.name} compares samples of one prompt: set samples_per_prompt >= 2")
    spec.whitens(config.whiten_advantages)
    return spec
