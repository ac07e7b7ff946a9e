"""The demo's simulated human: a gold preference function over (prompt, response).

``tether demo`` labels its response pairs with ``gold_labeler`` exactly where a person would
use the labeling page (``tether label simulate --labeler tether.demo.gold:gold_labeler``), and
evaluates the SFT and PPO policies with ``gold_score``. The reward model never sees this
function, only the labels it produced: whether the learned reward carries the gold signal into
the policy is what the demo measures (Gao et al. 2022 call this the "gold reward model"
set-up).

The taste it encodes is that of a reader who wants concise, complete, on-topic, friendly
answers, weighted by what a small reward model can learn from a few hundred comparisons:

- complete: a response that ends on a sentence mark (not cut off mid-sentence) earns +1.0.
  It is the heaviest term because it is the clearest: a linear probe on SmolLM2's last hidden
  state separates complete from cut-off answers perfectly from 33 pairs, while word-count
  features such as "friendly" stay near chance (benchmarks/NOTES.md, "demo reward model");
- on topic: the share of the prompt's content words the response reuses earns up to +0.5;
- friendly: warm words ("glad", "happy", "hope", "great", "!") earn up to +0.3;
- concise: every word costs 1/60 (a 30-word answer loses 0.5, a 60-word one 1.0); an empty
  answer scores -2. Being continuous, this term also breaks most ties between two answers
  that are otherwise alike, so few comparisons are lost to ties.

Scores fall roughly in [-2, 1.8]; only differences matter to the labeler. Replace it with any
``module:function`` taking ``(prompt, responses)`` via ``tether demo --labeler``.
"""

from __future__ import annotations

import re

__all__ = ["gold_score", "gold_labeler", "FRIENDLY_WORDS"]

FRIENDLY_WORDS = ("glad", "happy", "hope", "great", "sure", "thanks", "thank", "welcome", "enjoy", "wonderful",
                  "love", "please", "!")
STOPWORDS = frozenset(
    "a an the and or of to in on for with at by from is are be do does i my me you your how what why when "
    "which who give tell some one good way can should make about this that into it its as".split()
)
WORDS_PER_POINT = 60  # words of answer that cost one point
_WORD = re.compile(r"[a-z']+")


def _content_words(text: str) -> set[str]:
    return {w for w in _WORD.findall(text.lower()) if len(w) > 2 and w not in STOPWORDS}


def gold_score(prompt: str, response: str) -> float:
    """How much the simulated human likes ``response`` as an answer to ``prompt``."""
    words = response.split()
    if not words:
        return -2.0
    lowered = response.lower()
    complete = 1.0 if response.rstrip().endswith((".", "!", "?", '"', ")")) else 0.0
    topic_words = _content_words(prompt)
    on_topic = len(topic_words & _content_words(response)) / len(topic_words) if topic_words else 0.0
    friendly = min(sum(lowered.count(w) for w in FRIENDLY_WORDS), 3) / 3.0
    return complete + 0.5 * on_topic + 0.3 * friendly - len(words) / WORDS_PER_POINT


def gold_labeler(prompt: str, responses: list[str]) -> list[int] | str:
    """Rank ``responses`` best first by ``gold_score`` (the ``tether label simulate`` labeler
    signature). Equal scores on two responses are a tie, which the export leaves out."""
    scores = [gold_score(prompt, r) for r in responses]
    if len(responses) == 2 and abs(scores[0] - scores[1]) < 1e-9:
        return "tie"
    return sorted(range(len(responses)), key=lambda i: (-scores[i], i))
