"""``tether demo``: the whole pipeline (sample, label, reward model, PPO, evaluate, report) on
SmolLM2-135M-Instruct, about 20 minutes on 2 CPU cores; ``--quick`` for a minutes-long pass."""

from __future__ import annotations

import argparse
import os


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "demo", help="run the whole RLHF pipeline on a real model and write a report (make demo)",
        description="Sample pairs from the SFT model, label them with a simulated human, train a reward model, "
                    "run PPO, evaluate SFT vs PPO on held-out prompts, and write report.html.",
    )
    parser.add_argument("--config", help="YAML file of DemoConfig fields (configs/demo.yaml)")
    parser.add_argument("--quick", action="store_true", help="every phase, small: a few minutes (seconds on tiny-llama)")
    parser.add_argument("--model", help="SFT policy and reward-model backbone (default smollm2; tiny-llama for tests)")
    parser.add_argument("--labeler", help="the simulated human, module:function(prompt, responses) -> ranking "
                                          "(default tether.demo.gold:gold_labeler)")
    parser.add_argument("--out", help="run directory (default runs/demo-<timestamp>)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing demo run at --out")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="DemoConfig field overrides")
    parser.set_defaults(func=cmd_demo)


def build_config(args: argparse.Namespace):
    from tether.config import load_config
    from tether.demo.config import QUICK, DemoConfig

    overrides = [f"{k}={v}" for k, v in QUICK.items()] if args.quick else []
    if args.model:
        overrides.append(f"model={args.model}")
    if args.labeler:
        overrides.append(f"labeler={args.labeler}")
    if args.out:
        out = os.path.normpath(args.out)
        overrides += [f"output_dir={os.path.dirname(out) or '.'}", f"run_name={os.path.basename(out)}"]
    if args.overwrite:
        overrides.append("overwrite=true")
    return load_config(DemoConfig, args.config, overrides + list(args.overrides))


def cmd_demo(args: argparse.Namespace) -> int:
    from tether.utils.threads import threads_from_env
    from tether.demo.pipeline import run_demo

    config = build_config(args)
    threads_from_env()
    result = run_demo(config)
    print()
    for line in result.summary_lines():
        print(line)
    print(f"report: {result.report}")
    return 0
