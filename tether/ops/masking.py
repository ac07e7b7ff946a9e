"""Masked reductions over the real tokens of a padded batch.

Every tensor here is (B, T) unless a docstring says otherwise; ``mask`` is True (or 1) on real
tokens. Padding never contributes to a sum, a mean or a variance.
"""

from __future__ import annotations

import torch

__all__ = ["masked_mean", "masked_sum", "masked_var", "masked_whiten", "mask_after_first_eos", "real_width"]


def masked_sum(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Sum of ``x`` where ``mask`` is true. x, mask: same shape; returns a scalar or x summed over dim."""
    m = mask.to(x.dtype)
    return (x * m).sum() if dim is None else (x * m).sum(dim=dim)


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Mean of ``x`` over positions where ``mask`` is true.

    x, mask: same shape (e.g. (B, T)). ``dim=None`` gives a scalar over all real tokens; an int
    gives the per-row mean along that dim (rows with no real token give 0, not NaN).
    """
    m = mask.to(x.dtype)
    if dim is None:
        return (x * m).sum() / m.sum().clamp(min=1.0)
    return (x * m).sum(dim=dim) / m.sum(dim=dim).clamp(min=1.0)


def masked_var(x: torch.Tensor, mask: torch.Tensor, unbiased: bool = True) -> torch.Tensor:
    """Variance of ``x`` over its real tokens (a scalar). x, mask: same shape.

    ``unbiased`` applies Bessel's correction n/(n-1); with a single real token the variance is 0.
    """
    mean = masked_mean(x, mask)
    var = masked_mean((x - mean) ** 2, mask)
    if unbiased:
        n = mask.to(x.dtype).sum()
        if n > 1:
            var = var * n / (n - 1)
    return var


def masked_whiten(x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True, eps: float = 1e-8) -> torch.Tensor:
    """Normalise ``x`` to mean 0 (unless ``shift_mean=False``) and std 1 over its real tokens.

    x, mask: (B, T). Padding positions come back as 0. ``shift_mean=False`` keeps the mean
    (used for rewards, where the sign carries meaning; Huang et al. 2024, detail 'whiten').
    """
    mean = masked_mean(x, mask)
    var = masked_var(x, mask)
    whitened = (x - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        whitened = whitened + mean
    return whitened * mask.to(x.dtype)


def mask_after_first_eos(tokens: torch.Tensor, eos_token_ids: torch.Tensor | list[int]) -> torch.Tensor:
    """Boolean mask (B, T) that is True up to and including each row's first EOS token.

    tokens: (B, T) generated ids. Anything after the first EOS (further EOS, pad, garbage) is
    masked out: "truncate each response after its first EOS" (Huang et al. 2024). A row with no
    EOS keeps every token.
    """
    eos = torch.as_tensor(eos_token_ids, device=tokens.device)
    is_eos = torch.isin(tokens, eos)
    # Number of EOS tokens strictly before position t; a token is kept when none came before it.
    eos_before = torch.cumsum(is_eos.int(), dim=1) - is_eos.int()
    return eos_before == 0


def real_width(mask: torch.Tensor) -> int:
    """Columns of a right-padded (B, T) batch that hold a real token in some row: how far its
    columns can be cut (``[:, :width]``) without losing one. At least 1, so that a batch of
    empty responses keeps a column (a model input needs one)."""
    return max(int(mask.sum(1).max().item()), 1)
