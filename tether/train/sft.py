"""``tether sft``: supervised fine-tuning on demonstrations, stage 1 of RLHF (the result is
π_SFT, which becomes π_ref and the PPO starting point).

The loss is the negative log-likelihood of the completion tokens only, averaged over the
batch's completion tokens: the prompt is context, not something to imitate (as InstructGPT's
SFT and TRL's ``completion_only_loss``). The response log-probs come from the same
``policy_forward`` PPO uses, so SFT and RL see identical tokenisation and positions.

The loop, the run start and the optimiser are the supervised trainer's
(tether.train.supervised, tether.train.optim); this file gives it the step and the evaluation.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, ClassVar, Sequence

import torch

from tether.config import NonNegative
from tether.data.batching import PromptResponseBatch, collate_examples, iterate_batches, tokenize_demonstrations
from tether.data.preferences import DropCounts
from tether.data.sft import DemonstrationData, load_demonstrations
from tether.models.forward import policy_forward
from tether.models.loading import load_causal_lm
from tether.ops.masking import masked_mean
from tether.train.optim import Schedule, make_optimizer
from tether.train.run_dir import save_pretrained_atomic
from tether.train.supervised import SupervisedTask, epoch_batches, fit, planned_steps, start_run
from tether.train.supervised_config import HeldOutFraction, SupervisedFields
from tether.utils.precision import autocast


@dataclass(frozen=True)
class SFTConfig(SupervisedFields):
    """The shared supervised fields (tether.train.supervised_config) with SFT's defaults."""

    algorithm: ClassVar[str] = "sft"  # run directory prefix: runs/sft-<timestamp>
    data_kind: ClassVar[str] = "a demonstrations file (prompt/completion or messages)"
    eval_fraction: HeldOutFraction = 0.05  # share of the demonstrations held out
    learning_rate: NonNegative = 2e-5
    lr_schedule: Schedule = "cosine"


def train_sft(config: SFTConfig, *, callbacks: Sequence[Callable] = ()) -> Path:
    """Fine-tune ``config.model`` on the demonstrations; returns the saved model folder
    (``<run>/policy``, loadable with ``AutoModelForCausalLM`` and ``tether ppo policy=...``).
    ``callbacks``: ``fn(step, metrics)`` after each step; returning True ends the run there with
    its model saved. Stopped by SIGINT/SIGTERM, it checkpoints and raises RunStopped (no model
    is written)."""
    def tokenize(data: DemonstrationData, tokenizer):
        return tokenize_demonstrations(data.examples, tokenizer, config.max_length, config.max_prompt_length,
                                       config.chat_template)

    begun = start_run(config, load_demonstration_splits, tokenize, callbacks)
    device, pad_id, eval_items = begun.device, begun.tokenizer.pad_token_id, begun.eval_items
    model = load_causal_lm(config.model, device)
    model.train()
    total_steps = planned_steps(len(begun.train_items), config)
    optimizer, scheduler = make_optimizer(model.parameters(), config.optim_settings, total_steps)
    collate = lambda items: collate_examples(items, pad_id)  # noqa: E731

    def train_step(batch: PromptResponseBatch):
        with autocast(device, config.precision):
            loss = completion_nll(model, batch.to(device))
        loss.backward()
        return loss, {}

    def evaluate(step: int) -> dict[str, float]:
        return {"eval/loss": evaluate_nll(model, eval_items, collate, config.batch_size, device, config.precision)}

    fit(SupervisedTask(command="sft", role="model", model=model, optimizer=optimizer, scheduler=scheduler,
                       total_steps=total_steps, batches=epoch_batches(begun.train_items, collate, config, total_steps),
                       step=train_step, evaluate=evaluate if eval_items else None, eval_every=config.eval_every),
        begun)
    model.eval()
    save_pretrained_atomic(model, begun.run.path / "policy", begun.tokenizer)
    begun.run.close()
    return begun.run.path / "policy"


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
