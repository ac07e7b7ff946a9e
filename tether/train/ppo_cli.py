"""``tether ppo`` and the online alternatives, one command per row of the algorithm table
(``a2c``, ``grpo``, ``dr-grpo``, ``rloo``, ``reinforce-pp``). All take ``--config FILE.yaml``
and trailing ``key=value`` overrides."""

from __future__ import annotations

import argparse

from tether.config import load_config
from tether.train.algorithms import ALGORITHMS


# What may change when a run is continued; anything else would not be the same run.
RESUME_OVERRIDES = ("total_iterations", "checkpoint_every", "keep_checkpoints", "quiet", "max_consecutive_skips")


def commands() -> dict[str, str]:
    """``tether <command>`` -> the algorithm (row of ALGORITHMS) it runs."""
    return {spec.command: spec.name for spec in ALGORITHMS.values()}


def register(subparsers) -> None:
    for spec in ALGORITHMS.values():
        parser = subparsers.add_parser(spec.command, help=spec.summary, description=spec.summary)
        parser.add_argument("--config", help="YAML config (see configs/); fields of tether.train.ppo_config.PPOConfig")
        parser.add_argument("--resume", metavar="RUN_DIR",
                            help="continue RUN_DIR from its newest complete checkpoint, with its own config.yaml "
                                 f"(overrides allowed: {', '.join(RESUME_OVERRIDES)})")
        parser.add_argument("overrides", nargs="*", help="key=value overrides applied after the file")
        parser.set_defaults(func=_run, algorithm=spec.name)


def _run(args: argparse.Namespace) -> int:
    from tether.train.ppo import train_ppo
    from tether.train.ppo_config import PPOConfig

    overrides = list(args.overrides)
    if args.resume:
        return _resume(args.resume, overrides)
    if not any(o.startswith("algorithm=") for o in overrides):
        overrides.insert(0, f"algorithm={args.algorithm}")
    config = load_config(PPOConfig, args.config, overrides)
    _done(train_ppo(config))
    return 0


def _done(run_dir) -> None:
    from tether.utils.distributed import is_rank_zero

    if is_rank_zero():  # under torchrun every rank returns here; one line for the run
        print(f"run written to {run_dir}")


def _resume(run_dir: str, overrides: list[str]) -> int:
    from pathlib import Path

    from tether.errors import ConfigError
    from tether.train.ppo import train_ppo
    from tether.train.ppo_config import PPOConfig

    config_path = Path(run_dir) / "config.yaml"
    if not config_path.is_file():
        raise ConfigError(f"--resume {run_dir}: no config.yaml there; pass the run directory (runs/<run_name>)")
    for override in overrides:
        if override.split("=", 1)[0] not in RESUME_OVERRIDES:
            raise ConfigError(f"--resume keeps the run's config; only {', '.join(RESUME_OVERRIDES)} may change, "
                              f"not '{override}' (start a new run for that)")
    config = load_config(PPOConfig, config_path, [*overrides, f"resume={run_dir}"])
    _done(train_ppo(config))
    return 0
