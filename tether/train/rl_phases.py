"""The phases of one online RL iteration, each a function ``tether.train.iteration.iterate``
calls in order: score -> shape rewards -> minibatch updates (the advantages are the algorithm
row's estimator; generation is the rollout engine's)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from tether.models.forward import build_inputs
from tether.ops.kl import kl_estimate
from tether.ops.masking import real_width
from tether.train.algorithms import AlgorithmSpec, LossInputs
from tether.train.roles import Roles
from tether.train.run_dir import nonfinite_weights_error, weights_finite
from tether.utils.precision import autocast
from tether.types import Rollout, ScoredRollout, TrainBatch


def row_chunks(n: int, size: int) -> list[torch.Tensor]:
    return [torch.arange(start, min(start + size, n)) for start in range(0, n, size)]


def _trimmed(rollout: Rollout, rows: torch.Tensor):
    """The rows' tensors with response columns cut to the longest real response among them:
    the same trimming ``TrainBatch.select`` applies, so that the scoring pass and the first
    training pass see identical inputs and ρ starts at exactly 1."""
    mask = rollout.response_mask[rows]
    width = real_width(mask)
    return rollout.prompt_ids[rows], rollout.prompt_mask[rows], rollout.response_ids[rows][:, :width], mask[:, :width]


def _pad_to(x: torch.Tensor, width: int) -> torch.Tensor:
    return torch.nn.functional.pad(x, (0, width - x.shape[1]))


@torch.no_grad()
def score_rollout(roles: Roles, rollout: Rollout, config, device: torch.device) -> ScoredRollout:
    """One no-grad pass of policy, reference and critic over the sampled tokens, then the
    reward. Old log-probs come from this forward pass, not from generate()'s scores
    (Huang et al. 2024): they must match what the training forward computes."""
    R = rollout.response_ids.shape[1]
    old_logprobs, ref_logprobs, entropy, values = [], [], [], []
    with roles.frozen_on_device():  # offload_frozen: reference and reward model visit the device
        for rows in row_chunks(len(rollout), config.micro_batch_size):
            prompt_ids, prompt_mask, response_ids, response_mask = _trimmed(rollout, rows)
            inputs = build_inputs(prompt_ids, prompt_mask, response_ids, response_mask)
            with autocast(device, config.precision):
                out = roles.policy_outputs(inputs, response_ids, config.temperature, with_entropy=True)
                ref = roles.reference_logprobs(inputs, response_ids, config.temperature)
                chunk_values = out.values
                if roles.critic is not None:
                    chunk_values = roles.critic_values(inputs, response_ids.shape[1])
            old_logprobs.append(_pad_to(out.logprobs, R))
            ref_logprobs.append(_pad_to(ref, R))
            entropy.append(_pad_to(out.entropy, R))
            if chunk_values is not None:
                values.append(_pad_to(chunk_values.float(), R))
        with autocast(device, config.precision):
            scores = roles.reward(rollout).float()
    if config.missing_eos_penalty is not None:
        # A fixed score for responses cut off by max_new_tokens (Huang et al. 2024, detail 23).
        scores = torch.where(rollout.ended_with_eos, scores, torch.full_like(scores, config.missing_eos_penalty))
    if config.reward_clip is not None:
        scores = scores.clamp(-config.reward_clip, config.reward_clip)
    mask = rollout.response_mask
    return ScoredRollout(
        rollout=rollout,
        old_logprobs=torch.cat(old_logprobs) * mask,
        ref_logprobs=torch.cat(ref_logprobs) * mask,
        old_values=torch.cat(values) * mask if values else None,
        entropy=torch.cat(entropy) * mask,
        scores=scores,
    )


def shape_rewards(scored: ScoredRollout, kl_coef: float, kl_in_reward: bool, estimator: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token rewards r_t = -β·kl_t + [t = T]·score (spec: "Per-token rewards").

    Returns (rewards (B, R), kl (B, R)), where kl is the per-token estimate against the
    reference (kept for logging even when the penalty goes into the loss instead)."""
    mask = scored.rollout.response_mask
    kl = kl_estimate(scored.old_logprobs, scored.ref_logprobs, estimator) * mask
    rewards = -kl_coef * kl if kl_in_reward else torch.zeros_like(kl)
    last = (scored.rollout.response_lengths - 1).clamp(min=0)
    rewards = rewards.scatter_add(1, last[:, None], scored.scores[:, None].to(rewards.dtype))
    return rewards * mask, kl


def sequence_kl(scored: ScoredRollout, kind: str) -> torch.Tensor:
    """(B,) each response's KL to the reference: the per-token estimate ``kind`` (k1, k2, k3)
    summed over its real tokens."""
    mask = scored.rollout.response_mask
    return kl_estimate(scored.old_logprobs, scored.ref_logprobs, kind).mul(mask).sum(1)


@dataclass
class UpdateStats:
    """Per-step stats kept as tensors (no host sync in the loop) and averaged once at the end."""

    values: dict[str, list[torch.Tensor]] = field(default_factory=dict)
    skipped: int = 0
    steps: int = 0

    def add(self, name: str, value: torch.Tensor) -> None:
        self.values.setdefault(name, []).append(value.detach().float())

    def means(self) -> dict[str, float]:
        return {name: torch.stack(v).mean().item() for name, v in self.values.items()}


