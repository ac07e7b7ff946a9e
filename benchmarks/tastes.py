"""The taste suite: the demo pipeline, with the shipped defaults, once per simulated taste.

For each taste of ``tether.demo.tastes.TASTES`` (and each seed, and the missing-EOS rule off
and/or on) this runs ``tether demo`` with that taste's labeler and gold score, then writes one
table (``<out>/tastes.md`` and ``tastes.json``): labels (preferences, ties), reward-model
held-out accuracy with its 95% interval, reward-model score SFT -> PPO, gold score SFT -> PPO
with 95% intervals, the gold headroom (the mean over held-out prompts of the best of 16 SFT
samples' gold score: what reranking SFT samples could reach; tether.demo.headroom), the share of
that headroom PPO closed, the KL to the reference and the minutes taken.

The labeled responses and the best-of-16 samples come from the SFT policy and do not depend on
the taste: they are sampled once per seed and shared (``DemoConfig.tasks``).

    python benchmarks/tastes.py --out runs/tastes                       # every taste, seed 0
    python benchmarks/tastes.py --out runs/tastes --tastes gold --seeds 0,1,2
    python benchmarks/tastes.py --out runs/tastes --eos-penalty both    # the rule off and on
    python benchmarks/tastes.py --out runs/tastes --table-only          # rebuild the table
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

from tether.config import load_config
from tether.demo.config import DemoConfig
from tether.demo.tastes import TASTES
from tether.errors import TetherError
from tether.models.loading import resolve_device
from tether.utils.precision import resolve_precision
from tether.utils.threads import threads_from_env

EOS_SETTINGS = {"off": None, "on": -1.0}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="folder of the runs and the table")
    parser.add_argument("--tastes", default=",".join(TASTES), help="comma-separated names (default: all)")
    parser.add_argument("--seeds", default="0", help="comma-separated seeds")
    parser.add_argument("--eos-penalty", choices=("off", "on", "both"), default="off",
                        help="the missing-EOS rule (a cut-off answer scores -1): off (the default), on, or both")
    parser.add_argument("--table-only", action="store_true", help="rebuild the table from the runs already there")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="DemoConfig overrides for every run")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    tastes = [t for t in args.tastes.split(",") if t]
    unknown = [t for t in tastes if t not in TASTES]
    if unknown:
        parser.error(f"unknown taste(s) {unknown}; known: {', '.join(TASTES)}")
    seeds = [int(s) for s in args.seeds.split(",")]
    eos = ["off", "on"] if args.eos_penalty == "both" else [args.eos_penalty]
    base = load_config(DemoConfig, None, list(args.overrides))
    base = replace(base, precision=resolve_precision(base.precision, resolve_device(base.device)))
    threads_from_env()  # as `tether demo`: TETHER_THREADS pins torch's thread count

    if not args.table_only:
        for seed in seeds:
            tasks, best = sample_shared(replace(base, seed=seed), out / f"shared-seed{seed}")
            for taste in tastes:
                for setting in eos:
                    run_taste(replace(base, seed=seed, tasks=str(tasks), headroom_file=str(best)), taste, setting, out)
    rows = collect(out)
    write_table(rows, out)
    return 0


def sample_shared(config: DemoConfig, shared: Path) -> tuple[Path, Path]:
    """The SFT policy's labeled responses (step 1 of the demo) and its best-of-N samples on the
    held-out prompts: the same for every taste."""
    from tether.data.templates import prompt_text
    from tether.demo.headroom import sample_best_of
    from tether.demo.pipeline import demo_prompts, prompts_to_label, sample_pairs

    shared.mkdir(parents=True, exist_ok=True)
    train, held_out = demo_prompts(config)
    tasks = shared / "tasks.jsonl"
    if not tasks.exists():
        log(f"sampling {config.label_prompts} x {config.responses_per_prompt} SFT responses to label")
        sample_pairs(config, prompts_to_label(config, train), shared)
    best = shared / "best_of_n.json"
    if not best.exists():
        prompts = [prompt_text(p) for p in held_out]
        log(f"best-of-{config.headroom_samples}: sampling {len(prompts)} x {config.headroom_samples} SFT responses")
        sample_best_of(config.model, prompts, config.headroom_samples, config.max_new_tokens, config.temperature,
                       config.seed + 1, config.sample_batch_size, config.device, config.precision, best)
    return tasks, best


def run_taste(config: DemoConfig, taste: str, eos: str, out: Path) -> None:
    from tether.demo.pipeline import run_demo

    labeler, gold = TASTES[taste]
    name = f"{taste}-eos_{eos}-seed{config.seed}"
    if (out / name / "suite.json").exists():
        log(f"{name}: done before, kept")
        return
    run_config = replace(config, labeler=labeler, gold=gold, missing_eos_penalty=EOS_SETTINGS[eos],
                         output_dir=str(out), run_name=name, overwrite=True, quiet=True)
    log(f"{name}: running")
    started = time.perf_counter()
    record = {"taste": taste, "eos_penalty": eos, "seed": config.seed}
    try:
        result = run_demo(run_config)
        record["eval"] = result.eval
    except TetherError as exc:  # the reward-model gate, or a labeler that left too few pairs
        record["stopped"] = str(exc)
        log(f"{name}: stopped: {exc}")
    record["minutes"] = (time.perf_counter() - started) / 60
    verdict = out / name / "rm" / "rm_verdict.json"
    if verdict.exists():
        record["rm_verdict"] = json.loads(verdict.read_text(encoding="utf-8"))
    (out / name / "suite.json").write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")


def collect(out: Path) -> list[dict]:
    return [json.loads(p.read_text(encoding="utf-8")) for p in sorted(out.glob("*/suite.json"))]


def write_table(rows: list[dict], out: Path) -> None:
    lines = ["| taste | EOS rule | seed | labels: prefs (ties) | RM held-out acc [95%] | RM score SFT → PPO | "
             "gold SFT → PPO [95%] | separate | best-of-16 gold | headroom closed | KL | min |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        v = r.get("rm_verdict")
        acc = f"{v['accuracy']:.1%} [{v['ci95'][0]:.1%}, {v['ci95'][1]:.1%}]" if v else "n/a"
        if "eval" not in r:
            lines.append(f"| {r['taste']} | {r['eos_penalty']} | {r['seed']} | | {acc} | stopped before PPO | | | "
                         f"| | | {r['minutes']:.1f} |")
            continue
        e = r["eval"]
        p = e["policies"]
        counts = e.get("label_counts", {})
        sft_g, ppo_g = p["sft"]["gold"], p["ppo"]["gold"]
        head, closed = f"{e['gold_best_of_n']['best_of_n']:.3f}", e["headroom_closed"]
        lines.append(
            f"| {r['taste']} | {r['eos_penalty']} | {r['seed']} | {counts.get('preferences', '?')} "
            f"({counts.get('ties', '?')}) | {acc} | {p['sft']['rm']['mean']:.2f} → {p['ppo']['rm']['mean']:.2f} | "
            f"{sft_g['mean']:.3f} [{sft_g['ci95'][0]:.3f}, {sft_g['ci95'][1]:.3f}] → {ppo_g['mean']:.3f} "
            f"[{ppo_g['ci95'][0]:.3f}, {ppo_g['ci95'][1]:.3f}] | {'yes' if e['gold_intervals_separate'] else 'no'} | "
            f"{head} | {closed:.0%} | {p['ppo']['kl']['mean']:.2f} | {r['minutes']:.1f} |")
    (out / "tastes.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    (out / "tastes.json").write_text(json.dumps(rows, indent=2) + "\n", encoding="utf-8")
    print("\n".join(lines))


def log(message: str) -> None:
    print(f"[tastes] {message}", file=sys.stderr, flush=True)


if __name__ == "__main__":
    sys.exit(main())
