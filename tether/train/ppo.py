"""The online RLHF loop: PPO by default, and the alternatives of the algorithm table.

Each iteration is ``tether.train.iteration.iterate`` (generate -> score -> shape rewards ->
advantages -> minibatch updates -> adapt β); this module runs it over the run and keeps
what is around it (cleanrl's ppo.py is the model for reading top to bottom):
    setup      roles, prompts, optimizer, rollout engine, evaluator; resume from a checkpoint
    guards     non-finite scores or updates skip a step, and too many in a row stop the run
    log        metrics.jsonl, samples.jsonl, progress bar; every ``eval_every`` iterations the
               held-out evaluation's eval/* (tether.train.evaluation)
    checkpoint full state every ``checkpoint_every`` iterations, at the end, and on
               SIGINT/SIGTERM (then stop); ``resume`` continues bit for bit (docs/reliability.md)

Under ``torchrun`` every rank runs this same loop on its shard of each global batch; the
few cross-rank steps (prompt shard, global whitening and loss counts, metric means, rank-0
writes) are calls on ``dist`` (tether.utils.distributed; docs/scaling.md).
"""

from __future__ import annotations

import math
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch

from tether.data.templates import prompt_text
from tether.errors import RunStopped, TetherError
from tether.models.loading import resolve_device
from tether.models.lora import checkpoint_view
from tether.ops.losses import explained_variance
from tether.ops.masking import masked_mean
from tether.ops.mismatch import logprob_mismatch
from tether.rollout.engine import build_rollout_engine
from tether.rollout.prompts import PromptStream
from tether.rollout.rewards import describe_nonfinite
from tether.train.algorithms import algorithm_for
from tether.train.evaluation import build_evaluator, training_and_eval_prompts
from tether.train.iteration import IterationResult, IterationState, build_optimization, iterate
from tether.train.ppo_config import PPOConfig, check_world_size, preflight
from tether.train.ppo_resume import resume_command
from tether.train.rl_phases import sequence_kl
from tether.train.roles import build_roles
from tether.train.run_dir import RunDirectory, resume_checkpoint, run_path
from tether.train.run_hooks import Callback, RunHooks, reward_components, reward_metrics, with_reward_components
from tether.utils.distributed import (DistContext, RankZeroCheckpointer, full_state_dicts, init_distributed, rank_seed,
                                      shutdown_distributed, wrap_trained)
from tether.utils.host_memory import keep_freed_host_memory
from tether.utils.seeding import seed_everything
from tether.utils.signals import GracefulStop


def train_ppo(config: PPOConfig, *, reward=None, callbacks: Sequence[Callback] = ()) -> Path:
    """Run the loop; returns the run directory (metrics, samples, checkpoints, final policy).
    A run stopped early (SIGINT/SIGTERM, stop_on_critical) checkpoints and raises RunStopped.
    ``reward``: reward sources from Python instead of the config's (callables, source strings,
    a list, or a dict name -> source); ``callbacks``: per-iteration hooks that may stop the run
    cleanly (tether.train.run_hooks; docs/python-api.md)."""
    hooks = RunHooks.create(config.reward_settings, config.sample_table_every, reward, callbacks)
    preflight(config)  # every check that needs no model: fail in a second, not after loading
    keep_freed_host_memory()  # no page faults on each step's large buffers (tether/utils/host_memory.py)
    dist, device_spec = init_distributed(config.strategy, config.device)
    try:
        check_world_size(config, dist.world_size)
        path = _train(config, dist, resolve_device(device_spec), hooks)
    except RunStopped:
        shutdown_distributed(dist)  # the ranks stopped together: they meet as after a finish
        raise
    except BaseException:
        shutdown_distributed(dist, clean=False)
        raise
    shutdown_distributed(dist)
    return path


