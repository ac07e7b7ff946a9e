"""How close to the matmul rate can a SmolLM2-135M PPO iteration get on this CPU, and what holds
it back? Four measurements, each alternating its variants inside one process (the machine drifts
5-15 % between runs):

* ``shapes``: the rate of the GEMMs a training step runs (batch 8 x ~60 tokens after the shared
  prefix, the 24-token prefix pass, the LM head on 48 response positions), as a fraction of the
  2048^3 rate ``vs_trl.py`` divides by; and the decode-time GEMMs (8 rows) as bytes of weight
  read per second, beside a plain streaming read.
* ``decode``: tether's ``generate_rollout`` against a bare decoding loop (one prefill, then the
  model's forward per token with a ``DynamicCache``, the same ``DrawToken`` draw), 48 tokens for
  8 prompts: what transformers' ``generate`` adds; then the 210 linear layers of one decoding
  step, as separate weights and with Q/K/V and gate/up fused.
* ``compile``: one policy forward + backward, eager against every decoder block under
  ``torch.compile``, with the shared prefix on and off; log-prob gaps to eager and between the
  compiled scoring (no grad) and training passes.
* ``update``: one policy micro-step split into forward, backward, gradient clipping and fused
  AdamW, against the FLOP count at the 2048^3 rate.

    .venv/bin/python benchmarks/ceiling.py shapes
    .venv/bin/python benchmarks/ceiling.py decode --precision fp32
    .venv/bin/python benchmarks/ceiling.py compile --precision bf16
    .venv/bin/python benchmarks/ceiling.py update --precision fp32
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import PROMPTS, matmul_rate, param_counts, smollm2_prompt_batch  # noqa: E402

BATCH, RESPONSE = 8, 48


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("what", choices=["shapes", "decode", "compile", "update"])
    p.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    p.add_argument("--reps", type=int, default=5, help="timed repeats (pairs where two variants alternate)")
    return p.parse_args(argv)


def timed(fn, reps: int, warm: int = 2) -> float:
    """Median seconds of ``fn()`` over ``reps`` calls after ``warm`` untimed ones."""
    for _ in range(warm):
        fn()
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def alternate(variants: dict, reps: int) -> dict[str, list[float]]:
    """Seconds of each variant's call, the variants taking turns ``reps`` times (one untimed turn first)."""
    times = {name: [] for name in variants}
    for turn in range(reps + 1):
        for name, fn in variants.items():
            start = time.perf_counter()
            fn()
            if turn:
                times[name].append(time.perf_counter() - start)
    return times


def setup():
    """The benchmark's SmolLM2 prompt batch (common.smollm2_prompt_batch), with the allocator
    setting the training entry points make."""
    from tether.utils.host_memory import keep_freed_host_memory

    keep_freed_host_memory()
    return smollm2_prompt_batch(BATCH)


def training_inputs(prompt_ids, prompt_mask, share_prefix: bool = True):
    """Random response tokens after the prompts, as the update sees them."""
    import torch

    from tether.models.forward import build_inputs

    response_ids = torch.randint(0, 49152, (BATCH, RESPONSE))
    inputs = build_inputs(prompt_ids, prompt_mask, response_ids, torch.ones_like(response_ids), share_prefix=share_prefix)
    return inputs, response_ids


