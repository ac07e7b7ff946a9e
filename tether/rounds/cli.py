"""``tether rlhf``: R rounds of sample -> label -> reward model -> PPO (tether.rounds.pipeline)."""

from __future__ import annotations

import argparse
from pathlib import Path

# What may change when a run is continued; anything else would make its rounds differ in kind.
RESUME_OVERRIDES = ("label_deadline_s", "min_round_preferences", "poll_interval_s", "labelers",
                    "label_server", "host", "port", "require_learned_reward", "checkpoint_every", "quiet")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "rlhf", help="iterated online RLHF: rounds of sample, label (people or simulated), reward model, PPO",
        description="R rounds of: sample comparison tasks from the current policy, get them labeled (on the "
                    "labeling page, or by a simulated labeler), retrain the reward model on every label so far, "
                    "and continue PPO from the current policy and critic. Writes rounds.jsonl and report.html.",
    )
    parser.add_argument("--config",
                        help="YAML file of RoundsConfig fields (tether/rounds/config.py; configs/rlhf-tiny.yaml)")
    parser.add_argument("--resume", metavar="RUN_DIR",
                        help="continue RUN_DIR at its first unfinished stage, with its own rlhf.yaml "
                             f"(overrides allowed: {', '.join(RESUME_OVERRIDES)})")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="RoundsConfig field overrides")
    parser.set_defaults(func=cmd_rlhf)


def build_config(args: argparse.Namespace):
    from tether.config import load_config
    from tether.errors import ConfigError
    from tether.rounds.config import RoundsConfig

    if not args.resume:
        return load_config(RoundsConfig, args.config, list(args.overrides))
    run = Path(args.resume)
    if not (run / "rlhf.yaml").is_file():
        raise ConfigError(f"--resume {run}: no rlhf.yaml there; pass the run directory (runs/<run_name>)")
    if args.config:
        raise ConfigError("--resume uses the run's own rlhf.yaml; leave out --config")
    for override in args.overrides:
        if override.split("=", 1)[0] not in RESUME_OVERRIDES:
            raise ConfigError(f"--resume keeps the run's config; only {', '.join(RESUME_OVERRIDES)} may change, "
                              f"not '{override}' (start a new run for that)")
    where = [f"output_dir={run.parent}", f"run_name={run.name}", "resume=auto"]
    return load_config(RoundsConfig, run / "rlhf.yaml", [*args.overrides, *where])


def cmd_rlhf(args: argparse.Namespace) -> int:
    from tether.utils.threads import threads_from_env
    from tether.rounds.pipeline import run_rlhf

    config = build_config(args)
    threads_from_env()
    result = run_rlhf(config)
    print()
    for row in result.rows:
        print(describe_row(row))
    if result.report is not None:
        print(f"report: {result.report}")
    return 0


def describe_row(row: dict) -> str:
    parts = [f"round {row['round']}: {row['labels_so_far']} preferences so far"]
    if "rm_accuracy" in row:
        parts.append(f"reward model held-out {row['rm_accuracy']:.1%}")
    if "rm_score" in row:
        parts.append(f"RM score SFT {row['sft_rm_score']:.3f} -> policy {row['rm_score']:.3f}")
    if "gold_score" in row:
        parts.append(f"gold SFT {row['sft_gold_score']:.3f} -> policy {row['gold_score']:.3f}")
    if "kl" in row:
        parts.append(f"KL {row['kl']:.2f}")
    return "; ".join(parts)
