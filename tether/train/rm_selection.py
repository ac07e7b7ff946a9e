"""How train-rm batches its comparisons and picks and judges its weights: batches of whole
prompts, the weights of the lowest held-out loss, and the held-out accuracy against chance."""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Sequence

import torch

from tether.data.batching import TokenizedPair
from tether.train.supervised import over_epochs


def prompt_batches(items: Sequence[TokenizedPair], batch_size: int, seed: int | None = None) -> list[list[int]]:
    """Item indices grouped by prompt, then packed into batches of whole prompts holding about
    ``batch_size`` pairs each (prompts in a seeded shuffled order when ``seed`` is given). The
    C(K,2) pairs of one prompt's responses train together, as a single batch element (Ouyang et
    al. 2022, InstructGPT, sec. 3.5: it avoids overfitting to responses seen in many pairs), and
    each of the K responses is scored once per step."""
    by_prompt: dict[int, list[int]] = {}
    for i, item in enumerate(items):
        by_prompt.setdefault(item.group, []).append(i)
    groups = list(by_prompt.values())
    if seed is not None:
        random.Random(seed).shuffle(groups)
    prompts_per_batch = max(1, round(batch_size * len(groups) / max(len(items), 1)))
    return [sum(groups[i : i + prompts_per_batch], []) for i in range(0, len(groups), prompts_per_batch)]


def ranked_batches(items: Sequence[TokenizedPair], collate, config, total_steps: int):
    """Batches of whole prompts (``prompt_batches``), in a new order each epoch, until
    ``total_steps`` batches were given. The order is a function of (seed, epoch): a resumed run
    skips to where it stopped."""
    def one_epoch(epoch: int):
        return (collate([items[i] for i in batch]) for batch in prompt_batches(items, config.batch_size, config.seed + epoch))

    return over_epochs(one_epoch, total_steps)


class BestWeights:
    """A CPU copy of the trainable weights at the evaluation with the lowest held-out loss."""

    def __init__(self):
        self.step: int | None = None
        self.loss = float("inf")
        self.state: dict[str, torch.Tensor] = {}

    def offer(self, step: int, loss: float, model: torch.nn.Module) -> None:
        if loss < self.loss:
            self.step, self.loss = step, loss
            self.state = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}

    def restore(self, model: torch.nn.Module) -> None:
        model.load_state_dict(self.state)


# fewer held-out prompts than this cannot show a reward model above chance
MIN_JUDGED_PROMPTS = 8


@dataclass(frozen=True)
class AccuracyVerdict:
    """Did the reward model learn the labels? Held-out accuracy against chance, with the 95%
    interval from resampling held-out prompts."""

    accuracy: float
    ci95: tuple[float, float]
    pairs: int
    prompts: int
    step: int  # the step whose weights were judged

    @property
    def learned(self) -> bool:
        """The interval lies wholly above chance (0.5), from enough held-out prompts for the
        interval to mean something (a handful of prompts resample to a too-narrow one)."""
        return self.ci95[0] > 0.5 and self.prompts >= MIN_JUDGED_PROMPTS

    def to_json(self) -> dict:
        return {"accuracy": self.accuracy, "ci95": list(self.ci95), "pairs": self.pairs, "prompts": self.prompts,
                "step": self.step, "learned": self.learned}

    def describe(self) -> str:
        interval = f"{self.accuracy:.1%} [{self.ci95[0]:.1%}, {self.ci95[1]:.1%}]"
        if self.prompts < MIN_JUDGED_PROMPTS:
            return (f"reward model held-out accuracy {interval} on {self.pairs} pairs from only {self.prompts} "
                    f"prompts is not above chance (50%) by any measure that {self.prompts} prompts allow: hold "
                    f"out at least {MIN_JUDGED_PROMPTS} prompts (more labeled prompts, or a larger eval_fraction)")
        if self.learned:
            return f"reward model held-out accuracy {interval} on {self.pairs} pairs from {self.prompts} prompts: above chance"
        return (f"reward model held-out accuracy {interval} on {self.pairs} pairs from {self.prompts} prompts is not "
                "above chance (50%): it has not learned the labels, and optimising it would steer the policy by "
                "noise. Collect more comparisons (or fewer ties), check that the labels are consistent, or train "
                "longer (epochs, learning_rate)")
