"""Mixed precision: bf16 compute under autocast with fp32 master weights (the optimizer never
sees bf16 parameters). On CPUs with AVX512-BF16 this is ~3.5x faster than fp32 for SmolLM2
(benchmarks/NOTES.md); on CUDA it is the usual choice."""

from __future__ import annotations

from contextlib import nullcontext

import torch


def resolve_precision(precision: str, device: torch.device) -> str:
    """``auto`` -> the faster of fp32 and bf16 on this device: bf16 on CUDA devices that support
    it and on CPUs with native bf16 matmuls (oneDNN's AVX512 / AMX kernels); fp32 elsewhere,
    because without them bf16 is emulated and several times *slower* than fp32 (an AVX2-only
    CPU ran the demo's sampling 4x slower in bf16). ``fp32`` and ``bf16`` pass through."""
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    if device.type == "cpu":
        try:
            return "bf16" if torch.ops.mkldnn._is_mkldnn_bf16_supported() else "fp32"
        except (AttributeError, RuntimeError):
            return "fp32"
    return "fp32"


def autocast(device: torch.device, precision: str):
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    if precision != "fp32":
        raise ValueError(f"unknown precision {precision!r}: choose fp32 or bf16")
    return nullcontext()


def frozen_linears_to(model: torch.nn.Module, precision: str) -> torch.nn.Module:
    """Store a frozen model's ``nn.Linear`` weights in the dtype autocast computes them in.

    Under bf16 autocast every linear casts its fp32 weight to bf16 on every forward; for a
    model that never trains (reference, reward model) that copy can be made once. The result
    is bit-identical (autocast rounds to the same bf16 values, and leaves an input that already
    has the target dtype as it is), the model takes half the memory for those weights, and
    each forward skips reading 4 and writing 2 bytes per weight. Embeddings and norms stay
    fp32, so the residual stream is what autocast gives with fp32 weights. A linear that shares
    its weight with an embedding (tied LM head) gets its own bf16 copy.

    Every other parameter is copied out too: transformers maps the safetensors file into
    memory, and one tensor left pointing into that mapping keeps every page of the file read
    so far resident (measured: 400 MB more RSS for SmolLM2 when only the linears were converted).

    Only for models used under ``autocast(device, precision)``: a bf16 weight outside autocast
    meets fp32 inputs and raises. fp32 precision: unchanged.
    """
    if precision != "bf16":
        return model
    if any(p.requires_grad for p in model.parameters()):
        raise ValueError("frozen_linears_to is for frozen models (freeze() them first): a trained weight must stay fp32")
    copies: dict[tuple[int, bool], torch.nn.Parameter] = {}  # shared parameters stay shared (per kind)
    for module in model.modules():
        as_bf16 = isinstance(module, torch.nn.Linear)
        for name, param in list(module.named_parameters(recurse=False)):
            key = (id(param), as_bf16)
            if key not in copies:
                data = param.detach().to(torch.bfloat16, copy=True) if as_bf16 else param.detach().clone()
                copies[key] = torch.nn.Parameter(data, requires_grad=False)
            setattr(module, name, copies[key])
    return model
