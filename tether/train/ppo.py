"""The online RLHF loop: PPO by default, and the alternatives of the algorithm table.

Each iteration reads as the algorithm (cleanrl's ppo.py is the model):
    1. generate   sample responses to a batch of prompts from the current policy, through the
                  rollout engine (HF generate on the policy itself, or vLLM: tether.rollout.engine)
    2. score      old log-probs, reference log-probs, values (one forward pass each), scores
    3. shape      per-token rewards: -β·KL at every token, the score at the last one
    4. advantages GAE (or the algorithm's estimator), whitened
    5. update     K epochs of minibatch steps on the clipped surrogate + value loss; then a
                  separate rollout engine (vLLM) receives the new weights
    6. log        metrics.jsonl, samples.jsonl, progress bar; adapt β; every ``eval_every``
                  iterations the held-out evaluation's eval/* (tether.train.evaluation)
    7. checkpoint full state every ``checkpoint_every`` iterations, at the end, and on
                  SIGINT/SIGTERM (then stop); ``resume`` continues bit for bit (docs/reliability.md)

Under ``torchrun`` every rank runs this same loop on its shard of each global batch; the
few cross-rank steps (prompt shard, global whitening and loss counts, metric means, rank-0
writes) are calls on ``dist`` (tether.utils.distributed; docs/scaling.md).
"""

from __future__ import annotations

import math
import time
from contextlib import closing
from pathlib import Path

import torch

from tether.data.templates import prompt_text
from tether.errors import RunStopped, TetherError
from tether.models.loading import resolve_device
from tether.models.lora import checkpoint_view
from tether.ops.kl import AdaptiveKLController, FixedKLController
from tether.ops.losses import explained_variance
from tether.ops.masking import masked_mean
from tether.ops.mismatch import logprob_mismatch, truncated_importance_weights
from tether.rollout.engine import build_rollout_engine
from tether.rollout.generation import SamplingSettings
from tether.rollout.prompts import PromptStream
from tether.rollout.rewards import describe_nonfinite, is_finite
from tether.train.algorithms import ALGORITHMS, AdvantageInputs
from tether.train.evaluation import build_evaluator, training_and_eval_prompts
from tether.train.ppo_config import PPOConfig, check_world_size, preflight
from tether.train.rl_phases import run_updates, score_rollout, shape_rewards
from tether.train.roles import build_roles
from tether.train.run_dir import RunDirectory, make_adamw, make_scheduler, resume_checkpoint
from tether.types import TrainBatch
from tether.utils.distributed import (DistContext, RankZeroCheckpointer, full_state_dicts, init_distributed, rank_seed,
                                      shutdown_distributed, whiten, wrap_trained)
from tether.utils.host_memory import keep_freed_host_memory
from tether.utils.seeding import seed_everything
from tether.utils.signals import GracefulStop


def train_ppo(config: PPOConfig) -> Path:
    """Run the loop; returns the run directory (metrics, samples, checkpoints, final policy).
    A run stopped early (SIGINT/SIGTERM, stop_on_critical) checkpoints and raises RunStopped."""
    preflight(config)  # every check that needs no model: fail in a second, not after loading
    keep_freed_host_memory()  # no page faults on each step's large buffers (tether/utils/host_memory.py)
    dist, device_spec = init_distributed(config.strategy, config.device)
    try:
        check_world_size(config, dist.world_size)
        path = _train(config, dist, resolve_device(device_spec))
    except RunStopped:
        shutdown_distributed(dist)  # the ranks stopped together: they meet as after a finish
        raise
    except BaseException:
        shutdown_distributed(dist, clean=False)
        raise
    shutdown_distributed(dist)
    return path


