"""A run directory: resolved config, metrics, samples, progress display and the final models.

Layout::

    runs/<name>/config.yaml      the resolved config (every field, defaults included)
    runs/<name>/metrics.jsonl    one JSON object per iteration
    runs/<name>/samples.jsonl    sample generations per iteration
    runs/<name>/policy/          final policy (save_pretrained; AutoModelForCausalLM loads it)
    runs/<name>/critic/          final critic (AutoModelForSequenceClassification), if any
"""

from __future__ import annotations

import dataclasses
import math
import os
import shutil
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import torch
import yaml

from tether.errors import TetherError
from tether.reporting.sinks import RunLogger


def make_scheduler(optimizer, schedule: str, warmup_steps: int, total_steps: int):
    """Linear warm-up, then constant, linear decay to 0, or cosine decay to 0."""
    total_steps = max(total_steps, 1)

    def factor(step: int) -> float:
        if warmup_steps and step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = min((step - warmup_steps) / max(total_steps - warmup_steps, 1), 1.0)
        if schedule == "linear":
            return 1.0 - progress
        if schedule == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * progress))
        return 1.0

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def save_pretrained_atomic(model, path: Path, tokenizer=None) -> None:
    """save_pretrained into a temporary folder, then rename: a crash never leaves half a model."""
    tmp = path.with_name(f".{path.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    from tether.models.loading import quiet_transformers

    with quiet_transformers():
        model.save_pretrained(tmp)
    if tokenizer is not None:
        tokenizer.save_pretrained(tmp)
    if path.exists():
        shutil.rmtree(path)
    os.replace(tmp, path)


class RunDirectory:
    def __init__(self, path: Path, logger: RunLogger, quiet: bool):
        self.path = path
        self.logger = logger
        self.quiet = quiet

    @classmethod
    def create(cls, config, quiet: bool = False) -> "RunDirectory":
        name = config.run_name or f"{getattr(config, 'algorithm', 'run')}-{time.strftime('%Y%m%d-%H%M%S')}"
        path = Path(config.output_dir) / name
        if (path / "metrics.jsonl").exists():
            if not getattr(config, "overwrite", False):
                raise TetherError(
                    f"run directory {path} already holds a run; choose another run_name, or pass overwrite=true to replace it"
                )
            for stale in ("metrics.jsonl", "samples.jsonl"):
                (path / stale).unlink(missing_ok=True)
        path.mkdir(parents=True, exist_ok=True)
        write_atomic(path / "config.yaml", yaml.safe_dump(dataclasses.asdict(config), sort_keys=False))
        extra = []
        if getattr(config, "metric_sinks", None):
            from tether.reporting.sinks import make_sinks

            extra = make_sinks(config.metric_sinks, path, dataclasses.asdict(config))
        return cls(path, RunLogger(path, extra), quiet)

    @contextmanager
    def progress(self, total: int, name: str = "training"):
        from tether.reporting.progress import phase_progress

        with phase_progress(name, total=total, quiet=self.quiet) as bar:
            yield bar

    def log(self, iteration: int, metrics: dict[str, float], progress=None) -> None:
        self.logger.log(iteration, metrics)
        if progress is not None:
            fields = {}
            if "objective/score_mean" in metrics:
                fields["score"] = metrics["objective/score_mean"]
            if "objective/kl_k1" in metrics:
                fields["kl"] = metrics["objective/kl_k1"]
            progress.advance(1, **fields)

    def log_samples(self, iteration: int, rows: list[dict]) -> None:
        self.logger.log_samples(iteration, rows)

    def warn(self, message: str) -> None:
        print(f"warning: {message}", file=sys.stderr)

    def save_final(self, roles, config) -> None:
        save_pretrained_atomic(roles.policy, self.path / "policy", roles.tokenizer)
        if getattr(config, "save_critic", False):
            if roles.critic is not None:
                save_pretrained_atomic(roles.critic, self.path / "critic")
            elif roles.value_head is not None:
                from safetensors.torch import save_file

                save_file(roles.value_head.state_dict(), str(self.path / "policy" / "value_head.safetensors"))

    def close(self) -> None:
        self.logger.close()
