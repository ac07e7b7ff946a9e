"""A suite of simulated tastes: labelers of different kinds, to check that the pipeline's
defaults carry *any* taste from the labels into the policy, not one tuned for.

Each taste is a score function ``score(prompt, response) -> float`` (the taste's gold score,
used for evaluation) and a labeler built on it (``labeler(prompt, responses)``, the
``tether label simulate --labeler`` signature): the higher score wins, equal scores are a tie.
The reward model sees only the labels. They differ in kind on purpose:

- ``gold`` (``tether.demo.gold``): the demo's shipped reader: complete, on topic, friendly, concise.
- ``length_band``: a length preference: answers of 12-30 words; further outside the band is worse.
- ``formal``: a tone: no exclamation marks, contractions, chatty words or first person.
- ``example``: a content requirement: the answer gives a concrete example or a number.
- ``list_format``: a format preference: steps or items on separate lines (a list).
- ``plain_words``: a structural rule on the sentences: short sentences of short words.
- ``noisy_gold``: a noisy, inconsistent human: the gold taste with a quarter of its answers
  flipped (deterministically, by a hash of the task, so reruns give the same labels).

``benchmarks/tastes.py`` runs the demo pipeline for each and writes one table
(docs/demo.md, "The taste suite"). Any of them works as ``tether demo --labeler
tether.demo.tastes:<name>_labeler``, with ``gold=tether.demo.tastes:<name>_score``.
"""

from __future__ import annotations

import hashlib
import re
from typing import Callable

from tether.demo.gold import gold_labeler, gold_score

__all__ = ["TASTES", "labeler_from_score"]

_WORD = re.compile(r"[A-Za-z']+")
_SENTENCE_END = re.compile(r"[.!?]+(?:\s|$)")


def labeler_from_score(score: Callable[[str, str], float]) -> Callable[[str, list[str]], list[int] | str]:
    """The labeler of a score function: best first; two responses of equal score are a tie."""

    def labeler(prompt: str, responses: list[str]) -> list[int] | str:
        scores = [score(prompt, r) for r in responses]
        if len(responses) == 2 and abs(scores[0] - scores[1]) < 1e-9:
            return "tie"
        return sorted(range(len(responses)), key=lambda i: (-scores[i], i))

    return labeler


def _words(text: str) -> list[str]:
    return _WORD.findall(text)


# ----- length band ---------------------------------------------------------------------------

LENGTH_BAND = (12, 30)  # words


def length_band_score(prompt: str, response: str) -> float:
    """0 inside the band of 12-30 words; minus the distance to it, in tens of words, outside."""
    n = len(_words(response))
    lo, hi = LENGTH_BAND
    return -max(lo - n, n - hi, 0) / 10.0


# ----- tone -----------------------------------------------------------------------------------

CHATTY = frozenset("hey hi wow cool awesome super great amazing totally lots stuff kinda gonna yeah "
                   "okay ok fun love".split())
FIRST_PERSON = frozenset("i me my mine i'm i've i'll i'd".split())


def formal_score(prompt: str, response: str) -> float:
    """Minus one for each informal marker (an exclamation mark, a contraction, a chatty word, a
    first-person word), per ten words: a share, so length alone neither helps nor hurts."""
    words = [w.lower() for w in _words(response)]
    if not words:
        return -1.0
    informal = response.count("!") + sum(
        1 for w in words if w in CHATTY or w in FIRST_PERSON or ("'" in w and not w.endswith("'s")))
    return -10.0 * informal / len(words)


# ----- content requirement --------------------------------------------------------------------

_EXAMPLE = re.compile(r"\b(for example|for instance|such as|e\.g\.|like a|like the)\b|\d", re.IGNORECASE)


def example_score(prompt: str, response: str) -> float:
    """One point for giving a concrete example or a number at all, a tenth more for each further
    one (up to three)."""
    found = len(_EXAMPLE.findall(response))
    return 0.0 if found == 0 else 1.0 + 0.1 * min(found - 1, 3)


# ----- format ---------------------------------------------------------------------------------

_LIST_LINE = re.compile(r"^\s*(?:[-*•]|\d+[.)])\s+\S", re.MULTILINE)


def list_format_score(prompt: str, response: str) -> float:
    """Items on separate lines: a point for each list line (``- x``, ``1. x``), at most three,
    and half a point for breaking the answer into lines at all."""
    items = len(_LIST_LINE.findall(response))
    return min(items, 3) + (0.5 if "\n" in response.strip() else 0.0)


# ----- sentence structure ---------------------------------------------------------------------


def plain_words_score(prompt: str, response: str) -> float:
    """Plain writing: minus the mean sentence length in words over 10, minus the mean word
    length in letters over 5 (a sentence still being written counts as one)."""
    words = _words(response)
    if not words:
        return -5.0
    sentences = max(len(_SENTENCE_END.findall(response.strip())) + (0 if _ends_sentence(response) else 1), 1)
    return -(len(words) / sentences) / 10.0 - (sum(len(w) for w in words) / len(words)) / 5.0


def _ends_sentence(text: str) -> bool:
    return text.rstrip().endswith((".", "!", "?"))


# ----- a noisy human --------------------------------------------------------------------------

NOISE_RATE = 0.25  # share of tasks whose verdict is flipped


def noisy_gold_labeler(prompt: str, responses: list[str]) -> list[int] | str:
    """``gold_labeler`` with the order of the top two reversed on a quarter of the tasks: a
    hash of the prompt and responses decides, so reruns give the same labels."""
    verdict = gold_labeler(prompt, responses)
    digest = hashlib.sha256(repr((prompt, responses)).encode()).digest()
    if verdict == "tie" or digest[0] >= NOISE_RATE * 256:
        return verdict
    flipped = list(verdict)
    flipped[0], flipped[1] = flipped[1], flipped[0]
    return flipped


noisy_gold_score = gold_score  # the taste behind the noise is gold's

length_band_labeler = labeler_from_score(length_band_score)
formal_labeler = labeler_from_score(formal_score)
example_labeler = labeler_from_score(example_score)
list_format_labeler = labeler_from_score(list_format_score)
plain_words_labeler = labeler_from_score(plain_words_score)

# name -> (labeler spec, gold score spec), as `tether demo` takes them
TASTES: dict[str, tuple[str, str]] = {
    "gold": ("tether.demo.gold:gold_labeler", "tether.demo.gold:gold_score"),
    **{name: (f"tether.demo.tastes:{name}_labeler", f"tether.demo.tastes:{name}_score")
       for name in ("length_band", "formal", "example", "list_format", "plain_words", "noisy_gold")},
}
