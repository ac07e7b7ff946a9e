"""The fields every training command shares, declared once: ``tether ppo`` and its variants
(``PPOConfig``) and ``tether sft``, ``train-rm`` and ``dpo`` (through ``SupervisedFields``).

They are the same field in each command: same meaning, type, bounds and default. Each command's
config inherits them (after the metric-sink fields of ``SinkOptions``) and adds its own after
them; a command that needs another default redeclares the field, which keeps its place. Every
field stays a flat key of the command's YAML and of ``key=value`` overrides.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from tether.config import Count, NonNegative, Positive, PositiveInt, Seed, check_ranges
from tether.errors import ConfigError
from tether.reporting.sinks import SinkOptions


@dataclass(frozen=True)
class TrainingFields(SinkOptions):
    """Not a command's config itself: the base of all of them (see the module's docstring)."""

    # --- system -------------------------------------------------------------------------------
    seed: Seed = 0
    device: str = "auto"  # auto, cpu, cuda, cuda:1, mps
    precision: Literal["fp32", "bf16"] = "fp32"  # bf16: autocast compute, fp32 master weights
    quiet: bool = False  # no progress bar (CI)
    # --- the run directory and its checkpoints (docs/reliability.md) ---------------------------
    output_dir: str = "runs"
    run_name: str | None = None  # default: <prefix>-<timestamp>; prefix: the algorithm (ppo, grpo, ...), sft, rm, dpo
    # full-state checkpoint every N iterations (ppo and its variants) or optimizer steps (sft,
    # train-rm, dpo), and at the end; 0 = only on SIGINT/SIGTERM
    checkpoint_every: Count = 0
    keep_checkpoints: PositiveInt = 2  # newest checkpoints kept in <run>/checkpoints
    resume: str | None = None  # "auto": continue <output_dir>/<run_name> if it has a checkpoint; or a run dir
    # --- optimisation (learning_rate and lr_schedule: each command's own default) ---------------
    warmup_steps: Count = 0  # optimizer steps of linear warm-up
    weight_decay: NonNegative = 0.0  # AdamW's decoupled weight decay
    max_grad_norm: Positive = 1.0  # clip of the global gradient norm
    # --- prompts ------------------------------------------------------------------------------
    chat_template: bool | Literal["auto"] = "auto"  # render prompts with the tokenizer's chat template

    def __post_init__(self) -> None:
        super().__post_init__()  # the metric-sink fields
        check_ranges(self)  # each numeric field's declared bounds; a command's checks below relate fields
        if self.resume == "auto" and not self.run_name:
            raise ConfigError("resume: auto needs a run_name (the run directory to continue)")
