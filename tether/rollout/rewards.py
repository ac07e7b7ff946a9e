"""Where sequence scores come from: a trained reward model, or a Python function.

Both turn a ``Rollout`` into scores (B,). A function is named ``module:function`` and called
as ``fn(prompts: list[str], responses: list[str]) -> list[float]`` (rule-based rewards,
simulated humans, unit tests). Prompts are passed as text (the last user message for chats).
"""

from __future__ import annotations

from typing import Callable, Protocol

import torch

from tether.data.templates import prompt_text
from tether.errors import TetherError
from tether.models.forward import build_inputs
from tether.types import Rollout
from tether.utils.imports import load_function as load_user_function


class RewardSource(Protocol):
    def __call__(self, rollout: Rollout) -> torch.Tensor:  # (B,) float32
        ...


def load_function(spec: str, what: str = "reward function") -> Callable:
    """Import ``module:function`` (the current folder included); errors say which part failed."""
    return load_user_function(spec, what)


class FunctionReward:
    """Scores from ``fn(prompts, responses)``; validates what it returns."""

    def __init__(self, spec: str):
        self.spec = spec
        self.fn = load_function(spec)

    def __call__(self, rollout: Rollout) -> torch.Tensor:
        prompts = [prompt_text(p) for p in rollout.prompts]
        try:
            values = self.fn(prompts, list(rollout.responses))
        except Exception as exc:  # the user's code: report it on one line, not as a traceback
            raise TetherError(f"reward function {self.spec} raised {type(exc).__name__}: {exc}") from None
        try:
            values = [float(v) for v in values]
        except (TypeError, ValueError):
            raise TetherError(f"reward function {self.spec} must return a list of numbers") from None
        if len(values) != len(rollout):
            raise TetherError(
                f"reward function {self.spec} returned {len(values)} scores for {len(rollout)} responses"
            )
        # NaN/inf pass through on purpose: the loop's guard skips that update and reports it.
        return torch.tensor(values, dtype=torch.float32, device=rollout.response_ids.device)


class ModelReward:
    """Scores from a scalar-head reward model, read at each response's last real token.

    When the reward model shares the policy's vocabulary the policy's token ids are reused
    (no re-tokenisation); otherwise prompt and response text are re-encoded with the reward
    model's own tokenizer and chat template.
    """

    def __init__(self, model, tokenizer, policy_tokenizer, batch_size: int = 16, use_chat_template="auto"):
        self.model = model
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.use_chat_template = use_chat_template
        self.same_vocab = tokenizer.get_vocab() == policy_tokenizer.get_vocab()

    @torch.no_grad()
    def __call__(self, rollout: Rollout) -> torch.Tensor:
        if self.same_vocab:
            parts = (rollout.prompt_ids, rollout.prompt_mask, rollout.response_ids, rollout.response_mask)
        else:
            parts = self._retokenize(rollout)
        scores = []
        for start in range(0, len(rollout), self.batch_size):
            rows = slice(start, start + self.batch_size)
            inputs = build_inputs(*(p[rows] for p in parts))
            last = inputs.prompt_width + parts[3][rows].sum(1) - 1
            scores.append(self.model.sequence_scores(inputs, last))
        return torch.cat(scores).float()

    def _retokenize(self, rollout: Rollout):
        from tether.data.templates import encode_prompt, encode_response
        from tether.rollout.generation import left_pad, right_pad

        device = rollout.response_ids.device
        pad = self.tokenizer.pad_token_id
        prompt_tokens = [encode_prompt(self.tokenizer, p, self.use_chat_template) for p in rollout.prompts]
        response_tokens = [
            encode_response(self.tokenizer, text, add_eos=bool(ended))
            for text, ended in zip(rollout.responses, rollout.ended_with_eos.tolist())
        ]
        response_tokens = [t if t else [self.tokenizer.eos_token_id] for t in response_tokens]
        return (*left_pad(prompt_tokens, pad, device), *right_pad(response_tokens, pad, device))


def is_finite(scores: torch.Tensor) -> bool:
    return bool(torch.isfinite(scores).all()) if scores.numel() else True


def describe_nonfinite(scores: torch.Tensor) -> str:
    bad = (~torch.isfinite(scores)).nonzero().flatten().tolist()
    return f"{len(bad)} non-finite score(s) at rows {bad[:8]}" + ("..." if len(bad) > 8 else "")


__all__ = ["RewardSource", "FunctionReward", "ModelReward", "load_function", "is_finite", "describe_nonfinite"]