@dataclass
class _Run:
    """A run set up: its directory, the iteration state, and what the loop adds around it."""

    run: RunDirectory
    state: IterationState
    prompts: PromptStream
    ckpt: RankZeroCheckpointer
    evaluator: object | None  # tether.train.evaluation.Evaluator, None without eval_prompts
    start: int  # iterations already done (resume)
    guard: dict  # consecutive_skips, total_skips


def _set_up(config: PPOConfig, dist: DistContext, device: torch.device, hooks: RunHooks) -> _Run:
    algorithm = algorithm_for(config)
    seed_everything(config.seed)  # the same on every rank: identical initial weights
    resume_from = resume_checkpoint(config)  # None: a fresh run
    if resume_from is not None:
        hooks.check_resumed_reward(run_path(config.run_settings))  # the sources it was trained with
    prompt_list, eval_list = training_and_eval_prompts(config)  # eval prompts never enter training
    run = RunDirectory.create(config, quiet=config.quiet, resume_history=resume_from and resume_from["history"],
                              write=dist.is_main)
    if dist.is_main and resume_from is None:
        hooks.record_python_reward(run.path)
    roles = build_roles(config.model_settings, config.reward_settings, device, algorithm.needs_critic, hooks.rewards)
    roles.actor = wrap_trained(roles.actor, dist, device)  # DDP / FSDP2 under torchrun, else as is
    if roles.critic_forward is not None:
        roles.critic_forward = wrap_trained(roles.critic_forward, dist, device)
    prompts = PromptStream(prompt_list, roles.tokenizer, config.chat_template, config.max_prompt_tokens, config.seed)
    sampling = config.sampling_settings
    optimizer, scheduler, kl_ctl = build_optimization(config, roles, algorithm, device)
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
    state = IterationState(config, algorithm, roles, engine, sampling, optimizer, scheduler, kl_ctl, shuffle_generator,
                           device, dist, iteration=start)
    return _Run(run, state, prompts, ckpt, evaluator, start, guard)


def _train(config: PPOConfig, dist: DistContext, device: torch.device, hooks: RunHooks) -> Path:
    r = _set_up(config, dist, device, hooks)
    run, state, guard = r.run, r.state, r.guard
    rank_rows = config.batch_size * config.samples_per_prompt // dist.world_size
    stopping = doctor_stop = False
    # (closing: vLLM runs an engine process and keeps temporary weight files until closed)
    with run.progress(config.total_iterations - r.start) as progress, GracefulStop() as stop, closing(state.engine):
        for iteration in range(r.start + 1, config.total_iterations + 1):
            batch_prompts, batch_ids = r.prompts.next_batch(config.batch_size, config.samples_per_prompt)
            result = iterate(state, dist.shard(batch_prompts, rank_rows), dist.shard(batch_ids, rank_rows))
            by_source = reward_components(state.roles.reward)  # reward/<name>, before evaluation scores again
            for why in result.skip_reasons:
                run.warn(f"iteration {iteration}: {why}; step skipped")
            _count_skips(result, guard, run, config)
            if result.skipped:
                run.log(iteration, {"guard/skipped_updates": guard["total_skips"]}, progress)
            else:
                metrics = _iteration_metrics(result, state.optimizer, config, guard["total_skips"])
                metrics = dist.mean_metrics({**metrics, **reward_metrics(by_source)})
                if r.evaluator is not None and r.evaluator.due(iteration):
                    metrics.update(r.evaluator.evaluate())  # held-out eval/* (its own RNG: training unchanged)
                run.log(iteration, metrics, progress)
                samples = with_reward_components(_samples(result.scored, result.kl, config.log_samples), by_source)
                run.log_samples(iteration, samples)
                hooks.show_samples(iteration, samples, progress, dist)
                doctor_stop = config.stop_on_critical and run.doctor_says_stop
            # checkpoint when due (every N iterations, the last one, or after SIGINT/SIGTERM)
            stopping = dist.any_true(bool(stop.requested) or doctor_stop)  # ranks stop together
            callback_stop = hooks.after_iteration(iteration, run.history[-1][1], dist)  # ranks agree
            if r.ckpt.end_of_iteration(iteration, guard, run.history, stopping) or callback_stop:
                break

    if stopping:
        why = stop.requested or ("a critical doctor finding" if doctor_stop else "a signal to another rank")
        run.stopped(why, r.ckpt.last_saved, resume_command(run.path, hooks.python_reward is not None))
    hooks.report_stop(config.total_iterations, dist)
    full_states = full_state_dicts(state.roles, dist)  # FSDP2: gathered on every rank; else None
    if dist.is_main:
        run.save_final(state.roles, config.save_critic, full_states)
    dist.barrier()
    run.close()
    return run.path


