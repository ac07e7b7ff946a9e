"""``tether dpo``: offline DPO (and cDPO, IPO) from preference data. ``--config FILE.yaml`` and
trailing ``key=value`` overrides, fields of ``tether.train.dpo.DPOConfig``."""

from __future__ import annotations

import argparse

from tether.config import load_config

HELP = "DPO: fit the policy to preference pairs directly (no reward model, no sampling); cDPO and IPO variants"


def register(subparsers) -> None:
    parser = subparsers.add_parser("dpo", help=HELP, description=HELP)
    parser.add_argument("--config", help="YAML config (see configs/dpo-tiny.yaml); fields of tether.train.dpo.DPOConfig")
    parser.add_argument("overrides", nargs="*", help="key=value overrides applied after the file")
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from tether.train.dpo import DPOConfig, train_dpo

    run_dir = train_dpo(load_config(DPOConfig, args.config, args.overrides))
    print(f"run written to {run_dir}  (policy: {run_dir / 'policy'})")
    return 0
