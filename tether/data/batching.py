"""Tokenised (prompt, response) batches for SFT, reward-model training and DPO.

Layout, the same as rollouts (``tether.types.Rollout``): prompts left-padded to width P,
responses right-padded to width R, masks built from token counts, never from
``ids != pad_id`` (pad == EOS for SmolLM2 and tiny-llama, and every response ends in EOS).

Truncation keeps the end of the prompt (the question and the generation prompt sit there)
and the start of the response; a row whose response would be cut to nothing is dropped and
counted instead, and so is a pair whose two responses become identical once truncated.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Callable, Iterator, Sequence, TypeVar

import torch

from tether.data.preferences import PreferencePair, prompt_key
from tether.data.sequences import SequenceInputs, build_inputs, left_pad, right_pad
from tether.data.sft import Demonstration
from tether.data.templates import ChatTemplateMode, Prompt, encode_prompt, encode_response
from tether.errors import DataError
from tether.ops.masking import real_width

T = TypeVar("T")


@dataclass
class PromptResponseBatch:
    """B (prompt, response) rows."""

    prompt_ids: torch.Tensor  # (B, P) long, left-padded prompt tokens
    prompt_mask: torch.Tensor  # (B, P) bool, True on real prompt tokens
    response_ids: torch.Tensor  # (B, R) long, right-padded response tokens (EOS last unless truncated)
    response_mask: torch.Tensor  # (B, R) bool, True on real response tokens

    @classmethod
    def collate(cls, prompts: Sequence[list[int]], responses: Sequence[list[int]], pad_id: int) -> "PromptResponseBatch":
        return cls(*left_pad(list(prompts), pad_id, "cpu"), *right_pad(list(responses), pad_id, "cpu"))

    def __len__(self) -> int:
        return self.response_ids.shape[0]

    def to(self, device: torch.device | str) -> "PromptResponseBatch":
        return PromptResponseBatch(*(t.to(device) for t in self.tensors()))

    def tensors(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.prompt_ids, self.prompt_mask, self.response_ids, self.response_mask

    def inputs(self) -> SequenceInputs:
        return build_inputs(*self.tensors())

    def last_index(self, inputs: SequenceInputs) -> torch.Tensor:
        """(B,) column of each row's last real response token in ``inputs``: where the
        reward model reads its score (the EOS when the response was not truncated)."""
        return inputs.prompt_width + self.response_mask.sum(1) - 1


@dataclass
class PreferenceBatch:
    """N preference pairs, chosen and rejected sharing their prompts row for row."""

    chosen: PromptResponseBatch  # N rows: (prompt x, preferred response y_w)
    rejected: PromptResponseBatch  # N rows: (prompt x, other response y_l)
    margin: torch.Tensor  # (N,) float, required score gap m in -log σ(r_w - r_l - m); 0 when not given
    weight: torch.Tensor  # (N,) float, 1 per pair, or 1/C(K,2) for pairs from a K-wise ranking
    tie: torch.Tensor  # (N,) bool: the labeler saw no difference (chosen/rejected are just the two)

    def __len__(self) -> int:
        return self.margin.shape[0]

    def to(self, device: torch.device | str) -> "PreferenceBatch":
        return PreferenceBatch(self.chosen.to(device), self.rejected.to(device),
                               self.margin.to(device), self.weight.to(device), self.tie.to(device))

    def joint(self) -> PromptResponseBatch:
        """2N rows, chosen first then rejected, so one forward pass scores both."""
        width = max(self.chosen.response_ids.shape[1], self.rejected.response_ids.shape[1])

        def widen(t: torch.Tensor, value) -> torch.Tensor:  # padding value is irrelevant: masked
            return torch.nn.functional.pad(t, (0, width - t.shape[1]), value=value)

        return PromptResponseBatch(
            torch.cat([self.chosen.prompt_ids, self.rejected.prompt_ids]),
            torch.cat([self.chosen.prompt_mask, self.rejected.prompt_mask]),
            torch.cat([widen(self.chosen.response_ids, 0), widen(self.rejected.response_ids, 0)]),
            torch.cat([widen(self.chosen.response_mask, False), widen(self.rejected.response_mask, False)]),
        )

    def unique_joint(self) -> tuple[PromptResponseBatch, torch.Tensor, torch.Tensor]:
        """The distinct (prompt, response) rows of ``joint()``, and for each pair the row of
        its chosen (N,) and of its rejected (N,) response. The C(K,2) pairs of K responses to
        one prompt hold only K distinct rows: a forward pass over these scores each once."""
        joint = self.joint()
        n = len(self)
        keys: dict[tuple, int] = {}
        index = []
        for row in range(2 * n):
            prompt = joint.prompt_ids[row][joint.prompt_mask[row]].tolist()
            response = joint.response_ids[row][joint.response_mask[row]].tolist()
            index.append(keys.setdefault((tuple(prompt), tuple(response)), len(keys)))
        if len(keys) == 2 * n:
            rows = torch.arange(2 * n)
            return joint, rows[:n], rows[n:]
        first = {}
        for row, k in enumerate(index):
            first.setdefault(k, row)
        keep = torch.tensor([first[k] for k in range(len(keys))])
        unique = PromptResponseBatch(*(t[keep] for t in joint.tensors()))
        # trim columns that are padding in every kept row (prompts stay left-padded to one width)
        width = real_width(unique.response_mask)
        start = int((~unique.prompt_mask).all(0).sum())
        unique = PromptResponseBatch(unique.prompt_ids[:, start:], unique.prompt_mask[:, start:],
                                     unique.response_ids[:, :width], unique.response_mask[:, :width])
        rows = torch.tensor(index)
        return unique, rows[:n], rows[n:]


@dataclass(frozen=True)
class TokenizedPair:
    prompt: list[int]
    chosen: list[int]
    rejected: list[int]
    margin: float  # 0.0 when not given
    weight: float
    group: int = 0  # the prompt's index: pairs of one prompt share it (batched together by train-rm)
    tie: bool = False  # no preference between chosen and rejected


@dataclass(frozen=True)
class TokenizedExample:
    prompt: list[int]
    response: list[int]


def truncate(
    prompt: list[int], response: list[int], max_length: int, max_prompt_length: int | None
) -> tuple[list[int], list[int]] | None:
    """Fit prompt + response into ``max_length`` tokens, or None when the response would be
    left with no token at all."""
    if max_prompt_length is not None:
        prompt = prompt[-max_prompt_length:]
    room = max_length - len(prompt)
    if room < 1:
        return None
    return prompt, response[:room]


class PromptEncoder:
    """``encode_prompt`` with a cache (the pairs of a ranking share their prompt) and a clear
    error when a conversational prompt meets a tokenizer without a chat template."""

    def __init__(self, tokenizer, use_chat_template: ChatTemplateMode = "auto"):
        self.tokenizer, self.use_chat_template, self.cache = tokenizer, use_chat_template, {}

    def __call__(self, prompt: Prompt) -> list[int]:
        key = prompt_key(prompt)
        if key not in self.cache:
            try:
                self.cache[key] = encode_prompt(self.tokenizer, prompt, self.use_chat_template)
            except ValueError as exc:
                name = getattr(self.tokenizer, "name_or_path", "the tokenizer")
                raise DataError(f"{exc} ({name} has none, or use_chat_template is false)") from None
        return self.cache[key]


def tokenize_pairs(
    pairs: Sequence[PreferencePair],
    tokenizer,
    max_length: int,
    max_prompt_length: int | None = None,
    use_chat_template: ChatTemplateMode = "auto",
) -> tuple[list[TokenizedPair], int]:
    """Tokenise pairs the way every stage does; returns (pairs kept, pairs dropped by truncation)."""
    encode = PromptEncoder(tokenizer, use_chat_template)
    kept, dropped = [], 0
    for pair in pairs:
        prompt = encode(pair.prompt)
        # a response cut off at the sampler's length limit gets no EOS: the reward model must
        # score it as the policy's cut-off answers are scored during RL (at the last text token)
        chosen_ids = encode_response(tokenizer, pair.chosen, add_eos=not pair.chosen_truncated)
        rejected_ids = encode_response(tokenizer, pair.rejected, add_eos=not pair.rejected_truncated)
        chosen = truncate(prompt, chosen_ids, max_length, max_prompt_length)
        rejected = truncate(prompt, rejected_ids, max_length, max_prompt_length)
        if chosen is None or rejected is None or chosen[1] == rejected[1]:
            dropped += 1
            continue
        kept.append(TokenizedPair(chosen[0], chosen[1], rejected[1], pair.margin or 0.0, pair.weight, pair.group,
                                  pair.tie))
    return kept, dropped


def tokenize_demonstrations(
    examples: Sequence[Demonstration],
    tokenizer,
    max_length: int,
    max_prompt_length: int | None = None,
    use_chat_template: ChatTemplateMode = "auto",
) -> tuple[list[TokenizedExample], int]:
    """Returns (examples kept, examples dropped because the completion would be truncated away)."""
    encode = PromptEncoder(tokenizer, use_chat_template)
    kept, dropped = [], 0
    for example in examples:
        completion = encode_response(tokenizer, example.completion)
        fitted = truncate(encode(example.prompt), completion, max_length, max_prompt_length)
        if fitted is None:
            dropped += 1
            continue
        kept.append(TokenizedExample(*fitted))
    return kept, dropped


def collate_pairs(items: Sequence[TokenizedPair], pad_id: int) -> PreferenceBatch:
    prompts = [it.prompt for it in items]
    return PreferenceBatch(
        chosen=PromptResponseBatch.collate(prompts, [it.chosen for it in items], pad_id),
        rejected=PromptResponseBatch.collate(prompts, [it.rejected for it in items], pad_id),
        margin=torch.tensor([it.margin for it in items], dtype=torch.float32),
        weight=torch.tensor([it.weight for it in items], dtype=torch.float32),
        tie=torch.tensor([it.tie for it in items], dtype=torch.bool),
    )


def collate_examples(items: Sequence[TokenizedExample], pad_id: int) -> PromptResponseBatch:
    return PromptResponseBatch.collate([it.prompt for it in items], [it.response for it in items], pad_id)


def iterate_batches(
    items: Sequence[T], batch_size: int, collate: Callable[[Sequence[T]], object], shuffle: bool = False, seed: int = 0
) -> Iterator:
    """Batches in order, or in a seeded shuffled order (``seed`` varies per epoch)."""
    order = list(range(len(items)))
    if shuffle:
        random.Random(seed).shuffle(order)
    for start in range(0, len(order), batch_size):
        yield collate([items[i] for i in order[start : start + batch_size]])
