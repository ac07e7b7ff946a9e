"""``tether <command>``. Each command lives in the module that owns it and registers its own
sub-parser through ``register(subparsers)``; this file only dispatches and turns
``TetherError`` into one clear line and a non-zero exit code."""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from tether.errors import RunStopped, TetherError

# command modules, in the order `tether --help` lists them
COMMAND_MODULES = [
    "tether.train.ppo_cli",  # ppo (and the alternatives: a2c, grpo, rloo, reinforce-pp)
    "tether.train.preference_cli",  # sft, train-rm, dpo, eval-rm
    "tether.labeling.cli",  # label serve | make-tasks | export | stats | simulate | add-labeler
    "tether.reporting.cli",  # report, doctor, compare
    "tether.models.cli",  # models prepare
    "tether.rounds.cli",  # rlhf: rounds of sample, label, reward model, PPO
    "tether.demo.cli",  # demo: the whole pipeline on SmolLM2, with a report
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tether", description="RLHF with PPO, end to end.")
    parser.add_argument("--version", action="version", version=f"tether {_version()}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module_name in COMMAND_MODULES:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name != module_name:
                raise
            continue  # a command module not built yet
        module.register(subparsers)
    return parser


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("tether")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown (not installed)"


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    return dispatch(args)


def dispatch(args: argparse.Namespace) -> int:
    """Run a parsed command: a ``TetherError`` becomes one line on stderr and exit code 2; a
    run stopped early (its message already printed) exits non-zero, 128 + signal number."""
    try:
        result = args.func(args)
    except RunStopped as exc:
        return exc.exit_code
    except TetherError as exc:
        if os.environ.get("TETHER_DEBUG"):
            raise
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `tether doctor --json | head`
        sys.stderr.close()
        return 0
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
