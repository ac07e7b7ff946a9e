"""Mixed precision: bf16 compute under autocast with fp32 master weights (the optimizer never
sees bf16 parameters). On CPUs with AVX512-BF16 this is ~3.5x faster than fp32 for SmolLM2
(benchmarks/NOTES.md); on CUDA it is the usual choice."""

from __future__ import annotations

from contextlib import nullcontext

import torch


def autocast(device: torch.device, precision: str):
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    if precision != "fp32":
        raise ValueError(f"unknown precision {precision!r}: choose fp32 or bf16")
    return nullcontext()
