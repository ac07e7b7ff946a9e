"""``tether sft``, ``tether train-rm``, ``tether dpo`` (``--config FILE.yaml`` and trailing
``key=value`` overrides) and ``tether eval-rm --model DIR --data FILE``."""

from __future__ import annotations

import argparse
import importlib
import json
import math
from dataclasses import dataclass
from pathlib import Path

from tether.config import load_config


@dataclass(frozen=True)
class ConfigCommand:
    """A command that fills its typed config from ``--config FILE.yaml`` and ``key=value``
    overrides and runs one training function on it (both imported only when it runs)."""

    name: str
    help: str
    module: str  # where the config class and the training function live
    config_class: str
    train: str  # train(config) -> the folder written
    done: str  # the line printed after, {path}: the folder train returned
    description: str = ""  # the command's --help text; default: help
    example: str = ""  # a config file of configs/ to start from


CONFIG_COMMANDS = (
    ConfigCommand("sft", help="supervised fine-tuning on demonstrations (completion-only loss)",
                  description="Supervised fine-tuning: loss on completion tokens only; saves a causal LM.",
                  module="tether.train.sft", config_class="SFTConfig", train="train_sft",
                  done="SFT model written to {path}"),
    ConfigCommand("train-rm", help="train a Bradley-Terry reward model on preference pairs",
                  description="Reward model: Bradley-Terry loss, then score normalisation (mean 0, std 1).",
                  module="tether.train.reward_model", config_class="RewardModelConfig", train="train_reward_model",
                  done="reward model written to {path}  (use it as: tether ppo reward_model={path})"),
    ConfigCommand("dpo", help="DPO: fit the policy to preference pairs directly (no reward model, no sampling); "
                              "cDPO and IPO variants",
                  module="tether.train.dpo", config_class="DPOConfig", train="train_dpo",
                  done="run written to {path}  (policy: {path}/policy)", example="configs/dpo-tiny.yaml"),
)


def register(subparsers) -> None:
    for command in CONFIG_COMMANDS:
        parser = subparsers.add_parser(command.name, help=command.help,
                                       description=command.description or command.help)
        example = f" (see {command.example})" if command.example else ""
        parser.add_argument("--config", help=f"YAML config{example}; fields of {command.module}.{command.config_class}")
        parser.add_argument("overrides", nargs="*", help="key=value overrides applied after the file")
        parser.set_defaults(func=_run_config_command, config_command=command)

    ev = subparsers.add_parser("eval-rm", help="accuracy, margin histogram and calibration of a reward model",
                               description="Evaluate a saved reward model on preference data.")
    ev.add_argument("--model", required=True, help="reward model folder (from tether train-rm)")
    ev.add_argument("--data", required=True, help="preference file or datasets folder")
    ev.add_argument("--split", default=None, help="split of a DatasetDict folder")
    ev.add_argument("--out", default=None, help="where to write eval_rm.json and the PNGs (default: MODEL/eval)")
    ev.add_argument("--batch-size", type=int, default=16)
    ev.add_argument("--max-length", type=int, default=1024)
    ev.add_argument("--bins", type=int, default=10, help="calibration bins over confidence [0.5, 1]")
    ev.add_argument("--device", default="auto")
    ev.add_argument("--skip-bad-rows", action="store_true", help="count and skip malformed rows")
    ev.set_defaults(func=_run_eval_rm)


def _run_config_command(args: argparse.Namespace) -> int:
    command: ConfigCommand = args.config_command
    module = importlib.import_module(command.module)
    config = load_config(getattr(module, command.config_class), args.config, args.overrides)
    path = getattr(module, command.train)(config)
    print(command.done.format(path=path))
    return 0


def _run_eval_rm(args: argparse.Namespace) -> int:
    from tether.config import Range, check_option
    from tether.train.rm_evaluation import evaluate_reward_model

    for flag, value in (("--batch-size", args.batch_size), ("--max-length", args.max_length), ("--bins", args.bins)):
        check_option(flag, value, Range(ge=1))
    result = evaluate_reward_model(args.model, args.data, args.split, args.skip_bad_rows, args.batch_size,
                                   args.max_length, device=args.device, bins=args.bins)
    out = Path(args.out) if args.out else Path(args.model) / "eval"
    out.mkdir(parents=True, exist_ok=True)
    m = result.metrics
    report = {"model": str(args.model), "data": str(args.data), **m, "calibration": result.calibration}
    (out / "eval_rm.json").write_text(json.dumps(_finite(report), indent=2) + "\n", encoding="utf-8")
    written = _plots(result, out)
    print(f"pairs {int(m['pairs'])}   accuracy {m['accuracy']:.3f}   mean margin {m['margin']:.3f}   "
          f"BT loss {m['loss']:.3f}   ECE {m['ece']:.3f}")
    print("calibration (confidence bin: pairs, mean confidence -> accuracy):")
    for row in result.calibration:
        if row["count"]:
            print(f"  [{row['lo']:.2f}, {row['hi']:.2f}): {int(row['count']):5d}  "
                  f"{row['confidence']:.3f} -> {row['accuracy']:.3f}")
    print(f"written: {out / 'eval_rm.json'}" + "".join(f", {p}" for p in written))
    return 0


def _plots(result, out: Path) -> list[Path]:
    """Margin histogram and reliability diagram; skipped (with a note) without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("note: matplotlib not installed: no PNGs (pip install 'tether[report]')")
        return []
    gap = (result.chosen - result.rejected).numpy()
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.hist(gap, bins=40, color="#4c72b0")
    ax.axvline(0.0, color="black", linewidth=1)
    ax.set(xlabel="r(x, chosen) - r(x, rejected)  (normalised)", ylabel="pairs",
           title=f"margin: accuracy {result.metrics['accuracy']:.3f}, mean {result.metrics['margin']:.3f}")
    fig.tight_layout()
    fig.savefig(out / "margin_histogram.png", dpi=120)
    plt.close(fig)

    rows = [r for r in result.calibration if r["count"]]
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    ax.plot([0.5, 1.0], [0.5, 1.0], linestyle="--", color="grey", label="perfect")
    ax.plot([r["confidence"] for r in rows], [r["accuracy"] for r in rows], marker="o", label="reward model")
    ax.set(xlabel="predicted P(chosen wins) = σ(raw gap)", ylabel="observed accuracy", xlim=(0.5, 1.0), ylim=(0.0, 1.0),
           title=f"calibration (ECE {result.metrics['ece']:.3f})")
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(out / "calibration.png", dpi=120)
    plt.close(fig)
    return [out / "margin_histogram.png", out / "calibration.png"]


def _finite(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value
