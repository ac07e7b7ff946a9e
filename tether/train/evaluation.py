"""Held-out evaluation inside an online run, and the per-response scoring ``tether demo`` shares.

With ``eval_prompts`` set, every ``eval_every`` iterations and after the last one the loop
samples one response per held-out prompt from the current policy and adds to that
iteration's row of metrics.jsonl:

    eval/score_mean            the reward model's (or reward function's) score, as it scores
                               (no missing-EOS penalty, no clip: those shape training only)
    eval/gold_score_mean       ``gold(prompt, response)``, when ``gold`` names a function
    eval/win_rate              share of prompts where the policy's answer outscores the reference
                               policy's under that same reward (a tie counts ½)
    eval/kl                    Σ_t log π(y_t|s_t) − log π_ref(y_t|s_t) over the response (k1,
                               nats per response, as objective/kl_k1)
    eval/response_length       tokens
    eval/eos_fraction          share of responses that ended with EOS
    eval/reference_score_mean, eval/reference_gold_score_mean
                               the reference policy's answers: the KL = 0 point of the curve

The reference's answers are sampled once, at the start (π_ref never changes). A gold score
that falls while the training score rises is over-optimisation (Gao et al. 2022): the doctor's
``reward_hacking`` rule reads ``eval/gold_score_mean``, else ``eval/score_mean``.

Evaluation samples under a forked RNG with a seed of its own, so the training stream is the
same with or without it (a run trains bit-identically either way), and every evaluation draws
the same random numbers: what changes between two points of the curve is the policy, not the
sampler's luck (common random numbers). Under torchrun each rank evaluates every
world_size-th prompt (all ranks as many rows, padded with rows of weight 0); weighted sums and
counts are averaged over ranks, which gives the global means.
"""

from __future__ import annotations

import json
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable

import torch

from tether.data.templates import encode_prompt, prompt_text
from tether.errors import TetherError
from tether.models.forward import build_inputs, policy_forward
from tether.models.lora import adapters_disabled, is_lora
from tether.rollout.generation import SamplingSettings, generate_rollout
from tether.rollout.prompts import resolve_prompts
from tether.types import Rollout
from tether.utils.distributed import full_weights, is_rank_zero, rank_seed
from tether.utils.precision import autocast

EVAL_SEED_OFFSET = 7919  # the evaluation's sampling seed is the run's seed + this: a stream apart


# ----------------------------------------------------------------------------------------------
# per response: shared with tether.demo.evaluate


@dataclass
class ResponseScores:
    """One response per row, sampled and scored every way; each tensor (B,) on the CPU."""

    rollout: Rollout
    score: torch.Tensor  # reward model or reward function
    gold: torch.Tensor | None  # gold(prompt, response); None without a gold function
    kl: torch.Tensor  # nats per response to the reference (0 for the reference itself)

    @property
    def length(self) -> torch.Tensor:
        return self.rollout.response_lengths.float().cpu()

    @property
    def ended_with_eos(self) -> torch.Tensor:
        return self.rollout.ended_with_eos.cpu()


def response_kl(policy, reference, rollout: Rollout, temperature: float) -> torch.Tensor:
    """(B,) Σ_t [log π(y_t|s_t) − log π_ref(y_t|s_t)] over each response's real tokens. A LoRA
    policy may be its own reference: π_ref is then the same model with its adapters off."""
    inputs = build_inputs(rollout.prompt_ids, rollout.prompt_mask, rollout.response_ids, rollout.response_mask)
    logp = policy_forward(policy, inputs, rollout.response_ids, temperature).logprobs
    if policy is reference and not is_lora(reference):
        ref = logp
    else:
        with adapters_disabled(reference):
            ref = policy_forward(reference, inputs, rollout.response_ids, temperature).logprobs
    return ((logp - ref) * rollout.response_mask).sum(1).float()


