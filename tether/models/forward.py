"""Forward passes over (prompt, response) batches that compute logits only where needed.

Layout used everywhere: ``input_ids = [prompt (left-padded, width P) | response
(right-padded, width R)]``. The hidden state at column P-1+t predicts response token t and is
the state s_t the critic values, so one slice ``hidden[:, P-1 : P-1+R]`` serves log-probs,
entropy and values. The LM head runs on those R columns only, never on the prompt (for
SmolLM2 the head is 576 x 49,152: skipping prompt positions saves most of its cost).

Shared prompt prefix: prompts wrapped in a chat template all begin with the same tokens (SmolLM2's
system prompt and user header are 24 of a ~35-token prompt), and a batch that is one GRPO/RLOO
group repeats one whole prompt. When every row of a batch begins with the same K tokens, ``build_inputs`` puts them in
columns [0, K) of every row (the rest of each prompt stays left-padded after them), and the
decoder runs those K columns once, as a batch of one, and lends their keys and values to every
row. Exact: the same attention over the same keys, and autograd sums the B rows' gradients into
the one prefix computation. It saves (B - 1) * K token positions in every forward and backward:
about a quarter of the body's FLOPs for SmolLM2's template at batch 8.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass

import torch

from tether.ops.logprobs import entropy_from_logits, token_logprobs


# The prefix pass is one more call through every layer: it pays when it saves enough token
# positions. Measured on SmolLM2, CPU, bf16, batch 8 x (36 + 48) tokens, forward + backward
# against no sharing, two runs (benchmarks/shared_prefix.py sweep; benchmarks/NOTES.md):
# K = 1 1.15x / 0.93x the time, K = 2-4 0.87-1.03x, K = 8 0.87x / 0.83x, K = 24 0.69x / 0.70x.
# Below 8 the sign depends on the run: share K >= 8 tokens, where (rows - 1) x K >= 32 positions.
MIN_SHARED_PREFIX = 8
MIN_SAVED_POSITIONS = 32


@dataclass
class SequenceInputs:
    """A model-ready batch. All (B, P + R)."""

    input_ids: torch.Tensor  # (B, L) long
    attention_mask: torch.Tensor  # (B, L) long, 1 on real tokens
    position_ids: torch.Tensor  # (B, L) long, counted from each row's first real token
    prompt_width: int  # P: response token t sits at column P + t
    shared_prefix: int = 0  # K < P: columns [0, K) hold the same real tokens in every row


def build_inputs(
    prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, response_ids: torch.Tensor, response_mask: torch.Tensor,
    share_prefix: bool = True,
) -> SequenceInputs:
    """Concatenate, trimming columns that are padding in every row (left of the prompts,
    right of the responses), and compute position ids from the mask (left padding must not
    shift positions; Huang et al. 2024). With ``share_prefix``, a prompt prefix common to every
    row is moved to the first columns (see the module docstring)."""
    lead = (prompt_mask.long().cumsum(1) == 0).sum(1)  # (B,) padding columns left of each prompt
    lead_pad = int(lead.min().item()) if prompt_mask.numel() else 0
    prompt_ids, prompt_mask, lead = prompt_ids[:, lead_pad:], prompt_mask[:, lead_pad:].long(), lead - lead_pad
    shared = common_prefix_length(prompt_ids, prompt_mask, lead) if share_prefix else 0
    if shared:
        # Row i's prompt sits at columns [lead_i, P). Its first K tokens go to columns [0, K) of
        # every row; the columns after them keep the rest of the prompt, right-aligned as before,
        # and the K columns each row's prompt vacated become padding.
        columns = torch.arange(prompt_ids.shape[1], device=prompt_ids.device)
        rest_mask = prompt_mask * (columns[None, :] >= (lead + shared)[:, None])
        first = int(lead.argmin().item())  # a row whose prompt starts at column 0
        prefix = prompt_ids[first : first + 1, :shared].expand(len(prompt_ids), -1)
        # (No column becomes padding in every row: the row starting at column 0 fills them all.)
        prompt_ids = torch.cat([prefix, prompt_ids[:, shared:]], 1)
        prompt_mask = torch.cat([torch.ones_like(prompt_mask[:, :shared]), rest_mask[:, shared:]], 1)
    input_ids = torch.cat([prompt_ids, response_ids], dim=1)
    attention_mask = torch.cat([prompt_mask, response_mask], dim=1).long()
    position_ids = (attention_mask.cumsum(1) - 1).clamp(min=0)
    return SequenceInputs(input_ids, attention_mask, position_ids, prompt_ids.shape[1], shared)


def common_prefix_length(prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, lead: torch.Tensor) -> int:
    """K: how many first prompt tokens every row shares (prompts left-padded, row i starting at
    column ``lead[i]``), capped so that every row keeps at least its last prompt token outside
    the prefix (its hidden state predicts the first response token). 0 when sharing would not
    pay (``MIN_SHARED_PREFIX``, ``MIN_SAVED_POSITIONS``)."""
    rows, width = prompt_ids.shape
    if rows < 2 or width == 0:
        return 0
    # Left-align each row: aligned[i, j] is row i's j-th prompt token.
    columns = torch.arange(width, device=prompt_ids.device)
    source = (lead[:, None] + columns[None, :]).clamp(max=width - 1)
    aligned, aligned_mask = prompt_ids.gather(1, source), prompt_mask.gather(1, source).bool()
    aligned_mask &= (lead[:, None] + columns[None, :]) < width
    same = ((aligned == aligned[:1]) & aligned_mask).all(0)  # (width,)
    shared = int(same.long().cumprod(0).sum().item())
    shortest = int(prompt_mask.sum(1).min().item())
    shared = min(shared, shortest - 1)
    return shared if shared >= MIN_SHARED_PREFIX and (rows - 1) * shared >= MIN_SAVED_POSITIONS else 0


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
