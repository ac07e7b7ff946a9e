"""Step 5 of the demo: the SFT policy against the PPO policy on held-out prompts.

For each policy, ``per_prompt`` sampled responses per held-out prompt (same seed, same sampling
settings as training), then per response: the gold score (the simulated human's taste), the reward
model's score, the KL to the reference (the SFT weights) as Σ_t log π(y_t|s_t) − log π_ref(y_t|s_t)
over the response (k1, nats per response; exactly 0 for the SFT policy itself), and the length
in tokens. Values are averaged per prompt first, and the 95% percentile-bootstrap intervals
(Efron & Tibshirani 1993) resample prompts: responses to one prompt are not independent, so
resampling them singly would give intervals that are too narrow. The win rate asks the
labeler to compare the two policies' j-th responses to each prompt (a tie counts ½).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from tether.data.templates import encode_prompt, prompt_text
from tether.labeling.judgement import judgement_from_output
from tether.models.loading import freeze, load_causal_lm, load_tokenizer
from tether.models.scalar_head import ScalarHeadModel
from tether.reporting.progress import phase_progress
from tether.rollout.generation import SamplingSettings
from tether.rollout.rewards import ModelReward
from tether.train.evaluation import sample_and_score as score_responses
from tether.utils.stats import bootstrap_ci

EVAL_BATCH = 16  # responses per generate() / forward call


@dataclass
class PolicySamples:
    """One policy's responses to the held-out prompts, with a value per response."""

    name: str
    prompts: list[str]
    responses: list[str]
    gold: list[float]
    rm: list[float]
    kl: list[float]  # nats per response, to the reference
    length: list[float]  # tokens
    ended_with_eos: list[bool]


@torch.no_grad()
def sample_and_score(name: str, policy, reference, tokenizer, prompts: list, reward: ModelReward,
                     gold: Callable[[str, str], float], settings: SamplingSettings, seed: int,
                     quiet: bool | None, precision: str = "fp32") -> PolicySamples:
    """Sample one response per prompt from ``policy`` and score it every way (the online run's
    evaluation does the same per response: tether.train.evaluation.sample_and_score)."""
    out = PolicySamples(name, [], [], [], [], [], [], [])
    torch.manual_seed(seed)  # both policies see the same random stream
    with phase_progress(f"eval {name}", total=len(prompts), quiet=quiet) as bar:
        for start in range(0, len(prompts), EVAL_BATCH):
            chunk = prompts[start : start + EVAL_BATCH]
            ids = [encode_prompt(tokenizer, p) for p in chunk]
            # sampling under ``precision``; scores and KL in fp32
            scored = score_responses(policy, None if policy is reference else reference, tokenizer, chunk, ids,
                                     reward, gold, settings, precision=precision)
            out.prompts.extend(prompt_text(p) for p in chunk)
            out.responses.extend(scored.rollout.responses)
            out.gold.extend(scored.gold.tolist())
            out.rm.extend(scored.score.tolist())
            out.kl.extend(scored.kl.tolist())
            out.length.extend(scored.length.tolist())
            out.ended_with_eos.extend(scored.ended_with_eos.tolist())
            bar.advance(len(chunk), gold=sum(out.gold) / len(out.gold), kl=sum(out.kl) / len(out.kl))
    return out


def per_prompt_means(values: Sequence[float], per_prompt: int) -> list[float]:
    """Mean of each consecutive group of ``per_prompt`` values (the responses to one prompt)."""
    return [sum(values[i : i + per_prompt]) / per_prompt for i in range(0, len(values), per_prompt)]


def win_rate(labeler: Callable, a: PolicySamples, b: PolicySamples) -> list[float]:
    """Per prompt: 1 when the labeler ranks a's response first, 0 when b's, ½ for a tie or skip.
    The pair is shown in both orders and the two verdicts averaged (judges favour position)."""
    wins = []
    for prompt, ra, rb in zip(a.prompts, a.responses, b.responses):
        first = judgement_from_output(labeler(prompt, [ra, rb]), 2)
        second = judgement_from_output(labeler(prompt, [rb, ra]), 2)
        w1 = 0.5 if first.ranking is None else float(first.ranking[0] == 0)
        w2 = 0.5 if second.ranking is None else float(second.ranking[0] == 1)
        wins.append((w1 + w2) / 2)
    return wins


def evaluate_policies(sft_name: str, ppo_dir: Path, rm_dir: Path, prompts: list, labeler: Callable,
                      gold: Callable[[str, str], float], settings: SamplingSettings, device, *, resamples: int,
                      seed: int, show: int, quiet: bool | None, precision: str = "fp32",
                      per_prompt: int = 1) -> dict[str, Any]:
    """The ``eval.json`` mapping: per-policy means with 95% intervals (over prompts), the win
    rate of PPO over SFT, and a few side-by-side samples."""
    tokenizer = load_tokenizer(sft_name)
    reference = freeze(load_causal_lm(sft_name, device))
    ppo = freeze(load_causal_lm(ppo_dir, device))
    rm = freeze(ScalarHeadModel.from_pretrained(rm_dir, device))
    reward = ModelReward(rm, load_tokenizer(rm_dir), tokenizer, EVAL_BATCH)
    rows = [p for p in prompts for _ in range(per_prompt)]  # each prompt's responses consecutive
    sft_s = sample_and_score("sft", reference, reference, tokenizer, rows, reward, gold, settings, seed, quiet, precision)
    ppo_s = sample_and_score("ppo", ppo, reference, tokenizer, rows, reward, gold, settings, seed, quiet, precision)
    by_prompt = lambda values: per_prompt_means(values, per_prompt)  # noqa: E731

    def summary(s: PolicySamples) -> dict[str, Any]:
        row = {}
        for key in ("gold", "rm", "kl", "length"):
            mean, lo, hi = bootstrap_ci(by_prompt(getattr(s, key)), resamples, seed)
            row[key] = {"mean": mean, "ci95": [lo, hi]}
        row["eos_fraction"] = sum(s.ended_with_eos) / max(len(s.ended_with_eos), 1)
        return row

    wins = by_prompt(win_rate(labeler, ppo_s, sft_s))
    mean, lo, hi = bootstrap_ci(wins, resamples, seed)
    gold_diff = by_prompt([p - q for p, q in zip(ppo_s.gold, sft_s.gold)])
    d_mean, d_lo, d_hi = bootstrap_ci(gold_diff, resamples, seed)
    policies = {"sft": summary(sft_s), "ppo": summary(ppo_s)}
    return {
        "prompts": len(prompts),
        "responses_per_prompt": per_prompt,
        "policies": policies,
        "win_rate_ppo_over_sft": {"mean": mean, "ci95": [lo, hi]},
        "gold_gain": {"mean": d_mean, "ci95": [d_lo, d_hi]},  # paired: same prompts, PPO − SFT
        "gold_intervals_separate": policies["ppo"]["gold"]["ci95"][0] > policies["sft"]["gold"]["ci95"][1],
        "samples": [
            {"prompt": sft_s.prompts[i], "sft": sft_s.responses[i], "ppo": ppo_s.responses[i],
             "sft_gold": sft_s.gold[i], "ppo_gold": ppo_s.gold[i], "ppo_kl": ppo_s.kl[i]}
            for i in range(0, min(show, len(prompts)) * per_prompt, per_prompt)
        ],
    }
