"""Seconds per PPO iteration, per phase, and achieved FLOP/s of tether's loop on SmolLM2-135M.

The iteration is tether's own: roles from ``tether.train.roles.build_roles``, the loop's
optimizer, schedule and β controller (``tether.train.iteration.build_optimization``), and
``tether.train.iteration.iterate``, the function ``tether ppo`` calls once per iteration. The
one difference: responses are forced to exactly --response-tokens tokens
(SamplingSettings.min_new_tokens = max_new_tokens, i.e. EOS suppressed until then), so every
iteration does the same work. Nothing is written to disk (no run directory).

    .venv/bin/python benchmarks/ppo_iteration.py --precision fp32 --critic separate --iterations 2 --warmup 1

Prints a table on stdout; --json FILE writes the figures (used by vs_trl.py).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import PROMPTS, iteration_flops, log, make_reward_model, matmul_rate, param_counts, peak_rss_mb  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    p.add_argument("--critic", choices=["separate", "shared"], default="separate")
    p.add_argument("--iterations", type=int, default=2, help="measured iterations")
    p.add_argument("--warmup", type=int, default=1, help="unmeasured iterations first")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--micro-batch-size", type=int, default=8)
    p.add_argument("--response-tokens", type=int, default=48)
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--reward-model", default=None, help="scalar-head folder (default: a fresh-head SmolLM2 in a temp dir)")
    p.add_argument("--no-matmul", action="store_true", help="skip the matmul-rate measurement")
    p.add_argument("--json", default=None, help="write the figures to this file")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--profile", type=int, default=0, metavar="N",
                   help="after the measured iterations, run one more under torch.profiler and print the top N ops")
    return p.parse_args(argv)


def build(args, reward_folder: Path | None, **fields):
    """The loop's state for one PPO iteration as ``tether ppo`` builds it; ``fields`` replace
    PPOConfig fields (benchmarks/vs_trl_stages.py runs GRPO and RLOO through it)."""
    import torch

    from tether.models.loading import resolve_device
    from tether.rollout.engine import HFEngine
    from tether.rollout.generation import SamplingSettings
    from tether.rollout.prompts import PromptStream
    from tether.train.algorithms import algorithm_for
    from tether.train.iteration import IterationState, build_optimization
    from tether.train.ppo_config import PPOConfig
    from tether.train.roles import build_roles
    from tether.utils.host_memory import keep_freed_host_memory
    from tether.utils.seeding import seed_everything

    config = PPOConfig(**{
        "policy": "smollm2", "reward_model": str(reward_folder), "critic": args.critic, "batch_size": args.batch_size,
        "mini_batch_size": args.batch_size, "micro_batch_size": args.micro_batch_size,
        "forward_batch_size": args.batch_size, "ppo_epochs": args.epochs, "max_new_tokens": args.response_tokens,
        "precision": args.precision, "device": "cpu", "total_iterations": args.warmup + args.iterations,
        "seed": args.seed, "quiet": True, **fields,
    })
    algorithm = algorithm_for(config)
    device = resolve_device(config.device)
    seed_everything(config.seed)
    keep_freed_host_memory()  # as train_ppo does
    roles = build_roles(config.model_settings, config.reward_settings, device, algorithm.needs_critic)
    prompts = PromptStream(PROMPTS, roles.tokenizer, config.chat_template, config.max_prompt_tokens, config.seed)
    sampling = SamplingSettings(config.max_new_tokens, config.temperature, config.top_k, config.top_p,
                                min_new_tokens=config.max_new_tokens)
    # The loop's own optimizer, schedule and controller (fused AdamW on CPU and CUDA).
    optimizer, scheduler, kl_ctl = build_optimization(config, roles, algorithm, device)
    engine = HFEngine(roles.policy, roles.tokenizer, device, config.precision, sharded=roles.actor)
    state = IterationState(config, algorithm, roles, engine, sampling, optimizer, scheduler, kl_ctl,
                           torch.Generator().manual_seed(config.seed), device)
    return dict(state=state, prompts=prompts, roles=roles, optimizer=optimizer)


def one_iteration(s) -> dict:
    """One ``iterate`` (what train_ppo runs per iteration, minus logging and the run directory)."""
    from tether.models.forward import build_inputs
    from tether.train.iteration import iterate

    state = s["state"]
    config = state.config
    c0 = time.process_time()  # CPU seconds of this process (all threads): far less load-sensitive than wall time
    batch_prompts, batch_ids = s["prompts"].next_batch(config.batch_size, config.samples_per_prompt)
    result = iterate(state, batch_prompts, batch_ids)
    c3 = time.process_time()
    t, rollout = result.timings, result.scored.rollout
    lengths = rollout.response_lengths
    shared = build_inputs(rollout.prompt_ids, rollout.prompt_mask, rollout.response_ids, rollout.response_mask)
    return {
        "generate_s": t.generate_s, "score_s": t.score_s, "update_s": t.update_s, "iteration_s": t.iteration_s,
        "iteration_cpu_s": c3 - c0,
        "B": len(rollout), "P": int(rollout.prompt_ids.shape[1]), "R": int(rollout.response_ids.shape[1]),
        "K": shared.shared_prefix,
        "prompt_tokens_mean": rollout.prompt_mask.sum(1).float().mean().item(),
        "response_tokens_mean": lengths.float().mean().item(), "response_tokens_min": int(lengths.min().item()),
        "optimizer_steps": result.updates.steps,
    }


def profile_iteration(s, top: int) -> None:
    """One extra (unmeasured) iteration under torch.profiler: where the CPU time goes, by op,
    plus optimizer.step and clip_grad_norm_ as their own labelled ranges."""
    import torch
    from torch.profiler import ProfilerActivity, profile, record_function

    opt = s["optimizer"]
    step = opt.step

    def labelled_step(*a, **k):
        with record_function("## optimizer.step"):
            return step(*a, **k)

    opt.step = labelled_step
    clip = torch.nn.utils.clip_grad_norm_

    def labelled_clip(*a, **k):
        with record_function("## clip_grad_norm_"):
            return clip(*a, **k)

    torch.nn.utils.clip_grad_norm_ = labelled_clip
    try:
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            row = one_iteration(s)
    finally:
        opt.step = step
        torch.nn.utils.clip_grad_norm_ = clip
    log(f"profiled iteration (with profiler overhead): {row['iteration_s']:.1f} s "
        f"(generate {row['generate_s']:.1f}, score {row['score_s']:.1f}, update {row['update_s']:.1f})")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=top, max_name_column_width=40))
    labelled = [e for e in prof.key_averages() if e.key.startswith("## ")]
    for e in labelled:
        print(f"{e.key}: {e.count} calls, {e.cpu_time_total / 1e6:.2f} s total")


def run(args) -> dict:
    import torch

    log(f"torch {torch.__version__}, threads {torch.get_num_threads()}")
    with tempfile.TemporaryDirectory(prefix="tether-bench-") as tmp:
        reward_folder = Path(args.reward_model) if args.reward_model else make_reward_model(Path(tmp) / "rm")
        t_load = time.perf_counter()
        s = build(args, reward_folder)
        load_s = time.perf_counter() - t_load
        rates = {}
        if not args.no_matmul:
            rates = {p: matmul_rate(p) for p in ("fp32", "bf16")}
        n_body, n_head = param_counts(s["roles"].policy)
        rows = []
        for i in range(args.warmup + args.iterations):
            row = one_iteration(s)
            row["warmup"] = i < args.warmup
            rows.append(row)
            log(f"{'warmup' if row['warmup'] else 'measured'} iteration {i + 1}: {row['iteration_s']:.1f} s "
                f"(generate {row['generate_s']:.1f}, score {row['score_s']:.1f}, update {row['update_s']:.1f})")
        if args.profile:
            profile_iteration(s, args.profile)
        if not args.no_matmul:  # measure again after the run: the machine's load changes; keep the best
            rates = {p: max(rates[p], matmul_rate(p)) for p in ("fp32", "bf16")}
    measured = [r for r in rows if not r["warmup"]] or rows
    med = {k: statistics.median(r[k] for r in measured) for k in ("generate_s", "score_s", "update_s", "iteration_s")}
    last = measured[-1]
    flops = iteration_flops(n_body, n_head, last["B"], last["P"], last["R"], args.epochs, args.critic == "separate",
                            shared_prefix=last["K"])
    achieved = {k: flops[k] / med[f"{'iteration' if k == 'total' else k}_s"] for k in flops}
    result = {
        "framework": "tether", "precision": args.precision, "critic": args.critic, "batch_size": args.batch_size,
        "micro_batch_size": args.micro_batch_size, "epochs": args.epochs, "iterations": args.iterations,
        "warmup": args.warmup, "load_s": load_s, "n_body": n_body, "n_head": n_head, "rows": rows,
        "median": med, "flops": flops, "achieved_flops_per_s": achieved, "matmul_flops_per_s": rates,
        "fraction_of_matmul": ({k: v / rates[args.precision] for k, v in achieved.items()} if rates else {}),
        "peak_rss_mb": peak_rss_mb(), "torch_threads": torch.get_num_threads(),
    }
    return result


def print_table(r: dict) -> None:
    m, f, a = r["median"], r["flops"], r["achieved_flops_per_s"]
    frac = r["fraction_of_matmul"]
    last = [x for x in r["rows"] if not x["warmup"]][-1]
    print(f"tether PPO iteration, SmolLM2-135M, {r['precision']}, critic={r['critic']}, batch {r['batch_size']}, "
          f"micro {r['micro_batch_size']}, {r['epochs']} epochs, 1 minibatch, "
          f"prompt width {last['P']} (mean {last['prompt_tokens_mean']:.1f} tokens, {last['K']} shared by every row), "
          f"response {last['R']} tokens; "
          f"median of {r['iterations']} after {r['warmup']} warm-up")
    print(f"N_body = {r['n_body'] / 1e6:.1f} M, N_head = {r['n_head'] / 1e6:.1f} M")
    print(f"{'phase':<10} {'s/iter':>8} {'GFLOP':>9} {'GFLOP/s':>9} {'of matmul':>10}")
    for k, key in (("generate", "generate_s"), ("score", "score_s"), ("update", "update_s"), ("total", "iteration_s")):
        fr = f"{frac[k]:.1%}" if frac else "-"
        print(f"{k:<10} {m[key]:8.2f} {f[k] / 1e9:9.1f} {a[k] / 1e9:9.2f} {fr:>10}")
    if r["matmul_flops_per_s"]:
        mm = r["matmul_flops_per_s"]
        print(f"matmul 2048^2 rate, same run: fp32 {mm['fp32'] / 1e9:.1f} GFLOP/s, bf16 {mm['bf16'] / 1e9:.1f} GFLOP/s")
    print(f"peak RSS {r['peak_rss_mb']:.0f} MiB; model load {r['load_s']:.1f} s; per-iteration s: "
          + ", ".join(f"{x['iteration_s']:.1f}{'(w)' if x['warmup'] else ''}" for x in r["rows"]))


def main(argv=None) -> None:
    args = parse_args(argv)
    result = run(args)
    print_table(result)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
