"""tether against TRL 1.12's PPOTrainer (``trl.experimental.ppo``) on the same PPO iteration.

Both sides: SmolLM2-135M-Instruct policy (the converted folder from tether's registry; no hub),
a frozen reference copy, a separate value model and a reward model, both
``AutoModelForSequenceClassification(num_labels=1)`` loaded from one fresh-head scalar reward
model folder (the critic starts from the reward model on both sides), batch 8 prompts from one
fixed list through SmolLM2's chat template, exactly 48 response tokens (TRL: no stop token;
tether: EOS suppressed until 48 tokens), 4 PPO epochs, 1 minibatch, micro batch 8, same precision.

Each measurement is its own subprocess (fresh process, models loaded, --warmup iterations
unmeasured, then --iterations measured), run A B C A B C ... for --rounds rounds, so that the
load of a shared machine hits every side alike:
    A = tether, critic separate (the same setup as TRL)
    B = TRL PPOTrainer
    C = tether, critic shared (tether's recommended setting on CPU)
    D = TRL again, with glibc's allocator set the way tether sets it for itself
        (tether/utils/host_memory.py, through GLIBC_TUNABLES): how much of the gap that one
        setting is, as a control
Reported: median seconds per iteration of each, the ratios to TRL, each child's peak RSS
(os.wait4 rusage of that child), and tether's achieved FLOP/s as a fraction of the bf16/fp32
matmul rate measured by this process between the children.

    make bench                                       # defaults below
    .venv-bench/bin/python benchmarks/vs_trl.py --precision fp32 --rounds 2 --warmup 1 --iterations 1
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from common import PROMPTS, StepStamps, log, make_reward_model, matmul_rate, run_measured_child  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    p.add_argument("--rounds", type=int, default=2, help="A B C rounds (each side measured once per round)")
    p.add_argument("--warmup", type=int, default=1, help="unmeasured iterations at the start of each child")
    p.add_argument("--iterations", type=int, default=1, help="measured iterations per child")
    p.add_argument("--sides", default="trl,tether,tether-shared,trl-malloc", help="comma list of sides, in round order")
    p.add_argument("--json", default=None, help="write all figures to this file")
    p.add_argument("--child", choices=["tether", "tether-shared", "trl"], default=None, help=argparse.SUPPRESS)
    p.add_argument("--reward-model", default=None, help=argparse.SUPPRESS)
    p.add_argument("--out", default=None, help=argparse.SUPPRESS)
    return p.parse_args(argv)


# ----- children -------------------------------------------------------------------------------------


def child_tether(args, critic: str) -> dict:
    import ppo_iteration

    child_args = ppo_iteration.parse_args([
        "--precision", args.precision, "--critic", critic, "--iterations", str(args.iterations),
        "--warmup", str(args.warmup), "--reward-model", args.reward_model, "--no-matmul",
    ])
    r = ppo_iteration.run(child_args)
    measured = [x for x in r["rows"] if not x["warmup"]]
    return {"iteration_s": [x["iteration_s"] for x in measured],
            "iteration_cpu_s": [x["iteration_cpu_s"] for x in measured], "rows": r["rows"], "flops": r["flops"],
            "median": r["median"], "load_s": r["load_s"]}


def child_trl(args) -> dict:
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer
    from trl.experimental.ppo import PPOConfig, PPOTrainer

    from tether.data.templates import encode_prompt
    from tether.models.registry import resolve_model

    t_load = time.perf_counter()
    torch.manual_seed(0)
    path = str(resolve_model("smollm2"))
    tokenizer = AutoTokenizer.from_pretrained(path, padding_side="left")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    # Same prompt tokens as tether (tether's own chat-template encoding).
    ids = [encode_prompt(tokenizer, p, "auto") for p in PROMPTS]
    dataset = Dataset.from_dict({"input_ids": ids})
    n_iter = args.warmup + args.iterations
    batch = 8
    out_dir = tempfile.mkdtemp(prefix="trl-bench-")
    config = PPOConfig(
        output_dir=out_dir, per_device_train_batch_size=batch, gradient_accumulation_steps=1, num_mini_batches=1,
        num_ppo_epochs=4, response_length=48, total_episodes=batch * n_iter, local_rollout_forward_batch_size=batch,
        stop_token=None, missing_eos_penalty=None, num_sample_generations=0, report_to="none", save_strategy="no",
        logging_strategy="no", learning_rate=1e-5, seed=0, use_cpu=True, disable_tqdm=True, kl_coef=0.05,
        vf_coef=0.1, cliprange=0.2, cliprange_value=0.2, gamma=1.0, lam=0.95, temperature=1.0,
    )
    if args.precision == "bf16":  # TRL builds its own Accelerator, which reads this
        os.environ["ACCELERATE_MIXED_PRECISION"] = "bf16"
    else:
        os.environ["ACCELERATE_MIXED_PRECISION"] = "no"
    policy = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    ref = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    value = AutoModelForSequenceClassification.from_pretrained(args.reward_model, num_labels=1, dtype=torch.float32)
    reward = AutoModelForSequenceClassification.from_pretrained(args.reward_model, num_labels=1, dtype=torch.float32)
    for m in (value, reward):
        m.config.pad_token_id = tokenizer.pad_token_id
    timer = StepStamps()  # on_step_end runs once per iteration in trl.experimental.ppo.PPOTrainer.train
    trainer = PPOTrainer(args=config, processing_class=tokenizer, model=policy, ref_model=ref, reward_model=reward,
                         train_dataset=dataset, value_model=value, callbacks=[timer.callback()])
    log(f"TRL accelerator mixed precision: {trainer.accelerator.mixed_precision}; device {trainer.accelerator.device}")
    load_s = time.perf_counter() - t_load
    trainer.train()
    per_iter, per_cpu = timer.intervals()
    for i, s in enumerate(per_iter):
        log(f"TRL {'warmup' if i < args.warmup else 'measured'} iteration {i + 1}: {s:.1f} s")
    return {"iteration_s": per_iter[args.warmup:], "all_iteration_s": per_iter,
            "iteration_cpu_s": per_cpu[args.warmup:], "load_s": load_s,
            "mixed_precision": str(trainer.accelerator.mixed_precision)}


# ----- parent ---------------------------------------------------------------------------------------


def run_child(side: str, args, reward_folder: Path, workdir: Path, index: int) -> dict:
    out = workdir / f"{index:02d}-{side}.json"
    child = "trl" if side == "trl-malloc" else side
    env = dict(os.environ)
    if side == "trl-malloc":  # the two mallopt settings of tether/utils/host_memory.py, from outside
        env["GLIBC_TUNABLES"] = "glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=2147483647"
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", child, "--precision", args.precision,
           "--warmup", str(args.warmup), "--iterations", str(args.iterations), "--reward-model", str(reward_folder),
           "--out", str(out)]
    log(f"[{index}] {side}: {' '.join(cmd[1:])}")
    peak_rss, wall = run_measured_child(cmd, workdir / f"{index:02d}-{side}.log", env)
    result = json.loads(out.read_text())
    result.update(side=side, peak_rss_mb=peak_rss, wall_s=wall)
    log(f"[{index}] {side}: iterations {', '.join(f'{s:.1f}' for s in result['iteration_s'])} s; "
        f"peak RSS {result['peak_rss_mb']:.0f} MiB; child wall {wall:.0f} s")
    return result


def parent(args) -> dict:
    import torch

    sides = args.sides.split(",")
    workdir = Path(tempfile.mkdtemp(prefix="vs-trl-"))
    reward_folder = make_reward_model(workdir / "rm")
    rates = {"fp32": [], "bf16": []}
    results: dict[str, list] = {s: [] for s in sides}
    index = 0
    for rnd in range(args.rounds):
        for side in sides:
            for p in rates:  # the machine's matmul rate, between children, in this run
                rates[p].append(matmul_rate(p, seconds=1.0))
            results[side].append(run_child(side, args, reward_folder, workdir, index))
            index += 1
            # partial results after every child, so a cut-short run still leaves its figures
            (workdir / "partial.json").write_text(json.dumps(results, indent=1))
    for p in rates:
        rates[p].append(matmul_rate(p, seconds=1.0))
    summary = {"precision": args.precision, "rounds": args.rounds, "warmup": args.warmup,
               "iterations": args.iterations, "torch": torch.__version__, "threads": torch.get_num_threads(),
               "matmul_flops_per_s": {p: statistics.median(v) for p, v in rates.items()},
               "matmul_samples": rates, "sides": {}}
    for side, runs in results.items():
        its = [s for r in runs for s in r["iteration_s"]]
        cpus = [s for r in runs for s in r.get("iteration_cpu_s", [])]
        entry = {"median_s": statistics.median(its), "iteration_s": its,
                 "median_cpu_s": statistics.median(cpus) if cpus else None, "iteration_cpu_s": cpus,
                 "peak_rss_mb": max(r["peak_rss_mb"] for r in runs)}
        if "flops" in runs[0]:
            total = runs[0]["flops"]["total"]
            entry["flops_per_iteration"] = total
            entry["achieved_flops_per_s"] = total / entry["median_s"]
            entry["fraction_of_matmul"] = entry["achieved_flops_per_s"] / summary["matmul_flops_per_s"][args.precision]
            entry["phase_median_s"] = {k: statistics.median(r["median"][k] for r in runs)
                                       for k in ("generate_s", "score_s", "update_s")}
        if "mixed_precision" in runs[0]:
            entry["mixed_precision"] = runs[0]["mixed_precision"]
        summary["sides"][side] = entry
    summary["workdir"] = str(workdir)
    return summary


def print_summary(s: dict) -> None:
    mm = s["matmul_flops_per_s"]
    print(f"PPO iteration, SmolLM2-135M x4 roles, batch 8, 48 response tokens, 4 epochs, 1 minibatch, "
          f"{s['precision']}; {s['rounds']} rounds x {s['iterations']} measured iteration(s) after {s['warmup']} warm-up, "
          f"torch {s['torch']}, {s['threads']} threads")
    print(f"matmul 2048^2 rate in this run (median): fp32 {mm['fp32'] / 1e9:.1f} GFLOP/s, bf16 {mm['bf16'] / 1e9:.1f} GFLOP/s")
    trl = s["sides"].get("trl")
    print(f"{'side':<15} {'median s/it':>11} {'vs TRL':>8} {'peak RSS MiB':>13} {'GFLOP/s':>8} {'of matmul':>10}  iterations")
    for side, e in s["sides"].items():
        ratio = f"{e['median_s'] / trl['median_s']:.2f}x" if trl else "-"
        gf = f"{e['achieved_flops_per_s'] / 1e9:.2f}" if "achieved_flops_per_s" in e else "-"
        fr = f"{e['fraction_of_matmul']:.1%}" if "fraction_of_matmul" in e else "-"
        print(f"{side:<15} {e['median_s']:11.1f} {ratio:>8} {e['peak_rss_mb']:13.0f} {gf:>8} {fr:>10}  "
              + ", ".join(f"{x:.1f}" for x in e["iteration_s"]))
    for side, e in s["sides"].items():
        if "phase_median_s" in e:
            ph = e["phase_median_s"]
            print(f"{side} phases (median s): generate {ph['generate_s']:.1f}, score {ph['score_s']:.1f}, "
                  f"update {ph['update_s']:.1f}")
    if trl and trl.get("median_cpu_s"):
        for side, e in s["sides"].items():
            if e.get("median_cpu_s"):
                print(f"{side}: median CPU seconds per iteration {e['median_cpu_s']:.1f} "
                      f"({e['median_cpu_s'] / trl['median_cpu_s']:.2f}x TRL)")
    print("(ratio < 1: tether faster. Machine shared with other jobs: compare ratios, not absolute times.)")


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.child:
        result = child_trl(args) if args.child == "trl" else child_tether(
            args, "shared" if args.child == "tether-shared" else "separate")
        Path(args.out).write_text(json.dumps(result))
        return
    summary = parent(args)
    print_summary(summary)
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