def _train(config: PPOConfig, dist: DistContext, device: torch.device) -> Path:
    algorithm = ALGORITHMS[config.algorithm]
    kl_in_loss = (config.kl_penalty if config.kl_penalty != "auto" else algorithm.default_kl_penalty) == "loss"
    seed_everything(config.seed)  # the same on every rank: identical initial weights
    resume_from = resume_checkpoint(config)  # None: a fresh run
    prompt_list, eval_list = training_and_eval_prompts(config)  # eval prompts never enter training
    run = RunDirectory.create(config, quiet=config.quiet, resume_history=resume_from and resume_from["history"],
                              write=dist.is_main)

    roles = build_roles(config, device, algorithm.uses_critic)
    roles.actor = wrap_trained(roles.actor, dist, device)  # DDP / FSDP2 under torchrun, else as is
    if roles.critic_forward is not None:
        roles.critic_forward = wrap_trained(roles.critic_forward, dist, device)
    rank_rows = config.batch_size * config.samples_per_prompt // dist.world_size
    prompts = PromptStream(prompt_list, roles.tokenizer, config.chat_template, config.max_prompt_tokens, config.seed)
    sampling = SamplingSettings(config.max_new_tokens, config.temperature, config.top_k, config.top_p)
    optimizer, scheduler, kl_ctl = _optimization(config, roles, algorithm, device)
    shuffle_generator = torch.Generator().manual_seed(config.seed)
    ckpt = RankZeroCheckpointer(run.path, config.checkpoint_every, config.keep_checkpoints, config.total_iterations,
                                modules={"policy": checkpoint_view(roles.policy), "critic": roles.critic,
                                         "value_head": roles.value_head},
                                stateful={"optimizer": optimizer, "scheduler": scheduler, "kl": kl_ctl, "prompts": prompts},
                                generators={"shuffle": shuffle_generator}, ctx=dist,
                                sharded=(roles.actor, roles.critic_forward))
    start, guard = ckpt.restore(resume_from) if resume_from else (0, {"consecutive_skips": 0, "total_skips": 0})
    if dist.world_size > 1:  # per-rank sampling streams (after restore: it sets rank 0's RNG everywhere)
        seed_everything(rank_seed(config.seed + start, dist))
    engine = build_rollout_engine(config, roles, device)  # after restore: vLLM starts from the resumed weights
    evaluator = build_evaluator(config, eval_list, roles, dist, device)  # None without eval_prompts
    # (closing: vLLM runs an engine process and keeps temporary weight files until closed)

    stopping = doctor_stop = False
    with run.progress(config.total_iterations - start) as progress, GracefulStop() as stop, closing(engine):
        for iteration in range(start + 1, config.total_iterations + 1):
            t0 = time.perf_counter()
            # 1. generate
            batch_prompts, batch_ids = prompts.next_batch(config.batch_size, config.samples_per_prompt)
            batch_prompts, batch_ids = dist.shard(batch_prompts, rank_rows), dist.shard(batch_ids, rank_rows)
            rollout = engine.generate(batch_prompts, batch_ids, sampling, config.samples_per_prompt)
            t1 = time.perf_counter()
            # 2. score
            scored = score_rollout(roles, rollout, config, device)
            t2 = time.perf_counter()
            if not dist.all_true(is_finite(scored.scores)):
                guard["consecutive_skips"] += 1
                guard["total_skips"] += 1
                run.warn(f"iteration {iteration}: {describe_nonfinite(scored.scores)}; update skipped")
                _check_skips(guard["consecutive_skips"], config)
                run.log(iteration, {"guard/skipped_updates": guard["total_skips"]}, progress)
                stopping = dist.any_true(bool(stop.requested))
                if ckpt.end_of_iteration(iteration, guard, run.history, stopping):
                    break
                continue
            # 3. shape rewards
            rewards, kl = shape_rewards(scored, kl_ctl.value, not kl_in_loss, config.kl_estimator)
            if config.whiten_rewards:
                rewards = whiten(rewards, rollout.response_mask, dist, shift_mean=False)
            # 4. advantages (GAE's whitening over the global batch: done here when there are several ranks)
            local_whiten = config.whiten_advantages and dist.world_size == 1
            advantages, returns = algorithm.advantages(AdvantageInputs(
                scored.scores, rewards, scored.old_values, rollout.response_mask, rollout.group_size,
                config.gamma, config.lam, local_whiten))
            if config.whiten_advantages and not local_whiten and returns is not None:
                advantages = whiten(advantages, rollout.response_mask, dist)
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
            # 5. update: K epochs of minibatch steps
            critic_only = iteration <= config.critic_warmup_iterations and returns is not None
            updates = run_updates(roles, batch, algorithm, config, optimizer, scheduler, kl_ctl.value, kl_in_loss,
                                  device, shuffle_generator, dist=dist, critic_only=critic_only,
                                  on_skip=lambda why: run.warn(f"iteration {iteration}: {why}; step skipped"))
            t3 = time.perf_counter()
            if not engine.shares_weights and updates.steps:
                engine.update_weights(roles.policy.named_parameters())  # vLLM samples the next batch from these
            t4 = time.perf_counter()
            guard["total_skips"] += updates.skipped
            guard["consecutive_skips"] = guard["consecutive_skips"] + 1 if updates.steps == 0 else 0
            _check_skips(guard["consecutive_skips"], config)
            # 6. log, then adapt β on this batch's KL
            metrics = _iteration_metrics(scored, kl, returns, kl_ctl.value, updates, optimizer, config,
                                         timings=(t1 - t0, t2 - t1, t3 - t2, t4 - t0), skipped=guard["total_skips"],
                                         tis_weights=tis_weights)
            if not engine.shares_weights:
                metrics["time/weight_sync_s"] = t4 - t3
            metrics = dist.mean_metrics(metrics)  # the same numbers (and the same β) on every rank
            # this KL is the mean over ranks, so the samples behind it are the global batch's
            # (Ziegler et al. 2019 and verl step β by the whole batch)
            kl_ctl.update(metrics["objective/kl_k1"], len(rollout) * dist.world_size)
            if evaluator is not None and evaluator.due(iteration):
                metrics.update(evaluator.evaluate())  # held-out eval/* (its own RNG: training unchanged)
            run.log(iteration, metrics, progress)
            run.log_samples(iteration, _samples(scored, kl, config.log_samples))
            # 7. checkpoint when due (every N iterations, the last one, or after SIGINT/SIGTERM)
            doctor_stop = config.stop_on_critical and run.doctor_says_stop
            stopping = dist.any_true(bool(stop.requested) or doctor_stop)  # ranks stop together
            if ckpt.end_of_iteration(iteration, guard, run.history, stopping):
                break

    if stopping:
        run.stopped(stop.requested or ("a critical doctor finding" if doctor_stop else "a signal to another rank"), ckpt.last_saved, f"tether ppo --resume {run.path}")
    full_states = full_state_dicts(roles, dist)  # FSDP2: gathered on every rank; else None
    if dist.is_main:
        run.save_final(roles, config, full_states)
    dist.barrier()
    run.close()
    return run.path


