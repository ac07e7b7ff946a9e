"""Batched sampling from the policy with Hugging Face ``generate``.

Implementation details from Huang et al. 2024 ("The N+ Implementation Details of RLHF with
PPO"): prompts are left-padded with an attention mask (generate derives position ids from it);
sampling uses the full distribution unless top-k/top-p are asked for (HF's default top_k=50
would make the sampling distribution differ from the one log-probs are computed under);
each response is truncated after its first EOS and everything after it is padding.

The token of each step is drawn by tether's own last logits processor (``DrawToken``, inverse
CDF) under ``generate(do_sample=False)``, because torch.multinomial is slow on CPU for a 49k
vocabulary; temperature, top-k and top-p are transformers' own warpers, applied before it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from tether.data.sequences import left_pad, right_pad  # noqa: F401 (right_pad: the other half of a rollout's padding)
from tether.data.sequences import prompt_groups
from tether.models.forward import prefilled_prompts
from tether.ops.masking import mask_after_first_eos, real_width
from tether.ops.sampling import inverse_cdf_sample
from tether.types import Rollout


@dataclass(frozen=True)
class SamplingSettings:
    max_new_tokens: int = 48
    temperature: float = 1.0
    top_k: int = 0  # 0 = off
    top_p: float = 1.0  # 1.0 = off
    min_new_tokens: int = 0


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
    share_prompts: bool = True,
) -> Rollout:
    """Sample one response per row. ``prompts``/``prompt_token_ids`` hold B rows (a prompt
    repeated ``group_size`` times in consecutive rows when several samples per prompt). With
    ``share_prompts``, rows repeating a prompt prefill it once (``prefilled_prompts``): the same
    samples up to float rounding, the same random draws."""
    from transformers import GenerationConfig

    device = next(model.parameters()).device
    pad_id = tokenizer.pad_token_id
    eos_ids = eos_token_ids(model, tokenizer)
    prompt_ids, prompt_mask = left_pad(prompt_token_ids, pad_id, device)
    # Sampling happens in the processor chain (sampling_processors): generate's own step is
    # then the argmax over a one-hot, so do_sample=False. The neutral values below are explicit
    # because transformers fills every field left unset from the model's generation_config.json:
    # an instruct model's shipped repetition penalty would otherwise reshape the distribution
    # the tokens are drawn from (off-policy), and its sampling flags would draw a warning
    # (temperature 1, top-k 50, top-p 1 are transformers' defaults: ignored without sampling).
    generation_config = GenerationConfig(
        do_sample=False,
        temperature=1.0,
        top_k=50,
        top_p=1.0,
        repetition_penalty=1.0,
        no_repeat_ngram_size=0,
        max_new_tokens=settings.max_new_tokens,
        eos_token_id=eos_ids,
        pad_token_id=pad_id,
    )
    was_training = model.training
    model.eval()
    try:
        groups = prompt_groups(prompt_ids, prompt_mask) if share_prompts else None
        prefilled = prefilled_prompts(model, prompt_ids, prompt_mask, groups) if groups is not None else {}
        output = model.generate(
            input_ids=prompt_ids, attention_mask=prompt_mask.long(), generation_config=generation_config,
            logits_processor=sampling_processors(settings, prompt_ids.shape[1], eos_ids), **prefilled,
        )
    finally:
        model.train(was_training)
    response_ids = output[:, prompt_ids.shape[1] :]
    if response_ids.shape[1] == 0:
        response_ids = torch.full((len(prompts), 1), eos_ids[0], dtype=torch.long, device=device)
    return build_rollout(tokenizer, prompts, prompt_ids, prompt_mask, response_ids, eos_ids, group_size)


def sampling_processors(settings: SamplingSettings, prompt_width: int, eos_ids: list[int]):
    """The logits-processor chain that turns a decoding step's logits into the sampled token,
    for ``generate(do_sample=False)``: EOS suppression (min_new_tokens), then transformers' own
    temperature, top-k and top-p warpers in the order its sampling mode applies them, then
    ``DrawToken``. Each stage is present only when it changes something; with top_k = 0 and
    top_p = 1 the draw is from the full distribution, the one log-probs are computed under."""
    from transformers import LogitsProcessorList, TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

    chain = LogitsProcessorList()
    if settings.min_new_tokens:
        chain.append(SuppressStopTokens(prompt_width, settings.min_new_tokens, tuple(eos_ids)))
    if settings.temperature != 1.0:
        chain.append(TemperatureLogitsWarper(settings.temperature))
    if settings.top_k:
        chain.append(TopKLogitsWarper(settings.top_k))
    if settings.top_p < 1.0:
        chain.append(TopPLogitsWarper(settings.top_p))
    chain.append(DrawToken())
    return chain


@dataclass(frozen=True)
class SuppressStopTokens:
    """A logits processor for ``generate``: every EOS id stays at -inf until ``min_new_tokens``
    tokens follow the (B, prompt_width) prompt. It writes those few entries in place, where
    transformers' own ``min_new_tokens`` (its MinLength and MinNewTokensLength processors)
    rebuilds the whole (B, vocab) score matrix with ``torch.where`` twice a step (SmolLM2,
    batch 8, bf16 on CPU: 1.9 ms of a 45 ms decode step; benchmarks/NOTES.md). In
    place is safe: ``generate`` hands the processors its own float32 copy of the logits."""

    prompt_width: int
    min_new_tokens: int
    eos_ids: tuple[int, ...]

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        if input_ids.shape[1] - self.prompt_width < self.min_new_tokens:
            scores[:, list(self.eos_ids)] = -float("inf")
        return scores


class DrawToken:
    """The last logits processor: draws each row's next token from softmax(scores) by
    inverse CDF (one uniform number per row from the global generator; tether.ops.sampling)
    and returns scores that are 0 at the drawn token and -inf elsewhere, so that generate's
    greedy step (argmax) emits it. transformers' sampling mode would call torch.multinomial,
    which draws an exponential variate per vocabulary entry: 6.5 ms of each decoding step for
    8 rows of a 49k vocabulary on CPU, against 0.2 ms here. The distribution is the same."""

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        probs = torch.softmax(scores.float(), dim=-1)
        uniform = torch.rand(scores.shape[0], dtype=torch.float64, device=scores.device)
        drawn = inverse_cdf_sample(probs, uniform)
        one_hot = torch.full_like(scores, -float("inf"))
        return one_hot.scatter_(1, drawn[:, None], 0.0)


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
    width = real_width(response_mask)
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