def _count_skips(result: IterationResult, guard: dict, run: RunDirectory, config: PPOConfig) -> None:
    """The guard's counters: an iteration of non-finite scores, or with no optimizer step
    taken, adds to the consecutive skips; max_consecutive_skips of them stop the run."""
    if result.skipped:
        guard["consecutive_skips"] += 1
        guard["total_skips"] += 1
        run.warn(f"iteration {result.iteration}: {describe_nonfinite(result.scored.scores)}; update skipped")
    else:
        guard["total_skips"] += result.updates.skipped
        guard["consecutive_skips"] = guard["consecutive_skips"] + 1 if result.updates.steps == 0 else 0
    _check_skips(guard["consecutive_skips"], config)


def _check_skips(consecutive: int, config: PPOConfig) -> None:
    if consecutive >= config.max_consecutive_skips:
        raise TetherError(
            f"{consecutive} consecutive updates skipped for non-finite rewards, losses or gradients; "
            "check the reward function/model for NaN, lower learning_rate, or use precision=fp32"
        )


def _iteration_metrics(result: IterationResult, optimizer, config: PPOConfig, skipped: int) -> dict[str, float]:
    scored, kl, kl_coef, t = result.scored, result.kl, result.kl_coef, result.timings
    rollout = scored.rollout
    mask = rollout.response_mask
    # kl: (B, R) per-token KL of the configured estimator (shape_rewards); k1 and k3 are logged
    # whatever it is, so runs with different estimators compare on the same scales
    n_tokens = mask.sum().item()
    metrics = {
        "objective/score_mean": scored.scores.mean().item(),
        "objective/score_std": scored.scores.std().item() if len(rollout) > 1 else 0.0,
        "objective/kl_k1": sequence_kl(scored, "k1").mean().item(),
        "objective/kl_k3": sequence_kl(scored, "k3").mean().item(),
        "objective/kl_coef": kl_coef,
        # the objective the policy is trained on: score - β·KL with the KL the reward was shaped with
        "objective/rlhf_reward": (scored.scores - kl_coef * kl.sum(1)).mean().item(),
        "policy/entropy": masked_mean(scored.entropy, mask).item(),
        "rollout/response_length": rollout.response_lengths.float().mean().item(),
        "rollout/eos_fraction": rollout.ended_with_eos.float().mean().item(),
        "rollout/tokens_per_s": n_tokens / max(t.generate_s, 1e-9),
        "optim/lr": optimizer.param_groups[0]["lr"],
        "time/generate_s": t.generate_s,
        "time/score_s": t.score_s,
        "time/update_s": t.update_s,
        "time/iteration_s": t.iteration_s,
        "guard/skipped_updates": skipped,
    }
    if rollout.engine_logprobs is not None:
        metrics.update(_engine_mismatch_metrics(scored, result.tis_weights, config.tis_cap))
    if scored.old_values is not None and result.returns is not None:
        metrics["value/explained_variance"] = explained_variance(scored.old_values, result.returns, mask).item()
        metrics["value/mean"] = masked_mean(scored.old_values, mask).item()
    metrics.update(result.updates.means())
    if t.weight_sync_s is not None:
        metrics["time/weight_sync_s"] = t.weight_sync_s
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
