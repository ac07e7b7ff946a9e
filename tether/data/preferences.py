"""Human preference data: pairs and K-wise rankings, read into one list of weighted pairs.

Row formats, detected per row:

- pair (TRL's preference format): ``prompt``, ``chosen``, ``rejected``, optional ``margin``.
  Each of them a string, or a list of chat messages. In TRL's conversational format
  ``chosen``/``rejected`` may be whole conversations including the prompt turns, with or
  without a separate ``prompt`` field; the prompt is then their common leading messages
  (TRL's "implicit prompt").
- ranking: ``prompt``, ``responses`` (K of them), ``ranking`` (indices best -> worst). It
  becomes all C(K,2) pairs, each weighted 1/C(K,2) so that every ranked prompt counts the
  same in the loss however large K is (Ouyang et al. 2022, InstructGPT, sec. 3.5).

- tie: ``prompt``, ``responses`` (K >= 2), ``tie: true`` (no ``ranking``): the labeler saw no
  difference. Its C(K,2) pairs are marked ``tie`` (weighted like a ranking's) and train the
  reward model to score them alike (``tether.ops.losses.bradley_terry_loss``); ``tether label
  export --ties`` writes them. Consumers without a tie term (DPO) leave them out and count them.

A response cut off at the sampler's length limit is marked ``chosen_truncated`` /
``rejected_truncated`` (pairs) or ``truncated`` (a list, rankings), as ``tether label export``
writes them: it is then tokenised without EOS, the way the policy's cut-off answers are scored
during RL, instead of as a finished answer it never was.

Pairs whose chosen and rejected responses are identical carry no preference and are dropped;
so are exact duplicates (same prompt, chosen, rejected). Both are counted and reported once.
"""

from __future__ import annotations

import json
import math
import random
from dataclasses import dataclass, field, replace
from itertools import combinations
from pathlib import Path
from typing import Callable, Iterable, Iterator, TypeVar

from tether.data import fields
from tether.data.readers import Row, read_records, type_name
from tether.data.templates import Prompt
from tether.errors import DataError

T = TypeVar("T")


@dataclass(frozen=True)
class PreferencePair:
    prompt: Prompt  # str, or chat messages ending before the response
    chosen: str  # the preferred response's text (y_w)
    rejected: str  # the other response's text (y_l)
    margin: float | None = None  # how much better chosen is (Llama 2's margin loss); None = not given
    weight: float = 1.0  # 1 for a pair row; 1/C(K,2) for a pair from a K-wise ranking
    group: int = 0  # index of the prompt: pairs from one prompt share it (splits never separate them)
    chosen_truncated: bool = False  # y_w was cut off at the length limit: scored without EOS
    rejected_truncated: bool = False  # y_l was cut off at the length limit: scored without EOS
    tie: bool = False  # no preference: chosen and rejected are just the pair's two responses


@dataclass
class DropCounts:
    """Rows and pairs left out, reported once in one summary line."""

    bad_rows: int = 0  # malformed rows skipped with skip_bad_rows
    duplicates: int = 0  # a pair seen before (same prompt, chosen, rejected)
    identical: int = 0  # chosen == rejected: no preference to learn
    truncated: int = 0  # the response would be truncated to nothing (counted at tokenisation)
    ties: int = 0  # tied pairs left out by a consumer without a tie term (DPO)
    first_errors: list[str] = field(default_factory=list)  # up to 3 skipped-row messages, for the report

    def skip_or_raise(self, exc: "DataError", skip_bad_rows: bool) -> None:
        """With ``skip_bad_rows`` count the bad row (keeping the first messages); else re-raise."""
        if not skip_bad_rows:
            raise exc
        self.bad_rows += 1
        if len(self.first_errors) < 3:
            self.first_errors.append(str(exc))

    def parsed(self, rows: Iterable[Row], parse: Callable[[Row], T], skip_bad_rows: bool) -> Iterator[T]:
        """``parse(row)`` of each row; a row it refuses with a DataError is counted and skipped
        with ``skip_bad_rows`` (``skip_or_raise``)."""
        for row in rows:
            try:
                value = parse(row)
            except DataError as exc:
                self.skip_or_raise(exc, skip_bad_rows)
                continue
            yield value

    def describe(self) -> str:
        parts = [
            f"{n} {what}"
            for n, what in [
                (self.bad_rows, "bad rows"),
                (self.duplicates, "duplicate pairs"),
                (self.identical, "pairs with chosen == rejected"),
                (self.truncated, "pairs whose response would be truncated to nothing"),
                (self.ties, "tied pairs"),
            ]
            if n
        ]
        return "dropped " + ", ".join(parts) if parts else "nothing dropped"

    def report(self) -> str:
        """``describe()`` and the first skipped rows' messages: the end of a data summary line."""
        skipped = " (first skipped: " + "; ".join(self.first_errors) + ")" if self.first_errors else ""
        return self.describe() + skipped


