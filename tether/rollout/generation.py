"""Batched sampling from the policy with Hugging Face ``generate``.

Implementation details from Huang et al. 2024 ("The N+ Implementation Details of RLHF with
PPO"): prompts are left-padded with an attention mask (generate derives position ids from it);
sampling uses the full distribution unless top-k/top-p are asked for (HF's default top_k=50
would make the sampling distribution differ from the one log-probs are computed under);
each response is truncated after its first EOS and everything after it is padding.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from tether.ops.masking import mask_after_first_eos
from tether.types import Rollout


@dataclass(frozen=True)
class SamplingSettings:
    max_new_tokens: int = 48
    temperature: float = 1.0
    top_k: int = 0  # 0 = off
    top_p: float = 1.0  # 1.0 = off
    min_new_tokens: int = 0


def left_pad(sequences: list[list[int]], pad_id: int, device: torch.device | str) -> tuple[torch.Tensor, torch.Tensor]:
    """Token lists -> (ids (B, P), mask (B, P) bool), padded on the left."""
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.bool)
    for row, seq in enumerate(sequences):
        if seq:
            ids[row, width - len(seq) :] = torch.tensor(seq, dtype=torch.long)
            mask[row, width - len(seq) :] = True
    return ids.to(device), mask.to(device)


def right_pad(sequences: list[list[int]], pad_id: int, device: torch.device | str) -> tuple[torch.Tensor, torch.Tensor]:
    """Token lists -> (ids (B, R), mask (B, R) bool), padded on the right."""
    width = max(max(len(s) for s in sequences), 1)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.bool)
    for row, seq in enumerate(sequences):
        ids[row, : len(seq)] = torch.tensor(seq, dtype=torch.long)
        mask[row, : len(seq)] = True
    return ids.to(device), mask.to(device)


def eos_token_ids(model, tokenizer) -> list[int]:
    """Every id that ends a response: the tokenizer's EOS and the generation config's."""
    ids = {tokenizer.eos_token_id}
    gen_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if isinstance(gen_eos, int):
        ids.add(gen_eos)
    elif gen_eos:
        ids.update(gen_eos)
    return sorted(i for i in ids if i is not None)


@torch.no_grad()
def generate_rollout(
    model,
    tokenizer,
    prompts: list,
    prompt_token_ids: list[list[int]],
    settings: SamplingSettings,
    group_size: int = 1,
) -> Rollout:
    """Sample one response per row. ``prompts``/``prompt_token_ids`` hold B rows (a prompt
    repeated ``group_size`` times in consecutive rows when several samples per prompt)."""
    from transformers import GenerationConfig

    device = next(model.parameters()).device
    pad_id = tokenizer.pad_token_id
    eos_ids = eos_token_ids(model, tokenizer)
    prompt_ids, prompt_mask = left_pad(prompt_token_ids, pad_id, device)
    generation_config = GenerationConfig(
        do_sample=True,
        temperature=settings.temperature,
        # 0 and 1.0 say "off" explicitly: transformers 5 fills an unset (None) top_k with its
        # default of 50 (tests/test_ppo_rollout_engine.py samples a flat distribution to check)
        top_k=settings.top_k,
        top_p=settings.top_p,
        max_new_tokens=settings.max_new_tokens,
        min_new_tokens=settings.min_new_tokens or None,
        eos_token_id=eos_ids,
        pad_token_id=pad_id,
    )
    was_training = model.training
    model.eval()
    try:
        output = model.generate(
            input_ids=prompt_ids, attention_mask=prompt_mask.long(), generation_config=generation_config
        )
    finally:
        model.train(was_training)
    response_ids = output[:, prompt_ids.shape[1] :]
    if response_ids.shape[1] == 0:
        response_ids = torch.full((len(prompts), 1), eos_ids[0], dtype=torch.long, device=device)
    return build_rollout(tokenizer, prompts, prompt_ids, prompt_mask, response_ids, eos_ids, group_size)


def build_rollout(
    tokenizer,
    prompts: list,
    prompt_ids: torch.Tensor,
    prompt_mask: torch.Tensor,
    response_ids: torch.Tensor,
    eos_ids: list[int],
    group_size: int = 1,
    generated_mask: torch.Tensor | None = None,
    token_logprobs: torch.Tensor | None = None,
) -> Rollout:
    """Sampled tokens -> Rollout, the same for every rollout engine: truncate each response
    after its first EOS (masks from that, never from ``ids != pad``: the pad may be the EOS),
    pad what follows, trim columns that are padding in every row, decode.

    response_ids: (B, T) as sampled; generated_mask: (B, T) True where the engine produced a
    token (None: every column, as HF generate pads finished rows after their EOS);
    token_logprobs: (B, T) the engine's log-prob of each sampled token, kept as
    ``Rollout.engine_logprobs`` (0 on padding)."""
    pad_id = tokenizer.pad_token_id
    response_mask = mask_after_first_eos(response_ids, eos_ids)
    if generated_mask is not None:
        response_mask &= generated_mask
    ended = (torch.isin(response_ids, torch.tensor(eos_ids, device=response_ids.device)) & response_mask).any(1)
    response_ids = response_ids.masked_fill(~response_mask, pad_id)
    # trim columns past the longest response (all padding)
    width = max(int(response_mask.sum(1).max().item()), 1)
    response_ids, response_mask = response_ids[:, :width], response_mask[:, :width]
    if token_logprobs is not None:
        token_logprobs = token_logprobs[:, :width].masked_fill(~response_mask, 0.0)
    texts = tokenizer.batch_decode(
        [ids[mask].tolist() for ids, mask in zip(response_ids, response_mask)], skip_special_tokens=True
    )
    return Rollout(
        prompt_ids=prompt_ids,
        prompt_mask=prompt_mask,
        response_ids=response_ids,
        response_mask=response_mask,
        ended_with_eos=ended,
        prompts=list(prompts),
        responses=texts,
        group_size=group_size,
        engine_logprobs=token_logprobs,
    )
