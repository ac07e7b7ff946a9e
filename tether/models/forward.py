"""Forward passes over (prompt, response) batches that compute logits only where needed.

Layout used everywhere: ``input_ids = [prompt (left-padded, width P) | response
(right-padded, width R)]``. The hidden state at column P-1+t predicts response token t and is
the state s_t the critic values, so one slice ``hidden[:, P-1 : P-1+R]`` serves log-probs,
entropy and values. The LM head runs on those R columns only, never on the prompt (for
SmolLM2 the head is 576 x 49,152: skipping prompt positions saves most of its cost).

The batch layout and the shared prompt prefix (``build_inputs``) are in ``tether.data.sequences``;
this module runs the decoder over them.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass

import torch

# build_inputs beside policy_forward: every caller builds the inputs it passes with it
from tether.data.sequences import SequenceInputs, build_inputs  # noqa: F401
from tether.ops.logprobs import entropy_from_logits, token_logprobs


def decoder_and_head(model: torch.nn.Module) -> tuple[torch.nn.Module, torch.nn.Module]:
    """The transformer body and the LM head of a causal LM (works for Llama, Qwen, Mistral,
    GPT-2 ... : anything exposing ``get_decoder`` / ``get_output_embeddings``)."""
    decoder = model.get_decoder() if hasattr(model, "get_decoder") else getattr(model, model.base_model_prefix)
    head = model.get_output_embeddings()
    if decoder is None or head is None:
        raise TypeError(f"{type(model).__name__} exposes no decoder/LM head; not a causal LM")
    return decoder, head


def hidden_states_from(decoder: torch.nn.Module, inputs: SequenceInputs, start: int) -> torch.Tensor:
    """The decoder's last hidden states at columns ``start:``: (B, L - start, H). With a shared
    prefix of K columns (and a decoder that ``can_share_prefix``), those run once (batch 1) and
    every row attends to their keys and values through the cache."""
    shared = inputs.shared_prefix if inputs.shared_prefix and can_share_prefix(decoder) else 0
    if not shared:
        out = decoder(input_ids=inputs.input_ids, attention_mask=inputs.attention_mask,
                      position_ids=inputs.position_ids, use_cache=False)
        return _last_hidden(out)[:, start:]
    rows, width = inputs.input_ids.shape
    prefix = decoder(input_ids=inputs.input_ids[:1, :shared], position_ids=inputs.position_ids[:1, :shared],
                     use_cache=True)
    cache_name = _cache_argument(decoder)
    cache = prefix[cache_name]
    cache.batch_repeat_interleave(rows)  # repeat_interleave: backward sums the rows' gradients
    rest = decoder(
        input_ids=inputs.input_ids[:, shared:],
        attention_mask=inputs.attention_mask,  # (B, L): prefix and rest, as the cache sees them
        position_ids=inputs.position_ids[:, shared:],
        cache_position=torch.arange(shared, width, device=inputs.input_ids.device),
        use_cache=True,
        **{cache_name: cache},
    )
    hidden = _last_hidden(rest)
    if start >= shared:
        return hidden[:, start - shared:]
    return torch.cat([_last_hidden(prefix)[:, start:].expand(rows, -1, -1), hidden], 1)


def can_share_prefix(decoder: torch.nn.Module) -> bool:
    """Whether ``decoder`` can run a shared prefix once: every attention layer is causal (an
    encoder's prefix would see the tokens after it), none is under gradient checkpointing
    (transformers drops the cache inside checkpointed layers) and none is FSDP2-sharded (a layer
    run twice in one forward is resharded before the first run's backward). Checked on the
    module, so the scoring and training passes of one model always take the same path."""
    fsdp = _fsdp_module_type()
    causal = None
    for module in decoder.modules():
        if getattr(module, "gradient_checkpointing", False) or (fsdp is not None and isinstance(module, fsdp)):
            return False
        flag = getattr(module, "is_causal", None)
        if isinstance(flag, bool):
            causal = flag if causal is None else causal and flag
    return bool(causal)


def _fsdp_module_type():
    if not torch.distributed.is_available():
        return None
    from torch.distributed.fsdp import FSDPModule

    return FSDPModule


def _cache_argument(decoder: torch.nn.Module) -> str:
    """The name the decoder's forward and output give the KV cache: ``cache`` in recent
    transformers (which warns on the older name), ``past_key_values`` before."""
    return "cache" if "cache" in inspect.signature(decoder.forward).parameters else "past_key_values"


def _last_hidden(out) -> torch.Tensor:
    return out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]


def response_hidden_states(decoder: torch.nn.Module, inputs: SequenceInputs, response_width: int) -> torch.Tensor:
    """Hidden states of the states s_0..s_{R-1}: (B, R, H)."""
    return hidden_states_from(decoder, inputs, inputs.prompt_width - 1)[:, :response_width]


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