@dataclass
class PreferenceData:
    pairs: list[PreferencePair]
    source: str  # what was read: a path, with the split if any
    num_rows: int  # rows read, bad ones included
    dropped: DropCounts

    def __len__(self) -> int:
        return len(self.pairs)

    def summary(self) -> str:
        """e.g. ``prefs.jsonl: 120 rows -> 290 pairs from 100 prompts; dropped 2 duplicate pairs``."""
        prompts = len({p.group for p in self.pairs})
        ties = sum(p.tie for p in self.pairs)
        kinds = f"{len(self.pairs) - ties} pairs and {ties} ties" if ties else f"{len(self.pairs)} pairs"
        return f"{self.source}: {self.num_rows} rows -> {kinds} from {prompts} prompts; {self.dropped.report()}"


def load_preferences(path_or_name: str | Path, split: str | None = None, skip_bad_rows: bool = False) -> PreferenceData:
    """Read preference pairs and rankings from a file or ``datasets`` folder.

    A malformed row raises ``DataError('prefs.jsonl:17: field "chosen" is empty')``; with
    ``skip_bad_rows`` it is skipped and counted instead.
    """
    rows, source = read_records(path_or_name, split)
    dropped = DropCounts()
    pairs: list[PreferencePair] = []
    seen: set[tuple[str, str, str]] = set()
    groups: dict[str, int] = {}
    for row_pairs in dropped.parsed(rows, parse_preference_row, skip_bad_rows):
        for pair in row_pairs:
            key = prompt_key(pair.prompt)
            if pair.chosen == pair.rejected:
                dropped.identical += 1
                continue
            if (key, pair.chosen, pair.rejected, pair.tie) in seen:
                dropped.duplicates += 1
                continue
            seen.add((key, pair.chosen, pair.rejected, pair.tie))
            pairs.append(_with_group(pair, groups.setdefault(key, len(groups))))
    if not pairs:
        raise DataError(f"{source}: no usable preference pairs ({dropped.describe()})")
    return PreferenceData(pairs, source, len(rows), dropped)


def parse_preference_row(row: Row) -> list[PreferencePair]:
    """One row -> its pairs (one for a pair row, C(K,2) for a ranking)."""
    if row.error:
        raise DataError(f"{row.where}: {row.error}")
    if "responses" in row.data or "ranking" in row.data:
        return _ranking_pairs(row)
    return [_pair(row)]


def _pair(row: Row) -> PreferencePair:
    chosen = fields.text_or_messages(row, "chosen")
    rejected = fields.text_or_messages(row, "rejected")
    prompt = None if fields.is_missing(row.data.get("prompt")) else fields.text_or_messages(row, "prompt")
    prompt, chosen, rejected = split_implicit_prompt(row, prompt, chosen, rejected)
    chosen_text = fields.response_text(row, "chosen", chosen)
    rejected_text = fields.response_text(row, "rejected", rejected)
    return PreferencePair(prompt, chosen_text, rejected_text, margin=fields.optional_float(row, "margin"),
                          chosen_truncated=fields.optional_bool(row, "chosen_truncated"),
                          rejected_truncated=fields.optional_bool(row, "rejected_truncated"))


