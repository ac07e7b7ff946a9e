"""The supervised trainer ``tether sft``, ``tether train-rm`` and ``tether dpo`` share. Each
command supplies its step (forward and backward of one batch: its loss and train metrics) and
its held-out evaluation; the loop here does the rest, the same for all three:

    for each step's batch (shuffled anew each epoch; a resumed run skips the steps done):
        zero the gradients; the command's step; clip the gradient norm
        apply the step unless the loss or gradient is NaN/inf; advance the schedule
        every eval_every steps and after the last: the command's held-out evaluation
        log the row (metrics.jsonl, sinks, progress bar); run the callbacks
        checkpoint when due; stop after a callback's True, or checkpoint and stop on SIGINT/SIGTERM

The run start (seed, tokenizer, data splits, run directory, tokenisation, data summary) is
shared too, with the preference data's version for the reward model and DPO.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator, Sequence

import torch

from tether.data.batching import iterate_batches, tokenize_pairs
from tether.data.preferences import PreferenceData, load_preferences, split_by_prompt, without_ties
from tether.errors import DataError
from tether.models.loading import load_tokenizer, resolve_device
from tether.models.registry import check_model_fields
from tether.train.run_dir import RunDirectory, nonfinite_weights_error, resume_checkpoint, weights_finite
from tether.train.run_hooks import Callback, callbacks_ask_to_stop, checked_callbacks
from tether.utils.checkpoint import Checkpointer
from tether.utils.host_memory import keep_freed_host_memory
from tether.utils.seeding import seed_everything
from tether.utils.signals import GracefulStop

# ----- the run's start ------------------------------------------------------------------------


@dataclass
class RunStart:
    """What every supervised command begins with."""

    config: object  # the command's config (SFTConfig, RewardModelConfig, DPOConfig)
    device: torch.device
    tokenizer: object
    run: RunDirectory
    resume_from: dict | None  # the checkpoint state to continue from, or None for a fresh run
    train_data: object  # DemonstrationData or PreferenceData: its source, rows and drop counts
    train_items: list  # tokenised training examples
    eval_items: list  # tokenised held-out examples ([] without an eval split)
    callbacks: tuple[Callback, ...] = ()  # fn(step, metrics) after each logged step (tether.train.run_hooks)


def start_run(config, load_splits: Callable, tokenize: Callable, callbacks: Sequence[Callback] = ()) -> RunStart:
    """Check the callbacks and model fields, seed, load the tokenizer and the data splits
    (``load_splits(config) -> (train, held-out or None)``), open (or resume) the run directory,
    tokenise (``tokenize(data, tokenizer) -> (items, number cut)``) and print the one-line data
    summary."""
    callbacks = checked_callbacks(callbacks)
    check_model_fields(config, config.model_fields)  # before anything loads or the run directory is made
    device = resolve_device(config.device)
    seed_everything(config.seed)
    keep_freed_host_memory()  # tether/utils/host_memory.py
    tokenizer = load_tokenizer(config.model)
    train_data, eval_data = load_splits(config)
    resume_from = resume_checkpoint(config)
    run = RunDirectory.create(config, quiet=config.quiet, resume_history=resume_from and resume_from["history"])
    train_items, train_dropped = tokenize(train_data, tokenizer)
    eval_items, eval_dropped = tokenize(eval_data, tokenizer) if eval_data else ([], 0)
    train_data.dropped.truncated = train_dropped + eval_dropped
    report(run, train_data.summary(), train_items)
    return RunStart(config, device, tokenizer, run, resume_from, train_data, train_items, eval_items, callbacks)


def start_preference_run(config, callbacks: Sequence[Callback] = (), learns_ties: bool = False) -> RunStart:
    """``start_run`` on preference pairs or rankings (reward model, DPO). Tied pairs train only a
    loss with a tie term (``learns_ties``: the reward model's); they are never held out, since
    a tie cannot be ranked right or wrong."""
    def tokenize(data: PreferenceData, tokenizer):
        return tokenize_pairs(data.pairs, tokenizer, config.max_length, config.max_prompt_length, config.chat_template)

    def load_splits(config) -> tuple[PreferenceData, PreferenceData | None]:
        train, held_out = load_preference_splits(config)
        if held_out is not None and all(p.tie for p in held_out.pairs):
            held_out = None  # nothing to judge
        return (train if learns_ties else without_ties(train)), held_out and without_ties(held_out)

    return start_run(config, load_splits, tokenize, callbacks)


def load_preference_splits(config) -> tuple[PreferenceData, PreferenceData | None]:
    data = load_preferences(config.data, config.split, config.skip_bad_rows)
    if config.eval_data:
        return data, load_preferences(config.eval_data, config.eval_split, config.skip_bad_rows)
    if config.eval_fraction <= 0 or len({p.group for p in data.pairs}) < 2:
        return data, None
    return split_by_prompt(data, config.eval_fraction, config.seed)


def report(run: RunDirectory, summary: str, train_items: Sequence) -> None:
    """The data summary, once: to stderr and to ``<run>/data_summary.txt``."""
    if not train_items:
        raise DataError(f"no training examples left after truncation: {summary}")
    (run.path / "data_summary.txt").write_text(summary + "\n", encoding="utf-8")
    print(f"data: {summary}", file=sys.stderr)  # even when quiet: drops are what a CI log is read for


# ----- batches ----------------------------------------------------------------------------------


def planned_steps(num_items: int, config) -> int:
    per_epoch = -(-num_items // config.batch_size)
    return config.max_steps if config.max_steps is not None else per_epoch * config.epochs


def epoch_batches(items: Sequence, collate: Callable, config, total_steps: int) -> Iterator:
    """Shuffled batches, a new order each epoch, until ``total_steps`` batches were given."""
    return over_epochs(lambda epoch: iterate_batches(items, config.batch_size, collate, shuffle=True,
                                                     seed=config.seed + epoch), total_steps)


def over_epochs(one_epoch: Callable[[int], Iterable], total_steps: int) -> Iterator:
    """The batches of ``one_epoch(0)``, ``one_epoch(1)``, ... until ``total_steps`` were given."""
    given, epoch = 0, 0
    while given < total_steps:
        for batch in one_epoch(epoch):
            yield batch
            given += 1
            if given == total_steps:
                return
        epoch += 1


# ----- the loop -----------------------------------------------------------------------------------


@dataclass
class SupervisedTask:
    """What one supervised command plugs into ``fit``."""

    command: str  # the command, for the progress bar and the resume hint: "sft" -> `tether sft`
    role: str  # the model's name in a non-finite-weights error: "model", "policy"
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    total_steps: int
    batches: Iterable  # each step's batch from step 1 on (a function of seed and epoch, so a resume skips)
    # one batch -> (loss, train metrics): forward and backward (gradients accumulate from zero)
    step: Callable[[object], tuple[torch.Tensor, dict[str, float]]]
    evaluate: Callable[[int], dict[str, float]] | None = None  # step -> held-out metrics (eval/*); None: none
    eval_every: int = 1  # steps between evaluations (and always after the last step)
    progress_fields: dict[str, str] = field(default_factory=lambda: {"loss": "train/loss"})  # bar label -> metric
    first_metrics: dict[str, float] = field(default_factory=dict)  # added to the row of the run's first step
    progress_name: str | None = None  # the progress bar's label; default: command


def fit(task: SupervisedTask, begun: RunStart) -> int:
    """Train ``task.total_steps`` steps, from the checkpoint's when resuming; returns the last
    step trained (below total_steps when a callback stopped the run: the caller saves the model
    as after the last step). SIGINT/SIGTERM: checkpoints and raises RunStopped."""
    config, run = begun.config, begun.run
    ckpt = Checkpointer(run.path, config.checkpoint_every, config.keep_checkpoints, task.total_steps,
                        modules={"model": task.model}, stateful={"optimizer": task.optimizer, "scheduler": task.scheduler})
    start = ckpt.restore(begun.resume_from)[0] if begun.resume_from else 0
    last, callback_stop = start, False
    with run.progress(task.total_steps - start, task.progress_name or task.command) as progress, \
            GracefulStop("the current step") as stop:
        for step, batch in enumerate(task.batches, start=1):
            if step <= start:
                continue  # resumed: the batch order is a function of (seed, epoch), so skipping restores it
            metrics = _train_step(task, batch, run, step, config.max_grad_norm)
            if step == start + 1:
                metrics.update(task.first_metrics)
            if task.evaluate is not None and (step % task.eval_every == 0 or step == task.total_steps):
                metrics.update(task.evaluate(step))
            run.log(step, metrics)
            progress.advance(1, **{label: metrics.get(name, float("nan")) for label, name in task.progress_fields.items()})
            last = step
            callback_stop = callbacks_ask_to_stop(begun.callbacks, step, metrics)
            if ckpt.end_of_iteration(step, {}, run.history, stop.requested) or callback_stop:
                break

    if stop.requested:
        run.stopped(stop.requested, ckpt.last_saved,
                    f"tether {task.command} --config {run.path / 'config.yaml'} resume={run.path}")
    if callback_stop and last < task.total_steps:
        print(f"a callback stopped the run after step {last} of {task.total_steps}; "
              "that step's model is saved as the final one", file=sys.stderr)
    return last


def _train_step(task: SupervisedTask, batch, run: RunDirectory, step: int, max_grad_norm: float) -> dict[str, float]:
    task.optimizer.zero_grad(set_to_none=True)
    loss, train_metrics = task.step(batch)
    grad_norm = torch.nn.utils.clip_grad_norm_(task.model.parameters(), max_grad_norm)
    if not guarded_step(task.optimizer, task.scheduler, loss, grad_norm, run, step, {task.role: task.model}):
        return {"guard/skipped": 1.0}
    return {"train/loss": loss.item(), **train_metrics, "train/grad_norm": float(grad_norm),
            "train/lr": task.scheduler.get_last_lr()[0]}


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
