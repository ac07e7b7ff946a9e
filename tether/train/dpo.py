"""``tether dpo``: Direct Preference Optimisation (Rafailov et al. 2023), offline, from the same
preference files the reward model trains on.

    L_DPO = -log σ( β[(log π_θ(y_w|x) - log π_ref(y_w|x)) - (log π_θ(y_l|x) - log π_ref(y_l|x))] )

No reward model and no sampling: the policy is fitted to the comparisons directly, with the
frozen reference π_ref anchoring it. Variants (``tether.ops.losses.dpo_loss``): conservative
DPO (``label_smoothing`` > 0: the labels are flipped with that probability; Mitchell 2023) and
IPO (``loss_type: ipo``; Azar et al. 2023).

log π(y|x) is the sum of the response tokens' log-probs under the mask, from the same
``build_inputs`` + ``policy_forward`` SFT and PPO use (one forward pass per batch scores
chosen and rejected together). The reference log-probs never change, so they are computed once
before training and cached in the run directory (``ref_logps/<hash>.pt``, keyed by the
tokenised pairs, the reference model's files and the precision): a rerun with the same data and
reference loads them instead of running π_ref again, and π_ref is not kept in memory.

Metrics per step (``metrics.jsonl``): ``train/loss``, the implicit rewards
r = β·(log π_θ - log π_ref) of chosen and rejected (``rewards/chosen``, ``rewards/rejected``),
how often chosen wins (``rewards/accuracy``), their gap (``rewards/margin``) and the policy's
summed log-probs (``logps/chosen``, ``logps/rejected``: a falling ``logps/chosen`` is the known
DPO failure ``tether doctor`` watches for); the same under ``eval/`` on held-out pairs.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Callable, ClassVar, Literal, Sequence

import torch

from tether.config import NonNegative, Positive, PositiveInt, Range
from tether.data.batching import PreferenceBatch, TokenizedPair, collate_pairs, iterate_batches
from tether.errors import ConfigError
from tether.models.forward import policy_forward
from tether.models.loading import freeze, load_causal_lm
from tether.models.registry import resolve_model
from tether.ops.losses import dpo_loss
from tether.ops.masking import real_width
from tether.utils.precision import autocast
from tether.train.optim import make_optimizer
from tether.train.run_dir import RunSettings, save_pretrained_atomic
from tether.train.supervised import SupervisedTask, epoch_batches, fit, planned_steps, start_preference_run
from tether.train.supervised_config import SupervisedFields

DPO_STATS = ("rewards/chosen", "rewards/rejected", "rewards/accuracy", "rewards/margin", "logps/chosen", "logps/rejected")


@dataclass(frozen=True)
class DPOConfig(SupervisedFields):
    """The shared supervised fields (tether.train.supervised_config) with DPO's learning rate,
    then DPO's own. ``model``: the policy's start, usually the SFT model."""

    algorithm: ClassVar[str] = "dpo"  # run directory prefix: runs/dpo-<timestamp>
    model_fields: ClassVar[tuple[str, ...]] = ("model", "reference")  # model folders checked before the run starts
    data_kind: ClassVar[str] = "a preference file (prompt/chosen/rejected or rankings)"
    learning_rate: NonNegative = 5e-7
    # --- models -------------------------------------------------------------------------------
    reference: str | None = None  # frozen π_ref; default: the policy's starting weights (model)
    # --- loss ---------------------------------------------------------------------------------
    beta: Positive = 0.1  # β: strength of the KL anchor to π_ref (implicit reward scale)
    label_smoothing: Annotated[float, Range(ge=0, lt=0.5)] = 0.0  # cDPO: assumed probability that a label is flipped, in [0, 0.5)
    loss_type: Literal["sigmoid", "ipo"] = "sigmoid"  # sigmoid: DPO / cDPO; ipo: (h - 1/(2β))²
    # --- batches and the run ------------------------------------------------------------------
    micro_batch_size: PositiveInt | None = None  # pairs per forward/backward (gradient accumulation); default batch_size
    ref_batch_size: PositiveInt = 16  # pairs per no-grad forward when precomputing the reference log-probs
    overwrite: bool = False  # replace an existing run of the same name (its reference cache is kept)

    @property
    def run_settings(self) -> RunSettings:
        return RunSettings(self.output_dir, self.run_name, self.algorithm, self.resume, overwrite=self.overwrite)

    def __post_init__(self) -> None:
        super().__post_init__()  # the metric-sink fields, each field's bounds, the shared checks
        if self.loss_type == "ipo" and self.label_smoothing:
            raise ConfigError('label_smoothing applies to loss_type "sigmoid" only (cDPO); set it to 0 for ipo')
        if self.micro_batch_size is not None and self.micro_batch_size > self.batch_size:
            raise ConfigError(f'field "micro_batch_size" must be at most batch_size = {self.batch_size}, '
                              f"got {self.micro_batch_size}")


# ----- log-probs ----------------------------------------------------------------------------


def sequence_logps(model, batch: PreferenceBatch) -> tuple[torch.Tensor, torch.Tensor]:
    """(Σ_t log π(y_w,t|x, y_w,<t), Σ_t log π(y_l,t|...)), each (N,): chosen and rejected in one
    forward pass, summed over each response's real tokens (the mask, never ``ids != pad``)."""
    joint = batch.joint()
    logprobs = policy_forward(model, joint.inputs(), joint.response_ids).logprobs  # (2N, R)
    summed = (logprobs.float() * joint.response_mask).sum(1)
    return summed[: len(batch)], summed[len(batch):]


