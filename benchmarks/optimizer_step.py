"""Cost of one AdamW step on SmolLM2-135M's parameters with torch's three implementations.

tether's loop builds ``torch.optim.AdamW(groups, weight_decay=..., eps=...)`` with neither
``foreach`` nor ``fused``: on CPU tensors torch then picks the single-tensor (for-loop) path
(``_single_tensor_adam``). This measures that path against ``foreach=True`` and
``fused=True`` (CPU fused AdamW kernel), alternating A B C A B C in one process.

    .venv/bin/python benchmarks/optimizer_step.py --rounds 3
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args(argv)

    import torch

    from tether.models.loading import load_causal_lm

    model = load_causal_lm("smollm2")
    params = [p for p in model.parameters() if p.requires_grad]
    n = sum(p.numel() for p in params)
    for prm in params:
        prm.grad = torch.randn_like(prm) * 1e-3
    variants = {"default (tether)": {}, "foreach=True": {"foreach": True}, "fused=True": {"fused": True}}
    opts = {name: torch.optim.AdamW(params, lr=1e-5, **kw) for name, kw in variants.items()}
    for opt in opts.values():  # first step allocates the moment buffers
        opt.step()
    times = {name: [] for name in opts}
    for _ in range(args.rounds):
        for name, opt in opts.items():
            t0 = time.perf_counter()
            opt.step()
            times[name].append(time.perf_counter() - t0)
    base = statistics.median(times["default (tether)"])
    print(f"AdamW step over {n / 1e6:.1f} M parameters (one SmolLM2-135M; tether steps policy + separate critic = 2x this), "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads, median of {args.rounds}, alternated")
    for name, ts in times.items():
        med = statistics.median(ts)
        print(f"  {name:<18} {med:6.3f} s   ({med / base:.2f}x default)   " + ", ".join(f"{t:.3f}" for t in ts))


if __name__ == "__main__":
    main()