def gold_scores(gold: Callable[[str, str], float], rollout: Rollout, name: str = "gold") -> torch.Tensor:
    """(B,) ``gold(prompt text, response)`` per row; the user's errors on one line."""
    values = []
    for prompt, response in zip(rollout.prompts, rollout.responses):
        try:
            values.append(float(gold(prompt_text(prompt), response)))
        except Exception as exc:  # the user's code: one line, not a traceback
            raise TetherError(f"{name} function raised {type(exc).__name__}: {exc}") from None
    return torch.tensor(values, dtype=torch.float64)  # as the function gave them


@torch.no_grad()
def sample_and_score(policy, reference, tokenizer, prompts: list, prompt_ids: list[list[int]], reward,
                     gold: Callable[[str, str], float] | None, settings: SamplingSettings, *,
                     precision: str = "fp32", score_precision: str = "fp32") -> ResponseScores:
    """One response per row from ``policy`` (under ``precision``), then its reward, gold score
    and KL to ``reference`` (under ``score_precision``). ``reference=None``: ``policy`` is the
    reference itself, KL 0 without a forward."""
    device = next(policy.parameters()).device
    with autocast(device, precision):
        rollout = generate_rollout(policy, tokenizer, prompts, prompt_ids, settings)
    with autocast(device, score_precision):
        kl = (torch.zeros(len(rollout)) if reference is None
              else response_kl(policy, reference, rollout, settings.temperature).cpu())
        scores = reward(rollout).float().cpu()
    return ResponseScores(rollout, scores, gold_scores(gold, rollout) if gold is not None else None, kl)


def concat(parts: list[ResponseScores]) -> dict[str, torch.Tensor]:
    """The chunks' per-response values joined: score, gold (when scored), kl, length, eos."""
    out = {"score": torch.cat([p.score for p in parts]), "kl": torch.cat([p.kl for p in parts]),
           "length": torch.cat([p.length for p in parts]), "eos": torch.cat([p.ended_with_eos for p in parts]).float()}
    if parts[0].gold is not None:
        out["gold"] = torch.cat([p.gold for p in parts])
    return out


# ----------------------------------------------------------------------------------------------
# the online run's evaluation


def win_rates(scores: torch.Tensor, reference_scores: torch.Tensor) -> torch.Tensor:
    """(B,) 1 where the policy's answer scores above the reference's, 0 below, ½ on a tie."""
    return (scores > reference_scores).float() + 0.5 * (scores == reference_scores).float()


def eval_sums(policy: dict[str, torch.Tensor], reference: dict[str, torch.Tensor],
              weights: torch.Tensor | None = None) -> dict[str, float]:
    """Weighted sums over this rank's prompts, with their count ``n`` (the weights' sum; a
    weight 0 marks a padding row): averaged over ranks and divided by the averaged count, each
    gives the global mean (``eval_means``)."""
    w = torch.ones(len(policy["score"]), dtype=torch.float64) if weights is None else weights.double()

    def total(x: torch.Tensor) -> float:
        return float((w * x.double()).sum())

    sums = {"score_mean": total(policy["score"]), "win_rate": total(win_rates(policy["score"], reference["score"])),
            "kl": total(policy["kl"]), "response_length": total(policy["length"]), "eos_fraction": total(policy["eos"]),
            "reference_score_mean": total(reference["score"])}
    if "gold" in policy:
        sums["gold_score_mean"] = total(policy["gold"])
        sums["reference_gold_score_mean"] = total(reference["gold"])
    return {"n": float(w.sum()), **sums}


def eval_means(sums: dict[str, float]) -> dict[str, float]:
    """``eval/<name>`` = sum / n for every sum of ``eval_sums``."""
    n = max(sums["n"], 1e-12)
    return {f"eval/{k}": v / n for k, v in sums.items() if k != "n"}


def prompt_key(prompt) -> str:
    return prompt if isinstance(prompt, str) else json.dumps(prompt, sort_keys=True)


def training_and_eval_prompts(config) -> tuple[list, list]:
    """(training prompts, eval prompts). A training prompt that is also an eval prompt is left
    out of training, so that the evaluation stays held out."""
    train = resolve_prompts(config.prompts)
    if config.eval_prompts is None:
        return train, []
    held = resolve_prompts(config.eval_prompts)
    keys = {prompt_key(p) for p in held}
    kept = [p for p in train if prompt_key(p) not in keys]
    if not kept:
        raise TetherError(f"every training prompt ({config.prompts}) is also in eval_prompts ({config.eval_prompts}); "
                          "give eval_prompts a held-out set")
    if len(kept) < len(train) and is_rank_zero():
        print(f"warning: {len(train) - len(kept)} of {len(train)} training prompts are also in eval_prompts; "
              "they are left out of training", file=sys.stderr)
    return kept, held


