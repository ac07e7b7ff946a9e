"""Reading a run directory: what the PPO (or DPO, GRPO, ...) loop leaves behind.

    RUN_DIR/metrics.jsonl   one object per iteration (key "iteration")
    RUN_DIR/samples.jsonl   prompt, response, score, kl, length, ended_with_eos per row
    RUN_DIR/config.yaml     the resolved config
    RUN_DIR/eval.json       optional evaluation summary

Works on a live run: read_jsonl skips the torn line being written.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tether.errors import TetherError


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Reads a metrics/samples file, tolerating a torn last line from a live or killed run."""
    rows = []
    path = Path(path)
    if not path.exists():
        return rows
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if not line:
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


@dataclass
class RunData:
    run_dir: Path
    metrics: list[dict[str, Any]]
    samples: list[dict[str, Any]] = field(default_factory=list)
    config_text: str = ""  # config.yaml verbatim (shown as written)
    config: dict[str, Any] = field(default_factory=dict)  # parsed, {} if absent or unparsable
    eval: dict[str, Any] | None = None

    @property
    def name(self) -> str:
        return self.run_dir.resolve().name


def load_run(run_dir: str | Path) -> RunData:
    """Read a run directory; a TetherError names what is missing."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise TetherError(f"run directory not found: {run_dir}")
    metrics_path = run_dir / "metrics.jsonl"
    if not metrics_path.exists():
        raise TetherError(f"{run_dir} holds no metrics.jsonl: is it a tether run directory?")
    metrics = read_jsonl(metrics_path)
    samples = read_jsonl(run_dir / "samples.jsonl")
    config_text, config = "", {}
    config_path = run_dir / "config.yaml"
    if config_path.exists():
        config_text = config_path.read_text(encoding="utf-8")
        try:
            loaded = yaml.safe_load(config_text)
            config = loaded if isinstance(loaded, dict) else {}
        except yaml.YAMLError:
            config = {}  # still shown verbatim in the report
    eval_data = None
    eval_path = run_dir / "eval.json"
    if eval_path.exists():
        try:
            eval_data = json.loads(eval_path.read_text(encoding="utf-8"))
        except json.JSONDecodeError:
            eval_data = None
    return RunData(run_dir, metrics, samples, config_text, config, eval_data)