def _optimization(config: PPOConfig, roles, algorithm, device: torch.device):
    """AdamW over policy and critic (each with its learning rate), the LR schedule over all
    optimizer steps of the run, and the β controller (adaptive when kl_target is set)."""
    policy_params, critic_params = roles.trainable_groups()
    groups = [{"params": policy_params, "lr": config.learning_rate}]
    if critic_params:
        critic_lr = config.learning_rate if config.critic_learning_rate is None else config.critic_learning_rate
        groups.append({"params": critic_params, "lr": critic_lr})
    optimizer = make_adamw(groups, device, weight_decay=config.weight_decay, eps=config.adam_eps)
    steps_per_iteration = 1 if algorithm.single_step else (
        config.ppo_epochs * config.batch_size * config.samples_per_prompt // config.mini_batch_size)
    scheduler = make_scheduler(optimizer, config.lr_schedule, config.warmup_steps,
                               config.total_iterations * steps_per_iteration)
    kl_ctl = (AdaptiveKLController(config.kl_coef, config.kl_target, config.adaptive_kl_horizon)
              if config.kl_target is not None else FixedKLController(config.kl_coef))
    return optimizer, scheduler, kl_ctl


def _check_skips(consecutive: int, config: PPOConfig) -> None:
    if consecutive >= config.max_consecutive_skips:
        raise TetherError(
            f"{consecutive} consecutive updates skipped for non-finite rewards, losses or gradients; "
            "check the reward function/model for NaN, lower learning_rate, or use precision=fp32"
        )


def _iteration_metrics(scored, kl, returns, kl_coef, updates, optimizer, config, timings, skipped,
                       tis_weights=None) -> dict[str, float]:
    rollout = scored.rollout
    mask = rollout.response_mask
    # kl: (B, R) per-token KL of the configured estimator (shape_rewards); k1 and k3 are logged
    # whatever it is, so runs with different estimators compare on the same scales
    kl_k1 = (scored.old_logprobs - scored.ref_logprobs).mul(mask).sum(1)
    kl_k3 = (torch.expm1(scored.ref_logprobs - scored.old_logprobs) - (scored.ref_logprobs - scored.old_logprobs)).mul(mask).sum(1)
    generate_s, score_s, update_s, total_s = timings
    n_tokens = mask.sum().item()
    metrics = {
        "objective/score_mean": scored.scores.mean().item(),
        "objective/score_std": scored.scores.std().item() if len(rollout) > 1 else 0.0,
        "objective/kl_k1": kl_k1.mean().item(),
        "objective/kl_k3": kl_k3.mean().item(),
        "objective/kl_coef": kl_coef,
        # the objective the policy is trained on: score - β·KL with the KL the reward was shaped with
        "objective/rlhf_reward": (scored.scores - kl_coef * kl.sum(1)).mean().item(),
        "policy/entropy": masked_mean(scored.entropy, mask).item(),
        "rollout/response_length": rollout.response_lengths.float().mean().item(),
        "rollout/eos_fraction": rollout.ended_with_eos.float().mean().item(),
        "rollout/tokens_per_s": n_tokens / max(generate_s, 1e-9),
        "optim/lr": optimizer.param_groups[0]["lr"],
        "time/generate_s": generate_s,
        "time/score_s": score_s,
        "time/update_s": update_s,
        "time/iteration_s": total_s,
        "guard/skipped_updates": skipped,
    }
    if rollout.engine_logprobs is not None:
        metrics.update(_engine_mismatch_metrics(scored, tis_weights, config.tis_cap))
    if scored.old_values is not None and returns is not None:
        metrics["value/explained_variance"] = explained_variance(scored.old_values, returns, mask).item()
        metrics["value/mean"] = masked_mean(scored.old_values, mask).item()
    metrics.update(updates.means())
    return {k: (v if math.isfinite(v) else float("nan")) for k, v in metrics.items()}


def _engine_mismatch_metrics(scored, tis_weights: torch.Tensor | None, tis_cap: float | None) -> dict[str, float]:
    """How far the rollout engine's log-probs of the sampled tokens are from the trainer's
    (the scoring pass's old log-probs), and, with TIS on, how the correction weighed tokens."""
    mask = scored.rollout.response_mask
    mismatch = logprob_mismatch(scored.rollout.engine_logprobs, scored.old_logprobs, mask)
    metrics = {"rollout/logprob_mismatch": mismatch["mean"].item(), "rollout/logprob_mismatch_max": mismatch["max"].item()}
    if tis_weights is not None:
        metrics["rollout/tis_weight_mean"] = masked_mean(tis_weights, mask).item()
        metrics["rollout/tis_capped_frac"] = masked_mean((tis_weights >= tis_cap).float(), mask).item()
    return metrics


def _samples(scored, kl, n: int) -> list[dict]:
    rollout = scored.rollout
    rows = []
    for i in range(min(n, len(rollout))):
        rows.append({
            "prompt": prompt_text(rollout.prompts[i]),
            "response": rollout.responses[i],
            "score": scored.scores[i].item(),
            "kl": kl[i].sum().item(),
            "length": int(rollout.response_lengths[i].item()),
            "ended_with_eos": bool(rollout.ended_with_eos[i].item()),
        })
    return rows


__all__ = ["train_ppo", "PPOConfig"]
