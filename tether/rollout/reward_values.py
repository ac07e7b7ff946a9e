"""What a reward source returned, checked: one finite float32-range number per response.

Shared by the in-process sources (tether.rollout.rewards) and the reward server client
(tether.rollout.remote_reward)."""

from __future__ import annotations

import math
import numbers
import reprlib
from typing import Any, Iterable

import torch

from tether.errors import TetherError

__all__ = ["checked_scores", "FLOAT32_MAX"]

# The largest finite float32: scores become a float32 tensor, where anything larger is inf.
FLOAT32_MAX = float(torch.finfo(torch.float32).max)


def checked_scores(values: Any, expected: int, who: str) -> list[float]:
    """The scores a user's function (or a reward server) returned, as floats, or a one-line
    error naming ``who``: not a list, a wrong count, a string or boolean (never silently read
    as a number: ``"0.5"`` or ``True`` is a bug in the function more often than a score), or a
    value beyond float32's range (``10**400``, ``inf``), which no update could use. NaN passes:
    the loop's guard skips that update, says so, and stops after ``max_consecutive_skips``."""
    if hasattr(values, "tolist") and not isinstance(values, (str, bytes)):  # a tensor or numpy array
        values = values.tolist()
    if isinstance(values, (str, bytes, dict)) or not isinstance(values, Iterable):
        raise TetherError(f"{who} must return a list of numbers, one per response; got {type(values).__name__}")
    values = list(values)
    if len(values) != expected:
        raise TetherError(f"{who} returned {len(values)} scores for {expected} responses")
    return [_checked_score(v, i, who) for i, v in enumerate(values)]


def _checked_score(value: Any, row: int, who: str) -> float:
    if hasattr(value, "item") and not isinstance(value, numbers.Number):
        try:
            value = value.item()  # a 0-d tensor or a numpy scalar
        except (ValueError, RuntimeError):
            pass  # several values: reported below as not a number
    if isinstance(value, bool) or type(value).__name__ == "bool_":
        raise TetherError(f"{who} returned a boolean ({value}) for response {row}; return numbers "
                          "(float(ok) if 1.0/0.0 is what you mean)")
    if not isinstance(value, numbers.Real):
        raise TetherError(f"{who} returned {type(value).__name__} {reprlib.repr(value)} for response {row}; "
                          "return numbers (int or float)")
    try:
        score = float(value)
    except OverflowError:  # an int beyond any float: 10**400
        score = math.inf
    if math.isinf(score) or abs(score) > FLOAT32_MAX:
        shown = f"an int of {len(str(abs(value)))} digits" if isinstance(value, int) else repr(score)
        raise TetherError(f"{who} returned {shown} for response {row}: beyond the range of a float32 "
                          f"score (±{FLOAT32_MAX:.3g}); return finite numbers of a sensible scale")
    return score
