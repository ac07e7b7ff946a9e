"""SDPA against tether's matmul attention (tether/models/attention.py) on CPU, side by side in one
process: forward+backward over full sequences, and forward of one decoding step. SmolLM2-135M's
heads (9 query heads of 64 over 3 key/value heads), bf16. The figures behind the size
threshold in tether/models/attention.py (benchmarks/NOTES.md, "Attention kernel by size on CPU").

    .venv/bin/python benchmarks/attention_kernels.py
"""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F

import tether.models.attention as attention
from tether.models.attention import short_sequence_attention

HEADS, KV_HEADS, HEAD_DIM = 9, 3, 64


class _Module(torch.nn.Module):
    is_causal = True
    num_key_value_groups = HEADS // KV_HEADS


def _inputs(batch: int, q_len: int, kv_len: int, grad: bool):
    make = lambda h, t: torch.randn(batch, h, t, HEAD_DIM, dtype=torch.bfloat16, requires_grad=grad)  # noqa: E731
    mask = torch.ones(q_len, kv_len, dtype=torch.bool).tril(kv_len - q_len)[None, None].expand(batch, 1, q_len, kv_len)
    return make(HEADS, q_len), make(KV_HEADS, kv_len), make(KV_HEADS, kv_len), mask.contiguous()


def _sdpa(q, k, v, mask):
    groups = HEADS // KV_HEADS
    return F.scaled_dot_product_attention(q, k.repeat_interleave(groups, 1), v.repeat_interleave(groups, 1),
                                          attn_mask=mask)


def _matmuls(q, k, v, mask):
    return short_sequence_attention(_Module(), q, k, v, mask, scaling=HEAD_DIM**-0.5)[0]


def best_seconds(fn, inputs, backward: bool, repeats: int) -> float:
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        for _ in range(repeats):
            out = fn(*inputs)
            if backward:
                out.float().sum().backward()
        best = min(best, (time.perf_counter() - start) / repeats)
    return best


def main() -> None:
    torch.manual_seed(0)
    attention._MATMUL_MAX_SCORES = float("inf")  # time the matmul path at every size, past its threshold
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, bf16, {HEADS} heads of {HEAD_DIM}")
    print(f"{'case':<34} {'SDPA':>10} {'matmuls':>10} {'ratio':>6}")
    cases = [("fwd+bwd", b, t, t) for b, t in ((8, 83), (8, 128), (8, 256), (4, 512), (2, 1024))]
    cases += [("decode step (no grad)", b, 1, k) for b, k in ((8, 84), (8, 200), (32, 300))]
    for name, batch, q_len, kv_len in cases:
        backward = name == "fwd+bwd"
        inputs = _inputs(batch, q_len, kv_len, backward)
        repeats = 5 if q_len * kv_len > 50_000 else 30
        with torch.set_grad_enabled(backward):
            sdpa = best_seconds(_sdpa, inputs, backward, repeats)
            ours = best_seconds(_matmuls, inputs, backward, repeats)
        label = f"{name} B={batch} Q={q_len} K={kv_len}"
        print(f"{label:<34} {sdpa * 1e3:8.2f}ms {ours * 1e3:8.2f}ms {ours / sdpa:6.2f}")


if __name__ == "__main__":
    main()