def shapes(args) -> None:
    import torch
    import torch.nn.functional as F

    # (M, K, N) of the step's GEMMs: rows = 8 x 60 (the rest after a 24-token shared prefix),
    # weights 576 x 1536 (MLP), 576 x 576 (q, o), 576 x 192 (k, v), the LM head on 8 x 48 rows,
    # their weight-gradient GEMMs (rows as the inner dimension), and the prefix pass (24 rows).
    cases = [(480, 576, 1536), (480, 1536, 576), (480, 576, 576), (480, 576, 192), (384, 576, 49152),
             (576, 480, 1536), (1536, 480, 576), (24, 576, 1536)]
    for name in ("fp32", "bf16"):
        reference = matmul_rate(name)
        print(f"{name}: 2048^3 {reference / 1e9:.1f} GFLOP/s")
        for m, k, n in cases:
            rate = matmul_rate(name, shape=(m, k, n))
            print(f"  {m:5d} x {k:4d} x {n:5d}: {rate / 1e9:6.1f} GFLOP/s = {rate / reference:.2f}")
    big = torch.randn(64 * 2**20)
    print(f"streaming read (sum of 256 MiB): {big.numel() * 4 / timed(big.sum, 5) / 1e9:.1f} GB/s")
    # decoding: 8 rows against every weight of the 30 blocks once, as one step does (too large
    # to stay in cache between steps)
    weights = [torch.randn(n, k) for _ in range(30) for n, k in ((576, 576), (192, 576), (192, 576), (576, 576),
                                                                 (1536, 576), (1536, 576), (576, 1536))]
    rows = {576: torch.randn(BATCH, 576), 1536: torch.randn(BATCH, 1536)}
    seconds = timed(lambda: [F.linear(rows[w.shape[1]], w) for w in weights], 5)
    read = sum(w.numel() for w in weights) * 4
    print(f"decode step's block GEMMs (8 rows, fp32): {seconds * 1e3:.1f} ms = {read / seconds / 1e9:.1f} GB/s of weights")
    head, h = torch.randn(49152, 576), torch.randn(BATCH, 576)
    for label, fn in (("F.linear(h, W)", lambda: F.linear(h, head)), ("(W @ h.T).T", lambda: (head @ h.t()).t())):
        seconds = timed(fn, 10)
        print(f"decode LM head {label}: {seconds * 1e3:.2f} ms = {head.numel() * 4 / seconds / 1e9:.1f} GB/s")


def decode(args) -> None:
    import torch
    import torch.nn.functional as F
    from transformers import DynamicCache

    from tether.utils.blocks import decoder_blocks
    from tether.rollout.generation import DrawToken, SamplingSettings, generate_rollout

    tokenizer, model, prompt_token_ids, prompt_ids, prompt_mask = setup()
    if args.precision == "bf16":
        model.to(torch.bfloat16)  # generation has no autocast: the weights themselves
    model.eval()
    settings = SamplingSettings(max_new_tokens=RESPONSE, min_new_tokens=RESPONSE)

    def with_generate():
        generate_rollout(model, tokenizer, PROMPTS[:BATCH], prompt_token_ids, settings)

    @torch.no_grad()
    def bare_loop():
        mask = prompt_mask.long()
        positions = (mask.cumsum(1) - 1).clamp(min=0)
        cache, draw = DynamicCache(), DrawToken()
        out = model(input_ids=prompt_ids, attention_mask=mask, position_ids=positions, past_key_values=cache,
                    use_cache=True, logits_to_keep=1)
        position = positions[:, -1:]
        for step in range(RESPONSE):
            token = draw(None, out.logits[:, -1].float()).argmax(-1, keepdim=True)
            if step == RESPONSE - 1:
                break
            mask, position = torch.cat([mask, mask.new_ones(BATCH, 1)], 1), position + 1
            out = model(input_ids=token, attention_mask=mask, position_ids=position, past_key_values=cache,
                        use_cache=True)

    times = alternate({"generate": with_generate, "bare loop": bare_loop}, args.reps)
    for name, t in times.items():
        print(f"{name:>9}: median {statistics.median(t):.2f} s  ({', '.join(f'{x:.2f}' for x in t)})")
    print(f"bare loop / generate: {statistics.median(times['bare loop']) / statistics.median(times['generate']):.3f}")

    blocks = decoder_blocks(model)
    rows = {576: torch.randn(BATCH, 576, dtype=model.dtype), 1536: torch.randn(BATCH, 1536, dtype=model.dtype)}
    separate = [lin.weight for b in blocks for lin in (b.self_attn.q_proj, b.self_attn.k_proj, b.self_attn.v_proj,
                                                       b.self_attn.o_proj, b.mlp.gate_proj, b.mlp.up_proj, b.mlp.down_proj)]
    fused = [w for b in blocks for w in (
        torch.cat([b.self_attn.q_proj.weight, b.self_attn.k_proj.weight, b.self_attn.v_proj.weight]),
        b.self_attn.o_proj.weight, torch.cat([b.mlp.gate_proj.weight, b.mlp.up_proj.weight]), b.mlp.down_proj.weight)]

    def run(weights):
        return lambda: [F.linear(rows[w.shape[1]], w) for w in weights]

    times = alternate({"separate": run(separate), "fused": run(fused)}, args.reps * 4)
    print(f"one decoding step's block linears, 8 rows: separate {statistics.median(times['separate']) * 1e3:.1f} ms, "
          f"Q/K/V and gate/up fused {statistics.median(times['fused']) * 1e3:.1f} ms")