@torch.no_grad()
def all_sequence_logps(model, items: Sequence[TokenizedPair], pad_id: int, batch_size: int, device,
                       precision: str = "fp32") -> torch.Tensor:
    """(N, 2) summed log-probs [chosen, rejected] of every pair, on the CPU, in item order."""
    was_training = model.training
    model.eval()
    out = []
    for batch in iterate_batches(items, batch_size, lambda b: collate_pairs(b, pad_id)):
        with autocast(device, precision):
            chosen, rejected = sequence_logps(model, batch.to(device))
        out.append(torch.stack([chosen, rejected], 1).float().cpu())
    model.train(was_training)
    return torch.cat(out) if out else torch.zeros(0, 2)


def reference_key(reference: str, items: Sequence[TokenizedPair], precision: str) -> str:
    """Hash of what the reference log-probs depend on: the tokenised pairs, the reference
    model's files (name, size, modification time: cheap for a 1 GB model) and the precision."""
    h = hashlib.sha256()
    path = resolve_model(reference)
    h.update(str(path.resolve()).encode())
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for f in files:
        stat = f.stat()
        h.update(f"{f.relative_to(path) if path.is_dir() else f.name}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    h.update(precision.encode())
    for it in items:
        h.update(json.dumps([it.prompt, it.chosen, it.rejected]).encode())
    return h.hexdigest()[:16]


def reference_logps(config: DPOConfig, items: Sequence[TokenizedPair], pad_id: int, device,
                    cache_dir: Path) -> tuple[torch.Tensor, bool]:
    """(N, 2) reference log-probs of ``items``, from ``cache_dir/<hash>.pt`` when there, else
    computed with π_ref (loaded, used once, released) and cached. Returns (logps, from_cache)."""
    reference = config.reference or config.model
    path = cache_dir / f"{reference_key(reference, items, config.precision)}.pt"
    if path.exists():
        cached = torch.load(path, map_location="cpu", weights_only=True)
        if cached.shape == (len(items), 2):
            return cached, True
    ref_model = freeze(load_causal_lm(reference, device))
    logps = all_sequence_logps(ref_model, items, pad_id, config.ref_batch_size, device, config.precision)
    del ref_model
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(logps, tmp)
    tmp.replace(path)
    return logps, False


# ----- training -----------------------------------------------------------------------------


def train_dpo(config: DPOConfig, *, callbacks: Sequence[Callable] = ()) -> Path:
    """Fit the policy to the preferences; returns the run directory (``metrics.jsonl``, the
    reference cache and the final ``policy/``, loadable with ``AutoModelForCausalLM``).
    ``callbacks``: ``fn(step, metrics)`` after each step; returning True ends the run there with
    its policy saved."""
    begun = start_preference_run(config, callbacks)
    device, run, pad_id, eval_items = begun.device, begun.run, begun.tokenizer.pad_token_id, begun.eval_items

    # π_ref once, before the policy exists in memory: (N, 2) tensors, cached in the run dir
    ref_train, cached = reference_logps(config, begun.train_items, pad_id, device, run.path / "ref_logps")
    ref_eval = reference_logps(config, eval_items, pad_id, device, run.path / "ref_logps")[0] if eval_items else None

    model = load_causal_lm(config.model, device)
    model.train()
    total_steps = planned_steps(len(begun.train_items), config)
    optimizer, scheduler = make_optimizer(model.parameters(), config.optim_settings, total_steps)
    indexed = list(enumerate(begun.train_items))
    collate = lambda rows: (torch.tensor([i for i, _ in rows]), collate_pairs([it for _, it in rows], pad_id))  # noqa: E731

    def train_step(indexed_batch: tuple[torch.Tensor, PreferenceBatch]):
        rows, batch = indexed_batch
        return accumulated_step(model, batch, ref_train[rows], config, device)

    def evaluate(step: int) -> dict[str, float]:
        return {f"eval/{k}": v for k, v in evaluate_dpo(model, eval_items, ref_eval, pad_id, config, device).items()}

    fit(SupervisedTask(command="dpo", role="policy", model=model, optimizer=optimizer, scheduler=scheduler,
                       total_steps=total_steps, batches=epoch_batches(indexed, collate, config, total_steps),
                       step=train_step, evaluate=evaluate if eval_items else None, eval_every=config.eval_every,
                       progress_fields={"loss": "train/loss", "acc": "rewards/accuracy"},
                       first_metrics={"ref/cached": float(cached)}), begun)
    model.eval()
    save_pretrained_atomic(model, run.path / "policy", begun.tokenizer)
    run.close()
    return run.path


def accumulated_step(model, batch: PreferenceBatch, ref: torch.Tensor, config: DPOConfig,
                     device) -> tuple[torch.Tensor, dict[str, float]]:
    """Forward and backward of one batch in micro-batches of ``micro_batch_size`` pairs; ``ref``
    (N, 2): the batch's reference log-probs. Returns the batch's mean loss (detached) and stats."""
    micro = config.micro_batch_size or config.batch_size
    sums: dict[str, float] = {}
    total_loss = torch.zeros(())
    for chunk in torch.arange(len(batch)).split(micro):
        part = _select(batch, chunk).to(device)
        ref_part = ref[chunk].to(device)
        with autocast(device, config.precision):
            chosen, rejected = sequence_logps(model, part)
        loss, stats = dpo_loss(chosen, rejected, ref_part[:, 0], ref_part[:, 1], config.beta,
                               config.label_smoothing, config.loss_type)
        # the loss is a mean over pairs: weighting each chunk by its share keeps accumulation exact
        share = len(chunk) / len(batch)
        (loss * share).backward()
        total_loss = total_loss + loss.detach().float().cpu() * share
        for name, value in stats.items():
            sums[name] = sums.get(name, 0.0) + value.item() * share
    return total_loss, sums


def evaluate_dpo(model, items: Sequence[TokenizedPair], ref: torch.Tensor, pad_id: int, config: DPOConfig,
                 device) -> dict[str, float]:
    """DPO loss, implicit-reward accuracy and margin, and log-probs on held-out pairs."""
    policy = all_sequence_logps(model, items, pad_id, config.ref_batch_size, device, config.precision)
    loss, stats = dpo_loss(policy[:, 0], policy[:, 1], ref[:, 0], ref[:, 1], config.beta,
                           config.label_smoothing, config.loss_type)
    return {"loss": loss.item(), **{k: v.item() for k, v in stats.items()}}


def _select(batch: PreferenceBatch, rows: torch.Tensor) -> PreferenceBatch:
    """Rows of a preference batch, with columns that are padding in all of them trimmed
    (``build_inputs`` trims the prompt side; the response side is cut here)."""
    def part(b):
        mask = b.response_mask[rows]
        width = real_width(mask)
        return type(b)(b.prompt_ids[rows], b.prompt_mask[rows], b.response_ids[rows][:, :width], mask[:, :width])

    if len(rows) == len(batch):
        return batch
    return PreferenceBatch(part(batch.chosen), part(batch.rejected), batch.margin[rows], batch.weight[rows],
                           batch.tie[rows])


__all__ = ["DPOConfig", "train_dpo", "sequence_logps", "reference_logps", "reference_key"]
