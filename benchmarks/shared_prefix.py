"""What running a shared prompt prefix once (tether/data/sequences.py) saves on SmolLM2-135M.

Two measurements, each alternating its variants inside one process (the machine drifts 5-15 %
between runs; alternating on the same loaded models does not):

* ``sweep``: one policy forward + backward over batch 8 of the benchmark's chat-templated
  prompts (K = 24 common tokens) and 48 response tokens, with the shared prefix capped at each
  K of ``--ks`` (0 = no sharing). Chooses ``MIN_SHARED_PREFIX``.
* ``iteration``: whole PPO iterations of ``ppo_iteration.py`` (four roles, batch 8, 4 epochs),
  alternating sharing off and on, ``--pairs`` times after one warm-up.

    .venv/bin/python benchmarks/shared_prefix.py sweep --precision bf16 --reps 6 --ks 0,1,2,4,8,24
    .venv/bin/python benchmarks/shared_prefix.py iteration --precision fp32 --critic separate --pairs 3
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import make_reward_model, smollm2_prompt_batch  # noqa: E402

NEVER = 10**9  # a MIN_SHARED_PREFIX no prompt reaches: sharing off


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("what", choices=["sweep", "iteration"])
    p.add_argument("--precision", choices=["fp32", "bf16"], default="bf16")
    p.add_argument("--reps", type=int, default=6, help="sweep: timed rounds over all K (after one untimed)")
    p.add_argument("--ks", default="0,1,2,4,8,24", help="sweep: prefix lengths to cap at")
    p.add_argument("--critic", choices=["separate", "shared"], default="separate")
    p.add_argument("--pairs", type=int, default=3, help="iteration: off/on pairs after one warm-up")
    return p.parse_args(argv)


def sweep(args) -> None:
    import torch

    import tether.data.sequences as sequences
    import tether.models.forward as forward
    from tether.utils.precision import autocast

    _, model, _, prompt_ids, prompt_mask = smollm2_prompt_batch(8)
    width = prompt_ids.shape[1]
    response_ids = torch.randint(0, model.config.vocab_size, (8, 48))
    response_mask = torch.ones_like(response_ids)
    full_length = sequences.common_prefix_length
    sequences.MIN_SHARED_PREFIX, sequences.MIN_SAVED_POSITIONS = 1, 1
    inputs = {}
    for k in (int(x) for x in args.ks.split(",")):
        sequences.common_prefix_length = lambda ids, mask, lead, k=k: min(full_length(ids, mask, lead), k)
        inputs[k] = sequences.build_inputs(prompt_ids, prompt_mask, response_ids, response_mask, share_prefix=k > 0)
        assert inputs[k].shared_prefix == k, (k, inputs[k].shared_prefix)
    sequences.common_prefix_length = full_length
    model.train()
    times = {k: [] for k in inputs}
    for rep in range(args.reps + 1):
        for k, batch in inputs.items():
            start = time.perf_counter()
            with autocast(torch.device("cpu"), args.precision):
                out = forward.policy_forward(model, batch, response_ids)
            out.logprobs.sum().backward()
            model.zero_grad(set_to_none=True)
            if rep:
                times[k].append(time.perf_counter() - start)
    base = statistics.median(times[min(times)])
    print(f"policy forward + backward, SmolLM2-135M, {args.precision}, batch 8 x ({width} + 48) tokens, "
          f"median of {args.reps}")
    for k, t in times.items():
        print(f"K = {k:3d}: {statistics.median(t):.3f} s  ({statistics.median(t) / base:.3f}x)")


def iteration(args) -> None:
    import ppo_iteration

    import tether.data.sequences as sequences

    config = ["--precision", args.precision, "--critic", args.critic]
    results = {"off": [], "on": []}
    default = sequences.MIN_SHARED_PREFIX
    with tempfile.TemporaryDirectory(prefix="tether-bench-") as tmp:
        state = ppo_iteration.build(ppo_iteration.parse_args(config), make_reward_model(Path(tmp) / "rm"))
        ppo_iteration.one_iteration(state)  # warm-up
        for _ in range(args.pairs):
            for name, minimum in (("off", NEVER), ("on", default)):
                sequences.MIN_SHARED_PREFIX = minimum
                row = ppo_iteration.one_iteration(state)
                results[name].append(row)
                print(f"{name:>3}: K = {row['K']:2d}, iteration {row['iteration_s']:.2f} s (generate "
                      f"{row['generate_s']:.2f}, score {row['score_s']:.2f}, update {row['update_s']:.2f})", flush=True)
    med = {name: {key: statistics.median(r[key] for r in rows) for key in ("score_s", "update_s", "iteration_s")}
           for name, rows in results.items()}
    for name, m in med.items():
        print(f"sharing {name}: median iteration {m['iteration_s']:.2f} s, score {m['score_s']:.2f}, "
              f"update {m['update_s']:.2f}")
    print(f"on / off: {med['on']['iteration_s'] / med['off']['iteration_s']:.3f}")


def main(argv=None) -> None:
    args = parse_args(argv)
    sweep(args) if args.what == "sweep" else iteration(args)


if __name__ == "__main__":
    main()
