"""One iteration of online RL as a function: ``iterate(state, prompts, prompt_token_ids)``
generates, scores, shapes rewards, estimates advantages, runs the epochs of minibatch updates
and adapts β, and returns what happened. No run directory, no logging, no checkpoint: the
training loop (``tether.train.ppo``) puts its guards, logs and checkpoints around it, and tests
and benchmarks call it as it is (torchtune's recipe splits the same way, into trajectory
generation and the PPO step).

    1. generate   sample responses from the current policy through the rollout engine (HF
                  generate on the policy itself, or vLLM: tether.rollout.engine)
    2. score      old log-probs, reference log-probs, values (one forward pass each), scores
    3. shape      per-token rewards: -β·KL at every token, the score at the last one
    4. advantages the algorithm's estimator, whitened over the global batch where its row says
    5. update     K epochs of minibatch steps on the row's loss terms; then a separate rollout
                  engine (vLLM) receives the new weights
    6. adapt β    on this batch's KL, averaged over ranks (the adaptive controller only)

Under ``torchrun`` every rank calls it on its shard of the global batch; the cross-rank steps
(whitening, loss counts, the finite-score check, β's KL) are calls on ``state.dist``.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

import torch

from tether.ops.kl import AdaptiveKLController, FixedKLController
from tether.ops.mismatch import truncated_importance_weights
from tether.rollout.engine import RolloutEngine
from tether.rollout.generation import SamplingSettings
from tether.rollout.rewards import is_finite
from tether.train.algorithms import AdvantageInputs, AlgorithmSpec
from tether.train.optim import make_optimizer
from tether.train.rl_phases import UpdateStats, run_updates, score_rollout, sequence_kl, shape_rewards
from tether.train.roles import Roles
from tether.types import ScoredRollout, TrainBatch
from tether.utils.distributed import DistContext, whiten


@dataclass
class IterationState:
    """What iterations read and advance: built once per run, then handed to every ``iterate``."""

    config: Any  # the run's PPOConfig
    algorithm: AlgorithmSpec
    roles: Roles
    engine: RolloutEngine
    sampling: SamplingSettings
    optimizer: torch.optim.Optimizer
    scheduler: Any  # LambdaLR over all optimizer steps of the run
    kl_ctl: FixedKLController | AdaptiveKLController
    shuffle_generator: torch.Generator  # minibatch order of epochs after the first
    device: torch.device
    dist: DistContext = field(default_factory=DistContext)
    iteration: int = 0  # iterations done (a resumed run starts from its checkpoint's)

    @property
    def kl_in_loss(self) -> bool:
        return self.algorithm.kl_in_loss(self.config.kl_penalty)


@dataclass
class IterationTimings:
    generate_s: float
    score_s: float
    update_s: float = 0.0
    weight_sync_s: float | None = None  # a separate rollout engine only
    iteration_s: float = 0.0


@dataclass
class IterationResult:
    iteration: int  # 1-based
    scored: ScoredRollout
    kl_coef: float  # β this iteration shaped its rewards (or loss) with
    timings: IterationTimings
    # None below when some rank scored a non-finite reward: no update was made (``skipped``)
    kl: torch.Tensor | None = None  # (B, R) per-token KL of the configured estimator
    returns: torch.Tensor | None = None  # (B, R) value targets; None without a critic
    tis_weights: torch.Tensor | None = None  # (B, R) truncated importance weights (tis_cap only)
    updates: UpdateStats | None = None
    skip_reasons: list[str] = field(default_factory=list)  # one per optimizer step skipped (non-finite)

    @property
    def skipped(self) -> bool:
        return self.updates is None


def iterate(state: IterationState, prompts: list, prompt_token_ids: list[list[int]]) -> IterationResult:
    """One iteration on this rank's prompts (``samples_per_prompt`` responses each)."""
    config, dist = state.config, state.dist
    state.iteration += 1
    kl_coef = state.kl_ctl.value
    t0 = time.perf_counter()
    # 1. generate
    rollout = state.engine.generate(prompts, prompt_token_ids, state.sampling, config.samples_per_prompt)
    t1 = time.perf_counter()
    # 2. score
    scored = score_rollout(state.roles, rollout, config, state.device)
    t2 = time.perf_counter()
    if not dist.all_true(is_finite(scored.scores)):  # every rank skips together
        return IterationResult(state.iteration, scored, kl_coef, IterationTimings(t1 - t0, t2 - t1))
    # 3. shape rewards
    rewards, kl = shape_rewards(scored, kl_coef, not state.kl_in_loss, config.kl_estimator)
    if config.whiten_rewards:
        rewards = whiten(rewards, rollout.response_mask, dist, shift_mean=False)
    # 4. advantages
    advantages, returns = estimate_advantages(state.algorithm, AdvantageInputs(
        scored.scores, rewards, scored.old_values, rollout.response_mask, rollout.group_size,
        config.gamma, config.lam), config.whiten_advantages, dist)
    tis_weights = None
    if config.tis_cap is not None:
        # Truncated importance sampling (Yao et al. 2025): each token's policy-gradient loss
        # times w = min(π_old/π_engine, C). Scaling its advantage by w is the same thing (w > 0
        # commutes with PPO's min and clip) and leaves the losses untouched.
        tis_weights = truncated_importance_weights(
            scored.old_logprobs, rollout.engine_logprobs, config.tis_cap, rollout.response_mask)
        advantages = advantages * tis_weights
    batch = TrainBatch(rollout.prompt_ids, rollout.prompt_mask, rollout.response_ids, rollout.response_mask,
                       scored.old_logprobs, scored.ref_logprobs, advantages, returns, scored.old_values)
    # 5. update: K epochs of minibatch steps (critic warm-up: the value loss alone)
    critic_only = state.iteration <= config.critic_warmup_iterations and returns is not None
    skip_reasons: list[str] = []
    updates = run_updates(state.roles, batch, state.algorithm, config, state.optimizer, state.scheduler, kl_coef,
                          state.kl_in_loss, state.device, state.shuffle_generator, dist=dist,
                          critic_only=critic_only, on_skip=skip_reasons.append)
    t3 = time.perf_counter()
    if not state.engine.shares_weights and updates.steps:
        state.engine.update_weights(state.roles.policy.named_parameters())  # vLLM samples the next batch from these
    t4 = time.perf_counter()
    # 6. adapt β
    _adapt_beta(state, scored)
    timings = IterationTimings(t1 - t0, t2 - t1, t3 - t2, None if state.engine.shares_weights else t4 - t3, t4 - t0)
    return IterationResult(state.iteration, scored, kl_coef, timings, kl, returns, tis_weights, updates, skip_reasons)


