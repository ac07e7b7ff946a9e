"""``tether report RUN_DIR``, ``tether doctor RUN_DIR``, ``tether compare RUN_A RUN_B ...``."""

from __future__ import annotations

import argparse
import json
import sys

from tether.diagnostics.doctor import diagnose_trace
from tether.diagnostics.findings import Finding, has_critical
from tether.diagnostics.run import load_run
from tether.diagnostics.trace import build_trace


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "report",
        help="write report.html and report.md (plots, samples, config, doctor's findings) for a run",
        description="Write report.html and report.md, with PNG plots of every logged metric beside them.",
    )
    p.add_argument("run_dir", metavar="RUN_DIR")
    p.add_argument("--out", default=None, help="directory for the report (default: RUN_DIR)")
    p.add_argument("--max-samples", type=int, default=6, help="sample rows shown per iteration (default 6)")
    p.set_defaults(func=cmd_report)

    p = subparsers.add_parser(
        "doctor",
        help="diagnose a run (finished or live): name failure modes with evidence, cause and fix",
        description="Diagnose a run from its metrics.jsonl and samples.jsonl. "
        "Exit code 0 when no finding is critical, 1 when one is.",
    )
    p.add_argument("run_dir", metavar="RUN_DIR")
    p.add_argument("--json", action="store_true", help="print the findings as a JSON list")
    p.set_defaults(func=cmd_doctor)

    p = subparsers.add_parser(
        "compare",
        help="overlay the score-vs-KL curves of several runs in one PNG (DPO runs: margin and accuracy)",
        description="Overlay score (objective/score_mean) against KL (objective/kl_k3, else kl_k1) of "
                    "online runs; DPO runs, which have neither, are shown by rewards/margin and "
                    "rewards/accuracy per step in panels beside it.",
    )
    p.add_argument("run_dirs", metavar="RUN_DIR", nargs="+")
    p.add_argument("--out", default="compare.png", help="PNG to write (default compare.png)")
    p.add_argument("--labels", nargs="+", default=None, help="legend names, one per run (default: directory names)")
    p.set_defaults(func=cmd_compare)


def cmd_report(args: argparse.Namespace) -> int:
    from tether.reporting.report import write_report  # matplotlib only when reporting

    files = write_report(args.run_dir, args.out, max_samples=args.max_samples)
    print(f"wrote {files.html} and {files.markdown} ({len(files.plots)} plots)")
    return 0


def cmd_doctor(args: argparse.Namespace) -> int:
    run = load_run(args.run_dir)
    trace = build_trace(run.metrics, run.samples)
    findings = diagnose_trace(trace)
    if args.json:
        print(json.dumps([f.to_dict() for f in findings], indent=2, ensure_ascii=False))
    else:
        print_findings(findings, f"{run.run_dir} ({trace.n_iterations} iterations)")
    return 1 if has_critical(findings) else 0


def cmd_compare(args: argparse.Namespace) -> int:
    from tether.reporting.report import compare_runs

    path = compare_runs(args.run_dirs, args.out, args.labels)
    print(f"wrote {path}")
    return 0


def print_findings(findings: list[Finding], where: str) -> None:
    """A rich table on a terminal; plain lines otherwise (CI logs, pipes, tests)."""
    from rich.console import Console

    console = Console()
    counts = {s: sum(f.severity == s for f in findings) for s in ("critical", "warning", "info")}
    summary = f"tether doctor: {where}: " + (
        ", ".join(f"{n} {s}" + ("s" if s == "warning" and n > 1 else "") for s, n in counts.items() if n) if findings else "no findings, the run looks healthy"
    )
    if not console.is_terminal:
        for f in findings:
            print(f"{f.severity.upper()} {f.rule}: {f.title}")
            print(f"  evidence: {f.evidence}")
            print(f"  cause:    {f.cause}")
            print(f"  fix:      {f.fix}")
        print(summary)
        sys.stdout.flush()
        return
    from rich.table import Table

    styles = {"critical": "bold red", "warning": "yellow", "info": "cyan"}
    if findings:
        table = Table(show_lines=True, expand=True)
        table.add_column("severity", no_wrap=True, min_width=8)
        for column, ratio in (("finding", 3), ("evidence", 4), ("cause", 4), ("fix", 4)):
            table.add_column(column, ratio=ratio)
        for f in findings:
            table.add_row(
                f"[{styles[f.severity]}]{f.severity}[/]", f"[bold]{f.title}[/]\n{f.rule}", f.evidence, f.cause, f.fix
            )
        console.print(table, markup=True, highlight=False)
    console.print(summary, markup=False, highlight=False)
