"""``tether ppo`` and the online alternatives, one command per row of the algorithm table
(``a2c``, ``grpo``, ``dr-grpo``, ``rloo``, ``reinforce-pp``). All take ``--config FILE.yaml``
and trailing ``key=value`` overrides."""

from __future__ import annotations

import argparse

from tether.config import load_config
from tether.train.algorithms import ALGORITHMS
from tether.train.ppo_resume import RESUME_OVERRIDES


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
    from tether.train.ppo import train_ppo
    from tether.train.ppo_resume import check_reward_given, resumed_config

    config = resumed_config(run_dir, overrides)
    check_reward_given(config, run_dir)  # a reward given from Python: the Python call that continues it
    _done(train_ppo(config))
    return 0
