"""Log-probabilities and entropy from logits, without keeping a full (B, T, V) log-softmax.

The vocabulary axis dominates memory (SmolLM2: V = 49,152). Both functions process the
sequence in chunks, so at most one (B, chunk, V) float32 temporary is alive at a time.
Each chunk goes through ``log_softmax`` (one fused kernel each way) and the chosen entries are
gathered: gathering the chosen logit and subtracting ``logsumexp`` (TRL's
``selective_log_softmax``) costs the same memory but ~4x the time on CPU, because logsumexp's
backward runs as separate subtract, exp and multiply passes over (B, chunk, V)
(benchmarks/NOTES.md: 60 vs 16 ms forward + backward for 8 x 48 positions of SmolLM2).
"""

from __future__ import annotations

import torch

__all__ = ["token_logprobs", "entropy_from_logits"]

DEFAULT_CHUNK = 64


def _log_softmax_chunks(logits: torch.Tensor, chunk_size: int, temperature: float = 1.0):
    """(start, log_softmax(logits[:, start : start + chunk_size] / temperature) in float32), one
    chunk of positions at a time: (B, chunk, V) is the largest temporary either function holds."""
    for start in range(0, logits.shape[1], chunk_size):
        chunk = logits[:, start : start + chunk_size].float()
        if temperature != 1.0:
            chunk = chunk / temperature
        yield start, torch.log_softmax(chunk, dim=-1)


def token_logprobs(
    logits: torch.Tensor, tokens: torch.Tensor, temperature: float = 1.0, chunk_size: int = DEFAULT_CHUNK
) -> torch.Tensor:
    """log π(token_t | s_t) for each position.

    logits: (B, T, V), already aligned so that ``logits[:, t]`` predicts ``tokens[:, t]``.
    tokens: (B, T) int. Returns (B, T) float32.
    Logits are divided by the sampling ``temperature`` first: the log-probs must be those of the
    distribution the tokens were sampled from (Huang et al. 2024).
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    out = [torch.gather(log_probs, -1, tokens[:, start : start + chunk_size, None]).squeeze(-1)
           for start, log_probs in _log_softmax_chunks(logits, chunk_size, temperature)]
    if not out:
        return logits.new_zeros(tokens.shape, dtype=torch.float32)
    return torch.cat(out, dim=1)


def entropy_from_logits(logits: torch.Tensor, chunk_size: int = DEFAULT_CHUNK) -> torch.Tensor:
    """Entropy H = -Σ p·log p of the categorical softmax(z) over the last axis.

    logits: (B, T, V). Returns (B, T) float32, in nats. Chunked over T like ``token_logprobs``.
    """
    out = [-(log_probs.exp() * log_probs).sum(-1) for _, log_probs in _log_softmax_chunks(logits, chunk_size)]
    if not out:
        return logits.new_zeros(logits.shape[:2], dtype=torch.float32)
    return torch.cat(out, dim=1)
