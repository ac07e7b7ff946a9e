"""``tether sft``: supervised fine-tuning on demonstrations, stage 1 of RLHF (the result is
π_SFT, which becomes π_ref and the PPO starting point).

The loss is the negative log-likelihood of the completion tokens only, averaged over the
batch's completion tokens: the prompt is context, not something to imitate (as InstructGPT's
SFT and TRL's ``completion_only_loss``). The response log-probs come from the same
``policy_forward`` PPO uses, so SFT and RL see identical tokenisation and positions.

The small helpers at the bottom (step planning, optimiser, batches over epochs, data
summary) are shared with ``tether train-rm``.
"""

from __future__ import annotations

import random
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Callable, ClassVar, Iterator, Literal, Sequence

import torch

from tether.config import Count, NonNegative, Positive, PositiveInt, Range, Seed, check_ranges
from tether.data.batching import PromptResponseBatch, collate_examples, iterate_batches, tokenize_demonstrations
from tether.data.preferences import DropCounts
from tether.data.sft import DemonstrationData, load_demonstrations
from tether.errors import ConfigError, DataError
from tether.models.forward import policy_forward
from tether.models.loading import load_causal_lm, load_tokenizer, resolve_device
from tether.models.registry import check_model_fields
from tether.ops.masking import masked_mean
from tether.reporting.sinks import SinkOptions
from tether.utils.precision import autocast
from tether.train.run_dir import (RunDirectory, make_scheduler, nonfinite_weights_error, resume_checkpoint,
                                  save_pretrained_atomic, weights_finite)
from tether.utils.checkpoint import Checkpointer
from tether.utils.host_memory import keep_freed_host_memory
from tether.utils.seeding import seed_everything
from tether.utils.signals import GracefulStop


@dataclass(frozen=True)
class SFTConfig(SinkOptions):
    algorithm: ClassVar[str] = "sft"  # run directory prefix: runs/sft-<timestamp>
    model_fields: ClassVar[tuple[str, ...]] = ("model",)  # model folders checked before the run starts
    # --- model and data -----------------------------------------------------------------------
    model: str = "tiny-llama"  # causal LM to fine-tune: folder, .gguf file, or alias (smollm2, tiny-llama)
    data: str = ""  # demonstrations (prompt/completion or messages): .jsonl/.json/.csv/.parquet or datasets folder
    split: str | None = None  # split of a DatasetDict folder (default: train)
    eval_data: str | None = None  # held-out demonstrations; default: hold out eval_fraction of data
    eval_split: str | None = None  # split of eval_data when it is a DatasetDict folder
    eval_fraction: Annotated[float, Range(ge=0, lt=1)] = 0.05  # share of data held out when eval_data is not given (0: no eval)
    skip_bad_rows: bool = False  # count and skip malformed rows instead of stopping at the first
    chat_template: bool | Literal["auto"] = "auto"  # render prompts with the tokenizer's chat template
    max_length: PositiveInt = 512  # prompt + completion tokens; longer completions are cut at the end
    max_prompt_length: PositiveInt | None = None  # cut prompts to their last N tokens; None: keep whole
    # --- optimisation -------------------------------------------------------------------------
    epochs: PositiveInt = 1  # passes over the data
    max_steps: PositiveInt | None = None  # stop after this many optimizer steps (overrides epochs)
    batch_size: PositiveInt = 8  # demonstrations per optimizer step
    learning_rate: NonNegative = 2e-5
    lr_schedule: Literal["constant", "linear", "cosine"] = "cosine"
    warmup_steps: Count = 0
    weight_decay: NonNegative = 0.0
    max_grad_norm: Positive = 1.0
    eval_every: PositiveInt = 50  # steps between evaluations of the held-out loss
    # --- system -------------------------------------------------------------------------------
    seed: Seed = 0
    device: str = "auto"  # auto, cpu, cuda, cuda:1, mps
    precision: Literal["fp32", "bf16"] = "fp32"  # bf16: autocast compute, fp32 master weights
    output_dir: str = "runs"
    run_name: str | None = None  # default: sft-<timestamp>
    quiet: bool = False  # no progress bar (CI)
    # metric_sinks and the sinks' options: inherited from SinkOptions (tether/reporting/sinks.py)
    checkpoint_every: Count = 0  # full-state checkpoint every N steps; 0 = only on SIGINT/SIGTERM
    keep_checkpoints: PositiveInt = 2  # newest checkpoints kept in <run>/checkpoints
    resume: str | None = None  # "auto": continue <output_dir>/<run_name> from its checkpoint; or a run dir

    def __post_init__(self) -> None:
        super().__post_init__()  # the metric-sink fields
        check_ranges(self)  # each numeric field's declared bounds; validate_common relates fields
        if not self.data:
            raise ConfigError('field "data" is required: a demonstrations file (prompt/completion or messages)')
        validate_common(self)


