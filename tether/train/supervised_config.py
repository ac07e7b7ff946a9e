"""The fields ``tether sft``, ``tether train-rm`` and ``tether dpo`` share, declared once, after
those every training command shares (``TrainingFields``, tether/train/training_fields.py: the
metric sinks, seed, device, precision, quiet, the run directory and its checkpoints,
warmup_steps, weight_decay, max_grad_norm, chat_template).

Each command's config (``SFTConfig``, ``RewardModelConfig``, ``DPOConfig``) inherits them and
adds its own after them; a command redeclares a shared field only to give it its own default,
and a redeclared field keeps its place. Every field stays a flat key of the command's YAML and
of ``key=value`` overrides. The trainer reads two sections of them: ``run_settings`` (the run
directory, tether.train.run_dir) and ``optim_settings`` (AdamW and its schedule,
tether.train.optim).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, ClassVar

from tether.config import NonNegative, PositiveInt, Range
from tether.errors import ConfigError
from tether.train.optim import OptimSettings, Schedule
from tether.train.run_dir import RunSettings
from tether.train.training_fields import TrainingFields

HeldOutFraction = Annotated[float, Range(ge=0, lt=1)]  # 0: no held-out evaluation; below 1: something to train on


@dataclass(frozen=True)
class SupervisedFields(TrainingFields):
    """Not a command's config itself: the base of the three (see the module's docstring)."""

    algorithm: ClassVar[str]  # the command's run directory prefix: runs/<algorithm>-<timestamp>
    model_fields: ClassVar[tuple[str, ...]] = ("model",)  # model folders checked before the run starts
    data_kind: ClassVar[str]  # what ``data`` holds, named when it is missing
    # --- model and data -----------------------------------------------------------------------
    model: str = "tiny-llama"  # the model trained: folder, .gguf file, or alias (smollm2, tiny-llama)
    data: str = ""  # demonstrations (sft) or preference pairs/rankings: .jsonl/.json/.csv/.parquet or datasets folder
    split: str | None = None  # split of a DatasetDict folder (default: train)
    eval_data: str | None = None  # held-out examples; default: hold out eval_fraction of data (of its prompts for preferences)
    eval_split: str | None = None  # split of eval_data when it is a DatasetDict folder
    eval_fraction: HeldOutFraction = 0.1  # share held out when eval_data is not given (0: no eval)
    skip_bad_rows: bool = False  # count and skip malformed rows instead of stopping at the first
    max_length: PositiveInt = 512  # prompt + response tokens; longer responses are cut at the end
    max_prompt_length: PositiveInt | None = None  # cut prompts to their last N tokens; None: keep whole
    # --- optimisation -------------------------------------------------------------------------
    epochs: PositiveInt = 1  # passes over the data
    max_steps: PositiveInt | None = None  # stop after this many optimizer steps (overrides epochs)
    batch_size: PositiveInt = 8  # demonstrations (sft) or pairs per optimizer step
    learning_rate: NonNegative = 1e-5
    lr_schedule: Schedule = "linear"
    eval_every: PositiveInt = 50  # steps between held-out evaluations (and always after the last step)

    def __post_init__(self) -> None:
        super().__post_init__()  # the metric-sink fields, each field's bounds, resume's run_name
        if not self.data:
            raise ConfigError(f'field "data" is required: {self.data_kind}')
        if self.max_prompt_length is not None and not self.max_prompt_length < self.max_length:
            raise ConfigError(
                f'field "max_prompt_length" must be below max_length = {self.max_length}, '
                f"got {self.max_prompt_length}: the response needs room")

    @property
    def run_settings(self) -> RunSettings:
        return RunSettings(self.output_dir, self.run_name, self.algorithm, self.resume)

    @property
    def optim_settings(self) -> OptimSettings:
        return OptimSettings(self.learning_rate, self.lr_schedule, self.warmup_steps, self.weight_decay,
                             self.max_grad_norm)
