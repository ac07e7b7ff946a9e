"""Log-probabilities and entropy from logits, without keeping a full (B, T, V) log-softmax.

The vocabulary axis dominates memory (SmolLM2: V = 49,152). Both functions process the
sequence in chunks, so at most one (B, chunk, V) float32 temporary is alive at a time
(the idea of TRL's ``selective_log_softmax``: gather the chosen logit and subtract logsumexp).
"""

from __future__ import annotations

import torch

__all__ = ["token_logprobs", "entropy_from_logits"]

DEFAULT_CHUNK = 64


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
    out = []
    for start in range(0, logits.shape[1], chunk_size):
        chunk = logits[:, start : start + chunk_size].float()
        if temperature != 1.0:
            chunk = chunk / temperature
        picked = torch.gather(chunk, -1, tokens[:, start : start + chunk_size, None]).squeeze(-1)
        out.append(picked - torch.logsumexp(chunk, dim=-1))
    if not out:
        return logits.new_zeros(tokens.shape, dtype=torch.float32)
    return torch.cat(out, dim=1)


def entropy_from_logits(logits: torch.Tensor, chunk_size: int = DEFAULT_CHUNK) -> torch.Tensor:
    """Entropy H = logsumexp(z) - Σ softmax(z)·z of the categorical over the last axis.

    logits: (B, T, V). Returns (B, T) float32, in nats. Chunked over T like ``token_logprobs``.
    """
    out = []
    for start in range(0, logits.shape[1], chunk_size):
        chunk = logits[:, start : start + chunk_size].float()
        probs = torch.softmax(chunk, dim=-1)
        out.append(torch.logsumexp(chunk, dim=-1) - (probs * chunk).sum(-1))
    if not out:
        return logits.new_zeros(logits.shape[:2], dtype=torch.float32)
    return torch.cat(out, dim=1)
