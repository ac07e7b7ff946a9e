"""Forward passes over (prompt, response) batches that compute logits only where needed.

Layout used everywhere: ``input_ids = [prompt (left-padded, width P) | response
(right-padded, width R)]``. The hidden state at column P-1+t predicts response token t and is
the state s_t the critic values, so one slice ``hidden[:, P-1 : P-1+R]`` serves log-probs,
entropy and values. The LM head runs on those R columns only, never on the prompt (for
SmolLM2 the head is 576 x 49,152: skipping prompt positions saves most of its cost).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from tether.ops.logprobs import entropy_from_logits, token_logprobs


@dataclass
class SequenceInputs:
    """A model-ready batch. All (B, P + R)."""

    input_ids: torch.Tensor  # (B, L) long
    attention_mask: torch.Tensor  # (B, L) long, 1 on real tokens
    position_ids: torch.Tensor  # (B, L) long, counted from each row's first real token
    prompt_width: int  # P: response token t sits at column P + t


def build_inputs(
    prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, response_ids: torch.Tensor, response_mask: torch.Tensor
) -> SequenceInputs:
    """Concatenate, trimming columns that are padding in every row (left of the prompts,
    right of the responses), and compute position ids from the mask (left padding must not
    shift positions; Huang et al. 2024)."""
    lead_pad = int((prompt_mask.long().cumsum(1) == 0).sum(1).min().item()) if prompt_mask.numel() else 0
    prompt_ids, prompt_mask = prompt_ids[:, lead_pad:], prompt_mask[:, lead_pad:]
    input_ids = torch.cat([prompt_ids, response_ids], dim=1)
    attention_mask = torch.cat([prompt_mask, response_mask], dim=1).long()
    position_ids = (attention_mask.cumsum(1) - 1).clamp(min=0)
    return SequenceInputs(input_ids, attention_mask, position_ids, prompt_ids.shape[1])


def decoder_and_head(model: torch.nn.Module) -> tuple[torch.nn.Module, torch.nn.Module]:
    """The transformer body and the LM head of a causal LM (works for Llama, Qwen, Mistral,
    GPT-2 ... : anything exposing ``get_decoder`` / ``get_output_embeddings``)."""
    decoder = model.get_decoder() if hasattr(model, "get_decoder") else getattr(model, model.base_model_prefix)
    head = model.get_output_embeddings()
    if decoder is None or head is None:
        raise TypeError(f"{type(model).__name__} exposes no decoder/LM head; not a causal LM")
    return decoder, head


def decoder_blocks(module: torch.nn.Module) -> list[torch.nn.Module]:
    """The transformer blocks of any model: its largest ``ModuleList`` by parameter count
    (``layers`` in Llama/Qwen/Mistral, ``h`` in GPT-2, ``encoder.layer`` in BERT). Empty when
    there is none."""
    lists = [m for m in module.modules() if isinstance(m, torch.nn.ModuleList)]
    return list(max(lists, key=lambda l: sum(p.numel() for p in l.parameters()))) if lists else []


def response_hidden_states(decoder: torch.nn.Module, inputs: SequenceInputs, response_width: int) -> torch.Tensor:
    """Hidden states of the states s_0..s_{R-1}: (B, R, H)."""
    out = decoder(
        input_ids=inputs.input_ids,
        attention_mask=inputs.attention_mask,
        position_ids=inputs.position_ids,
        use_cache=False,
    )
    hidden = out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]
    start = inputs.prompt_width - 1
    return hidden[:, start : start + response_width]


@dataclass
class PolicyOutputs:
    logprobs: torch.Tensor  # (B, R) log π(y_t|s_t) of the given response tokens
    entropy: torch.Tensor | None  # (B, R) entropy of π(.|s_t), if asked for
    values: torch.Tensor | None  # (B, R) V(s_t) from a shared value head, if there is one


def policy_forward(
    model: torch.nn.Module,
    inputs: SequenceInputs,
    response_ids: torch.Tensor,
    temperature: float = 1.0,
    with_entropy: bool = False,
    value_head: torch.nn.Module | None = None,
) -> PolicyOutputs:
    """Log-probs (and optionally entropy and shared-backbone values) of ``response_ids``
    (B, R) in one forward pass."""
    decoder, lm_head = decoder_and_head(model)
    hidden = response_hidden_states(decoder, inputs, response_ids.shape[1])
    logits = lm_head(hidden)
    logprobs = token_logprobs(logits, response_ids, temperature)
    entropy = None
    if with_entropy:
        with torch.no_grad():
            entropy = entropy_from_logits(logits / temperature if temperature != 1.0 else logits)
    values = value_head(hidden).squeeze(-1).float() if value_head is not None else None
    return PolicyOutputs(logprobs, entropy, values)
