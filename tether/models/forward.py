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
from tether.data.sequences import PromptGroups, SequenceInputs, build_inputs  # noqa: F401
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
    """The decoder's last hidden states at columns ``start:``: (B, L - start, H). A decoder that
    ``can_share_prefix`` runs a shared prefix of K columns once (batch 1), or the prompt columns
    once per distinct prompt (``inputs.prompt_groups``), and every row attends to the keys and
    values of its prefix through the cache."""
    rows = inputs.input_ids.shape[0]
    sharing = (inputs.shared_prefix or inputs.prompt_groups is not None) and can_share_prefix(decoder)
    if not sharing:
        out = decoder(input_ids=inputs.input_ids, attention_mask=inputs.attention_mask,
                      position_ids=inputs.position_ids, use_cache=False)
        return _last_hidden(out)[:, start:]
    if inputs.prompt_groups is not None:
        groups = inputs.prompt_groups
        return _prefix_then_rest(decoder, inputs, start, inputs.prompt_width, groups.first_rows, groups.of_row)
    first_row = torch.zeros(1, dtype=torch.long, device=inputs.input_ids.device)
    return _prefix_then_rest(decoder, inputs, start, inputs.shared_prefix, first_row, first_row.expand(rows))


def _prefix_then_rest(decoder: torch.nn.Module, inputs: SequenceInputs, start: int, width: int,
                      prefix_rows: torch.Tensor, of_row: torch.Tensor) -> torch.Tensor:
    """Columns [0, ``width``) of the rows ``prefix_rows`` (D of them) through the decoder with a
    cache, the cache gathered to the B rows (row i gets prefix ``of_row[i]``), then columns
    [width, L) of every row against it. Indexing is differentiable: the gather's backward sums
    the gradients of the rows sharing a prefix into its one computation."""
    length = inputs.input_ids.shape[1]
    mask = inputs.attention_mask[prefix_rows, :width]
    prefix = decoder(input_ids=inputs.input_ids[prefix_rows, :width],
                     attention_mask=None if bool(mask.all()) else mask,  # None: the plain causal kernel
                     position_ids=inputs.position_ids[prefix_rows, :width], use_cache=True)
    cache_name = _cache_argument(decoder)
    cache = prefix[cache_name]
    repeats = _lend_cache(cache, of_row, len(prefix_rows))
    rest = decoder(
        input_ids=inputs.input_ids[:, width:],
        attention_mask=inputs.attention_mask,  # (B, L): prefix and rest, as the cache sees them
        position_ids=inputs.position_ids[:, width:],
        cache_position=torch.arange(width, length, device=inputs.input_ids.device),
        use_cache=True,
        **{cache_name: cache},
    )
    hidden = _last_hidden(rest)
    if start >= width:
        return hidden[:, start - width:]
    prefix_hidden = _last_hidden(prefix)[:, start:]
    lent = prefix_hidden.repeat_interleave(repeats, 0) if repeats else prefix_hidden[of_row]
    return torch.cat([lent, hidden], 1)


def prefilled_prompts(model: torch.nn.Module, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor,
                      groups: PromptGroups) -> dict:
    """``generate`` keyword arguments handing it the KV cache of every row's left-padded prompt
    (B, P) but its last column, computed once per distinct prompt and gathered to the rows;
    ``generate`` then feeds each row's last prompt token itself (Hugging Face's prefix reuse,
    "Re-use Cache to continue generation" in its KV-cache guide). {} where the decoder cannot
    share a prefix (``can_share_prefix``)."""
    decoder, _ = decoder_and_head(model)
    if not can_share_prefix(decoder):
        return {}
    width = prompt_ids.shape[1] - 1
    mask = prompt_mask[groups.first_rows, :width].long()
    out = decoder(input_ids=prompt_ids[groups.first_rows, :width], attention_mask=mask,
                  position_ids=(mask.cumsum(1) - 1).clamp(min=0), use_cache=True)
    cache = out[_cache_argument(decoder)]
    _lend_cache(cache, groups.of_row, len(groups.first_rows))
    return {_cache_argument(model): cache}


def _lend_cache(cache, of_row: torch.Tensor, distinct: int) -> int:
    """Gather a cache of ``distinct`` prefixes to the rows (row i gets prefix ``of_row[i]``), in
    place; returns G when each prefix went to G consecutive rows (then a repeat-interleave, whose
    backward is a reshape and a sum), else 0 (an index select)."""
    repeats = _equal_runs(of_row, distinct)
    if repeats:
        cache.batch_repeat_interleave(repeats)
    else:
        cache.batch_select_indices(of_row)
    return repeats


def _equal_runs(of_row: torch.Tensor, distinct: int) -> int:
    """G when ``of_row`` is 0 x G, 1 x G, ..., (D-1) x G (each prefix lent to G consecutive
    rows), else 0."""
    rows = len(of_row)
    if rows % distinct:
        return 0
    runs = rows // distinct
    expected = torch.arange(distinct, device=of_row.device).repeat_interleave(runs)
    return runs if torch.equal(of_row, expected) else 0


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
    if with_entropy:  # with grad where grad is on: the entropy bonus trains on it (scoring runs under no_grad)
        entropy = entropy_from_logits(logits / temperature if temperature != 1.0 else logits)
    values = value_head(hidden).squeeze(-1).float() if value_head is not None else None
    return PolicyOutputs(logprobs, entropy, values)