def train_sft(config: SFTConfig) -> Path:
    """Fine-tune ``config.model`` on the demonstrations; returns the saved model folder
    (``<run>/policy``, loadable with ``AutoModelForCausalLM`` and ``tether ppo policy=...``).
    Stopped by SIGINT/SIGTERM, it checkpoints and raises RunStopped (no model is written)."""
    check_model_fields(config, config.model_fields)
    device = resolve_device(config.device)
    seed_everything(config.seed)
    keep_freed_host_memory()  # tether/utils/host_memory.py
    tokenizer = load_tokenizer(config.model)
    pad_id = tokenizer.pad_token_id

    train_data, eval_data = load_demonstration_splits(config)
    resume_from = resume_checkpoint(config)
    run = RunDirectory.create(config, quiet=config.quiet, resume_history=resume_from and resume_from["history"])
    tokenize = lambda data: tokenize_demonstrations(  # noqa: E731
        data.examples, tokenizer, config.max_length, config.max_prompt_length, config.chat_template)
    train_items, train_dropped = tokenize(train_data)
    eval_items, eval_dropped = tokenize(eval_data) if eval_data else ([], 0)
    train_data.dropped.truncated = train_dropped + eval_dropped
    report(run, train_data.summary(), train_items)

    model = load_causal_lm(config.model, device)
    model.train()
    total_steps = planned_steps(len(train_items), config)
    optimizer, scheduler = make_optimizer(model.parameters(), config, total_steps)
    collate = lambda items: collate_examples(items, pad_id)  # noqa: E731

    ckpt = Checkpointer(run.path, config.checkpoint_every, config.keep_checkpoints, total_steps,
                        modules={"model": model}, stateful={"optimizer": optimizer, "scheduler": scheduler})
    start = ckpt.restore(resume_from)[0] if resume_from else 0

    with run.progress(total_steps - start, "sft") as progress, GracefulStop("the current step") as stop:
        for step, batch in enumerate(epoch_batches(train_items, collate, config, total_steps), start=1):
            if step <= start:
                continue  # resumed: the batch order is a function of (seed, epoch), so skipping restores it
            with autocast(device, config.precision):
                loss = completion_nll(model, batch.to(device))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), config.max_grad_norm)
            if guarded_step(optimizer, scheduler, loss, grad_norm, run, step, {"model": model}):
                metrics = {"train/loss": loss.item(), "train/grad_norm": float(grad_norm),
                           "train/lr": scheduler.get_last_lr()[0]}
            else:
                metrics = {"guard/skipped": 1.0}
            if eval_items and (step % config.eval_every == 0 or step == total_steps):
                metrics["eval/loss"] = evaluate_nll(model, eval_items, collate, config.batch_size, device, config.precision)
            run.log(step, metrics)
            progress.advance(1, loss=metrics.get("train/loss", float("nan")))
            if ckpt.end_of_iteration(step, {}, run.history, stop.requested):
                break

    if stop.requested:
        run.stopped(stop.requested, ckpt.last_saved, f"tether sft --config {run.path / 'config.yaml'} resume={run.path}")
    model.eval()
    save_pretrained_atomic(model, run.path / "policy", tokenizer)
    run.close()
    return run.path / "policy"


def completion_nll(model, batch: PromptResponseBatch) -> torch.Tensor:
    """-mean over completion tokens of log π(y_t | x, y_<t): the prompt carries no loss."""
    logprobs = policy_forward(model, batch.inputs(), batch.response_ids).logprobs  # (B, R)
    return -masked_mean(logprobs, batch.response_mask)


