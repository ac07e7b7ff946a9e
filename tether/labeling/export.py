"""Store -> the JSONL that ``tether train-rm`` reads.

One line per live answer (undone ones are gone), every labeler's answer kept with its
labeler id, so a reward model can weight or filter labelers later:
- K = 2: ``{"prompt", "chosen", "rejected", "labeler", "task_id", "reason"}``
- K > 2: ``{"prompt", "responses", "ranking" (indices best -> worst), "labeler", "task_id", "reason"}``

When the task says which responses were cut off at the sampler's length limit, the record
carries it (``chosen_truncated``/``rejected_truncated``, or ``truncated`` for a ranking), so that
``train-rm`` scores such a response without an EOS it never generated. A task of a ``tether rlhf``
round adds ``round`` to its records.
Skips order nothing and are left out, counted in the summary. Ties are left out too unless asked
for (``ties=True``, ``tether label export --ties``): then a tie is
``{"prompt", "responses", "tie": true, ...}``, which ``train-rm`` learns as "score these alike"
and which a reader of TRL's pair format cannot mistake for a preference (it has no
``chosen``/``rejected``).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

from tether.labeling.store import Answer, Store
from tether.labeling.tasks import Task

__all__ = ["ExportSummary", "export_records", "export_jsonl"]


@dataclass(frozen=True)
class ExportSummary:
    pairs: int  # K = 2 records written
    rankings: int  # K > 2 records written
    ties: int  # left out, or written with ties_kept
    skips: int  # left out
    labelers: int  # distinct labelers among the written records
    tasks: int  # distinct tasks among the written records
    ties_kept: bool = False  # the ties were written as tie records

    def describe(self) -> str:
        if self.ties_kept:
            return (f"{self.pairs} pairs, {self.rankings} rankings and {self.ties} ties from {self.labelers} labelers "
                    f"on {self.tasks} tasks; left out {self.skips} skips")
        return (f"{self.pairs} pairs and {self.rankings} rankings from {self.labelers} labelers on {self.tasks} tasks; "
                f"left out {self.ties} ties and {self.skips} skips")


def export_records(answers: Iterable[tuple[Answer, Task]],
                   ties: bool = False) -> tuple[list[dict[str, Any]], ExportSummary]:
    """The records of the live answers; with ``ties`` a tie is written as a tie record."""
    records: list[dict[str, Any]] = []
    tie_count = skips = 0
    for answer, task in answers:
        if answer.choice == "tie":
            tie_count += 1
            if ties:
                records.append(_tie_record(answer, task))
        elif answer.choice == "skip":
            skips += 1
        else:
            records.append(_record(answer, task))
    summary = ExportSummary(
        pairs=sum("chosen" in r for r in records),
        rankings=sum("ranking" in r for r in records),
        ties=tie_count,
        skips=skips,
        labelers=len({r["labeler"] for r in records}),
        tasks=len({r["task_id"] for r in records}),
        ties_kept=ties,
    )
    return records, summary


def export_jsonl(store: Store, out: str | Path, keep: Callable[[Task], bool] | None = None,
                 ties: bool = False) -> ExportSummary:
    """Write atomically (temp file, then rename): a reader never sees half an export.
    ``keep``: only the answers to tasks it accepts (``tether rlhf``: the rounds so far);
    ``ties``: write ties as tie records instead of leaving them out."""
    answers = store.live_answers()
    records, summary = export_records(answers if keep is None else [(a, t) for a, t in answers if keep(t)], ties)
    out = Path(out)
    tmp = out.with_name(out.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for record in records:
            f.write(json.dumps(record, ensure_ascii=False) + "\n")
    os.replace(tmp, out)
    return summary


def _meta(answer: Answer, task: Task) -> dict[str, Any]:
    meta = {"labeler": answer.labeler, "task_id": task.id, "reason": answer.reason}
    if task.round is not None:
        meta["round"] = task.round
    return meta


def _tie_record(answer: Answer, task: Task) -> dict[str, Any]:
    record: dict[str, Any] = {"prompt": task.prompt, "responses": list(task.responses), "tie": True}
    if task.truncated is not None:
        record["truncated"] = list(task.truncated)
    return {**record, **_meta(answer, task)}


def _record(answer: Answer, task: Task) -> dict[str, Any]:
    assert answer.ranking is not None  # ties and skips were filtered out by the caller
    meta = _meta(answer, task)
    cut = task.truncated
    if task.k == 2:
        best, worst = answer.ranking
        record = {"prompt": task.prompt, "chosen": task.responses[best], "rejected": task.responses[worst]}
        if cut is not None:
            record.update(chosen_truncated=cut[best], rejected_truncated=cut[worst])
        return {**record, **meta}
    record = {"prompt": task.prompt, "responses": list(task.responses), "ranking": list(answer.ranking)}
    if cut is not None:
        record["truncated"] = list(cut)
    return {**record, **meta}
