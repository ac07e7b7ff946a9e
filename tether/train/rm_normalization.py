"""A reward model's score normalisation: gain and bias that map the raw scores of a reference set
(the data's chosen responses, every labeled response, or fresh samples of a policy) to mean 0
and std 1, so that PPO's reward has a known scale."""

from __future__ import annotations

import random
from typing import Sequence

import torch

from tether.data.batching import PromptEncoder, PromptResponseBatch, truncate
from tether.data.preferences import PreferenceData, prompt_key
from tether.data.templates import ChatTemplateMode, Prompt, encode_response
from tether.errors import TetherError
from tether.models.loading import load_tokenizer
from tether.models.scalar_head import ScalarHeadModel

__all__ = ["fit_normalization", "raw_scores", "reference_set", "sample_policy_responses"]

@torch.no_grad()
def fit_normalization(model: ScalarHeadModel, tokenizer, prompts: Sequence[Prompt], responses: Sequence[str],
                      batch_size: int = 16, chat_template: ChatTemplateMode = "auto",
                      max_length: int = 1024, truncated: Sequence[bool] | None = None) -> tuple[float, float]:
    """Gain and bias that map the raw scores of these (prompt, response) pairs to mean 0 and
    std 1: normalised = raw · gain + bias, gain = 1/std, bias = -mean/std. The model itself is
    not changed; apply the result with ``model.set_normalization(gain, bias)``."""
    raw = raw_scores(model, tokenizer, prompts, responses, batch_size, chat_template, max_length, truncated)
    if raw.numel() < 2:
        raise TetherError(f"normalisation needs at least 2 reference responses, got {raw.numel()}")
    mean, std = raw.mean().item(), raw.std().item()
    if not std > 1e-6:
        raise TetherError(f"reference responses all score {mean:.4g}: the reward model cannot tell them apart, "
                          "so its scale cannot be normalised (train longer, or use normalize=none)")
    return 1.0 / std, -mean / std


@torch.no_grad()
def raw_scores(model: ScalarHeadModel, tokenizer, prompts: Sequence[Prompt], responses: Sequence[str],
               batch_size: int = 16, chat_template: ChatTemplateMode = "auto", max_length: int = 1024,
               truncated: Sequence[bool] | None = None) -> torch.Tensor:
    """Un-normalised scores r_φ(x, y) (N,) of (prompt, response) texts, tokenised as in training
    (a response marked truncated, cut off at a length limit, without EOS)."""
    encode = PromptEncoder(tokenizer, chat_template)
    cut = [False] * len(responses) if truncated is None else list(truncated)
    fitted = [truncate(encode(p), encode_response(tokenizer, r, add_eos=not c), max_length, None)
              for p, r, c in zip(prompts, responses, cut)]
    fitted = [f for f in fitted if f is not None]
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    out = []
    for start in range(0, len(fitted), batch_size):
        chunk = fitted[start : start + batch_size]
        batch = PromptResponseBatch.collate([p for p, _ in chunk], [r for _, r in chunk], tokenizer.pad_token_id).to(device)
        inputs = batch.inputs()
        scores = model.sequence_scores(inputs, batch.last_index(inputs)).float().cpu()
        out.append((scores - model.bias) / model.gain)  # undo the current normalisation
    model.train(was_training)
    return torch.cat(out) if out else torch.zeros(0)


def reference_set(config, data: PreferenceData, tokenizer,
                  device) -> tuple[list, list[str], list[bool]]:
    """(prompts, responses, truncated) whose normalised scores should have mean 0 and std 1;
    ``config`` is the RewardModelConfig (its normalize* fields and model)."""
    rng = random.Random(config.seed)
    if config.normalize in ("chosen", "responses"):
        unique: dict[tuple, tuple] = {}
        for p in data.pairs:
            unique.setdefault((prompt_key(p.prompt), p.chosen), (p.prompt, p.chosen, p.chosen_truncated))
            if config.normalize == "responses":
                unique.setdefault((prompt_key(p.prompt), p.rejected), (p.prompt, p.rejected, p.rejected_truncated))
        picked = rng.sample(list(unique.values()), min(config.normalize_samples, len(unique)))
        return [p for p, _, _ in picked], [r for _, r, _ in picked], [c for _, _, c in picked]
    return sample_policy_responses(config, data, device, rng)


def sample_policy_responses(config, data: PreferenceData, device, rng: random.Random):
    """``normalize=policy``: responses sampled from the SFT policy (π_ref of the PPO run), the
    distribution the reward model will score at the start of RL (Huang et al. 2024)."""
    from tether.data.prompts import load_prompts
    from tether.data.templates import encode_prompt
    from tether.models.loading import freeze, load_causal_lm
    from tether.rollout.generation import SamplingSettings, generate_rollout

    policy_name = config.reference_policy or config.model
    policy_tokenizer = load_tokenizer(policy_name)
    policy = freeze(load_causal_lm(policy_name, device))
    if config.reference_prompts:
        pool = load_prompts(config.reference_prompts)
    else:
        pool = list({prompt_key(p.prompt): p.prompt for p in data.pairs}.values())
    prompts = [rng.choice(pool) for _ in range(config.normalize_samples)]
    settings = SamplingSettings(max_new_tokens=config.reference_max_new_tokens)
    responses: list[str] = []
    truncated: list[bool] = []
    for start in range(0, len(prompts), config.batch_size * 2):
        chunk = prompts[start : start + config.batch_size * 2]
        ids = [encode_prompt(policy_tokenizer, p, config.chat_template) for p in chunk]
        rollout = generate_rollout(policy, policy_tokenizer, chunk, ids, settings)
        responses.extend(rollout.responses)
        truncated.extend((~rollout.ended_with_eos).tolist())
    del policy
    return prompts, responses, truncated
