"""Store -> the JSONL that ``tether train-rm`` reads.

One line per live answer (undone ones are gone), every labeler's answer kept with its
labeler id, so a reward model can weight or filter labelers later:
- K = 2: ``{"prompt", "chosen", "rejected", "labeler", "task_id", "reason"}``
- K > 2: ``{"prompt", "responses", "ranking" (indices best -> worst), "labeler", "task_id", "reason"}``

When the task says which responses were cut off at the sampler's length limit, the record
carries it (``chosen_truncated``/``rejected_truncated``, or ``truncated`` for a ranking), so that
``train-rm`` scores such a response without an EOS it never generated. A task of a ``tether rlhf``
round adds ``round`` to its records.
Ties and skips order nothing, so they are left out and counted in the summary.
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
    ties: int  # left out
    skips: int  # left out
    labelers: int  # distinct labelers among the written records
    tasks: int  # distinct tasks among the written records

    def describe(self) -> str:
        return (
            f"{self.pairs} pairs and {self.rankings} rankings from {self.labelers} labelers on {self.tasks} tasks; "
            f"left out {self.ties} ties and {self.skips} skips"
        )


def export_records(answers: Iterable[tuple[Answer, Task]]) -> tuple[list[dict[str, Any]], ExportSummary]:
    records: list[dict[str, Any]] = []
    ties = skips = 0
    for answer, task in answers:
        if answer.choice == "tie":
            ties += 1
        elif answer.choice == "skip":
            skips += 1
        else:
            records.append(_record(answer, task))
    summary = ExportSummary(
        pairs=sum("chosen" in r for r in records),
        rankings=sum("ranking" in r for r in records),
        ties=ties,
        skips=skips,
        labelers=len({r["labeler"] for r in records}),
        tasks=len({r["task_id"] for r in records}),
    )
    return records, summary


def export_jsonl(store: Store, out: str | Path, keep: Callable[[Task], bool] | None = None) -> ExportSummary:
    """Write atomically (temp file, then rename): a reader never sees half an export.
    ``keep``: only the answers to tasks it accepts (``tether rlhf``: the rounds so far)."""
    answers = store.live_answers()
    records, summary = export_records(answers if keep is None else [(a, t) for a, t in answers if keep(t)])
    out = Path(out)
    tmp = out.with_name(out.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for record in records:
            f.write(json.dumps(record, ensure_ascii=False) + "\n")
    os.replace(tmp, out)
    return summary


def _record(answer: Answer, task: Task) -> dict[str, Any]:
    assert answer.ranking is not None  # ties and skips were filtered out by the caller
    meta = {"labeler": answer.labeler, "task_id": task.id, "reason": answer.reason}
    if task.round is not None:
        meta["round"] = task.round
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
