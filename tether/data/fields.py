"""Field validation shared by every row format: each check either returns a clean value or
raises ``DataError('<file>:<row>: field "<name>" <problem>')``, the one-line message users see.

Values are accepted in the shapes other tools write them: text as a string; a conversation as
a list of ``{"role", "content"}`` messages (TRL's conversational format). CSV cells are all
strings, so for CSV rows a list may also arrive JSON-encoded and a number as its text.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from typing import Any

from tether.data.readers import Row, type_name
from tether.errors import DataError

Message = dict[str, str]


def field_error(row: Row, name: str, problem: str) -> DataError:
    return DataError(f'{row.where}: field "{name}" {problem}')


def is_missing(value: Any) -> bool:
    # pandas / Parquet write a missing cell as None or NaN
    return value is None or (isinstance(value, float) and math.isnan(value))


def require(row: Row, name: str) -> Any:
    value = row.data.get(name)
    if is_missing(value):
        raise field_error(row, name, "is missing")
    if row.textual and isinstance(value, str) and value.lstrip().startswith(("[", "{")):
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            return value  # plain text that happens to start with a bracket
    return value


def text(row: Row, name: str, value: Any = None) -> str:
    """A non-empty string."""
    value = require(row, name) if value is None else value
    if not isinstance(value, str):
        raise field_error(row, name, f"must be a string, got {type_name(value)}")
    if not value.strip():
        raise field_error(row, name, "is empty")
    return value


def messages(row: Row, name: str, value: list) -> list[Message]:
    """A list of chat messages, each with a string role and string content."""
    if not value:
        raise field_error(row, name, "is empty")
    out = []
    for i, message in enumerate(value, start=1):
        if not isinstance(message, dict):
            raise field_error(row, name, f"message {i} must be an object with role and content, got {type_name(message)}")
        for key in ("role", "content"):
            if not isinstance(message.get(key), str):
                got = "nothing" if message.get(key) is None else type_name(message.get(key))
                raise field_error(row, name, f'message {i} needs a string "{key}", got {got}')
        out.append({"role": message["role"], "content": message["content"]})
    return out


def text_or_messages(row: Row, name: str, value: Any = None) -> str | list[Message]:
    """A string, or a conversation (list of messages)."""
    if value is None:
        value = require(row, name)
        raw = row.data.get(name)
        if isinstance(raw, str) and not _is_conversation(value):
            # a CSV cell that reads as JSON but is no conversation is text: "[1, 2]" can be an answer
            value = raw
    if isinstance(value, list):
        return messages(row, name, value)
    if isinstance(value, str):
        return text(row, name, value)
    raise field_error(row, name, f"must be a string or a list of chat messages, got {type_name(value)}")


def _is_conversation(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(m, dict) for m in value)


def response_text(row: Row, name: str, value: str | list[Message]) -> str:
    """The text of a response given as a string or as the assistant turn of a conversation."""
    if isinstance(value, str):
        return text(row, name, value)
    if len(value) != 1 or value[0]["role"] != "assistant":
        roles = ", ".join(m["role"] for m in value) or "none"
        raise field_error(row, name, f"must end in exactly one assistant message after the prompt (got roles: {roles})")
    content = value[0]["content"]
    if not content.strip():
        raise field_error(row, name, "is empty")
    return content


def optional_float(row: Row, name: str) -> float | None:
    value = row.data.get(name)
    if is_missing(value) or (row.textual and value == ""):
        return None
    if row.textual and isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            raise field_error(row, name, f"must be a number, got {value!r}") from None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise field_error(row, name, f"must be a number, got {type_name(value)}")
    if not math.isfinite(value):
        raise field_error(row, name, f"must be a finite number, got {value}")
    return float(value)


_TEXT_BOOLS = {"true": True, "false": False, "1": True, "0": False}


def optional_bool(row: Row, name: str, value: Any = None) -> bool:
    """A true/false field that defaults to False when absent (CSV: true/false/1/0)."""
    value = row.data.get(name) if value is None else value
    if is_missing(value) or (row.textual and value == ""):
        return False
    if row.textual and isinstance(value, str) and value.strip().lower() in _TEXT_BOOLS:
        return _TEXT_BOOLS[value.strip().lower()]
    if not isinstance(value, bool):
        raise field_error(row, name, f"must be true or false, got {type_name(value)}")
    return value


def optional_bool_list(row: Row, name: str, length: int) -> list[bool]:
    """One true/false per response (e.g. ``truncated``); all False when absent."""
    value = row.data.get(name)
    if is_missing(value):
        return [False] * length
    if not isinstance(value, list) or len(value) != length:
        raise field_error(row, name, f"must be a list of {length} booleans (one per response), got {value!r}")
    return [optional_bool(row, f"{name}[{i}]", v) for i, v in enumerate(value)]


def ranking(row: Row, name: str, num_responses: int) -> list[int]:
    """Indices of the responses from best to worst: a permutation of 0..K-1."""
    value = require(row, name)
    if not isinstance(value, list) or not all(isinstance(i, int) and not isinstance(i, bool) for i in value):
        raise field_error(row, name, f"must be a list of response indices (best first), got {value!r}")
    expected = list(range(num_responses))
    if sorted(value) != expected:
        repeated = [i for i, n in Counter(value).items() if n > 1]
        out_of_range = [i for i in value if not 0 <= i < num_responses]
        if out_of_range:
            why = f"index {out_of_range[0]} is out of range for {num_responses} responses"
        elif repeated:
            why = f"index {repeated[0]} appears twice"
        else:
            why = f"it ranks {len(value)} of {num_responses} responses"
        raise field_error(row, name, f"must order every response once (a permutation of 0..{num_responses - 1}): {why}")
    return value