@torch.no_grad()
def evaluate_nll(model, items, collate, batch_size: int, device, precision: str = "fp32") -> float:
    """Token-weighted mean NLL of the completions of ``items``."""
    model.eval()
    total, tokens = 0.0, 0
    for batch in iterate_batches(items, batch_size, collate):
        batch = batch.to(device)
        with autocast(device, precision):
            nll = completion_nll(model, batch)
        n = int(batch.response_mask.sum())
        total, tokens = total + nll.item() * n, tokens + n
    model.train()
    return total / max(tokens, 1)


def load_demonstration_splits(config: SFTConfig) -> tuple[DemonstrationData, DemonstrationData | None]:
    data = load_demonstrations(config.data, config.split, config.skip_bad_rows)
    if config.eval_data:
        return data, load_demonstrations(config.eval_data, config.eval_split, config.skip_bad_rows)
    if config.eval_fraction <= 0 or len(data) < 2:
        return data, None
    order = list(range(len(data)))
    random.Random(config.seed).shuffle(order)
    n_eval = min(max(1, round(config.eval_fraction * len(order))), len(order) - 1)
    held = set(order[:n_eval])
    train = [e for i, e in enumerate(data.examples) if i not in held]
    evals = [e for i, e in enumerate(data.examples) if i in held]
    return (DemonstrationData(train, data.source, data.num_rows, data.dropped),
            DemonstrationData(evals, f"{data.source} (held out)", 0, DropCounts()))


# ----- shared with tether train-rm ------------------------------------------------------------


def validate_common(config) -> None:
    """Cross-field checks every supervised config (SFT, reward model, DPO) shares; each field's
    own bounds are declared on it (``check_ranges``)."""
    if config.max_prompt_length is not None and not config.max_prompt_length < config.max_length:
        raise ConfigError(
            f'field "max_prompt_length" must be below max_length = {config.max_length}, '
            f"got {config.max_prompt_length}: the response needs room")
    if config.resume == "auto" and not config.run_name:
        raise ConfigError("resume: auto needs a run_name (the run directory to continue)")


def guarded_step(optimizer, scheduler, loss, grad_norm, run: RunDirectory, step: int,
                 modules: dict | None = None) -> bool:
    """Apply the step unless the loss or gradient is NaN/inf (then skip it and warn); stop
    with one line if the step itself made a weight NaN/inf (``modules``, role -> module:
    where to look for its name)."""
    if torch.isfinite(loss) and torch.isfinite(grad_norm):
        optimizer.step()
        # Finite gradients can still give non-finite weights (an overflowing update); without
        # this check every later loss is NaN and every step skipped until the final save
        # refuses. One fused check per step.
        if not weights_finite([p for group in optimizer.param_groups for p in group["params"]]):
            raise nonfinite_weights_error(modules or {}, step)
        scheduler.step()
        return True
    optimizer.zero_grad(set_to_none=True)
    run.warn(f"step {step}: non-finite {'loss' if not torch.isfinite(loss) else 'gradient'}; step skipped")
    return False


def planned_steps(num_items: int, config) -> int:
    per_epoch = -(-num_items // config.batch_size)
    return config.max_steps if config.max_steps is not None else per_epoch * config.epochs


def make_optimizer(params, config, total_steps: int):
    optimizer = torch.optim.AdamW(list(params), lr=config.learning_rate, weight_decay=config.weight_decay)
    return optimizer, make_scheduler(optimizer, config.lr_schedule, config.warmup_steps, total_steps)


def epoch_batches(items: Sequence, collate: Callable, config, total_steps: int) -> Iterator:
    """Shuffled batches, a new order each epoch, until ``total_steps`` batches were given."""
    given, epoch = 0, 0
    while given < total_steps:
        for batch in iterate_batches(items, config.batch_size, collate, shuffle=True, seed=config.seed + epoch):
            yield batch
            given += 1
            if given == total_steps:
                return
        epoch += 1


def report(run: RunDirectory, summary: str, train_items: Sequence) -> None:
    """The data summary, once: to stderr and to ``<run>/data_summary.txt``."""
    if not train_items:
        raise DataError(f"no training examples left after truncation: {summary}")
    (run.path / "data_summary.txt").write_text(summary + "\n", encoding="utf-8")
    print(f"data: {summary}", file=sys.stderr)  # even when quiet: drops are what a CI log is read for