def run_updates(
    roles: Roles,
    batch: TrainBatch,
    algorithm: AlgorithmSpec,
    config,
    optimizer: torch.optim.Optimizer,
    scheduler,
    kl_coef: float,
    kl_in_loss: bool,
    device: torch.device,
    generator: torch.Generator,
    on_skip=None,
    dist=None,
    critic_only: bool = False,
) -> UpdateStats:
    """K epochs over minibatches; gradient accumulation over micro-batches with losses
    normalised by the whole minibatch's token/sequence count, so accumulation is exact.
    The first epoch visits rows in rollout order (so its first step reproduces the scoring
    pass exactly and ρ = 1); later epochs reshuffle. Under torchrun (``dist``, a
    tether.utils.distributed.DistContext) the counts are those of the global minibatch (each
    rank holds ``mini_batch_size / world_size`` rows of it) and every rank skips together. ``critic_only``
    (critic warm-up): the value loss alone, the policy unchanged."""
    world = dist.world_size if dist is not None else 1
    epochs, mini = (1, len(batch)) if algorithm.single_step else (config.ppo_epochs, config.mini_batch_size // world)
    policy_params, critic_params = roles.trainable_groups()
    stats = UpdateStats()
    for epoch in range(epochs):
        order = torch.arange(len(batch)) if epoch == 0 else torch.randperm(len(batch), generator=generator)
        for start in range(0, len(batch), mini):
            minibatch_rows = order[start : start + mini]
            n_tokens = batch.response_mask[minibatch_rows].sum()
            if world > 1:
                n_tokens = dist.all_sum(n_tokens)
            finite = True
            for micro_rows in minibatch_rows.split(config.micro_batch_size):
                loss = _micro_step(roles, batch.select(micro_rows), algorithm, config, kl_coef, kl_in_loss,
                                   device, n_tokens, len(minibatch_rows) * world, stats, critic_only)
                if not torch.isfinite(loss):
                    finite = False
                    if world == 1:
                        break  # (with several ranks every one must run its backward: they sync in it)
                (loss * (dist.grad_scale if dist is not None else 1.0)).backward()
            if world > 1:
                finite = dist.all_true(finite)
            grad_norm = _clip(policy_params, config.max_grad_norm) if finite else None
            if critic_params and finite:
                _clip(critic_params, config.max_grad_norm)
            if not finite or not torch.isfinite(grad_norm):
                # Guard: never apply a NaN/inf update (weights would be lost for good).
                optimizer.zero_grad(set_to_none=True)
                stats.skipped += 1
                if on_skip is not None:
                    on_skip("non-finite loss" if not finite else "non-finite gradient")
                continue
            optimizer.step()
            # The guard above sees finite gradients, but the step itself can still make weights
            # NaN (AdamW with adam_eps=0 divides 0 by 0); every later loss would then be NaN and
            # every step skipped. One fused check per step; the ranks stop together.
            finite_weights = weights_finite([*policy_params, *critic_params])
            if not (dist.all_true(finite_weights) if world > 1 else finite_weights):
                raise nonfinite_weights_error(
                    {"policy": roles.policy, "critic": roles.critic if roles.critic is not None else roles.value_head},
                    fix="lower learning_rate, or set adam_eps above 0 (1e-8 is the usual value)")
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            stats.steps += 1
            stats.add("optim/grad_norm", grad_norm)
    return stats


def _clip(params, max_norm: float) -> torch.Tensor:
    """clip_grad_norm_, with the norm as a plain tensor (FSDP2 gives a DTensor)."""
    norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
    return norm.full_tensor() if hasattr(norm, "full_tensor") else norm


def _micro_step(roles, mb: TrainBatch, algorithm: AlgorithmSpec, config, kl_coef, kl_in_loss, device, n_tokens,
                n_seqs, stats: UpdateStats, critic_only: bool = False) -> torch.Tensor:
    """The forward pass of one micro-batch and the sum of the algorithm's loss terms, in the
    row's order. ``critic_only`` (critic warm-up): the value loss alone; with a separate critic
    the policy's forward is skipped, with a shared one the other terms are weighed 0 (the
    backbone learns values only)."""
    inputs = build_inputs(mb.prompt_ids, mb.prompt_mask, mb.response_ids, mb.response_mask)
    logprobs = entropy = None
    settings = config.loss_settings
    with autocast(device, config.precision):
        if critic_only and roles.critic is not None:
            values = roles.critic_values(inputs, mb.response_ids.shape[1])
        else:
            out = roles.policy_outputs(inputs, mb.response_ids, config.temperature,
                                       with_entropy=settings.entropy_coef > 0)  # the entropy bonus's H, with grad
            logprobs, values, entropy = out.logprobs, out.values, out.entropy
            if roles.critic is not None:
                values = roles.critic_values(inputs, mb.response_ids.shape[1])
    x = LossInputs(mb, logprobs, values.float() if values is not None else None, algorithm, settings, kl_coef,
                   kl_in_loss, n_tokens, n_seqs, entropy)
    loss = None
    for term in algorithm.loss_terms:
        part = term(x)
        if part is None:
            continue
        for name, value in part.stats.items():
            stats.add(name, value)
        weighted = part.loss * 0.0 if critic_only and not part.trains_critic else part.loss
        loss = weighted if loss is None else loss + weighted
    if logprobs is not None:
        stats.add("losses/total_loss", loss)
    return loss