def estimate_advantages(algorithm: AlgorithmSpec, inputs: AdvantageInputs, whiten_advantages: bool | None,
                        dist: DistContext) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The row's estimator, then whitening where the row whitens: the one place advantages are
    whitened, always over the global batch (all-reduced mean and variance), so that N ranks
    compute what one process would over the whole batch."""
    advantages, returns = algorithm.advantages(inputs)
    if algorithm.whitens(whiten_advantages):
        advantages = whiten(advantages, inputs.response_mask, dist)
    return advantages, returns


def _adapt_beta(state: IterationState, scored: ScoredRollout) -> None:
    """The adaptive controller steps on the KL (k1, per response) averaged over ranks, counted
    over the global batch's samples (Ziegler et al. 2019 and verl step β by the whole batch)."""
    kl = sequence_kl(scored, "k1").mean().item()
    kl = state.dist.mean_metrics({"kl": kl if math.isfinite(kl) else float("nan")})["kl"]
    state.kl_ctl.update(kl, len(scored.rollout) * state.dist.world_size)


def build_optimization(config, roles: Roles, algorithm: AlgorithmSpec, device: torch.device):
    """AdamW over policy and critic (each with its learning rate), the LR schedule over all
    optimizer steps of the run, and the β controller (adaptive when kl_target is set)."""
    optim = config.optim_settings
    policy_params, critic_params = roles.trainable_groups()
    groups = [{"params": policy_params, "lr": optim.learning_rate}]
    if critic_params:
        groups.append({"params": critic_params, "lr": optim.critic_lr})
    steps_per_iteration = 1 if algorithm.single_step else (
        config.ppo_epochs * config.batch_size * config.samples_per_prompt // config.mini_batch_size)
    optimizer, scheduler = make_optimizer(groups, optim, config.total_iterations * steps_per_iteration, device)
    kl_ctl = (AdaptiveKLController(config.kl_coef, config.kl_target, config.adaptive_kl_horizon)
              if config.kl_target is not None else FixedKLController(config.kl_coef))
    return optimizer, scheduler, kl_ctl
