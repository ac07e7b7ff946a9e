"""Typed data at the boundaries between rollout, scoring and optimisation.

Shapes: B responses in the batch, P prompt width (left-padded), R response width
(right-padded, truncated after the first EOS). ``response_mask`` is True on real response
tokens, the EOS included.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

import torch

from tether.ops.masking import real_width


@dataclass
class Rollout:
    """Responses sampled from the policy for a batch of prompts."""

    prompt_ids: torch.Tensor  # (B, P) long, left-padded prompt tokens
    prompt_mask: torch.Tensor  # (B, P) bool, True on real prompt tokens
    response_ids: torch.Tensor  # (B, R) long, right-padded; pad after the first EOS
    response_mask: torch.Tensor  # (B, R) bool, True on real response tokens (EOS included)
    ended_with_eos: torch.Tensor  # (B,) bool, False when generation hit max_new_tokens
    prompts: list  # B prompts as given (str or chat messages)
    responses: list[str]  # B decoded responses, special tokens removed
    group_size: int = 1  # consecutive rows sampled from the same prompt (GRPO, RLOO)
    # (B, R) float, log π_engine(y_t|s_t) as reported by a separate inference engine (vLLM) that
    # sampled the tokens, 0 on padding; None when the trained policy sampled them itself (HF)
    engine_logprobs: torch.Tensor | None = None

    @property
    def response_lengths(self) -> torch.Tensor:  # (B,) long
        return self.response_mask.sum(1)

    def __len__(self) -> int:
        return self.response_ids.shape[0]


@dataclass
class ScoredRollout:
    """A rollout after one scoring pass of all four roles. No tensor here carries grad."""

    rollout: Rollout
    old_logprobs: torch.Tensor  # (B, R) log π_old(y_t|s_t), recomputed by a forward pass
    ref_logprobs: torch.Tensor  # (B, R) log π_ref(y_t|s_t)
    old_values: torch.Tensor | None  # (B, R) V_old(s_t); None for critic-free algorithms
    entropy: torch.Tensor  # (B, R) entropy of π_old(.|s_t), for monitoring
    scores: torch.Tensor  # (B,) reward r_φ(x, y) per response (after missing-EOS penalty)


@dataclass
class TrainBatch:
    """Everything one optimisation phase needs, per response token. Select rows with ``select``."""

    prompt_ids: torch.Tensor  # (B, P)
    prompt_mask: torch.Tensor  # (B, P)
    response_ids: torch.Tensor  # (B, R)
    response_mask: torch.Tensor  # (B, R)
    old_logprobs: torch.Tensor  # (B, R)
    ref_logprobs: torch.Tensor  # (B, R)
    advantages: torch.Tensor  # (B, R), whitened when the algorithm asks for it
    returns: torch.Tensor | None  # (B, R) value targets; None without a critic
    old_values: torch.Tensor | None  # (B, R)

    def __len__(self) -> int:
        return self.response_ids.shape[0]

    def select(self, index: torch.Tensor) -> "TrainBatch":
        """Rows ``index``, with response columns that are padding in every selected row cut
        off (padding trimmed per minibatch: long responses elsewhere cost nothing here)."""
        width = real_width(self.response_mask[index])
        out = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if value is None:
                out[f.name] = None
                continue
            value = value[index]
            if f.name not in ("prompt_ids", "prompt_mask"):
                value = value[:, :width]
            out[f.name] = value
        return replace(self, **out)
