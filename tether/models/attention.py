"""Attention that picks its kernel by size: plain matmul-softmax-matmul for short sequences on
CPU, PyTorch's SDPA everywhere else.

Why: on CPU, SDPA runs a flash-attention kernel whose backward is slow at the lengths RLHF
trains on. Measured on 2 cores, bf16, 9 heads of 64 (SmolLM2-135M), forward+backward:
83 tokens 9.5 ms (SDPA) vs 2.7 ms (matmuls), 128 tokens 14.2 vs 5.7, 256 tokens 28.2 vs 24.7,
512 tokens 46 vs 72; one decoding step (1 query over 84 keys) 254 us vs 83 us. In a SmolLM2 PPO
iteration (batch 8, 36 + 48 tokens) the flash backward alone was 12% of the time
(benchmarks/NOTES.md, "Attention kernel by size on CPU"). Above ~200 x 200 scores per head, or on any
accelerator, SDPA is the better kernel and is used unchanged.

The choice depends on the shapes only, so every forward over the same batch takes the same path:
the scoring pass and the first training pass of PPO compute the same log-probs, as before.
The matmul path is the same computation as transformers' ``eager`` attention (scores and
softmax in fp32, masked positions at the dtype's minimum), minus the repeated key/value heads:
grouped query heads are folded into the query length instead of copying keys and values.
"""

from __future__ import annotations

import torch

NAME = "tether_sdpa"
# Largest q_len x kv_len (per head) that runs as plain matmuls on CPU; decoding steps (one query)
# always do. 40,000 ~ 200 x 200: between the measured 128 (matmuls 2.5x faster) and 256 (1.1x).
_MATMUL_MAX_SCORES = 40_000
# Arguments this path does not implement: hand those calls to SDPA (or its error message).
_SDPA_ONLY = ("position_bias", "cache", "softcap", "s_aux", "sinks", "sliding_window", "output_attentions")


def _use_matmuls(query: torch.Tensor, key: torch.Tensor, attention_mask: torch.Tensor | None, kwargs: dict) -> bool:
    q_len, kv_len = query.shape[2], key.shape[2]
    if query.device.type != "cpu" or any(kwargs.get(k) not in (None, False) for k in _SDPA_ONLY):
        return False
    if attention_mask is None and q_len != kv_len and q_len != 1:
        return False  # SDPA's upper-left causal alignment for a prefill into a static cache: leave it to SDPA
    return q_len == 1 or q_len * kv_len <= _MATMUL_MAX_SCORES


def short_sequence_attention(
    module: torch.nn.Module,
    query: torch.Tensor,  # (B, H, Q, D)
    key: torch.Tensor,  # (B, Hkv, K, D)
    value: torch.Tensor,  # (B, Hkv, K, D)
    attention_mask: torch.Tensor | None,  # (B, 1, Q, K) bool (True = attend) or additive float; None = causal
    dropout: float = 0.0,
    scaling: float | None = None,
    is_causal: bool | None = None,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    """transformers' attention-function signature; returns ((B, Q, H, D), None)."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    if not _use_matmuls(query, key, attention_mask, kwargs):
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      is_causal=is_causal, **kwargs)
    batch, heads, q_len, head_dim = query.shape
    kv_heads, kv_len = key.shape[1], key.shape[2]
    groups = heads // kv_heads
    scaling = head_dim**-0.5 if scaling is None else scaling
    # query head h reads key/value head h // groups (transformers' repeat_kv): fold the groups into
    # the query axis, (B, Hkv, G*Q, D), so keys and values are never copied
    folded = query.reshape(batch, kv_heads, groups * q_len, head_dim)
    scores = torch.matmul(folded, key.transpose(2, 3)).float().mul_(scaling)
    scores = scores.view(batch, kv_heads, groups, q_len, kv_len)
    mask = attention_mask
    if mask is None and q_len > 1 and (is_causal if is_causal is not None else getattr(module, "is_causal", True)):
        mask = torch.ones(q_len, kv_len, dtype=torch.bool, device=query.device).tril()
    if mask is not None:
        if mask.dim() == 4:  # (B, 1 or H, Q, K) -> broadcastable to (B, Hkv, G, Q, K)
            mask = (mask.view(mask.shape[0], kv_heads, groups, q_len, kv_len) if mask.shape[1] == heads
                    else mask.unsqueeze(2))
        if mask.dtype == torch.bool:
            scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
        else:
            scores = scores + mask.to(scores.dtype)
    probs = torch.softmax(scores, dim=-1).to(value.dtype).view(batch, kv_heads, groups * q_len, kv_len)
    if dropout and module.training:
        probs = torch.nn.functional.dropout(probs, p=dropout)
    out = torch.matmul(probs, value).view(batch, heads, q_len, head_dim)
    return out.transpose(1, 2).contiguous(), None


def _register() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

    AttentionInterface.register(NAME, short_sequence_attention)
    ALL_MASK_ATTENTION_FUNCTIONS.register(NAME, sdpa_mask)  # the same masks SDPA gets


def use_size_aware_attention(model: torch.nn.Module) -> torch.nn.Module:
    """Switch a loaded transformers model from ``sdpa`` to this module's attention; models on
    any other implementation (eager, flash-attention, a custom one) are left as they are."""
    config = getattr(model, "config", None)
    if config is None or getattr(config, "_attn_implementation", None) != "sdpa":
        return model
    _register()
    try:
        model.set_attn_implementation(NAME)
    except (ValueError, ImportError):  # a model class that only accepts its listed implementations
        pass
    return model
