"""SFT demonstrations: a prompt and the completion to imitate.

Row formats (TRL's): ``prompt`` + ``completion`` (each a string or chat messages), or
``messages`` (a conversation whose last message is the assistant's completion; the turns
before it are the prompt). The loss is on completion tokens only, so only the last assistant
turn of a multi-turn conversation is trained on.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from tether.data import fields
from tether.data.preferences import DropCounts, prompt_key
from tether.data.readers import Row, read_records
from tether.data.templates import Prompt
from tether.errors import DataError


@dataclass(frozen=True)
class Demonstration:
    prompt: Prompt  # str, or chat messages ending before the completion
    completion: str  # the response to imitate


@dataclass
class DemonstrationData:
    examples: list[Demonstration]
    source: str
    num_rows: int
    dropped: DropCounts  # bad_rows, duplicates, truncated

    def __len__(self) -> int:
        return len(self.examples)

    def summary(self) -> str:
        return f"{self.source}: {self.num_rows} rows -> {len(self.examples)} demonstrations; {self.dropped.report()}"


def load_demonstrations(path: str | Path, split: str | None = None, skip_bad_rows: bool = False) -> DemonstrationData:
    """Read demonstrations; exact duplicates are dropped and counted."""
    rows, source = read_records(path, split)
    dropped = DropCounts()
    examples: list[Demonstration] = []
    seen: set[tuple[str, str]] = set()
    for example in dropped.parsed(rows, parse_demonstration_row, skip_bad_rows):
        key = (prompt_key(example.prompt), example.completion)
        if key in seen:
            dropped.duplicates += 1
            continue
        seen.add(key)
        examples.append(example)
    if not examples:
        raise DataError(f"{source}: no usable demonstrations ({dropped.describe()})")
    return DemonstrationData(examples, source, len(rows), dropped)


def parse_demonstration_row(row: Row) -> Demonstration:
    if row.error:
        raise DataError(f"{row.where}: {row.error}")
    if "messages" in row.data and "completion" not in row.data:
        conversation = fields.require(row, "messages")
        if not isinstance(conversation, list):
            got = fields.type_name(conversation)
            raise fields.field_error(row, "messages", f"must be a list of chat messages, got {got}")
        conversation = fields.messages(row, "messages", conversation)
        if len(conversation) < 2:
            raise fields.field_error(row, "messages", "needs a prompt turn before the assistant's completion")
        completion = fields.response_text(row, "messages", conversation[-1:])
        return Demonstration(conversation[:-1], completion)
    prompt = fields.text_or_messages(row, "prompt")
    completion = fields.text_or_messages(row, "completion")
    return Demonstration(prompt, fields.response_text(row, "completion", completion))
