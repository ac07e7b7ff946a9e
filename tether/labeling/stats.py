"""Per-labeler counts and agreement between labelers on the tasks they share.

Agreement is measured on response *pairs*: a K = 2 answer is one item (first better, second
better, or tie); a K > 2 ranking becomes K(K-1)/2 items, one per pair (i < j), and a tie on a
K > 2 task makes every pair a tie. Skips are left out: a skip says nothing about the
responses. For each pair of labelers we report percent agreement and Cohen's kappa
(Cohen 1960, "A coefficient of agreement for nominal scales"), which discounts the agreement
two labelers would reach by chance given how often each uses each label.
"""

from __future__ import annotations

import itertools
from collections import Counter, defaultdict
from dataclasses import dataclass

from tether.labeling.store import Answer, Store
from tether.labeling.tasks import Task

__all__ = ["LabelerCounts", "PairAgreement", "LabelStats", "pair_items", "cohen_kappa", "compute_stats", "format_stats"]


@dataclass(frozen=True)
class LabelerCounts:
    labeler: str
    answered: int  # live answers, skips included
    preferences: int  # answers that order the responses (exported)
    ties: int
    skips: int


@dataclass(frozen=True)
class PairAgreement:
    labeler_a: str
    labeler_b: str
    shared_tasks: int  # tasks both answered without skipping
    items: int  # response pairs compared (one per K = 2 task)
    percent_agreement: float | None  # 0..100; None without shared tasks
    kappa: float | None  # None without shared tasks, or when chance agreement is 1


@dataclass(frozen=True)
class LabelStats:
    tasks: int
    labelers: list[LabelerCounts]
    agreement: list[PairAgreement]


def pair_items(answer: Answer, k: int) -> dict[tuple[int, int], str]:
    """One label per response pair (i < j): "first" (i better), "second" (j better) or "tie"."""
    pairs = itertools.combinations(range(k), 2)
    if answer.ranking is None:
        return {pair: "tie" for pair in pairs}
    place = {index: rank for rank, index in enumerate(answer.ranking)}
    return {(i, j): "first" if place[i] < place[j] else "second" for i, j in pairs}


def cohen_kappa(labels_a: list[str], labels_b: list[str]) -> float | None:
    """(p_o - p_e) / (1 - p_e): observed agreement against chance agreement p_e = sum over
    labels of p_a(label) * p_b(label). None when p_e = 1 (both always used one same label)."""
    n = len(labels_a)
    if n == 0:
        return None
    observed = sum(a == b for a, b in zip(labels_a, labels_b)) / n
    count_a, count_b = Counter(labels_a), Counter(labels_b)
    chance = sum(count_a[label] * count_b[label] for label in count_a) / (n * n)
    if chance >= 1.0:
        return None
    return (observed - chance) / (1.0 - chance)


def compute_stats(store: Store) -> LabelStats:
    answers = store.live_answers()
    by_labeler: dict[str, dict[str, tuple[Answer, Task]]] = defaultdict(dict)
    for answer, task in answers:
        by_labeler[answer.labeler][task.id] = (answer, task)
    names = sorted({labeler.name for labeler in store.labelers()})
    counts = [_counts(name, list(by_labeler[name].values())) for name in names]
    agreement = [_agreement(a, b, by_labeler[a], by_labeler[b]) for a, b in itertools.combinations(names, 2)]
    return LabelStats(tasks=len(store.tasks()), labelers=counts, agreement=agreement)


def format_stats(stats: LabelStats) -> str:
    width = max([len("labeler")] + [len(c.labeler) for c in stats.labelers])
    lines = [f"{stats.tasks} tasks, {len(stats.labelers)} labelers", ""]
    lines.append(f"{'labeler':<{width}} {'answered':>8} {'prefs':>6} {'ties':>5} {'skips':>5}")
    for c in stats.labelers:
        lines.append(f"{c.labeler:<{width}} {c.answered:>8} {c.preferences:>6} {c.ties:>5} {c.skips:>5}")
    lines.append("")
    shared = [p for p in stats.agreement if p.shared_tasks]
    if not shared:
        lines.append("agreement: no two labelers have answered the same task (skips do not count)")
        return "\n".join(lines)
    lines.append("agreement on shared tasks (skips left out; rankings of 3+ responses compared pair by pair)")
    names = [f"{p.labeler_a} ~ {p.labeler_b}" for p in shared]
    width = max(len("labelers"), *map(len, names))
    lines.append(f"{'labelers':<{width}} {'tasks':>6} {'items':>6} {'agree':>7} {'kappa':>6}")
    for name, p in zip(names, shared):
        agree = "n/a" if p.percent_agreement is None else f"{p.percent_agreement:.1f}%"
        kappa = "n/a" if p.kappa is None else f"{p.kappa:.3f}"
        lines.append(f"{name:<{width}} {p.shared_tasks:>6} {p.items:>6} {agree:>7} {kappa:>6}")
    if len(shared) < len(stats.agreement):
        lines.append(f"({len(stats.agreement) - len(shared)} labeler pairs share no answered task)")
    return "\n".join(lines)


def _counts(name: str, answers: list[tuple[Answer, Task]]) -> LabelerCounts:
    choices = Counter(answer.choice for answer, _ in answers)
    return LabelerCounts(
        labeler=name,
        answered=len(answers),
        preferences=len(answers) - choices["tie"] - choices["skip"],
        ties=choices["tie"],
        skips=choices["skip"],
    )


def _agreement(name_a: str, name_b: str, answers_a: dict, answers_b: dict) -> PairAgreement:
    labels_a: list[str] = []
    labels_b: list[str] = []
    shared = 0
    for task_id in sorted(answers_a.keys() & answers_b.keys()):
        (answer_a, task), (answer_b, _) = answers_a[task_id], answers_b[task_id]
        if "skip" in (answer_a.choice, answer_b.choice):
            continue
        shared += 1
        items_a, items_b = pair_items(answer_a, task.k), pair_items(answer_b, task.k)
        for pair in items_a:
            labels_a.append(items_a[pair])
            labels_b.append(items_b[pair])
    n = len(labels_a)
    percent = 100.0 * sum(a == b for a, b in zip(labels_a, labels_b)) / n if n else None
    return PairAgreement(name_a, name_b, shared, n, percent, cohen_kappa(labels_a, labels_b))
