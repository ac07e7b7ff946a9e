"""What the label store hands out: labelers, answers and progress as frozen records, and the
errors a submission or an undo can meet (each maps to one HTTP status in the server)."""

from __future__ import annotations

from dataclasses import dataclass

from tether.errors import TetherError

__all__ = ["UnknownTask", "UnknownAnswer", "AlreadyAnswered", "Labeler", "Answer", "Progress", "RoundProgress",
           "Submitted"]


class UnknownTask(TetherError):
    """No task with this id (HTTP 404)."""


class UnknownAnswer(TetherError):
    """No answer with this id for this labeler (HTTP 404)."""


class AlreadyAnswered(TetherError):
    """The labeler already has a live answer for this task (HTTP 409)."""


@dataclass(frozen=True)
class Labeler:
    id: int
    name: str


@dataclass(frozen=True)
class Answer:
    id: int
    labeler: str
    task_id: str
    request_id: str
    choice: str  # a | b | tie | skip | rank
    ranking: tuple[int, ...] | None  # indices best -> worst; None for tie and skip
    reason: str | None
    created_at: float  # unix seconds
    undone_at: float | None


@dataclass(frozen=True)
class Progress:
    done: int  # tasks with a live answer (skips included) by this labeler
    total: int  # tasks in the store


@dataclass(frozen=True)
class RoundProgress:
    answered: int  # tasks of the round with at least the asked number of live answers (skips included)
    total: int  # tasks of the round in the store


@dataclass(frozen=True)
class Submitted:
    answer: Answer
    created: bool  # False: a retry of a request already stored, nothing written
    progress: Progress  # the labeler's progress right after, from the same transaction
