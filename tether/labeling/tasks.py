"""Labeling tasks: one prompt and K >= 2 candidate responses, read from and written to JSONL.

A tasks file has one object per line, ``{"id": optional str, "prompt": str, "responses":
[str, str, ...], "truncated": optional [bool, ...], "round": optional int}``. ``truncated`` marks
a response that was cut off by the sampler's length limit (it never emitted EOS): the reward
model must then read it without an EOS it did not generate, exactly as the policy's cut-off
answers are scored. ``round`` names the round of iterated online RLHF (``tether rlhf``) whose
policy sampled the task; the labeling page shows it. Every row is checked before any is used,
and an error names the place:
``tasks.jsonl:7: field "responses": expected a list of at least 2 strings, got 1``. Files made
by ``tether label make-tasks`` and files made elsewhere go through the same reader.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from tether.data.readers import lines
from tether.errors import DataError

__all__ = ["Task", "task_id_for", "parse_task_row", "load_tasks", "write_tasks", "load_prompts", "tasks_from_samples",
           "pair_tasks"]


@dataclass(frozen=True)
class Task:
    """What a labeler judges. Responses are immutable once labeled: answers refer to them by
    index, so the store refuses a task id that comes back with different text."""

    id: str
    prompt: str
    responses: tuple[str, ...]  # (K,) candidate responses, K >= 2, shown as A, B, C, ...
    truncated: tuple[bool, ...] | None = None  # (K,) True: cut off at the length limit; None: not known
    round: int | None = None  # the round of ``tether rlhf`` whose policy sampled it (1, 2, ...); None: no round

    @property
    def k(self) -> int:
        return len(self.responses)

    def to_json(self) -> dict[str, Any]:
        row: dict[str, Any] = {"id": self.id, "prompt": self.prompt, "responses": list(self.responses)}
        if self.truncated is not None:
            row["truncated"] = list(self.truncated)
        if self.round is not None:
            row["round"] = self.round
        return row


def task_id_for(prompt: str, responses: Iterable[str]) -> str:
    """A content hash, so a task without an ``id`` keeps the same id when the file is loaded
    again (re-serving a file must not create duplicates of tasks already labeled)."""
    digest = hashlib.sha256(json.dumps([prompt, list(responses)], ensure_ascii=False).encode())
    return "t-" + digest.hexdigest()[:16]


def parse_task_row(row: Any, where: str) -> Task:
    """One decoded JSON row -> Task; ``where`` (``file:line``) prefixes every error."""
    if not isinstance(row, dict):
        raise DataError(f"{where}: expected a JSON object, got {type(row).__name__}")
    prompt = row.get("prompt")
    if prompt is None:
        raise DataError(f'{where}: field "prompt" is missing')
    if not isinstance(prompt, str) or not prompt.strip():
        raise DataError(f'{where}: field "prompt": expected a non-empty string, got {_describe(prompt)}')
    responses = row.get("responses")
    if responses is None:
        raise DataError(f'{where}: field "responses" is missing')
    if not isinstance(responses, list):
        raise DataError(f'{where}: field "responses": expected a list of strings, got {_describe(responses)}')
    if len(responses) < 2:
        raise DataError(f'{where}: field "responses": expected at least 2 responses, got {len(responses)}')
    for i, response in enumerate(responses):
        if not isinstance(response, str):
            raise DataError(f'{where}: field "responses[{i}]": expected a string, got {_describe(response)}')
    truncated = row.get("truncated")
    if truncated is not None:
        if not isinstance(truncated, list) or len(truncated) != len(responses) or not all(
                isinstance(t, bool) for t in truncated):
            raise DataError(f'{where}: field "truncated": expected a list of {len(responses)} booleans (one per '
                            f'response), got {_describe(truncated)}')
        truncated = tuple(truncated)
    round_ = row.get("round")
    if round_ is not None and (not isinstance(round_, int) or isinstance(round_, bool) or round_ < 1):
        raise DataError(f'{where}: field "round": expected a positive integer, got {_describe(round_)}')
    task_id = row.get("id")
    if task_id is None:
        task_id = task_id_for(prompt, responses)
    elif not isinstance(task_id, str) or not task_id.strip():
        raise DataError(f'{where}: field "id": expected a non-empty string, got {_describe(task_id)}')
    return Task(id=task_id, prompt=prompt, responses=tuple(responses), truncated=truncated, round=round_)


def load_tasks(path: str | Path) -> list[Task]:
    """Read and validate a whole tasks file; all rows are valid or nothing is returned."""
    path = Path(path)
    tasks: list[Task] = []
    first_line: dict[str, int] = {}
    for line_no, row in _read_jsonl(path):
        where = f"{path.name}:{line_no}"
        task = parse_task_row(row, where)
        if task.id in first_line:
            raise DataError(f'{where}: field "id": duplicate task id {task.id!r} (first on line {first_line[task.id]})')
        first_line[task.id] = line_no
        tasks.append(task)
    if not tasks:
        raise DataError(f"{path}: no tasks (the file is empty)")
    return tasks


def write_tasks(tasks: Iterable[Task], path: str | Path) -> None:
    """Write JSONL atomically: a crash mid-write leaves the old file, never half of a new one."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for task in tasks:
            f.write(json.dumps(task.to_json(), ensure_ascii=False) + "\n")
    os.replace(tmp, path)


