"""A labeler's answer to one task, validated against the task's K.

Every source of answers (the web page, a simulated labeler) ends here, so the store, the
export and the agreement stats see one normalised form: a choice plus, when the answer
orders the responses, a ranking of indices from best to worst.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

from tether.errors import DataError

__all__ = ["CHOICES", "Judgement", "make_judgement", "judgement_from_output"]

# a / b: response 0 / response 1 is better (K = 2 only); rank: a full ordering (any K);
# tie: no preference; skip: the labeler declined (unreadable, unsure, off-topic, ...).
CHOICES = ("a", "b", "tie", "skip", "rank")


@dataclass(frozen=True)
class Judgement:
    choice: str  # one of CHOICES
    ranking: tuple[int, ...] | None  # (K,) indices best -> worst; None for tie and skip

    @property
    def is_preference(self) -> bool:
        """Ties and skips carry no ordering, so the export leaves them out (and counts them)."""
        return self.ranking is not None


def make_judgement(choice: str, ranking: Sequence[int] | None, k: int) -> Judgement:
    """Check an answer against a task with ``k`` responses; raise DataError saying what is wrong."""
    if choice not in CHOICES:
        raise DataError(f"unknown choice {choice!r}; expected one of {', '.join(CHOICES)}")
    if choice in ("a", "b"):
        if k != 2:
            raise DataError(
                f"choice {choice!r} needs a task with 2 responses; this one has {k}: send choice 'rank' with a ranking"
            )
        if ranking is not None and tuple(ranking) != _pair_ranking(choice):
            raise DataError(f"choice {choice!r} contradicts ranking {list(ranking)}")
        return Judgement(choice, _pair_ranking(choice))
    if choice in ("tie", "skip"):
        if ranking is not None:
            raise DataError(f"choice {choice!r} takes no ranking")
        return Judgement(choice, None)
    if ranking is None:
        raise DataError("choice 'rank' needs a ranking: the response indices from best to worst")
    ranking = tuple(ranking)
    if not all(type(i) is int for i in ranking) or sorted(ranking) != list(range(k)):
        raise DataError(f"ranking {list(ranking)} is not an ordering of the {k} response indices 0..{k - 1}")
    if k == 2:  # store K = 2 rankings as a / b, so the two ways of answering look the same
        return Judgement("a" if ranking == (0, 1) else "b", ranking)
    return Judgement("rank", ranking)


def judgement_from_output(output: Any, k: int) -> Judgement:
    """What a simulated labeler returned -> Judgement.

    Accepted: a list of indices best -> worst (any K), an int index of the better response
    (K = 2 only), or the string "tie" / "skip".
    """
    if isinstance(output, str) and output in ("tie", "skip"):
        return make_judgement(output, None, k)
    if isinstance(output, int) and not isinstance(output, bool):
        if k != 2:
            raise DataError(
                f"returned the int {output}, which only means something for 2 responses; return a ranking list for {k}"
            )
        if output not in (0, 1):
            raise DataError(f"returned {output}: the better response's index must be 0 or 1")
        return make_judgement("a" if output == 0 else "b", None, k)
    if isinstance(output, (list, tuple)):
        return make_judgement("rank", list(output), k)
    raise DataError(f"returned {output!r}; expected a ranking list, an index (K = 2), 'tie' or 'skip'")


def _pair_ranking(choice: str) -> tuple[int, int]:
    return (0, 1) if choice == "a" else (1, 0)