@contextmanager
def isolated_rng(device: torch.device, seed: int):
    """The global RNG (CPU, and the device's) seeded with ``seed`` inside, and as it was after."""
    accelerated = device.type != "cpu"
    with torch.random.fork_rng(devices=[device] if accelerated else [], device_type=device.type if accelerated else None):
        torch.manual_seed(seed)
        yield


@dataclass
class Evaluator:
    """The held-out evaluation of one online run: this rank's share of the eval prompts, the
    reference's answers to them (sampled once), and when evaluation is due."""

    roles: object  # tether.train.roles.Roles
    dist: object  # tether.utils.distributed.DistContext
    device: torch.device
    prompts: list  # this rank's share
    prompt_ids: list[list[int]]
    weights: torch.Tensor  # (rows,) 1, or 0 on the padding that gives every rank as many rows
    settings: SamplingSettings
    gold: Callable[[str, str], float] | None
    every: int
    last: int  # the run's final iteration: always evaluated
    seed: int
    batch_rows: int  # responses per generate() call
    precision: str
    reference: dict[str, torch.Tensor] | None = None

    def due(self, iteration: int) -> bool:
        return iteration % self.every == 0 or iteration == self.last

    def _sample(self, policy, reference) -> dict[str, torch.Tensor]:
        roles = self.roles
        parts = []
        with isolated_rng(self.device, self.seed), full_weights(roles.actor), roles.frozen_on_device():
            for start in range(0, len(self.prompts), self.batch_rows):
                rows = slice(start, start + self.batch_rows)
                parts.append(sample_and_score(policy, reference, roles.tokenizer, self.prompts[rows],
                                              self.prompt_ids[rows], roles.reward, self.gold, self.settings,
                                              precision=self.precision, score_precision=self.precision))
        return concat(parts)

    def sample_reference(self) -> None:
        """The reference policy's answers (KL 0), scored once."""
        with adapters_disabled(self.roles.reference):
            self.reference = self._sample(self.roles.reference, None)

    def evaluate(self) -> dict[str, float]:
        """The ``eval/*`` metrics of the current policy, the same on every rank."""
        started = time.perf_counter()
        policy = self._sample(self.roles.policy, self.roles.reference)
        sums = eval_sums(policy, self.reference, self.weights)
        metrics = eval_means(self.dist.mean_metrics(sums))
        metrics["time/eval_s"] = time.perf_counter() - started
        return metrics


def build_evaluator(config, eval_prompts: list, roles, dist, device: torch.device) -> Evaluator | None:
    """The run's evaluator (None without eval prompts), with the reference's answers sampled."""
    if not eval_prompts:
        return None
    from tether.rollout.rewards import load_function

    # Every rank gets as many rows (padded with weight-0 copies of the first prompt): FSDP2's
    # forwards are collective, so the ranks must run the same number of generate/forward calls.
    share = eval_prompts[dist.rank :: dist.world_size]
    rows = -(-len(eval_prompts) // dist.world_size)
    weights = torch.tensor([1.0] * len(share) + [0.0] * (rows - len(share)))
    share = share + [eval_prompts[0]] * (rows - len(share))
    ids = [encode_prompt(roles.tokenizer, p, config.chat_template)[-config.max_prompt_tokens :] for p in share]
    evaluator = Evaluator(
        roles, dist, device, share, ids, weights,
        config.sampling_settings,
        load_function(config.gold, "gold function") if config.gold else None,
        config.eval_every, config.total_iterations, rank_seed(config.seed + EVAL_SEED_OFFSET, dist),
        max(config.batch_size * config.samples_per_prompt // dist.world_size, 1), config.precision)
    evaluator.sample_reference()
    return evaluator