def compile_step(args) -> None:
    import torch

    import tether.models.forward as forward
    from tether.models.loading import load_causal_lm
    from tether.utils.blocks import decoder_blocks
    from tether.utils.precision import autocast

    _, eager, _, prompt_ids, prompt_mask = setup()
    compiled = load_causal_lm("smollm2")
    for block in decoder_blocks(compiled):
        block.compile()
    device = torch.device("cpu")
    for share in (False, True):
        inputs, response_ids = training_inputs(prompt_ids, prompt_mask, share)

        def step(model, grad=True):
            model.train()
            with torch.set_grad_enabled(grad), autocast(device, args.precision):
                out = forward.policy_forward(model, inputs, response_ids)
            if grad:
                out.logprobs.sum().backward()
                model.zero_grad(set_to_none=True)
            return out.logprobs.detach()

        torch._dynamo.reset()
        start = time.perf_counter()
        compiled_lp = step(compiled)
        first = time.perf_counter() - start
        gap_eager = (compiled_lp - step(eager)).abs().max().item()
        gap_scoring = (compiled_lp - step(compiled, grad=False)).abs().max().item()
        times = alternate({"eager": lambda: step(eager), "compiled": lambda: step(compiled)}, args.reps)
        e, c = statistics.median(times["eager"]), statistics.median(times["compiled"])
        print(f"{args.precision}, shared prefix K = {inputs.shared_prefix}: compile + first step {first:.1f} s; "
              f"eager {e:.3f} s, compiled {c:.3f} s ({c / e:.3f}x); log-probs vs eager max {gap_eager:.2e}, "
              f"compiled scoring vs training max {gap_scoring:.2e}", flush=True)


def update(args) -> None:
    import torch

    import tether.models.forward as forward
    from tether.train.optim import make_adamw
    from tether.utils.precision import autocast

    _, model, _, prompt_ids, prompt_mask = setup()
    inputs, response_ids = training_inputs(prompt_ids, prompt_mask)
    model.train()
    device = torch.device("cpu")
    optimizer = make_adamw(model.parameters(), device, lr=1e-7)
    parts = {"forward": [], "backward": [], "clip": [], "AdamW": []}
    for rep in range(args.reps + 2):
        marks = [time.perf_counter()]
        with autocast(device, args.precision):
            out = forward.policy_forward(model, inputs, response_ids)
        marks.append(time.perf_counter())
        out.logprobs.sum().backward()
        marks.append(time.perf_counter())
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        marks.append(time.perf_counter())
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        marks.append(time.perf_counter())
        if rep >= 2:
            for name, a, b in zip(parts, marks, marks[1:]):
                parts[name].append(b - a)
    n_body, n_head = param_counts(model)
    positions = BATCH * inputs.input_ids.shape[1] - (BATCH - 1) * inputs.shared_prefix
    forward_flops = 2 * n_body * positions + 2 * n_head * BATCH * RESPONSE
    rate = matmul_rate(args.precision)
    ideal = {"forward": forward_flops / rate, "backward": 2 * forward_flops / rate}
    print(f"{args.precision}, {positions} positions computed (K = {inputs.shared_prefix}), 2048^3 rate {rate / 1e9:.1f} GFLOP/s")
    for name, t in parts.items():
        median = statistics.median(t)
        extra = f" (FLOPs at the 2048^3 rate: {ideal[name]:.3f} s = {ideal[name] / median:.0%})" if name in ideal else ""
        print(f"  {name:>8}: {median:.3f} s{extra}")


def main(argv=None) -> None:
    args = parse_args(argv)
    {"shapes": shapes, "decode": decode, "compile": compile_step, "update": update}[args.what](args)


if __name__ == "__main__":
    main()
