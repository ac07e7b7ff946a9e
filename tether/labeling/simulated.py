"""Simulated labelers: Python functions that answer tasks in place of a person.

A labeler is ``fn(prompt: str, responses: list[str]) -> answer`` where the answer is
- a list of response indices from best to worst (any K), or
- for K = 2, the int index (0 or 1) of the better response, or
- the string ``"tie"`` or ``"skip"``.

``tether label simulate --labeler module:function`` sends every answer through the same store
and export as the web page, so experiments (how much label noise can the reward model take?)
and tests exercise the real path. The functions below are small documented examples.
"""

from __future__ import annotations

import hashlib
import uuid
from dataclasses import dataclass
from typing import Any, Callable

from tether.errors import DataError, TetherError
from tether.labeling.judgement import judgement_from_output
from tether.labeling.store import Store
from tether.utils.imports import load_function

__all__ = ["prefer_shorter", "prefer_longer", "noisy_shorter", "load_labeler", "simulate", "SimulationSummary",
           "tie_share_warning"]

LabelerFn = Callable[[str, list[str]], Any]


def prefer_shorter(prompt: str, responses: list[str]) -> list[int] | str:
    """Ranks the shortest response first: a caricature of a labeler who values concision.
    Two responses of equal length are a tie (so tests see ties too)."""
    if len(responses) == 2 and len(responses[0]) == len(responses[1]):
        return "tie"
    return sorted(range(len(responses)), key=lambda i: (len(responses[i]), i))


def prefer_longer(prompt: str, responses: list[str]) -> list[int]:
    """The opposite taste: longest first (a known bias of human and model judges alike)."""
    return sorted(range(len(responses)), key=lambda i: (-len(responses[i]), i))


def noisy_shorter(prompt: str, responses: list[str]) -> list[int]:
    """``prefer_shorter`` with the top two swapped on ~25% of prompts, deterministically (a
    hash of the prompt, not a random generator), so reruns give the same labels."""
    ranking = sorted(range(len(responses)), key=lambda i: (len(responses[i]), i))
    if hashlib.sha256(prompt.encode()).digest()[0] < 64:
        ranking[0], ranking[1] = ranking[1], ranking[0]
    return ranking


def load_labeler(spec: str) -> LabelerFn:
    """``package.module:function`` -> the function, with a clear error for each way it fails."""
    return load_function(spec, "--labeler")


@dataclass(frozen=True)
class SimulationSummary:
    labeler: str
    answered: int  # answers written in this run
    already_done: int  # tasks this labeler had answered before the run
    preferences: int
    ties: int
    skips: int

    def describe(self) -> str:
        return (
            f"{self.labeler}: answered {self.answered} tasks ({self.preferences} preferences, {self.ties} ties, "
            f"{self.skips} skips); {self.already_done} were already answered"
        )

    def tie_warning(self) -> str | None:
        """A line when ties and skips leave too few comparisons to learn from."""
        return tie_share_warning(self.ties + self.skips, self.answered)


# a reward model learns only from the answers that order responses: past this share of ties and
# skips, a few hundred tasks leave too few comparisons to learn a taste from
TIE_SHARE_WARNING = 0.4


def tie_share_warning(undecided: int, answered: int) -> str | None:
    if answered == 0 or undecided / answered < TIE_SHARE_WARNING:
        return None
    return (f"{undecided} of {answered} answers ({undecided / answered:.0%}) were ties or skips: they order nothing, "
            "so the reward model learns from the rest only. A labeler whose taste leaves most pairs undecided needs "
            "more tasks, or tasks whose responses differ in what it judges")


def simulate(
    store: Store, fn: LabelerFn, labeler_name: str, *, spec: str = "", limit: int | None = None
) -> SimulationSummary:
    """Answer every task this labeler has not answered yet (at most ``limit``), in task order.

    The labeler is created if new (its token is not needed here: nothing goes over HTTP).
    Each answer is committed on its own, so an error on task n keeps answers 1..n-1.
    """
    labeler = store.labeler(labeler_name)
    if labeler is None:
        store.add_labeler(labeler_name)
        labeler = store.labeler(labeler_name)
    assert labeler is not None
    answered_before = {a.task_id for a in store.answer_rows(include_undone=False) if a.labeler == labeler_name}
    counts = {"preference": 0, "tie": 0, "skip": 0}
    for task in store.tasks():
        if task.id in answered_before:
            continue
        if limit is not None and sum(counts.values()) >= limit:
            break
        judgement = _judge(fn, spec or labeler_name, task.id, task.prompt, list(task.responses))
        # a fresh request id: a rerun after an undo must write a new answer, not find the old one
        store.submit(labeler, task.id, judgement.choice, judgement.ranking, None, f"sim-{uuid.uuid4().hex}")
        counts["preference" if judgement.is_preference else judgement.choice] += 1
    return SimulationSummary(
        labeler=labeler_name,
        answered=sum(counts.values()),
        already_done=len(answered_before),
        preferences=counts["preference"],
        ties=counts["tie"],
        skips=counts["skip"],
    )


def _judge(fn: LabelerFn, spec: str, task_id: str, prompt: str, responses: list[str]):
    try:
        output = fn(prompt, responses)
    except Exception as exc:  # the user's function: report which task broke it
        raise TetherError(f"labeler {spec} failed on task {task_id!r}: {type(exc).__name__}: {exc}") from exc
    try:
        return judgement_from_output(output, len(responses))
    except DataError as exc:
        raise DataError(f"labeler {spec} on task {task_id!r}: {exc}") from None
