"""``tether label <subcommand>``: serve, make-tasks, export, stats, simulate, add-labeler.

Each handler parses nothing itself: it turns the argparse namespace into calls on the store,
the server or the task helpers, and prints one short summary. ``python -m tether.labeling``
runs the same sub-commands without importing the rest of tether (the tests start servers
that way: no torch import on each start).
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from pathlib import Path

from tether.errors import TetherError

__all__ = ["register", "main"]

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8765


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "label", help="collect human preferences in a browser and export them for train-rm",
        description="Collect human preferences: add labelers, serve tasks, export pairs, measure agreement.",
    )
    add_subcommands(parser)


def add_subcommands(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="label_command", metavar="SUBCOMMAND")
    parser.set_defaults(func=lambda args: _print_help(parser))

    p = sub.add_parser("add-labeler", help="create a labeler and print their token")
    p.add_argument("name", help="labeler id, as it appears in the export (letters, digits, _.@+-)")
    _db(p, create=True)
    p.add_argument("--new-token", action="store_true", help="replace the token of an existing labeler")
    p.set_defaults(func=cmd_add_labeler)

    p = sub.add_parser("serve", help="serve the labeling page and its JSON API")
    _db(p, create=True)
    p.add_argument("--tasks", type=Path, help="tasks JSONL to add before serving (known tasks are kept)")
    p.add_argument("--host", default=DEFAULT_HOST, help=f"address to bind (default {DEFAULT_HOST}: this machine only)")
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT})")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("make-tasks", help="sample K responses per prompt from a policy into a tasks file")
    p.add_argument("--policy", required=True, help="model folder, .gguf file, or alias (smollm2, tiny-llama)")
    p.add_argument("--prompts", required=True, type=Path,
                   help="JSONL with a 'prompt' field, or .txt with one prompt per line")
    p.add_argument("--k", type=int, default=2, help="responses per prompt (default 2)")
    p.add_argument("--out", required=True, type=Path, help="tasks JSONL to write")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--temperature", type=float, default=1.0,
                   help="keep > 0: the K samples must differ to be worth comparing")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_make_tasks)

    p = sub.add_parser("export", help="write the answers as train-rm preference JSONL")
    _db(p)
    p.add_argument("--out", required=True, type=Path, help="preferences JSONL to write")
    p.add_argument("--ties", action="store_true",
                   help='write ties as {"prompt", "responses", "tie": true} records, which train-rm learns as '
                        '"score these alike" (default: leave them out, for tools that read only pairs)')
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("stats", help="per-labeler counts and agreement between labelers")
    _db(p)
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=cmd_stats)

    p = sub.add_parser("simulate", help="answer tasks with a Python function (a simulated human)")
    p.add_argument("--labeler", required=True, help="module:function, e.g. tether.labeling.simulated:prefer_shorter")
    _db(p, create=True)
    p.add_argument("--tasks", type=Path, help="tasks JSONL to add first")
    p.add_argument("--name", help="labeler id in the store (default: sim-<function>)")
    p.add_argument("--limit", type=int, help="answer at most this many tasks")
    p.set_defaults(func=cmd_simulate)


def _db(parser: argparse.ArgumentParser, create: bool = False) -> None:
    note = " (created if missing)" if create else ""
    parser.add_argument("--db", required=True, type=Path, help=f"labeling SQLite file{note}")


def _print_help(parser: argparse.ArgumentParser) -> int:
    parser.print_help()
    return 2


# -- handlers ----------------------------------------------------------------------------
def cmd_add_labeler(args: argparse.Namespace) -> int:
    from tether.labeling.store import Store

    token = Store(args.db, create=True).add_labeler(args.name, new_token=args.new_token)
    print(token)  # stdout carries only the token, so scripts can capture it
    page = f"http://{DEFAULT_HOST}:{DEFAULT_PORT}/?token=<token>"
    print(f"token for {args.name}; share it privately. Page: {page}", file=sys.stderr)
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from tether.config import Range, check_option
    from tether.labeling.server import is_loopback, serve

    check_option("--port", args.port, Range(ge=1, le=65535))  # before the store is created
    store = _store_with_tasks(args.db, args.tasks)
    if not store.tasks():
        raise TetherError(f"{args.db} holds no tasks: pass --tasks FILE")
    if not is_loopback(args.host):
        print(
            f"warning: serving on {args.host}, not {DEFAULT_HOST}: anyone who can reach port {args.port} can load "
            "the page, and tokens and answers cross the network unencrypted; on a shared network put HTTPS "
            "(a reverse proxy) in front",
            file=sys.stderr,
        )
    if not store.labelers():
        print(f"warning: no labelers yet: run `tether label add-labeler NAME --db {args.db}`", file=sys.stderr)
    url = f"http://{args.host}:{args.port}/"
    print(f"serving {len(store.tasks())} tasks from {args.db} at {url} (Ctrl+C stops)", file=sys.stderr, flush=True)
    serve(store, host=args.host, port=args.port)
    return 0


def cmd_make_tasks(args: argparse.Namespace) -> int:
    from tether.config import Range, check_option
    from tether.labeling.tasks import load_prompts, tasks_from_samples, write_tasks

    if args.k < 2:
        raise TetherError(f"--k must be at least 2 (a comparison needs two responses), got {args.k}")
    check_option("--max-new-tokens", args.max_new_tokens, Range(ge=1))
    check_option("--temperature", args.temperature, Range(gt=0))
    prompts = load_prompts(args.prompts)
    try:  # the PPO engine's sampler: imported here so the rest of `label` never needs torch
        from tether.rollout.sampling import sample_responses
    except ImportError as exc:
        raise TetherError(
            f"make-tasks needs tether.rollout.sampling.sample_responses, which cannot be imported ({exc})"
        ) from None
    samples, truncated = sample_responses(
        args.policy, prompts, k=args.k, max_new_tokens=args.max_new_tokens, temperature=args.temperature, seed=args.seed,
        return_truncated=True,
    )
    tasks = tasks_from_samples(prompts, samples, args.k, truncated)
    write_tasks(tasks, args.out)
    same = sum(len(set(t.responses)) < len(t.responses) for t in tasks)
    cut = sum(sum(t.truncated or ()) for t in tasks)
    print(f"wrote {len(tasks)} tasks with {args.k} responses each to {args.out} "
          f"({cut} of {len(tasks) * args.k} responses cut off at --max-new-tokens {args.max_new_tokens})", file=sys.stderr)
    if same:
        print(f"warning: {same} tasks have identical responses (raise --temperature?)", file=sys.stderr)
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from tether.labeling.export import export_jsonl
    from tether.labeling.store import Store

    summary = export_jsonl(Store(args.db), args.out, ties=args.ties)
    print(f"wrote {args.out}: {summary.describe()}")
    return 0


def cmd_stats(args: argparse.Namespace) -> int:
    from tether.labeling.stats import compute_stats, format_stats
    from tether.labeling.store import Store

    stats = compute_stats(Store(args.db))
    print(json.dumps(asdict(stats), indent=2) if args.json else format_stats(stats))
    return 0


def cmd_simulate(args: argparse.Namespace) -> int:
    from tether.config import Range, check_option
    from tether.labeling.simulated import load_labeler, simulate

    check_option("--limit", args.limit, Range(ge=0))
    fn = load_labeler(args.labeler)
    store = _store_with_tasks(args.db, args.tasks)
    name = args.name or "sim-" + args.labeler.rpartition(":")[2].replace("_", "-")
    summary = simulate(store, fn, name, spec=args.labeler, limit=args.limit)
    print(summary.describe())
    if summary.tie_warning():
        print(f"warning: {summary.tie_warning()}", file=sys.stderr)
    return 0


def _store_with_tasks(db: Path, tasks_file: Path | None):
    from tether.labeling.store import Store
    from tether.labeling.tasks import load_tasks

    tasks = load_tasks(tasks_file) if tasks_file else None  # validate the file before touching the store
    store = Store(db, create=True)
    if tasks:
        added = store.add_tasks(tasks)
        print(f"{tasks_file}: {added} new tasks, {len(tasks) - added} already in {db}", file=sys.stderr)
    return store


# -- `python -m tether.labeling` -----------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tether label", description="Collect human preferences.")
    add_subcommands(parser)
    args = parser.parse_args(argv)
    from tether.cli import dispatch  # imports no torch: server starts stay fast

    return dispatch(args)