def load_prompts(path: str | Path) -> list[str]:
    """Prompts for make-tasks: JSONL rows with a ``prompt`` field, or plain text, one per line."""
    path = Path(path)
    if path.suffix in (".jsonl", ".json"):
        prompts = []
        for line_no, row in _read_jsonl(path):
            where = f"{path.name}:{line_no}"
            if not isinstance(row, dict) or "prompt" not in row:
                raise DataError(f'{where}: field "prompt" is missing')
            if not isinstance(row["prompt"], str) or not row["prompt"].strip():
                raise DataError(f'{where}: field "prompt": expected a non-empty string, got {_describe(row["prompt"])}')
            prompts.append(row["prompt"])
    else:
        prompts = [line for line in lines(_read_text(path)) if line.strip()]
    if not prompts:
        raise DataError(f"{path}: no prompts (the file is empty)")
    return prompts


def _read_jsonl(path: Path) -> Iterable[tuple[int, Any]]:
    """(line number, decoded row) for each non-blank line; a bad line names file:line."""
    for line_no, line in enumerate(lines(_read_text(path)), start=1):
        if not line.strip():
            continue
        try:
            yield line_no, json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{path.name}:{line_no}: not valid JSON ({exc.msg} at column {exc.colno})") from None


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DataError(f"file not found: {path}") from None
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None


def _describe(value: Any) -> str:
    """Short, type-revealing rendering of a bad value for an error message."""
    text = json.dumps(value, ensure_ascii=False) if not isinstance(value, (bytes, set)) else repr(value)
    if len(text) > 40:
        text = text[:37] + "..."
    return "null" if value is None else f"{type(value).__name__} {text}"


def tasks_from_samples(prompts: list[str], samples: list[list[str]], k: int,
                       truncated: list[list[bool]] | None = None) -> list[Task]:
    """Pair each prompt with its K sampled responses (and, when given, which of them were cut
    off at the length limit); a sampler returning the wrong shape is a bug worth a clear
    message rather than a silently short tasks file."""
    if len(samples) != len(prompts):
        raise DataError(f"the sampler returned {len(samples)} response lists for {len(prompts)} prompts")
    tasks: list[Task] = []
    seen: set[str] = set()
    for i, (prompt, responses) in enumerate(zip(prompts, samples)):
        if len(responses) != k or not all(isinstance(r, str) for r in responses):
            raise DataError(f"the sampler returned {len(responses)} responses for prompt {i}, expected {k} strings")
        task_id = task_id_for(prompt, responses)
        if task_id in seen:  # a repeated prompt sampled to the same text: keep it, under its own id
            task_id = f"{task_id}-{i}"
        seen.add(task_id)
        cut = tuple(bool(t) for t in truncated[i]) if truncated is not None else None
        if cut is not None and len(cut) != k:
            raise DataError(f"the sampler returned {len(cut)} truncation flags for prompt {i}, expected {k}")
        tasks.append(Task(id=task_id, prompt=prompt, responses=tuple(responses), truncated=cut))
    return tasks


def pair_tasks(prompts: list[str], samples: list[list[str]], truncated: list[list[bool]]) -> list[Task]:
    """Every pair of each prompt's K sampled responses as one K = 2 task: C(K,2) comparisons
    from K samples (6 from 4), each answerable with a tie. The pairs of one prompt share its
    responses, and the reward model trains on them together (``train-rm`` batches by prompt)."""
    from itertools import combinations

    rows_prompts, rows_samples, rows_cut = [], [], []
    for prompt, responses, cut in zip(prompts, samples, truncated):
        for i, j in combinations(range(len(responses)), 2):
            rows_prompts.append(prompt)
            rows_samples.append([responses[i], responses[j]])
            rows_cut.append([cut[i], cut[j]])
    return tasks_from_samples(rows_prompts, rows_samples, 2, rows_cut)
