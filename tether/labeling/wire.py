"""The labeling server's JSON bodies (pydantic models: what FastAPI validates and documents in
OpenAPI), and their conversion from the store's records."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, StrictInt

from tether.labeling.store import Answer, Progress
from tether.labeling.tasks import Task


class AnswerIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    task_id: str = Field(min_length=1, max_length=256)
    choice: Literal["a", "b", "tie", "skip", "rank"] = Field(
        description="a / b: the first / second response is better (2 responses only); rank: send `ranking`; tie; skip"
    )
    ranking: list[StrictInt] | None = Field(
        default=None, description="response indices from best to worst (choice 'rank')"
    )
    reason: str | None = Field(default=None, max_length=2000, description="optional free text")
    request_id: str = Field(
        min_length=1, max_length=128,
        description="made by the client, unique per answer: a retry with the same id writes nothing",
    )


class UndoIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    answer_id: int | None = Field(
        default=None, ge=1, le=2**63 - 1,  # SQLite's INTEGER range: a larger id cannot exist
        description="undo this answer; without it, the labeler's latest live answer",
    )


class TaskOut(BaseModel):
    id: str
    prompt: str
    responses: list[str]
    round: int | None = Field(default=None, description="the round of `tether rlhf` the task belongs to; null: none")


class ProgressOut(BaseModel):
    done: int
    total: int


class AnswerOut(BaseModel):
    id: int
    task_id: str
    request_id: str
    choice: str
    ranking: list[int] | None
    reason: str | None
    undone: bool


class MeOut(BaseModel):
    labeler: str
    progress: ProgressOut


class NextOut(BaseModel):
    task: TaskOut | None = Field(description="null when every task is answered")
    progress: ProgressOut


class SubmitOut(BaseModel):
    answer: AnswerOut
    created: bool = Field(description="false when this request_id was already stored (a retry)")
    progress: ProgressOut


class UndoOut(BaseModel):
    answer: AnswerOut | None = Field(description="the answer undone; null when there was nothing to undo")
    task: TaskOut | None = Field(description="its task, to show again")
    progress: ProgressOut


class HealthOut(BaseModel):
    ok: bool
    schema_version: int


def task_out(task: Task) -> TaskOut:
    return TaskOut(id=task.id, prompt=task.prompt, responses=list(task.responses), round=task.round)


def progress_out(progress: Progress) -> ProgressOut:
    return ProgressOut(done=progress.done, total=progress.total)


def answer_out(answer: Answer) -> AnswerOut:
    return AnswerOut(
        id=answer.id, task_id=answer.task_id, request_id=answer.request_id, choice=answer.choice,
        ranking=list(answer.ranking) if answer.ranking is not None else None, reason=answer.reason,
        undone=answer.undone_at is not None,
    )
