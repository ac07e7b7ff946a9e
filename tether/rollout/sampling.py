"""Sampling K responses per prompt from any policy checkpoint, for the labeling page
(`tether label make-tasks`) and evaluation. Same generation code as the PPO loop."""

from __future__ import annotations

import torch

from tether.models.loading import load_causal_lm, load_tokenizer, resolve_device
from tether.rollout.generation import SamplingSettings, generate_rollout
from tether.rollout.prompts import PromptStream
from tether.utils.precision import autocast


def sample_responses(
    model: str,
    prompts: list,
    k: int,
    max_new_tokens: int = 64,
    temperature: float = 1.0,
    seed: int = 0,
    batch_size: int = 64,
    device: str = "auto",
    use_chat_template="auto",
    top_p: float = 1.0,
    precision: str = "fp32",
    on_batch=None,
    return_truncated: bool = False,
):
    """``k`` sampled responses for each prompt (a list of k strings per prompt). The model is
    loaded once; ``on_batch(n_prompts)`` is called after each generate call (progress bars).
    ``batch_size``: rows per generate call (whole prompts of k rows, at least one prompt); a
    speed setting that leaves the distribution as it is, though the same seed then draws other
    samples. 64: a decoding step's small GEMMs are bound by reading the weights, so more rows
    per step cost little more (docs/performance.md, "Rollout speed").
    With ``return_truncated`` also which responses were cut off at ``max_new_tokens``
    (``(texts, truncated)``, both lists of k per prompt): labeling tasks record it so the reward
    model never learns on an EOS the policy did not generate."""
    dev = resolve_device(device)
    tokenizer = load_tokenizer(model)
    policy = load_causal_lm(model, dev).eval()
    stream = PromptStream(prompts, tokenizer, use_chat_template)
    settings = SamplingSettings(max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p)
    torch.manual_seed(seed)
    out: list[list[str]] = []
    cut: list[list[bool]] = []
    per_call = max(batch_size // k, 1)
    for start in range(0, len(prompts), per_call):
        rows = range(start, min(start + per_call, len(prompts)))
        batch_prompts = [prompts[i] for i in rows for _ in range(k)]
        batch_ids = [stream.token_ids[i] for i in rows for _ in range(k)]
        with autocast(dev, precision):
            rollout = generate_rollout(policy, tokenizer, batch_prompts, batch_ids, settings, group_size=k)
        out.extend(rollout.responses[j : j + k] for j in range(0, len(rollout.responses), k))
        ended = rollout.ended_with_eos.tolist()
        cut.extend([not e for e in ended[j : j + k]] for j in range(0, len(ended), k))
        if on_batch is not None:
            on_batch(len(rows))
    return (out, cut) if return_truncated else out
