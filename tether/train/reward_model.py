"""``tether train-rm``: a reward model from human comparisons, stage 3 of RLHF.

    L_RM(φ) = -E[(x, y_w, y_l)] w · log σ(r_φ(x, y_w) - r_φ(x, y_l) - m)

Bradley-Terry (Ouyang et al. 2022, eq. 1) with an optional per-pair margin m (Touvron et al.
2023, Llama 2) and per-pair weights w (1/C(K,2) for the pairs of a K-wise ranking, so each
ranked prompt weighs the same: InstructGPT). r_φ is a ``ScalarHeadModel``: any causal LM or
encoder checkpoint with a fresh scalar head, read at the last real token of the response.

After training the scores are normalised: a gain and bias are fitted so that reference
responses (samples from the SFT policy, or the data's chosen responses) score mean 0 and
std 1 (Ziegler et al. 2019; Huang et al. 2024), so that the KL coefficient β means the same
for every reward model. They are stored in the saved config; every later load scores
normalised.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Callable, ClassVar, Literal, Sequence

import torch

from tether.config import Count, NonNegative, PositiveInt, Range
from tether.data.batching import PreferenceBatch, TokenizedPair, collate_pairs, iterate_batches
from tether.models.scalar_head import ScalarHeadModel, export_reward_model
from tether.ops.losses import bradley_terry_loss
from tether.utils.precision import autocast
from tether.train.optim import make_optimizer
from tether.train.run_dir import save_pretrained_atomic, write_atomic
from tether.train.supervised import RunStart, SupervisedTask, fit, start_preference_run
from tether.train.supervised_config import SupervisedFields
from tether.utils.stats import grouped_accuracy_ci
from tether.train.rm_normalization import fit_normalization, reference_set
from tether.train.rm_selection import AccuracyVerdict, BestWeights, prompt_batches, ranked_batches

# a new head's learning rate (Adam's step per coordinate): ~50x a reward model's usual backbone
# rate, so a zero head reaches unit-order score differences within a few dozen steps
NEW_HEAD_LEARNING_RATE = 1e-3


@dataclass(frozen=True)
class RewardModelConfig(SupervisedFields):
    """The shared supervised fields (tether.train.supervised_config), then the reward model's
    own. ``model``: any causal LM / encoder (a fresh scalar head), or an earlier reward model;
    one epoch by default, as reward models overfit quickly (InstructGPT trains one)."""

    algorithm: ClassVar[str] = "rm"  # run directory prefix: runs/rm-<timestamp>
    model_fields: ClassVar[tuple[str, ...]] = ("model", "reference_policy")  # model folders checked before the run starts
    data_kind: ClassVar[str] = "a preference file (prompt/chosen/rejected or rankings)"
    # --- the scalar head ----------------------------------------------------------------------
    fresh_head: bool = False  # re-draw the head even if the checkpoint has one
    # how a new head starts: "zero" (every score equal, training starts as a linear probe) or
    # "normal" (N(0, 1/(d+1)), Stiennon et al. 2020); see ScalarHeadModel.reset_head
    head_init: Literal["zero", "normal"] = "zero"
    trainable_layers: Count | None = None  # train only the top N blocks + final norm + head (0: head only); None: all
    # the scalar head's own rate. None: NEW_HEAD_LEARNING_RATE for a head drawn at load time,
    # learning_rate for one read from the checkpoint (a reward model trained further). At the
    # backbone's rate a new head barely moves in a few hundred steps, and the backbone bends its
    # features towards the head's initial direction instead; a faster zero-initialised head
    # first fits a linear probe of the pretrained features, which fine-tuning then refines
    # (LP-FT, Kumar et al. 2022). Measured on SmolLM2 in docs/reward-model.md
    head_learning_rate: NonNegative | None = None
    # --- loss ---------------------------------------------------------------------------------
    ranking_weighting: Literal["per-prompt", "per-pair"] = "per-prompt"  # K-wise pairs weigh 1/C(K,2), or 1 each
    use_margin: bool = True  # subtract the data's "margin" inside the sigmoid where given
    # --- evaluation ---------------------------------------------------------------------------
    evals_per_epoch: PositiveInt | None = None  # instead of eval_every: this many evaluations per pass over the data
    # keep the weights of the evaluation with the lowest held-out loss (early stopping on the
    # held-out prompts; their accuracy is then slightly optimistic, having chosen the step)
    keep_best: bool = False
    # --- normalisation ------------------------------------------------------------------------
    # reference set for mean 0 / std 1: the data's chosen responses; every response in the data
    # ("responses": the labeling policy's samples, i.e. π_ref when tasks were sampled from the
    # SFT policy); fresh samples of a policy ("policy"); or none
    normalize: Literal["chosen", "responses", "policy", "none"] = "chosen"
    reference_policy: str | None = None  # normalize=policy: model sampled for reference responses (default: model)
    reference_prompts: str | None = None  # normalize=policy: prompts file (default: the training prompts)
    normalize_samples: Annotated[int, Range(ge=2, why="a std needs two scores")] = 256  # reference responses used to fit gain and bias
    reference_max_new_tokens: PositiveInt = 64  # normalize=policy: length limit of the samples


def train_reward_model(config: RewardModelConfig, *, callbacks: Sequence[Callable] = ()) -> Path:
    """Train, normalise and save; returns the model folder (``<run>/reward_model``), which
    loads as ``AutoModelForSequenceClassification`` and plugs into ``tether ppo reward_model=``.
    ``callbacks``: ``fn(step, metrics)`` after each step; returning True ends training there
    (then the model is judged, normalised and saved as after the last step)."""
    begun = start_preference_run(config, callbacks, learns_ties=True)
    device, pad_id, eval_items = begun.device, begun.tokenizer.pad_token_id, begun.eval_items
    model = ScalarHeadModel.from_pretrained(config.model, device, fresh_head=config.fresh_head,
                                            new_head=config.head_init)
    model.set_normalization(1.0, 0.0)  # train on raw scores; gain and bias are refitted below
    if config.trainable_layers is not None:
        model.train_top_layers(config.trainable_layers)
    model.train()
    steps_per_epoch = len(prompt_batches(begun.train_items, config.batch_size))
    total_steps = config.max_steps or steps_per_epoch * config.epochs
    eval_every = max(1, steps_per_epoch // config.evals_per_epoch) if config.evals_per_epoch else config.eval_every
    optimizer, scheduler = make_optimizer(_parameter_groups(model, config), config.optim_settings, total_steps)
    collate = lambda items: collate_pairs(items, pad_id)  # noqa: E731
    best = BestWeights()

    def train_step(batch: PreferenceBatch):
        with autocast(device, config.precision):
            loss, stats = preference_loss(model, batch.to(device), config)
        loss.backward()
        return loss, {"train/accuracy": stats["accuracy"].item(), "train/margin": stats["margin"].item()}

    def evaluate(step: int) -> dict[str, float]:
        held_out = evaluate_pairs(model, eval_items, pad_id, config)
        if config.keep_best:
            best.offer(step, held_out["loss"], model)
        return {f"eval/{k}": v for k, v in held_out.items()}

    last = fit(SupervisedTask(command="train-rm", progress_name="reward model", role="reward model", model=model,
                              optimizer=optimizer, scheduler=scheduler, total_steps=total_steps,
                              batches=ranked_batches(begun.train_items, collate, config, total_steps),
                              step=train_step, evaluate=evaluate if eval_items else None, eval_every=eval_every,
                              progress_fields={"loss": "train/loss", "acc": "train/accuracy"}), begun)
    if best.step is not None and best.step != last:
        best.restore(model)
        print(f"reward model: kept the weights of step {best.step} (lowest held-out loss {best.loss:.4f})",
              file=sys.stderr)
    model.eval()
    return _finish(model, begun, best.step or last, last)


def _finish(model: ScalarHeadModel, begun: RunStart, kept_step: int, last_step: int) -> Path:
    """Judge the kept weights on the held-out pairs, normalise the scores, export and save."""
    config, run, tokenizer = begun.config, begun.run, begun.tokenizer
    if begun.eval_items:
        verdict = judge_accuracy(model, begun.eval_items, tokenizer.pad_token_id, config, kept_step)
        write_atomic(run.path / "rm_verdict.json", json.dumps(verdict.to_json(), indent=2) + "\n")
        run.logger.log(last_step, {"eval/final_accuracy": verdict.accuracy, "eval/accuracy_ci_low": verdict.ci95[0],
                                   "eval/accuracy_ci_high": verdict.ci95[1],
                                   "eval/rm_learned": float(verdict.learned)})
        if not verdict.learned:
            run.warn(verdict.describe())
        elif not config.quiet:
            print(verdict.describe(), file=sys.stderr)
    if config.normalize != "none":
        prompts, responses, truncated = reference_set(config, begun.train_data, tokenizer, begun.device)
        gain, bias = fit_normalization(model, tokenizer, prompts, responses, config.batch_size * 2,
                                       config.chat_template, config.max_length, truncated)
        model.set_normalization(gain, bias)
        model.config.tether_normalization = {"reference": config.normalize, "samples": len(responses)}
        run.logger.log(last_step, {"normalize/gain": gain, "normalize/bias": bias})
    export_reward_model(model, tokenizer)  # plain transformers then scores as tether does
    save_pretrained_atomic(model, run.path / "reward_model", tokenizer)
    run.close()
    return run.path / "reward_model"


def _parameter_groups(model: ScalarHeadModel, config: RewardModelConfig) -> list[dict]:
    """The trainable parameters, the head in its own group when it has its own learning rate."""
    head = [p for p in model.head.parameters() if p.requires_grad]
    head_ids = {id(p) for p in head}
    rest = [p for p in model.parameters() if p.requires_grad and id(p) not in head_ids]
    head_lr = config.head_learning_rate
    if head_lr is None and model.head_is_new:
        head_lr = NEW_HEAD_LEARNING_RATE
    if head_lr is None:
        return [{"params": rest + head}]
    return [{"params": rest}, {"params": head, "lr": head_lr}]


def preference_loss(model: ScalarHeadModel, batch: PreferenceBatch, config: RewardModelConfig):
    """Bradley-Terry loss of one batch (tied pairs pulled to equal scores); chosen and rejected
    scored in one forward pass."""
    chosen, rejected = pair_scores(model, batch)
    margin = batch.margin if config.use_margin else None
    weights = batch.weight if config.ranking_weighting == "per-prompt" else None
    return bradley_terry_loss(chosen, rejected, margin, weights, batch.tie)


def pair_scores(model: ScalarHeadModel, batch: PreferenceBatch) -> tuple[torch.Tensor, torch.Tensor]:
    """(r(x, y_w), r(x, y_l)), each (N,), normalised with the model's current gain and bias.
    Each distinct (prompt, response) is scored once however many pairs it is in."""
    rows, chosen, rejected = batch.unique_joint()
    inputs = rows.inputs()
    scores = model.sequence_scores(inputs, rows.last_index(inputs))  # (distinct rows,)
    return scores[chosen], scores[rejected]


def judge_accuracy(model: ScalarHeadModel, items: Sequence[TokenizedPair], pad_id: int, config,
                   step: int) -> AccuracyVerdict:
    chosen, rejected = score_all_pairs(model, items, pad_id, config.batch_size * 2, config.precision)
    correct = ((chosen > rejected).float() + 0.5 * (chosen == rejected).float()).tolist()
    weights = [it.weight for it in items] if config.ranking_weighting == "per-prompt" else None
    accuracy, lo, hi = grouped_accuracy_ci(correct, [it.group for it in items], weights, seed=config.seed)
    return AccuracyVerdict(accuracy, (lo, hi), len(items), len({it.group for it in items}), step)


@torch.no_grad()
def score_all_pairs(model: ScalarHeadModel, items: Sequence[TokenizedPair], pad_id: int, batch_size: int,
                    precision: str = "fp32") -> tuple[torch.Tensor, torch.Tensor]:
    """Scores of every pair: (chosen (N,), rejected (N,)) on the CPU."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    chosen, rejected = [], []
    for batch in iterate_batches(items, batch_size, lambda b: collate_pairs(b, pad_id)):
        with autocast(device, precision):
            c, r = pair_scores(model, batch.to(device))
        chosen.append(c.float().cpu())
        rejected.append(r.float().cpu())
    model.train(was_training)
    return torch.cat(chosen), torch.cat(rejected)


def evaluate_pairs(model: ScalarHeadModel, items: Sequence[TokenizedPair], pad_id: int, config) -> dict[str, float]:
    """Held-out accuracy (r_w > r_l), mean score gap r_w - r_l, and Bradley-Terry loss."""
    chosen, rejected = score_all_pairs(model, items, pad_id, config.batch_size * 2, config.precision)
    margin = torch.tensor([it.margin for it in items]) if config.use_margin else None
    weight = torch.tensor([it.weight for it in items]) if config.ranking_weighting == "per-prompt" else None
    loss, stats = bradley_terry_loss(chosen, rejected, margin, weight)
    return {"loss": loss.item(), "accuracy": stats["accuracy"].item(), "margin": stats["margin"].item()}