def split_implicit_prompt(row: Row, prompt, chosen, rejected):
    """Separate the prompt from conversational responses.

    Without a ``prompt`` field, the prompt is the messages ``chosen`` and ``rejected`` share
    at the start (TRL's ``maybe_extract_prompt``). With one, a response that repeats the prompt
    turns before its own has them removed.
    """
    if prompt is None:
        if not (isinstance(chosen, list) and isinstance(rejected, list)):
            raise fields.field_error(row, "prompt", "is missing")
        if chosen == rejected:  # kept whole, to be counted as chosen == rejected
            return chosen[:-1] or "", chosen[-1:], rejected[-1:]
        n = 0
        while n < min(len(chosen), len(rejected)) and chosen[n] == rejected[n]:
            n += 1
        if n == 0:
            raise fields.field_error(row, "prompt", "is missing, and chosen and rejected share no leading messages")
        return chosen[:n], chosen[n:], rejected[n:]
    if isinstance(prompt, list):
        k = len(prompt)
        chosen = chosen[k:] if isinstance(chosen, list) and chosen[:k] == prompt else chosen
        rejected = rejected[k:] if isinstance(rejected, list) and rejected[:k] == prompt else rejected
    return prompt, chosen, rejected


def _ranking_pairs(row: Row) -> list[PreferencePair]:
    prompt = fields.text_or_messages(row, "prompt")
    responses = fields.require(row, "responses")
    if not isinstance(responses, list):
        raise fields.field_error(row, "responses", f"must be a list of responses, got {type_name(responses)}")
    if len(responses) < 2:
        raise fields.field_error(row, "responses", f"needs at least 2 responses to rank, got {len(responses)}")
    texts = []
    for i, response in enumerate(responses):
        name = f"responses[{i}]"
        if fields.is_missing(response):
            raise fields.field_error(row, name, "is missing")
        texts.append(fields.response_text(row, name, fields.text_or_messages(row, name, response)))
    cut = fields.optional_bool_list(row, "truncated", len(texts))
    weight = 1.0 / math.comb(len(texts), 2)
    if fields.optional_bool(row, "tie"):
        if "ranking" in row.data:
            raise fields.field_error(row, "ranking", "cannot be given with tie: true (a tie ranks nothing)")
        return [PreferencePair(prompt, texts[a], texts[b], weight=weight, chosen_truncated=cut[a],
                               rejected_truncated=cut[b], tie=True)
                for a, b in combinations(range(len(texts)), 2)]
    order = fields.ranking(row, "ranking", len(texts))
    # every (better, worse) pair of the ranking: ranked[i] beats ranked[j] for i < j
    return [PreferencePair(prompt, texts[better], texts[worse], weight=weight,
                           chosen_truncated=cut[better], rejected_truncated=cut[worse])
            for better, worse in combinations(order, 2)]


def without_ties(data: PreferenceData) -> PreferenceData:
    """``data`` with its tied pairs left out and counted: for a loss that has no tie term."""
    kept = [p for p in data.pairs if not p.tie]
    if len(kept) == len(data.pairs):
        return data
    if not kept:
        raise DataError(f"{data.source}: only tied pairs, and this loss needs preferences")
    return PreferenceData(kept, data.source, data.num_rows, replace(data.dropped, ties=len(data.pairs) - len(kept)))


def _with_group(pair: PreferencePair, group: int) -> PreferencePair:
    return replace(pair, group=group)


def prompt_key(prompt: Prompt) -> str:
    """A hashable identity for a prompt (str or messages)."""
    return prompt if isinstance(prompt, str) else json.dumps(prompt, sort_keys=True, ensure_ascii=False)


def split_by_prompt(data: PreferenceData, eval_fraction: float, seed: int = 0) -> tuple[PreferenceData, PreferenceData]:
    """Hold out ``eval_fraction`` of the prompts, with all their pairs: pairs from one ranked
    prompt share most of their text, so splitting them would leak the eval set into training."""
    groups = sorted({p.group for p in data.pairs})
    if len(groups) < 2:
        raise DataError(f"{data.source}: cannot hold out an eval set from {len(groups)} prompt; give eval_data")
    random.Random(seed).shuffle(groups)
    n_eval = min(max(1, round(eval_fraction * len(groups))), len(groups) - 1)
    held_out = set(groups[:n_eval])
    train = [p for p in data.pairs if p.group not in held_out]
    evals = [p for p in data.pairs if p.group in held_out]
    return (
        PreferenceData(train, data.source, data.num_rows, data.dropped),
        PreferenceData(evals, f"{data.source} (held out)", 0, DropCounts()),
    )
